//! `wecom-kf-upgrade`: parse the command line, start logging, run.

use std::process::ExitCode;

use clap::Parser;
use wecom_kf_upgrade::{cli::Cli, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init();
    cli.run().await
}
