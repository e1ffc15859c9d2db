//! HTTP/JSON for callers without gRPC: the same three calls on the gRPC port,
//! through the same handlers (validation, app, budget, audit, logging, error
//! mapping), with errors as a `google.rpc.Status` in JSON, the shape grpc-gateway
//! and Envoy's transcoder give them.
//!
//! | route | RPC |
//! |---|---|
//! | `GET /v1/upgrade-config` | `GetUpgradeConfig` |
//! | `POST /v1/upgrade-service` | `UpgradeService` |
//! | `POST /v1/cancel-upgrade-service` | `CancelUpgrade` |
//!
//! Bodies follow the proto3 JSON mapping (lowerCamelCase names; the proto's own
//! names are accepted too). `x-wecom-app` and `grpc-timeout` work as headers.

mod json;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Request, State},
    http::{
        HeaderValue, Method, StatusCode,
        header::{CONTENT_TYPE, WWW_AUTHENTICATE},
    },
    response::{IntoResponse, Response},
    routing::{get, post},
};
use http_body_util::LengthLimitError;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use tonic::{Code, Status, metadata::MetadataMap};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::Instrument;

use self::json::{ConfigJson, CustomerJson, StatusJson, UpgradeJson};
use super::{
    UpgradeGateway,
    call::{Call, Method as Rpc},
    error::{CallError, Failure},
    pb,
    status::GATEWAY_DOMAIN,
};

/// The routes, over `gateway`, reading bodies of at most `max_body` bytes within
/// `read_timeout` (or the caller's deadline, if sooner).
pub(crate) fn routes(
    gateway: Arc<UpgradeGateway>,
    max_body: usize,
    read_timeout: Duration,
) -> Router {
    Router::new()
        .route(
            "/v1/upgrade-config",
            get(get_upgrade_config).fallback(wrong_method),
        )
        .route(
            "/v1/upgrade-service",
            post(upgrade_service).fallback(wrong_method),
        )
        .route(
            "/v1/cancel-upgrade-service",
            post(cancel_upgrade).fallback(wrong_method),
        )
        .with_state(Transcoder {
            gateway,
            max_body,
            read_timeout,
        })
}

/// What answers a path nobody serves, on the shared port: a gRPC caller gets
/// UNIMPLEMENTED as tonic would answer it; anyone else a 404 with a
/// `google.rpc.Status` body, never a 200 they could mistake for success.
pub(crate) async fn unknown_route(request: Request) -> Response {
    let content_type = request.headers().get(CONTENT_TYPE);
    let grpc = content_type
        .and_then(|t| t.to_str().ok())
        .is_some_and(|t| t.starts_with("application/grpc"));
    if grpc {
        return Status::unimplemented("").into_http();
    }
    let message = format!(
        "{} {} is not served here: GET /v1/upgrade-config, POST /v1/upgrade-service, \
         POST /v1/cancel-upgrade-service",
        request.method(),
        request.uri().path()
    );
    route_refusal(
        StatusCode::NOT_FOUND,
        Code::NotFound,
        "UNKNOWN_ROUTE",
        message,
    )
}

/// 405 with a `google.rpc.Status` body, as for every other refusal.
async fn wrong_method(method: Method) -> Response {
    let message =
        format!("{method} is not served here; GET /v1/upgrade-config, POST the two others");
    route_refusal(
        StatusCode::METHOD_NOT_ALLOWED,
        Code::Unimplemented,
        "METHOD_NOT_ALLOWED",
        message,
    )
}

/// A refusal of the route itself, before any call: its ErrorInfo is the gateway's.
fn route_refusal(http: StatusCode, code: Code, reason: &str, message: String) -> Response {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, GATEWAY_DOMAIN, HashMap::new());
    let status = Status::with_error_details(code, message, details.clone());
    (http, Json(StatusJson::new(&status, &details))).into_response()
}

#[derive(Clone)]
struct Transcoder {
    gateway: Arc<UpgradeGateway>,
    max_body: usize,
    /// `server.request_read_timeout_ms`: a body must arrive within it.
    read_timeout: Duration,
}

impl Transcoder {
    /// Takes an HTTP request apart: the call (headers as metadata), and its body,
    /// read within the caller's deadline (tonic answers a passed `grpc-timeout`
    /// itself, as gRPC, so the gateway must answer first).
    async fn accept(&self, method: Rpc, request: Request) -> (Call, Result<Bytes, Failure>) {
        let arrival = Instant::now();
        let (parts, body) = request.into_parts();
        let posted = parts.method == Method::POST;
        let content_type = parts.headers.get(CONTENT_TYPE).cloned();
        let call = Call::new(
            method,
            MetadataMap::from_headers(parts.headers),
            &parts.extensions,
            arrival,
            self.gateway.access(),
            &self.gateway.metrics,
        );
        // An unknown caller is refused before its body is read.
        if let Err(refused) = call.caller() {
            return (call, Err(refused.into()));
        }
        if posted && !is_json(content_type.as_ref()) {
            let found = content_type.map_or_else(
                || "none".to_owned(),
                |t| {
                    String::from_utf8_lossy(t.as_bytes())
                        .chars()
                        .take(100)
                        .collect()
                },
            );
            return (call, Err(CallError::UnsupportedContentType(found).into()));
        }
        let read = axum::body::to_bytes(body, self.max_body);
        let read = match call.caller_budget() {
            Some(budget) => match tokio::time::timeout(budget, read).await {
                Ok(read) => read,
                Err(_) => {
                    return (
                        call,
                        Err(CallError::DeadlineExceeded {
                            waited: budget,
                            sent: false,
                        }
                        .into()),
                    );
                }
            },
            // Without a deadline of the caller's, the gateway's own bound: an
            // answer of its own, not tonic's gRPC-shaped one from its server timeout.
            None => match tokio::time::timeout(self.read_timeout, read).await {
                Ok(read) => read,
                Err(_) => {
                    let timeout = self.read_timeout;
                    return (call, Err(CallError::RequestReadTimeout { timeout }.into()));
                }
            },
        };
        let body = read.map_err(|error| self.unreadable(error));
        (call, body)
    }

    /// Why a body could not be read: too large, or the connection failed.
    fn unreadable(&self, error: axum::Error) -> Failure {
        let error = error.into_inner();
        let mut causes =
            std::iter::successors(Some(&*error as &(dyn std::error::Error + 'static)), |e| {
                e.source()
            });
        if causes.any(|e| e.is::<LengthLimitError>()) {
            CallError::RequestTooLarge {
                limit: self.max_body,
            }
            .into()
        } else {
            CallError::MalformedRequest(format!("the body could not be read: {error}")).into()
        }
    }
}

/// `application/json`, with or without parameters such as `charset`.
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|t| t.to_str().ok())
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

async fn get_upgrade_config(State(http): State<Transcoder>, request: Request) -> Response {
    let (call, _) = http.accept(Rpc::GetUpgradeConfig, request).await;
    let work = http.gateway.get_config(&call);
    let result = work.instrument(call.span.clone()).await;
    respond(call.finish(result).map(ConfigJson::from))
}

async fn upgrade_service(State(http): State<Transcoder>, request: Request) -> Response {
    let (call, body) = http.accept(Rpc::UpgradeService, request).await;
    let work = async {
        let message = decode::<UpgradeJson>(&body?)?.try_into()?;
        http.gateway.upgrade(&call, message).await
    };
    let result = work.instrument(call.span.clone()).await;
    respond(
        call.finish(result)
            .map(|pb::UpgradeServiceResponse {}| json!({})),
    )
}

async fn cancel_upgrade(State(http): State<Transcoder>, request: Request) -> Response {
    let (call, body) = http.accept(Rpc::CancelUpgrade, request).await;
    let work = async {
        let message = decode::<CustomerJson>(&body?)?.into();
        http.gateway.cancel(&call, message).await
    };
    let result = work.instrument(call.span.clone()).await;
    respond(
        call.finish(result)
            .map(|pb::CancelUpgradeResponse {}| json!({})),
    )
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    // An empty body is an empty message, as in gRPC.
    let body = if body.is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        // serde's message may quote the caller's input: keep it short.
        let problem: String = e.to_string().chars().take(200).collect();
        CallError::MalformedRequest(problem).into()
    })
}

/// 200 with the JSON message, or the error's HTTP status with its `google.rpc.Status`
/// (and on a 401 the `WWW-Authenticate` challenge HTTP requires).
fn respond(result: Result<impl Serialize, Status>) -> Response {
    match result {
        Ok(message) => Json(message).into_response(),
        Err(status) => {
            let details = status.get_error_details();
            let body = StatusJson::new(&status, &details);
            let mut response = (http_status(status.code()), Json(body)).into_response();
            if status.code() == Code::Unauthenticated {
                response
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            response
        }
    }
}

/// The HTTP status for a gRPC code, as grpc-gateway maps it.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
