//! The three 升级服务 calls for one app, and the registry of apps.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use url::Url;

use super::{
    Endpoint, Error, Failed, GetToken, HttpSettings, NoTokenWhy, Retry, TokenCache, TokenPolicy,
    api::{self, CancelBody, EmptyAnswer, UpgradeBody, UpgradeConfigAnswer},
    fleet::{Fleet, FleetSettings, SharedBudget, SharedTickets, SharedTokens},
    limit::{LocalBudgets, NoSlot, RateBudget, RateLimits},
    suite::{
        GetCorpToken, GetSuiteToken, MemoryTickets, Suite, SuiteSpec, TicketOutcome, TicketStore,
    },
    token::TokenSource,
    transport::{Call, ClientError, HttpClient, Transport},
};
use crate::{
    domain::{Customer, Upgrade, UpgradeConfig},
    telemetry::{Metrics, redacted},
};

/// Least time left for a request worth sending after waiting for a turn.
const MIN_TIME_TO_SEND: Duration = Duration::from_millis(10);

/// One WeCom app, as the adapter needs to know it.
pub struct AppSpec {
    /// The name callers pick it by.
    pub name: String,
    /// 企业ID (`corpid`).
    pub corp_id: String,
    /// Where its tokens come from.
    pub credentials: AppCredentials,
    /// Where WeCom is.
    pub api_base: Url,
    /// The file it comes from: reloading that file replaces exactly the apps of
    /// its group ([`Apps::replace_group`]).
    pub group: String,
}

/// Where an app's tokens come from.
#[derive(Clone)]
pub enum AppCredentials {
    /// A self-built or 代开发 app: `gettoken` with the app's `corpsecret`.
    Secret(SecretString),
    /// A corp that authorised a third-party suite: `get_corp_token` with the
    /// corp's permanent code and the suite's token.
    Suite {
        /// The suite's configured name.
        suite: String,
        /// The corp's `permanent_code`.
        permanent_code: SecretString,
    },
}

impl fmt::Debug for AppSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSpec")
            .field("name", &self.name)
            .field("corp_id", &self.corp_id)
            .field("credentials", &self.credentials)
            .field("api_base", &redacted(&self.api_base).as_str())
            .field("group", &self.group)
            .finish()
    }
}

impl fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppCredentials::Secret(_) => f.write_str("Secret(****)"),
            AppCredentials::Suite { suite, .. } => f
                .debug_struct("Suite")
                .field("suite", suite)
                .field("permanent_code", &"****")
                .finish(),
        }
    }
}

/// How the adapter talks to WeCom, for every app.
#[derive(Debug, Clone)]
pub struct AdapterSettings {
    /// The HTTP client's timeouts and limits.
    pub http: HttpSettings,
    /// Retries of transient failures, for business calls and token fetches alike.
    pub retry: Retry,
    /// How tokens are kept and failed fetches held.
    pub tokens: TokenPolicy,
    /// WeCom's frequency limits, kept on the gateway's side.
    pub rate_limits: RateLimits,
    /// Longest a request waits for a slot of those limits (never past the
    /// call's deadline); past it the call is refused.
    pub max_rate_wait: Duration,
    /// Most requests one app has in flight to WeCom; more wait for a turn.
    pub max_requests_per_app: usize,
    /// Share tokens and rate budget with the other replicas through Redis;
    /// `None`: this replica keeps them to itself.
    pub fleet: Option<FleetSettings>,
}

/// One configured WeCom app: its token cache and its calls.
#[derive(Debug)]
pub struct AppClient {
    name: Arc<str>,
    /// The suite its token comes from, if any.
    suite: Option<Arc<str>>,
    transport: Transport,
    tokens: TokenCache,
    retry: Retry,
    budget: Arc<dyn RateBudget>,
    max_rate_wait: Duration,
    /// The line of calls waiting for a slot of the rate limits.
    line: tokio::sync::Mutex<()>,
    /// Turns to have a request in flight to WeCom.
    turns: Semaphore,
    max_requests: usize,
    metrics: Metrics,
}

impl AppClient {
    /// The app's configured name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// 获取配置的专员与客户群. `deadline`: when the caller stops waiting.
    pub async fn get_upgrade_config(&self, deadline: Instant) -> Result<UpgradeConfig, Failed> {
        let endpoint = Endpoint::GetUpgradeConfig;
        let answer: UpgradeConfigAnswer = self.call(endpoint, None, deadline).await?;
        Ok(answer.into())
    }

    /// 为客户升级为专员或客户群服务.
    pub async fn upgrade_service(
        &self,
        upgrade: &Upgrade,
        deadline: Instant,
    ) -> Result<(), Failed> {
        let body = api::encode(&UpgradeBody::from(upgrade));
        let endpoint = Endpoint::UpgradeService;
        let _: EmptyAnswer = self.call(endpoint, Some(&body), deadline).await?;
        Ok(())
    }

    /// 为客户取消推荐.
    pub async fn cancel_upgrade(
        &self,
        customer: &Customer,
        deadline: Instant,
    ) -> Result<(), Failed> {
        let body = api::encode(&CancelBody::from(customer));
        let endpoint = Endpoint::CancelUpgrade;
        let _: EmptyAnswer = self.call(endpoint, Some(&body), deadline).await?;
        Ok(())
    }

    /// One business call with WeCom's retry rules: after a token error, one retry
    /// with a fresh token; after a transient error, up to `max_retries` retries with
    /// jittered backoff. Every attempt spends a slot of the rate limits first. The
    /// caller bounds the whole loop in time.
    async fn call<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        body: Option<&[u8]>,
        deadline: Instant,
    ) -> Result<T, Failed> {
        let no_token = || Error::NoToken {
            endpoint,
            why: NoTokenWhy::Deadline,
        };
        // Waiting for a token sends nothing: one not had by the deadline says so,
        // rather than leaving the call to time out as if a request were in flight.
        let mut token = tokio::time::timeout_at(deadline.into(), self.tokens.get())
            .await
            .map_err(|_| no_token())??;
        let mut refreshed = false;
        let mut retries = 0;
        let mut may_have_taken_effect = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self
                .attempt(endpoint, &token, body, attempt, deadline)
                .await
            {
                Ok(answer) => return Ok(answer),
                Err(error) => error,
            };
            may_have_taken_effect |= endpoint.changes_state() && error.may_have_been_applied();
            let failed = |error| Failed {
                error,
                may_have_taken_effect,
            };
            if error.is_stale_token() && !refreshed {
                refreshed = true;
                let fresh = tokio::time::timeout_at(deadline.into(), self.tokens.replace(&token));
                token = fresh
                    .await
                    .map_err(|_| failed(no_token()))?
                    .map_err(failed)?;
                tracing::debug!(app = %self.name, %endpoint, errcode = error.errcode(), "retrying with a fresh token");
                continue;
            }
            retries += 1;
            if self.retry.pause_before(retries, &error).await {
                continue;
            }
            return Err(failed(error));
        }
    }

    /// One request: a slot of the rate limits, a turn among the app's requests in
    /// flight, then the exchange.
    async fn attempt<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        token: &super::AccessToken,
        body: Option<&[u8]>,
        attempt: u32,
        deadline: Instant,
    ) -> Result<T, Error> {
        self.wait_for_slot(endpoint, deadline).await?;
        // A turn not had by the deadline is a refusal of its own: nothing was sent.
        let turn = tokio::time::timeout_at(deadline.into(), self.turns.acquire()).await;
        let no_turn = || Error::NoTurn {
            endpoint,
            limit: self.max_requests,
        };
        let Ok(_turn) = turn else {
            return Err(no_turn());
        };
        // A turn freed by a request that timed out goes to the next in line, often
        // with moments left: sending then would only add another lost answer.
        if deadline.saturating_duration_since(Instant::now()) < MIN_TIME_TO_SEND {
            return Err(no_turn());
        }
        let query = [("access_token", token.expose())];
        let call = Call {
            endpoint,
            query: &query,
            body,
            attempt,
        };
        self.transport.request(call).await
    }

    /// Spends a slot of the rate limits, waiting for one for at most
    /// `max_rate_wait` and never past `deadline`.
    async fn wait_for_slot(&self, endpoint: Endpoint, deadline: Instant) -> Result<(), Error> {
        let give_up = deadline.min(Instant::now() + self.max_rate_wait);
        // A shared budget asks Redis, which may be slow: no check outlasts the wait.
        let spend = || async {
            match tokio::time::timeout_at(give_up.into(), self.budget.try_spend(endpoint)).await {
                Ok(spent) => spent,
                Err(_) => Err(NoSlot {
                    window: "rate check",
                    retry_after: self.max_rate_wait,
                }),
            }
        };
        let Err(full) = spend().await else {
            return Ok(());
        };
        let refused = |full: NoSlot, retry_after| {
            self.metrics.call_rate_limited(endpoint.path(), &self.name);
            Error::RateLimited {
                endpoint,
                window: full.window,
                retry_after,
            }
        };
        if Instant::now() + full.retry_after > give_up {
            return Err(refused(full, full.retry_after));
        }
        // Waiters line up, oldest first, each sleeping only until its own slot:
        // without the line every waiter would wake at every slot that frees.
        // One who waited in vain suggests waiting as long again.
        let Ok(_first_in_line) = tokio::time::timeout_at(give_up.into(), self.line.lock()).await
        else {
            return Err(refused(full, full.retry_after.max(self.max_rate_wait)));
        };
        loop {
            let Err(full) = spend().await else {
                return Ok(());
            };
            let wait = full.retry_after.max(Duration::from_millis(1));
            if Instant::now() + wait > give_up {
                return Err(refused(full, full.retry_after.max(self.max_rate_wait)));
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// The configured apps, by name: a cheap handle, shared by the gRPC service and
/// the callback endpoint.
///
/// The set can change while calls run (a reloaded corps file or apps file): a
/// call looks its app up with one atomic load of the current map, and keeps the
/// app it found until it ends, even if the app is removed meanwhile.
#[derive(Debug, Clone)]
pub struct Apps {
    inner: Arc<Registry>,
}

#[derive(Debug)]
struct Registry {
    current: ArcSwap<BTreeMap<String, Arc<AppClient>>>,
    default_app: String,
    suites: BTreeMap<String, Arc<Suite>>,
    factory: Factory,
    /// Who owns each app and what it was built from; held while the set changes,
    /// so that changes apply one at a time.
    owners: Mutex<BTreeMap<String, Owner>>,
    /// Keys the fingerprints of what apps are built from: a key of this process
    /// alone, so that a fingerprint says nothing of the secret in it.
    fingerprints: ring::hmac::Key,
}

struct Owner {
    group: String,
    /// What the app was built from ([`AppSpec::fingerprint`]).
    fingerprint: [u8; 32],
}

impl fmt::Debug for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The fingerprint is derived from a secret: shown by no output.
        f.debug_struct("Owner")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// What a change to the set of apps did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AppChanges {
    /// Apps that are new.
    pub added: Vec<String>,
    /// Apps whose corp, credentials or API base changed: rebuilt with a cold cache.
    pub changed: Vec<String>,
    /// Apps that are gone.
    pub removed: Vec<String>,
}

/// Where an app's tokens come from, its suite found.
enum TokenFrom {
    Secret(SecretString),
    Suite(Arc<Suite>, SecretString),
}

/// Builds apps and suites: one HTTP connection pool, the fleet if any, the rate
/// budgets shared by the apps of one corp.
struct Factory {
    settings: AdapterSettings,
    http: HttpClient,
    fleet: Option<Arc<Fleet>>,
    budgets: Mutex<LocalBudgets>,
    metrics: Metrics,
}

impl fmt::Debug for Factory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Factory").finish_non_exhaustive()
    }
}

impl Apps {
    /// One [`Suite`] per suite spec and one [`AppClient`] per app spec, sharing one
    /// HTTP connection pool, each with a token cache whose refresher starts now;
    /// all of them recording into `metrics`.
    pub fn new(
        settings: &AdapterSettings,
        suites: impl IntoIterator<Item = SuiteSpec>,
        specs: impl IntoIterator<Item = AppSpec>,
        default_app: String,
        metrics: &Metrics,
    ) -> Result<Self, AppsError> {
        let http = Transport::client(&settings.http).map_err(AppsError::HttpClient)?;
        let limits = &settings.rate_limits;
        let fleet = settings
            .fleet
            .clone()
            .map(|fleet| Fleet::start(fleet, metrics));
        // With a fleet, the in-process windows are the fallback: this replica's share.
        let budgets = LocalBudgets::new(match &settings.fleet {
            Some(fleet) => RateLimits {
                per_corp: limits.per_corp.share(fleet.fallback_share),
                per_gateway: limits.per_gateway.map(|l| l.share(fleet.fallback_share)),
            },
            None => limits.clone(),
        });
        let factory = Factory {
            settings: settings.clone(),
            http,
            fleet,
            budgets: Mutex::new(budgets),
            metrics: metrics.clone(),
        };
        let suites = suites
            .into_iter()
            .map(|spec| (spec.name.clone(), Arc::new(factory.suite(spec))))
            .collect();
        let apps = Self {
            inner: Arc::new(Registry {
                current: ArcSwap::from_pointee(BTreeMap::new()),
                default_app,
                suites,
                factory,
                owners: Mutex::new(BTreeMap::new()),
                fingerprints: fingerprint_key()?,
            }),
        };
        let mut groups: BTreeMap<String, Vec<AppSpec>> = BTreeMap::new();
        for spec in specs {
            groups.entry(spec.group.clone()).or_default().push(spec);
        }
        for (group, specs) in groups {
            apps.replace_group(&group, specs)?;
        }
        Ok(apps)
    }

    /// The name of the app that serves calls without `x-wecom-app`.
    pub fn default_app(&self) -> &str {
        &self.inner.default_app
    }

    /// The app named `name`: one atomic load, no lock.
    pub fn get(&self, name: &str) -> Option<Arc<AppClient>> {
        self.inner.current.load().get(name).cloned()
    }

    /// The names of every app, in order.
    pub fn names(&self) -> Vec<String> {
        self.inner.current.load().keys().cloned().collect()
    }

    /// The suite named `name`.
    pub fn suite(&self, name: &str) -> Option<&Arc<Suite>> {
        self.inner.suites.get(name)
    }

    /// Keeps a `suite_ticket` WeCom pushed for suite `name`, if it is the newest;
    /// then fetches that failed for want of one (the suite's, its corps') are
    /// tried again at once.
    pub async fn suite_ticket(
        &self,
        suite: &Suite,
        ticket: String,
        issued_at: i64,
    ) -> TicketOutcome {
        let outcome = suite.ticket_arrived(ticket, issued_at).await;
        if outcome == TicketOutcome::Stored {
            for app in self.inner.current.load().values() {
                if app.suite.as_deref() == Some(suite.name()) {
                    app.tokens.retry_now();
                }
            }
        }
        outcome
    }

    /// Makes `specs` the apps of `group` (the file they come from): apps of the
    /// group that are not in `specs` are removed, new ones added, changed ones
    /// rebuilt; others keep their token. Nothing changes if a spec is invalid
    /// (a name another group owns, an unknown suite) or if the change would remove
    /// the default app.
    pub fn replace_group(&self, group: &str, specs: Vec<AppSpec>) -> Result<AppChanges, AppsError> {
        let inner = &self.inner;
        let mut owners = inner.owners.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = BTreeMap::clone(&inner.current.load());
        let mut changes = AppChanges::default();
        let mut wanted = BTreeMap::new();
        for spec in specs {
            if let Some(owner) = owners.get(&spec.name).filter(|o| o.group != group) {
                return Err(AppsError::Taken {
                    app: spec.name,
                    group: owner.group.clone(),
                });
            }
            if let AppCredentials::Suite { suite, .. } = &spec.credentials
                && !inner.suites.contains_key(suite)
            {
                return Err(AppsError::UnknownSuite {
                    app: spec.name,
                    suite: suite.clone(),
                });
            }
            if wanted.contains_key(&spec.name) {
                return Err(AppsError::Duplicate { app: spec.name });
            }
            wanted.insert(spec.name.clone(), spec);
        }
        // Calls without `x-wecom-app` need it: its file must keep it.
        if owners
            .get(&inner.default_app)
            .is_some_and(|owner| owner.group == group)
            && !wanted.contains_key(&inner.default_app)
        {
            return Err(AppsError::DefaultAppRemoved {
                app: inner.default_app.clone(),
            });
        }
        let gone: Vec<String> = owners
            .iter()
            .filter(|(name, owner)| owner.group == group && !wanted.contains_key(*name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            owners.remove(&name);
            next.remove(&name);
            changes.removed.push(name);
        }
        for (name, spec) in wanted {
            let fingerprint = spec.fingerprint(&inner.fingerprints);
            match owners.get(&name) {
                Some(owner) if owner.fingerprint == fingerprint => continue,
                Some(_) => changes.changed.push(name.clone()),
                None => changes.added.push(name.clone()),
            }
            let tokens = match spec.credentials.clone() {
                AppCredentials::Secret(secret) => TokenFrom::Secret(secret),
                AppCredentials::Suite {
                    suite,
                    permanent_code,
                } => match inner.suites.get(&suite) {
                    Some(suite) => TokenFrom::Suite(Arc::clone(suite), permanent_code),
                    // Checked above, before anything changed.
                    None => continue,
                },
            };
            next.insert(name.clone(), Arc::new(inner.factory.app(spec, tokens)));
            owners.insert(
                name,
                Owner {
                    group: group.to_owned(),
                    fingerprint,
                },
            );
        }
        inner.current.store(Arc::new(next));
        Ok(changes)
    }
}

/// Why the apps could not be built or changed.
#[derive(Debug, thiserror::Error)]
pub enum AppsError {
    /// The HTTP client for WeCom could not be built.
    #[error("cannot build the WeCom HTTP client")]
    HttpClient(#[source] ClientError),
    /// An app of one file has the name of an app of another.
    #[error("app `{app}` is already configured in {group}")]
    Taken {
        /// The app's name.
        app: String,
        /// Where it is configured.
        group: String,
    },
    /// Two apps of one file have the same name.
    #[error("app `{app}` is named twice")]
    Duplicate {
        /// The app's name.
        app: String,
    },
    /// The system's random number generator failed.
    #[error("cannot get random bytes from the operating system")]
    Random,
    /// A change would remove the app that serves calls without `x-wecom-app`.
    #[error(
        "app `{app}` is the default app (`default_app`): it cannot be removed while the \
         gateway runs; set another default_app and restart first"
    )]
    DefaultAppRemoved {
        /// The default app.
        app: String,
    },
    /// An app names a suite that is not configured.
    #[error("app `{app}` names suite `{suite}`, which is not configured")]
    UnknownSuite {
        /// The app's name.
        app: String,
        /// The suite it names.
        suite: String,
    },
}

impl AppSpec {
    /// Identifies what the app is built from (corp, credentials, API base): equal
    /// fingerprints, the same app. An HMAC under `key`, not a plain hash: a plain
    /// hash of a secret would let anyone who sees it test guesses of the secret.
    fn fingerprint(&self, key: &ring::hmac::Key) -> [u8; 32] {
        let mut context = ring::hmac::Context::with_key(key);
        let mut field = |bytes: &[u8]| {
            context.update(&(bytes.len() as u64).to_be_bytes());
            context.update(bytes);
        };
        field(self.corp_id.as_bytes());
        field(self.api_base.as_str().as_bytes());
        match &self.credentials {
            AppCredentials::Secret(secret) => {
                field(b"secret");
                field(secret.expose_secret().as_bytes());
            }
            AppCredentials::Suite {
                suite,
                permanent_code,
            } => {
                field(b"suite");
                field(suite.as_bytes());
                field(permanent_code.expose_secret().as_bytes());
            }
        }
        let mut fingerprint = [0; 32];
        fingerprint.copy_from_slice(context.sign().as_ref());
        fingerprint
    }
}

/// A random key for [`AppSpec::fingerprint`], made once per process.
fn fingerprint_key() -> Result<ring::hmac::Key, AppsError> {
    ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
        .map_err(|_| AppsError::Random)
}

impl Factory {
    fn transport(&self, label: &Arc<str>, api_base: &Url) -> Transport {
        Transport::new(
            self.http.clone(),
            api_base,
            &self.settings.http,
            Arc::clone(label),
            self.metrics.clone(),
        )
    }

    /// Shares `source` through the fleet's Redis, if there is a fleet.
    fn shared(
        &self,
        corp_id: &str,
        app: &str,
        source: Arc<dyn TokenSource>,
    ) -> Arc<dyn TokenSource> {
        match &self.fleet {
            Some(fleet) => Arc::new(SharedTokens::new(
                Arc::clone(fleet),
                corp_id,
                app,
                source,
                self.settings.tokens.clone(),
            )),
            None => source,
        }
    }

    /// A suite: its ticket store and its token cache, labelled `suite:NAME` in
    /// metrics and logs (app names cannot contain `:`).
    fn suite(&self, spec: SuiteSpec) -> Suite {
        let label: Arc<str> = Arc::from(format!("suite:{}", spec.name));
        self.metrics
            .add_app(&label, &[Endpoint::GetSuiteToken.path()]);
        let tickets: Arc<dyn TicketStore> = match &self.fleet {
            Some(fleet) => Arc::new(SharedTickets::new(Arc::clone(fleet), &spec.suite_id)),
            None => Arc::new(MemoryTickets::default()),
        };
        let transport = self.transport(&label, &spec.api_base);
        let source = Arc::new(GetSuiteToken::new(
            spec.suite_id.clone(),
            spec.secret,
            Arc::clone(&tickets),
            transport,
        ));
        let source = self.shared(&spec.suite_id, "suite", source);
        let tokens = TokenCache::new(
            Arc::clone(&label),
            source,
            self.settings.tokens.clone(),
            self.settings.retry,
            &self.metrics,
        );
        Suite::new(
            Arc::from(spec.name.as_str()),
            spec.suite_id,
            tickets,
            tokens,
        )
    }

    /// An app whose tokens come from `tokens`.
    fn app(&self, spec: AppSpec, tokens: TokenFrom) -> AppClient {
        let settings = &self.settings;
        let limits = &settings.rate_limits;
        let name: Arc<str> = Arc::from(spec.name.as_str());
        let fetch = match &tokens {
            TokenFrom::Suite(..) => Endpoint::GetCorpToken,
            TokenFrom::Secret(_) => Endpoint::GetToken,
        };
        let mut endpoints = vec![fetch.path()];
        endpoints.extend(Endpoint::LIMITED.map(Endpoint::path));
        self.metrics.add_app(&name, &endpoints);
        let transport = self.transport(&name, &spec.api_base);
        let local = self
            .budgets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .for_corp(&spec.corp_id);
        let (source, suite_name): (Arc<dyn TokenSource>, _) = match tokens {
            TokenFrom::Secret(secret) => (
                Arc::new(GetToken::new(
                    spec.corp_id.clone(),
                    secret,
                    transport.clone(),
                )),
                None,
            ),
            TokenFrom::Suite(suite, permanent_code) => {
                let name = Arc::from(suite.name());
                let source = GetCorpToken::new(
                    spec.corp_id.clone(),
                    permanent_code,
                    suite,
                    transport.clone(),
                );
                (Arc::new(source), Some(name))
            }
        };
        let source = self.shared(&spec.corp_id, &spec.name, source);
        let budget: Arc<dyn RateBudget> = match &self.fleet {
            Some(fleet) => Arc::new(SharedBudget::new(
                Arc::clone(fleet),
                &spec.corp_id,
                limits.per_corp,
                limits.per_gateway,
                local,
            )),
            None => Arc::new(local),
        };
        let tokens = TokenCache::new(
            Arc::clone(&name),
            source,
            settings.tokens.clone(),
            settings.retry,
            &self.metrics,
        );
        AppClient {
            name,
            suite: suite_name,
            transport,
            tokens,
            retry: settings.retry,
            budget,
            max_rate_wait: settings.max_rate_wait,
            line: tokio::sync::Mutex::new(()),
            turns: Semaphore::new(settings.max_requests_per_app),
            max_requests: settings.max_requests_per_app,
            metrics: self.metrics.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings() -> AdapterSettings {
        let second = Duration::from_secs(1);
        AdapterSettings {
            http: HttpSettings {
                connect_timeout: second,
                request_timeout: second,
                max_body_bytes: 1024,
                max_idle_connections: 1,
                idle_timeout: second,
            },
            retry: Retry {
                max_retries: 0,
                backoff: second,
            },
            tokens: TokenPolicy {
                refresh_ahead: second,
                expiry_margin: second,
                credential_cooldown: second,
                failure_backoff: second,
                failure_backoff_max: second,
            },
            rate_limits: RateLimits {
                per_corp: crate::wecom::WindowLimits {
                    per_minute: std::num::NonZeroU32::MIN,
                    per_hour: std::num::NonZeroU32::MIN,
                },
                per_gateway: None,
            },
            max_rate_wait: second,
            max_requests_per_app: 1,
            fleet: None,
        }
    }

    fn corp_app(name: &str) -> AppSpec {
        AppSpec {
            name: name.to_owned(),
            corp_id: format!("corp-{name}"),
            credentials: AppCredentials::Suite {
                suite: "acme".to_owned(),
                permanent_code: SecretString::from(format!("PERMANENT-CODE-{name}")),
            },
            group: "suite acme".to_owned(),
            api_base: "https://qyapi.weixin.qq.com".parse().unwrap(),
        }
    }

    fn suite() -> SuiteSpec {
        SuiteSpec {
            name: "acme".to_owned(),
            suite_id: "ww-suite".to_owned(),
            secret: SecretString::from("SUITE-SECRET".to_owned()),
            api_base: "https://qyapi.weixin.qq.com".parse().unwrap(),
        }
    }

    #[tokio::test]
    async fn a_change_that_drops_the_default_app_is_refused_and_changes_nothing() {
        let apps = Apps::new(
            &settings(),
            [suite()],
            [corp_app("a"), corp_app("b")],
            "a".to_owned(),
            &Metrics::new(),
        )
        .unwrap();
        let error = apps
            .replace_group("suite acme", vec![corp_app("b"), corp_app("c")])
            .unwrap_err();
        assert!(
            matches!(&error, AppsError::DefaultAppRemoved { app } if app == "a"),
            "{error:?}"
        );
        assert!(error.to_string().contains("default_app"), "{error}");
        assert_eq!(apps.names(), ["a", "b"], "the previous set stays");
        // Removing any other app is fine.
        let changes = apps
            .replace_group("suite acme", vec![corp_app("a")])
            .unwrap();
        assert_eq!(changes.removed, ["b"]);
        assert_eq!(apps.names(), ["a"]);
    }

    #[tokio::test]
    async fn debug_output_shows_no_secret_and_no_url_password() {
        let settings = settings();
        let spec = || AppSpec {
            name: "shop".to_owned(),
            corp_id: "ww1".to_owned(),
            credentials: AppCredentials::Secret(SecretString::from("CORP-SECRET".to_owned())),
            group: "config".to_owned(),
            api_base: "https://user:URL-PASSWORD@proxy.example/wecom"
                .parse()
                .unwrap(),
        };
        let shown = format!("{:?}", spec());
        let apps = Apps::new(&settings, [], [spec()], "shop".to_owned(), &Metrics::new()).unwrap();
        let shown = format!("{shown} {apps:?}");
        assert!(shown.contains("user:****@proxy.example"), "{shown}");
        for secret in ["CORP-SECRET", "URL-PASSWORD"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        // Nothing derived from the secret either: the owner shows no fingerprint.
        assert!(
            shown.contains(r#"Owner { group: "config", .. }"#),
            "{shown}"
        );
        assert!(!shown.contains("digest"), "{shown}");
    }
}
