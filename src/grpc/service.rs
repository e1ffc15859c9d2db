//! `wecom.kf.v1.CustomerUpgradeService`: each handler is a straight line, from
//! the request to its audit.

use std::time::Duration;

use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use super::{
    call::{Call, Method, call_line},
    error::{CallError, Failure},
    pb,
};
use crate::{
    domain::{Customer, Upgrade, UpgradeTarget},
    telemetry::Metrics,
    wecom::{AppClient, Apps},
};

/// `wecom.kf.v1.CustomerUpgradeService` over the WeCom adapter.
#[derive(Debug)]
pub struct UpgradeGateway {
    apps: Apps,
    call_timeout: Duration,
    pub(super) metrics: Metrics,
}

impl UpgradeGateway {
    /// Serves the given apps; each RPC's upstream work is bounded by `call_timeout`.
    /// Calls are counted in `metrics`.
    pub fn new(apps: Apps, call_timeout: Duration, metrics: Metrics) -> Self {
        Self {
            apps,
            call_timeout,
            metrics,
        }
    }

    /// The app the call names, or the default app.
    fn app(&self, call: &Call) -> Result<&AppClient, CallError> {
        let name = call.requested_app()?.unwrap_or(self.apps.default_app());
        let app = self.apps.get(name).ok_or_else(|| CallError::UnknownApp {
            requested: bounded(name).to_owned(),
            configured: self.apps.names().map(str::to_owned).collect(),
        })?;
        call.serve_with(app.name());
        Ok(app)
    }

    /// The app an audit event names: the one the call asked for, configured or
    /// not, or the default; `-` when the metadata could not be read.
    fn audited_app<'a>(&'a self, call: &'a Call) -> &'a str {
        match call.requested_app() {
            Ok(Some(name)) => bounded(name),
            Ok(None) => self.apps.default_app(),
            Err(_) => "-",
        }
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
        let outcome = match self.app(call) {
            Ok(app) => {
                let work = app.upgrade_service(&upgrade);
                call.within(self.call_timeout, work).await
            }
            Err(refused) => Err(refused.into()),
        };
        let (app, target) = (self.audited_app(call), Some(&upgrade.target));
        audit(call, app, "upgrade", &upgrade.customer, target, &outcome);
        outcome.map(|()| pb::UpgradeServiceResponse {})
    }

    pub(super) async fn cancel(
        &self,
        call: &Call,
        message: pb::CancelUpgradeRequest,
    ) -> Result<pb::CancelUpgradeResponse, Failure> {
        let customer = Customer::try_from(message).map_err(CallError::InvalidRequest)?;
        let outcome = match self.app(call) {
            Ok(app) => {
                let work = app.cancel_upgrade(&customer);
                call.within(self.call_timeout, work).await
            }
            Err(refused) => Err(refused.into()),
        };
        audit(
            call,
            self.audited_app(call),
            "cancel",
            &customer,
            None,
            &outcome,
        );
        outcome.map(|()| pb::CancelUpgradeResponse {})
    }
}

/// What the gateway echoes of a name a caller sent: at most 64 characters.
fn bounded(name: &str) -> &str {
    name.char_indices()
        .nth(64)
        .map_or(name, |(end, _)| &name[..end])
}

/// One audit event per valid upgrade or cancel, whatever its outcome (an unknown
/// app included): a timed-out call may still have taken effect at WeCom. It is
/// the call's one log line: it carries the access line's fields (method, code,
/// reason, errcode, duration, trace id, and a failure's fault and cause), at the
/// access line's level, and the call writes no access line of its own.
fn audit(
    call: &Call,
    app: &str,
    action: &'static str,
    customer: &Customer,
    target: Option<&UpgradeTarget>,
    outcome: &Result<(), Failure>,
) {
    let code = outcome
        .as_ref()
        .map_or_else(|f| f.status.code(), |()| Code::Ok);
    let peer = call
        .peer
        .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    let access = call.line_for(outcome);
    call_line!(
        target: "audit",
        access,
        action,
        peer,
        app,
        open_kfid = %customer.open_kfid,
        external_userid = %customer.external_userid,
        recommended = target.map(ToString::to_string),
        outcome = ?code,
        "{action}"
    );
}

#[tonic::async_trait]
impl super::CustomerUpgradeService for UpgradeGateway {
    async fn get_upgrade_config(
        &self,
        request: Request<pb::GetUpgradeConfigRequest>,
    ) -> Result<Response<pb::GetUpgradeConfigResponse>, Status> {
        let (call, _) = Call::accept(Method::GetUpgradeConfig, request, &self.metrics);
        let result = self.get_config(&call).instrument(call.span.clone()).await;
        call.finish(result).map(Response::new)
    }

    async fn upgrade_service(
        &self,
        request: Request<pb::UpgradeServiceRequest>,
    ) -> Result<Response<pb::UpgradeServiceResponse>, Status> {
        let (call, message) = Call::accept(Method::UpgradeService, request, &self.metrics);
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
        let (call, message) = Call::accept(Method::CancelUpgrade, request, &self.metrics);
        let result = self
            .cancel(&call, message)
            .instrument(call.span.clone())
            .await;
        call.finish(result).map(Response::new)
    }
}
