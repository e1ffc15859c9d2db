//! A fleet of replicas sharing each app's token and WeCom's rate budget through
//! Redis (or Valkey).
//!
//! Redis is a help, never a dependency: every operation has a short timeout, and a
//! replica that cannot reach Redis falls back to what a lone replica does (its own
//! token fetches, a share of the rate budget), logs it once per interval and goes
//! back to sharing by itself once Redis answers again.
//!
//! - `mod.rs`: the connection, made in the background so that a replica starts
//!   without Redis, and the fallback log;
//! - `tokens`: [`SharedTokens`], a [`TokenSource`](super::TokenSource) that reads
//!   the fleet's token and lets one replica at a time fetch a new one;
//! - `tickets`: [`SharedTickets`], a suite's newest `suite_ticket`, which WeCom
//!   pushes to one replica and every replica needs;
//! - `budget`: [`SharedBudget`], a [`RateBudget`](super::RateBudget) whose windows
//!   live in Redis, one script per check.
//!
//! Every key an app's token uses shares the hash tag `{corp_id:app}`, and every key
//! of a rate window `{corp_id:api}` (or `{gateway:api}`), so each script touches one
//! slot of a Redis Cluster.

mod budget;
mod tickets;
mod tokens;

use std::{
    fmt,
    future::Future,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use redis::{
    Client, ConnectionInfo, RedisError, RedisResult,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use crate::telemetry::Metrics;

pub(crate) use budget::SharedBudget;
pub(crate) use tickets::SharedTickets;
pub(crate) use tokens::SharedTokens;

/// How often a replica that cannot reach Redis says so.
const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Pause between attempts at the first connection.
const CONNECT_RETRY: Duration = Duration::from_secs(1);

/// How replicas share through Redis.
#[derive(Clone)]
pub struct FleetSettings {
    /// Where Redis is, with the ACL user and password if any.
    pub connection: ConnectionInfo,
    /// The address as shown: no password.
    pub shown_address: String,
    /// Put in front of every key, so that several gateways can share one Redis.
    pub key_prefix: String,
    /// Longest wait for a connection to Redis.
    pub connect_timeout: Duration,
    /// Longest wait for one Redis command; past it the replica falls back.
    pub command_timeout: Duration,
    /// How long a replica holds the lock on an app's token fetch at most; a
    /// replica that dies mid-fetch blocks the others no longer than this.
    pub lock_ttl: Duration,
    /// The share of each rate limit a replica keeps to itself while Redis is
    /// unreachable, in (0, 1]: about 1 / replicas.
    pub fallback_share: f64,
}

impl fmt::Debug for FleetSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetSettings")
            .field("address", &self.shown_address)
            .field("key_prefix", &self.key_prefix)
            .field("command_timeout", &self.command_timeout)
            .field("lock_ttl", &self.lock_ttl)
            .field("fallback_share", &self.fallback_share)
            .finish_non_exhaustive()
    }
}

/// What a replica could not do through Redis; shown in logs (never a password).
#[derive(Debug, Clone)]
pub(crate) struct Unreachable(String);

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The replica's link to Redis, shared by every app.
pub(crate) struct Fleet {
    settings: FleetSettings,
    connection: ArcSwapOption<ConnectionManager>,
    health: Health,
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("settings", &self.settings)
            .field("connected", &self.connection.load().is_some())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// A link whose connection is made in the background (in the current Tokio
    /// runtime): until it is, every operation falls back.
    pub(crate) fn start(settings: FleetSettings, metrics: &Metrics) -> Arc<Self> {
        let fleet = Arc::new(Self {
            settings,
            connection: ArcSwapOption::empty(),
            health: Health {
                metrics: metrics.clone(),
                ..Health::default()
            },
        });
        tokio::spawn(connect(Arc::downgrade(&fleet)));
        fleet
    }

    fn settings(&self) -> &FleetSettings {
        &self.settings
    }

    /// A key under the prefix, in the hash tag `{tag}`.
    fn key(&self, tag: &str, name: &str) -> String {
        format!("{}{{{tag}}}:{name}", self.settings.key_prefix)
    }

    /// Runs `op` on the connection within the command timeout. A command that
    /// fails because the connection dropped while idle is tried once more: the
    /// manager reconnects in the background but hands that first error back.
    async fn run<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, Unreachable>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let Some(connection) = self.connection.load_full() else {
            return Err(self
                .health
                .failed(what, &Unreachable("not connected yet".to_owned())));
        };
        let mut dropped_once = false;
        loop {
            let answer = tokio::time::timeout(
                self.settings.command_timeout,
                op(ConnectionManager::clone(&connection)),
            )
            .await;
            let error = match answer {
                Ok(Ok(value)) => {
                    self.health.succeeded();
                    return Ok(value);
                }
                Ok(Err(error)) if !dropped_once && dropped(&error) => {
                    dropped_once = true;
                    continue;
                }
                Ok(Err(error)) => Unreachable(error.to_string()),
                Err(_) => Unreachable(format!(
                    "no answer within {} ms",
                    self.settings.command_timeout.as_millis()
                )),
            };
            return Err(self.health.failed(what, &error));
        }
    }

    /// Notes that this replica is working alone for `what`, and logs it once per
    /// interval.
    fn fell_back(&self, what: &'static str, why: &Unreachable) {
        self.health.fell_back(what, why);
    }
}

/// Makes the first connection, retrying until Redis answers; from then on the
/// connection manager reconnects by itself.
async fn connect(fleet: Weak<Fleet>) {
    let Some(settings) = fleet.upgrade().map(|f| f.settings.clone()) else {
        return;
    };
    let settings = &settings;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_response_timeout(Some(settings.command_timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    let client = match Client::open(settings.connection.clone()) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(redis = %settings.shown_address, error = %error, "redis address refused; this replica shares nothing");
            return;
        }
    };
    loop {
        let attempt = client.get_connection_manager_with_config(config.clone());
        // Gone with the apps that used it.
        let Some(fleet) = fleet.upgrade() else {
            return;
        };
        match tokio::time::timeout(settings.connect_timeout * 2, attempt).await {
            Ok(Ok(manager)) => {
                tracing::info!(redis = %settings.shown_address, "connected to redis; sharing tokens and rate budget with the fleet");
                fleet.connection.store(Some(Arc::new(manager)));
                return;
            }
            Ok(Err(error)) => {
                fleet
                    .health
                    .failed("connect", &Unreachable(error.to_string()));
            }
            Err(_) => {
                fleet
                    .health
                    .failed("connect", &Unreachable("timed out".to_owned()));
            }
        }
        drop(fleet);
        tokio::time::sleep(CONNECT_RETRY).await;
    }
}

fn dropped(error: &RedisError) -> bool {
    error.is_connection_dropped() || error.is_io_error()
}

/// Whether Redis answers, and how often it did not: logged, not returned.
#[derive(Default)]
struct Health {
    down: AtomicBool,
    /// Failed Redis operations since the last log line.
    errors: AtomicU64,
    /// Operations done without Redis since the last log line.
    fallbacks: AtomicU64,
    last_logged: Mutex<Option<Instant>>,
    metrics: Metrics,
}

impl Health {
    fn failed(&self, what: &'static str, error: &Unreachable) -> Unreachable {
        self.down.store(true, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.metrics.redis_failed(what);
        self.log(what, error);
        error.clone()
    }

    fn fell_back(&self, what: &'static str, why: &Unreachable) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        self.metrics.redis_fell_back(what);
        self.log(what, why);
    }

    fn succeeded(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            let errors = self.errors.swap(0, Ordering::Relaxed);
            let fallbacks = self.fallbacks.swap(0, Ordering::Relaxed);
            tracing::info!(
                redis_errors = errors,
                redis_fallbacks = fallbacks,
                "redis answers again; sharing tokens and rate budget with the fleet"
            );
        }
    }

    /// One warning per interval, with the counts since the previous one.
    fn log(&self, what: &'static str, error: &Unreachable) {
        let now = Instant::now();
        {
            let Ok(mut last) = self.last_logged.lock() else {
                return;
            };
            if last.is_some_and(|at| now.duration_since(at) < LOG_INTERVAL) {
                return;
            }
            *last = Some(now);
        }
        tracing::warn!(
            operation = what,
            error = %error,
            redis_errors = self.errors.swap(0, Ordering::Relaxed),
            redis_fallbacks = self.fallbacks.swap(0, Ordering::Relaxed),
            "redis unreachable; this replica fetches its own tokens and keeps to its share of the rate budget"
        );
    }
}
