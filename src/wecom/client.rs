//! The three 升级服务 calls for one app, and the registry of apps.

use std::{collections::BTreeMap, sync::Arc};

use serde::{Serialize, de::DeserializeOwned};

use super::{
    Endpoint, Error, GetToken, Retry, TokenCache, Transport,
    api::{CancelBody, EmptyAnswer, UpgradeBody, UpgradeConfigAnswer},
    transport::Call,
};
use crate::{
    config::Settings,
    domain::{Customer, Upgrade, UpgradeConfig},
};

/// One configured WeCom app: its token cache and its calls.
#[derive(Debug)]
pub struct AppClient {
    name: String,
    transport: Transport,
    tokens: Arc<TokenCache>,
    retry: Retry,
}

impl AppClient {
    /// A client whose tokens come from `tokens`.
    pub(crate) fn new(
        name: impl Into<String>,
        transport: Transport,
        tokens: Arc<TokenCache>,
        retry: Retry,
    ) -> Self {
        Self {
            name: name.into(),
            transport,
            tokens,
            retry,
        }
    }

    /// The app's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// 获取配置的专员与客户群.
    pub async fn get_upgrade_config(&self) -> Result<UpgradeConfig, Error> {
        let answer: UpgradeConfigAnswer = self.call(Endpoint::GetUpgradeConfig, None).await?;
        Ok(answer.into())
    }

    /// 为客户升级为专员或客户群服务.
    pub async fn upgrade_service(&self, upgrade: &Upgrade) -> Result<(), Error> {
        let body = json(&UpgradeBody::from(upgrade));
        let _: EmptyAnswer = self.call(Endpoint::UpgradeService, Some(&body)).await?;
        Ok(())
    }

    /// 为客户取消推荐.
    pub async fn cancel_upgrade(&self, customer: &Customer) -> Result<(), Error> {
        let body = json(&CancelBody::from(customer));
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
        loop {
            let query = [("access_token", token.expose())];
            let error = match self
                .transport
                .send(Call {
                    endpoint,
                    query: &query,
                    body,
                })
                .await
            {
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
            if self.retry.pause_before(retries, &error).await {
                continue;
            }
            return Err(error);
        }
    }
}

fn json(body: &impl Serialize) -> Vec<u8> {
    // Serializing these borrowed-string structs cannot fail: no maps with non-string
    // keys, no custom Serialize impls. An empty body would be refused by WeCom.
    serde_json::to_vec(body).unwrap_or_default()
}

/// The configured apps, by name.
#[derive(Debug, Clone)]
pub struct Apps {
    apps: BTreeMap<String, Arc<AppClient>>,
    default_app: String,
}

impl Apps {
    /// One [`AppClient`] per configured app, sharing one HTTP connection pool.
    pub fn from_settings(settings: &Settings) -> Result<Self, reqwest::Error> {
        let upstream = &settings.upstream;
        let retry = Retry::from_settings(upstream);
        let http = Transport::client(upstream.connect_timeout(), upstream.request_timeout())?;
        let apps = settings
            .apps
            .iter()
            .map(|(name, app)| {
                let transport =
                    Transport::new(http.clone(), &app.api_base, upstream.max_body_bytes);
                let source =
                    GetToken::new(app.corp_id.clone(), app.secret.clone(), transport.clone());
                let tokens = Arc::new(TokenCache::new(
                    name.clone(),
                    Arc::new(source),
                    settings.token.clone(),
                    retry,
                ));
                let client = AppClient::new(name.clone(), transport, tokens, retry);
                (name.clone(), Arc::new(client))
            })
            .collect();
        Ok(Self {
            apps,
            default_app: settings.default_app.clone(),
        })
    }

    /// The name of the app that serves calls without `x-wecom-app`.
    pub fn default_app(&self) -> &str {
        &self.default_app
    }

    /// The app named `name`, or the default app when `name` is `None`.
    pub fn get(&self, name: Option<&str>) -> Result<&Arc<AppClient>, Error> {
        let name = name.unwrap_or(&self.default_app);
        self.apps.get(name).ok_or_else(|| Error::UnknownApp {
            // Echoed to the caller and the log: bounded, whatever the caller sent.
            requested: name.chars().take(64).collect(),
            configured: self.apps.keys().cloned().collect(),
        })
    }
}
