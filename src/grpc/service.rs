//! `wecom.kf.v1.CustomerUpgradeService`: each handler is a straight line, from
//! the request to its audit.

use std::time::Duration;

use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use super::{
    call::Call,
    error::{CallError, Failure},
    pb,
};
use crate::{
    domain::{Customer, Upgrade, UpgradeTarget},
    wecom::{AppClient, Apps},
};

/// `wecom.kf.v1.CustomerUpgradeService` over the WeCom adapter.
#[derive(Debug)]
pub struct UpgradeGateway {
    apps: Apps,
    call_timeout: Duration,
}

impl UpgradeGateway {
    /// Serves the given apps; each RPC's upstream work is bounded by `call_timeout`.
    pub fn new(apps: Apps, call_timeout: Duration) -> Self {
        Self { apps, call_timeout }
    }

    /// The app the call names, or the default app.
    fn app(&self, call: &Call) -> Result<&AppClient, CallError> {
        let name = call.requested_app()?.unwrap_or(self.apps.default_app());
        let app = self.apps.get(name).ok_or_else(|| CallError::UnknownApp {
            // Echoed to the caller and the log: bounded, whatever the caller sent.
            requested: name.chars().take(64).collect(),
            configured: self.apps.names().map(str::to_owned).collect(),
        })?;
        call.span.record("wecom.app", app.name());
        Ok(app)
    }

    pub(super) async fn get_config(
        &self,
        call: &Call,
    ) -> Result<pb::GetUpgradeConfigResponse, Failure> {
        let app = self.app(call)?;
        let config = call
            .within(self.call_timeout, app.get_upgrade_config())
            .await?;
        Ok(config.into())
    }

    pub(super) async fn upgrade(
        &self,
        call: &Call,
        message: pb::UpgradeServiceRequest,
    ) -> Result<pb::UpgradeServiceResponse, Failure> {
        let upgrade = Upgrade::try_from(message).map_err(CallError::InvalidRequest)?;
        let app = self.app(call)?;
        let outcome = call
            .within(self.call_timeout, app.upgrade_service(&upgrade))
            .await;
        let target = Some(&upgrade.target);
        audit(call, app, "upgrade", &upgrade.customer, target, &outcome);
        outcome.map(|()| pb::UpgradeServiceResponse {})
    }

    pub(super) async fn cancel(
        &self,
        call: &Call,
        message: pb::CancelUpgradeRequest,
    ) -> Result<pb::CancelUpgradeResponse, Failure> {
        let customer = Customer::try_from(message).map_err(CallError::InvalidRequest)?;
        let app = self.app(call)?;
        let outcome = call
            .within(self.call_timeout, app.cancel_upgrade(&customer))
            .await;
        audit(call, app, "cancel", &customer, None, &outcome);
        outcome.map(|()| pb::CancelUpgradeResponse {})
    }
}

/// One audit event per valid upgrade or cancel, whatever its outcome: a
/// timed-out call may still have taken effect at WeCom.
fn audit(
    call: &Call,
    app: &AppClient,
    action: &'static str,
    customer: &Customer,
    target: Option<&UpgradeTarget>,
    outcome: &Result<(), Failure>,
) {
    let outcome = outcome
        .as_ref()
        .map_or_else(|f| f.status.code(), |()| Code::Ok);
    let peer = call
        .peer
        .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    tracing::info!(
        target: "audit",
        action,
        peer,
        app = app.name(),
        open_kfid = %customer.open_kfid,
        external_userid = %customer.external_userid,
        recommended = target.map(ToString::to_string),
        outcome = ?outcome,
        "{action}"
    );
}

#[tonic::async_trait]
impl super::CustomerUpgradeService for UpgradeGateway {
    async fn get_upgrade_config(
        &self,
        request: Request<pb::GetUpgradeConfigRequest>,
    ) -> Result<Response<pb::GetUpgradeConfigResponse>, Status> {
        let (call, _) = Call::accept("GetUpgradeConfig", request);
        let result = self.get_config(&call).instrument(call.span.clone()).await;
        call.finish(result).map(Response::new)
    }

    async fn upgrade_service(
        &self,
        request: Request<pb::UpgradeServiceRequest>,
    ) -> Result<Response<pb::UpgradeServiceResponse>, Status> {
        let (call, message) = Call::accept("UpgradeService", request);
        let result = self
            .upgrade(&call, message)
            .instrument(call.span.clone())
            .await;
        call.finish(result).map(Response::new)
    }

    async fn cancel_upgrade(
        &self,
        request: Request<pb::CancelUpgradeRequest>,
    ) -> Result<Response<pb::CancelUpgradeResponse>, Status> {
        let (call, message) = Call::accept("CancelUpgrade", request);
        let result = self
            .cancel(&call, message)
            .instrument(call.span.clone())
            .await;
        call.finish(result).map(Response::new)
    }
}
