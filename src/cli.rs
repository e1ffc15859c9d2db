//! The command line: `serve`, `sandbox`, `health`, `check-config`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    config::{ProcessEnv, Settings},
    sandbox::{DEMO_CORP_ID, DEMO_SECRET, Sandbox, SandboxConfig},
    signal::ShutdownSignals,
    startup::Application,
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
    /// Load and validate the configuration, print it with secrets redacted.
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
    /// Start the embedded WeCom sandbox and point the default app at it, with demo
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
    /// Runs the command; the exit code says whether it succeeded.
    pub async fn run(self) -> ExitCode {
        let result = match self.command {
            Command::Serve(args) => serve(args).await,
            Command::Sandbox(args) => sandbox(args).await,
            Command::Health(args) => return health(args).await,
            // A command for people: its error goes to the terminal only.
            Command::CheckConfig(args) => {
                return check_config(args).map_or_else(
                    |error| {
                        eprintln!("wecom-kf-upgrade: {error}");
                        ExitCode::FAILURE
                    },
                    |()| ExitCode::SUCCESS,
                );
            }
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                // Servers: in the structured log for the platform, and plainly for a person.
                tracing::error!(%error, "exiting");
                eprintln!("wecom-kf-upgrade: {error}");
                ExitCode::FAILURE
            }
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn serve(args: ServeArgs) -> Result<(), BoxError> {
    let file = args.config.config.as_deref();
    // Kept alive for as long as the gateway runs.
    let mut _sandbox = None;
    let mut settings = if args.sandbox {
        let handle = Sandbox::new(SandboxConfig::default())
            .spawn(args.sandbox_listen)
            .await
            .map_err(|e| format!("cannot start the sandbox on {}: {e}", args.sandbox_listen))?;
        tracing::info!(
            base_url = %handle.base_url(),
            corp_id = DEMO_CORP_ID,
            "WeCom sandbox started; its state is at {}/sandbox/state",
            handle.base_url()
        );
        let settings = Settings::load_for_sandbox(
            file,
            &ProcessEnv,
            &handle.base_url(),
            DEMO_CORP_ID,
            DEMO_SECRET,
        )?;
        _sandbox = Some(handle);
        settings
    } else {
        Settings::load(file, &ProcessEnv)?
    };
    if let Some(listen) = args.listen {
        settings.listen = listen;
    }
    if let Some(admin) = args.admin_listen {
        settings.admin_listen = admin;
    }
    let app = Application::build(settings).await?;
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
    app.run_until_stopped(shutdown).await?;
    Ok(())
}

async fn sandbox(args: SandboxArgs) -> Result<(), BoxError> {
    let config = SandboxConfig {
        token_ttl: Duration::from_secs(args.token_ttl_secs),
        ..SandboxConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        corp_id = %config.corp_id,
        secret = %config.secret,
        "WeCom sandbox serving (demo credentials, not secrets)"
    );
    let mut signals = ShutdownSignals::new();
    Sandbox::new(config)
        .serve(listener, async move { signals.recv().await })
        .await?;
    Ok(())
}

fn check_config(args: ConfigArgs) -> Result<(), BoxError> {
    let settings = Settings::load(args.config.as_deref(), &ProcessEnv)?;
    print!("{}", settings.describe());
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
