//! WeCom's frequency limits kept for the whole fleet in Redis: per corp and API
//! (and per API for the gateway, if configured), the minute and hour windows of a
//! scope checked and spent together by one script.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, LazyLock},
    time::Duration,
};

use async_trait::async_trait;
use redis::Script;

use super::Fleet;
use crate::wecom::{
    Endpoint, NoSlot, RateBudget, WindowLimits,
    limit::{LocalBudget, Scope, shape},
};

/// GCRA over two windows, the time taken from Redis (`TIME`), so replicas'
/// clocks do not matter. KEYS: the minute and hour windows' theoretical arrival
/// times (µs); ARGV: each window's slot interval (µs) and burst. Spends a slot of
/// both or of neither; answers `{0, 0}`, or the full window (1 or 2) and the
/// microseconds until it admits a call.
///
/// The same shape as the in-process limiter (governor's GCRA), written in Lua
/// because it has to run inside Redis to be atomic for the fleet.
static SPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local t = redis.call('TIME')
          local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
          local tats = {}
          for i = 1, 2 do
            local interval = tonumber(ARGV[2 * i - 1])
            local burst = tonumber(ARGV[2 * i])
            local tat = tonumber(redis.call('GET', KEYS[i]) or now)
            if tat < now then tat = now end
            local allow_at = tat + interval - interval * burst
            if allow_at > now then return {i, allow_at - now} end
            tats[i] = tat + interval
          end
          for i = 1, 2 do
            local ttl = math.ceil((tats[i] - now) / 1000) + 1
            redis.call('SET', KEYS[i], string.format('%d', tats[i]), 'PX', ttl)
          end
          return {0, 0}",
    )
});

/// The keys and shape of one scope's windows for one API.
#[derive(Debug)]
struct Windows {
    scope: Scope,
    minute_key: String,
    hour_key: String,
    /// Slot interval (µs) and burst of the minute window, then of the hour one.
    shape: [u64; 4],
}

impl Windows {
    fn new(fleet: &Fleet, scope: Scope, tag: &str, limits: WindowLimits) -> Self {
        let micros = |(interval, burst): (Duration, NonZeroU32)| {
            let interval = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
            (interval.max(1), u64::from(burst.get()))
        };
        let minute = micros(shape(limits.per_minute, Duration::from_secs(60)));
        let hour = micros(shape(limits.per_hour, Duration::from_secs(3600)));
        Self {
            scope,
            minute_key: fleet.key(tag, "rate:minute"),
            hour_key: fleet.key(tag, "rate:hour"),
            shape: [minute.0, minute.1, hour.0, hour.1],
        }
    }

    async fn try_spend(&self, fleet: &Fleet) -> Result<Result<(), NoSlot>, super::Unreachable> {
        let (full, wait_us): (u8, u64) = fleet
            .run("spend rate slot", |mut c| async move {
                let mut call = SPEND.key(&self.minute_key);
                call.key(&self.hour_key);
                for arg in self.shape {
                    call.arg(arg);
                }
                call.invoke_async(&mut c).await
            })
            .await?;
        let window = match full {
            0 => return Ok(Ok(())),
            1 => self.scope.minute(),
            _ => self.scope.hour(),
        };
        Ok(Err(NoSlot {
            window,
            retry_after: Duration::from_micros(wait_us),
        }))
    }
}

/// One app's slots of WeCom's frequency limits, spent across the fleet; while
/// Redis is unreachable, spent from this replica's share of them.
#[derive(Debug)]
pub(crate) struct SharedBudget {
    fleet: Arc<Fleet>,
    corp: HashMap<Endpoint, Windows>,
    gateway: HashMap<Endpoint, Windows>,
    fallback: LocalBudget,
}

impl SharedBudget {
    /// The budget of an app of `corp_id` under `per_corp` (and `per_gateway`)
    /// limits; `fallback` holds this replica's share of them.
    pub(crate) fn new(
        fleet: Arc<Fleet>,
        corp_id: &str,
        per_corp: WindowLimits,
        per_gateway: Option<WindowLimits>,
        fallback: LocalBudget,
    ) -> Self {
        let api = |endpoint: Endpoint| endpoint.path().rsplit('/').next().unwrap_or_default();
        let windows = |scope, owner: &str, limits| {
            Endpoint::LIMITED
                .iter()
                .map(|&e| {
                    let tag = format!("{owner}:{}", api(e));
                    (e, Windows::new(&fleet, scope, &tag, limits))
                })
                .collect()
        };
        let corp = windows(Scope::Corp, corp_id, per_corp);
        let gateway = per_gateway.map_or_else(HashMap::new, |limits| {
            windows(Scope::Gateway, "gateway", limits)
        });
        Self {
            corp,
            gateway,
            fallback,
            fleet,
        }
    }
}

#[async_trait]
impl RateBudget for SharedBudget {
    async fn try_spend(&self, endpoint: Endpoint) -> Result<(), NoSlot> {
        // Endpoints outside WeCom's per-API limits (gettoken) are not counted.
        let Some(corp) = self.corp.get(&endpoint) else {
            return Ok(());
        };
        let spent = match corp.try_spend(&self.fleet).await {
            Ok(Ok(())) => match self.gateway.get(&endpoint) {
                Some(gateway) => gateway.try_spend(&self.fleet).await,
                None => Ok(Ok(())),
            },
            other => other,
        };
        match spent {
            Ok(spent) => spent,
            Err(why) => {
                self.fleet.fell_back("rate budget", &why);
                self.fallback.try_spend(endpoint).await
            }
        }
    }
}
