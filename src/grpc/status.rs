//! Every error the gateway returns, as a gRPC status with `google.rpc.ErrorInfo`.
//!
//! This file is the whole error model: one exhaustive mapping from a
//! [`CallError`] to the status and to who is at fault. Messages tell the caller
//! what to do next; WeCom's own text travels in the ErrorInfo metadata (`errcode`,
//! `errmsg`), never lost and never mixed into the message.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::error::{CallError, Failure, Fault, summary};
use crate::wecom::{Error, Failed, NoTokenWhy, TransportKind, errcode};

/// ErrorInfo domain of reasons that come from a WeCom errcode.
pub const WECOM_DOMAIN: &str = "qyapi.weixin.qq.com";
/// ErrorInfo domain of the gateway's own reasons.
pub const GATEWAY_DOMAIN: &str = "wecom-kf-upgrade";

/// How long a caller should wait after WeCom's frequency limit (45009), which is
/// counted per minute.
pub const RATE_LIMIT_RETRY_DELAY: Duration = Duration::from_secs(10);
/// How long a caller should wait after WeCom's concurrency limit (45033).
pub const CONCURRENCY_LIMIT_RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long a caller should wait after the gateway shed its call.
pub const OVERLOAD_RETRY_DELAY: Duration = Duration::from_millis(200);

/// A status under construction: code, message, ErrorInfo, extras, and who is at fault.
struct Refusal {
    code: Code,
    reason: &'static str,
    domain: &'static str,
    fault: Fault,
    message: String,
    metadata: HashMap<String, String>,
    details: ErrorDetails,
}

impl Refusal {
    fn new(
        code: Code,
        reason: &'static str,
        domain: &'static str,
        fault: Fault,
        message: impl Into<String>,
    ) -> Self {
        Self {
            code,
            reason,
            domain,
            fault,
            message: message.into(),
            metadata: HashMap::new(),
            details: ErrorDetails::new(),
        }
    }

    /// A reason of the gateway's own.
    fn gateway(code: Code, reason: &'static str, fault: Fault, message: impl Into<String>) -> Self {
        Self::new(code, reason, GATEWAY_DOMAIN, fault, message)
    }

    fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.metadata.insert(key.to_owned(), value.to_string());
        self
    }

    fn retry_after(mut self, delay: Duration) -> Self {
        self.details.set_retry_info(Some(delay));
        self
    }
}

/// Maps a failed call to its status, in one match, and keeps the cause for the log.
pub(crate) fn refuse(error: CallError) -> Failure {
    let mut refusal = match &error {
        CallError::Unauthenticated(why) => Refusal::gateway(
            Code::Unauthenticated,
            why.reason(),
            Fault::Caller,
            format!(
                "{why}; callers are given a token by the gateway's operator \
                 (`wecom-kf-upgrade caller add`)"
            ),
        ),
        CallError::AppNotAllowed {
            caller,
            app,
            allowed,
        } => Refusal::gateway(
            Code::PermissionDenied,
            "APP_NOT_ALLOWED",
            Fault::Caller,
            format!(
                "caller `{caller}` may not use app `{app}`; send x-wecom-app with one of: {} \
                 (the gateway's operator grants apps in the callers file)",
                listed(allowed)
            ),
        )
        .with("app", app)
        .with("caller", caller)
        .with("allowed_apps", allowed.join(",")),
        CallError::UnknownApp {
            requested,
            configured,
        } => Refusal::gateway(
            Code::InvalidArgument,
            "UNKNOWN_APP",
            Fault::Caller,
            format!(
                "x-wecom-app `{requested}` is not a configured app; use one of: {}",
                listed(configured)
            ),
        )
        .with("app", requested)
        .with("configured_apps", configured.join(",")),
        CallError::InvalidMetadata { key, problem } => Refusal::gateway(
            Code::InvalidArgument,
            "INVALID_METADATA",
            Fault::Caller,
            format!("metadata {key} {problem}"),
        )
        .with("key", key),
        CallError::MalformedRequest(problem) => Refusal::gateway(
            Code::InvalidArgument,
            "MALFORMED_REQUEST",
            Fault::Caller,
            format!("the request is not a valid message: {problem}; fix the request"),
        ),
        CallError::UnsupportedContentType(found) => Refusal::gateway(
            Code::InvalidArgument,
            "UNSUPPORTED_CONTENT_TYPE",
            Fault::Caller,
            format!("the body is {found:?}; send it as Content-Type: application/json"),
        ),
        CallError::RequestTooLarge { limit } => Refusal::gateway(
            Code::OutOfRange,
            "REQUEST_TOO_LARGE",
            Fault::Caller,
            format!(
                "the request body is over {limit} bytes (server.max_decode_message_bytes); send less"
            ),
        )
        .with("limit_bytes", limit),
        CallError::InvalidRequest(violations) => {
            let mut refusal = Refusal::gateway(
                Code::InvalidArgument,
                "INVALID_REQUEST",
                Fault::Caller,
                format!("invalid request: {}", summary(violations)),
            );
            for v in violations {
                refusal
                    .details
                    .add_bad_request_violation(v.field.clone(), v.description.clone());
            }
            let fields = violations.iter().map(|v| v.field.as_str());
            refusal.with("fields", fields.collect::<Vec<_>>().join(","))
        }
        CallError::DeadlineExceeded { waited, sent } => Refusal::gateway(
            Code::DeadlineExceeded,
            "DEADLINE_EXCEEDED",
            Fault::Caller,
            format!(
                "the call's deadline passed before WeCom answered (after {} ms of waiting); {}: \
                 retry with a longer deadline",
                waited.as_millis(),
                if *sent {
                    "the operation may or may not have taken effect"
                } else {
                    "nothing was sent to WeCom"
                }
            ),
        ),
        CallError::RequestReadTimeout { timeout } => Refusal::gateway(
            Code::DeadlineExceeded,
            "REQUEST_READ_TIMEOUT",
            Fault::Caller,
            format!(
                "the request body did not arrive within {} ms \
                 (server.request_read_timeout_ms); nothing was sent to WeCom: send the whole \
                 body at once",
                timeout.as_millis()
            ),
        ),
        CallError::CallTimeout { timeout } => Refusal::gateway(
            Code::Unavailable,
            "UPSTREAM_TIMEOUT",
            Fault::WeCom,
            format!(
                "WeCom did not answer within the gateway's call timeout of {} ms \
                 (upstream.call_timeout_ms); retry with backoff",
                timeout.as_millis()
            ),
        ),
        CallError::Overloaded { limit } => Refusal::gateway(
            Code::Unavailable,
            "OVERLOADED",
            // Like the rate limit, the load is the callers'; a warning per shed
            // call would add to the overload. Sustained shedding shows in metrics.
            Fault::Caller,
            format!(
                "the gateway has {limit} calls in flight, its limit; nothing was sent to WeCom: \
                 retry after the RetryInfo delay, on another replica if there is one"
            ),
        )
        .with("limit", limit)
        .retry_after(OVERLOAD_RETRY_DELAY),
        CallError::ShuttingDown => Refusal::gateway(
            Code::Unavailable,
            "SHUTTING_DOWN",
            Fault::Operator,
            "the gateway shut down before WeCom answered; the operation may or may not have \
             taken effect: retry (upgrades and cancels are safe to repeat)",
        ),
        CallError::WeCom(Failed {
            error:
                wecom @ Error::Api {
                    endpoint,
                    errcode,
                    errmsg,
                },
            ..
        }) => {
            let mut refusal = from_errcode(*errcode, wecom.is_credential_rejection());
            refusal.message = format!("{} (WeCom {endpoint} errcode {errcode})", refusal.message);
            refusal
                .with("errcode", errcode)
                .with("errmsg", errmsg)
                .with("endpoint", endpoint)
        }
        CallError::WeCom(Failed {
            error: wecom @ Error::HttpStatus { endpoint, status },
            ..
        }) => {
            let refusal = match status {
                429 => Refusal::gateway(
                    Code::ResourceExhausted,
                    "UPSTREAM_RATE_LIMITED",
                    Fault::WeCom,
                    format!(
                        "WeCom {endpoint} answered HTTP 429 (too many requests); retry after \
                         the RetryInfo delay"
                    ),
                )
                .retry_after(CONCURRENCY_LIMIT_RETRY_DELAY),
                _ if wecom.is_transient() => Refusal::gateway(
                    Code::Unavailable,
                    "UPSTREAM_HTTP_ERROR",
                    Fault::WeCom,
                    format!(
                        "WeCom {endpoint} answered HTTP {status} after the gateway's retries; \
                         retry with backoff"
                    ),
                ),
                _ => Refusal::gateway(
                    Code::Internal,
                    "UPSTREAM_HTTP_ERROR",
                    Fault::Operator,
                    format!(
                        "WeCom {endpoint} answered HTTP {status}; check the app's api_base \
                         and any proxy in front of WeCom"
                    ),
                ),
            };
            refusal
                .with("http_status", status)
                .with("endpoint", endpoint)
        }
        CallError::WeCom(Failed {
            error:
                Error::Transport {
                    endpoint,
                    kind: TransportKind::OutOfResources,
                    ..
                },
            ..
        }) => Refusal::gateway(
            Code::Unavailable,
            "GATEWAY_OUT_OF_RESOURCES",
            Fault::Operator,
            format!(
                "the gateway is out of file descriptors and could not open a connection to \
                 WeCom {endpoint}; nothing was sent: retry later, on another replica if there \
                 is one (the operator must raise the open-files limit)"
            ),
        )
        .with("endpoint", endpoint),
        CallError::WeCom(Failed {
            error: Error::Transport { endpoint, kind, .. },
            ..
        }) => {
            let (reason, what) = match kind {
                TransportKind::Timeout => ("UPSTREAM_TIMEOUT", "did not answer in time"),
                TransportKind::Connect => ("UPSTREAM_UNREACHABLE", "could not be reached"),
                TransportKind::Other | TransportKind::OutOfResources => {
                    ("UPSTREAM_CONNECTION_FAILED", "connection failed")
                }
            };
            Refusal::gateway(
                Code::Unavailable,
                reason,
                Fault::WeCom,
                format!("WeCom {endpoint} {what} after the gateway's retries; retry with backoff"),
            )
            .with("endpoint", endpoint)
        }
        CallError::WeCom(Failed {
            error: Error::MalformedBody { endpoint, .. },
            ..
        }) => Refusal::gateway(
            Code::Internal,
            "UPSTREAM_MALFORMED_BODY",
            Fault::WeCom,
            format!(
                "WeCom {endpoint} answered HTTP 200 with a body that is not the JSON WeCom \
                 documents; the gateway's logs have the details"
            ),
        )
        .with("endpoint", endpoint),
        CallError::WeCom(Failed {
            error: Error::BodyTooLarge { endpoint, limit },
            ..
        }) => Refusal::gateway(
            Code::Internal,
            "UPSTREAM_BODY_TOO_LARGE",
            Fault::Operator,
            format!(
                "WeCom {endpoint} answered a body over {limit} bytes (upstream.max_body_bytes)"
            ),
        )
        .with("endpoint", endpoint)
        .with("limit_bytes", limit),
        CallError::WeCom(Failed {
            error:
                Error::NoToken {
                    endpoint,
                    why: NoTokenWhy::NoSuiteTicket,
                },
            ..
        }) => Refusal::gateway(
            Code::Unavailable,
            "SUITE_TICKET_MISSING",
            Fault::Operator,
            "WeCom has pushed no suite_ticket to the gateway's callback endpoint yet, so this \
             app's suite has no token and nothing was sent: retry in a few minutes (WeCom \
             pushes one every ten); if it persists, an operator must check the suite's \
             callback URL, Token and EncodingAESKey in WeCom's provider console",
        )
        .with("endpoint", endpoint),
        CallError::WeCom(Failed {
            error:
                Error::NoToken {
                    endpoint,
                    why: NoTokenWhy::Deadline,
                },
            ..
        }) => Refusal::gateway(
            Code::Unavailable,
            "ACCESS_TOKEN_UNAVAILABLE",
            Fault::WeCom,
            format!(
                "no access token could be had from WeCom before this call's deadline, so \
                 nothing was sent to {endpoint}: retry with backoff"
            ),
        )
        .with("endpoint", endpoint),
        CallError::WeCom(Failed {
            error: Error::NoTurn { endpoint, limit },
            ..
        }) => Refusal::gateway(
            Code::Unavailable,
            "UPSTREAM_BUSY",
            Fault::WeCom,
            format!(
                "WeCom is slow: the app's {limit} requests to WeCom (upstream.max_requests_per_app) \
                 stayed in flight until this call's deadline; nothing was sent for it: retry \
                 with backoff"
            ),
        )
        .with("endpoint", endpoint)
        .with("limit", limit),
        CallError::WeCom(Failed {
            error:
                Error::RateLimited {
                    endpoint,
                    window,
                    retry_after,
                },
            ..
        }) => Refusal::gateway(
            Code::ResourceExhausted,
            "GATEWAY_RATE_LIMITED",
            Fault::Caller,
            format!(
                "the gateway's {window} limit for WeCom {endpoint} is reached, kept so that \
                 WeCom does not block the API (45009); nothing was sent: retry after the \
                 RetryInfo delay"
            ),
        )
        .with("endpoint", endpoint)
        .with("window", window)
        .retry_after(*retry_after),
    };
    if error.may_have_taken_effect() {
        refusal = refusal.with("may_have_taken_effect", "true");
    }
    let metadata = std::mem::take(&mut refusal.metadata);
    refusal
        .details
        .set_error_info(refusal.reason, refusal.domain, metadata);
    Failure {
        status: Status::with_error_details(refusal.code, refusal.message, refusal.details),
        reason: refusal.reason,
        fault: refusal.fault,
        error,
    }
}

/// Apps for a message: `a, b`, or `none` when the caller may use none.
fn listed(apps: &[String]) -> String {
    if apps.is_empty() {
        "none (this caller may use no app)".to_owned()
    } else {
        apps.join(", ")
    }
}

/// A code's canonical name (`google.rpc.Code`), as logs and metrics give it.
pub(crate) const fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// WeCom errcode → status. The message is completed by the caller with the errcode.
fn from_errcode(code: i64, credentials_rejected: bool) -> Refusal {
    use errcode::*;

    let wecom = |code, reason, fault, message: &str| {
        Refusal::new(code, reason, WECOM_DOMAIN, fault, message)
    };
    match code {
        INVALID_SUITE_SECRET | INVALID_SUITE_ID => wecom(
            Code::FailedPrecondition,
            "SUITE_CREDENTIALS_REJECTED",
            Fault::Operator,
            "WeCom refused the suite_id or suite_secret of this app's suite; an operator must \
             fix the suite's configuration",
        ),
        INVALID_PERMANENT_CODE => wecom(
            Code::FailedPrecondition,
            "PERMANENT_CODE_REJECTED",
            Fault::Operator,
            "WeCom refused this corp's permanent_code: the corp cancelled its authorisation of \
             the suite, or the code was reset; an operator must update the suite's corps file",
        ),
        INVALID_SUITE_TICKET => wecom(
            Code::Unavailable,
            "SUITE_TICKET_INVALID",
            Fault::Operator,
            "WeCom refused the newest suite_ticket the gateway has as stale or invalid, so \
             nothing was sent: retry in a few minutes (WeCom pushes a new one every ten); if \
             it persists, an operator must check that WeCom reaches the suite's callback URL",
        ),
        INVALID_SUITE_TOKEN | SUITE_TOKEN_EXPIRED => wecom(
            Code::Unavailable,
            "SUITE_TOKEN_REJECTED",
            Fault::WeCom,
            "WeCom refused a freshly fetched suite_access_token; retry with backoff",
        ),
        _ if credentials_rejected => wecom(
            Code::FailedPrecondition,
            "CREDENTIALS_REJECTED",
            Fault::Operator,
            "WeCom refused the gateway's corp_id or secret for this app; an operator must fix \
             the app's configuration",
        ),
        SYSTEM_BUSY => wecom(
            Code::Unavailable,
            "SYSTEM_BUSY",
            Fault::WeCom,
            "WeCom is busy (系统繁忙) after the gateway's retries; retry with backoff",
        ),
        INVALID_CREDENTIAL | INVALID_ACCESS_TOKEN | ACCESS_TOKEN_EXPIRED => wecom(
            Code::Unavailable,
            "ACCESS_TOKEN_REJECTED",
            Fault::WeCom,
            "WeCom refused a freshly fetched access token; retry with backoff",
        ),
        INVALID_CORPID => wecom(
            Code::FailedPrecondition,
            "CREDENTIALS_REJECTED",
            Fault::Operator,
            "WeCom refused the gateway's corp_id; an operator must fix the app's configuration",
        ),
        MISSING_ACCESS_TOKEN => wecom(
            Code::Internal,
            "ACCESS_TOKEN_MISSING",
            Fault::Operator,
            "WeCom received no access token from the gateway; report this gateway bug",
        ),
        INVALID_JSON => wecom(
            Code::Internal,
            "REQUEST_NOT_UNDERSTOOD",
            Fault::Operator,
            "WeCom could not read the gateway's JSON; report this gateway bug",
        ),
        RATE_LIMITED => wecom(
            Code::ResourceExhausted,
            "RATE_LIMITED",
            Fault::WeCom,
            "WeCom's call frequency limit for this API was reached; retry after the RetryInfo delay",
        )
        .retry_after(RATE_LIMIT_RETRY_DELAY),
        CONCURRENCY_LIMITED => wecom(
            Code::ResourceExhausted,
            "CONCURRENCY_LIMITED",
            Fault::WeCom,
            "WeCom's concurrency limit for this API was reached; retry after the RetryInfo delay",
        )
        .retry_after(CONCURRENCY_LIMIT_RETRY_DELAY),
        API_NOT_PERMITTED => wecom(
            Code::PermissionDenied,
            "API_NOT_PERMITTED",
            Fault::Operator,
            "this app may not call the 微信客服 API: add it to 「微信客服」-「可调用接口的应用」 \
             or grant the 升级服务 permission",
        ),
        OUT_OF_VISIBLE_RANGE => wecom(
            Code::PermissionDenied,
            "OUT_OF_VISIBLE_RANGE",
            Fault::Operator,
            "the member, group owner or receptionist is outside the app's visible range",
        ),
        UNTRUSTED_IP => wecom(
            Code::PermissionDenied,
            "UNTRUSTED_IP",
            Fault::Operator,
            "the gateway's egress IP is not among the app's trusted IPs (企业可信IP)",
        ),
        APP_NOT_PERMITTED => wecom(
            Code::PermissionDenied,
            "APP_NOT_PERMITTED",
            Fault::Operator,
            "this app has no permission for the requested operation",
        ),
        INVALID_OPEN_KFID => wecom(
            Code::InvalidArgument,
            "INVALID_OPEN_KFID",
            Fault::Caller,
            "open_kfid is not a valid customer-service account id; fix the request",
        ),
        OPEN_KFID_NOT_FOUND => wecom(
            Code::NotFound,
            "OPEN_KFID_NOT_FOUND",
            Fault::Caller,
            "no customer-service account has this open_kfid; fix the request",
        ),
        NOT_CONFIGURED_FOR_UPGRADE => wecom(
            Code::FailedPrecondition,
            "UPGRADE_TARGET_NOT_CONFIGURED",
            Fault::Caller,
            "the userid or chat_id is not configured in 「微信客服」-「升级服务」; pick one \
             from GetUpgradeConfig or configure it in the WeCom admin console",
        ),
        INVALID_EXTERNAL_USERID => wecom(
            Code::InvalidArgument,
            "INVALID_EXTERNAL_USERID",
            Fault::Caller,
            "external_userid is not a valid customer of this corp; fix the request",
        ),
        INVALID_USERID => wecom(
            Code::InvalidArgument,
            "INVALID_USERID",
            Fault::Caller,
            "userid is not a member of this corp; fix the request",
        ),
        INVALID_PARAMETER => wecom(
            Code::InvalidArgument,
            "INVALID_PARAMETER",
            Fault::Caller,
            "WeCom refused a parameter of the request; errmsg says which",
        ),
        code if KF_RANGE.contains(&code) => wecom(
            Code::FailedPrecondition,
            "KF_STATE_REJECTED",
            Fault::Caller,
            "WeCom's 微信客服 refused the operation in the current state; errmsg says why",
        ),
        _ => wecom(
            Code::Unknown,
            "WECOM_ERROR",
            Fault::WeCom,
            "WeCom refused the call with an errcode the gateway does not classify; errmsg says why",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{domain::FieldViolation, wecom::Endpoint};

    fn api(endpoint: Endpoint, errcode: i64) -> Status {
        refuse(CallError::WeCom(
            Error::Api {
                endpoint,
                errcode,
                errmsg: "msg".into(),
            }
            .into(),
        ))
        .status
    }

    #[test]
    fn every_status_carries_error_info_with_the_errcode() {
        let status = api(Endpoint::UpgradeService, 95021);
        assert_eq!(status.code(), Code::FailedPrecondition);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "UPGRADE_TARGET_NOT_CONFIGURED");
        assert_eq!(info.domain, WECOM_DOMAIN);
        assert_eq!(info.metadata["errcode"], "95021");
        assert_eq!(info.metadata["errmsg"], "msg");
        assert!(status.message().contains("95021"));
    }

    #[test]
    fn suite_and_corp_token_errors_have_reasons_of_their_own() {
        let reason = |status: &Status| status.get_details_error_info().unwrap().reason;
        for (endpoint, errcode, code, expected) in [
            (
                Endpoint::GetSuiteToken,
                40080,
                Code::FailedPrecondition,
                "SUITE_CREDENTIALS_REJECTED",
            ),
            (
                Endpoint::GetSuiteToken,
                40083,
                Code::FailedPrecondition,
                "SUITE_CREDENTIALS_REJECTED",
            ),
            (
                Endpoint::GetCorpToken,
                40084,
                Code::FailedPrecondition,
                "PERMANENT_CODE_REJECTED",
            ),
            (
                Endpoint::GetSuiteToken,
                40085,
                Code::Unavailable,
                "SUITE_TICKET_INVALID",
            ),
            (
                Endpoint::GetCorpToken,
                40082,
                Code::Unavailable,
                "SUITE_TOKEN_REJECTED",
            ),
            (
                Endpoint::GetCorpToken,
                42009,
                Code::Unavailable,
                "SUITE_TOKEN_REJECTED",
            ),
        ] {
            let status = api(endpoint, errcode);
            assert_eq!(
                (status.code(), reason(&status).as_str()),
                (code, expected),
                "{errcode}"
            );
            assert!(status.message().contains(&errcode.to_string()));
        }
        let missing = refuse(CallError::WeCom(
            Error::NoToken {
                endpoint: Endpoint::GetSuiteToken,
                why: NoTokenWhy::NoSuiteTicket,
            }
            .into(),
        ))
        .status;
        assert_eq!(missing.code(), Code::Unavailable);
        assert_eq!(reason(&missing), "SUITE_TICKET_MISSING");
        assert!(missing.message().contains("callback"), "{missing:?}");
    }

    #[test]
    fn credential_errors_differ_by_endpoint() {
        let on_gettoken = api(Endpoint::GetToken, 40001);
        assert_eq!(on_gettoken.code(), Code::FailedPrecondition);
        let on_business = api(Endpoint::CancelUpgrade, 40001);
        assert_eq!(on_business.code(), Code::Unavailable);
    }

    #[test]
    fn each_failure_names_who_must_act() {
        let fault = |endpoint, errcode| {
            refuse(CallError::WeCom(
                Error::Api {
                    endpoint,
                    errcode,
                    errmsg: String::new(),
                }
                .into(),
            ))
            .fault
        };
        assert_eq!(fault(Endpoint::UpgradeService, 95021), Fault::Caller);
        assert_eq!(fault(Endpoint::GetToken, 40001), Fault::Operator);
        assert_eq!(fault(Endpoint::UpgradeService, 60020), Fault::Operator);
        assert_eq!(fault(Endpoint::UpgradeService, -1), Fault::WeCom);
        let timeout = refuse(CallError::CallTimeout {
            timeout: Duration::from_secs(1),
        });
        assert_eq!(
            (timeout.fault, timeout.reason),
            (Fault::WeCom, "UPSTREAM_TIMEOUT")
        );
    }

    #[test]
    fn rate_limits_carry_retry_info() {
        let status = api(Endpoint::UpgradeService, 45009);
        assert_eq!(status.code(), Code::ResourceExhausted);
        let retry = status.get_details_retry_info().unwrap();
        assert_eq!(retry.retry_delay, Some(RATE_LIMIT_RETRY_DELAY));
    }

    #[test]
    fn unknown_errcodes_are_unknown_and_keep_the_number() {
        let status = api(Endpoint::UpgradeService, 123456);
        assert_eq!(status.code(), Code::Unknown);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.metadata["errcode"], "123456");
    }

    #[test]
    fn validation_names_every_field() {
        let failure = refuse(CallError::InvalidRequest(vec![
            FieldViolation {
                field: "open_kfid".into(),
                description: "is required".into(),
            },
            FieldViolation {
                field: "member.userid".into(),
                description: "is required".into(),
            },
        ]));
        assert_eq!(failure.fault, Fault::Caller);
        let status = failure.status;
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad = status.get_details_bad_request().unwrap();
        let fields: Vec<_> = bad
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["open_kfid", "member.userid"]);
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            "INVALID_REQUEST"
        );
    }
}
