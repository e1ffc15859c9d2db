//! The one error type of the adapter. It keeps WeCom's errcode and errmsg, and
//! never an access token, a secret or a URL with a query string.

use std::{fmt, io, sync::Arc, time::Duration};

use super::errcode;

/// A WeCom HTTP endpoint the gateway calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `GET /cgi-bin/gettoken`.
    GetToken,
    /// `GET /cgi-bin/kf/customer/get_upgrade_service_config`.
    GetUpgradeConfig,
    /// `POST /cgi-bin/kf/customer/upgrade_service`.
    UpgradeService,
    /// `POST /cgi-bin/kf/customer/cancel_upgrade_service`.
    CancelUpgrade,
    /// `POST /cgi-bin/service/get_suite_token`: a third-party suite's token.
    GetSuiteToken,
    /// `POST /cgi-bin/service/get_corp_token`: an authorised corp's token, from its suite's.
    GetCorpToken,
}

impl Endpoint {
    /// The path, without the query (which may carry secrets).
    pub const fn path(self) -> &'static str {
        match self {
            Endpoint::GetToken => "/cgi-bin/gettoken",
            Endpoint::GetUpgradeConfig => "/cgi-bin/kf/customer/get_upgrade_service_config",
            Endpoint::UpgradeService => "/cgi-bin/kf/customer/upgrade_service",
            Endpoint::CancelUpgrade => "/cgi-bin/kf/customer/cancel_upgrade_service",
            Endpoint::GetSuiteToken => "/cgi-bin/service/get_suite_token",
            Endpoint::GetCorpToken => "/cgi-bin/service/get_corp_token",
        }
    }

    /// Every endpoint the gateway calls.
    pub const ALL: [Endpoint; 6] = [
        Endpoint::GetToken,
        Endpoint::GetUpgradeConfig,
        Endpoint::UpgradeService,
        Endpoint::CancelUpgrade,
        Endpoint::GetSuiteToken,
        Endpoint::GetCorpToken,
    ];

    /// Whether it fetches a token (rather than using one for a business call).
    pub const fn fetches_token(self) -> bool {
        matches!(
            self,
            Endpoint::GetToken | Endpoint::GetSuiteToken | Endpoint::GetCorpToken
        )
    }

    /// Whether WeCom leaves `errcode` out of a successful answer (the provider
    /// APIs do); elsewhere it is always there.
    pub const fn errcode_only_on_failure(self) -> bool {
        matches!(self, Endpoint::GetSuiteToken | Endpoint::GetCorpToken)
    }

    /// The name of a request's span: its HTTP method and path.
    pub const fn span_name(self) -> &'static str {
        match self {
            Endpoint::GetToken => "GET /cgi-bin/gettoken",
            Endpoint::GetUpgradeConfig => "GET /cgi-bin/kf/customer/get_upgrade_service_config",
            Endpoint::UpgradeService => "POST /cgi-bin/kf/customer/upgrade_service",
            Endpoint::CancelUpgrade => "POST /cgi-bin/kf/customer/cancel_upgrade_service",
            Endpoint::GetSuiteToken => "POST /cgi-bin/service/get_suite_token",
            Endpoint::GetCorpToken => "POST /cgi-bin/service/get_corp_token",
        }
    }
}

impl Endpoint {
    /// The APIs whose calls WeCom's frequency limits count and the gateway limits.
    pub const LIMITED: [Endpoint; 3] = [
        Endpoint::GetUpgradeConfig,
        Endpoint::UpgradeService,
        Endpoint::CancelUpgrade,
    ];

    /// Whether a call changes state at WeCom (so a lost answer leaves it unknown).
    pub const fn changes_state(self) -> bool {
        matches!(self, Endpoint::UpgradeService | Endpoint::CancelUpgrade)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path())
    }
}

/// How a request failed before WeCom answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// No connection could be made.
    Connect,
    /// The request or the body read timed out.
    Timeout,
    /// The connection broke, or anything else below HTTP.
    Other,
    /// The gateway ran out of file descriptors (EMFILE, ENFILE): the fault is the
    /// gateway's, not WeCom's.
    OutOfResources,
}

/// The cause of a transport failure, shared by every caller that receives the error.
pub type TransportCause = Arc<dyn std::error::Error + Send + Sync>;

/// Why a call to WeCom did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// WeCom answered with a non-zero errcode.
    #[error("WeCom {endpoint} answered errcode {errcode}: {errmsg}")]
    Api {
        /// Which call.
        endpoint: Endpoint,
        /// WeCom's errcode, never lost.
        errcode: i64,
        /// WeCom's errmsg (may carry a hint and a link to WeCom's errcode tool).
        errmsg: String,
    },
    /// WeCom (or a proxy in front of it) answered with an HTTP status other than 200.
    #[error("WeCom {endpoint} answered HTTP {status}")]
    HttpStatus {
        /// Which call.
        endpoint: Endpoint,
        /// The HTTP status.
        status: u16,
    },
    /// No answer: connect error, timeout, broken connection.
    #[error("could not reach WeCom {endpoint}")]
    Transport {
        /// Which call.
        endpoint: Endpoint,
        /// What kind of failure.
        kind: TransportKind,
        /// Why, with any URL removed (its query holds the token or the secret).
        #[source]
        cause: TransportCause,
    },
    /// HTTP 200 with a body that is not the JSON WeCom documents.
    #[error("WeCom {endpoint} answered a body that is not the expected JSON: {problem}")]
    MalformedBody {
        /// Which call.
        endpoint: Endpoint,
        /// What is wrong with the body.
        problem: String,
    },
    /// The body was larger than the configured limit.
    #[error("WeCom {endpoint} answered a body larger than {limit} bytes")]
    BodyTooLarge {
        /// Which call.
        endpoint: Endpoint,
        /// The configured limit.
        limit: usize,
    },
    /// The app's requests in flight to WeCom stayed at their limit until the
    /// call's deadline (WeCom is slow); nothing was sent.
    #[error(
        "{limit} requests of this app to WeCom {endpoint} stayed in flight until the call's deadline"
    )]
    NoTurn {
        /// Which call.
        endpoint: Endpoint,
        /// The configured limit.
        limit: usize,
    },
    /// No access token could be had; nothing was sent.
    #[error("no access token for WeCom {endpoint}: {why}")]
    NoToken {
        /// Which call was waiting (or which token fetch could not be made).
        endpoint: Endpoint,
        /// Why not.
        why: NoTokenWhy,
    },
    /// The gateway's own rate limit (WeCom's frequency limits) has no slot before
    /// the call's deadline or its longest wait; nothing was sent.
    #[error("the gateway's {window} limit for WeCom {endpoint} is reached")]
    RateLimited {
        /// Which call.
        endpoint: Endpoint,
        /// Which window is full.
        window: &'static str,
        /// When a slot may free.
        retry_after: Duration,
    },
}

/// Why no access token could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoTokenWhy {
    /// None before the call's deadline (a slow token fetch, or another replica's).
    #[error("none before the call's deadline")]
    Deadline,
    /// A suite's token needs a `suite_ticket`, and WeCom has pushed none to this
    /// gateway yet (it pushes one every ten minutes to the suite's callback URL).
    #[error("WeCom has pushed no suite_ticket to the callback endpoint yet")]
    NoSuiteTicket,
}

/// A business call that failed: its last error, and whether WeCom may have applied
/// it all the same, because an attempt ended without an answer that says no.
#[derive(Debug, Clone)]
pub struct Failed {
    /// The last attempt's error.
    pub error: Error,
    /// An attempt of a call that changes state may have been applied.
    pub may_have_taken_effect: bool,
}

impl From<Error> for Failed {
    /// A failure before anything was sent that could take effect.
    fn from(error: Error) -> Self {
        Self {
            error,
            may_have_taken_effect: false,
        }
    }
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Failed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

impl Error {
    /// A failed HTTP exchange; `kind` says whether the request may have been sent.
    /// The causes name no URL (hyper's do not).
    pub(crate) fn transport(
        endpoint: Endpoint,
        kind: TransportKind,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let kind = if out_of_descriptors(&cause) {
            TransportKind::OutOfResources
        } else {
            kind
        };
        Error::Transport {
            endpoint,
            kind,
            cause: Arc::new(cause),
        }
    }

    /// The request may have reached WeCom and been applied although no answer
    /// says so: the connection broke or timed out after it was sent, a proxy
    /// answered 5xx, or WeCom's HTTP 200 could not be read.
    pub fn may_have_been_applied(&self) -> bool {
        match self {
            Error::Transport { kind, .. } => {
                matches!(kind, TransportKind::Timeout | TransportKind::Other)
            }
            Error::HttpStatus { status, .. } => *status >= 500 || *status == 408,
            Error::MalformedBody { .. } | Error::BodyTooLarge { .. } => true,
            Error::Api { .. }
            | Error::RateLimited { .. }
            | Error::NoTurn { .. }
            | Error::NoToken { .. } => false,
        }
    }

    /// WeCom's errcode, when WeCom answered with one.
    pub fn errcode(&self) -> Option<i64> {
        match self {
            Error::Api { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }

    /// The access token used was refused: refresh it and retry the call once.
    pub fn is_stale_token(&self) -> bool {
        matches!(self, Error::Api { endpoint, errcode, .. }
            if !endpoint.fetches_token() && errcode::is_token_error(*errcode))
    }

    /// `get_corp_token` refused the suite's token: refresh it and retry once.
    pub fn is_stale_suite_token(&self) -> bool {
        matches!(self, Error::Api { endpoint: Endpoint::GetCorpToken, errcode, .. }
            if errcode::is_suite_token_error(*errcode))
    }

    /// A token fetch was refused its credentials (corp id and secret, suite id and
    /// secret, a corp's permanent code): retrying cannot help until an operator
    /// fixes the configuration or the corp authorises the suite again.
    pub fn is_credential_rejection(&self) -> bool {
        match self {
            Error::Api {
                endpoint, errcode, ..
            } => match endpoint {
                Endpoint::GetToken => errcode::is_credential_error(*errcode),
                Endpoint::GetSuiteToken => errcode::is_suite_credential_error(*errcode),
                Endpoint::GetCorpToken => *errcode == errcode::INVALID_PERMANENT_CODE,
                _ => false,
            },
            _ => false,
        }
    }

    /// Worth retrying the same request after a pause.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Api { errcode, .. } => *errcode == errcode::SYSTEM_BUSY,
            // 5xx, and 408 (the proxy gave up waiting for us); not 429, which asks
            // for less traffic, not more.
            Error::HttpStatus { status, .. } => *status >= 500 || *status == 408,
            Error::Transport { kind, .. } => *kind != TransportKind::OutOfResources,
            Error::MalformedBody { .. } | Error::BodyTooLarge { .. } => false,
            Error::RateLimited { .. } | Error::NoTurn { .. } | Error::NoToken { .. } => false,
        }
    }
}

/// Whether the error's cause is the process running out of file descriptors.
fn out_of_descriptors(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        let io = error.downcast_ref::<io::Error>();
        if io.is_some_and(|io| matches!(io.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))) {
            return true;
        }
        cause = error.source();
    }
    false
}
