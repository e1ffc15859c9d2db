//! Typed settings: an optional TOML file, then the environment, then the command line.
//!
//! Every knob has a default, so `WECOM_CORP_ID` plus `WECOM_CORP_SECRET` is a complete
//! configuration. Validation errors name the key that is wrong ([`ConfigError::key`]).

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::Path, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

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
}

/// One WeCom app: a corp and the secret of one of its apps (自建应用 or 代开发应用).
#[derive(Clone)]
pub struct AppSettings {
    /// 企业ID (`corpid`).
    pub corp_id: String,
    /// The app's `corpsecret`. Only [`ExposeSecret`] reads it, in the `gettoken` call.
    pub secret: SecretString,
    /// Where WeCom is; loopback for the sandbox and tests.
    pub api_base: String,
}

impl AppSettings {
    /// Plain HTTP to a host other than this machine: the secret and the tokens, which
    /// travel in query strings, would cross the network in clear text.
    pub fn is_cleartext_remote(&self) -> bool {
        let Some(rest) = self.api_base.strip_prefix("http://") else {
            return false;
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let host = match authority.strip_prefix('[') {
            Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
            None => authority.split(':').next().unwrap_or_default(),
        };
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        !loopback
    }
}

impl fmt::Debug for AppSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSettings")
            .field("corp_id", &self.corp_id)
            .field("secret", &"****")
            .field("api_base", &self.api_base)
            .finish()
    }
}

/// Timeouts, retries and limits of the calls to WeCom.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// TCP + TLS connect timeout, milliseconds.
    pub connect_timeout_ms: u64,
    /// One HTTP request, from sending to the last body byte, milliseconds.
    pub request_timeout_ms: u64,
    /// One RPC's whole upstream work, token refresh and retries included, milliseconds.
    /// A shorter gRPC deadline from the caller wins.
    pub call_timeout_ms: u64,
    /// Retries after errcode -1 (系统繁忙), HTTP 5xx or a transport error. WeCom advises at most 3.
    pub max_retries: u32,
    /// First retry delay, milliseconds; doubles each retry, with jitter.
    pub retry_backoff_ms: u64,
    /// Largest WeCom response body read, bytes; larger bodies fail the call.
    pub max_body_bytes: usize,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 2_000,
            request_timeout_ms: 5_000,
            call_timeout_ms: 10_000,
            max_retries: 3,
            retry_backoff_ms: 100,
            max_body_bytes: 1 << 20,
        }
    }
}

/// Access-token caching.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenSettings {
    /// Refresh this long before expiry, in the background, while callers keep the
    /// still-valid token. Capped at a quarter of the token's lifetime.
    pub refresh_ahead_secs: u64,
    /// Treat a token as expired this long before WeCom does, to absorb clock skew and
    /// request latency. Capped at a tenth of the token's lifetime.
    pub expiry_margin_secs: u64,
    /// After `gettoken` rejects the credentials (40001, 40013), answer callers with
    /// that error for this long instead of calling `gettoken` again.
    pub credential_cooldown_secs: u64,
    /// After a transient `gettoken` failure, wait at least this long (doubling, with
    /// jitter, up to `failure_backoff_max_ms`) before the next attempt.
    pub failure_backoff_ms: u64,
    /// Longest wait between `gettoken` attempts after transient failures.
    pub failure_backoff_max_ms: u64,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            refresh_ahead_secs: 300,
            expiry_margin_secs: 30,
            credential_cooldown_secs: 60,
            failure_backoff_ms: 500,
            failure_backoff_max_ms: 30_000,
        }
    }
}

/// Limits of the gRPC server.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Largest request message decoded, bytes. Valid requests are far below 8 KiB.
    pub max_decode_message_bytes: usize,
    /// Most calls in flight on one HTTP/2 connection; more wait for a free stream,
    /// so one connection cannot grow the gateway's memory without bound.
    pub max_concurrent_streams: u32,
    /// After SIGTERM, report NOT_SERVING this long before refusing new connections,
    /// so load balancers stop sending work first.
    pub drain_delay_ms: u64,
    /// Then give in-flight calls at most this long to finish.
    pub shutdown_grace_ms: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_decode_message_bytes: 64 * 1024,
            max_concurrent_streams: 200,
            drain_delay_ms: 2_000,
            shutdown_grace_ms: 10_000,
        }
    }
}

impl UpstreamSettings {
    /// Connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    /// Per-request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    /// Whole-call timeout.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }
    /// First retry delay.
    pub fn retry_backoff(&self) -> Duration {
        Duration::from_millis(self.retry_backoff_ms)
    }
}

impl ServerSettings {
    /// Drain delay.
    pub fn drain_delay(&self) -> Duration {
        Duration::from_millis(self.drain_delay_ms)
    }
    /// Shutdown grace.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

// === the file ===

/// The configuration file as written (TOML).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileSettings {
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    default_app: Option<String>,
    api_base: Option<String>,
    apps: Vec<FileApp>,
    upstream: UpstreamSettings,
    token: TokenSettings,
    server: ServerSettings,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApp {
    name: String,
    corp_id: Option<String>,
    secret: Option<SecretString>,
    secret_file: Option<String>,
    secret_env: Option<String>,
    api_base: Option<String>,
}

// === errors ===

/// A configuration problem, with the key (file key or environment variable) at fault.
#[derive(Debug, thiserror::Error)]
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

// === loading ===

/// Where the environment comes from: the process, or a map in tests (so tests never
/// call `std::env::set_var`, which races with other threads).
pub trait Environment {
    /// The variable's value, if set and not empty.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Environment for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty()).cloned()
    }
}

/// Some variables set over another environment; the sandbox's demo credentials
/// hide any real ones, and a secret file set below is ignored.
struct Overlay<'a> {
    vars: BTreeMap<String, String>,
    below: &'a dyn Environment,
}

impl Environment for Overlay<'_> {
    fn var(&self, name: &str) -> Option<String> {
        match (self.vars.var(name), name) {
            (Some(value), _) => Some(value),
            (None, "WECOM_CORP_SECRET_FILE") => None,
            (None, _) => self.below.var(name),
        }
    }
}

impl Settings {
    /// Loads the file (if any), applies the environment, and validates the result.
    pub fn load(file: Option<&Path>, env: &dyn Environment) -> Result<Self, ConfigError> {
        Self::resolve(Self::read_file(file)?, env)
    }

    fn read_file(file: Option<&Path>) -> Result<FileSettings, ConfigError> {
        match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
                })?;
                Self::parse_file(&text)
            }
            None => Ok(FileSettings::default()),
        }
    }

    /// Loads like [`Settings::load`], with every app pointed at a sandbox at
    /// `api_base` with the sandbox's demo credentials (`serve --sandbox`): a demo
    /// never reaches the real WeCom, whatever the file says.
    pub fn load_for_sandbox(
        file: Option<&Path>,
        env: &dyn Environment,
        api_base: &str,
        corp_id: &str,
        secret: &str,
    ) -> Result<Self, ConfigError> {
        let overlay = Overlay {
            vars: BTreeMap::from([
                ("WECOM_API_BASE".to_owned(), api_base.to_owned()),
                ("WECOM_CORP_ID".to_owned(), corp_id.to_owned()),
                ("WECOM_CORP_SECRET".to_owned(), secret.to_owned()),
            ]),
            below: env,
        };
        // The file's apps get the demo credentials before anything is resolved, so
        // no real secret file or variable is read for a demo.
        let mut parsed = Self::read_file(file)?;
        for app in &mut parsed.apps {
            app.corp_id = Some(corp_id.to_owned());
            app.secret = Some(SecretString::from(secret.to_owned()));
            app.secret_file = None;
            app.secret_env = None;
            app.api_base = Some(api_base.to_owned());
        }
        Self::resolve(parsed, &overlay)
    }

    fn parse_file(text: &str) -> Result<FileSettings, ConfigError> {
        toml::from_str(text).map_err(|e| {
            // toml's message names the key and the line; keep it whole.
            ConfigError::new("--config", e.to_string().trim_end().to_owned())
        })
    }

    fn resolve(file: FileSettings, env: &dyn Environment) -> Result<Self, ConfigError> {
        // Where the shared base came from, to name it if it is wrong.
        let (global_base, global_base_key) = match (env.var("WECOM_API_BASE"), file.api_base) {
            (Some(base), _) => (base, "WECOM_API_BASE"),
            (None, Some(base)) => (base, "api_base"),
            (None, None) => (DEFAULT_API_BASE.to_owned(), "api_base"),
        };
        let base_key = |app_base: &Option<String>, i: usize| match app_base {
            Some(_) => format!("apps[{i}].api_base"),
            None => global_base_key.to_owned(),
        };

        let mut apps = BTreeMap::new();
        for (i, app) in file.apps.into_iter().enumerate() {
            let name_key = format!("apps[{i}].name");
            validate_app_name(&app.name).map_err(|p| ConfigError::new(&name_key, p))?;
            let secret = file_app_secret(&app, i, env)?;
            let corp_id = app
                .corp_id
                .filter(|c| !c.trim().is_empty())
                .ok_or_else(|| ConfigError::new(format!("apps[{i}].corp_id"), "is required"))?;
            let api_base = validate_api_base(
                app.api_base.clone().unwrap_or_else(|| global_base.clone()),
                &base_key(&app.api_base, i),
            )?;
            let settings = AppSettings {
                corp_id,
                secret,
                api_base,
            };
            if apps.insert(app.name.clone(), settings).is_some() {
                return Err(ConfigError::new(
                    name_key,
                    format!("`{}` names two apps; app names must be unique", app.name),
                ));
            }
        }

        let default_app = file.default_app.unwrap_or_else(|| {
            // One app in the file: it is the default whatever its name.
            match apps.keys().next() {
                Some(only) if apps.len() == 1 => only.clone(),
                _ => DEFAULT_APP_NAME.to_owned(),
            }
        });

        // The environment describes (or overrides) the default app.
        let env_corp = env.var("WECOM_CORP_ID");
        let env_secret = env_secret(env)?;
        if env_corp.is_some() || env_secret.is_some() {
            match apps.get_mut(&default_app) {
                Some(app) => {
                    if let Some(corp) = env_corp {
                        app.corp_id = corp;
                    }
                    if let Some(secret) = env_secret {
                        app.secret = secret;
                    }
                }
                None => {
                    let corp_id = env_corp.ok_or_else(|| {
                        ConfigError::new("WECOM_CORP_ID", "is required when a secret is set")
                    })?;
                    let secret = env_secret.ok_or_else(|| {
                        ConfigError::new(
                            "WECOM_CORP_SECRET",
                            "is required (or WECOM_CORP_SECRET_FILE) when WECOM_CORP_ID is set",
                        )
                    })?;
                    let api_base = validate_api_base(global_base.clone(), global_base_key)?;
                    apps.insert(
                        default_app.clone(),
                        AppSettings {
                            corp_id,
                            secret,
                            api_base,
                        },
                    );
                }
            }
        }

        if apps.is_empty() {
            return Err(ConfigError::new(
                "WECOM_CORP_ID",
                "no WeCom app is configured: set WECOM_CORP_ID and WECOM_CORP_SECRET \
                 (or WECOM_CORP_SECRET_FILE), or list apps in a --config file, \
                 or run `serve --sandbox` for the demo",
            ));
        }
        if !apps.contains_key(&default_app) {
            return Err(ConfigError::new(
                "default_app",
                format!(
                    "`{default_app}` is not one of the configured apps ({})",
                    apps.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }

        validate_upstream(&file.upstream)?;
        validate_token(&file.token)?;
        validate_server(&file.server)?;

        Ok(Settings {
            listen: file.listen.unwrap_or(([0, 0, 0, 0], 50051).into()),
            admin_listen: file.admin_listen.unwrap_or(([0, 0, 0, 0], 9464).into()),
            default_app,
            apps,
            upstream: file.upstream,
            token: file.token,
            server: file.server,
        })
    }

    /// A human-readable summary for `check-config`, secrets redacted.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "listen = {}\nadmin_listen = {}\ndefault_app = {}\n",
            self.listen, self.admin_listen, self.default_app
        );
        for (name, app) in &self.apps {
            if app.is_cleartext_remote() {
                out.push_str(&format!(
                    "WARNING: app {name} talks plain HTTP to a remote host; its secret and \
                     tokens would cross the network in clear text\n"
                ));
            }
            out.push_str(&format!(
                "app {name}: corp_id = {}, secret = ****, api_base = {}\n",
                app.corp_id, app.api_base
            ));
        }
        out.push_str(&format!(
            "{:?}\n{:?}\n{:?}\n",
            self.upstream, self.token, self.server
        ));
        out
    }
}

fn file_app_secret(
    app: &FileApp,
    i: usize,
    env: &dyn Environment,
) -> Result<SecretString, ConfigError> {
    let key = |k: &str| format!("apps[{i}].{k}");
    let given = [
        app.secret.is_some(),
        app.secret_file.is_some(),
        app.secret_env.is_some(),
    ];
    match given.iter().filter(|g| **g).count() {
        1 => {}
        0 => {
            return Err(ConfigError::new(
                key("secret"),
                "is required: set one of secret, secret_file, secret_env",
            ));
        }
        _ => {
            return Err(ConfigError::new(
                key("secret"),
                "set only one of secret, secret_file, secret_env",
            ));
        }
    }
    if let Some(secret) = &app.secret {
        if secret.expose_secret().trim().is_empty() {
            return Err(ConfigError::new(key("secret"), "must not be empty"));
        }
        return Ok(secret.clone());
    }
    if let Some(path) = &app.secret_file {
        return read_secret_file(path, &key("secret_file"));
    }
    let var = app.secret_env.as_deref().unwrap_or_default();
    env.var(var).map(SecretString::from).ok_or_else(|| {
        ConfigError::new(
            key("secret_env"),
            format!("environment variable {var} is not set"),
        )
    })
}

fn env_secret(env: &dyn Environment) -> Result<Option<SecretString>, ConfigError> {
    match (
        env.var("WECOM_CORP_SECRET"),
        env.var("WECOM_CORP_SECRET_FILE"),
    ) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            "WECOM_CORP_SECRET",
            "set either WECOM_CORP_SECRET or WECOM_CORP_SECRET_FILE, not both",
        )),
        (Some(secret), None) => Ok(Some(SecretString::from(secret))),
        (None, Some(path)) => read_secret_file(&path, "WECOM_CORP_SECRET_FILE").map(Some),
        (None, None) => Ok(None),
    }
}

fn read_secret_file(path: &str, key: &str) -> Result<SecretString, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {path}: {e}")))?;
    // Mounted Kubernetes Secrets often end with a newline that is not part of the secret.
    let secret = text.trim();
    if secret.is_empty() {
        return Err(ConfigError::new(key, format!("{path} is empty")));
    }
    Ok(SecretString::from(secret.to_owned()))
}

fn validate_app_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid app name: use 1-64 of A-Z a-z 0-9 - _ . \
             (callers send it as gRPC metadata)"
        ))
    }
}

fn validate_api_base(base: String, key: &str) -> Result<String, ConfigError> {
    let trimmed = base.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(['?', '#', ' ']) => Ok(trimmed.to_owned()),
        _ => Err(ConfigError::new(
            key,
            format!("`{base}` is not an http(s) base URL like {DEFAULT_API_BASE}"),
        )),
    }
}

/// Longest duration any knob accepts: an hour in milliseconds, a day in seconds.
/// Longer values are mistakes, and would overflow clock arithmetic.
const MAX_MS: u64 = 3_600_000;
const MAX_SECS: u64 = 86_400;

fn in_range(value: u64, min: u64, max: u64, key: &str) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("is {value}; it must be between {min} and {max}"),
        ))
    }
}

fn validate_upstream(u: &UpstreamSettings) -> Result<(), ConfigError> {
    in_range(
        u.connect_timeout_ms,
        1,
        MAX_MS,
        "upstream.connect_timeout_ms",
    )?;
    in_range(
        u.request_timeout_ms,
        1,
        MAX_MS,
        "upstream.request_timeout_ms",
    )?;
    in_range(u.call_timeout_ms, 1, MAX_MS, "upstream.call_timeout_ms")?;
    in_range(u.retry_backoff_ms, 0, MAX_MS, "upstream.retry_backoff_ms")?;
    // WeCom advises at most 3 retries after -1.
    in_range(u.max_retries.into(), 0, 10, "upstream.max_retries")?;
    in_range(
        u.max_body_bytes as u64,
        1024,
        64 << 20,
        "upstream.max_body_bytes",
    )
}

fn validate_token(t: &TokenSettings) -> Result<(), ConfigError> {
    in_range(
        t.refresh_ahead_secs,
        0,
        MAX_SECS,
        "token.refresh_ahead_secs",
    )?;
    in_range(
        t.expiry_margin_secs,
        0,
        MAX_SECS,
        "token.expiry_margin_secs",
    )?;
    in_range(
        t.credential_cooldown_secs,
        0,
        MAX_SECS,
        "token.credential_cooldown_secs",
    )?;
    in_range(t.failure_backoff_ms, 1, MAX_MS, "token.failure_backoff_ms")?;
    in_range(
        t.failure_backoff_max_ms,
        t.failure_backoff_ms,
        MAX_MS,
        "token.failure_backoff_max_ms",
    )
}

fn validate_server(s: &ServerSettings) -> Result<(), ConfigError> {
    in_range(
        s.max_decode_message_bytes as u64,
        1024,
        64 << 20,
        "server.max_decode_message_bytes",
    )?;
    in_range(
        s.max_concurrent_streams.into(),
        1,
        10_000,
        "server.max_concurrent_streams",
    )?;
    in_range(s.drain_delay_ms, 0, MAX_MS, "server.drain_delay_ms")?;
    in_range(s.shutdown_grace_ms, 0, MAX_MS, "server.shutdown_grace_ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn from_toml(text: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::resolve(Settings::parse_file(text)?, &env(vars))
    }

    #[test]
    fn environment_alone_is_a_complete_configuration() {
        let s = from_toml("", &[("WECOM_CORP_ID", "ww1"), ("WECOM_CORP_SECRET", "s3")]).unwrap();
        assert_eq!(s.default_app, "default");
        let app = &s.apps["default"];
        assert_eq!(app.corp_id, "ww1");
        assert_eq!(app.secret.expose_secret(), "s3");
        assert_eq!(app.api_base, DEFAULT_API_BASE);
        assert_eq!(s.listen, "0.0.0.0:50051".parse().unwrap());
        assert_eq!(s.admin_listen, "0.0.0.0:9464".parse().unwrap());
    }

    #[test]
    fn nothing_configured_names_the_variable_to_set() {
        let err = from_toml("", &[]).unwrap_err();
        assert_eq!(err.key, "WECOM_CORP_ID");
    }

    #[test]
    fn a_secret_without_a_corp_id_is_rejected() {
        let err = from_toml("", &[("WECOM_CORP_SECRET", "s")]).unwrap_err();
        assert_eq!(err.key, "WECOM_CORP_ID");
    }

    #[test]
    fn secret_file_is_read_and_trimmed() {
        let dir = std::env::temp_dir().join(format!("wku-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "from-file\n").unwrap();
        let s = from_toml(
            "",
            &[
                ("WECOM_CORP_ID", "ww1"),
                ("WECOM_CORP_SECRET_FILE", path.to_str().unwrap()),
            ],
        )
        .unwrap();
        assert_eq!(s.apps["default"].secret.expose_secret(), "from-file");
    }

    #[test]
    fn an_unreadable_secret_file_names_the_variable() {
        let err = from_toml(
            "",
            &[
                ("WECOM_CORP_ID", "ww1"),
                ("WECOM_CORP_SECRET_FILE", "/nonexistent/secret"),
            ],
        )
        .unwrap_err();
        assert_eq!(err.key, "WECOM_CORP_SECRET_FILE");
    }

    #[test]
    fn several_apps_from_the_file_with_env_overriding_the_default_app() {
        let text = r#"
            default_app = "shop"
            [[apps]]
            name = "shop"
            corp_id = "ww-shop"
            secret = "file-secret"
            [[apps]]
            name = "crm"
            corp_id = "ww-crm"
            secret_env = "CRM_SECRET"
            api_base = "http://127.0.0.1:9/"
            [upstream]
            max_retries = 1
        "#;
        let s = from_toml(
            text,
            &[
                ("CRM_SECRET", "crm-secret"),
                ("WECOM_CORP_SECRET", "env-secret"),
            ],
        )
        .unwrap();
        assert_eq!(s.default_app, "shop");
        assert_eq!(s.apps["shop"].secret.expose_secret(), "env-secret");
        assert_eq!(s.apps["crm"].secret.expose_secret(), "crm-secret");
        assert_eq!(s.apps["crm"].api_base, "http://127.0.0.1:9");
        assert_eq!(s.upstream.max_retries, 1);
        assert_eq!(
            s.upstream.call_timeout_ms, 10_000,
            "unset keys keep defaults"
        );
    }

    #[test]
    fn a_missing_secret_env_names_the_key() {
        let text = "[[apps]]\nname = \"a\"\ncorp_id = \"ww\"\nsecret_env = \"NOPE\"\n";
        let err = from_toml(text, &[]).unwrap_err();
        assert_eq!(err.key, "apps[0].secret_env");
    }

    #[test]
    fn an_unknown_key_is_reported_with_its_name() {
        let err = from_toml("[upstream]\nconect_timeout_ms = 5\n", &[]).unwrap_err();
        assert!(err.problem.contains("conect_timeout_ms"), "{err}");
    }

    #[test]
    fn zero_timeouts_are_rejected() {
        let err = from_toml(
            "[upstream]\ncall_timeout_ms = 0\n",
            &[("WECOM_CORP_ID", "ww"), ("WECOM_CORP_SECRET", "s")],
        )
        .unwrap_err();
        assert_eq!(err.key, "upstream.call_timeout_ms");
    }

    #[test]
    fn durations_that_would_overflow_the_clock_are_rejected() {
        let err = from_toml(
            "[token]\ncredential_cooldown_secs = 18446744073709551615\n",
            &[("WECOM_CORP_ID", "ww"), ("WECOM_CORP_SECRET", "s")],
        )
        .unwrap_err();
        assert_eq!(err.key, "token.credential_cooldown_secs");
    }

    #[test]
    fn a_default_app_that_is_not_configured_is_rejected() {
        let text =
            "default_app = \"x\"\n[[apps]]\nname = \"a\"\ncorp_id = \"ww\"\nsecret = \"s\"\n";
        let err = from_toml(text, &[]).unwrap_err();
        assert_eq!(err.key, "default_app");
    }

    #[test]
    fn duplicate_app_names_are_rejected() {
        let text = "[[apps]]\nname = \"a\"\ncorp_id = \"1\"\nsecret = \"s\"\n\
                    [[apps]]\nname = \"a\"\ncorp_id = \"2\"\nsecret = \"s\"\n";
        let err = from_toml(text, &[]).unwrap_err();
        assert_eq!(err.key, "apps[1].name");
    }

    #[test]
    fn a_bad_api_base_is_rejected() {
        let err = from_toml(
            "",
            &[
                ("WECOM_CORP_ID", "ww"),
                ("WECOM_CORP_SECRET", "s"),
                ("WECOM_API_BASE", "qyapi.weixin.qq.com"),
            ],
        )
        .unwrap_err();
        assert_eq!(err.key, "WECOM_API_BASE");
    }

    #[test]
    fn the_sandbox_overrides_the_default_apps_credentials_and_base() {
        let real = env(&[
            ("WECOM_CORP_ID", "real"),
            ("WECOM_CORP_SECRET_FILE", "/nonexistent"),
        ]);
        let s =
            Settings::load_for_sandbox(None, &real, "http://127.0.0.1:1", "sbx", "demo").unwrap();
        let app = &s.apps["default"];
        assert_eq!(
            (app.corp_id.as_str(), app.api_base.as_str()),
            ("sbx", "http://127.0.0.1:1")
        );
        assert_eq!(app.secret.expose_secret(), "demo");
    }

    #[test]
    fn the_sandbox_takes_over_every_app_of_the_file() {
        let dir = std::env::temp_dir().join(format!("wku-sbx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("apps.toml");
        std::fs::write(
            &path,
            "[[apps]]\nname = \"a\"\ncorp_id = \"real-a\"\nsecret = \"real\"\n\
             api_base = \"https://example.invalid\"\n\
             [[apps]]\nname = \"b\"\ncorp_id = \"real-b\"\nsecret_env = \"UNSET_VAR\"\n\
             [[apps]]\nname = \"c\"\ncorp_id = \"real-c\"\nsecret_file = \"/nonexistent\"\n",
        )
        .unwrap();
        let sandbox = "http://127.0.0.1:1";
        let s = Settings::load_for_sandbox(Some(&path), &env(&[]), sandbox, "sbx", "demo").unwrap();
        // Several apps and no default_app: the sandbox's credentials make the default app.
        assert_eq!(
            s.apps.keys().collect::<Vec<_>>(),
            ["a", "b", "c", "default"]
        );
        for app in s.apps.values() {
            assert_eq!(app.api_base, sandbox);
            assert_eq!(app.corp_id, "sbx");
            assert_eq!(app.secret.expose_secret(), "demo");
        }
    }

    #[test]
    fn a_bad_base_in_the_file_is_named_by_its_file_key() {
        let err = from_toml(
            "api_base = \"ftp://x\"\n",
            &[("WECOM_CORP_ID", "ww"), ("WECOM_CORP_SECRET", "s")],
        )
        .unwrap_err();
        assert_eq!(err.key, "api_base");
    }

    #[test]
    fn empty_values_in_the_file_are_named() {
        let text = "[[apps]]\nname = \"a\"\ncorp_id = \"ww\"\nsecret = \" \"\n";
        assert_eq!(from_toml(text, &[]).unwrap_err().key, "apps[0].secret");
        let text = "[[apps]]\nname = \"a\"\ncorp_id = \"\"\nsecret = \"s\"\n";
        assert_eq!(from_toml(text, &[]).unwrap_err().key, "apps[0].corp_id");
    }

    #[test]
    fn plain_http_is_flagged_unless_it_stays_on_this_machine() {
        let app = |base: &str| AppSettings {
            corp_id: "ww".into(),
            secret: SecretString::from("s".to_owned()),
            api_base: base.into(),
        };
        for local in [
            "http://127.0.0.1:9465",
            "http://localhost",
            "http://[::1]:80/x",
            "https://qyapi.weixin.qq.com",
        ] {
            assert!(!app(local).is_cleartext_remote(), "{local}");
        }
        for remote in [
            "http://qyapi.weixin.qq.com",
            "http://10.0.0.1:80",
            "http://sandbox:9465",
        ] {
            assert!(app(remote).is_cleartext_remote(), "{remote}");
        }
    }

    #[test]
    fn describe_and_debug_never_show_the_secret() {
        let s = from_toml(
            "",
            &[("WECOM_CORP_ID", "ww"), ("WECOM_CORP_SECRET", "TOPSECRET")],
        )
        .unwrap();
        assert!(!s.describe().contains("TOPSECRET"));
        assert!(!format!("{s:?}").contains("TOPSECRET"));
    }
}
