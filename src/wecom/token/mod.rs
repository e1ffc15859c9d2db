//! Access tokens: where they come from ([`TokenSource`]) and how one app's calls
//! share them ([`TokenCache`]).

mod cache;
mod source;

pub use cache::{TokenCache, TokenPolicy};
pub(crate) use source::GetToken;
pub use source::{AccessToken, IssuedToken, TokenSource};
