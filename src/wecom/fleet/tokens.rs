//! An app's token, shared by the fleet: read from Redis, fetched by one replica
//! at a time under a lock, dropped by compare-and-delete when WeCom refuses it.
//!
//! This wraps the app's own [`TokenSource`], under its [`TokenCache`](crate::wecom::TokenCache):
//! the cache keeps its single flight, refresh-ahead, cool-down and backoff per
//! replica, and its one fetch at a time asks the fleet before asking WeCom.

use std::{
    fmt,
    sync::{Arc, LazyLock},
    time::Duration,
};

use async_trait::async_trait;
use redis::Script;
use tokio::time::Instant;

use super::Fleet;
use crate::wecom::{AccessToken, Error, IssuedToken, TokenPolicy, TokenSource};

/// How often a replica waiting for another's fetch looks for its token.
const POLL: Duration = Duration::from_millis(50);

/// The token and its lifetime as fetched, with the milliseconds it has left.
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local v = redis.call('HMGET', KEYS[1], 'token', 'lifetime_ms')
          if not v[1] then return false end
          return {v[1], tonumber(v[2]) or 0, redis.call('PTTL', KEYS[1])}",
    )
});

/// Replaces the token: KEYS[1] the token, ARGV the token, its lifetime and expiry (ms).
static STORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"redis.call('DEL', KEYS[1])
          redis.call('HSET', KEYS[1], 'token', ARGV[1], 'lifetime_ms', ARGV[2])
          return redis.call('PEXPIRE', KEYS[1], ARGV[3])",
    )
});

/// Deletes KEYS[1] if its `field` (ARGV[1]) still holds ARGV[2]; for a hash (the
/// token) or, with an empty field, a string (the lock).
static COMPARE_AND_DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local v
          if ARGV[1] == '' then v = redis.call('GET', KEYS[1])
          else v = redis.call('HGET', KEYS[1], ARGV[1]) end
          if v == ARGV[2] then return redis.call('DEL', KEYS[1]) end
          return 0",
    )
});

/// A token as the fleet holds it.
struct Held {
    token: AccessToken,
    lifetime: Duration,
    left: Duration,
}

/// One app's token, shared through Redis, fetched from `source` by one replica of
/// the fleet at a time.
pub(crate) struct SharedTokens {
    app: Arc<str>,
    source: Arc<dyn TokenSource>,
    fleet: Arc<Fleet>,
    policy: TokenPolicy,
    token_key: String,
    lock_key: String,
}

impl fmt::Debug for SharedTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedTokens")
            .field("app", &self.app)
            .field("token_key", &self.token_key)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl SharedTokens {
    /// The token of app `app` of corp `corp_id`; the keys are named after both,
    /// never after the secret.
    pub(crate) fn new(
        fleet: Arc<Fleet>,
        corp_id: &str,
        app: &str,
        source: Arc<dyn TokenSource>,
        policy: TokenPolicy,
    ) -> Self {
        let tag = format!("{corp_id}:{app}");
        Self {
            app: app.into(),
            token_key: fleet.key(&tag, "token"),
            lock_key: fleet.key(&tag, "lock"),
            source,
            fleet,
            policy,
        }
    }

    /// The fleet's token, if there is one.
    async fn read(&self) -> Result<Option<Held>, super::Unreachable> {
        let key = &self.token_key;
        let held: Option<(String, u64, i64)> = self
            .fleet
            .run("read token", |mut c| async move {
                READ.key(key).invoke_async(&mut c).await
            })
            .await?;
        Ok(held.and_then(|(token, lifetime_ms, left_ms)| {
            let left = u64::try_from(left_ms).ok().filter(|&ms| ms > 0)?;
            Some(Held {
                token: AccessToken::new(token),
                lifetime: Duration::from_millis(lifetime_ms),
                left: Duration::from_millis(left),
            })
        }))
    }

    /// Whether a replica should fetch the next token: the same point where the
    /// cache refreshes ahead, so the fleet refreshes before any replica's copy
    /// expires.
    fn due(&self, held: &Held) -> bool {
        let ahead = (self.policy.refresh_ahead + self.policy.expiry_margin).min(held.lifetime / 2);
        held.left <= ahead
    }

    async fn try_lock(&self, owner: &str) -> Result<bool, super::Unreachable> {
        let (key, ttl) = (&self.lock_key, millis(self.fleet.settings().lock_ttl));
        let set: Option<String> = self
            .fleet
            .run("lock token fetch", |mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }

    /// Releases the lock if this replica still owns it.
    async fn unlock(&self, owner: &str) {
        let key = &self.lock_key;
        let _ = self
            .fleet
            .run("unlock token fetch", |mut c| async move {
                COMPARE_AND_DELETE
                    .key(key)
                    .arg("")
                    .arg(owner)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
    }

    /// Under the lock: the fleet's token if another replica stored one meanwhile,
    /// else a fetch from the source, stored for the fleet.
    async fn fetch_locked(&self, attempt: u32) -> Result<IssuedToken, Error> {
        if let Ok(Some(held)) = self.read().await
            && !self.due(&held)
        {
            return Ok(held.issued());
        }
        let issued = self.source.fetch(attempt).await?;
        let margin = self.policy.expiry_margin.min(issued.expires_in / 10);
        let lifetime = issued.expires_in.min(Duration::from_secs(24 * 3600));
        let expiry = millis(lifetime - margin).max(1);
        let (key, token) = (&self.token_key, issued.token.expose());
        let stored = self
            .fleet
            .run("store token", |mut c| async move {
                STORE
                    .key(key)
                    .arg(token)
                    .arg(millis(lifetime))
                    .arg(expiry)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
        match stored {
            Ok(_) => tracing::info!(app = %self.app, "access token fetched for the fleet"),
            Err(why) => self.fleet.fell_back("store token", &why),
        }
        Ok(issued)
    }
}

impl Held {
    fn issued(&self) -> IssuedToken {
        IssuedToken {
            token: self.token.clone(),
            expires_in: self.left,
        }
    }
}

#[async_trait]
impl TokenSource for SharedTokens {
    async fn fetch(&self, attempt: u32) -> Result<IssuedToken, Error> {
        let owner = format!("{}:{:016x}", std::process::id(), fastrand::u64(..));
        // Past this the lock is stuck beyond its expiry: fetch alone.
        let give_up = Instant::now() + self.fleet.settings().lock_ttl * 2 + POLL;
        loop {
            let held = match self.read().await {
                Ok(held) => held,
                Err(why) => return self.fallback(why, attempt).await,
            };
            if let Some(held) = &held
                && !self.due(held)
            {
                return Ok(held.issued());
            }
            match self.try_lock(&owner).await {
                Ok(true) => {
                    let fetched = self.fetch_locked(attempt).await;
                    self.unlock(&owner).await;
                    return fetched;
                }
                // Another replica refreshes: keep serving the valid token, or
                // wait for the one it brings.
                Ok(false) => {
                    if let Some(held) = held {
                        return Ok(held.issued());
                    }
                }
                Err(why) => return self.fallback(why, attempt).await,
            }
            if Instant::now() >= give_up {
                let why = super::Unreachable("the token fetch lock outlived its expiry".to_owned());
                return self.fallback(why, attempt).await;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn refused(&self, token: &AccessToken) {
        let (key, token) = (&self.token_key, token.expose());
        let deleted = self
            .fleet
            .run("drop refused token", |mut c| async move {
                COMPARE_AND_DELETE
                    .key(key)
                    .arg("token")
                    .arg(token)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
        if let Ok(1) = deleted {
            tracing::info!(app = %self.app, "access token refused by WeCom; dropped for the fleet");
        }
    }
}

impl SharedTokens {
    async fn fallback(&self, why: super::Unreachable, attempt: u32) -> Result<IssuedToken, Error> {
        self.fleet.fell_back("token", &why);
        self.source.fetch(attempt).await
    }
}

/// Whole milliseconds, for Redis.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
