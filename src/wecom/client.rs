//! The three 升级服务 calls for one app, and the registry of apps.

use std::{collections::BTreeMap, fmt, sync::Arc};

use secrecy::SecretString;
use serde::de::DeserializeOwned;
use url::Url;

use super::{
    Endpoint, Error, GetToken, HttpSettings, Retry, TokenCache, TokenPolicy,
    api::{self, CancelBody, EmptyAnswer, UpgradeBody, UpgradeConfigAnswer},
    transport::{Call, Transport},
};
use crate::{
    domain::{Customer, Upgrade, UpgradeConfig},
    telemetry::{Metrics, redacted},
};

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
}

/// One configured WeCom app: its token cache and its calls.
#[derive(Debug)]
pub struct AppClient {
    name: Arc<str>,
    transport: Transport,
    tokens: TokenCache,
    retry: Retry,
}

impl AppClient {
    /// The app's configured name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// 获取配置的专员与客户群.
    pub async fn get_upgrade_config(&self) -> Result<UpgradeConfig, Error> {
        let answer: UpgradeConfigAnswer = self.call(Endpoint::GetUpgradeConfig, None).await?;
        Ok(answer.into())
    }

    /// 为客户升级为专员或客户群服务.
    pub async fn upgrade_service(&self, upgrade: &Upgrade) -> Result<(), Error> {
        let body = api::encode(&UpgradeBody::from(upgrade));
        let _: EmptyAnswer = self.call(Endpoint::UpgradeService, Some(&body)).await?;
        Ok(())
    }

    /// 为客户取消推荐.
    pub async fn cancel_upgrade(&self, customer: &Customer) -> Result<(), Error> {
        let body = api::encode(&CancelBody::from(customer));
        let _: EmptyAnswer = self.call(Endpoint::CancelUpgrade, Some(&body)).await?;
        Ok(())
    }

    /// One business call with WeCom's retry rules: after a token error, one retry
    /// with a fresh token; after a transient error, up to `max_retries` retries with
    /// jittered backoff. The caller bounds the whole loop in time.
    async fn call<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        body: Option<&[u8]>,
    ) -> Result<T, Error> {
        let mut token = self.tokens.get().await?;
        let mut refreshed = false;
        let mut retries = 0;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let query = [("access_token", token.expose())];
            let call = Call {
                endpoint,
                query: &query,
                body,
                attempt,
            };
            let error = match self.transport.request(call).await {
                Ok(answer) => return Ok(answer),
                Err(error) => error,
            };
            if error.is_stale_token() && !refreshed {
                refreshed = true;
                token = self.tokens.replace(&token).await?;
                tracing::debug!(app = %self.name, %endpoint, errcode = error.errcode(), "retrying with a fresh token");
                continue;
            }
            retries += 1;
            if !self.retry.pause_before(retries, &error).await {
                return Err(error);
            }
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
    ) -> Result<Self, reqwest::Error> {
        let http = Transport::client(&settings.http)?;
        let apps = specs
            .into_iter()
            .map(|spec| {
                let name: Arc<str> = Arc::from(spec.name.as_str());
                let endpoints = Endpoint::ALL.map(Endpoint::path);
                metrics.add_app(&name, &endpoints);
                let transport = Transport::new(
                    http.clone(),
                    &spec.api_base,
                    settings.http.max_body_bytes,
                    Arc::clone(&name),
                    metrics.clone(),
                );
                let source = GetToken::new(spec.corp_id, spec.secret, transport.clone());
                let tokens = TokenCache::new(
                    Arc::clone(&name),
                    Arc::new(source),
                    settings.tokens.clone(),
                    settings.retry,
                    metrics,
                );
                let client = AppClient {
                    name,
                    transport,
                    tokens,
                    retry: settings.retry,
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
