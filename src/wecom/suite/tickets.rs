//! Where a suite's newest `suite_ticket` is kept.

use std::{fmt, sync::Mutex};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

/// A ticket WeCom pushed, and when it issued it.
#[derive(Clone)]
pub(crate) struct Ticket {
    pub(crate) value: SecretString,
    /// Unix seconds, from the callback's `TimeStamp`.
    pub(crate) issued_at: i64,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("value", &"****")
            .field("issued_at", &self.issued_at)
            .finish()
    }
}

impl PartialEq for Ticket {
    fn eq(&self, other: &Self) -> bool {
        self.issued_at == other.issued_at
            && self.value.expose_secret() == other.value.expose_secret()
    }
}

/// Where a suite's newest ticket is kept: this process, or the fleet's Redis.
#[async_trait]
pub(crate) trait TicketStore: Send + Sync + fmt::Debug {
    /// The newest ticket, if one has arrived.
    async fn latest(&self) -> Option<Ticket>;

    /// Keeps `ticket` unless a newer one is kept already; whether it was kept.
    async fn store(&self, ticket: Ticket) -> bool;
}

/// The newest ticket, in this process.
#[derive(Debug, Default)]
pub(crate) struct MemoryTickets {
    newest: Mutex<Option<Ticket>>,
}

impl MemoryTickets {
    pub(crate) fn latest_now(&self) -> Option<Ticket> {
        self.newest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn store_now(&self, ticket: Ticket) -> bool {
        let mut newest = self
            .newest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // WeCom says to use the newest: a late delivery of an older push loses.
        if newest
            .as_ref()
            .is_some_and(|n| n.issued_at > ticket.issued_at)
        {
            return false;
        }
        *newest = Some(ticket);
        true
    }
}

#[async_trait]
impl TicketStore for MemoryTickets {
    async fn latest(&self) -> Option<Ticket> {
        self.latest_now()
    }

    async fn store(&self, ticket: Ticket) -> bool {
        self.store_now(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(value: &str, issued_at: i64) -> Ticket {
        Ticket {
            value: SecretString::from(value),
            issued_at,
        }
    }

    #[test]
    fn the_newest_ticket_wins_whatever_the_order_of_arrival() {
        let store = MemoryTickets::default();
        assert!(store.latest_now().is_none());
        assert!(store.store_now(ticket("b", 20)));
        assert!(!store.store_now(ticket("a", 10)));
        assert_eq!(store.latest_now(), Some(ticket("b", 20)));
        assert!(store.store_now(ticket("c", 30)));
        assert_eq!(store.latest_now(), Some(ticket("c", 30)));
        assert!(!format!("{:?}", ticket("SECRET", 1)).contains("SECRET"));
    }
}
