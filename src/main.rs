//! `wecom-kf-upgrade`: parse the command line, start logging (and traces), run.

use std::process::ExitCode;

use clap::Parser;
use wecom_kf_upgrade::{
    cli::{Cli, EX_USAGE},
    telemetry::{self, ErrorChain},
};

/// mimalloc instead of glibc's malloc: every call allocates and frees on one worker
/// thread and is often freed on another, where glibc's arenas took a lock (a futex
/// under load) and a sixth of the gateway's CPU. Built without transparent huge
/// pages (`no_thp`): with them its arenas kept 7 MiB more resident when idle.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = match telemetry::init(cli.exports_traces()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            tracing::error!(key = error.key(), error = %ErrorChain(&error), "exiting");
            return ExitCode::from(EX_USAGE);
        }
    };
    let code = cli.run().await;
    telemetry.shutdown().await;
    code
}
