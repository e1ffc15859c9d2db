//! The gRPC edge: generated code, the call path, the one error mapping.
//!
//! - [`service`]: the handlers, each a straight line: validate → resolve the app →
//!   call WeCom within the call's budget → audit;
//! - `call`: what the edge knows of a call besides its message (app, arrival,
//!   budget, span), and the one place a call's outcome is logged;
//! - [`codec`]: prost's codec, refusing undecodable requests as INVALID_ARGUMENT;
//! - `convert`: proto → domain (validation) and back;
//! - `http`: the same calls as HTTP/JSON on the gRPC port, through the same handlers;
//! - `error`: what can go wrong at the edge, and who is at fault;
//! - [`status`]: the one match from an error to its status.

mod call;
pub mod codec;
mod convert;
mod deadline;
mod error;
#[doc(hidden)]
pub mod hot_paths;
mod http;
mod service;
pub mod status;

pub use call::{Cutoff, admit, stamp_arrival};
pub(crate) use http::{routes as http_routes, unknown_route};
pub use service::{CallLimits, UpgradeGateway};

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
