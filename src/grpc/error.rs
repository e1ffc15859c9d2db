//! What can go wrong with a call at the edge, and who is at fault.

use std::time::Duration;

use tonic::Status;

use super::status;
use crate::{domain::FieldViolation, wecom};

/// Why a call failed: the edge's own refusals, or the adapter's error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// `x-wecom-app` names no configured app.
    #[error("x-wecom-app `{requested}` is not a configured app")]
    UnknownApp {
        /// What the caller sent, bounded.
        requested: String,
        /// The apps it could have named.
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
    /// The caller's deadline (less the gateway's headroom) passed first.
    #[error("the caller's deadline passed after {} ms of waiting for WeCom", .waited.as_millis())]
    DeadlineExceeded {
        /// How long the gateway waited for WeCom.
        waited: Duration,
    },
    /// WeCom took longer than `upstream.call_timeout_ms`, retries included.
    #[error("WeCom did not answer within the gateway's call timeout of {} ms", .timeout.as_millis())]
    CallTimeout {
        /// The configured timeout.
        timeout: Duration,
    },
    /// The adapter failed.
    #[error(transparent)]
    WeCom(#[from] wecom::Error),
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
            CallError::WeCom(error) => error.errcode(),
            _ => None,
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

impl From<wecom::Error> for Failure {
    fn from(error: wecom::Error) -> Self {
        status::refuse(CallError::WeCom(error))
    }
}
