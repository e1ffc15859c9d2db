//! The sandbox as a 服务商's WeCom: it pushes encrypted `suite_ticket` callbacks
//! to the gateway's callback endpoint (at once, then on a schedule), answers
//! `get_suite_token` (refusing stale tickets with 40085) and `get_corp_token`
//! for its authorised corps, in WeCom's own words.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json,
    body::Bytes,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::task::AbortHandle;

use super::{
    Sandbox,
    handlers::{Refused, json_body, random_token},
};
use crate::wecom::suite::crypto::MsgCrypt;

/// 获取第三方应用凭证.
pub(super) const GET_SUITE_TOKEN: &str = "/cgi-bin/service/get_suite_token";
/// 获取企业凭证.
pub(super) const GET_CORP_TOKEN: &str = "/cgi-bin/service/get_corp_token";

/// The demo suite's id.
pub const DEMO_SUITE_ID: &str = "wwsandboxsuite00001";
/// The demo suite's secret. Not a secret: it only opens the sandbox.
pub const DEMO_SUITE_SECRET: &str = "sandbox-suite-secret";
/// The demo suite's callback Token.
pub const DEMO_CALLBACK_TOKEN: &str = "sandboxToken";
/// The demo suite's EncodingAESKey (43 characters).
pub const DEMO_ENCODING_AES_KEY: &str = "c2FuZGJveC1lbmNvZGluZy1hZXMta2V5LWZvci1kZW0";
/// The demo suite's authorised corps: (app name, corp id, permanent code).
pub const DEMO_CORPS: [(&str, &str, &str); 2] = [
    (
        "demo-corp-a",
        "wwsandboxcorp000001",
        "sandbox-permanent-code-a",
    ),
    (
        "demo-corp-b",
        "wwsandboxcorp000002",
        "sandbox-permanent-code-b",
    ),
];

/// The sandbox's suite and the corps that authorised it.
#[derive(Debug, Clone)]
pub struct SandboxProvider {
    /// `suite_id`.
    pub suite_id: String,
    /// `suite_secret`.
    pub suite_secret: String,
    /// The callback Token.
    pub callback_token: String,
    /// The callback EncodingAESKey.
    pub encoding_aes_key: String,
    /// Authorised corps: (corp id, permanent code).
    pub corps: Vec<(String, String)>,
    /// How often a new ticket is pushed (WeCom: ten minutes).
    pub ticket_interval: Duration,
    /// How long a ticket is accepted (WeCom: thirty minutes).
    pub ticket_ttl: Duration,
}

impl Default for SandboxProvider {
    fn default() -> Self {
        Self {
            suite_id: DEMO_SUITE_ID.to_owned(),
            suite_secret: DEMO_SUITE_SECRET.to_owned(),
            callback_token: DEMO_CALLBACK_TOKEN.to_owned(),
            encoding_aes_key: DEMO_ENCODING_AES_KEY.to_owned(),
            corps: DEMO_CORPS
                .iter()
                .map(|(_, corp, code)| ((*corp).to_owned(), (*code).to_owned()))
                .collect(),
            ticket_interval: Duration::from_secs(600),
            ticket_ttl: Duration::from_secs(1800),
        }
    }
}

/// Tickets pushed and suite tokens issued.
#[derive(Debug, Default)]
pub(super) struct ProviderState {
    /// Pushed tickets, newest last, and when each stops being accepted.
    tickets: Vec<(String, Instant)>,
    /// Issued suite tokens and when they expire.
    pub(super) suite_tokens: HashMap<String, Instant>,
    /// Where tickets are pushed, once the gateway said.
    callback_url: Option<String>,
}

/// Tickets kept; older ones are refused anyway.
const MAX_TICKETS: usize = 8;

/// What the sandbox records of a provider call's body: never a secret, ticket
/// or permanent code.
pub(super) fn shown_body(path: &str, body: &Bytes) -> Option<Value> {
    let field = match path {
        GET_SUITE_TOKEN => "suite_id",
        GET_CORP_TOKEN => "auth_corpid",
        _ => return None,
    };
    let value = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|body| body.get(field).cloned())
        .unwrap_or(Value::Null);
    Some(json!({ field: value }))
}

/// The HTTP client that pushes tickets: plain HTTP, one connection pool for
/// every push.
pub(super) type Pusher = Client<HttpConnector, Full<Bytes>>;

pub(super) fn pusher() -> Pusher {
    Client::builder(TokioExecutor::new()).build_http()
}

impl Sandbox {
    fn crypt(&self) -> Option<MsgCrypt> {
        let provider = &self.config.provider;
        MsgCrypt::new(
            SecretString::from(provider.callback_token.clone()),
            &provider.encoding_aes_key,
        )
        .ok()
    }

    /// Pushes a new `suite_ticket` to the callback URL, encrypted and signed as
    /// WeCom does; Ok once the gateway answered `success`.
    pub async fn push_ticket(&self) -> Result<(), String> {
        let url = self
            .state()
            .provider
            .callback_url
            .clone()
            .ok_or("no callback URL yet")?;
        let crypt = self
            .crypt()
            .ok_or("the sandbox's EncodingAESKey is unusable")?;
        let provider = &self.config.provider;
        let ticket = random_token();
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string();
        let xml = format!(
            "<xml><SuiteId><![CDATA[{}]]></SuiteId><InfoType><![CDATA[suite_ticket]]></InfoType>\
             <TimeStamp>{timestamp}</TimeStamp><SuiteTicket><![CDATA[{ticket}]]></SuiteTicket></xml>",
            provider.suite_id
        );
        let random: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
        let encrypted = crypt.encrypt(xml.as_bytes(), &provider.suite_id, random);
        let nonce = fastrand::u64(..).to_string();
        let signature = crypt.signature(&timestamp, &nonce, &encrypted);
        let envelope = format!(
            "<xml><ToUserName><![CDATA[{}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt>\
             <AgentID><![CDATA[]]></AgentID></xml>",
            provider.suite_id
        );
        {
            let mut state = self.state();
            let tickets = &mut state.provider.tickets;
            tickets.push((ticket, Instant::now() + provider.ticket_ttl));
            if tickets.len() > MAX_TICKETS {
                tickets.remove(0);
            }
        }
        let mut url = format!("{url}?");
        let start = url.len();
        url::form_urlencoded::Serializer::for_suffix(&mut url, start)
            .extend_pairs([
                ("msg_signature", signature.as_str()),
                ("timestamp", timestamp.as_str()),
                ("nonce", nonce.as_str()),
            ])
            .finish();
        let request = http::Request::post(url)
            .body(Full::new(Bytes::from(envelope)))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let answer = self
                .pusher
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = answer.status();
            let body = answer
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((status, body.to_bytes()))
        };
        let (status, body) = tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .map_err(|_| "the callback did not answer within 5 s".to_owned())??;
        if status.is_success() && &body[..] == b"success" {
            Ok(())
        } else {
            let body = String::from_utf8_lossy(&body);
            Err(format!("the callback answered HTTP {status}: {body}"))
        }
    }

    /// Where [`Sandbox::push_ticket`] pushes tickets.
    pub fn push_to(&self, callback_url: String) {
        self.state().provider.callback_url = Some(callback_url);
    }

    /// Pushes a ticket to `callback_url` now (retrying each second until the
    /// gateway takes it), then every `ticket_interval`, until the handle is aborted.
    pub fn start_pushing(self: &Arc<Self>, callback_url: String) -> AbortHandle {
        self.push_to(callback_url);
        let sandbox = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                match sandbox.push_ticket().await {
                    Ok(()) => {
                        tracing::debug!("sandbox pushed a suite_ticket");
                        tokio::time::sleep(sandbox.config.provider.ticket_interval).await;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "sandbox could not push a suite_ticket; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        })
        .abort_handle()
    }

    /// Makes every pushed ticket stale, as if thirty minutes had passed.
    pub fn expire_tickets(&self) {
        let now = Instant::now();
        for (_, until) in &mut self.state().provider.tickets {
            *until = now;
        }
    }

    fn issue_suite_token(&self, body: &Value) -> Result<Value, Refused> {
        let provider = &self.config.provider;
        let text = |key| body.get(key).and_then(Value::as_str).unwrap_or_default();
        if text("suite_id") != provider.suite_id {
            return Err(Refused(40083, "invalid suite_id"));
        }
        if text("suite_secret") != provider.suite_secret {
            return Err(Refused(40080, "invalid suite_secret"));
        }
        let now = Instant::now();
        let mut state = self.state();
        let fresh = state
            .provider
            .tickets
            .iter()
            .any(|(ticket, until)| ticket == text("suite_ticket") && now < *until);
        if !fresh {
            return Err(Refused(40085, "invalid suite_ticket"));
        }
        let token = random_token();
        state
            .provider
            .suite_tokens
            .retain(|_, expiry| now.saturating_duration_since(*expiry) < Duration::from_secs(3600));
        state
            .provider
            .suite_tokens
            .insert(token.clone(), now + self.config.token_ttl);
        // Like WeCom's provider APIs: no errcode on success.
        Ok(json!({
            "suite_access_token": token,
            "expires_in": self.config.token_ttl.as_secs().max(1),
        }))
    }

    fn issue_corp_token(
        &self,
        suite_token: Option<&String>,
        body: &Value,
    ) -> Result<Value, Refused> {
        let Some(suite_token) = suite_token.filter(|t| !t.is_empty()) else {
            return Err(Refused(41001, "suite_access_token missing"));
        };
        match self.state().provider.suite_tokens.get(suite_token) {
            None => return Err(Refused(40082, "invalid suite_access_token")),
            Some(expiry) if Instant::now() >= *expiry => {
                return Err(Refused(42009, "suite_access_token expired"));
            }
            Some(_) => {}
        }
        let text = |key| body.get(key).and_then(Value::as_str).unwrap_or_default();
        let corp_id = text("auth_corpid");
        let authorised = self
            .config
            .provider
            .corps
            .iter()
            .any(|(corp, code)| corp == corp_id && code == text("permanent_code"));
        if !authorised {
            return Err(Refused(40084, "invalid permanent_code"));
        }
        let (token, expires_in) = self.access_token_for(corp_id);
        Ok(json!({ "access_token": token, "expires_in": expires_in }))
    }
}

// === WeCom routes ===

pub(super) async fn get_suite_token(State(sandbox): State<Arc<Sandbox>>, body: Bytes) -> Response {
    match json_body(&body).and_then(|body| sandbox.issue_suite_token(&body)) {
        Ok(answer) => Json(answer).into_response(),
        Err(refused) => refused.into_response(),
    }
}

pub(super) async fn get_corp_token(
    State(sandbox): State<Arc<Sandbox>>,
    Query(params): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let answer = json_body(&body)
        .and_then(|body| sandbox.issue_corp_token(params.get("suite_access_token"), &body));
    match answer {
        Ok(answer) => Json(answer).into_response(),
        Err(refused) => refused.into_response(),
    }
}

// === control routes ===

pub(super) async fn push_ticket(State(sandbox): State<Arc<Sandbox>>) -> Response {
    match sandbox.push_ticket().await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => (StatusCode::BAD_GATEWAY, error).into_response(),
    }
}

pub(super) async fn expire_tickets(State(sandbox): State<Arc<Sandbox>>) -> StatusCode {
    sandbox.expire_tickets();
    StatusCode::NO_CONTENT
}
