//! The command line: `serve`, `sandbox`, `health`, `check-config`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    config::{ConfigError, ProcessEnv, SandboxApp, Settings},
    sandbox::{DEMO_CORP_ID, DEMO_SECRET, Sandbox, SandboxConfig},
    signal::ShutdownSignals,
    startup::Application,
    telemetry::ErrorChain,
};

/// gRPC gateway for WeCom 微信客服「升级服务」.
#[derive(Debug, Parser)]
#[command(name = "wecom-kf-upgrade", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Run the WeCom simulator alone, as an HTTP server.
    Sandbox(SandboxArgs),
    /// Ask a gateway's gRPC health service; exit 0 only when it is SERVING.
    Health(HealthArgs),
    /// Load and validate the configuration; print it as a config file, secrets redacted.
    CheckConfig(ConfigArgs),
}

#[derive(Debug, Args)]
struct ConfigArgs {
    /// TOML configuration file (see README); the environment overrides it.
    #[arg(long, env = "WECOM_KF_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// gRPC listen address [default: 0.0.0.0:50051, or `listen` in the file].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin HTTP listen address [default: 0.0.0.0:9464, or `admin_listen` in the file].
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Start the embedded WeCom sandbox and point every app at it, with demo
    /// credentials: no WeCom account needed.
    #[arg(long)]
    sandbox: bool,
    /// Where the embedded sandbox listens (port 0: any free port, logged at start).
    #[arg(long, default_value = "127.0.0.1:0", requires = "sandbox")]
    sandbox_listen: SocketAddr,
}

#[derive(Debug, Args)]
struct SandboxArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:9465")]
    listen: SocketAddr,
    /// Lifetime of issued access tokens, seconds (WeCom: 7200).
    #[arg(long, default_value_t = 7200, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    token_ttl_secs: u64,
}

#[derive(Debug, Args)]
struct HealthArgs {
    /// The gateway's gRPC address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// The service to ask about; empty for the whole server.
    #[arg(long, default_value = "")]
    service: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
}

impl Cli {
    /// Whether the command exports traces (when the `OTEL_*` variables say where):
    /// only the gateway does.
    pub fn exports_traces(&self) -> bool {
        matches!(self.command, Command::Serve(_))
    }

    /// Runs the command; the exit code says whether it succeeded: 0, 64 (EX_USAGE)
    /// for a bad configuration, 1 for any other failure.
    pub async fn run(self) -> ExitCode {
        match self.command {
            // Servers report in their structured log, which a platform collects.
            Command::Serve(args) => exit(serve(args).await, |error| {
                tracing::error!(error = %ErrorChain(error.source()), "exiting");
            }),
            Command::Sandbox(args) => exit(sandbox(args).await, |error| {
                tracing::error!(error = %ErrorChain(error.source()), "exiting");
            }),
            // Commands for people: their errors go to the terminal.
            Command::CheckConfig(args) => exit(check_config(args), |error| {
                eprintln!("wecom-kf-upgrade: {}", ErrorChain(error.source()));
            }),
            Command::Health(args) => health(args).await,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a command failed, which decides its exit status.
#[derive(Debug)]
enum CommandError {
    /// The configuration is wrong: starting again will not help until it is fixed.
    Config(ConfigError),
    /// Anything else.
    Run(BoxError),
}

impl CommandError {
    fn run(error: impl Into<BoxError>) -> Self {
        CommandError::Run(error.into())
    }

    fn source(&self) -> &(dyn std::error::Error + 'static) {
        match self {
            CommandError::Config(error) => error,
            CommandError::Run(error) => error.as_ref(),
        }
    }
}

impl From<ConfigError> for CommandError {
    fn from(error: ConfigError) -> Self {
        CommandError::Config(error)
    }
}

/// EX_USAGE from sysexits.h: the command was used with a bad configuration.
pub const EX_USAGE: u8 = 64;

/// The exit code for a command's result, after reporting a failure once.
fn exit(result: Result<(), CommandError>, report: impl FnOnce(&CommandError)) -> ExitCode {
    let Err(error) = result else {
        return ExitCode::SUCCESS;
    };
    report(&error);
    match error {
        CommandError::Config(_) => ExitCode::from(EX_USAGE),
        CommandError::Run(_) => ExitCode::FAILURE,
    }
}

async fn serve(args: ServeArgs) -> Result<(), CommandError> {
    let file = args.config.config.as_deref();
    // Kept alive for as long as the gateway runs.
    let mut _sandbox = None;
    let mut settings = if args.sandbox {
        let handle = Sandbox::new(SandboxConfig::default())
            .spawn(args.sandbox_listen)
            .await
            .map_err(|e| {
                CommandError::run(format!(
                    "cannot start the sandbox on {}: {e}",
                    args.sandbox_listen
                ))
            })?;
        tracing::info!(
            base_url = %handle.base_url(),
            corp_id = DEMO_CORP_ID,
            "WeCom sandbox started; its state is at {}/sandbox/state",
            handle.base_url()
        );
        let demo = SandboxApp {
            api_base: handle.base_url(),
            corp_id: DEMO_CORP_ID.to_owned(),
            secret: DEMO_SECRET.to_owned(),
        };
        _sandbox = Some(handle);
        Settings::load_for_sandbox(file, &ProcessEnv, &demo)?
    } else {
        Settings::load(file, &ProcessEnv)?
    };
    if let Some(listen) = args.listen {
        settings.listen = listen;
    }
    if let Some(admin) = args.admin_listen {
        settings.admin_listen = admin;
    }
    let app = Application::build(settings)
        .await
        .map_err(CommandError::run)?;
    let mut signals = ShutdownSignals::new();
    let shutdown = async move {
        signals.recv().await;
        // A second signal during the drain means "now": a person pressing Ctrl-C
        // again, or a supervisor out of patience.
        tokio::spawn(async move {
            signals.recv().await;
            tracing::warn!("second shutdown signal: exiting without draining");
            std::process::exit(130);
        });
    };
    app.run_until_stopped(shutdown)
        .await
        .map_err(CommandError::run)
}

async fn sandbox(args: SandboxArgs) -> Result<(), CommandError> {
    let config = SandboxConfig {
        token_ttl: Duration::from_secs(args.token_ttl_secs),
        ..SandboxConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| CommandError::run(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener.local_addr().map_err(CommandError::run)?;
    tracing::info!(
        %addr,
        corp_id = %config.corp_id,
        secret = %config.secret,
        "WeCom sandbox serving (demo credentials, not secrets)"
    );
    let mut signals = ShutdownSignals::new();
    Sandbox::new(config)
        .serve(listener, async move { signals.recv().await })
        .await
        .map_err(CommandError::run)
}

/// Prints the configuration as TOML that loads back with `--config`.
fn check_config(args: ConfigArgs) -> Result<(), CommandError> {
    let settings = Settings::load(args.config.as_deref(), &ProcessEnv)?;
    print!("{}", settings.to_toml());
    Ok(())
}

async fn health(args: HealthArgs) -> ExitCode {
    let uri = if args.addr.contains("://") {
        args.addr.clone()
    } else {
        format!("http://{}", args.addr)
    };
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(uri)?
            .connect()
            .await?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await?;
        Ok::<_, BoxError>(response.into_inner().status())
    };
    match tokio::time::timeout(Duration::from_millis(args.timeout_ms), check).await {
        Ok(Ok(ServingStatus::Serving)) => {
            println!("SERVING");
            ExitCode::SUCCESS
        }
        Ok(Ok(status)) => {
            println!("{}", status.as_str_name());
            ExitCode::FAILURE
        }
        Ok(Err(error)) => {
            eprintln!("health check of {} failed: {error}", args.addr);
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!(
                "health check of {} timed out after {} ms",
                args.addr, args.timeout_ms
            );
            ExitCode::FAILURE
        }
    }
}
