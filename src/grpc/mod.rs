//! The gRPC edge: generated code, request validation, deadlines, status mapping.

mod convert;
mod deadline;
pub mod status;

use std::{future::Future, sync::Arc, time::Duration};

use tonic::{Request, Response, Status, metadata::MetadataMap};
use tracing::Instrument;

use crate::{
    domain::{Customer, Upgrade},
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

/// Answers are computed this much before the caller's deadline, so the caller
/// gets the gateway's DEADLINE_EXCEEDED (with details) rather than a bare cancel.
const DEADLINE_HEADROOM: Duration = Duration::from_millis(20);

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
    async fn with_app<T, F, Fut>(&self, metadata: &MetadataMap, call: F) -> Result<T, Status>
    where
        F: FnOnce(Arc<AppClient>) -> Fut,
        Fut: Future<Output = Result<T, wecom::Error>>,
    {
        let requested = match metadata.get(APP_METADATA_KEY) {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| {
                status::invalid_metadata(APP_METADATA_KEY, "must be printable ASCII")
            })?),
        };
        let app = self
            .apps
            .get(requested)
            .map_err(|e| status::from_wecom(&e))?;
        tracing::Span::current().record("wecom.app", app.name());

        let caller =
            deadline::caller_timeout(metadata).map(|t| t.saturating_sub(DEADLINE_HEADROOM));
        let budget = caller.map_or(self.call_timeout, |c| c.min(self.call_timeout));
        match tokio::time::timeout(budget, call(Arc::clone(app))).await {
            Ok(result) => result.map_err(|error| {
                tracing::Span::current().record("wecom.errcode", error.errcode());
                // The full cause chain stays here, in the log; the caller gets the mapped status.
                tracing::warn!(%error, "WeCom call failed");
                status::from_wecom(&error)
            }),
            Err(_) if caller.is_some_and(|c| c <= self.call_timeout) => {
                Err(status::deadline_exceeded(budget))
            }
            Err(_) => Err(status::from_wecom(&wecom::Error::CallTimeout {
                timeout_ms: self.call_timeout.as_millis() as u64,
            })),
        }
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
        let code = result
            .as_ref()
            .map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        tracing::Span::current().record("rpc.grpc.status_code", code as i32);
        match &result {
            Ok(_) => tracing::debug!("rpc ok"),
            Err(status) => {
                tracing::info!(code = ?status.code(), message = status.message(), "rpc failed")
            }
        }
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
            let config = self
                .with_app(request.metadata(), |app| async move {
                    app.get_upgrade_config().await
                })
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
            let (metadata, _, message) = request.into_parts();
            let upgrade = Upgrade::try_from(message).map_err(status::invalid_request)?;
            self.with_app(&metadata, |app| async move {
                app.upgrade_service(&upgrade).await?;
                tracing::info!(
                    target: "audit",
                    app = app.name(),
                    open_kfid = %upgrade.customer.open_kfid,
                    external_userid = %upgrade.customer.external_userid,
                    target = ?upgrade.target,
                    "upgrade service recommended"
                );
                Ok(())
            })
            .await?;
            Ok(pb::UpgradeServiceResponse {})
        })
        .await
    }

    async fn cancel_upgrade(
        &self,
        request: Request<pb::CancelUpgradeRequest>,
    ) -> Result<Response<pb::CancelUpgradeResponse>, Status> {
        traced("CancelUpgrade", async {
            let (metadata, _, message) = request.into_parts();
            let customer = Customer::try_from(message).map_err(status::invalid_request)?;
            self.with_app(&metadata, |app| async move {
                app.cancel_upgrade(&customer).await?;
                tracing::info!(
                    target: "audit",
                    app = app.name(),
                    open_kfid = %customer.open_kfid,
                    external_userid = %customer.external_userid,
                    "upgrade recommendation cancelled"
                );
                Ok(())
            })
            .await?;
            Ok(pb::CancelUpgradeResponse {})
        })
        .await
    }
}
