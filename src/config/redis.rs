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
