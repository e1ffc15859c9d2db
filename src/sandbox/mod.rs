//! The WeCom sandbox: an HTTP server that behaves like WeCom's `gettoken` and the
//! three 升级服务 calls, as WeCom's document describes them, plus control routes
//! for tests and demos.
//!
//! WeCom routes (`/cgi-bin/...`):
//! - `gettoken` checks corpid and secret (40013, 40001) and issues tokens that expire
//!   after the configured TTL; while a token is valid, `gettoken` returns it again.
//! - the business calls answer 41001 without a token, 40014 for an unknown token,
//!   42001 for an expired one; `upgrade_service` answers 95021 when the userid or
//!   chat_id is not configured, and keeps one recommendation per customer, which
//!   `cancel_upgrade_service` clears.
//!
//! Control routes (`/sandbox/...`): `GET state` (recommendations, gettoken count,
//! requests still being answered),
//! `GET requests` (every WeCom request received, secrets redacted), `POST faults`
//! and `DELETE faults` (scripted answers), `POST expire-tokens`, `POST revoke-tokens`.

mod handlers;
mod provider;

pub use provider::{
    DEMO_CALLBACK_TOKEN, DEMO_CORPS, DEMO_ENCODING_AES_KEY, DEMO_SUITE_ID, DEMO_SUITE_SECRET,
    SandboxProvider,
};

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpListener;

/// Corp id of the sandbox's demo app.
pub const DEMO_CORP_ID: &str = "wwsandbox0000000001";
/// Secret of the sandbox's demo app. Not a secret: it only opens the sandbox.
pub const DEMO_SECRET: &str = "sandbox-secret";

/// What the sandbox knows: credentials, token lifetime, and the 升级服务 configuration.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The corp id `gettoken` accepts.
    pub corp_id: String,
    /// The secret `gettoken` accepts.
    pub secret: String,
    /// How long issued tokens live (WeCom: 7200 s).
    pub token_ttl: Duration,
    /// Configured service members (专员).
    pub member_userids: Vec<String>,
    /// Configured departments of service members.
    pub member_department_ids: Vec<u32>,
    /// Configured customer group chats.
    pub group_chat_ids: Vec<String>,
    /// The 服务商 side: a suite, its authorised corps, and its ticket pushes.
    pub provider: SandboxProvider,
}

impl Default for SandboxConfig {
    /// The demo app, with the configuration of WeCom's sample answer.
    fn default() -> Self {
        Self {
            corp_id: DEMO_CORP_ID.to_owned(),
            secret: DEMO_SECRET.to_owned(),
            token_ttl: Duration::from_secs(7200),
            member_userids: vec!["zhangsan".to_owned(), "lisi".to_owned()],
            member_department_ids: vec![2, 3],
            group_chat_ids: vec![
                "wraaaaaaaaaaaaaaaa".to_owned(),
                "wrbbbbbbbbbbbbbbb".to_owned(),
            ],
            provider: SandboxProvider::default(),
        }
    }
}

/// A scripted answer: the next `times` requests to `path` get it instead of the
/// normal one. Any part may be left out: a fault with only `delay_ms` slows the
/// normal answer down; one with `errcode` answers `{"errcode":…,"errmsg":…}`; one
/// with `body` answers those exact bytes (an HTML error page, truncated JSON…).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// The WeCom path, e.g. `/cgi-bin/kf/customer/upgrade_service`.
    pub path: String,
    /// Answer this errcode.
    #[serde(default)]
    pub errcode: Option<i64>,
    /// With `errcode`: the errmsg (default: `sandbox fault`).
    #[serde(default)]
    pub errmsg: Option<String>,
    /// Answer with this HTTP status (default 200).
    #[serde(default)]
    pub http_status: Option<u16>,
    /// Answer exactly this body.
    #[serde(default)]
    pub body: Option<String>,
    /// Wait this long before answering.
    #[serde(default)]
    pub delay_ms: u64,
    /// How many requests it applies to (default 1).
    #[serde(default = "one")]
    pub times: u32,
}

fn one() -> u32 {
    1
}

/// A request WeCom would have received, as recorded by the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordedRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// Whether an `access_token` query parameter was present (its value is not kept).
    pub had_access_token: bool,
    /// The JSON body, or the raw text when it was not JSON; `null` for a GET.
    /// Secrets (a suite secret, a ticket, a permanent code) are left out.
    pub body: Value,
    /// The corp the request's `access_token` was issued to, if it is a valid one.
    #[serde(default)]
    pub corp_id: Option<String>,
}

/// The sandbox's state, shared by its HTTP handlers and by tests in-process.
#[derive(Debug)]
pub struct Sandbox {
    config: SandboxConfig,
    state: Mutex<State>,
    /// WeCom requests received and not answered yet (a scripted delay may hold one):
    /// while it is above zero, the recommendations may still change.
    in_flight: AtomicUsize,
    /// Pushes suite tickets to the gateway.
    pusher: provider::Pusher,
}

/// An access token the sandbox issued.
#[derive(Debug, Clone)]
struct Issued {
    corp_id: String,
    expiry: Instant,
}

#[derive(Debug, Default)]
struct State {
    /// Issued access tokens: to which corp, and when they expire.
    tokens: HashMap<String, Issued>,
    /// The provider side's tickets and suite tokens.
    provider: provider::ProviderState,
    /// The current recommendation per (open_kfid, external_userid): the request body.
    recommendations: BTreeMap<(String, String), Value>,
    faults: VecDeque<Fault>,
    requests: VecDeque<RecordedRequest>,
    gettoken_calls: u64,
}

/// Keeps at most this many recorded requests, so a long-running sandbox stays small.
const MAX_RECORDED_REQUESTS: usize = 10_000;

impl Sandbox {
    /// A sandbox with `config` and no tokens, recommendations or faults.
    pub fn new(config: SandboxConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            state: Mutex::new(State::default()),
            in_flight: AtomicUsize::new(0),
            pusher: provider::pusher(),
        })
    }

    /// The configuration it serves.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Handlers never panic while holding the lock; recover the data if one ever did.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Scripts a fault.
    pub fn push_fault(&self, fault: Fault) {
        self.state().faults.push_back(fault);
    }

    /// Removes all scripted faults.
    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// Every WeCom request received so far (the newest 10,000).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.iter().cloned().collect()
    }

    /// The requests received for one path.
    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// How many `gettoken` calls were received.
    pub fn gettoken_calls(&self) -> u64 {
        self.state().gettoken_calls
    }

    /// How many WeCom requests are being answered right now. A test that reads the
    /// recommendations after its calls ended waits for zero: a request the gateway
    /// gave up on may still be applied.
    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// The current recommendation for a customer: the `upgrade_service` body that set it.
    pub fn recommendation(&self, open_kfid: &str, external_userid: &str) -> Option<Value> {
        let key = (open_kfid.to_owned(), external_userid.to_owned());
        self.state().recommendations.get(&key).cloned()
    }

    /// Makes every issued token expired, as if their TTL had passed.
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        let mut state = self.state();
        for issued in state.tokens.values_mut() {
            issued.expiry = now;
        }
        for expiry in state.provider.suite_tokens.values_mut() {
            *expiry = now;
        }
    }

    /// Forgets every issued token, so that using one answers 40014, as after a
    /// secret reset in the admin console.
    pub fn revoke_tokens(&self) {
        let mut state = self.state();
        state.tokens.clear();
        state.provider.suite_tokens.clear();
    }

    /// Serves the sandbox on `listener` until `shutdown` completes.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        use axum::serve::ListenerExt;
        // Like WeCom's front ends: answers go out at once, not after a delayed ACK.
        let listener = listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(listener, handlers::router(self))
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Binds `addr` and serves in a background task; the handle stops it.
    pub async fn spawn(self: &Arc<Self>, addr: SocketAddr) -> std::io::Result<SandboxHandle> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let sandbox = Arc::clone(self);
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(error) = sandbox.serve(listener, shutdown).await {
                tracing::error!(%error, "sandbox server failed");
            }
        });
        Ok(SandboxHandle {
            addr,
            stop: Some(stop),
        })
    }
}

/// A running sandbox. Dropping it stops the server.
#[derive(Debug)]
pub struct SandboxHandle {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl SandboxHandle {
    /// Its base URL, to use as `WECOM_API_BASE`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The server may be gone already; then there is nothing to stop.
            let _ = stop.send(());
        }
    }
}
