//! The WeCom adapter: HTTP calls, access-token caching, errcodes and JSON types.
//!
//! [`Apps`] holds one [`AppClient`] per configured app; each owns a [`TokenCache`]
//! and makes the three 升级服务 calls with the retry rules of WeCom's docs: one retry
//! with a fresh token after a token error, bounded jittered retries after `-1`,
//! HTTP 5xx and transport errors, nothing else. The adapter knows nothing of the
//! gateway's configuration: it takes [`AdapterSettings`] and [`AppSpec`]s.
//!
//! An app's token comes from `gettoken`, or, for a corp that authorised a
//! third-party suite, from `get_corp_token` with the token of the suite
//! ([`suite`]), which WeCom's pushed `suite_ticket` opens.

pub(crate) mod api;
mod client;
pub(crate) mod errcode;
mod error;
mod fleet;
mod limit;
mod retry;
pub mod suite;
mod token;
mod transport;

pub use client::{
    AdapterSettings, AppChanges, AppClient, AppCredentials, AppSpec, Apps, AppsError,
};
pub use error::{Endpoint, Error, Failed, NoTokenWhy, TransportCause, TransportKind};
pub use fleet::FleetSettings;
pub use limit::{NoSlot, RateBudget, RateLimits, WindowLimits};
pub use retry::Retry;
pub(crate) use token::GetToken;
pub use token::{AccessToken, IssuedToken, TokenCache, TokenPolicy, TokenSource};
pub use transport::HttpSettings;
