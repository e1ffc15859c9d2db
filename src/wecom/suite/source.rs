//! The suite token and the corp tokens, as [`TokenSource`]s: each goes through a
//! [`TokenCache`](crate::wecom::TokenCache) of its own, with the same single
//! flight, refresh-ahead, compare-and-invalidate and cool-down as `gettoken`.

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{Suite, TicketStore};
use crate::wecom::{
    AccessToken, Endpoint, Error, IssuedToken, NoTokenWhy, TokenSource,
    api::{self, TokenAnswer},
    transport::{Call, Transport},
};

/// `POST /cgi-bin/service/get_suite_token` with the newest `suite_ticket`.
pub(crate) struct GetSuiteToken {
    suite_id: String,
    secret: SecretString,
    tickets: Arc<dyn TicketStore>,
    transport: Transport,
}

impl GetSuiteToken {
    pub(crate) fn new(
        suite_id: String,
        secret: SecretString,
        tickets: Arc<dyn TicketStore>,
        transport: Transport,
    ) -> Self {
        Self {
            suite_id,
            secret,
            tickets,
            transport,
        }
    }
}

impl fmt::Debug for GetSuiteToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetSuiteToken")
            .field("suite_id", &self.suite_id)
            .field("secret", &"****")
            .finish_non_exhaustive()
    }
}

/// `get_suite_token`'s body. No `Debug`: it holds the secret and the ticket.
#[derive(Serialize)]
struct SuiteTokenBody<'a> {
    suite_id: &'a str,
    suite_secret: &'a str,
    suite_ticket: &'a str,
}

/// `get_suite_token`'s answer. No `Debug`: it holds the token.
#[derive(Deserialize)]
struct SuiteTokenAnswer {
    suite_access_token: String,
    expires_in: u64,
}

#[async_trait]
impl TokenSource for GetSuiteToken {
    async fn fetch(&self, attempt: u32) -> Result<IssuedToken, Error> {
        let endpoint = Endpoint::GetSuiteToken;
        let Some(ticket) = self.tickets.latest().await else {
            return Err(Error::NoToken {
                endpoint,
                why: NoTokenWhy::NoSuiteTicket,
            });
        };
        let body = api::encode(&SuiteTokenBody {
            suite_id: &self.suite_id,
            suite_secret: self.secret.expose_secret(),
            suite_ticket: ticket.value.expose_secret(),
        });
        let answer: SuiteTokenAnswer = self
            .transport
            .request(Call {
                endpoint,
                query: &[],
                body: Some(&body),
                attempt,
            })
            .await?;
        issued(endpoint, answer.suite_access_token, answer.expires_in)
    }
}

/// `POST /cgi-bin/service/get_corp_token?suite_access_token=…` for one authorised
/// corp, with the suite's token from the suite's own cache.
pub(crate) struct GetCorpToken {
    corp_id: String,
    permanent_code: SecretString,
    suite: Arc<Suite>,
    transport: Transport,
}

impl GetCorpToken {
    pub(crate) fn new(
        corp_id: String,
        permanent_code: SecretString,
        suite: Arc<Suite>,
        transport: Transport,
    ) -> Self {
        Self {
            corp_id,
            permanent_code,
            suite,
            transport,
        }
    }
}

impl fmt::Debug for GetCorpToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetCorpToken")
            .field("corp_id", &self.corp_id)
            .field("permanent_code", &"****")
            .field("suite", &self.suite.name())
            .finish_non_exhaustive()
    }
}

/// `get_corp_token`'s body. No `Debug`: it holds the permanent code.
#[derive(Serialize)]
struct CorpTokenBody<'a> {
    auth_corpid: &'a str,
    permanent_code: &'a str,
}

#[async_trait]
impl TokenSource for GetCorpToken {
    async fn fetch(&self, attempt: u32) -> Result<IssuedToken, Error> {
        let endpoint = Endpoint::GetCorpToken;
        let body = api::encode(&CorpTokenBody {
            auth_corpid: &self.corp_id,
            permanent_code: self.permanent_code.expose_secret(),
        });
        let suite_tokens = self.suite.tokens();
        let mut suite_token = suite_tokens.get().await?;
        let mut replaced = false;
        loop {
            let query = [("suite_access_token", suite_token.expose())];
            let answer: Result<TokenAnswer, Error> = self
                .transport
                .request(Call {
                    endpoint,
                    query: &query,
                    body: Some(&body),
                    attempt,
                })
                .await;
            match answer {
                Ok(answer) => return issued(endpoint, answer.access_token, answer.expires_in),
                // The suite's token was refused: drop it if it is still the
                // suite's (compare-and-invalidate) and try once with a fresh one.
                Err(error) if error.is_stale_suite_token() && !replaced => {
                    replaced = true;
                    tracing::info!(
                        suite = self.suite.name(),
                        errcode = error.errcode(),
                        "suite_access_token refused by WeCom; fetching a fresh one"
                    );
                    suite_token = suite_tokens.replace(&suite_token).await?;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// A token WeCom issued, checked for the fields errcode 0 promises.
fn issued(endpoint: Endpoint, token: String, expires_in: u64) -> Result<IssuedToken, Error> {
    if token.is_empty() || expires_in == 0 {
        return Err(Error::MalformedBody {
            endpoint,
            problem: "no token or expires_in in a successful answer".to_owned(),
        });
    }
    Ok(IssuedToken {
        token: AccessToken::new(token),
        expires_in: Duration::from_secs(expires_in),
    })
}
