//! The loading pipeline: file → app specs with secret references → environment
//! overlay → sandbox swap → secrets resolved last.
//!
//! Until the last step a value that is missing or malformed is kept as the error
//! it would cause, so that a later step (the environment, the sandbox) can still
//! replace it, and only what survives is reported.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{
    AppSettings, AuthSettings, ConfigError, DEFAULT_API_BASE, DEFAULT_APP_NAME, SecretOrigin,
    Settings, TlsSettings,
    env::{self, Environment},
    file::{self, FileApp, FileSettings},
    provider::{AppsFileSettings, CallbackSettings, SandboxSuite, SuitePlan, parse_apps_file},
    validate,
};
use crate::{
    auth::Callers,
    reload::Snapshot,
    tls::{self, TlsFile},
};

/// The ports the listeners bind by default, on every interface (or, for the
/// sandbox's demo, on loopback only).
const GRPC_PORT: u16 = 50051;
const ADMIN_PORT: u16 = 9464;
/// How often changed TLS files and callers files are noticed.
const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// The sandbox's demo app, which `serve --sandbox` puts in place of every app.
#[derive(Debug, Clone)]
pub struct SandboxApp {
    /// The sandbox's base URL.
    pub api_base: String,
    /// The corp id it accepts.
    pub corp_id: String,
    /// The secret it accepts (not a secret: it only opens the sandbox).
    pub secret: String,
    /// Its demo suite and authorised corps, if it plays a 服务商's WeCom too.
    pub suite: Option<SandboxSuite>,
}

/// A value, or the error it causes if nothing later replaces it.
type Given<T> = Result<T, ConfigError>;

/// Where a secret is to be read from.
pub(super) enum SecretRef {
    Inline(SecretString),
    File(PathBuf),
    Env(String),
}

impl From<SecretString> for SecretRef {
    fn from(secret: SecretString) -> Self {
        SecretRef::Inline(secret)
    }
}

impl From<PathBuf> for SecretRef {
    fn from(path: PathBuf) -> Self {
        SecretRef::File(path)
    }
}

impl From<String> for SecretRef {
    fn from(var: String) -> Self {
        SecretRef::Env(var)
    }
}

/// A secret reference and the key that gave it, to name in errors.
pub(super) struct SecretSpec {
    source: SecretRef,
    key: String,
}

/// An app as configured so far: nothing read yet.
pub(super) struct AppPlan {
    pub(super) corp_id: Given<String>,
    pub(super) secret: Given<SecretSpec>,
    /// `None`: the shared base.
    pub(super) api_base: Option<Given<Url>>,
}

/// A file the configuration names, and the key that named it.
struct NamedFile {
    path: PathBuf,
    key: &'static str,
}

/// The configuration before its secrets are read.
struct Plan {
    /// `None`: the default address, which the sandbox makes loopback.
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    tls_cert: Option<NamedFile>,
    tls_key: Option<NamedFile>,
    tls_client_ca: Option<NamedFile>,
    callers_file: Option<NamedFile>,
    default_app: String,
    /// The API base of every app that sets none.
    api_base: Given<Url>,
    /// In the file's order, so that errors are reported in it.
    apps: Vec<(String, AppPlan)>,
    suites: Vec<(String, SuitePlan)>,
    callback_listen: Option<SocketAddr>,
    apps_file: Option<NamedFile>,
    /// A bad `WECOM_CALLBACK_LISTEN`, reported when the plan resolves.
    callback_error: Option<ConfigError>,
    file: FileSettings,
}

pub(super) fn load(
    path: Option<&Path>,
    env: &dyn Environment,
    sandbox: Option<&SandboxApp>,
) -> Result<Settings, ConfigError> {
    let mut plan = Plan::from_file(read(path)?)?;
    plan.apply_env(env);
    if let Some(sandbox) = sandbox {
        plan.swap_in(sandbox);
    }
    plan.resolve(env)
}

fn read(path: Option<&Path>) -> Result<FileSettings, ConfigError> {
    let Some(path) = path else {
        return Ok(FileSettings::default());
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
    })?;
    file::parse(&text)
}

// === impl Plan ===

impl Plan {
    /// The file's apps, with their names checked (names are never replaced).
    fn from_file(mut file: FileSettings) -> Result<Self, ConfigError> {
        let mut apps: Vec<(String, AppPlan)> = Vec::new();
        for (i, app) in std::mem::take(&mut file.apps).into_iter().enumerate() {
            let name_key = format!("apps[{i}].name");
            validate::app_name(&app.name).map_err(|p| ConfigError::new(&name_key, p))?;
            if apps.iter().any(|(name, _)| *name == app.name) {
                return Err(ConfigError::new(
                    name_key,
                    format!("`{}` names two apps; app names must be unique", app.name),
                ));
            }
            apps.push((app.name.clone(), AppPlan::from_file(app, i)));
        }
        let default_app = file.default_app.clone().unwrap_or_else(|| {
            // One app in the file: it is the default whatever its name.
            match apps.as_slice() {
                [(only, _)] => only.clone(),
                _ => DEFAULT_APP_NAME.to_owned(),
            }
        });
        let api_base = validate::api_base(
            file.api_base.as_deref().unwrap_or(DEFAULT_API_BASE),
            "api_base",
        );
        let named = |path: Option<PathBuf>, key| path.map(|path| NamedFile { path, key });
        let mut suites: Vec<(String, SuitePlan)> = Vec::new();
        for (i, suite) in std::mem::take(&mut file.suites).into_iter().enumerate() {
            let (name, plan) = SuitePlan::from_file(suite, i)?;
            if suites.iter().any(|(other, _)| *other == name) {
                return Err(ConfigError::new(
                    format!("suites[{i}].name"),
                    format!("`{name}` names two suites; suite names must be unique"),
                ));
            }
            suites.push((name, plan));
        }
        Ok(Self {
            suites,
            callback_listen: None,
            callback_error: None,
            apps_file: named(file.apps_file.take(), "apps_file"),
            listen: file.listen,
            admin_listen: file.admin_listen,
            tls_cert: named(file.tls.cert_file.take(), "tls.cert_file"),
            tls_key: named(file.tls.key_file.take(), "tls.key_file"),
            tls_client_ca: named(file.tls.client_ca_file.take(), "tls.client_ca_file"),
            callers_file: named(file.auth.callers_file.take(), "auth.callers_file"),
            default_app,
            api_base,
            apps,
            file,
        })
    }

    /// The environment over the file: the shared API base, the TLS and callers
    /// files, and the default app's corp id and secret (describing the default app
    /// if the file has none).
    fn apply_env(&mut self, env: &dyn Environment) {
        if let Some(base) = env.var(env::API_BASE) {
            self.api_base = validate::api_base(&base, env::API_BASE);
        }
        if let Some(listen) = env.var(env::CALLBACK_LISTEN) {
            match listen.parse() {
                Ok(listen) => self.callback_listen = Some(listen),
                Err(_) => {
                    // Kept as the error it causes: reported once the plan resolves.
                    self.callback_error = Some(ConfigError::new(
                        env::CALLBACK_LISTEN,
                        "is not an address like 0.0.0.0:9466",
                    ));
                }
            }
        }
        let files = [
            (&mut self.tls_cert, env::TLS_CERT_FILE),
            (&mut self.tls_key, env::TLS_KEY_FILE),
            (&mut self.tls_client_ca, env::TLS_CLIENT_CA_FILE),
            (&mut self.callers_file, env::CALLERS_FILE),
            (&mut self.apps_file, env::APPS_FILE),
        ];
        for (file, key) in files {
            if let Some(path) = env.var(key) {
                *file = Some(NamedFile {
                    path: path.into(),
                    key,
                });
            }
        }
        let corp_id = env.var(env::CORP_ID);
        let secret = env_secret(env);
        if corp_id.is_none() && secret.is_none() {
            return;
        }
        let app = self.default_app_or(|| AppPlan {
            corp_id: Err(ConfigError::new(
                env::CORP_ID,
                "is required when a secret is set",
            )),
            secret: Err(ConfigError::new(
                env::CORP_SECRET,
                format!(
                    "is required (or {}) when {} is set",
                    env::CORP_SECRET_FILE,
                    env::CORP_ID
                ),
            )),
            api_base: None,
        });
        if let Some(corp_id) = corp_id {
            app.corp_id = Ok(corp_id);
        }
        if let Some(secret) = secret {
            app.secret = secret;
        }
    }

    /// Every app becomes the sandbox's demo app, and the default app exists; every
    /// suite becomes the sandbox's demo suite, and the apps file is left unread.
    /// A demo listens on loopback unless an address was given (its callback
    /// endpoint on any free port: only the embedded sandbox posts to it).
    fn swap_in(&mut self, sandbox: &SandboxApp) {
        let loopback = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        self.listen.get_or_insert(loopback(GRPC_PORT));
        self.admin_listen.get_or_insert(loopback(ADMIN_PORT));
        self.callback_listen.get_or_insert(loopback(0));
        let api_base = validate::api_base(&sandbox.api_base, "--sandbox");
        self.apps_file = None;
        self.suites = sandbox
            .suite
            .iter()
            .map(|suite| (suite.name.clone(), SuitePlan::demo(suite, api_base.clone())))
            .collect();
        let demo = || AppPlan {
            corp_id: Ok(sandbox.corp_id.clone()),
            secret: Ok(SecretSpec {
                source: SecretRef::Inline(SecretString::from(sandbox.secret.clone())),
                key: "--sandbox".to_owned(),
            }),
            api_base: Some(api_base.clone()),
        };
        for (_, app) in &mut self.apps {
            *app = demo();
        }
        self.default_app_or(demo);
        self.api_base = api_base;
    }

    /// The default app's plan, added from `new` if the file has none.
    fn default_app_or(&mut self, new: impl FnOnce() -> AppPlan) -> &mut AppPlan {
        let index = match self
            .apps
            .iter()
            .position(|(name, _)| *name == self.default_app)
        {
            Some(index) => index,
            None => {
                self.apps.push((self.default_app.clone(), new()));
                self.apps.len() - 1
            }
        };
        &mut self.apps[index].1
    }

    /// Reads the secrets and checks what is left.
    fn resolve(self, env: &dyn Environment) -> Result<Settings, ConfigError> {
        let mut apps = BTreeMap::new();
        for (name, plan) in self.apps {
            let (secret, secret_origin) = plan.secret?.read(env)?;
            let corp_id = plan.corp_id?;
            let api_base = match plan.api_base {
                Some(base) => base?,
                None => self.api_base.clone()?,
            };
            let app = AppSettings {
                corp_id,
                secret,
                secret_origin,
                api_base,
            };
            apps.insert(name, app);
        }
        if let Some(error) = self.callback_error {
            return Err(error);
        }
        let mut suites = BTreeMap::new();
        for (name, plan) in self.suites {
            let suite = plan.resolve(&name, env, &self.api_base)?;
            suites.insert(name, suite);
        }
        let apps_file = match self.apps_file {
            Some(NamedFile { path, key }) => {
                let api_base = self.api_base.clone()?;
                let bytes = std::fs::read(&path).map_err(|e| {
                    ConfigError::new(key, format!("cannot read {}: {e}", path.display()))
                })?;
                let file_apps = parse_apps_file(&bytes, env, &api_base)?;
                let digest = Snapshot::of(vec![bytes]).digest;
                let reload_interval = self
                    .file
                    .apps_reload_interval_ms
                    .map_or(RELOAD_INTERVAL, Duration::from_millis);
                Some(AppsFileSettings {
                    path,
                    reload_interval,
                    api_base,
                    apps: file_apps,
                    digest,
                })
            }
            None => None,
        };
        // Every app name, wherever it is configured, is unique.
        let mut owner: BTreeMap<&str, String> = apps
            .keys()
            .map(|name| (name.as_str(), "apps".to_owned()))
            .collect();
        let others = suites
            .iter()
            .flat_map(|(suite, s)| {
                s.corps
                    .iter()
                    .map(move |c| (c.app.as_str(), format!("the corps of suite {suite}")))
            })
            .chain(apps_file.iter().flat_map(|file| {
                file.apps
                    .keys()
                    .map(|name| (name.as_str(), "apps_file".to_owned()))
            }));
        for (name, place) in others {
            if let Some(first) = owner.insert(name, place.clone()) {
                return Err(ConfigError::new(
                    if place == "apps_file" {
                        "apps_file"
                    } else {
                        "suites"
                    },
                    format!(
                        "app `{name}` is configured in {first} and in {place}; app names must be unique"
                    ),
                ));
            }
        }
        if owner.is_empty() {
            return Err(ConfigError::new(
                env::CORP_ID,
                "no WeCom app is configured: set WECOM_CORP_ID and WECOM_CORP_SECRET \
                 (or WECOM_CORP_SECRET_FILE), or list apps in a --config file, \
                 or run `serve --sandbox` for the demo",
            ));
        }
        if !owner.contains_key(self.default_app.as_str()) {
            return Err(ConfigError::new(
                "default_app",
                format!(
                    "`{}` is not one of the configured apps ({})",
                    self.default_app,
                    owner.keys().copied().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let every_app: BTreeMap<String, ()> =
            owner.keys().map(|name| ((*name).to_owned(), ())).collect();
        let everywhere = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let tls = tls_settings(
            self.tls_cert,
            self.tls_key,
            self.tls_client_ca,
            &self.file.tls,
        )?;
        let auth = match self.callers_file {
            Some(callers_file) => Some(auth_settings(callers_file, &self.file.auth, &every_app)?),
            None => None,
        };
        let settings = Settings {
            listen: self.listen.unwrap_or(everywhere(GRPC_PORT)),
            admin_listen: self.admin_listen.unwrap_or(everywhere(ADMIN_PORT)),
            default_app: self.default_app,
            apps,
            upstream: self.file.upstream,
            token: self.file.token,
            server: self.file.server,
            limits: self.file.limits,
            tls: tls.as_ref().map(|(settings, _)| settings.clone()),
            auth,
            redis: self.file.redis.resolve(env)?,
            callback: CallbackSettings::from_file(&self.file.callback, self.callback_listen),
            suites,
            apps_file,
        };
        validate::bounds(&settings)?;
        if let Some((settings, keys)) = &tls {
            // The files are read now, so that a bad one is named before anything starts.
            tls::check(settings).map_err(|e| {
                let key = match e.file {
                    TlsFile::Cert => keys[0],
                    TlsFile::Key => keys[1],
                    TlsFile::ClientCa => keys[2],
                };
                ConfigError::new(key, e.to_string())
            })?;
        }
        Ok(settings)
    }
}

/// TLS when a certificate and a key are named; with the keys that named the
/// certificate, the key and the client CA, for errors.
fn tls_settings(
    cert: Option<NamedFile>,
    key: Option<NamedFile>,
    client_ca: Option<NamedFile>,
    file: &file::FileTls,
) -> Result<Option<(TlsSettings, [&'static str; 3])>, ConfigError> {
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => {
            return match client_ca {
                Some(ca) => Err(ConfigError::new(
                    ca.key,
                    "mTLS needs TLS: set the certificate and key too (WECOM_TLS_CERT_FILE \
                     and WECOM_TLS_KEY_FILE)",
                )),
                None => Ok(None),
            };
        }
        (Some(cert), None) => {
            return Err(ConfigError::new(
                cert.key,
                "needs its key: set WECOM_TLS_KEY_FILE or tls.key_file as well",
            ));
        }
        (None, Some(key)) => {
            return Err(ConfigError::new(
                key.key,
                "needs its certificate: set WECOM_TLS_CERT_FILE or tls.cert_file as well",
            ));
        }
    };
    let keys = [
        cert.key,
        key.key,
        client_ca.as_ref().map_or("tls.client_ca_file", |ca| ca.key),
    ];
    let settings = TlsSettings {
        cert_file: cert.path,
        key_file: key.path,
        client_ca_file: client_ca.map(|ca| ca.path),
        reload_interval: file
            .reload_interval_ms
            .map_or(RELOAD_INTERVAL, Duration::from_millis),
    };
    Ok(Some((settings, keys)))
}

/// Caller authentication from the callers file, read now; every app it names must
/// be one of `apps`.
fn auth_settings(
    callers_file: NamedFile,
    file: &file::FileAuth,
    apps: &BTreeMap<String, ()>,
) -> Result<AuthSettings, ConfigError> {
    let NamedFile { path, key } = callers_file;
    let bytes = std::fs::read(&path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))?;
    let callers = Callers::parse(&bytes, &|app| apps.contains_key(app))
        .map_err(|e| ConfigError::new(key, format!("{}: {e}", path.display())))?;
    Ok(AuthSettings {
        callers_file: path,
        callers,
        open_health: file.open_health.unwrap_or(true),
        open_reflection: file.open_reflection.unwrap_or(true),
        reload_interval: file
            .reload_interval_ms
            .map_or(RELOAD_INTERVAL, Duration::from_millis),
    })
}

// === impl AppPlan ===

impl AppPlan {
    pub(super) fn from_file(app: FileApp, i: usize) -> Self {
        let key = |field: &str| format!("apps[{i}].{field}");
        let corp_id = app
            .corp_id
            .filter(|c| !c.trim().is_empty())
            .ok_or_else(|| ConfigError::new(key("corp_id"), "is required"));
        let secret = secret_spec(
            [
                (app.secret.map(Into::into), "secret"),
                (app.secret_file.map(Into::into), "secret_file"),
                (app.secret_env.map(Into::into), "secret_env"),
            ],
            &key,
        );
        let api_base = app
            .api_base
            .map(|base| validate::api_base(&base, &key("api_base")));
        Self {
            corp_id,
            secret,
            api_base,
        }
    }
}

/// The one secret of three ways to give it (`FIELD`, `FIELD_file`, `FIELD_env`),
/// named by `key(field)` in errors.
pub(super) fn secret_spec(
    sources: [(Option<SecretRef>, &str); 3],
    key: &dyn Fn(&str) -> String,
) -> Given<SecretSpec> {
    let fields = sources.each_ref().map(|(_, field)| *field);
    let mut given = sources
        .into_iter()
        .filter_map(|(source, field)| source.map(|source| (source, key(field))));
    match (given.next(), given.next()) {
        (Some((source, key)), None) => Ok(SecretSpec { source, key }),
        (None, _) => Err(ConfigError::new(
            key(fields[0]),
            format!("is required: set one of {}", fields.join(", ")),
        )),
        (Some(_), Some(_)) => Err(ConfigError::new(
            key(fields[0]),
            format!("set only one of {}", fields.join(", ")),
        )),
    }
}

/// The default app's secret from the environment, if any is set.
fn env_secret(env: &dyn Environment) -> Option<Given<SecretSpec>> {
    let spec = |source, key: &str| {
        Ok(SecretSpec {
            source,
            key: key.to_owned(),
        })
    };
    match (env.var(env::CORP_SECRET), env.var(env::CORP_SECRET_FILE)) {
        (Some(_), Some(_)) => Some(Err(ConfigError::new(
            env::CORP_SECRET,
            format!(
                "set either {} or {}, not both",
                env::CORP_SECRET,
                env::CORP_SECRET_FILE
            ),
        ))),
        (Some(secret), None) => Some(spec(SecretRef::Inline(secret.into()), env::CORP_SECRET)),
        (None, Some(path)) => Some(spec(SecretRef::File(path.into()), env::CORP_SECRET_FILE)),
        (None, None) => None,
    }
}

// === impl SecretSpec ===

impl SecretSpec {
    /// A secret given in place, named by `key` in errors.
    pub(super) fn inline(secret: SecretString, key: &str) -> Self {
        Self {
            source: SecretRef::Inline(secret),
            key: key.to_owned(),
        }
    }

    /// The secret itself, and where it came from: the one place where secret files
    /// and variables are read.
    pub(super) fn read(
        self,
        env: &dyn Environment,
    ) -> Result<(SecretString, SecretOrigin), ConfigError> {
        let origin = match &self.source {
            SecretRef::Inline(_) => SecretOrigin::Inline,
            SecretRef::File(path) => SecretOrigin::File(path.clone()),
            SecretRef::Env(var) => SecretOrigin::Env(var.clone()),
        };
        let secret = match self.source {
            SecretRef::Inline(secret) => secret,
            SecretRef::File(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError::new(&self.key, format!("cannot read {}: {e}", path.display()))
                })?;
                // Mounted Kubernetes Secrets often end with a newline that is not part of it.
                let secret = text.trim();
                if secret.is_empty() {
                    return Err(ConfigError::new(
                        &self.key,
                        format!("{} is empty", path.display()),
                    ));
                }
                SecretString::from(secret.to_owned())
            }
            SecretRef::Env(var) => env.var(&var).map(SecretString::from).ok_or_else(|| {
                ConfigError::new(&self.key, format!("environment variable {var} is not set"))
            })?,
        };
        if secret.expose_secret().trim().is_empty() {
            return Err(ConfigError::new(&self.key, "must not be empty"));
        }
        Ok((secret, origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::is_cleartext_remote;
    use std::time::Duration;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn from_toml(text: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut plan = Plan::from_file(file::parse(text)?)?;
        let env = env(vars);
        plan.apply_env(&env);
        plan.resolve(&env)
    }

    /// The environment of one app, for tests about other keys.
    const ONE_APP: &[(&str, &str)] = &[("WECOM_CORP_ID", "ww"), ("WECOM_CORP_SECRET", "s")];

    /// The key a configuration error names.
    fn key_of(text: &str, vars: &[(&str, &str)]) -> String {
        from_toml(text, vars).unwrap_err().key
    }

    fn sandbox(api_base: &str) -> SandboxApp {
        SandboxApp {
            api_base: api_base.to_owned(),
            corp_id: "sbx".to_owned(),
            secret: "demo".to_owned(),
            suite: None,
        }
    }

    #[test]
    fn environment_alone_is_a_complete_configuration() {
        let s = from_toml("", &[("WECOM_CORP_ID", "ww1"), ("WECOM_CORP_SECRET", "s3")]).unwrap();
        assert_eq!(s.default_app, "default");
        let app = &s.apps["default"];
        assert_eq!(app.corp_id, "ww1");
        assert_eq!(app.secret.expose_secret(), "s3");
        assert_eq!(app.api_base.as_str(), "https://qyapi.weixin.qq.com/");
        assert_eq!(s.listen, "0.0.0.0:50051".parse().unwrap());
        assert_eq!(s.admin_listen, "0.0.0.0:9464".parse().unwrap());
    }

    #[test]
    fn nothing_configured_names_the_variable_to_set() {
        assert_eq!(key_of("", &[]), "WECOM_CORP_ID");
    }

    #[test]
    fn a_secret_without_a_corp_id_is_rejected() {
        assert_eq!(key_of("", &[("WECOM_CORP_SECRET", "s")]), "WECOM_CORP_ID");
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
        assert_eq!(
            key_of(
                "",
                &[
                    ("WECOM_CORP_ID", "ww1"),
                    ("WECOM_CORP_SECRET_FILE", "/nonexistent/secret"),
                ]
            ),
            "WECOM_CORP_SECRET_FILE"
        );
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
        assert_eq!(s.apps["crm"].api_base.as_str(), "http://127.0.0.1:9/");
        assert_eq!(s.upstream.max_retries, 1);
        assert_eq!(
            s.upstream.call_timeout,
            Duration::from_millis(10_000),
            "unset keys keep defaults"
        );
    }

    #[test]
    fn a_missing_secret_env_names_the_key() {
        let text = "[[apps]]\nname = \"a\"\ncorp_id = \"ww\"\nsecret_env = \"NOPE\"\n";
        assert_eq!(key_of(text, &[]), "apps[0].secret_env");
    }

    #[test]
    fn a_syntax_error_says_where_without_quoting_the_file() {
        for text in [
            "[[apps]]\nname = \"a\"\nsecrt = \"TOPSECRET\"\n",
            "[[apps]]\nname = \"a\"\nsecret = \"TOPSECRET\n",
            "api_base = \"https://u:TOPSECRET@proxy.example\" x\n",
        ] {
            let err = from_toml(text, &[]).unwrap_err();
            assert!(!err.to_string().contains("TOPSECRET"), "{err}");
            assert!(err.problem.starts_with("line "), "{err}");
        }
        let err = from_toml("[[apps]]\nname = \"a\"\nsecrt = \"x\"\n", &[]).unwrap_err();
        assert!(err.problem.starts_with("line 3, column 1: "), "{err}");
        assert!(err.problem.contains("secrt"), "the key is named: {err}");
    }

    #[test]
    fn an_unknown_key_is_reported_with_its_name() {
        let err = from_toml("[upstream]\nconect_timeout_ms = 5\n", &[]).unwrap_err();
        assert!(err.problem.contains("conect_timeout_ms"), "{err}");
    }

    #[test]
    fn zero_timeouts_are_rejected() {
        assert_eq!(
            key_of("[upstream]\ncall_timeout_ms = 0\n", ONE_APP),
            "upstream.call_timeout_ms"
        );
    }

    #[test]
    fn a_connect_timeout_must_be_shorter_than_the_request_timeout() {
        let text = "[upstream]\nconnect_timeout_ms = 5000\nrequest_timeout_ms = 5000\n";
        let err = from_toml(text, ONE_APP).unwrap_err();
        assert_eq!(err.key, "upstream.connect_timeout_ms");
        assert!(
            err.problem
                .contains("shorter than upstream.request_timeout_ms (5000)"),
            "{err}"
        );
        let text = "[upstream]\nconnect_timeout_ms = 4999\nrequest_timeout_ms = 5000\n";
        assert!(from_toml(text, ONE_APP).is_ok());
    }

    #[test]
    fn durations_that_would_overflow_the_clock_are_rejected() {
        assert_eq!(
            key_of(
                "[token]\ncredential_cooldown_secs = 18446744073709551615\n",
                ONE_APP
            ),
            "token.credential_cooldown_secs"
        );
    }

    #[test]
    fn a_default_app_that_is_not_configured_is_rejected() {
        let text =
            "default_app = \"x\"\n[[apps]]\nname = \"a\"\ncorp_id = \"ww\"\nsecret = \"s\"\n";
        assert_eq!(key_of(text, &[]), "default_app");
    }

    #[test]
    fn errors_follow_the_files_order() {
        let text = "[[apps]]\nname = \"zz\"\ncorp_id = \"ww\"\n\
                    [[apps]]\nname = \"aa\"\ncorp_id = \"ww\"\n";
        assert_eq!(key_of(text, &[]), "apps[0].secret");
    }

    #[test]
    fn duplicate_app_names_are_rejected() {
        let text = "[[apps]]\nname = \"a\"\ncorp_id = \"1\"\nsecret = \"s\"\n\
                    [[apps]]\nname = \"a\"\ncorp_id = \"2\"\nsecret = \"s\"\n";
        assert_eq!(key_of(text, &[]), "apps[1].name");
    }

    #[test]
    fn a_bad_api_base_is_rejected() {
        assert_eq!(
            key_of(
                "",
                &[
                    ("WECOM_CORP_ID", "ww"),
                    ("WECOM_CORP_SECRET", "s"),
                    ("WECOM_API_BASE", "qyapi.weixin.qq.com"),
                ]
            ),
            "WECOM_API_BASE"
        );
    }

    #[test]
    fn the_sandbox_overrides_the_default_apps_credentials_and_base() {
        let real = env(&[
            ("WECOM_CORP_ID", "real"),
            ("WECOM_CORP_SECRET_FILE", "/nonexistent"),
        ]);
        let s = Settings::load_for_sandbox(None, &real, &sandbox("http://127.0.0.1:1")).unwrap();
        let app = &s.apps["default"];
        assert_eq!(
            (app.corp_id.as_str(), app.api_base.as_str()),
            ("sbx", "http://127.0.0.1:1/")
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
        let s =
            Settings::load_for_sandbox(Some(&path), &env(&[]), &self::sandbox(sandbox)).unwrap();
        // Several apps and no default_app: the sandbox's credentials make the default app.
        assert_eq!(
            s.apps.keys().collect::<Vec<_>>(),
            ["a", "b", "c", "default"]
        );
        for app in s.apps.values() {
            assert_eq!(app.api_base.as_str(), "http://127.0.0.1:1/");
            assert_eq!(app.corp_id, "sbx");
            assert_eq!(app.secret.expose_secret(), "demo");
        }
    }

    #[test]
    fn a_bad_base_in_the_file_is_named_by_its_file_key() {
        assert_eq!(key_of("api_base = \"ftp://x\"\n", ONE_APP), "api_base");
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
        let url = |base: &str| Url::parse(base).unwrap();
        for local in [
            "http://127.0.0.1:9465",
            "http://localhost",
            "http://[::1]:80/x",
            "https://qyapi.weixin.qq.com",
            "http://user:pass@127.0.0.1:9465",
            "http://user@localhost",
        ] {
            assert!(!is_cleartext_remote(&url(local)), "{local}");
        }
        for remote in [
            "http://qyapi.weixin.qq.com",
            "http://10.0.0.1:80",
            "http://sandbox:9465",
            "http://127.0.0.1:pass@example.com",
        ] {
            assert!(is_cleartext_remote(&url(remote)), "{remote}");
        }
    }

    #[test]
    fn output_and_debug_never_show_the_secret() {
        let s = from_toml(
            "",
            &[("WECOM_CORP_ID", "ww"), ("WECOM_CORP_SECRET", "TOPSECRET")],
        )
        .unwrap();
        assert!(!s.to_toml().contains("TOPSECRET"));
        assert!(!format!("{s:?}").contains("TOPSECRET"));
    }

    #[test]
    fn a_password_in_the_api_base_is_shown_nowhere() {
        let vars = [
            ("WECOM_CORP_ID", "ww"),
            ("WECOM_CORP_SECRET", "s"),
            (
                "WECOM_API_BASE",
                "https://proxy-user:PROXYPASS@proxy.example/wecom",
            ),
        ];
        let s = from_toml("", &vars).unwrap();
        assert_eq!(s.apps["default"].api_base.password(), Some("PROXYPASS"));
        assert!(!s.to_toml().contains("PROXYPASS"), "{}", s.to_toml());
        assert!(!format!("{s:?}").contains("PROXYPASS"));
        let bad = [
            ("WECOM_API_BASE", "ftp://user:PROXYPASS@proxy.example"),
            vars[0],
            vars[1],
        ];
        let err = from_toml("", &bad).unwrap_err();
        assert!(!err.to_string().contains("PROXYPASS"), "{err}");
    }

    #[test]
    fn the_printed_configuration_loads_back_as_the_same_settings() {
        let text = r#"
            listen = "127.0.0.1:6000"
            default_app = "sales"
            [[apps]]
            name = "support"
            corp_id = "ww-support"
            api_base = "https://user:pass@proxy.example/wecom/"
            secret_env = "SUPPORT_SECRET"
            [[apps]]
            corp_id = "ww-sales"
            name = "sales"
            secret = "sales-secret"
            [upstream]
            max_retries = 1
            call_timeout_ms = 1234
            [token]
            expiry_margin_secs = 7
            [server]
            drain_delay_ms = 0
        "#;
        let first = from_toml(text, &[("SUPPORT_SECRET", "from-env")]).unwrap();
        let printed = first.to_toml();
        let second = from_toml(&printed, &[("SUPPORT_SECRET", "from-env")]).unwrap();
        assert_eq!(second.to_toml(), printed, "printing is stable");
        assert_eq!(format!("{second:?}"), format!("{first:?}"), "{printed}");
        assert_eq!(second.apps["sales"].secret.expose_secret(), "****");
        assert!(
            printed.contains("secret_env = \"SUPPORT_SECRET\""),
            "{printed}"
        );
        assert_eq!(second.apps["support"].secret.expose_secret(), "from-env");
        assert_eq!(second.apps["support"].api_base.password(), Some("****"));
    }

    #[test]
    fn a_warning_about_plain_http_stays_a_comment() {
        let vars = [
            ("WECOM_CORP_ID", "ww"),
            ("WECOM_CORP_SECRET", "s"),
            ("WECOM_API_BASE", "http://wecom.example"),
        ];
        let printed = from_toml("", &vars).unwrap().to_toml();
        assert!(
            printed.starts_with("# WARNING: app default talks plain HTTP"),
            "{printed}"
        );
        from_toml(&printed, &[]).unwrap();
    }

    /// A fresh directory for one test's files.
    fn temp_dir(purpose: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wku-{purpose}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A self-signed certificate for localhost and its key, written to `dir`.
    fn cert_files(dir: &Path) -> (PathBuf, PathBuf) {
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, issued.cert.pem()).unwrap();
        std::fs::write(&key, issued.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn tls_comes_from_the_environment_or_the_file() {
        let dir = temp_dir("tls-env");
        let (cert, key) = cert_files(&dir);
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let vars = [
            ONE_APP[0],
            ONE_APP[1],
            ("WECOM_TLS_CERT_FILE", cert),
            ("WECOM_TLS_KEY_FILE", key),
        ];
        let tls = from_toml("", &vars).unwrap().tls.unwrap();
        assert_eq!(
            (tls.cert_file.to_str(), tls.key_file.to_str()),
            (Some(cert), Some(key))
        );
        assert_eq!(tls.client_ca_file, None);
        assert_eq!(tls.reload_interval, Duration::from_secs(10));

        let text = format!(
            "[tls]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\nclient_ca_file = \"{cert}\"\n\
             reload_interval_ms = 500\n"
        );
        let tls = from_toml(&text, ONE_APP).unwrap().tls.unwrap();
        assert_eq!(
            tls.client_ca_file.as_deref().and_then(Path::to_str),
            Some(cert)
        );
        assert_eq!(tls.reload_interval, Duration::from_millis(500));
        assert!(
            from_toml("", ONE_APP).unwrap().tls.is_none(),
            "off by default"
        );
    }

    #[test]
    fn a_tls_file_without_its_partner_is_named() {
        let dir = temp_dir("tls-partner");
        let (cert, _) = cert_files(&dir);
        let cert = cert.to_str().unwrap();
        // Each alone: the certificate needs its key, the key its certificate, mTLS both.
        for var in [
            "WECOM_TLS_CERT_FILE",
            "WECOM_TLS_KEY_FILE",
            "WECOM_TLS_CLIENT_CA_FILE",
        ] {
            let vars = [ONE_APP[0], ONE_APP[1], (var, cert)];
            assert_eq!(key_of("", &vars), var);
        }
    }

    #[test]
    fn a_tls_file_that_cannot_be_used_is_named_by_its_key_without_its_contents() {
        let dir = temp_dir("tls-bad");
        let (cert, key) = cert_files(&dir);
        let other_key = dir.join("other.key");
        let other = rcgen::generate_simple_self_signed(vec!["x".to_owned()]).unwrap();
        std::fs::write(&other_key, other.signing_key.serialize_pem()).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a PEM file at all: SECRET-LOOKING-BYTES").unwrap();
        let file = |cert: &Path, key: &Path, ca: Option<&Path>| {
            let mut text = format!(
                "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                cert.display(),
                key.display()
            );
            if let Some(ca) = ca {
                text.push_str(&format!("client_ca_file = \"{}\"\n", ca.display()));
            }
            text
        };
        let missing = dir.join("missing.crt");
        for (text, key) in [
            (file(&missing, &key, None), "tls.cert_file"),
            (file(&garbage, &key, None), "tls.cert_file"),
            (file(&cert, &garbage, None), "tls.key_file"),
            (file(&cert, &other_key, None), "tls.key_file"),
            (file(&cert, &key, Some(&garbage)), "tls.client_ca_file"),
        ] {
            let err = from_toml(&text, ONE_APP).unwrap_err();
            assert_eq!(err.key, key, "{err}");
            assert!(!err.to_string().contains("SECRET-LOOKING"), "{err}");
            assert!(!err.to_string().contains("PRIVATE KEY-----\n"), "{err}");
        }
    }

    #[test]
    fn callers_come_from_their_file_and_may_name_only_configured_apps() {
        let dir = temp_dir("callers");
        let path = dir.join("callers.toml");
        let good = crate::auth::new_caller("shop", &["default".into()]).unwrap();
        std::fs::write(&path, &good.entry).unwrap();
        let vars = [
            ONE_APP[0],
            ONE_APP[1],
            ("WECOM_CALLERS_FILE", path.to_str().unwrap()),
        ];
        let auth = from_toml("", &vars).unwrap().auth.unwrap();
        assert_eq!(auth.callers.len(), 1);
        assert!(auth.open_health && auth.open_reflection, "open by default");

        let text = format!(
            "[auth]\ncallers_file = \"{}\"\nopen_health = false\n",
            path.display()
        );
        let auth = from_toml(&text, ONE_APP).unwrap().auth.unwrap();
        assert!(!auth.open_health && auth.open_reflection);

        let wrong = crate::auth::new_caller("crm", &["crm".into()]).unwrap();
        std::fs::write(&path, &wrong.entry).unwrap();
        let err = from_toml("", &vars).unwrap_err();
        assert_eq!(err.key, "WECOM_CALLERS_FILE");
        assert!(
            err.problem.contains("callers[0].apps") && err.problem.contains("crm"),
            "{err}"
        );
        let missing = [
            ONE_APP[0],
            ONE_APP[1],
            ("WECOM_CALLERS_FILE", "/nonexistent/callers"),
        ];
        assert_eq!(key_of("", &missing), "WECOM_CALLERS_FILE");
    }

    #[test]
    fn the_printed_tls_and_auth_load_back_and_list_the_callers() {
        let dir = temp_dir("print-security");
        let (cert, key) = cert_files(&dir);
        let callers = dir.join("callers.toml");
        let new = crate::auth::new_caller("shop", &["*".into()]).unwrap();
        std::fs::write(&callers, &new.entry).unwrap();
        let text = format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nreload_interval_ms = 1500\n\
             [auth]\ncallers_file = \"{}\"\nopen_reflection = false\n",
            cert.display(),
            key.display(),
            callers.display()
        );
        let first = from_toml(&text, ONE_APP).unwrap();
        let printed = first.to_toml();
        let second = from_toml(&printed, ONE_APP).unwrap();
        assert_eq!(second.to_toml(), printed, "printing is stable");
        assert!(printed.contains("reload_interval_ms = 1500"), "{printed}");
        assert!(printed.contains("open_reflection = false"), "{printed}");
        assert!(
            printed.contains("#   shop: every app (with a bearer token)"),
            "{printed}"
        );
        let digest = new.entry.split('"').nth(5).unwrap();
        assert!(!printed.contains(digest), "{printed}");
    }

    #[test]
    fn the_sandbox_listens_on_loopback_unless_told_otherwise() {
        let demo = sandbox("http://127.0.0.1:1");
        let s = Settings::load_for_sandbox(None, &env(&[]), &demo).unwrap();
        assert_eq!(s.listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(s.admin_listen, "127.0.0.1:9464".parse().unwrap());
        let dir = temp_dir("sandbox-listen");
        let path = dir.join("config.toml");
        std::fs::write(&path, "listen = \"0.0.0.0:7000\"\n").unwrap();
        let s = Settings::load_for_sandbox(Some(&path), &env(&[]), &demo).unwrap();
        assert_eq!(
            s.listen,
            "0.0.0.0:7000".parse().unwrap(),
            "an address given is kept"
        );
        assert_eq!(s.admin_listen, "127.0.0.1:9464".parse().unwrap());
    }

    #[test]
    fn listening_beyond_loopback_without_tls_or_callers_is_flagged() {
        let mut s = from_toml("", ONE_APP).unwrap();
        let warning = crate::config::is_exposed(&s).unwrap();
        assert!(
            warning.contains("neither TLS nor caller authentication"),
            "{warning}"
        );
        assert!(
            s.to_toml()
                .contains("# WARNING: the gRPC port 0.0.0.0:50051")
        );
        s.listen = "127.0.0.1:50051".parse().unwrap();
        assert_eq!(crate::config::is_exposed(&s), None);
    }
}
