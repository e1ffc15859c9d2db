//! The callback endpoint of third-party suites: where WeCom verifies the callback
//! URL and pushes each suite's `suite_ticket` and authorisation events.
//!
//! It has a listener of its own (`[callback] listen`, port 9466): WeCom must reach
//! it from the internet, while the gRPC port serves internal callers behind
//! caller authentication, and the admin port exposes metrics. Only this port is
//! published (an Ingress to `/suites/`), and it does nothing but receive
//! WeCom's signed, encrypted messages.
//!
//! - `GET /suites/{suite}/callback?msg_signature&timestamp&nonce&echostr`: the URL
//!   check; the decrypted `echostr` is the answer.
//! - `POST /suites/{suite}/callback?msg_signature&timestamp&nonce` with WeCom's XML
//!   envelope: the `suite_ticket` is stored, other InfoTypes are logged, and the
//!   answer is `success`.
//!
//! A callback is refused with nothing stored when its timestamp is further from
//! the gateway's clock than `max_clock_skew_secs`, when its signature or receiver
//! id is wrong, and when its body is not what WeCom sends. A repeat of a callback
//! already taken (same signature, which covers timestamp, nonce and ciphertext)
//! is answered `success` again and does nothing: WeCom sends a callback again
//! when its first delivery saw no `success` in time, and a replay by anyone else
//! must change nothing.
//!
//! The port faces the internet, so it is served as the gRPC port is: through the
//! hardened accept loop of [`crate::listener`] (a cap on connections, a deadline
//! for a connection's first bytes, backoff when out of file descriptors), then
//! HTTP/1 with a deadline for the headers and another for the body. axum's own
//! `serve` sets no header deadline and no cap.

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::{Body, to_bytes},
    extract::{Path, Query, State, rejection::QueryRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;

use crate::{
    config::{CallbackSettings, SuiteSettings},
    listener::{Incoming, ListenerSettings},
    telemetry::Metrics,
    wecom::{
        Apps,
        suite::{
            Suite, TicketOutcome,
            crypto::{CryptError, MsgCrypt},
            event::{SuiteEvent, fields},
        },
    },
};

/// The endpoint's state: each suite's crypto, and the callbacks seen lately.
#[derive(Debug)]
pub struct Callbacks {
    apps: Apps,
    metrics: Metrics,
    suites: BTreeMap<String, Receiver>,
    settings: CallbackSettings,
    seen: Mutex<Seen>,
}

#[derive(Debug)]
struct Receiver {
    suite: Arc<Suite>,
    /// Its name, as metrics label it.
    label: Arc<str>,
    /// `None` while the EncodingAESKey is check-config's placeholder: every
    /// callback to the suite is refused until the key is supplied.
    crypt: Option<MsgCrypt>,
    /// The receiver ids a URL check may carry: the suite id, and the provider's
    /// corp id when configured.
    url_check_ids: Vec<String>,
}

/// The query WeCom signs.
#[derive(Debug, Deserialize)]
struct Signed {
    msg_signature: String,
    timestamp: String,
    nonce: String,
    echostr: Option<String>,
}

/// Why a callback was refused; the answer says so in a few words, and the log
/// says which suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    UnknownSuite,
    MissingQuery,
    Stale,
    BadSignature,
    WrongReceiver,
    Malformed,
    TooLarge,
    /// The suite's EncodingAESKey is check-config's placeholder.
    NoKey,
}

impl Refusal {
    fn status(self) -> StatusCode {
        match self {
            Refusal::UnknownSuite => StatusCode::NOT_FOUND,
            Refusal::MissingQuery | Refusal::Malformed => StatusCode::BAD_REQUEST,
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::NoKey => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Stale | Refusal::BadSignature | Refusal::WrongReceiver => {
                StatusCode::FORBIDDEN
            }
        }
    }

    /// The outcome metrics count it as.
    const fn outcome(self) -> &'static str {
        match self {
            Refusal::UnknownSuite => "unknown_suite",
            Refusal::MissingQuery => "missing_query",
            Refusal::Stale => "stale",
            Refusal::BadSignature => "bad_signature",
            Refusal::WrongReceiver => "wrong_receiver",
            Refusal::Malformed => "malformed",
            Refusal::TooLarge => "too_large",
            Refusal::NoKey => "no_key",
        }
    }

    const fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownSuite => "unknown suite",
            Refusal::MissingQuery => "msg_signature, timestamp and nonce are required",
            Refusal::Stale => "timestamp too far from the gateway's clock",
            Refusal::BadSignature => "signature does not match",
            Refusal::WrongReceiver => "message is for another receiver",
            Refusal::Malformed => "malformed callback",
            Refusal::TooLarge => "callback too large",
            Refusal::NoKey => "the suite's EncodingAESKey is not configured",
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status(), self.as_str()).into_response()
    }
}

impl From<CryptError> for Refusal {
    fn from(error: CryptError) -> Self {
        match error {
            CryptError::SignatureMismatch => Refusal::BadSignature,
            CryptError::InvalidAesKey | CryptError::NotBase64 | CryptError::Malformed => {
                Refusal::Malformed
            }
        }
    }
}

impl Callbacks {
    /// The endpoint of `suites` (running in `apps`), as configured.
    pub fn new(
        apps: Apps,
        suites: &BTreeMap<String, SuiteSettings>,
        settings: CallbackSettings,
        metrics: &Metrics,
    ) -> Self {
        let receivers = suites
            .iter()
            .filter_map(|(name, settings)| {
                let suite = Arc::clone(apps.suite(name)?);
                // Any other unusable key was refused when the configuration loaded.
                let crypt = MsgCrypt::new(
                    settings.callback_token.clone(),
                    secrecy::ExposeSecret::expose_secret(&settings.encoding_aes_key),
                )
                .ok();
                if crypt.is_none() {
                    tracing::warn!(
                        suite = %name,
                        "the suite's encoding_aes_key is check-config's placeholder \"****\": \
                         its callbacks are refused until the EncodingAESKey is supplied by \
                         encoding_aes_key_file or encoding_aes_key_env"
                    );
                }
                let mut url_check_ids = vec![settings.suite_id.clone()];
                url_check_ids.extend(settings.provider_corp_id.clone());
                Some((
                    name.clone(),
                    Receiver {
                        label: Arc::from(suite.name()),
                        suite,
                        crypt,
                        url_check_ids,
                    },
                ))
            })
            .collect();
        Self {
            apps,
            metrics: metrics.clone(),
            suites: receivers,
            seen: Mutex::new(Seen::new(settings.max_remembered)),
            settings,
        }
    }

    /// The routes, for the callback listener.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/suites/{suite}/callback", get(verify_url).post(receive))
            .with_state(self)
    }

    /// Serves the endpoint on `listener` until `stop` completes; then the listener
    /// closes and open connections finish their callback (the caller bounds how
    /// long that may take).
    pub(crate) async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        stop: impl Future<Output = ()>,
    ) {
        let settings = &self.settings;
        let mut incoming = Incoming::new(
            listener,
            ListenerSettings {
                section: "callback",
                max_connections: settings.max_connections,
                handshake_timeout: settings.handshake_timeout,
            },
        );
        // WeCom posts over HTTP/1.1 (through the Ingress that ends its TLS).
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(settings.request_read_timeout);
        let service = TowerToHyperService::new(Arc::clone(&self).router());
        let open = GracefulShutdown::new();
        tokio::pin!(stop);
        loop {
            let connection = tokio::select! {
                Some(Ok(connection)) = incoming.next() => connection,
                () = &mut stop => break,
            };
            let served =
                open.watch(http.serve_connection(TokioIo::new(connection), service.clone()));
            tokio::spawn(async move {
                // A peer that hangs up or misses a deadline: nothing to act on.
                if let Err(error) = served.await {
                    tracing::debug!(%error, "callback connection closed");
                }
            });
        }
        drop(incoming);
        open.shutdown().await;
    }

    /// Finds the suite and checks the timestamp and the signature; returns what
    /// it decrypts to, and whether it is new (else a repeat of one already taken).
    fn open(
        &self,
        suite: &str,
        query: Result<Query<Signed>, QueryRejection>,
        encrypted: &str,
        receivers: impl Fn(&Receiver) -> Vec<&str>,
    ) -> Result<Opened<'_>, Refusal> {
        let receiver = self.suites.get(suite).ok_or(Refusal::UnknownSuite)?;
        let crypt = receiver.crypt.as_ref().ok_or(Refusal::NoKey)?;
        let Query(signed) = query.map_err(|_| Refusal::MissingQuery)?;
        let timestamp: i64 = signed
            .timestamp
            .parse()
            .map_err(|_| Refusal::MissingQuery)?;
        let skew = i64::try_from(self.settings.max_clock_skew.as_secs()).unwrap_or(i64::MAX);
        if now().abs_diff(timestamp) > skew.unsigned_abs() {
            return Err(Refusal::Stale);
        }
        let opened = crypt.open(
            &signed.msg_signature,
            &signed.timestamp,
            &signed.nonce,
            encrypted,
        )?;
        if !receivers(receiver).contains(&opened.receive_id.as_str()) {
            return Err(Refusal::WrongReceiver);
        }
        // The signature covers the timestamp, the nonce and the ciphertext, and is
        // hex, checked whatever its case.
        let key = signed.msg_signature.to_ascii_lowercase();
        let first = self.seen().first_time(key.clone(), timestamp, now() - skew);
        Ok(Opened {
            receiver,
            message: opened.message,
            key,
            first,
        })
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A callback that passed the checks.
struct Opened<'a> {
    receiver: &'a Receiver,
    message: Vec<u8>,
    /// What it is remembered by.
    key: String,
    /// Not seen before: else a repeat of a callback already taken.
    first: bool,
}

/// Unix seconds now.
fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The signatures (lower-cased) of callbacks taken within the clock skew window:
/// a repeat of one does nothing.
#[derive(Debug)]
struct Seen {
    keys: HashSet<String>,
    /// Oldest first, with their timestamps, to forget them once out of the window.
    order: VecDeque<(i64, String)>,
    capacity: usize,
}

impl Seen {
    fn new(capacity: usize) -> Self {
        Self {
            keys: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Remembers `key`; false if it was seen already. Callbacks older than
    /// `oldest` are forgotten: their timestamps are refused anyway.
    fn first_time(&mut self, key: String, timestamp: i64, oldest: i64) -> bool {
        while let Some((at, _)) = self.order.front()
            && (*at < oldest || self.order.len() >= self.capacity)
        {
            if let Some((_, old)) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
        if !self.keys.insert(key.clone()) {
            return false;
        }
        self.order.push_back((timestamp, key));
        true
    }

    /// Forgets a callback that was not taken after all (its contents were not
    /// WeCom's), so that a repeat of it is judged again rather than acknowledged.
    fn forget(&mut self, key: &str) {
        self.keys.remove(key);
    }
}

/// WeCom's check of the callback URL: answer the decrypted `echostr`.
async fn verify_url(
    State(callbacks): State<Arc<Callbacks>>,
    Path(suite): Path<String>,
    query: Result<Query<Signed>, QueryRejection>,
) -> Response {
    let echostr = query
        .as_ref()
        .ok()
        .and_then(|Query(signed)| signed.echostr.clone())
        .unwrap_or_default();
    let opened = callbacks.open(&suite, query, &echostr, |r| {
        r.url_check_ids.iter().map(String::as_str).collect()
    });
    match opened {
        // A repeated URL check is answered again: it changes nothing.
        Ok(Opened {
            receiver,
            message: echo,
            ..
        }) => {
            callbacks.counted(receiver, "url_verified");
            let suite = receiver.suite.name();
            tracing::info!(suite, "callback URL verified by WeCom");
            (StatusCode::OK, echo).into_response()
        }
        Err(refusal) => callbacks.refused(&suite, "URL check", refusal),
    }
}

/// A callback: the suite ticket is stored, other events logged; `success`.
async fn receive(
    State(callbacks): State<Arc<Callbacks>>,
    Path(suite): Path<String>,
    query: Result<Query<Signed>, QueryRejection>,
    body: Body,
) -> Response {
    let limit = callbacks.settings.max_body_bytes;
    let read_timeout = callbacks.settings.request_read_timeout;
    let body = match tokio::time::timeout(read_timeout, to_bytes(body, limit)).await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => return callbacks.refused(&suite, "callback", Refusal::TooLarge),
        Err(_) => return callbacks.refused(&suite, "callback", Refusal::Malformed),
    };
    let encrypted = std::str::from_utf8(&body)
        .ok()
        .and_then(|xml| fields(xml).ok())
        .and_then(|mut fields| fields.remove("Encrypt"))
        .filter(|encrypted| !encrypted.is_empty());
    let Some(encrypted) = encrypted else {
        return callbacks.refused(&suite, "callback", Refusal::Malformed);
    };
    let opened = callbacks.open(&suite, query, &encrypted, |r| vec![r.suite.suite_id()]);
    let opened = match opened {
        Ok(opened) => opened,
        Err(refusal) => return callbacks.refused(&suite, "callback", refusal),
    };
    let receiver = opened.receiver;
    if !opened.first {
        callbacks.counted(receiver, "replayed");
        tracing::info!(
            suite = receiver.suite.name(),
            "callback already taken: acknowledged again, nothing done"
        );
        return (StatusCode::OK, "success").into_response();
    }
    let event = std::str::from_utf8(&opened.message)
        .ok()
        .and_then(|xml| SuiteEvent::parse(xml, receiver.suite.suite_id()).ok());
    let Some(event) = event else {
        callbacks.seen().forget(&opened.key);
        return callbacks.refused(&suite, "callback", Refusal::Malformed);
    };
    callbacks.take(receiver, event).await;
    (StatusCode::OK, "success").into_response()
}

impl Callbacks {
    /// Acts on an event that passed every check: a ticket is kept if it is the
    /// newest; authorisation events are logged for the operator.
    async fn take(&self, receiver: &Receiver, event: SuiteEvent) {
        let suite = receiver.suite.name();
        match event {
            SuiteEvent::Ticket { ticket, issued_at } => {
                let outcome = self
                    .apps
                    .suite_ticket(&receiver.suite, ticket, issued_at)
                    .await;
                if outcome == TicketOutcome::Stored {
                    self.counted(receiver, "ticket_stored");
                    tracing::info!(suite, issued_at, "suite_ticket received");
                } else {
                    self.counted(receiver, "ticket_older");
                    tracing::info!(
                        suite,
                        issued_at,
                        "suite_ticket older than the one held: ignored"
                    );
                }
            }
            SuiteEvent::Authorisation { info_type, corp_id } => {
                self.counted(receiver, "event");
                tracing::warn!(
                    suite,
                    info_type,
                    corp_id,
                    "authorisation changed at WeCom: update the suite's corps file \
                     (auth_corpid and permanent_code) to match"
                );
            }
            SuiteEvent::Other { info_type } => {
                self.counted(receiver, "event");
                tracing::info!(suite, info_type, "callback acknowledged");
            }
        }
    }

    fn counted(&self, receiver: &Receiver, outcome: &'static str) {
        self.metrics.suite_callback(&receiver.label, outcome);
    }

    /// Logs and counts a refused callback, and answers it.
    fn refused(&self, suite: &str, what: &'static str, refusal: Refusal) -> Response {
        let label = match self.suites.get(suite) {
            Some(receiver) => Arc::clone(&receiver.label),
            None => Arc::from("unknown"),
        };
        self.metrics.suite_callback(&label, refusal.outcome());
        let suite: String = suite.chars().take(64).collect();
        let reason = refusal.as_str();
        tracing::warn!(suite, what, reason, "callback refused; nothing stored");
        refusal.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> String {
        n.to_owned()
    }

    #[test]
    fn a_callback_is_accepted_once_and_forgotten_out_of_the_window() {
        let mut seen = Seen::new(10);
        assert!(seen.first_time(key("a"), 100, 0));
        assert!(!seen.first_time(key("a"), 100, 0));
        assert!(seen.first_time(key("b"), 200, 0));
        // "a" falls out of the window: forgotten (its timestamp is refused anyway).
        assert!(seen.first_time(key("c"), 300, 150));
        assert!(!seen.keys.contains(&key("a")));
        assert!(!seen.first_time(key("b"), 200, 150));
    }

    #[test]
    fn a_callback_forgotten_is_new_again() {
        let mut seen = Seen::new(10);
        assert!(seen.first_time(key("a"), 100, 0));
        seen.forget("a");
        assert!(seen.first_time(key("a"), 100, 0));
    }

    #[test]
    fn memory_stays_bounded() {
        let mut seen = Seen::new(3);
        for i in 0..100 {
            assert!(seen.first_time(key(&i.to_string()), 1000, 0));
        }
        assert!(seen.keys.len() <= 3 && seen.order.len() <= 3);
    }
}
