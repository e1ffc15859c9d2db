//! Third-party suites (第三方应用 of a 服务商): WeCom pushes each suite a
//! `suite_ticket` by encrypted callback; `get_suite_token` turns the newest ticket
//! into the suite's token; `get_corp_token` turns that into the token of each corp
//! that authorised the suite, which serves that corp's 升级服务 calls.
//!
//! - `crypto`: the callback's signature and AES envelope;
//! - `event`: the callback's XML and the events in it;
//! - `source`: [`TokenSource`](super::TokenSource)s for the suite token and the corp
//!   tokens, which go through a [`TokenCache`] each like any app's `gettoken`;
//! - `tickets`: where the newest ticket is kept (in memory, or in Redis for a fleet).

pub mod crypto;
pub mod event;
mod source;
mod tickets;

use std::{fmt, sync::Arc};

use secrecy::SecretString;
use url::Url;

use super::TokenCache;
use crate::telemetry::redacted;

pub(crate) use source::{GetCorpToken, GetSuiteToken};
pub(crate) use tickets::{MemoryTickets, Ticket, TicketStore};

/// One suite, as the adapter needs to know it.
pub struct SuiteSpec {
    /// The name it is configured under (logs, metrics, the callback's path).
    pub name: String,
    /// `suite_id`.
    pub suite_id: String,
    /// `suite_secret`.
    pub secret: SecretString,
    /// Where WeCom is.
    pub api_base: Url,
}

impl fmt::Debug for SuiteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SuiteSpec")
            .field("name", &self.name)
            .field("suite_id", &self.suite_id)
            .field("secret", &"****")
            .field("api_base", &redacted(&self.api_base).as_str())
            .finish()
    }
}

/// A running suite: its newest ticket and its token cache.
#[derive(Debug)]
pub struct Suite {
    name: Arc<str>,
    suite_id: String,
    tickets: Arc<dyn TicketStore>,
    tokens: TokenCache,
}

/// What became of a pushed ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketOutcome {
    /// It is the newest: stored.
    Stored,
    /// A newer one is already stored: ignored.
    Older,
}

impl Suite {
    pub(crate) fn new(
        name: Arc<str>,
        suite_id: String,
        tickets: Arc<dyn TicketStore>,
        tokens: TokenCache,
    ) -> Self {
        Self {
            name,
            suite_id,
            tickets,
            tokens,
        }
    }

    /// Its configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its `suite_id`.
    pub fn suite_id(&self) -> &str {
        &self.suite_id
    }

    /// The suite token's cache, which corp token sources ask.
    pub(crate) fn tokens(&self) -> &TokenCache {
        &self.tokens
    }

    /// Keeps a ticket WeCom pushed, if it is the newest, and lets a fetch that
    /// failed for want of one be tried again at once.
    pub async fn ticket_arrived(&self, ticket: String, issued_at: i64) -> TicketOutcome {
        let ticket = Ticket {
            value: SecretString::from(ticket),
            issued_at,
        };
        if !self.tickets.store(ticket).await {
            return TicketOutcome::Older;
        }
        self.tokens.retry_now();
        TicketOutcome::Stored
    }
}
