//! A suite's newest `suite_ticket`, shared by the fleet: WeCom pushes each ticket
//! to one replica (whichever its load balancer picks), and every replica's
//! `get_suite_token` needs it.
//!
//! Kept in Redis for the ticket's lifetime, newest first (an older push arriving
//! late never replaces a newer one); also in this replica, so that a ticket it
//! received itself still serves while Redis is unreachable.

use std::{
    fmt,
    sync::{Arc, LazyLock},
    time::Duration,
};

use async_trait::async_trait;
use redis::Script;
use secrecy::{ExposeSecret, SecretString};

use super::Fleet;
use crate::wecom::suite::{MemoryTickets, Ticket, TicketStore};

/// WeCom's tickets are valid for 30 minutes; one kept longer is useless.
const TICKET_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// Stores ARGV[1] (the ticket) issued at ARGV[2] unless KEYS[1] holds a newer
/// one; expires after ARGV[3] ms. Returns 1 when stored.
static STORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local held = tonumber(redis.call('HGET', KEYS[1], 'issued_at'))
          if held and held > tonumber(ARGV[2]) then return 0 end
          redis.call('HSET', KEYS[1], 'ticket', ARGV[1], 'issued_at', ARGV[2])
          redis.call('PEXPIRE', KEYS[1], ARGV[3])
          return 1",
    )
});

/// A suite's ticket, in Redis and in this replica.
pub(crate) struct SharedTickets {
    fleet: Arc<Fleet>,
    key: String,
    local: MemoryTickets,
}

impl fmt::Debug for SharedTickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedTickets")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl SharedTickets {
    /// The ticket of suite `suite_id`; its key is named after the suite id only.
    pub(crate) fn new(fleet: Arc<Fleet>, suite_id: &str) -> Self {
        Self {
            key: fleet.key(&format!("{suite_id}:suite"), "ticket"),
            fleet,
            local: MemoryTickets::default(),
        }
    }
}

#[async_trait]
impl TicketStore for SharedTickets {
    async fn latest(&self) -> Option<Ticket> {
        let key = &self.key;
        let read: Result<(Option<String>, Option<i64>), _> = self
            .fleet
            .run("read suite ticket", |mut c| async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("ticket")
                    .arg("issued_at")
                    .query_async(&mut c)
                    .await
            })
            .await;
        if let Ok((Some(value), Some(issued_at))) = read {
            let shared = Ticket {
                value: SecretString::from(value),
                issued_at,
            };
            // Keep the newer of the fleet's and this replica's own.
            self.local.store_now(shared);
        }
        self.local.latest_now()
    }

    async fn store(&self, ticket: Ticket) -> bool {
        let newest_here = self.local.store_now(ticket.clone());
        let key = &self.key;
        let value = ticket.value.expose_secret();
        let lifetime = u64::try_from(TICKET_LIFETIME.as_millis()).unwrap_or(u64::MAX);
        let issued_at = ticket.issued_at;
        let stored: Result<i64, _> = self
            .fleet
            .run("store suite ticket", |mut c| async move {
                STORE
                    .key(key)
                    .arg(value)
                    .arg(issued_at)
                    .arg(lifetime)
                    .invoke_async(&mut c)
                    .await
            })
            .await;
        match stored {
            Ok(stored) => stored == 1,
            // Redis is unreachable: this replica's own copy serves it meanwhile.
            Err(_) => newest_here,
        }
    }
}
