//! `[redis]`: the optional Redis a fleet of replicas shares tokens and rate budget
//! through (`WECOM_REDIS_URL` or `redis.url`).

use std::{fmt, path::PathBuf, time::Duration};

use redis::IntoConnectionInfo;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use super::{ConfigError, SecretOrigin, env::Environment};
use crate::{telemetry::redacted, wecom::FleetSettings};

/// The Redis URL, which may carry the password.
pub(super) const REDIS_URL: &str = "WECOM_REDIS_URL";

const DEFAULT_KEY_PREFIX: &str = "wecom-kf-upgrade:";

/// `[redis]` as written. The URL may hold a password, so it is kept secret.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct FileRedis {
    url: Option<SecretString>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    key_prefix: Option<String>,
    connect_timeout_ms: Option<u64>,
    command_timeout_ms: Option<u64>,
    lock_ttl_ms: Option<u64>,
    fallback_share: Option<f64>,
}

/// `[redis]` as `check-config` prints it: the URL's password as `****`, a
/// password file or variable by its name.
#[derive(Debug, Serialize)]
pub(super) struct RenderedRedis {
    url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password_env: Option<String>,
    key_prefix: String,
    connect_timeout_ms: u64,
    command_timeout_ms: u64,
    lock_ttl_ms: u64,
    fallback_share: f64,
}

/// A Redis shared by the replicas (`[redis]`): on when a URL is given.
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` (TLS), with the ACL user, password and database
    /// if any (`url`, `WECOM_REDIS_URL`). Shown only with its password as `****`.
    pub url: Url,
    /// The ACL user, over the URL's (`username`).
    pub username: Option<String>,
    /// The password, over the URL's, read from `password_file` or `password_env`.
    pub password: Option<SecretString>,
    /// Where that password came from.
    pub password_origin: Option<SecretOrigin>,
    /// Put in front of every key (`key_prefix`), so several gateways can share a Redis.
    pub key_prefix: String,
    /// Longest wait for a connection (`connect_timeout_ms`).
    pub connect_timeout: Duration,
    /// Longest wait for one command; past it the replica works alone for that
    /// call (`command_timeout_ms`).
    pub command_timeout: Duration,
    /// Longest a replica holds the lock on an app's token fetch (`lock_ttl_ms`).
    pub lock_ttl: Duration,
    /// The share of each rate limit a replica keeps to while Redis is
    /// unreachable, in (0, 1]: about 1 / replicas (`fallback_share`).
    pub fallback_share: f64,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redacted(&self.url).as_str())
            .field("username", &self.username)
            .field("password_origin", &self.password_origin)
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("lock_ttl", &self.lock_ttl)
            .field("fallback_share", &self.fallback_share)
            .finish_non_exhaustive()
    }
}

impl FileRedis {
    /// The settings, if a URL is given in the environment or the file; the
    /// password file or variable is read now.
    pub(super) fn resolve(
        &self,
        env: &dyn Environment,
    ) -> Result<Option<RedisSettings>, ConfigError> {
        let (key, url) = match env.var(REDIS_URL) {
            Some(url) => (REDIS_URL, SecretString::from(url)),
            None => match &self.url {
                Some(url) => ("redis.url", url.clone()),
                None => return Ok(None),
            },
        };
        // Never quote the URL in an error: it may hold the password.
        let url = Url::parse(url.expose_secret()).map_err(|e| {
            ConfigError::new(key, format!("not a URL ({e}); expected redis://[user:password@]host[:port][/db] or rediss://…"))
        })?;
        if !matches!(url.scheme(), "redis" | "rediss") {
            return Err(ConfigError::new(
                key,
                format!(
                    "scheme `{}` is not supported: use redis:// or rediss:// (TLS)",
                    url.scheme()
                ),
            ));
        }
        url.clone()
            .into_connection_info()
            .map_err(|e| ConfigError::new(key, format!("not a Redis address ({:?})", e.kind())))?;
        let (password, password_origin) = self.password(env)?;
        let ms = |value: Option<u64>, default: u64, name: &str, least: u64, most: u64| {
            let value = value.unwrap_or(default);
            if (least..=most).contains(&value) {
                Ok(Duration::from_millis(value))
            } else {
                Err(ConfigError::new(
                    format!("redis.{name}"),
                    format!("must be between {least} and {most}"),
                ))
            }
        };
        let fallback_share = self.fallback_share.unwrap_or(0.5);
        if !(fallback_share > 0.0 && fallback_share <= 1.0) {
            return Err(ConfigError::new(
                "redis.fallback_share",
                "must be above 0 and at most 1: about 1 / the number of replicas",
            ));
        }
        let key_prefix = self
            .key_prefix
            .clone()
            .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned());
        if key_prefix.contains(['{', '}']) {
            return Err(ConfigError::new(
                "redis.key_prefix",
                "must not contain { or }: the gateway puts each app's keys in a hash tag of its own",
            ));
        }
        Ok(Some(RedisSettings {
            url,
            username: self.username.clone(),
            password,
            password_origin,
            key_prefix,
            connect_timeout: ms(
                self.connect_timeout_ms,
                1_000,
                "connect_timeout_ms",
                1,
                60_000,
            )?,
            command_timeout: ms(
                self.command_timeout_ms,
                200,
                "command_timeout_ms",
                1,
                10_000,
            )?,
            lock_ttl: ms(self.lock_ttl_ms, 10_000, "lock_ttl_ms", 100, 600_000)?,
            fallback_share,
        }))
    }

    fn password(
        &self,
        env: &dyn Environment,
    ) -> Result<(Option<SecretString>, Option<SecretOrigin>), ConfigError> {
        match (&self.password_file, &self.password_env) {
            (Some(_), Some(_)) => Err(ConfigError::new(
                "redis.password_file",
                "give the password by file or by variable, not both",
            )),
            (Some(path), None) => {
                let key = "redis.password_file";
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new(key, format!("cannot read {}: {e}", path.display()))
                })?;
                // Mounted Kubernetes Secrets often end with a newline that is not part of it.
                let password = text.trim();
                if password.is_empty() {
                    return Err(ConfigError::new(
                        key,
                        format!("{} is empty", path.display()),
                    ));
                }
                let origin = SecretOrigin::File(path.clone());
                Ok((Some(SecretString::from(password.to_owned())), Some(origin)))
            }
            (None, Some(var)) => {
                let password = env.var(var).ok_or_else(|| {
                    ConfigError::new(
                        "redis.password_env",
                        format!("environment variable {var} is not set"),
                    )
                })?;
                Ok((
                    Some(SecretString::from(password)),
                    Some(SecretOrigin::Env(var.clone())),
                ))
            }
            (None, None) => Ok((None, None)),
        }
    }
}

impl RedisSettings {
    /// What `check-config` prints.
    pub(super) fn rendered(&self) -> RenderedRedis {
        let (password_file, password_env) = match &self.password_origin {
            Some(SecretOrigin::File(path)) => (Some(path.clone()), None),
            Some(SecretOrigin::Env(var)) => (None, Some(var.clone())),
            _ => (None, None),
        };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        RenderedRedis {
            url: redacted(&self.url).to_string(),
            username: self.username.clone(),
            password_file,
            password_env,
            key_prefix: self.key_prefix.clone(),
            connect_timeout_ms: ms(self.connect_timeout),
            command_timeout_ms: ms(self.command_timeout),
            lock_ttl_ms: ms(self.lock_ttl),
            fallback_share: self.fallback_share,
        }
    }

    /// What the adapter needs; `None` only for a URL that loading refuses.
    pub(super) fn fleet(&self) -> Option<FleetSettings> {
        let mut connection = self.url.clone().into_connection_info().ok()?;
        let mut account = connection.redis_settings().clone();
        if let Some(username) = &self.username {
            account = account.set_username(username);
        }
        if let Some(password) = &self.password {
            account = account.set_password(password.expose_secret());
        }
        connection = connection.set_redis_settings(account);
        Some(FleetSettings {
            connection,
            shown_address: redacted(&self.url).to_string(),
            key_prefix: self.key_prefix.clone(),
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
            lock_ttl: self.lock_ttl,
            fallback_share: self.fallback_share,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::Settings;

    /// Loads `text` as the file, with one app and `vars` in the environment.
    fn load(text: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let path = std::env::temp_dir().join(format!(
            "wecom-kf-redis-{}-{}.toml",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&path, text).unwrap();
        let mut env: BTreeMap<String, String> =
            [("WECOM_CORP_ID", "ww"), ("WECOM_CORP_SECRET", "s")]
                .iter()
                .chain(vars)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        env.retain(|_, v| !v.is_empty());
        let settings = Settings::load(Some(&path), &env);
        let _ = std::fs::remove_file(&path);
        settings
    }

    #[test]
    fn without_a_url_nothing_is_shared() {
        let settings = load("", &[]).unwrap();
        assert!(settings.redis.is_none());
        assert!(settings.adapter().0.fleet.is_none());
        assert!(!settings.to_toml().contains("[redis]"));
    }

    #[test]
    fn the_environment_wins_and_passwords_are_shown_nowhere() {
        let text =
            "[redis]\nurl = \"redis://:FILE-PASS@file.example:6379\"\nfallback_share = 0.25\n";
        let url = "rediss://acl-user:ENV-PASS@env.example:6380/2";
        let settings = load(text, &[(REDIS_URL, url)]).unwrap();
        let redis = settings.redis.as_ref().unwrap();
        assert_eq!(redis.url.host_str(), Some("env.example"));
        assert_eq!(redis.fallback_share, 0.25);
        assert_eq!(redis.command_timeout, Duration::from_millis(200));
        let fleet = settings.adapter().0.fleet.unwrap();
        let account = fleet.connection.redis_settings();
        assert_eq!(account.username(), Some("acl-user"));
        assert_eq!(account.password(), Some("ENV-PASS"));
        let shown = format!("{} {settings:?} {fleet:?}", settings.to_toml());
        assert!(
            shown.contains("rediss://acl-user:****@env.example:6380/2"),
            "{shown}"
        );
        for secret in ["ENV-PASS", "FILE-PASS"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        // What check-config prints loads back.
        let again = load(&settings.to_toml(), &[]).unwrap();
        assert_eq!(again.redis.unwrap().fallback_share, 0.25);
    }

    #[test]
    fn the_password_and_user_may_come_from_a_file_or_a_variable() {
        let file = std::env::temp_dir().join(format!("wecom-kf-redis-pw-{}", std::process::id()));
        std::fs::write(&file, "FILE-PASS\n").unwrap();
        let text = format!(
            "[redis]\nurl = \"redis://127.0.0.1\"\nusername = \"gw\"\npassword_file = \"{}\"\n",
            file.display()
        );
        let settings = load(&text, &[]).unwrap();
        let fleet = settings.adapter().0.fleet.unwrap();
        assert_eq!(
            fleet.connection.redis_settings().password(),
            Some("FILE-PASS")
        );
        assert_eq!(fleet.connection.redis_settings().username(), Some("gw"));
        let shown = settings.to_toml();
        assert!(shown.contains("password_file"), "{shown}");
        assert!(!shown.contains("FILE-PASS"), "{shown}");
        let _ = std::fs::remove_file(&file);

        let text = "[redis]\nurl = \"redis://127.0.0.1\"\npassword_env = \"REDIS_PW\"\n";
        let settings = load(text, &[("REDIS_PW", "VAR-PASS")]).unwrap();
        let fleet = settings.adapter().0.fleet.unwrap();
        assert_eq!(
            fleet.connection.redis_settings().password(),
            Some("VAR-PASS")
        );
        assert_eq!(load(text, &[]).unwrap_err().key, "redis.password_env");
    }

    #[test]
    fn bad_values_are_named_without_quoting_the_url() {
        let error = load("", &[(REDIS_URL, "http://:PASS@redis.example")]).unwrap_err();
        assert_eq!(error.key, REDIS_URL);
        assert!(!error.to_string().contains("PASS"), "{error}");
        let key = |text: &str| load(text, &[]).unwrap_err().key;
        assert_eq!(key("[redis]\nurl = \"not a url\"\n"), "redis.url");
        let with = |knob: &str| format!("[redis]\nurl = \"redis://h\"\n{knob}\n");
        assert_eq!(key(&with("fallback_share = 0.0")), "redis.fallback_share");
        assert_eq!(key(&with("fallback_share = 1.5")), "redis.fallback_share");
        assert_eq!(key(&with("key_prefix = \"a{b}\"")), "redis.key_prefix");
        assert_eq!(
            key(&with("command_timeout_ms = 0")),
            "redis.command_timeout_ms"
        );
        assert_eq!(key(&with("lock_ttl_ms = 10")), "redis.lock_ttl_ms");
        // The lock must outlast a gettoken request (5 s by default).
        let short_lock = load(&with("lock_ttl_ms = 5000"), &[]).unwrap_err();
        assert_eq!(short_lock.key, "redis.lock_ttl_ms");
        assert!(
            short_lock.problem.contains("request_timeout_ms"),
            "{short_lock}"
        );
        assert_eq!(key(&with("colour = 1")), "--config");
    }
}
