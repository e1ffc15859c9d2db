//! `wecom.kf.v1.CustomerUpgradeService`: each handler is a straight line, from
//! the request to its audit.

use std::{sync::Arc, time::Duration, time::Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use super::{
    call::{Call, Cutoff, Method, call_line},
    error::{CallError, Failure},
    pb,
};
use crate::{
    auth::{Access, Caller},
    domain::{Customer, Upgrade, UpgradeTarget},
    telemetry::Metrics,
    wecom::{self, AppClient, Apps},
};

/// How the gateway bounds the calls it serves.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// Longest a call's WeCom work may take, retries included.
    pub call_timeout: Duration,
    /// Most calls in flight at once; more are refused at once.
    pub max_calls_in_flight: usize,
}

/// `wecom.kf.v1.CustomerUpgradeService` over the WeCom adapter.
#[derive(Debug)]
pub struct UpgradeGateway {
    apps: Apps,
    limits: CallLimits,
    in_flight: Arc<Semaphore>,
    cutoff: Cutoff,
    access: Access,
    pub(super) metrics: Metrics,
}

impl UpgradeGateway {
    /// Serves the given apps within `limits` to the callers `access` lets in;
    /// calls still waiting for WeCom when `cutoff` is raised end with
    /// SHUTTING_DOWN. Calls are counted in `metrics`.
    pub fn new(
        apps: Apps,
        limits: CallLimits,
        cutoff: Cutoff,
        access: Access,
        metrics: Metrics,
    ) -> Self {
        Self {
            apps,
            in_flight: Arc::new(Semaphore::new(limits.max_calls_in_flight)),
            limits,
            cutoff,
            access,
            metrics,
        }
    }

    /// Calls in flight now.
    pub fn calls_in_flight(&self) -> usize {
        self.limits.max_calls_in_flight - self.in_flight.available_permits()
    }

    /// One call's WeCom work: admitted under the in-flight limit (or refused at
    /// once: queueing would only grow memory and latency), for the app the call
    /// names, within its budget.
    async fn run<T>(
        &self,
        call: &Call,
        work: impl AsyncFnOnce(&AppClient, Instant) -> Result<T, wecom::Failed>,
    ) -> Result<T, Failure> {
        let _admitted: OwnedSemaphorePermit = Arc::clone(&self.in_flight)
            .try_acquire_owned()
            .map_err(|_| {
                self.metrics.call_shed();
                CallError::Overloaded {
                    limit: self.limits.max_calls_in_flight,
                }
            })?;
        let app = self.app(call)?;
        let timeout = self.limits.call_timeout;
        call.within(timeout, &self.cutoff, |deadline| work(&app, deadline))
            .await
    }

    /// Who may call.
    pub(super) fn access(&self) -> &Access {
        &self.access
    }

    /// The app the call names, or the default app, if its caller may use it. A
    /// caller learns only of the apps it may use.
    fn app(&self, call: &Call) -> Result<Arc<AppClient>, CallError> {
        let caller = call.caller()?;
        let name = call.requested_app()?.unwrap_or(self.apps.default_app());
        let allowed = || {
            let mut names = self.apps.names();
            names.retain(|app| caller.may_use(app));
            names
        };
        // Permission first: a caller limited to some apps gets the same answer for
        // another tenant's app and for a name nobody configured, so it cannot probe
        // which apps exist. Only a caller of every app can be told one does not.
        if !caller.may_use(name) {
            return Err(CallError::AppNotAllowed {
                caller: caller.name().to_owned(),
                app: bounded(name).to_owned(),
                allowed: allowed(),
            });
        }
        let app = self.apps.get(name).ok_or_else(|| CallError::UnknownApp {
            requested: bounded(name).to_owned(),
            configured: allowed(),
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
        call.caller()?;
        let config = self
            .run(call, async |app, deadline| {
                app.get_upgrade_config(deadline).await
            })
            .await?;
        Ok(config.into())
    }

    pub(super) async fn upgrade(
        &self,
        call: &Call,
        message: pb::UpgradeServiceRequest,
    ) -> Result<pb::UpgradeServiceResponse, Failure> {
        // Who is asking comes first: an unknown caller learns nothing of its request.
        let caller = call.caller()?;
        let upgrade = Upgrade::try_from(message).map_err(CallError::InvalidRequest)?;
        let outcome = self
            .run(call, async |app, deadline| {
                app.upgrade_service(&upgrade, deadline).await
            })
            .await;
        let (app, target) = (self.audited_app(call), Some(&upgrade.target));
        let event = Audit {
            action: "upgrade",
            caller,
            app,
            customer: &upgrade.customer,
            target,
        };
        event.write(call, &outcome);
        outcome.map(|()| pb::UpgradeServiceResponse {})
    }

    pub(super) async fn cancel(
        &self,
        call: &Call,
        message: pb::CancelUpgradeRequest,
    ) -> Result<pb::CancelUpgradeResponse, Failure> {
        let caller = call.caller()?;
        let customer = Customer::try_from(message).map_err(CallError::InvalidRequest)?;
        let outcome = self
            .run(call, async |app, deadline| {
                app.cancel_upgrade(&customer, deadline).await
            })
            .await;
        let event = Audit {
            action: "cancel",
            caller,
            app: self.audited_app(call),
            customer: &customer,
            target: None,
        };
        event.write(call, &outcome);
        outcome.map(|()| pb::CancelUpgradeResponse {})
    }
}

/// What the gateway echoes of a name a caller sent: at most 64 characters.
fn bounded(name: &str) -> &str {
    name.char_indices()
        .nth(64)
        .map_or(name, |(end, _)| &name[..end])
}

/// One audit event per valid upgrade or cancel of a known caller, whatever its
/// outcome (an unknown or forbidden app included): a timed-out call may still have
/// taken effect at WeCom. It is the call's one log line: it carries the access
/// line's fields (method, code, reason, errcode, duration, trace id, and a
/// failure's fault and cause), at the access line's level, and the call writes no
/// access line of its own.
struct Audit<'a> {
    action: &'static str,
    caller: &'a Caller,
    /// The app asked for, configured or not.
    app: &'a str,
    customer: &'a Customer,
    /// Whom the customer was recommended (an upgrade).
    target: Option<&'a UpgradeTarget>,
}

impl Audit<'_> {
    /// Writes the event on the `audit` target, with the outcome: the status code
    /// (`outcome`, and `code` as the access line names it), and for a failure its
    /// ErrorInfo reason and WeCom's errcode, if any.
    fn write(self, call: &Call, outcome: &Result<(), Failure>) {
        let code = outcome
            .as_ref()
            .map_or_else(|f| f.status.code(), |()| Code::Ok);
        let peer = call
            .peer
            .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        let action = self.action;
        let access = call.line_for(outcome);
        call_line!(
            target: "audit",
            access,
            action,
            caller = self.caller.name(),
            auth = self.caller.proof().as_str(),
            peer,
            app = self.app,
            open_kfid = %self.customer.open_kfid,
            external_userid = %self.customer.external_userid,
            recommended = self.target.map(ToString::to_string),
            outcome = ?code,
            "{action}"
        );
    }
}

#[tonic::async_trait]
impl super::CustomerUpgradeService for UpgradeGateway {
    async fn get_upgrade_config(
        &self,
        request: Request<pb::GetUpgradeConfigRequest>,
    ) -> Result<Response<pb::GetUpgradeConfigResponse>, Status> {
        let (call, _) = Call::accept(
            Method::GetUpgradeConfig,
            request,
            &self.access,
            &self.metrics,
        );
        let result = self.get_config(&call).instrument(call.span.clone()).await;
        call.finish(result).map(Response::new)
    }

    async fn upgrade_service(
        &self,
        request: Request<pb::UpgradeServiceRequest>,
    ) -> Result<Response<pb::UpgradeServiceResponse>, Status> {
        let (call, message) =
            Call::accept(Method::UpgradeService, request, &self.access, &self.metrics);
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
        let (call, message) =
            Call::accept(Method::CancelUpgrade, request, &self.access, &self.metrics);
        let result = self
            .cancel(&call, message)
            .instrument(call.span.clone())
            .await;
        call.finish(result).map(Response::new)
    }
}
