//! WeCom's frequency limits (访问频率限制), kept on the gateway's side so that
//! callers get a clear RESOURCE_EXHAUSTED instead of WeCom's 45009, which blocks
//! the API for the whole corp for a minute (or an hour).
//!
//! WeCom counts calls per corp and per API in a minute window and an hour window
//! (10,000 and 150,000 by default), and per egress IP (20,000 and 600,000). A
//! [`RateBudget`] spends one slot of every window that applies before each request;
//! [`LocalBudget`] keeps them in this process. A budget shared by a fleet of
//! replicas implements the same trait.

use std::{collections::HashMap, fmt, num::NonZeroU32, sync::Arc, time::Duration};

use async_trait::async_trait;
use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    state::{InMemoryState, NotKeyed},
};

use super::Endpoint;

/// How many calls of one API a window admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLimits {
    /// Calls in any 60 seconds.
    pub per_minute: NonZeroU32,
    /// Calls in any 60 minutes.
    pub per_hour: NonZeroU32,
}

/// Which windows a request spends a slot of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// Per corp and per API, shared by every app of the corp.
    pub per_corp: WindowLimits,
    /// Per API for the whole gateway, whatever the corp (WeCom's per-IP limits,
    /// for a gateway serving many corps from one egress address); `None`: no such limit.
    pub per_gateway: Option<WindowLimits>,
}

/// A refused slot: the window that is full, and when a slot may free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSlot {
    /// `corp per minute`, `gateway per hour`…, for the error and the log.
    pub window: &'static str,
    /// How long until the window admits a call again.
    pub retry_after: Duration,
}

/// Slots of WeCom's frequency limits for one app's calls.
#[async_trait]
pub trait RateBudget: Send + Sync + fmt::Debug {
    /// Spends one slot of every window that applies to `endpoint`, or says which
    /// window is full and for how long.
    async fn try_spend(&self, endpoint: Endpoint) -> Result<(), NoSlot>;
}

type Gcra = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// One GCRA limiter shaped so that no window of `period` admits more than `limit`
/// calls: a burst of a tenth of the limit, and the rest spread evenly.
///
/// governor's `per_minute(n)` alone would admit a burst of `n` and then refill at
/// `n` a minute: up to `2n` in the first minute, which is what earns a 45009.
fn window(limit: NonZeroU32, period: Duration) -> Gcra {
    let (interval, burst) = shape(limit, period);
    let quota = Quota::with_period(interval)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst);
    RateLimiter::direct(quota)
}

/// The GCRA shape of a window of `period` admitting `limit` calls: the interval
/// between slots, and the burst.
pub(crate) fn shape(limit: NonZeroU32, period: Duration) -> (Duration, NonZeroU32) {
    let limit = limit.get();
    let burst = (limit / 10).max(1);
    let refills = (limit - burst).max(1);
    (
        period / refills,
        NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
    )
}

impl WindowLimits {
    /// `share` of these limits, at least one call each.
    pub(crate) fn share(self, share: f64) -> Self {
        let part = |limit: NonZeroU32| {
            // Saturating float-to-int conversion; share is in (0, 1].
            let calls = (f64::from(limit.get()) * share).floor() as u32;
            NonZeroU32::new(calls).unwrap_or(NonZeroU32::MIN)
        };
        Self {
            per_minute: part(self.per_minute),
            per_hour: part(self.per_hour),
        }
    }
}

/// The minute and hour windows of one API in one scope.
struct ApiWindows {
    minute: Gcra,
    hour: Gcra,
}

impl ApiWindows {
    fn new(limits: WindowLimits) -> Self {
        Self {
            minute: window(limits.per_minute, Duration::from_secs(60)),
            hour: window(limits.per_hour, Duration::from_secs(3600)),
        }
    }

    /// The minute window first: governor has no peek, so a slot taken there is
    /// lost when the hour window refuses, which only errs on the safe side.
    fn try_spend(&self, scope: Scope) -> Result<(), NoSlot> {
        let clock = DefaultClock::default();
        let refused = |window, not_until: governor::NotUntil<_>| NoSlot {
            window,
            retry_after: not_until.wait_time_from(clock.now()),
        };
        self.minute
            .check()
            .map_err(|n| refused(scope.minute(), n))?;
        self.hour.check().map_err(|n| refused(scope.hour(), n))
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope {
    /// One corp's calls of one API.
    Corp,
    /// The whole gateway's calls of one API.
    Gateway,
}

impl Scope {
    pub(crate) fn minute(self) -> &'static str {
        match self {
            Scope::Corp => "per corp per minute",
            Scope::Gateway => "per gateway per minute",
        }
    }

    pub(crate) fn hour(self) -> &'static str {
        match self {
            Scope::Corp => "per corp per hour",
            Scope::Gateway => "per gateway per hour",
        }
    }
}

/// The windows of every limited API in one scope (a corp, or the gateway).
struct Windows(HashMap<Endpoint, ApiWindows>);

impl Windows {
    fn new(limits: WindowLimits) -> Self {
        let apis = Endpoint::LIMITED.iter();
        Self(apis.map(|&e| (e, ApiWindows::new(limits))).collect())
    }

    fn try_spend(&self, scope: Scope, endpoint: Endpoint) -> Result<(), NoSlot> {
        // Endpoints outside WeCom's per-API limits (gettoken) are not counted.
        self.0
            .get(&endpoint)
            .map_or(Ok(()), |windows| windows.try_spend(scope))
    }
}

/// The budget of one app in this process: its corp's windows, shared with the
/// corp's other apps, then the gateway's.
pub(crate) struct LocalBudget {
    corp: Arc<Windows>,
    gateway: Option<Arc<Windows>>,
}

impl fmt::Debug for LocalBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalBudget")
            .field("gateway_wide", &self.gateway.is_some())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl RateBudget for LocalBudget {
    async fn try_spend(&self, endpoint: Endpoint) -> Result<(), NoSlot> {
        self.corp.try_spend(Scope::Corp, endpoint)?;
        match &self.gateway {
            Some(gateway) => gateway.try_spend(Scope::Gateway, endpoint),
            None => Ok(()),
        }
    }
}

/// Hands out [`LocalBudget`]s: one set of windows per corp, one for the gateway.
pub(crate) struct LocalBudgets {
    limits: RateLimits,
    corps: HashMap<String, Arc<Windows>>,
    gateway: Option<Arc<Windows>>,
}

impl LocalBudgets {
    /// Budgets under `limits`.
    pub(crate) fn new(limits: RateLimits) -> Self {
        Self {
            gateway: limits.per_gateway.map(|l| Arc::new(Windows::new(l))),
            corps: HashMap::new(),
            limits,
        }
    }

    /// The budget of an app of `corp_id`: apps of one corp share it.
    pub(crate) fn for_corp(&mut self, corp_id: &str) -> LocalBudget {
        let per_corp = self.limits.per_corp;
        let corp = self
            .corps
            .entry(corp_id.to_owned())
            .or_insert_with(|| Arc::new(Windows::new(per_corp)));
        LocalBudget {
            corp: Arc::clone(corp),
            gateway: self.gateway.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_minute: u32, per_hour: u32) -> WindowLimits {
        WindowLimits {
            per_minute: NonZeroU32::new(per_minute).unwrap(),
            per_hour: NonZeroU32::new(per_hour).unwrap(),
        }
    }

    async fn admitted(budget: &LocalBudget, endpoint: Endpoint, tries: usize) -> usize {
        let mut admitted = 0;
        for _ in 0..tries {
            admitted += usize::from(budget.try_spend(endpoint).await.is_ok());
        }
        admitted
    }

    #[tokio::test]
    async fn a_burst_gets_a_tenth_of_the_minute_and_a_retry_delay() {
        let mut budgets = LocalBudgets::new(RateLimits {
            per_corp: limits(600, 100_000),
            per_gateway: None,
        });
        let budget = budgets.for_corp("ww1");
        assert_eq!(admitted(&budget, Endpoint::UpgradeService, 1000).await, 60);
        let refused = budget
            .try_spend(Endpoint::UpgradeService)
            .await
            .unwrap_err();
        assert_eq!(refused.window, "per corp per minute");
        // The other 540 slots of the minute come one every 60 s / 540.
        assert!(
            refused.retry_after <= Duration::from_millis(112),
            "{refused:?}"
        );
        assert!(refused.retry_after > Duration::ZERO);
        // Other APIs have windows of their own; gettoken is not limited here.
        assert_eq!(admitted(&budget, Endpoint::CancelUpgrade, 100).await, 60);
        assert_eq!(admitted(&budget, Endpoint::GetToken, 100).await, 100);
    }

    #[tokio::test]
    async fn apps_of_one_corp_share_its_budget_and_the_gateway_bounds_all_corps() {
        let mut budgets = LocalBudgets::new(RateLimits {
            per_corp: limits(100, 100_000),
            per_gateway: Some(limits(150, 100_000)),
        });
        let (a1, a2, b) = (
            budgets.for_corp("corp-a"),
            budgets.for_corp("corp-a"),
            budgets.for_corp("corp-b"),
        );
        let e = Endpoint::GetUpgradeConfig;
        assert_eq!(admitted(&a1, e, 8).await + admitted(&a2, e, 8).await, 10);
        // corp-b has its own 10, but the gateway's burst (15) has 5 left.
        assert_eq!(admitted(&b, e, 8).await, 5);
        let refused = b.try_spend(e).await.unwrap_err();
        assert_eq!(refused.window, "per gateway per minute");
    }

    #[tokio::test]
    async fn the_hour_window_refuses_when_the_minute_one_admits() {
        let mut budgets = LocalBudgets::new(RateLimits {
            per_corp: limits(1000, 20),
            per_gateway: None,
        });
        let budget = budgets.for_corp("ww1");
        assert_eq!(admitted(&budget, Endpoint::UpgradeService, 10).await, 2);
        let refused = budget
            .try_spend(Endpoint::UpgradeService)
            .await
            .unwrap_err();
        assert_eq!(refused.window, "per corp per hour");
        // 18 more slots in the hour: one every 200 s.
        assert!(
            refused.retry_after > Duration::from_secs(150),
            "{refused:?}"
        );
    }
}
