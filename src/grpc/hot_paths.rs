//! The steps every call goes through, one by one, for the micro-benchmarks in
//! `benches/hot_paths.rs`: not an API (hidden from the docs), and nothing here is
//! used by the gateway itself.

use tonic::{Request, Status};

use super::{
    call::{Call, Method},
    error::{CallError, Failure},
    pb,
};
use crate::{
    auth::Access,
    domain::Upgrade,
    telemetry::Metrics,
    wecom::{self, Endpoint, api},
};

/// An `UpgradeService` request checked and turned into the JSON body WeCom gets.
pub fn upgrade_body(message: pb::UpgradeServiceRequest) -> Option<Vec<u8>> {
    let upgrade = Upgrade::try_from(message).ok()?;
    Some(api::encode(&api::UpgradeBody::from(&upgrade)))
}

/// The status a caller gets when WeCom refused `UpgradeService` with `errcode`.
pub fn status_of_refusal(errcode: i64) -> Status {
    let error = wecom::Error::Api {
        endpoint: Endpoint::UpgradeService,
        errcode,
        errmsg: "not allowed".to_owned(),
    };
    let failed = wecom::Failed::from(error);
    Failure::from(CallError::WeCom(failed)).status
}

/// One call's record as the gateway keeps it: the call taken in (caller, span,
/// in-flight gauge), then finished (status on the span, metrics, its access line
/// through whatever subscriber is installed).
pub fn record_call(access: &Access, metrics: &Metrics) -> Result<(), Status> {
    let request = Request::new(pb::GetUpgradeConfigRequest {});
    let (call, _) = Call::accept(Method::GetUpgradeConfig, request, access, metrics);
    call.finish(Ok(()))
}
