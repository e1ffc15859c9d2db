//! The one error type of the adapter. It keeps WeCom's errcode and errmsg, and
//! never an access token, a secret or a URL with a query string.

use std::{fmt, sync::Arc};

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
}

impl Endpoint {
    /// The path, without the query (which may carry secrets).
    pub const fn path(self) -> &'static str {
        match self {
            Endpoint::GetToken => "/cgi-bin/gettoken",
            Endpoint::GetUpgradeConfig => "/cgi-bin/kf/customer/get_upgrade_service_config",
            Endpoint::UpgradeService => "/cgi-bin/kf/customer/upgrade_service",
            Endpoint::CancelUpgrade => "/cgi-bin/kf/customer/cancel_upgrade_service",
        }
    }

    /// Every endpoint the gateway calls.
    pub const ALL: [Endpoint; 4] = [
        Endpoint::GetToken,
        Endpoint::GetUpgradeConfig,
        Endpoint::UpgradeService,
        Endpoint::CancelUpgrade,
    ];

    /// The name of a request's span: its HTTP method and path.
    pub const fn span_name(self) -> &'static str {
        match self {
            Endpoint::GetToken => "GET /cgi-bin/gettoken",
            Endpoint::GetUpgradeConfig => "GET /cgi-bin/kf/customer/get_upgrade_service_config",
            Endpoint::UpgradeService => "POST /cgi-bin/kf/customer/upgrade_service",
            Endpoint::CancelUpgrade => "POST /cgi-bin/kf/customer/cancel_upgrade_service",
        }
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
}

impl Error {
    /// A failed HTTP exchange, without its URL.
    pub(crate) fn transport(endpoint: Endpoint, error: reqwest::Error) -> Self {
        let kind = if error.is_timeout() {
            TransportKind::Timeout
        } else if error.is_connect() {
            TransportKind::Connect
        } else {
            TransportKind::Other
        };
        Error::Transport {
            endpoint,
            kind,
            // reqwest's Display names the URL, query and all; its sources do not.
            cause: Arc::new(error.without_url()),
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
            if *endpoint != Endpoint::GetToken && errcode::is_token_error(*errcode))
    }

    /// `gettoken` refused the corp id or secret: retrying cannot help until an
    /// operator fixes the configuration.
    pub fn is_credential_rejection(&self) -> bool {
        matches!(self, Error::Api { endpoint: Endpoint::GetToken, errcode, .. }
            if errcode::is_credential_error(*errcode))
    }

    /// Worth retrying the same request after a pause.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Api { errcode, .. } => *errcode == errcode::SYSTEM_BUSY,
            // 5xx, and 408 (the proxy gave up waiting for us); not 429, which asks
            // for less traffic, not more.
            Error::HttpStatus { status, .. } => *status >= 500 || *status == 408,
            Error::Transport { .. } => true,
            Error::MalformedBody { .. } | Error::BodyTooLarge { .. } => false,
        }
    }
}
