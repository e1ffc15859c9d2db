//! What can go wrong with a call at the edge, and who is at fault.

use std::time::Duration;

use tonic::Status;

use super::status;
use crate::{auth::AuthError, domain::FieldViolation, wecom};

/// Why a call failed: the edge's own refusals, or the adapter's error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The caller did not prove who it is (caller authentication is on).
    #[error("unauthenticated")]
    Unauthenticated(#[from] AuthError),
    /// The caller may not use the app it asked for (or the default app).
    #[error("caller `{caller}` may not use app `{app}`")]
    AppNotAllowed {
        /// The caller's name.
        caller: String,
        /// The app.
        app: String,
        /// The apps it may use.
        allowed: Vec<String>,
    },
    /// `x-wecom-app` names no configured app.
    #[error("x-wecom-app `{requested}` is not a configured app")]
    UnknownApp {
        /// What the caller sent, bounded.
        requested: String,
        /// The apps this caller may use, which it could have named.
        configured: Vec<String>,
    },
    /// Metadata the gateway reads is unreadable or repeated.
    #[error("metadata {key} {problem}")]
    InvalidMetadata {
        /// The metadata key.
        key: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The request could not be read as the message it should be (HTTP/JSON).
    #[error("the request is not a valid message: {0}")]
    MalformedRequest(String),
    /// A POST whose `Content-Type` is not JSON (HTTP/JSON). Refusing it keeps a web
    /// page's form or `text/plain` request, which browsers send cross-origin without
    /// asking, from upgrading anyone.
    #[error("content type {0:?} is not application/json")]
    UnsupportedContentType(String),
    /// The request body is over `server.max_decode_message_bytes` (HTTP/JSON).
    #[error("the request body is over {limit} bytes")]
    RequestTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// Fields of the request are missing or malformed; nothing was sent to WeCom.
    #[error("invalid request: {}", summary(.0))]
    InvalidRequest(Vec<FieldViolation>),
    /// The request's body did not arrive within `server.request_read_timeout_ms`
    /// (HTTP/JSON); nothing was sent to WeCom.
    #[error("the request body did not arrive within {} ms", .timeout.as_millis())]
    RequestReadTimeout {
        /// The configured timeout.
        timeout: Duration,
    },
    /// The caller's deadline (less the gateway's headroom) passed first.
    #[error("the caller's deadline passed after {} ms of waiting for WeCom", .waited.as_millis())]
    DeadlineExceeded {
        /// How long the gateway waited for WeCom.
        waited: Duration,
        /// A request may have been on its way to WeCom; if not, nothing happened.
        sent: bool,
    },
    /// WeCom took longer than `upstream.call_timeout_ms`, retries included.
    #[error("WeCom did not answer within the gateway's call timeout of {} ms", .timeout.as_millis())]
    CallTimeout {
        /// The configured timeout.
        timeout: Duration,
    },
    /// More calls are in flight than `server.max_calls_in_flight`; refused at once.
    #[error("{limit} calls are already in flight (server.max_calls_in_flight)")]
    Overloaded {
        /// The configured limit.
        limit: usize,
    },
    /// The gateway's shutdown grace ran out before WeCom answered.
    #[error("the gateway shut down before WeCom answered")]
    ShuttingDown,
    /// The adapter failed.
    #[error(transparent)]
    WeCom(#[from] wecom::Failed),
}

/// `field problem; field problem`.
pub(crate) fn summary(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{} {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl CallError {
    /// WeCom's errcode, when WeCom answered with one.
    pub(crate) fn errcode(&self) -> Option<i64> {
        match self {
            CallError::WeCom(failed) => failed.error.errcode(),
            _ => None,
        }
    }

    /// The operation may have taken effect at WeCom although the call failed: the
    /// caller's deadline, the call timeout or the shutdown cut it short, or an
    /// attempt of an upgrade or a cancel ended without an answer that says no.
    pub(crate) fn may_have_taken_effect(&self) -> bool {
        match self {
            // With no time left at all, nothing was sent.
            CallError::DeadlineExceeded { sent, .. } => *sent,
            CallError::CallTimeout { .. } | CallError::ShuttingDown => true,
            CallError::WeCom(failed) => failed.may_have_taken_effect,
            _ => false,
        }
    }
}

/// Who must act on a failure: it decides the log level, and labels metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The caller sent something to fix: logged at info.
    Caller,
    /// The gateway's configuration, its WeCom app's settings, or the gateway itself.
    Operator,
    /// WeCom, or the network to it, failed or refused the load.
    WeCom,
}

impl Fault {
    /// The value logs and metrics give it.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Fault::Caller => "caller",
            Fault::Operator => "operator",
            Fault::WeCom => "wecom",
        }
    }
}

/// A failed call, mapped once: the cause, the status the caller gets, who is at fault.
#[derive(Debug)]
pub(crate) struct Failure {
    /// What went wrong, with its cause chain, for the log.
    pub(crate) error: CallError,
    /// What the caller gets.
    pub(crate) status: Status,
    /// The ErrorInfo reason in `status`.
    pub(crate) reason: &'static str,
    /// Who must act.
    pub(crate) fault: Fault,
}

impl From<CallError> for Failure {
    fn from(error: CallError) -> Self {
        status::refuse(error)
    }
}

impl From<wecom::Failed> for Failure {
    fn from(failed: wecom::Failed) -> Self {
        status::refuse(CallError::WeCom(failed))
    }
}
