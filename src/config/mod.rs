//! Typed settings, loaded in one direction: the TOML file → app specs whose secrets
//! are references → the environment over them → the sandbox's demo app over
//! everything (`serve --sandbox`) → secrets read last, from their files or variables.
//!
//! Every knob has a default, so `WECOM_CORP_ID` plus `WECOM_CORP_SECRET` is a complete
//! configuration. Errors name the key that is wrong ([`ConfigError::key`]).
//!
//! - `mod.rs`: the settings types, and what the adapter is given of them;
//! - `file`: the file format, read and written (`check-config` prints it);
//! - `env`: the environment's variables;
//! - `load`: the pipeline above;
//! - `validate`: names, URLs and bounds;
//! - `units`: durations as milliseconds or seconds in the file;
//! - `redis`: the optional Redis of a fleet of replicas;
//! - `provider`: third-party suites, their corps files, the callback endpoint, and
//!   the apps file (both files re-read while serving).
//!
//! TLS files and the callers file are read while loading, so that a bad one is a
//! configuration error naming its key; the gateway re-reads them when they change.

mod env;
mod file;
mod load;
mod provider;
mod redis;
mod units;
mod validate;

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    num::NonZeroU32,
    path::{Path, PathBuf},
    time::Duration,
};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use url::Url;

pub use env::{Environment, ProcessEnv};
pub(crate) use file::toml_problem;
pub use load::SandboxApp;
pub use provider::{
    APPS_FILE_GROUP, AppsFileSettings, CONFIG_GROUP, CallbackSettings, CorpSettings, SandboxSuite,
    SuiteSettings, app_specs, corp_specs, corps_group, parse_apps_file, parse_corps,
};
pub use redis::RedisSettings;
pub(crate) use validate::check_name;
pub use validate::{is_cleartext_remote, is_exposed};

use crate::{
    auth::Callers,
    telemetry::redacted,
    wecom::{
        AdapterSettings, AppSpec, HttpSettings, RateLimits, Retry, TokenPolicy, WindowLimits,
        suite::SuiteSpec,
    },
};

/// WeCom's production API base.
pub const DEFAULT_API_BASE: &str = "https://qyapi.weixin.qq.com";
/// The name given to the app described by `WECOM_CORP_ID` when the file names none.
pub const DEFAULT_APP_NAME: &str = "default";

/// Everything the gateway needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address of the gRPC listener.
    pub listen: SocketAddr,
    /// Address of the admin HTTP listener (`/healthz`, `/readyz`).
    pub admin_listen: SocketAddr,
    /// Name of the app that serves calls without `x-wecom-app`.
    pub default_app: String,
    /// The WeCom apps callers may choose from, by name.
    pub apps: BTreeMap<String, AppSettings>,
    /// How the gateway talks to WeCom.
    pub upstream: UpstreamSettings,
    /// How access tokens are cached.
    pub token: TokenSettings,
    /// How the gRPC server treats callers.
    pub server: ServerSettings,
    /// WeCom's frequency limits, kept on the gateway's side.
    pub limits: LimitSettings,
    /// TLS on the gRPC port; `None`: plaintext.
    pub tls: Option<TlsSettings>,
    /// Caller authentication; `None`: every caller may use every app.
    pub auth: Option<AuthSettings>,
    /// The Redis a fleet of replicas shares tokens and rate budget through;
    /// `None`: each replica keeps them to itself.
    pub redis: Option<RedisSettings>,
    /// Third-party suites, by name, with their authorised corps.
    pub suites: BTreeMap<String, SuiteSettings>,
    /// The endpoint WeCom pushes suite tickets to; bound only with a suite.
    pub callback: CallbackSettings,
    /// More apps, in a file re-read when it changes.
    pub apps_file: Option<AppsFileSettings>,
}

/// One WeCom app: a corp and the secret of one of its apps (自建应用 or 代开发应用).
#[derive(Clone)]
pub struct AppSettings {
    /// 企业ID (`corpid`).
    pub corp_id: String,
    /// The app's `corpsecret`, read from wherever the configuration pointed. Only the
    /// adapter's `gettoken` call exposes it.
    pub secret: SecretString,
    /// Where the secret was read from, which `check-config` prints instead of it.
    pub secret_origin: SecretOrigin,
    /// Where WeCom is; loopback for the sandbox and tests. Its password, if any,
    /// is shown only as `****` ([`redacted`](crate::telemetry::redacted)).
    pub api_base: Url,
}

/// Where an app's secret came from: not a secret itself, so it can be shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretOrigin {
    /// Written in the configuration (`secret`, or `WECOM_CORP_SECRET`).
    Inline,
    /// Read from this file (`secret_file`, or `WECOM_CORP_SECRET_FILE`).
    File(PathBuf),
    /// Read from this environment variable (`secret_env`).
    Env(String),
}

impl fmt::Debug for AppSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSettings")
            .field("corp_id", &self.corp_id)
            .field("secret", &"****")
            .field("secret_origin", &self.secret_origin)
            .field("api_base", &redacted(&self.api_base).to_string())
            .finish()
    }
}

/// Timeouts, retries and limits of the calls to WeCom (`[upstream]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// TCP + TLS connect timeout (`connect_timeout_ms`).
    #[serde(rename = "connect_timeout_ms", with = "units::millis")]
    pub connect_timeout: Duration,
    /// One HTTP request, from sending to the last body byte (`request_timeout_ms`).
    #[serde(rename = "request_timeout_ms", with = "units::millis")]
    pub request_timeout: Duration,
    /// One RPC's whole upstream work, token refresh and retries included
    /// (`call_timeout_ms`). A shorter gRPC deadline from the caller wins.
    #[serde(rename = "call_timeout_ms", with = "units::millis")]
    pub call_timeout: Duration,
    /// Retries after errcode -1 (系统繁忙), HTTP 5xx or a transport error. WeCom advises at most 3.
    pub max_retries: u32,
    /// First retry delay (`retry_backoff_ms`); doubles each retry, with jitter.
    #[serde(rename = "retry_backoff_ms", with = "units::millis")]
    pub retry_backoff: Duration,
    /// Largest WeCom response body read, bytes; larger bodies fail the call.
    pub max_body_bytes: usize,
    /// Most requests one app has in flight to WeCom; more wait for a turn within
    /// their call's budget (`max_requests_per_app`).
    pub max_requests_per_app: usize,
    /// Most idle connections kept open to WeCom per host (`max_idle_connections`).
    pub max_idle_connections: usize,
    /// An idle connection to WeCom is closed after this long (`idle_timeout_ms`).
    #[serde(rename = "idle_timeout_ms", with = "units::millis")]
    pub idle_timeout: Duration,
}

impl UpstreamSettings {
    /// The retries of transient failures these settings ask for.
    pub fn retry(&self) -> Retry {
        Retry {
            max_retries: self.max_retries,
            backoff: self.retry_backoff,
        }
    }
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_millis(2_000),
            request_timeout: Duration::from_millis(5_000),
            call_timeout: Duration::from_millis(10_000),
            max_retries: 3,
            retry_backoff: Duration::from_millis(100),
            max_body_bytes: 1 << 20,
            max_requests_per_app: 64,
            // As many as the app may have in flight: a steady load reuses its
            // connections instead of opening one per call (which cost a third
            // of a call's CPU); a burst's are closed after `idle_timeout`.
            max_idle_connections: 64,
            idle_timeout: Duration::from_millis(20_000),
        }
    }
}

/// Access-token caching (`[token]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenSettings {
    /// Refresh this long before expiry, in the background, while callers keep the
    /// still-valid token (`refresh_ahead_secs`). Capped at a quarter of the token's lifetime.
    #[serde(rename = "refresh_ahead_secs", with = "units::secs")]
    pub refresh_ahead: Duration,
    /// Treat a token as expired this long before WeCom does, to absorb clock skew and
    /// request latency (`expiry_margin_secs`). Capped at a tenth of the token's lifetime.
    #[serde(rename = "expiry_margin_secs", with = "units::secs")]
    pub expiry_margin: Duration,
    /// After `gettoken` rejects the credentials (40001, 40013), answer callers with
    /// that error for this long instead of calling `gettoken` again (`credential_cooldown_secs`).
    #[serde(rename = "credential_cooldown_secs", with = "units::secs")]
    pub credential_cooldown: Duration,
    /// After a transient `gettoken` failure, wait at least this long (doubling, with
    /// jitter, up to `failure_backoff_max_ms`) before the next attempt (`failure_backoff_ms`).
    #[serde(rename = "failure_backoff_ms", with = "units::millis")]
    pub failure_backoff: Duration,
    /// Longest wait between `gettoken` attempts after transient failures (`failure_backoff_max_ms`).
    #[serde(rename = "failure_backoff_max_ms", with = "units::millis")]
    pub failure_backoff_max: Duration,
}

impl TokenSettings {
    /// How the token cache keeps tokens and holds failed fetches, as set here.
    pub fn policy(&self) -> TokenPolicy {
        TokenPolicy {
            refresh_ahead: self.refresh_ahead,
            expiry_margin: self.expiry_margin,
            credential_cooldown: self.credential_cooldown,
            failure_backoff: self.failure_backoff,
            failure_backoff_max: self.failure_backoff_max,
        }
    }
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            refresh_ahead: Duration::from_secs(300),
            expiry_margin: Duration::from_secs(30),
            credential_cooldown: Duration::from_secs(60),
            failure_backoff: Duration::from_millis(500),
            failure_backoff_max: Duration::from_millis(30_000),
        }
    }
}

/// Limits of the gRPC server (`[server]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Largest request message decoded, bytes. Valid requests are far below 8 KiB.
    pub max_decode_message_bytes: usize,
    /// Most calls in flight on one HTTP/2 connection; more wait for a free stream,
    /// so one connection cannot grow the gateway's memory without bound.
    pub max_concurrent_streams: u32,
    /// Most calls of the service in flight at once, over every connection; more are
    /// refused at once with UNAVAILABLE `OVERLOADED` (`max_calls_in_flight`).
    pub max_calls_in_flight: usize,
    /// Most connections open at once on the gRPC port; more wait in the listen
    /// backlog (`max_connections`).
    pub max_connections: usize,
    /// A new connection must send its first bytes within this long, or it is
    /// closed (`handshake_timeout_ms`).
    #[serde(rename = "handshake_timeout_ms", with = "units::millis")]
    pub handshake_timeout: Duration,
    /// A request's headers and body must arrive within this long; the call's own
    /// WeCom work has `upstream.call_timeout_ms` on top (`request_read_timeout_ms`).
    #[serde(rename = "request_read_timeout_ms", with = "units::millis")]
    pub request_read_timeout: Duration,
    /// An HTTP/2 ping after this long without frames finds dead peers
    /// (`keepalive_interval_ms`).
    #[serde(rename = "keepalive_interval_ms", with = "units::millis")]
    pub keepalive_interval: Duration,
    /// A peer that does not answer the ping within this long is dropped
    /// (`keepalive_timeout_ms`).
    #[serde(rename = "keepalive_timeout_ms", with = "units::millis")]
    pub keepalive_timeout: Duration,
    /// After SIGTERM, report NOT_SERVING this long before refusing new connections,
    /// so load balancers stop sending work first (`drain_delay_ms`).
    #[serde(rename = "drain_delay_ms", with = "units::millis")]
    pub drain_delay: Duration,
    /// Then give in-flight calls at most this long to finish (`shutdown_grace_ms`).
    #[serde(rename = "shutdown_grace_ms", with = "units::millis")]
    pub shutdown_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_decode_message_bytes: 64 * 1024,
            max_concurrent_streams: 200,
            max_calls_in_flight: 2_000,
            max_connections: 10_000,
            handshake_timeout: Duration::from_millis(10_000),
            request_read_timeout: Duration::from_millis(10_000),
            keepalive_interval: Duration::from_millis(60_000),
            keepalive_timeout: Duration::from_millis(20_000),
            drain_delay: Duration::from_millis(2_000),
            shutdown_grace: Duration::from_millis(10_000),
        }
    }
}

/// TLS on the gRPC port (`[tls]`): on when a certificate and its key are given.
/// The files are re-read when they change.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The PEM certificate chain, the gateway's certificate first (`cert_file`,
    /// `WECOM_TLS_CERT_FILE`; `tls.crt` of a Kubernetes TLS Secret).
    pub cert_file: PathBuf,
    /// Its PEM private key (`key_file`, `WECOM_TLS_KEY_FILE`; `tls.key`).
    pub key_file: PathBuf,
    /// PEM certificates of the CAs that sign client certificates: with it every
    /// client must present one (mTLS) (`client_ca_file`, `WECOM_TLS_CLIENT_CA_FILE`).
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are checked for a change (`reload_interval_ms`). The
    /// handshake itself is bounded by `server.handshake_timeout_ms`.
    pub reload_interval: Duration,
}

/// Caller authentication (`[auth]`): on when a callers file is given. The file is
/// re-read when it changes.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Who may call, and which apps each may use (`callers_file`, `WECOM_CALLERS_FILE`).
    pub callers_file: PathBuf,
    /// What the file held when the configuration was loaded.
    pub callers: Callers,
    /// `grpc.health.v1.Health` answers without credentials (`open_health`):
    /// Kubernetes' gRPC probes and load balancers send none.
    pub open_health: bool,
    /// Server reflection answers without credentials (`open_reflection`): it
    /// describes the API, not its data.
    pub open_reflection: bool,
    /// How often the file is checked for a change (`reload_interval_ms`).
    pub reload_interval: Duration,
}

/// WeCom's frequency limits (访问频率限制), kept by the gateway so that callers get
/// RESOURCE_EXHAUSTED with a retry delay instead of WeCom's 45009, which blocks the
/// API for the corp for a minute or an hour (`[limits]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Calls per corp and per API in any minute; apps of one corp share them.
    /// WeCom allows 10,000 (`corp_api_per_minute`).
    pub corp_api_per_minute: u32,
    /// The same in any hour; WeCom allows 150,000 (`corp_api_per_hour`).
    pub corp_api_per_hour: u32,
    /// Calls per API in any minute for the whole gateway, whatever the corp:
    /// WeCom's per-IP limit (20,000; 40,000 for a 服务商's IP) for a gateway that
    /// serves many corps from one egress address. Unset: no such limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_api_per_minute: Option<u32>,
    /// The same in any hour (WeCom: 600,000; 1,200,000 for a 服务商). Unset: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_api_per_hour: Option<u32>,
    /// Longest a call waits for a free slot, never past its deadline (`max_wait_ms`).
    #[serde(rename = "max_wait_ms", with = "units::millis")]
    pub max_wait: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            corp_api_per_minute: 9_500,
            corp_api_per_hour: 142_500,
            gateway_api_per_minute: None,
            gateway_api_per_hour: None,
            max_wait: Duration::from_millis(1_000),
        }
    }
}

impl LimitSettings {
    /// The adapter's view; `None` where a limit is zero (refused by validation).
    fn rate_limits(&self) -> RateLimits {
        let window = |minute: u32, hour: u32| WindowLimits {
            per_minute: NonZeroU32::new(minute).unwrap_or(NonZeroU32::MAX),
            per_hour: NonZeroU32::new(hour).unwrap_or(NonZeroU32::MAX),
        };
        let gateway = (self.gateway_api_per_minute.is_some()
            || self.gateway_api_per_hour.is_some())
        .then(|| {
            window(
                self.gateway_api_per_minute.unwrap_or(u32::MAX),
                self.gateway_api_per_hour.unwrap_or(u32::MAX),
            )
        });
        RateLimits {
            per_corp: window(self.corp_api_per_minute, self.corp_api_per_hour),
            per_gateway: gateway,
        }
    }
}

/// A configuration problem, with the key (file key or environment variable) at fault.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    /// The key, e.g. `apps[1].corp_id` or `WECOM_CORP_SECRET_FILE`.
    pub key: String,
    /// What is wrong with it, and how to fix it.
    pub problem: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

impl Settings {
    /// Loads the file (if any), applies the environment, reads the secrets and
    /// validates the result.
    pub fn load(file: Option<&Path>, env: &dyn Environment) -> Result<Self, ConfigError> {
        load::load(file, env, None)
    }

    /// Loads like [`Settings::load`], then points every app at the sandbox with its
    /// demo credentials (`serve --sandbox`), before any secret is read: a demo never
    /// reaches the real WeCom, nor reads a real secret, whatever the file says.
    pub fn load_for_sandbox(
        file: Option<&Path>,
        env: &dyn Environment,
        sandbox: &SandboxApp,
    ) -> Result<Self, ConfigError> {
        load::load(file, env, Some(sandbox))
    }

    /// The configuration as a TOML file that loads back with `--config`: secrets
    /// read from a file or a variable by that reference, inline ones as `"****"`,
    /// URL passwords as `****` (`check-config`).
    pub fn to_toml(&self) -> String {
        file::render(self)
    }

    /// What the adapter needs to know of the apps and of WeCom.
    pub fn adapter(&self) -> (AdapterSettings, Vec<SuiteSpec>, Vec<AppSpec>) {
        let upstream = &self.upstream;
        let settings = AdapterSettings {
            http: HttpSettings {
                connect_timeout: upstream.connect_timeout,
                request_timeout: upstream.request_timeout,
                max_body_bytes: upstream.max_body_bytes,
                max_idle_connections: upstream.max_idle_connections,
                idle_timeout: upstream.idle_timeout,
            },
            retry: upstream.retry(),
            tokens: self.token.policy(),
            rate_limits: self.limits.rate_limits(),
            max_rate_wait: self.limits.max_wait,
            max_requests_per_app: upstream.max_requests_per_app,
            fleet: self.redis.as_ref().and_then(RedisSettings::fleet),
        };
        let mut apps = app_specs(&self.apps, CONFIG_GROUP);
        for (name, suite) in &self.suites {
            apps.extend(corp_specs(name, suite, &suite.corps));
        }
        if let Some(file) = &self.apps_file {
            apps.extend(app_specs(&file.apps, APPS_FILE_GROUP));
        }
        let suites = self
            .suites
            .iter()
            .map(|(name, suite)| SuiteSpec {
                name: name.clone(),
                suite_id: suite.suite_id.clone(),
                secret: suite.secret.clone(),
                api_base: suite.api_base.clone(),
            })
            .collect();
        (settings, suites, apps)
    }
}
