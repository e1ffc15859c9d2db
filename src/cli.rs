//! The command line: `serve`, `sandbox`, `health`, `check-config`, `caller add`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use clap::{Args, Parser, Subcommand};
use secrecy::ExposeSecret;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    auth::new_caller,
    config::{ConfigError, ProcessEnv, SandboxApp, SandboxSuite, Settings},
    sandbox::{
        DEMO_CALLBACK_TOKEN, DEMO_CORP_ID, DEMO_CORPS, DEMO_ENCODING_AES_KEY, DEMO_SECRET,
        DEMO_SUITE_ID, DEMO_SUITE_SECRET, Sandbox, SandboxConfig,
    },
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
    /// Credentials of the gateway's callers (the callers file).
    #[command(subcommand)]
    Caller(CallerCommand),
}

#[derive(Debug, Subcommand)]
enum CallerCommand {
    /// Make a new caller's bearer token: prints the token once, on the first line,
    /// then the entry to append to the callers file (which holds only its SHA-256).
    Add(CallerAddArgs),
}

#[derive(Debug, Args)]
struct CallerAddArgs {
    /// The caller's name, as logs and the audit show it (1-64 of A-Z a-z 0-9 - _ .).
    name: String,
    /// The apps it may use, comma-separated; `*` for every configured app.
    #[arg(long, value_delimiter = ',', required = true)]
    apps: Vec<String>,
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
    /// Push the demo suite's tickets to this callback URL (a gateway's
    /// `http://HOST:9466/suites/NAME/callback`), at start and every ten minutes.
    #[arg(long, value_parser = plain_http_url)]
    push_tickets_to: Option<url::Url>,
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
    /// The gRPC port serves TLS: verify its certificate with these PEM CA certificates.
    #[arg(long)]
    tls_ca_file: Option<PathBuf>,
    /// A PEM client certificate, for a gateway that requires one (mTLS).
    #[arg(long, requires_all = ["tls_ca_file", "tls_key_file"])]
    tls_cert_file: Option<PathBuf>,
    /// The client certificate's PEM private key.
    #[arg(long, requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// The name the gateway's certificate must carry [default: the host of --addr].
    #[arg(long, requires = "tls_ca_file")]
    tls_server_name: Option<String>,
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
            Command::Caller(CallerCommand::Add(args)) => exit(caller_add(args), |error| {
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
    let mut sandbox = None;
    let mut settings = if args.sandbox {
        let simulator = Sandbox::new(SandboxConfig::default());
        sandbox = Some(Arc::clone(&simulator));
        let handle = simulator.spawn(args.sandbox_listen).await.map_err(|e| {
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
            suite: Some(SandboxSuite {
                name: DEMO_SUITE.to_owned(),
                suite_id: DEMO_SUITE_ID.to_owned(),
                suite_secret: DEMO_SUITE_SECRET.to_owned(),
                callback_token: DEMO_CALLBACK_TOKEN.to_owned(),
                encoding_aes_key: DEMO_ENCODING_AES_KEY.to_owned(),
                corps: DEMO_CORPS
                    .iter()
                    .map(|(app, corp, code)| {
                        ((*app).to_owned(), (*corp).to_owned(), (*code).to_owned())
                    })
                    .collect(),
            }),
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
    // The sandbox plays WeCom's side of the demo suite: it pushes suite tickets to
    // the callback endpoint now and every ten minutes.
    let _pushing = sandbox.zip(app.callback_addr()).map(|(sandbox, mut addr)| {
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let url = format!("http://{addr}/suites/{DEMO_SUITE}/callback");
        tracing::info!(
            suite = DEMO_SUITE,
            apps = ?DEMO_CORPS.map(|(app, _, _)| app),
            callback = %url,
            "sandbox suite: pushing suite tickets to the callback endpoint"
        );
        AbortOnDrop(sandbox.start_pushing(url))
    });
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
    let sandbox = Sandbox::new(config);
    let _pushing = args.push_tickets_to.map(|url| {
        tracing::info!(callback = %url, "pushing the demo suite's tickets");
        AbortOnDrop(sandbox.start_pushing(url.to_string()))
    });
    sandbox
        .serve(listener, async move { signals.recv().await })
        .await
        .map_err(CommandError::run)
}

/// The name of the sandbox's demo suite in `serve --sandbox`.
const DEMO_SUITE: &str = "demo-suite";

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Prints the configuration as TOML that loads back with `--config`.
fn check_config(args: ConfigArgs) -> Result<(), CommandError> {
    let settings = Settings::load(args.config.as_deref(), &ProcessEnv)?;
    print!("{}", settings.to_toml());
    Ok(())
}

/// Prints a new caller's token on the first line (its last word), then its entry.
fn caller_add(args: CallerAddArgs) -> Result<(), CommandError> {
    let new = new_caller(&args.name, &args.apps).map_err(|problem| ConfigError {
        key: "caller add".to_owned(),
        problem,
    })?;
    println!(
        "New bearer token for caller {} (shown this once; give it to the caller, keep no copy): {}",
        args.name,
        new.token.expose_secret()
    );
    println!();
    println!(
        "# Append to the callers file (WECOM_CALLERS_FILE); it holds only the token's SHA-256."
    );
    print!("{}", new.entry);
    Ok(())
}

/// The health client's endpoint: plaintext, or TLS with the given CA (and client
/// certificate).
fn health_endpoint(args: &HealthArgs) -> Result<Endpoint, BoxError> {
    let scheme = if args.tls_ca_file.is_some() {
        "https"
    } else {
        "http"
    };
    let uri = if args.addr.contains("://") {
        args.addr.clone()
    } else {
        format!("{scheme}://{}", args.addr)
    };
    let endpoint = Endpoint::from_shared(uri)?;
    let Some(ca) = &args.tls_ca_file else {
        return Ok(endpoint);
    };
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_key_file) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    if let Some(name) = &args.tls_server_name {
        tls = tls.domain_name(name);
    }
    Ok(endpoint.tls_config(tls)?)
}

async fn health(args: HealthArgs) -> ExitCode {
    let check = async {
        let channel = health_endpoint(&args)?.connect().await?;
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

/// A URL the sandbox can push to: it speaks plain HTTP only (it is a local
/// simulator, with no TLS client of its own).
fn plain_http_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    if url.scheme() != "http" || url.host().is_none() {
        return Err(format!(
            "the sandbox pushes tickets over plain HTTP only: give the gateway's callback \
             port itself, like http://127.0.0.1:9466/suites/{DEMO_SUITE}/callback, not `{}://…`",
            url.scheme()
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn the_sandbox_pushes_tickets_to_plain_http_urls_only() {
        let parse = |url: &str| {
            Cli::try_parse_from(["wecom-kf-upgrade", "sandbox", "--push-tickets-to", url])
        };
        assert!(parse("http://127.0.0.1:9466/suites/demo-suite/callback").is_ok());
        for refused in [
            "https://gateway.example/suites/demo-suite/callback",
            "ftp://gateway.example/",
            "not a url",
        ] {
            let error = parse(refused).unwrap_err().to_string();
            assert!(error.contains("--push-tickets-to"), "{refused}: {error}");
        }
        let error = parse("https://gateway.example/").unwrap_err().to_string();
        assert!(error.contains("plain HTTP only"), "{error}");
    }
}
