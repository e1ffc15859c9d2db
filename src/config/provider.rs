//! Third-party suites (`[[suites]]`), their authorised corps (each suite's
//! `corps_file`), the callback endpoint WeCom pushes suite tickets to
//! (`[callback]`), and the apps file (`apps_file`) whose apps — 代开发 apps
//! arriving as corps authorise a template — are added without a restart.
//!
//! The corps file and the apps file are re-read when they change; what they hold
//! is parsed here, both when loading and when reloading.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use super::{
    AppSettings, ConfigError, SecretOrigin,
    env::Environment,
    file::{FileApp, PLACEHOLDER, millis, toml_problem},
    load::{AppPlan, SecretSpec, secret_spec},
    validate,
};
use crate::{
    reload::{Digest, Snapshot},
    wecom::{AppCredentials, AppSpec},
};

/// The port the callback endpoint listens on by default.
pub(super) const CALLBACK_PORT: u16 = 9466;
/// How often changed corps files and apps files are noticed.
pub(super) const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// The group of apps from the configuration file and the environment.
pub const CONFIG_GROUP: &str = "the configuration";
/// The group of apps from the apps file.
pub const APPS_FILE_GROUP: &str = "the apps file";

/// The group of a suite's corps.
pub fn corps_group(suite: &str) -> String {
    format!("the corps file of suite {suite}")
}

/// One third-party suite (第三方应用) and the corps that authorised it.
#[derive(Clone)]
pub struct SuiteSettings {
    /// `suite_id`.
    pub suite_id: String,
    /// `suite_secret` (`suite_secret`, `suite_secret_file`, `suite_secret_env`).
    pub secret: SecretString,
    /// Where it was read from.
    pub secret_origin: SecretOrigin,
    /// The callback's Token (`token`, `token_file`, `token_env`).
    pub callback_token: SecretString,
    /// Where it was read from.
    pub callback_token_origin: SecretOrigin,
    /// The callback's EncodingAESKey, 43 characters (`encoding_aes_key`,
    /// `encoding_aes_key_file`, `encoding_aes_key_env`).
    pub encoding_aes_key: SecretString,
    /// Where it was read from.
    pub encoding_aes_key_origin: SecretOrigin,
    /// The provider's own corp id (`provider_corp_id`): the receiver id of
    /// WeCom's URL check, which may be it rather than the suite id.
    pub provider_corp_id: Option<String>,
    /// Where WeCom is.
    pub api_base: Url,
    /// The authorised corps: from `corps_file`, or given in place (the sandbox).
    pub corps: Vec<CorpSettings>,
    /// The file the corps come from, re-read when it changes (`corps_file`).
    pub corps_file: Option<PathBuf>,
    /// The digest of the file's bytes `corps` was read from: its reloads start
    /// from what was parsed, not from a later read that a change may slip between.
    pub(crate) corps_digest: Digest,
    /// How often it is checked for a change (`reload_interval_ms`).
    pub reload_interval: Duration,
}

impl std::fmt::Debug for SuiteSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SuiteSettings")
            .field("suite_id", &self.suite_id)
            .field("secret_origin", &self.secret_origin)
            .field("callback_token_origin", &self.callback_token_origin)
            .field("encoding_aes_key_origin", &self.encoding_aes_key_origin)
            .field("provider_corp_id", &self.provider_corp_id)
            .field("corps", &self.corps)
            .field("corps_file", &self.corps_file)
            .finish_non_exhaustive()
    }
}

/// A corp that authorised a suite: an app callers pick by its name.
#[derive(Clone)]
pub struct CorpSettings {
    /// The app name callers send as `x-wecom-app`.
    pub app: String,
    /// `auth_corpid`.
    pub corp_id: String,
    /// Its `permanent_code` (永久授权码).
    pub permanent_code: SecretString,
}

impl std::fmt::Debug for CorpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CorpSettings")
            .field("app", &self.app)
            .field("corp_id", &self.corp_id)
            .field("permanent_code", &"****")
            .finish()
    }
}

/// The callback endpoint (`[callback]`): where WeCom pushes suite tickets and
/// authorisation events. Bound only when a suite is configured.
#[derive(Debug, Clone)]
pub struct CallbackSettings {
    /// Its own listener (`listen`, `WECOM_CALLBACK_LISTEN`): WeCom must reach it
    /// from the internet, while the gRPC port stays internal.
    pub listen: SocketAddr,
    /// A callback whose timestamp is further than this from the gateway's clock is
    /// refused; seen callbacks are remembered this long (`max_clock_skew_secs`).
    pub max_clock_skew: Duration,
    /// Largest callback body read (`max_body_bytes`).
    pub max_body_bytes: usize,
    /// Most callbacks remembered to refuse replays (`max_remembered`).
    pub max_remembered: usize,
    /// Most connections open at once on the callback port; more wait in the listen
    /// backlog (`max_connections`). The port faces the internet.
    pub max_connections: usize,
    /// A new connection must send its first bytes within this long, or it is
    /// closed (`handshake_timeout_ms`).
    pub handshake_timeout: Duration,
    /// A callback's headers must arrive within this long, and then its body within
    /// this long again, or the connection is closed (`request_read_timeout_ms`).
    pub request_read_timeout: Duration,
}

impl CallbackSettings {
    /// `[callback]` over the defaults; `listen` when the file and the environment
    /// name no address.
    pub(super) fn from_file(file: &FileCallback, listen: Option<SocketAddr>) -> Self {
        let everywhere = SocketAddr::from((Ipv4Addr::UNSPECIFIED, CALLBACK_PORT));
        Self {
            listen: listen.or(file.listen).unwrap_or(everywhere),
            max_clock_skew: Duration::from_secs(file.max_clock_skew_secs.unwrap_or(300)),
            max_body_bytes: file.max_body_bytes.unwrap_or(64 * 1024),
            max_remembered: file.max_remembered.unwrap_or(100_000),
            max_connections: file.max_connections.unwrap_or(1_000),
            handshake_timeout: Duration::from_millis(file.handshake_timeout_ms.unwrap_or(10_000)),
            request_read_timeout: Duration::from_millis(
                file.request_read_timeout_ms.unwrap_or(10_000),
            ),
        }
    }

    /// As `check-config` prints it.
    pub(super) fn rendered(&self) -> FileCallback {
        FileCallback {
            listen: Some(self.listen),
            max_clock_skew_secs: Some(self.max_clock_skew.as_secs()),
            max_body_bytes: Some(self.max_body_bytes),
            max_remembered: Some(self.max_remembered),
            max_connections: Some(self.max_connections),
            handshake_timeout_ms: Some(millis(self.handshake_timeout)),
            request_read_timeout_ms: Some(millis(self.request_read_timeout)),
        }
    }
}

/// The apps file (`apps_file`, `WECOM_APPS_FILE`): `[[apps]]` as in the
/// configuration file, re-read when it changes.
#[derive(Debug, Clone)]
pub struct AppsFileSettings {
    /// The file.
    pub path: PathBuf,
    /// How often it is checked for a change (`apps_reload_interval_ms`).
    pub reload_interval: Duration,
    /// The API base of its apps that set none.
    pub api_base: Url,
    /// What it held when the configuration was loaded.
    pub apps: BTreeMap<String, AppSettings>,
    /// The digest of the bytes `apps` was read from: its reloads start from it.
    pub(crate) digest: Digest,
}

/// `[callback]` as written, and as printed.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct FileCallback {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) max_clock_skew_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) max_body_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) max_remembered: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) max_connections: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) handshake_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) request_read_timeout_ms: Option<u64>,
}

/// One `[[suites]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSuite {
    name: String,
    suite_id: Option<String>,
    suite_secret: Option<SecretString>,
    suite_secret_file: Option<PathBuf>,
    suite_secret_env: Option<String>,
    token: Option<SecretString>,
    token_file: Option<PathBuf>,
    token_env: Option<String>,
    encoding_aes_key: Option<SecretString>,
    encoding_aes_key_file: Option<PathBuf>,
    encoding_aes_key_env: Option<String>,
    provider_corp_id: Option<String>,
    corps_file: Option<PathBuf>,
    api_base: Option<String>,
    reload_interval_ms: Option<u64>,
}

/// A suite as configured so far: nothing read yet.
pub(super) struct SuitePlan {
    suite_id: Result<String, ConfigError>,
    secret: Result<SecretSpec, ConfigError>,
    token: Result<SecretSpec, ConfigError>,
    aes_key: Result<SecretSpec, ConfigError>,
    provider_corp_id: Option<String>,
    corps: Corps,
    api_base: Option<Result<Url, ConfigError>>,
    reload_interval: Duration,
}

enum Corps {
    File { path: PathBuf, key: String },
    Given(Vec<CorpSettings>),
    Missing(ConfigError),
}

impl SuitePlan {
    pub(super) fn from_file(suite: FileSuite, i: usize) -> Result<(String, Self), ConfigError> {
        let key = |field: &str| format!("suites[{i}].{field}");
        validate::check_name("suite", &suite.name).map_err(|p| ConfigError::new(key("name"), p))?;
        let required = |value: Option<String>, field: &str| {
            value
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| ConfigError::new(key(field), "is required"))
        };
        let corps = match suite.corps_file {
            Some(path) => Corps::File {
                path,
                key: key("corps_file"),
            },
            None => Corps::Missing(ConfigError::new(
                key("corps_file"),
                "is required: the file that lists the corps that authorised the suite",
            )),
        };
        let plan = Self {
            suite_id: required(suite.suite_id, "suite_id"),
            secret: secret_spec(
                [
                    (suite.suite_secret.map(Into::into), "suite_secret"),
                    (suite.suite_secret_file.map(Into::into), "suite_secret_file"),
                    (suite.suite_secret_env.map(Into::into), "suite_secret_env"),
                ],
                &key,
            ),
            token: secret_spec(
                [
                    (suite.token.map(Into::into), "token"),
                    (suite.token_file.map(Into::into), "token_file"),
                    (suite.token_env.map(Into::into), "token_env"),
                ],
                &key,
            ),
            aes_key: secret_spec(
                [
                    (suite.encoding_aes_key.map(Into::into), "encoding_aes_key"),
                    (
                        suite.encoding_aes_key_file.map(Into::into),
                        "encoding_aes_key_file",
                    ),
                    (
                        suite.encoding_aes_key_env.map(Into::into),
                        "encoding_aes_key_env",
                    ),
                ],
                &key,
            ),
            provider_corp_id: suite.provider_corp_id.filter(|c| !c.trim().is_empty()),
            corps,
            api_base: suite
                .api_base
                .map(|base| validate::api_base(&base, &key("api_base"))),
            reload_interval: suite
                .reload_interval_ms
                .map_or(RELOAD_INTERVAL, Duration::from_millis),
        };
        Ok((suite.name, plan))
    }

    /// The sandbox's demo suite, with its corps given in place.
    pub(super) fn demo(sandbox: &SandboxSuite, api_base: Result<Url, ConfigError>) -> Self {
        let inline = |value: &str| {
            Ok(SecretSpec::inline(
                SecretString::from(value.to_owned()),
                "--sandbox",
            ))
        };
        Self {
            suite_id: Ok(sandbox.suite_id.clone()),
            secret: inline(&sandbox.suite_secret),
            token: inline(&sandbox.callback_token),
            aes_key: inline(&sandbox.encoding_aes_key),
            provider_corp_id: None,
            corps: Corps::Given(
                sandbox
                    .corps
                    .iter()
                    .map(|(app, corp_id, code)| CorpSettings {
                        app: app.clone(),
                        corp_id: corp_id.clone(),
                        permanent_code: SecretString::from(code.clone()),
                    })
                    .collect(),
            ),
            api_base: Some(api_base),
            reload_interval: RELOAD_INTERVAL,
        }
    }

    /// Reads the secrets and the corps file.
    pub(super) fn resolve(
        self,
        name: &str,
        env: &dyn Environment,
        shared_base: &Result<Url, ConfigError>,
    ) -> Result<SuiteSettings, ConfigError> {
        let suite_id = self.suite_id?;
        let (secret, secret_origin) = self.secret?.read(env)?;
        let (callback_token, callback_token_origin) = self.token?.read(env)?;
        let (encoding_aes_key, encoding_aes_key_origin) = self.aes_key?.read(env)?;
        // check-config's placeholder loads back, as an app's inline secret does;
        // the suite's callbacks are then refused until the key is supplied.
        let placeholder = encoding_aes_key_origin == SecretOrigin::Inline
            && encoding_aes_key.expose_secret() == PLACEHOLDER;
        let aes_key_problem = crate::wecom::suite::crypto::MsgCrypt::new(
            callback_token.clone(),
            encoding_aes_key.expose_secret(),
        )
        .err()
        .filter(|_| !placeholder);
        if let Some(problem) = aes_key_problem {
            return Err(ConfigError::new(
                format!("suites.{name}.encoding_aes_key"),
                problem.to_string(),
            ));
        }
        let api_base = match self.api_base {
            Some(base) => base?,
            None => shared_base.clone()?,
        };
        let (corps, corps_file) = match self.corps {
            Corps::File { path, key } => {
                let bytes = std::fs::read(&path).map_err(|e| {
                    ConfigError::new(&key, format!("cannot read {}: {e}", path.display()))
                })?;
                let corps = parse_corps(&bytes).map_err(|problem| {
                    ConfigError::new(&key, format!("{}: {problem}", path.display()))
                })?;
                (corps, Some((path, Snapshot::of(vec![bytes]).digest)))
            }
            Corps::Given(corps) => (corps, None),
            Corps::Missing(error) => return Err(error),
        };
        Ok(SuiteSettings {
            suite_id,
            secret,
            secret_origin,
            callback_token,
            callback_token_origin,
            encoding_aes_key,
            encoding_aes_key_origin,
            provider_corp_id: self.provider_corp_id,
            api_base,
            corps,
            corps_digest: corps_file.as_ref().map_or([0; 32], |(_, digest)| *digest),
            corps_file: corps_file.map(|(path, _)| path),
            reload_interval: self.reload_interval,
        })
    }
}

/// The sandbox's demo suite, which `serve --sandbox` puts in place of every suite.
#[derive(Debug, Clone)]
pub struct SandboxSuite {
    /// Its name.
    pub name: String,
    /// `suite_id`.
    pub suite_id: String,
    /// `suite_secret` (not a secret: it only opens the sandbox).
    pub suite_secret: String,
    /// The callback Token.
    pub callback_token: String,
    /// The callback EncodingAESKey.
    pub encoding_aes_key: String,
    /// The authorised corps: (app name, corp id, permanent code).
    pub corps: Vec<(String, String, String)>,
}

/// The corps file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCorps {
    #[serde(default)]
    corps: Vec<FileCorp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCorp {
    app: String,
    auth_corpid: String,
    permanent_code: SecretString,
}

/// Reads a corps file: `[[corps]]` with `app`, `auth_corpid`, `permanent_code`.
/// Problems name the entry and field, never a permanent code.
pub fn parse_corps(bytes: &[u8]) -> Result<Vec<CorpSettings>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_owned())?;
    let file: FileCorps = toml::from_str(text).map_err(|e| toml_problem(text, &e))?;
    let mut corps: Vec<CorpSettings> = Vec::new();
    for (i, corp) in file.corps.into_iter().enumerate() {
        let key = |field: &str| format!("corps[{i}].{field}");
        validate::app_name(&corp.app).map_err(|p| format!("{}: {p}", key("app")))?;
        if corps.iter().any(|c| c.app == corp.app) {
            return Err(format!("{}: `{}` names two corps", key("app"), corp.app));
        }
        if corp.auth_corpid.trim().is_empty() {
            return Err(format!("{}: is required", key("auth_corpid")));
        }
        if corp.permanent_code.expose_secret().trim().is_empty() {
            return Err(format!("{}: is required", key("permanent_code")));
        }
        corps.push(CorpSettings {
            app: corp.app,
            corp_id: corp.auth_corpid.trim().to_owned(),
            permanent_code: SecretString::from(
                corp.permanent_code.expose_secret().trim().to_owned(),
            ),
        });
    }
    Ok(corps)
}

/// The apps file as written: `[[apps]]` only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApps {
    #[serde(default)]
    apps: Vec<FileApp>,
}

/// Reads an apps file, its secrets included; `api_base` for apps that set none.
pub fn parse_apps_file(
    bytes: &[u8],
    env: &dyn Environment,
    api_base: &Url,
) -> Result<BTreeMap<String, AppSettings>, ConfigError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ConfigError::new("apps_file", "is not UTF-8 text"))?;
    let file: FileApps =
        toml::from_str(text).map_err(|e| ConfigError::new("apps_file", toml_problem(text, &e)))?;
    let mut apps = BTreeMap::new();
    for (i, app) in file.apps.into_iter().enumerate() {
        let name_key = format!("apps_file: apps[{i}].name");
        validate::app_name(&app.name).map_err(|p| ConfigError::new(&name_key, p))?;
        let name = app.name.clone();
        if apps.contains_key(&name) {
            return Err(ConfigError::new(
                name_key,
                format!("`{name}` names two apps"),
            ));
        }
        let plan = AppPlan::from_file(app, i);
        let in_file = |e: ConfigError| ConfigError::new(format!("apps_file: {}", e.key), e.problem);
        let (secret, secret_origin) = plan.secret.map_err(in_file)?.read(env).map_err(in_file)?;
        let settings = AppSettings {
            corp_id: plan.corp_id.map_err(in_file)?,
            secret,
            secret_origin,
            api_base: match plan.api_base {
                Some(base) => base.map_err(in_file)?,
                None => api_base.clone(),
            },
        };
        apps.insert(name, settings);
    }
    Ok(apps)
}

/// The adapter's specs of apps in `group`.
pub fn app_specs<'a>(
    apps: impl IntoIterator<Item = (&'a String, &'a AppSettings)>,
    group: &str,
) -> Vec<AppSpec> {
    apps.into_iter()
        .map(|(name, app)| AppSpec {
            name: name.clone(),
            corp_id: app.corp_id.clone(),
            credentials: AppCredentials::Secret(app.secret.clone()),
            api_base: app.api_base.clone(),
            group: group.to_owned(),
        })
        .collect()
}

/// The adapter's specs of a suite's corps.
pub fn corp_specs(suite: &str, settings: &SuiteSettings, corps: &[CorpSettings]) -> Vec<AppSpec> {
    corps
        .iter()
        .map(|corp| AppSpec {
            name: corp.app.clone(),
            corp_id: corp.corp_id.clone(),
            credentials: AppCredentials::Suite {
                suite: suite.to_owned(),
                permanent_code: corp.permanent_code.clone(),
            },
            api_base: settings.api_base.clone(),
            group: corps_group(suite),
        })
        .collect()
}

/// `[[suites]]` as `check-config` prints it: secrets by reference, inline ones
/// as `"****"`.
#[derive(Serialize)]
pub(super) struct RenderedSuite<'a> {
    name: &'a str,
    suite_id: &'a str,
    #[serde(flatten)]
    secret: Rendered<'a>,
    #[serde(flatten)]
    token: Rendered<'a>,
    #[serde(flatten)]
    aes_key: Rendered<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider_corp_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    corps_file: Option<&'a Path>,
    api_base: String,
    reload_interval_ms: u64,
}

/// A secret by reference: `{field} = "****"`, `{field}_file` or `{field}_env`.
struct Rendered<'a> {
    field: &'static str,
    origin: &'a SecretOrigin,
}

impl Serialize for Rendered<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        match self.origin {
            SecretOrigin::Inline => map.serialize_entry(self.field, PLACEHOLDER)?,
            SecretOrigin::File(path) => {
                map.serialize_entry(&format!("{}_file", self.field), path)?
            }
            SecretOrigin::Env(var) => map.serialize_entry(&format!("{}_env", self.field), var)?,
        }
        map.end()
    }
}

impl<'a> RenderedSuite<'a> {
    pub(super) fn new(name: &'a str, suite: &'a SuiteSettings) -> Self {
        Self {
            name,
            suite_id: &suite.suite_id,
            secret: Rendered {
                field: "suite_secret",
                origin: &suite.secret_origin,
            },
            token: Rendered {
                field: "token",
                origin: &suite.callback_token_origin,
            },
            aes_key: Rendered {
                field: "encoding_aes_key",
                origin: &suite.encoding_aes_key_origin,
            },
            provider_corp_id: suite.provider_corp_id.as_deref(),
            corps_file: suite.corps_file.as_deref(),
            api_base: crate::telemetry::redacted(&suite.api_base).to_string(),
            reload_interval_ms: millis(suite.reload_interval),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{SandboxApp, Settings};

    const AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

    /// A directory of its own per test.
    fn dir(purpose: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wku-suite-{purpose}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn corps(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("corps.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    const TWO_CORPS: &str = "[[corps]]\napp = \"shop-a\"\nauth_corpid = \"wwa\"\npermanent_code = \"code-a\"\n\
                             [[corps]]\napp = \"shop-b\"\nauth_corpid = \"wwb\"\npermanent_code = \"code-b\"\n";

    fn suite_config(corps_file: &Path, extra: &str) -> String {
        format!(
            "default_app = \"shop-a\"\n{extra}\n[[suites]]\nname = \"acme\"\nsuite_id = \"ww-suite\"\n\
             suite_secret_env = \"SUITE_SECRET\"\ntoken = \"CbTok9\"\nencoding_aes_key = \"{AES_KEY}\"\n\
             corps_file = \"{}\"\n",
            corps_file.display()
        )
    }

    fn load(dir: &Path, text: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        let env: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load(Some(&path), &env)
    }

    const ENV: &[(&str, &str)] = &[("SUITE_SECRET", "s3cret")];

    #[test]
    fn a_suite_and_its_corps_become_apps_of_the_adapter() {
        let dir = dir("load");
        let settings = load(&dir, &suite_config(&corps(&dir, TWO_CORPS), ""), ENV).unwrap();
        let suite = &settings.suites["acme"];
        assert_eq!(suite.secret.expose_secret(), "s3cret");
        assert_eq!(
            suite.secret_origin,
            SecretOrigin::Env("SUITE_SECRET".to_owned())
        );
        assert_eq!(suite.corps.len(), 2);
        let (_, suites, apps) = settings.adapter();
        assert_eq!(suites[0].suite_id, "ww-suite");
        let names: Vec<_> = apps
            .iter()
            .map(|a| (a.name.as_str(), a.group.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("shop-a", "the corps file of suite acme"),
                ("shop-b", "the corps file of suite acme")
            ]
        );
        assert!(
            matches!(&apps[1].credentials, AppCredentials::Suite { suite, .. } if suite == "acme")
        );
        let shown = format!("{settings:?} {apps:?}");
        for secret in ["s3cret", "code-a", "CbTok9", AES_KEY] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn problems_name_their_key() {
        let dir = dir("keys");
        let corps_file = corps(&dir, TWO_CORPS);
        let key = |text: &str, vars| load(&dir, text, vars).unwrap_err().key;
        let config = suite_config(&corps_file, "");
        assert_eq!(key(&config, &[]), "suites[0].suite_secret_env");
        let bad_key = config.replace(AES_KEY, "too-short");
        assert_eq!(key(&bad_key, ENV), "suites.acme.encoding_aes_key");
        let no_room = format!("{config}[callback]\nmax_connections = 0\n");
        assert_eq!(key(&no_room, ENV), "callback.max_connections");
        let no_wait = format!("{config}[callback]\nrequest_read_timeout_ms = 0\n");
        assert_eq!(key(&no_wait, ENV), "callback.request_read_timeout_ms");
        let no_corps = config.replace(&format!("corps_file = \"{}\"\n", corps_file.display()), "");
        assert_eq!(key(&no_corps, ENV), "suites[0].corps_file");
        let both = config.replace("token = \"CbTok9\"", "token = \"Tok\"\ntoken_env = \"T\"");
        assert_eq!(key(&both, ENV), "suites[0].token");
        corps(
            &dir,
            "[[corps]]\napp = \"x\"\nauth_corpid = \"ww\"\npermanent_code = \" \"\n",
        );
        let error = load(&dir, &config, ENV).unwrap_err();
        assert_eq!(error.key, "suites[0].corps_file");
        assert!(error.problem.contains("corps[0].permanent_code"), "{error}");
    }

    #[test]
    fn reloads_start_from_the_bytes_that_were_loaded() {
        let dir = dir("digest");
        let apps_file = dir.join("apps.toml");
        let app = "[[apps]]\nname = \"custom\"\ncorp_id = \"ww\"\nsecret = \"s\"\n";
        std::fs::write(&apps_file, app).unwrap();
        let extra = format!("apps_file = \"{}\"\n", apps_file.display());
        let settings = load(&dir, &suite_config(&corps(&dir, TWO_CORPS), &extra), ENV).unwrap();
        // The files change right after loading: the watchers must see a change.
        corps(&dir, "");
        std::fs::write(&apps_file, "").unwrap();
        let digest = |bytes: &str| Snapshot::of(vec![bytes.as_bytes().to_vec()]).digest;
        assert_eq!(settings.suites["acme"].corps_digest, digest(TWO_CORPS));
        assert_eq!(settings.apps_file.unwrap().digest, digest(app));
    }

    #[test]
    fn reload_intervals_and_callback_knobs_have_bounds() {
        let dir = dir("bounds");
        let config = suite_config(&corps(&dir, TWO_CORPS), "");
        let apps_file = dir.join("apps.toml");
        std::fs::write(&apps_file, "").unwrap();
        let refused = |extra_top: &str, extra_end: &str| {
            let config = suite_config(&corps(&dir, TWO_CORPS), extra_top);
            load(&dir, &format!("{config}{extra_end}"), ENV).map(|_| ())
        };
        let apps = |ms: u64| {
            format!(
                "apps_file = \"{}\"\napps_reload_interval_ms = {ms}\n",
                apps_file.display()
            )
        };
        for (top, end, key) in [
            (
                "",
                "reload_interval_ms = 50\n",
                "suites.acme.reload_interval_ms",
            ),
            (&apps(50), "", "apps_reload_interval_ms"),
            (
                "",
                "[callback]\nmax_clock_skew_secs = 0\n",
                "callback.max_clock_skew_secs",
            ),
            (
                "",
                "[callback]\nmax_clock_skew_secs = 3601\n",
                "callback.max_clock_skew_secs",
            ),
            (
                "",
                "[callback]\nmax_body_bytes = 1023\n",
                "callback.max_body_bytes",
            ),
            (
                "",
                "[callback]\nmax_body_bytes = 1048577\n",
                "callback.max_body_bytes",
            ),
            (
                "",
                "[callback]\nmax_remembered = 999\n",
                "callback.max_remembered",
            ),
        ] {
            let error = refused(top, end).unwrap_err();
            assert_eq!(error.key, key, "{top}{end}: {error}");
            assert!(error.problem.contains("must be between"), "{error}");
        }
        // The bounds themselves are fine.
        let edges = "reload_interval_ms = 100\n[callback]\nmax_clock_skew_secs = 3600\n\
                     max_body_bytes = 1024\nmax_remembered = 1000\n";
        refused(&apps(100), edges).unwrap();
        assert!(load(&dir, &config, ENV).is_ok());
    }

    #[test]
    fn app_names_are_unique_across_the_configuration_and_the_corps() {
        let dir = dir("unique");
        let clash = "[[apps]]\nname = \"shop-b\"\ncorp_id = \"ww\"\nsecret = \"s\"\n";
        let config = suite_config(&corps(&dir, TWO_CORPS), clash);
        let error = load(&dir, &config, ENV).unwrap_err();
        assert_eq!(error.key, "suites");
        assert!(error.problem.contains("shop-b"), "{error}");
        let no_default =
            suite_config(&corps(&dir, TWO_CORPS), "").replace("default_app = \"shop-a\"", "");
        assert_eq!(load(&dir, &no_default, ENV).unwrap_err().key, "default_app");
    }

    #[test]
    fn the_printed_suite_loads_back() {
        let dir = dir("render");
        let config = suite_config(&corps(&dir, TWO_CORPS), "");
        let config = config.replace(
            &format!("encoding_aes_key = \"{AES_KEY}\""),
            "encoding_aes_key_env = \"AES\"",
        );
        let vars = [("SUITE_SECRET", "s3cret"), ("AES", AES_KEY)];
        let first = load(&dir, &config, &vars).unwrap();
        let printed = first.to_toml();
        assert!(
            printed.contains("suite_secret_env = \"SUITE_SECRET\""),
            "{printed}"
        );
        assert!(printed.contains("token = \"****\""), "{printed}");
        assert!(
            !printed.contains(AES_KEY) && !printed.contains("CbTok9"),
            "{printed}"
        );
        let second = load(&dir, &printed, &vars).unwrap();
        assert_eq!(second.to_toml(), printed, "printing is stable");
    }

    #[test]
    fn a_suite_with_inline_secrets_prints_a_file_that_loads_back() {
        let dir = dir("render-inline");
        let config = suite_config(&corps(&dir, TWO_CORPS), "").replace(
            "suite_secret_env = \"SUITE_SECRET\"",
            "suite_secret = \"s3cret\"",
        );
        let first = load(&dir, &config, &[]).unwrap();
        let printed = first.to_toml();
        for secret in ["s3cret", "CbTok9", AES_KEY] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(
            printed.contains("encoding_aes_key = \"****\"")
                && printed.contains("suite_secret = \"****\""),
            "{printed}"
        );
        assert!(
            printed.contains("\n# WARNING: suite acme's encoding_aes_key is written inline"),
            "{printed}"
        );
        let second = load(&dir, &printed, &[]).unwrap();
        assert_eq!(second.to_toml(), printed, "printing is stable");
        assert_eq!(
            second.suites["acme"].encoding_aes_key.expose_secret(),
            "****"
        );
        // Only check-config's own placeholder, written inline, stands in for a key.
        let from_env = printed.replace(
            "encoding_aes_key = \"****\"",
            "encoding_aes_key_env = \"AES\"",
        );
        let error = load(&dir, &from_env, &[("AES", "****")]).unwrap_err();
        assert_eq!(error.key, "suites.acme.encoding_aes_key");
        let other = printed.replace("encoding_aes_key = \"****\"", "encoding_aes_key = \"***\"");
        let error = load(&dir, &other, &[]).unwrap_err();
        assert_eq!(error.key, "suites.acme.encoding_aes_key");
    }

    #[test]
    fn the_sandbox_replaces_every_suite_and_skips_the_apps_file() {
        let dir = dir("sandbox");
        let config = suite_config(
            &corps(&dir, TWO_CORPS),
            "apps_file = \"/nonexistent/apps.toml\"",
        )
        .replace("default_app = \"shop-a\"", "");
        let sandbox = SandboxApp {
            api_base: "http://127.0.0.1:9".to_owned(),
            corp_id: "sbx".to_owned(),
            secret: "demo".to_owned(),
            suite: Some(SandboxSuite {
                name: "demo".to_owned(),
                suite_id: "sbx-suite".to_owned(),
                suite_secret: "x".to_owned(),
                callback_token: "t".to_owned(),
                encoding_aes_key: AES_KEY.to_owned(),
                corps: vec![("demo-a".to_owned(), "sbx-a".to_owned(), "c".to_owned())],
            }),
        };
        let path = dir.join("config.toml");
        std::fs::write(&path, config).unwrap();
        let settings = Settings::load_for_sandbox(Some(&path), &BTreeMap::new(), &sandbox).unwrap();
        assert_eq!(settings.suites.keys().collect::<Vec<_>>(), ["demo"]);
        assert_eq!(settings.suites["demo"].corps[0].app, "demo-a");
        assert!(settings.apps_file.is_none());
        assert!(settings.callback.listen.ip().is_loopback());
        assert_eq!(settings.callback.listen.port(), 0);
    }

    #[test]
    fn an_apps_file_adds_apps_that_must_not_clash() {
        let dir = dir("apps-file");
        let apps = dir.join("apps.toml");
        std::fs::write(
            &apps,
            "[[apps]]\nname = \"dkf\"\ncorp_id = \"ww-d\"\nsecret_env = \"DKF\"\n",
        )
        .unwrap();
        let config = format!(
            "default_app = \"main\"\napps_file = \"{}\"\n[[apps]]\nname = \"main\"\ncorp_id = \"ww\"\nsecret = \"s\"\n",
            apps.display()
        );
        let settings = load(&dir, &config, &[("DKF", "dkf-secret")]).unwrap();
        let file = settings.apps_file.as_ref().unwrap();
        assert_eq!(file.apps["dkf"].secret.expose_secret(), "dkf-secret");
        let (_, _, specs) = settings.adapter();
        assert!(
            specs
                .iter()
                .any(|s| s.name == "dkf" && s.group == APPS_FILE_GROUP)
        );
        assert_eq!(
            load(&dir, &config, &[]).unwrap_err().key,
            "apps_file: apps[0].secret_env"
        );
        std::fs::write(
            &apps,
            "[[apps]]\nname = \"main\"\ncorp_id = \"ww\"\nsecret = \"s\"\n",
        )
        .unwrap();
        assert_eq!(load(&dir, &config, &[]).unwrap_err().key, "apps_file");
    }
}
