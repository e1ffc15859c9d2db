//! The three 升级服务 calls for one app, and the registry of apps.

use std::{
    collections::BTreeMap,
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use secrecy::SecretString;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use url::Url;

use super::{
    Endpoint, Error, Failed, GetToken, HttpSettings, Retry, TokenCache, TokenPolicy,
    api::{self, CancelBody, EmptyAnswer, UpgradeBody, UpgradeConfigAnswer},
    fleet::{Fleet, FleetSettings, SharedBudget, SharedTokens},
    limit::{LocalBudgets, NoSlot, RateBudget, RateLimits},
    token::TokenSource,
    transport::{Call, Transport},
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
    /// The app's `corpsecret`; only `gettoken` reads it.
    pub secret: SecretString,
    /// Where WeCom is.
    pub api_base: Url,
}

impl fmt::Debug for AppSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSpec")
            .field("name", &self.name)
            .field("corp_id", &self.corp_id)
            .field("secret", &"****")
            .field("api_base", &redacted(&self.api_base).as_str())
            .finish()
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
        let no_token = || Error::NoToken { endpoint };
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

/// The configured apps, by name.
#[derive(Debug)]
pub struct Apps {
    apps: BTreeMap<String, AppClient>,
    default_app: String,
}

impl Apps {
    /// One [`AppClient`] per app, sharing one HTTP connection pool, each with a
    /// `gettoken` token cache whose refresher starts now; all of them recording
    /// into `metrics`.
    pub fn new(
        settings: &AdapterSettings,
        specs: impl IntoIterator<Item = AppSpec>,
        default_app: String,
        metrics: &Metrics,
    ) -> Result<Self, rustls::Error> {
        let http = Transport::client(&settings.http)?;
        let limits = &settings.rate_limits;
        let fleet = settings
            .fleet
            .clone()
            .map(|fleet| Fleet::start(fleet, metrics));
        // With a fleet, the in-process windows are the fallback: this replica's share.
        let mut budgets = LocalBudgets::new(match &settings.fleet {
            Some(fleet) => RateLimits {
                per_corp: limits.per_corp.share(fleet.fallback_share),
                per_gateway: limits.per_gateway.map(|l| l.share(fleet.fallback_share)),
            },
            None => limits.clone(),
        });
        let apps = specs
            .into_iter()
            .map(|spec| {
                let name: Arc<str> = Arc::from(spec.name.as_str());
                let endpoints = Endpoint::ALL.map(Endpoint::path);
                metrics.add_app(&name, &endpoints);
                let transport = Transport::new(
                    http.clone(),
                    &spec.api_base,
                    &settings.http,
                    Arc::clone(&name),
                    metrics.clone(),
                );
                let local = budgets.for_corp(&spec.corp_id);
                let mut source: Arc<dyn TokenSource> = Arc::new(GetToken::new(
                    spec.corp_id.clone(),
                    spec.secret,
                    transport.clone(),
                ));
                let budget: Arc<dyn RateBudget> = match &fleet {
                    Some(fleet) => {
                        source = Arc::new(SharedTokens::new(
                            Arc::clone(fleet),
                            &spec.corp_id,
                            &spec.name,
                            source,
                            settings.tokens.clone(),
                        ));
                        Arc::new(SharedBudget::new(
                            Arc::clone(fleet),
                            &spec.corp_id,
                            limits.per_corp,
                            limits.per_gateway,
                            local,
                        ))
                    }
                    None => Arc::new(local),
                };
                let tokens = TokenCache::new(
                    Arc::clone(&name),
                    source,
                    settings.tokens.clone(),
                    settings.retry,
                    metrics,
                );
                let client = AppClient {
                    name,
                    transport,
                    tokens,
                    retry: settings.retry,
                    budget,
                    max_rate_wait: settings.max_rate_wait,
                    line: tokio::sync::Mutex::new(()),
                    turns: Semaphore::new(settings.max_requests_per_app),
                    max_requests: settings.max_requests_per_app,
                    metrics: metrics.clone(),
                };
                (spec.name, client)
            })
            .collect();
        Ok(Self { apps, default_app })
    }

    /// The name of the app that serves calls without `x-wecom-app`.
    pub fn default_app(&self) -> &str {
        &self.default_app
    }

    /// The app named `name`.
    pub fn get(&self, name: &str) -> Option<&AppClient> {
        self.apps.get(name)
    }

    /// The names of every configured app, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.apps.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn debug_output_shows_no_secret_and_no_url_password() {
        let second = Duration::from_secs(1);
        let settings = AdapterSettings {
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
        };
        let spec = || AppSpec {
            name: "shop".to_owned(),
            corp_id: "ww1".to_owned(),
            secret: SecretString::from("CORP-SECRET".to_owned()),
            api_base: "https://user:URL-PASSWORD@proxy.example/wecom"
                .parse()
                .unwrap(),
        };
        let shown = format!("{:?}", spec());
        let apps = Apps::new(&settings, [spec()], "shop".to_owned(), &Metrics::new()).unwrap();
        let shown = format!("{shown} {apps:?}");
        assert!(shown.contains("user:****@proxy.example"), "{shown}");
        for secret in ["CORP-SECRET", "URL-PASSWORD"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}
