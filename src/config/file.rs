//! The configuration file (TOML), as read and as `check-config` writes it.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::{
    ConfigError, LimitSettings, SecretOrigin, ServerSettings, Settings, TokenSettings,
    UpstreamSettings,
    provider::{FileCallback, FileSuite, RenderedSuite},
    redis::{FileRedis, RenderedRedis},
    validate::{is_cleartext_remote, is_exposed},
};
use crate::telemetry::redacted;

/// What `check-config` prints in place of a secret written inline: the output
/// loads back, with this as the secret, until the real one is put back.
pub(super) const PLACEHOLDER: &str = "****";

/// The file as written. Every key is optional; unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct FileSettings {
    pub(super) listen: Option<SocketAddr>,
    pub(super) admin_listen: Option<SocketAddr>,
    pub(super) default_app: Option<String>,
    /// The API base of every app that sets none.
    pub(super) api_base: Option<String>,
    pub(super) apps: Vec<FileApp>,
    pub(super) upstream: UpstreamSettings,
    pub(super) token: TokenSettings,
    pub(super) server: ServerSettings,
    pub(super) limits: LimitSettings,
    pub(super) tls: FileTls,
    pub(super) auth: FileAuth,
    pub(super) redis: FileRedis,
    pub(super) suites: Vec<FileSuite>,
    pub(super) callback: FileCallback,
    /// More apps, in a file of their own that is re-read when it changes.
    pub(super) apps_file: Option<PathBuf>,
    pub(super) apps_reload_interval_ms: Option<u64>,
}

/// `[tls]` as written, and as printed when TLS is on.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct FileTls {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) client_ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) reload_interval_ms: Option<u64>,
}

/// `[auth]` as written, and as printed when caller authentication is on.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct FileAuth {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) callers_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) open_health: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) open_reflection: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) reload_interval_ms: Option<u64>,
}

/// One `[[apps]]` entry: a secret is given inline, by file, or by variable name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileApp {
    pub(super) name: String,
    pub(super) corp_id: Option<String>,
    pub(super) secret: Option<SecretString>,
    pub(super) secret_file: Option<PathBuf>,
    pub(super) secret_env: Option<String>,
    pub(super) api_base: Option<String>,
}

/// Parses the file's text.
pub(super) fn parse(text: &str) -> Result<FileSettings, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::new("--config", toml_problem(text, &e)))
}

/// What is wrong with a TOML text and where. toml's own Display quotes the
/// offending line, which may hold a secret or a URL password: say where and what,
/// never the text itself.
pub(crate) fn toml_problem(text: &str, error: &toml::de::Error) -> String {
    let place = error.span().map_or_else(String::new, |span| {
        let before = text.get(..span.start.min(text.len())).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!("line {line}, column {column}: ")
    });
    format!("{place}{}", error.message().trim_end())
}

/// What `check-config` prints: the same keys, every value explicit.
#[derive(Serialize)]
struct Rendered<'a> {
    listen: SocketAddr,
    admin_listen: SocketAddr,
    default_app: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    apps_file: Option<&'a Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    apps_reload_interval_ms: Option<u64>,
    apps: Vec<RenderedApp<'a>>,
    upstream: &'a UpstreamSettings,
    token: &'a TokenSettings,
    server: &'a ServerSettings,
    limits: &'a LimitSettings,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<FileTls>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<FileAuth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<RenderedRedis>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    suites: Vec<RenderedSuite<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    callback: Option<FileCallback>,
}

#[derive(Serialize)]
struct RenderedApp<'a> {
    name: &'a str,
    corp_id: &'a str,
    /// Never an inline secret: a placeholder that still loads back.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<&'static str>,
    /// References are not secrets: they are kept, so the file works as it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_file: Option<&'a Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_env: Option<&'a str>,
    api_base: String,
}

/// The settings as a file that loads back: secret references as they were, inline
/// secrets and URL passwords as `****`.
/// Warnings come first, as comments, so they stay with a saved copy; the callers
/// and their apps come last, as comments too (never their token digests).
pub(super) fn render(settings: &Settings) -> String {
    let mut out = String::new();
    for (name, app) in &settings.apps {
        if is_cleartext_remote(&app.api_base) {
            out.push_str(&format!(
                "# WARNING: app {name} talks plain HTTP to a remote host; its secret and \
                 tokens would cross the network in clear text\n"
            ));
        }
    }
    if let Some(warning) = is_exposed(settings) {
        out.push_str(&format!("# WARNING: {warning}\n"));
    }
    for (name, suite) in &settings.suites {
        if suite.encoding_aes_key_origin == SecretOrigin::Inline {
            out.push_str(&format!(
                "# WARNING: suite {name}'s encoding_aes_key is written inline and printed as \
                 \"{PLACEHOLDER}\": a copy of this file refuses the suite's callbacks until the \
                 EncodingAESKey is supplied by encoding_aes_key_file or encoding_aes_key_env\n"
            ));
        }
    }
    let rendered = Rendered {
        listen: settings.listen,
        admin_listen: settings.admin_listen,
        default_app: &settings.default_app,
        apps: settings
            .apps
            .iter()
            .map(|(name, app)| {
                let (secret, secret_file, secret_env) = match &app.secret_origin {
                    SecretOrigin::Inline => (Some(PLACEHOLDER), None, None),
                    SecretOrigin::File(path) => (None, Some(path.as_path()), None),
                    SecretOrigin::Env(var) => (None, None, Some(var.as_str())),
                };
                RenderedApp {
                    name,
                    corp_id: &app.corp_id,
                    secret,
                    secret_file,
                    secret_env,
                    api_base: redacted(&app.api_base).to_string(),
                }
            })
            .collect(),
        upstream: &settings.upstream,
        token: &settings.token,
        server: &settings.server,
        limits: &settings.limits,
        tls: settings.tls.as_ref().map(|tls| FileTls {
            cert_file: Some(tls.cert_file.clone()),
            key_file: Some(tls.key_file.clone()),
            client_ca_file: tls.client_ca_file.clone(),
            reload_interval_ms: Some(millis(tls.reload_interval)),
        }),
        auth: settings.auth.as_ref().map(|auth| FileAuth {
            callers_file: Some(auth.callers_file.clone()),
            open_health: Some(auth.open_health),
            open_reflection: Some(auth.open_reflection),
            reload_interval_ms: Some(millis(auth.reload_interval)),
        }),
        redis: settings.redis.as_ref().map(|redis| redis.rendered()),
        apps_file: settings.apps_file.as_ref().map(|file| file.path.as_path()),
        apps_reload_interval_ms: settings
            .apps_file
            .as_ref()
            .map(|file| millis(file.reload_interval)),
        suites: settings
            .suites
            .iter()
            .map(|(name, suite)| RenderedSuite::new(name, suite))
            .collect(),
        callback: (!settings.suites.is_empty()).then(|| settings.callback.rendered()),
    };
    // Strings, integers, tables and arrays of tables, with every table after the
    // plain keys: nothing TOML cannot represent.
    out.push_str(&toml::to_string(&rendered).expect("the rendered settings are plain TOML"));
    if let Some(auth) = &settings.auth {
        out.push_str(&format!(
            "\n# {} caller(s) in {}, and the apps each may use:\n",
            auth.callers.len(),
            auth.callers_file.display()
        ));
        for line in auth.callers.describe() {
            out.push_str(&format!("#   {line}\n"));
        }
    }
    out
}

/// Whole milliseconds; durations are bounded by validation far below u64::MAX.
pub(super) fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
