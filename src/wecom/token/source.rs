//! Where access tokens come from: the [`TokenSource`] trait and `gettoken`.

use std::{fmt, time::Duration};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use crate::wecom::{
    Endpoint, Error,
    api::TokenAnswer,
    transport::{Call, Transport},
};

/// An access token. Its `Debug` is redacted and it has no `Display`, so it cannot
/// reach a log by accident; [`AccessToken::expose`] is for building the request only.
///
/// Each clone is a copy of its own, not a shared reference: every call takes one,
/// on whichever thread it runs, and a shared reference count would be written by
/// all of them (a cache line bouncing between cores); a copy of a few hundred bytes
/// from the thread's own allocator costs less.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(Box<str>);

impl AccessToken {
    /// Wraps a token string.
    pub fn new(token: impl Into<Box<str>>) -> Self {
        Self(token.into())
    }

    /// The token itself, for the `access_token` query parameter.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(****)")
    }
}

/// A token as issued, with its lifetime.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The token.
    pub token: AccessToken,
    /// How long WeCom says it is valid (`expires_in`).
    pub expires_in: Duration,
}

/// Where access tokens come from: `gettoken` for self-built and 代开发 apps; a
/// third-party suite's `get_corp_token` or an external token service would plug in
/// here. Only an app's [`TokenCache`](super::TokenCache) calls it, one fetch at a time.
/// It must not panic; if it does, that fetch fails like a broken connection
/// (`UPSTREAM_CONNECTION_FAILED`) and is held off like any transient failure.
#[async_trait]
pub trait TokenSource: Send + Sync + fmt::Debug {
    /// Fetches a new token. `attempt` is 1 for a fetch's first try, then counts
    /// its retries, for the source's spans and logs.
    async fn fetch(&self, attempt: u32) -> Result<IssuedToken, Error>;

    /// WeCom refused `token` (40014, 42001, 40001): a source that hands out tokens
    /// it keeps elsewhere (a fleet's shared copy) drops it there, if it still holds
    /// that one. Called before the next fetch.
    async fn refused(&self, _token: &AccessToken) {}
}

/// `GET /cgi-bin/gettoken?corpid=…&corpsecret=…`.
pub(crate) struct GetToken {
    corp_id: String,
    secret: SecretString,
    transport: Transport,
}

impl GetToken {
    pub(crate) fn new(corp_id: String, secret: SecretString, transport: Transport) -> Self {
        Self {
            corp_id,
            secret,
            transport,
        }
    }
}

impl fmt::Debug for GetToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetToken")
            .field("corp_id", &self.corp_id)
            .field("secret", &"****")
            .finish()
    }
}

#[async_trait]
impl TokenSource for GetToken {
    async fn fetch(&self, attempt: u32) -> Result<IssuedToken, Error> {
        let answer: TokenAnswer = self
            .transport
            .request(Call {
                endpoint: Endpoint::GetToken,
                query: &[
                    ("corpid", &self.corp_id),
                    ("corpsecret", self.secret.expose_secret()),
                ],
                body: None,
                attempt,
            })
            .await?;
        if answer.access_token.is_empty() || answer.expires_in == 0 {
            return Err(Error::MalformedBody {
                endpoint: Endpoint::GetToken,
                problem: "errcode 0 without an access_token or expires_in".to_owned(),
            });
        }
        Ok(IssuedToken {
            token: AccessToken::new(answer.access_token),
            expires_in: Duration::from_secs(answer.expires_in),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_token() {
        let token = AccessToken::new("SECRET-TOKEN");
        assert_eq!(format!("{token:?}"), "AccessToken(****)");
    }
}
