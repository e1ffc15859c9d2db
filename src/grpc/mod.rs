//! The gRPC edge: generated code, request validation, deadlines, status mapping.

mod convert;
mod deadline;
pub mod status;

use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tonic::{Code, Request, Response, Status, metadata::MetadataMap};
use tracing::Instrument;

use crate::{
    domain::{Customer, Upgrade, UpgradeTarget},
    wecom::{self, AppClient, Apps},
};

/// Code generated from `proto/wecom/kf/v1/upgrade.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("wecom.kf.v1");

    /// Encoded descriptors of the protos, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("wecom_kf_v1_descriptor");
}

pub use pb::customer_upgrade_service_server::{
    CustomerUpgradeService, CustomerUpgradeServiceServer,
};

/// The metadata key that picks a configured app.
pub const APP_METADATA_KEY: &str = "x-wecom-app";

/// Answers are computed at least this much before the caller's deadline, so the
/// caller gets the gateway's DEADLINE_EXCEEDED (with details) rather than the bare
/// CANCELLED tonic sends when the deadline passes first.
const DEADLINE_HEADROOM: Duration = Duration::from_millis(20);

/// When a call arrived: the caller's deadline counts from here.
#[derive(Debug, Clone, Copy)]
struct Arrival(Instant);

/// Interceptor for [`CustomerUpgradeServiceServer`]: stamps each call's arrival
/// before its message is decoded.
pub fn stamp_arrival(mut request: Request<()>) -> Result<Request<()>, Status> {
    request.extensions_mut().insert(Arrival(Instant::now()));
    Ok(request)
}

/// What the edge knows of a call besides its message.
struct CallContext {
    metadata: MetadataMap,
    arrival: Instant,
    peer: Option<SocketAddr>,
}

impl CallContext {
    fn split<T>(request: Request<T>) -> (Self, T) {
        let peer = request.remote_addr();
        let (metadata, extensions, message) = request.into_parts();
        let arrival = extensions
            .get::<Arrival>()
            .map_or_else(Instant::now, |arrival| arrival.0);
        let context = CallContext {
            metadata,
            arrival,
            peer,
        };
        (context, message)
    }

    /// The app the caller asked for, if any.
    fn requested_app(&self) -> Result<Option<&str>, Status> {
        match self.metadata.get(APP_METADATA_KEY) {
            None => Ok(None),
            Some(value) => value
                .to_str()
                .map(Some)
                .map_err(|_| status::invalid_metadata(APP_METADATA_KEY, "must be printable ASCII")),
        }
    }

    /// Time left before the caller's deadline, less the headroom.
    fn caller_budget(&self) -> Option<Duration> {
        let timeout = deadline::caller_timeout(&self.metadata)?;
        let headroom = DEADLINE_HEADROOM.max(timeout / 20);
        Some(timeout.saturating_sub(self.arrival.elapsed() + headroom))
    }
}

/// `wecom.kf.v1.CustomerUpgradeService` over the WeCom adapter.
#[derive(Debug, Clone)]
pub struct UpgradeGateway {
    apps: Apps,
    call_timeout: Duration,
}

impl UpgradeGateway {
    /// Serves the given apps; each RPC's upstream work is bounded by `call_timeout`.
    pub fn new(apps: Apps, call_timeout: Duration) -> Self {
        Self { apps, call_timeout }
    }

    /// Picks the app, then runs `call` within the time left: the gateway's call
    /// timeout or the caller's deadline, whichever is sooner.
    async fn with_app<T, F, Fut>(&self, context: &CallContext, call: F) -> Result<T, Status>
    where
        F: FnOnce(Arc<AppClient>) -> Fut,
        Fut: Future<Output = Result<T, wecom::Error>>,
    {
        let app = self
            .apps
            .get(context.requested_app()?)
            .map_err(|e| status::from_wecom(&e))?;
        tracing::Span::current().record("wecom.app", app.name());

        let caller = context.caller_budget();
        let budget = caller.map_or(self.call_timeout, |c| c.min(self.call_timeout));
        if budget.is_zero() {
            // No time left: starting the call would only send WeCom work nobody awaits.
            return Err(status::deadline_exceeded(budget));
        }
        match tokio::time::timeout(budget, call(Arc::clone(app))).await {
            Ok(result) => result.map_err(|error| {
                tracing::Span::current().record("wecom.errcode", error.errcode());
                let status = status::from_wecom(&error);
                // The full cause chain stays here, in the log; the caller gets the mapped
                // status. What the caller must fix is no concern of the operator's.
                let callers_fault = matches!(status.code(), Code::InvalidArgument | Code::NotFound)
                    || (status.code() == Code::FailedPrecondition
                        && !error.is_credential_rejection());
                if callers_fault {
                    tracing::info!(%error, "WeCom refused the request");
                } else {
                    tracing::warn!(%error, "WeCom call failed");
                }
                status
            }),
            Err(_) if caller.is_some_and(|c| c <= self.call_timeout) => {
                tracing::info!(
                    waited_ms = budget.as_millis() as u64,
                    "caller's deadline passed"
                );
                Err(status::deadline_exceeded(budget))
            }
            Err(_) => {
                let error = wecom::Error::CallTimeout {
                    timeout_ms: self.call_timeout.as_millis() as u64,
                };
                tracing::warn!(%error, "WeCom call failed");
                Err(status::from_wecom(&error))
            }
        }
    }

    /// One audit event per valid upgrade or cancel, whatever its outcome: a
    /// timed-out call may still have taken effect at WeCom.
    fn audit<T>(
        &self,
        context: &CallContext,
        action: &'static str,
        customer: &Customer,
        target: Option<&UpgradeTarget>,
        result: &Result<T, Status>,
    ) {
        let app = match context.requested_app() {
            Ok(Some(app)) => app,
            _ => self.apps.default_app(),
        };
        let outcome = result.as_ref().map_or_else(|s| s.code(), |_| Code::Ok);
        let peer = context
            .peer
            .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        tracing::info!(
            target: "audit",
            action,
            peer,
            app,
            open_kfid = %customer.open_kfid,
            external_userid = %customer.external_userid,
            recommended = target.map(ToString::to_string),
            outcome = ?outcome,
            "{action}"
        );
    }
}

/// Runs one RPC inside its span and records the outcome.
async fn traced<T>(
    method: &'static str,
    rpc: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    let span = tracing::info_span!(
        "rpc",
        rpc.system = "grpc",
        rpc.service = "wecom.kf.v1.CustomerUpgradeService",
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        wecom.app = tracing::field::Empty,
        wecom.errcode = tracing::field::Empty,
    );
    async move {
        let result = rpc.await;
        let code = result.as_ref().map_or_else(|s| s.code(), |_| Code::Ok);
        tracing::Span::current().record("rpc.grpc.status_code", code as i32);
        // WeCom failures were logged with their cause where they happened; this is
        // the per-call line, for debugging callers.
        tracing::debug!(code = ?code, "rpc finished");
        result.map(Response::new)
    }
    .instrument(span)
    .await
}

#[tonic::async_trait]
impl CustomerUpgradeService for UpgradeGateway {
    async fn get_upgrade_config(
        &self,
        request: Request<pb::GetUpgradeConfigRequest>,
    ) -> Result<Response<pb::GetUpgradeConfigResponse>, Status> {
        traced("GetUpgradeConfig", async {
            let (context, _) = CallContext::split(request);
            let config = self
                .with_app(
                    &context,
                    |app| async move { app.get_upgrade_config().await },
                )
                .await?;
            Ok(config.into())
        })
        .await
    }

    async fn upgrade_service(
        &self,
        request: Request<pb::UpgradeServiceRequest>,
    ) -> Result<Response<pb::UpgradeServiceResponse>, Status> {
        traced("UpgradeService", async {
            let (context, message) = CallContext::split(request);
            let upgrade = Arc::new(Upgrade::try_from(message).map_err(status::invalid_request)?);
            let sent = Arc::clone(&upgrade);
            let result = self
                .with_app(
                    &context,
                    |app| async move { app.upgrade_service(&sent).await },
                )
                .await;
            let target = Some(&upgrade.target);
            self.audit(&context, "upgrade", &upgrade.customer, target, &result);
            result.map(|()| pb::UpgradeServiceResponse {})
        })
        .await
    }

    async fn cancel_upgrade(
        &self,
        request: Request<pb::CancelUpgradeRequest>,
    ) -> Result<Response<pb::CancelUpgradeResponse>, Status> {
        traced("CancelUpgrade", async {
            let (context, message) = CallContext::split(request);
            let customer = Arc::new(Customer::try_from(message).map_err(status::invalid_request)?);
            let sent = Arc::clone(&customer);
            let result = self
                .with_app(
                    &context,
                    |app| async move { app.cancel_upgrade(&sent).await },
                )
                .await;
            self.audit(&context, "cancel", &customer, None, &result);
            result.map(|()| pb::CancelUpgradeResponse {})
        })
        .await
    }
}
