//! One app's access token, shared by all of its calls.
//!
//! One refresher task per app owns every fetch and publishes the token (or the
//! error that holds callers off) through a `watch` channel:
//! - single flight: however many callers find the cache cold or expired, they ask
//!   the refresher once and wait for its next publication, success or failure;
//! - refresh ahead: a token close to expiry is refreshed in the background while
//!   callers keep using it;
//! - compare-and-invalidate: a business call whose token was refused drops the
//!   published token only if it is still that token, so a burst of failures causes
//!   one refresh;
//! - no hammering: a failed fetch is published with a hold, a cool-down when WeCom
//!   refused the credentials, a jittered backoff when the failure was transient.
//!
//! The refresher is the single place that calls a [`TokenSource`]: where a fleet of
//! replicas coordinates (a source that shares the token through Redis), and where
//! other kinds of token plug in.

use std::{
    fmt,
    sync::{Arc, Weak},
    time::Duration,
};

use arc_swap::ArcSwapOption;
use tokio::{
    sync::{Notify, watch},
    task::AbortHandle,
    time::Instant,
};
use tracing::{Instrument, field::Empty};

use super::{AccessToken, IssuedToken, TokenSource};
use crate::{
    telemetry::{
        ErrorChain, Metrics,
        metrics::{Gone, TokenFetchOutcome},
    },
    wecom::{Endpoint, Error, Retry, TransportKind, retry::backoff},
};

/// How long tokens are kept and how failed fetches are held.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    /// Refresh this long before expiry, in the background, while callers keep the
    /// still-valid token. Capped at a quarter of the token's lifetime.
    pub refresh_ahead: Duration,
    /// Treat a token as expired this long before WeCom does, to absorb clock skew and
    /// request latency. Capped at a tenth of the token's lifetime.
    pub expiry_margin: Duration,
    /// After the source rejects the credentials (40001, 40013), answer callers with
    /// that error for this long instead of fetching again.
    pub credential_cooldown: Duration,
    /// After a transient failure, hold callers off at least this long (doubling,
    /// with jitter, up to `failure_backoff_max`) before the next fetch.
    pub failure_backoff: Duration,
    /// Longest hold after transient failures.
    pub failure_backoff_max: Duration,
}

/// Longest lifetime believed from a token source.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// One app's token, shared by all of its calls. Dropping it stops its refresher.
pub struct TokenCache {
    app: Arc<str>,
    shared: Arc<Shared>,
    refresher: AbortHandle,
}

/// What callers, the refresher and the metrics share.
struct Shared {
    /// The published state. Callers read it, and mark it when they need a fetch or
    /// drop a refused token; only the refresher publishes fetch outcomes.
    slot: watch::Sender<Slot>,
    /// `slot.current`, mirrored under the slot's lock whenever it changes: the
    /// fast path reads it without the lock, whose reader count every thread would
    /// otherwise write to on every call.
    current: ArcSwapOption<Cached>,
    /// Wakes the refresher; notified exactly when `slot.requested` turns true.
    wake: Notify,
}

#[derive(Default)]
struct Slot {
    current: Option<Cached>,
    /// The newest fetch failed. Until `until`, a caller without a valid token gets
    /// this error without a new fetch; a caller that waited for that fetch gets it
    /// whatever the time: it queued behind the fetch and shares its outcome.
    failed: Option<Held>,
    /// A fetch was asked for and its outcome is not published yet.
    requested: bool,
    /// What a fetch lacked (a suite ticket) arrived while it was under way: if
    /// it fails, it may have started too early to use it, so its failure is not
    /// held and the next caller fetches again at once.
    retry_asked: bool,
    /// WeCom refused this token, which was dropped; the source hears of it
    /// before the next fetch.
    refused: Option<AccessToken>,
}

#[derive(Clone)]
struct Cached {
    token: AccessToken,
    /// When the gateway stops using it (before WeCom's expiry, by the margin).
    expires_at: Instant,
    /// When a background refresh is due.
    refresh_at: Instant,
}

struct Held {
    error: Error,
    until: Instant,
}

/// Where a caller stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// It has not waited yet.
    Arriving,
    /// It waited for a publication, which has come.
    AfterPublication,
}

/// What a caller does after reading the slot.
enum Next {
    /// Take this answer.
    Take(Result<AccessToken, Error>),
    /// Take this token, and wake the refresher for the background refresh asked for.
    TakeAndWake(AccessToken),
    /// Wake the refresher for the fetch this caller asked for, then wait for it.
    WakeAndWait,
    /// Wait for the fetch someone else asked for.
    Wait,
}

impl Shared {
    /// Mirrors the slot's current token for the fast path; called under the
    /// slot's lock, so the mirror changes in the order the slot does.
    fn mirror(&self, slot: &Slot) {
        self.current.store(slot.current.clone().map(Arc::new));
    }

    fn remaining(&self) -> Option<Duration> {
        let slot = self.slot.borrow();
        let cached = slot.current.as_ref()?;
        Some(cached.expires_at.saturating_duration_since(Instant::now()))
    }
}

// === impl Slot ===

impl Slot {
    /// A valid token other than `avoid`, if there is one.
    fn fresh(&self, now: Instant, avoid: Option<&AccessToken>) -> Option<&Cached> {
        self.current
            .as_ref()
            .filter(|c| now < c.expires_at && Some(&c.token) != avoid)
    }

    /// Decides for a caller, asking for a fetch when one is needed and none is
    /// asked for yet.
    fn next(&mut self, now: Instant, avoid: Option<&AccessToken>, turn: Turn) -> Next {
        if turn == Turn::AfterPublication
            && let Some(held) = &self.failed
        {
            return Next::Take(Err(held.error.clone()));
        }
        if let Some(cached) = self.fresh(now, avoid) {
            let token = cached.token.clone();
            if now >= cached.refresh_at && !self.requested {
                self.requested = true;
                return Next::TakeAndWake(token);
            }
            return Next::Take(Ok(token));
        }
        if let Some(held) = &self.failed
            && now < held.until
        {
            return Next::Take(Err(held.error.clone()));
        }
        if std::mem::replace(&mut self.requested, true) {
            Next::Wait
        } else {
            Next::WakeAndWait
        }
    }
}

// === impl TokenCache ===

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

impl Drop for TokenCache {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

impl TokenCache {
    /// A cold cache for `app`, whose refresher task starts now (in the current
    /// Tokio runtime). Transient failures of `source` are retried by `retry`
    /// inside the fetch, before callers see them. Fetches are counted in
    /// `metrics`, which also reports the time left on the token at each scrape.
    pub fn new(
        app: impl Into<Arc<str>>,
        source: Arc<dyn TokenSource>,
        policy: TokenPolicy,
        retry: Retry,
        metrics: &Metrics,
    ) -> Self {
        let app = app.into();
        let shared = Arc::new(Shared {
            slot: watch::Sender::new(Slot::default()),
            current: ArcSwapOption::empty(),
            wake: Notify::new(),
        });
        let watched = Arc::downgrade(&shared);
        metrics.watch_token_expiry(&app, move || {
            Weak::upgrade(&watched)
                .map(|shared| shared.remaining())
                .ok_or(Gone)
        });
        let refresher = Refresher {
            app: Arc::clone(&app),
            source,
            policy,
            retry,
            shared: Arc::clone(&shared),
            failures: 0,
            metrics: metrics.clone(),
        };
        let refresher = tokio::spawn(refresher.run()).abort_handle();
        Self {
            app,
            shared,
            refresher,
        }
    }

    /// A valid token: the published one, or the next one the refresher fetches.
    pub async fn get(&self) -> Result<AccessToken, Error> {
        self.token_other_than(None).await
    }

    /// WeCom refused `refused`: drops it if it is still the published token
    /// (compare-and-invalidate) and returns a valid token other than it. A token
    /// fetched meanwhile is shared; only if that is `refused` again is another
    /// fetch made.
    pub async fn replace(&self, refused: &AccessToken) -> Result<AccessToken, Error> {
        self.invalidate(refused);
        self.token_other_than(Some(refused)).await
    }

    /// Drops the published token if it is still `failed`: WeCom refused it. A
    /// token that was already replaced stays, so concurrent failures cause one
    /// refresh. Returns whether the token was dropped.
    pub(crate) fn invalidate(&self, failed: &AccessToken) -> bool {
        let mut dropped = false;
        // Silent: nobody waits for a token to disappear, only for one to arrive.
        self.shared.slot.send_if_modified(|slot| {
            dropped = slot.current.as_ref().is_some_and(|c| &c.token == failed);
            if dropped {
                slot.current = None;
                slot.refused = Some(failed.clone());
                self.shared.mirror(slot);
            }
            false
        });
        if dropped {
            tracing::info!(app = %self.app, "access token refused by WeCom; dropped from the cache");
        }
        dropped
    }

    /// Ends the hold of a failed fetch: what it lacked (a suite ticket) has come,
    /// so the next caller without a token starts a fetch at once instead of
    /// getting the held error until the backoff ends; a fetch under way that
    /// fails is not held either. A cool-down after refused credentials stays: a
    /// new ticket does not fix a wrong secret.
    pub(crate) fn retry_now(&self) {
        let now = Instant::now();
        self.shared.slot.send_if_modified(|slot| {
            if slot.requested {
                slot.retry_asked = true;
            }
            if let Some(held) = slot
                .failed
                .as_mut()
                .filter(|held| !held.error.is_credential_rejection())
            {
                held.until = held.until.min(now);
                // A background refresh that failed is due again too.
                if let Some(current) = slot.current.as_mut() {
                    current.refresh_at = current.refresh_at.min(now);
                    self.shared.mirror(slot);
                }
            }
            false
        });
    }

    /// Time left before the published token is dropped, if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.shared.remaining()
    }

    async fn token_other_than(&self, refused: Option<&AccessToken>) -> Result<AccessToken, Error> {
        // The fast path: a fresh token, no refresh due, read without a lock.
        let now = Instant::now();
        if let Some(cached) = &*self.shared.current.load()
            && now < cached.expires_at
            && now < cached.refresh_at
            && Some(&cached.token) != refused
        {
            return Ok(cached.token.clone());
        }
        let mut published = self.shared.slot.subscribe();
        let mut avoid = refused;
        let mut turn = Turn::Arriving;
        loop {
            let mut next = Next::Wait;
            self.shared.slot.send_if_modified(|slot| {
                // Under the channel's lock, where versions change: any publication
                // after this read wakes the wait below.
                published.mark_unchanged();
                next = slot.next(Instant::now(), avoid, turn);
                false
            });
            let asked = match next {
                Next::Take(result) => return result,
                Next::TakeAndWake(token) => {
                    self.shared.wake.notify_one();
                    return Ok(token);
                }
                Next::WakeAndWait => {
                    self.shared.wake.notify_one();
                    true
                }
                Next::Wait => false,
            };
            // `self` holds the sender, so the channel cannot close under us; an
            // error all the same rather than a loop or a panic.
            if published.changed().await.is_err() {
                return Err(unfinished("the token cache was closed"));
            }
            turn = Turn::AfterPublication;
            if asked {
                // No fetch was under way when this caller asked, so the publication
                // is its own fetch, started after the refusal: its token is the
                // answer even if WeCom handed out the refused one again.
                avoid = None;
            }
        }
    }
}

/// The error for a fetch that did not finish.
fn unfinished(why: &'static str) -> Error {
    Error::Transport {
        endpoint: Endpoint::GetToken,
        kind: TransportKind::Other,
        cause: Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(why)),
    }
}

// === impl Refresher ===

/// The task that owns an app's fetches.
struct Refresher {
    app: Arc<str>,
    source: Arc<dyn TokenSource>,
    policy: TokenPolicy,
    retry: Retry,
    shared: Arc<Shared>,
    /// Fetches failed in a row, for the backoff.
    failures: u32,
    metrics: Metrics,
}

impl Refresher {
    async fn run(mut self) {
        loop {
            self.shared.wake.notified().await;
            let mut refused = None;
            self.shared.slot.send_if_modified(|slot| {
                refused = slot.refused.take();
                false
            });
            // The fetch's own trace: it serves every caller waiting, not one.
            let span = tracing::debug_span!(
                "wecom.token_fetch",
                wecom.app = &*self.app,
                wecom.token.outcome = Empty,
                wecom.errcode = Empty,
                otel.status_code = Empty,
            );
            let fetch =
                fetch(Arc::clone(&self.source), self.retry, refused).instrument(span.clone());
            // A panicking source fails this fetch, not the refresher.
            let result = tokio::spawn(fetch)
                .await
                .unwrap_or_else(|_| Err(unfinished("the token source panicked")));
            let outcome = match &result {
                Ok(_) => TokenFetchOutcome::Ok,
                Err(error) if error.is_credential_rejection() => {
                    TokenFetchOutcome::CredentialsRejected
                }
                Err(_) => TokenFetchOutcome::Error,
            };
            span.record("wecom.token.outcome", outcome.as_str());
            if let Err(error) = &result {
                span.record("otel.status_code", "error");
                if let Some(errcode) = error.errcode() {
                    span.record("wecom.errcode", errcode);
                }
            }
            self.metrics.token_fetched(&self.app, outcome);
            self.publish(result);
        }
    }

    /// Publishes a fetch's outcome to every waiting caller, and logs it.
    fn publish(&mut self, result: Result<IssuedToken, Error>) {
        let now = Instant::now();
        match result {
            Ok(issued) => {
                self.failures = 0;
                let lifetime = issued.expires_in.min(MAX_TOKEN_LIFETIME);
                self.shared.slot.send_modify(|slot| {
                    slot.current = Some(self.cached(slot, issued.token, lifetime, now));
                    slot.failed = None;
                    slot.requested = false;
                    self.shared.mirror(slot);
                    slot.retry_asked = false;
                });
                tracing::info!(app = %self.app, expires_in_secs = lifetime.as_secs(), "access token fetched");
            }
            Err(error) => {
                self.failures = self.failures.saturating_add(1);
                let mut wait = if error.is_credential_rejection() {
                    self.policy.credential_cooldown
                } else {
                    backoff(
                        self.policy.failure_backoff,
                        self.failures,
                        self.policy.failure_backoff_max,
                    )
                };
                let mut kept = false;
                self.shared.slot.send_modify(|slot| {
                    slot.requested = false;
                    if std::mem::take(&mut slot.retry_asked) && !error.is_credential_rejection() {
                        wait = Duration::ZERO;
                    }
                    slot.failed = Some(Held {
                        error: error.clone(),
                        until: now + wait,
                    });
                    // A background refresh failed: keep serving the valid token, try later.
                    if let Some(current) = slot.current.as_mut().filter(|c| now < c.expires_at) {
                        current.refresh_at = now + wait;
                        kept = true;
                        self.shared.mirror(slot);
                    }
                });
                tracing::warn!(
                    app = %self.app,
                    error = %ErrorChain(&error),
                    failures = self.failures,
                    retry_in_ms = wait.as_millis() as u64,
                    kept_valid_token = kept,
                    "access token fetch failed"
                );
            }
        }
    }

    /// How long a newly fetched token is used, and when it is refreshed.
    fn cached(&self, slot: &Slot, token: AccessToken, lifetime: Duration, now: Instant) -> Cached {
        let renewed = slot.current.as_ref().is_some_and(|c| c.token == token);
        if renewed {
            // WeCom hands out the same token while it is valid, with the time it has
            // left. Refreshing it again would only get it again: use it to its end,
            // where a 42001 makes WeCom issue the next one.
            return Cached {
                token,
                expires_at: now + lifetime,
                refresh_at: now + lifetime,
            };
        }
        let margin = self.policy.expiry_margin.min(lifetime / 10);
        let ahead = self.policy.refresh_ahead.min(lifetime / 4);
        let expires_at = now + lifetime - margin;
        Cached {
            token,
            expires_at,
            refresh_at: expires_at - ahead,
        }
    }
}

/// One fetch, with bounded retries of transient failures, after telling the
/// source of the token WeCom refused, if any.
async fn fetch(
    source: Arc<dyn TokenSource>,
    retry: Retry,
    refused: Option<AccessToken>,
) -> Result<IssuedToken, Error> {
    if let Some(refused) = refused {
        source.refused(&refused).await;
    }
    let mut retries = 0;
    loop {
        match source.fetch(retries + 1).await {
            Err(error) => {
                retries += 1;
                if !retry.pause_before(retries, &error).await {
                    return Err(error);
                }
            }
            issued => return issued,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    };

    /// The defaults the configuration documents.
    fn policy() -> TokenPolicy {
        TokenPolicy {
            refresh_ahead: Duration::from_secs(300),
            expiry_margin: Duration::from_secs(30),
            credential_cooldown: Duration::from_secs(60),
            failure_backoff: Duration::from_millis(500),
            failure_backoff_max: Duration::from_secs(30),
        }
    }

    /// A source that counts fetches and answers from a script.
    #[derive(Debug)]
    struct Scripted {
        calls: AtomicUsize,
        delay: Duration,
        expires_in: Duration,
        /// Fail this many of the next fetches with this error.
        failures: Mutex<Option<(Error, usize)>>,
    }

    impl Scripted {
        fn new(expires_in: Duration) -> Arc<Self> {
            Arc::new(Self {
                calls: AtomicUsize::new(0),
                delay: Duration::from_millis(50),
                expires_in,
                failures: Mutex::new(None),
            })
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
        fn fail_next(&self, times: usize, errcode: i64) {
            *self.failures.lock().unwrap() = Some((api_error(Endpoint::GetToken, errcode), times));
        }
    }

    #[async_trait]
    impl TokenSource for Scripted {
        async fn fetch(&self, _attempt: u32) -> Result<IssuedToken, Error> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(self.delay).await;
            if let Some((error, times)) = self.failures.lock().unwrap().as_mut()
                && *times > 0
            {
                *times -= 1;
                return Err(error.clone());
            }
            Ok(IssuedToken {
                token: AccessToken::new(format!("token-{n}")),
                expires_in: self.expires_in,
            })
        }
    }

    const RETRY: Retry = Retry {
        max_retries: 2,
        backoff: Duration::from_millis(100),
    };

    fn cache(source: Arc<dyn TokenSource>) -> Arc<TokenCache> {
        Arc::new(TokenCache::new(
            "test",
            source,
            policy(),
            RETRY,
            &Metrics::new(),
        ))
    }

    /// `n` callers at once; their results in order.
    async fn concurrent_gets(cache: &Arc<TokenCache>, n: usize) -> Vec<Result<AccessToken, Error>> {
        let calls: Vec<_> = (0..n)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get().await })
            })
            .collect();
        let mut results = Vec::with_capacity(n);
        for call in calls {
            results.push(call.await.unwrap());
        }
        results
    }

    fn api_error(endpoint: Endpoint, errcode: i64) -> Error {
        Error::Api {
            endpoint,
            errcode,
            errmsg: "scripted".into(),
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_on_a_cold_cache_share_one_fetch() {
        let source = Scripted::new(HOUR);
        let cache = cache(source.clone());
        for result in concurrent_gets(&cache, 500).await {
            assert_eq!(result.unwrap().expose(), "token-1");
        }
        assert_eq!(source.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_now_ends_a_backoff_but_not_a_credential_cooldown() {
        let source = Scripted::new(HOUR);
        let cache = cache(source.clone());
        // A failure that is not the credentials' (40085, a stale suite ticket): held
        // for the backoff, which retry_now ends.
        source.fail_next(1, 40085);
        assert!(cache.get().await.is_err());
        assert!(cache.get().await.is_err(), "held: no new fetch");
        assert_eq!(source.calls(), 1);
        cache.retry_now();
        assert_eq!(cache.get().await.unwrap().expose(), "token-2");

        let source = Scripted::new(HOUR);
        let cache = self::cache(source.clone());
        source.fail_next(1, 40001);
        assert!(cache.get().await.is_err());
        cache.retry_now();
        assert!(cache.get().await.is_err(), "still cooling down");
        assert_eq!(source.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_now_during_a_fetch_that_fails_leaves_no_hold() {
        for (errcode, held) in [(40085, false), (40001, true)] {
            let source = Scripted::new(HOUR);
            let cache = cache(source.clone());
            source.fail_next(1, errcode);
            let first = tokio::spawn({
                let cache = Arc::clone(&cache);
                async move { cache.get().await }
            });
            // The fetch is under way (it takes 50 ms) when the ticket arrives.
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(source.calls(), 1);
            cache.retry_now();
            assert!(first.await.unwrap().is_err(), "{errcode}: the fetch fails");
            let next = cache.get().await;
            if held {
                assert!(next.is_err(), "{errcode}: a cool-down stays");
                assert_eq!(source.calls(), 1);
            } else {
                assert_eq!(
                    next.unwrap().expose(),
                    "token-2",
                    "{errcode}: fetched at once"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_token_is_fetched_again_once() {
        let source = Scripted::new(Duration::from_secs(100));
        let cache = cache(source.clone());
        assert_eq!(cache.get().await.unwrap().expose(), "token-1");
        // Expiry is at 90% of the lifetime (margin of a tenth), so 95 s is past it.
        tokio::time::advance(Duration::from_secs(95)).await;
        for result in concurrent_gets(&cache, 50).await {
            assert_eq!(result.unwrap().expose(), "token-2");
        }
        assert_eq!(source.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_near_expiry_is_refreshed_in_the_background_while_still_served() {
        let source = Scripted::new(HOUR);
        let cache = cache(source.clone());
        cache.get().await.unwrap();
        // Expiry at 3600 - 30 s, refresh due 300 s before that.
        tokio::time::advance(Duration::from_secs(3600 - 30 - 299)).await;
        assert_eq!(
            cache.get().await.unwrap().expose(),
            "token-1",
            "served at once"
        );
        assert_eq!(cache.get().await.unwrap().expose(), "token-1");
        tokio::time::sleep(Duration::from_millis(100)).await; // the refresh's fetch takes 50 ms
        assert_eq!(cache.get().await.unwrap().expose(), "token-2");
        assert_eq!(
            source.calls(),
            2,
            "one background refresh for all those calls"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn invalidation_only_drops_the_token_that_failed() {
        let source = Scripted::new(HOUR);
        let cache = cache(source.clone());
        let first = cache.get().await.unwrap();
        assert!(cache.invalidate(&first));
        let second = cache.get().await.unwrap();
        assert_eq!(second.expose(), "token-2");
        // A late failure report for the first token must not drop the second.
        assert!(!cache.invalidate(&first));
        assert_eq!(cache.get().await.unwrap(), second);
        assert_eq!(source.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn rejected_credentials_are_held_for_the_cool_down() {
        let source = Scripted::new(HOUR);
        source.fail_next(usize::MAX, 40001);
        let cache = cache(source.clone());
        for _ in 0..20 {
            let error = cache.get().await.unwrap_err();
            assert!(error.is_credential_rejection());
        }
        assert_eq!(
            source.calls(),
            1,
            "one gettoken for twenty callers, not retried"
        );
        source.fail_next(0, 40001);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(cache.get().await.unwrap().expose(), "token-2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_is_retried_inside_the_single_flight() {
        let source = Scripted::new(HOUR);
        source.fail_next(1, -1);
        let cache = cache(source.clone());
        for result in concurrent_gets(&cache, 20).await {
            assert_eq!(result.unwrap().expose(), "token-2");
        }
        assert_eq!(
            source.calls(),
            2,
            "one failure, one retry, for twenty callers"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn persistent_transient_failures_are_held_then_tried_again() {
        let source = Scripted::new(HOUR);
        source.fail_next(usize::MAX, -1);
        let cache = cache(source.clone());
        assert!(cache.get().await.is_err());
        assert_eq!(source.calls(), 3, "the fetch and its two retries");
        assert!(cache.get().await.is_err());
        assert_eq!(source.calls(), 3, "the next caller got the held error");
        tokio::time::advance(Duration::from_millis(600)).await; // the first hold is at most 500 ms
        assert!(cache.get().await.is_err());
        assert_eq!(source.calls(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_background_refresh_keeps_the_valid_token() {
        let source = Scripted::new(HOUR);
        let cache = cache(source.clone());
        cache.get().await.unwrap();
        source.fail_next(usize::MAX, -1);
        tokio::time::advance(Duration::from_secs(3600 - 30 - 100)).await;
        assert_eq!(cache.get().await.unwrap().expose(), "token-1");
        tokio::time::sleep(Duration::from_secs(5)).await; // the refresh and its retries end
        assert_eq!(
            source.calls(),
            4,
            "the first fetch, then one refresh with two retries"
        );
        assert_eq!(
            cache.get().await.unwrap().expose(),
            "token-1",
            "still valid, still served"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_now_after_a_failed_background_refresh_refreshes_at_once() {
        let source = Scripted::new(HOUR);
        let cache = cache(source.clone());
        cache.get().await.unwrap();
        source.fail_next(usize::MAX, -1);
        tokio::time::advance(Duration::from_secs(3600 - 30 - 100)).await;
        cache.get().await.unwrap(); // starts the background refresh, which fails
        tokio::time::sleep(Duration::from_secs(1)).await;
        let calls = source.calls();
        // The token is kept and its next refresh put off by the backoff (at least
        // 500 ms, far more after the retries); what it lacked has come meanwhile.
        *source.failures.lock().unwrap() = None;
        cache.retry_now();
        assert_eq!(
            cache.get().await.unwrap().expose(),
            "token-1",
            "still served"
        );
        tokio::time::sleep(Duration::from_millis(60)).await; // one fetch: 50 ms
        assert_eq!(
            source.calls(),
            calls + 1,
            "refreshed at once, not after the backoff"
        );
        assert_eq!(
            cache.get().await.unwrap().expose(),
            format!("token-{}", calls + 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn callers_that_give_up_do_not_cancel_the_shared_fetch() {
        let source = Scripted::new(HOUR); // each fetch takes 50 ms
        let cache = cache(source.clone());
        let impatient: Vec<_> = (0..50)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    tokio::time::timeout(Duration::from_millis(10), cache.get()).await
                })
            })
            .collect();
        for caller in impatient {
            assert!(
                caller.await.unwrap().is_err(),
                "the caller's own deadline passed"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(cache.get().await.unwrap().expose(), "token-1");
        assert_eq!(source.calls(), 1, "fifty impatient callers, one gettoken");
    }

    #[tokio::test(start_paused = true)]
    async fn callers_queued_behind_a_failed_fetch_share_its_failure_even_without_a_hold() {
        let source = Scripted::new(HOUR);
        source.fail_next(usize::MAX, 40001);
        let settings = TokenPolicy {
            credential_cooldown: Duration::ZERO,
            ..policy()
        };
        let cache = Arc::new(TokenCache::new(
            "test",
            source.clone(),
            settings,
            RETRY,
            &Metrics::new(),
        ));
        for result in concurrent_gets(&cache, 20).await {
            assert!(result.is_err());
        }
        assert_eq!(source.calls(), 1);
    }

    /// Like WeCom: while a token is valid, `gettoken` returns it again with the time
    /// it has left.
    #[derive(Debug, Default)]
    struct WeComLike {
        calls: AtomicUsize,
        issued: Mutex<Option<(usize, Instant)>>,
    }

    #[async_trait]
    impl TokenSource for WeComLike {
        async fn fetch(&self, _attempt: u32) -> Result<IssuedToken, Error> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let mut issued = self.issued.lock().unwrap();
            let lifetime = Duration::from_secs(7200);
            let (id, at) = match *issued {
                Some((id, at)) if at.elapsed() < lifetime => (id, at),
                _ => *issued.insert((n, Instant::now())),
            };
            Ok(IssuedToken {
                token: AccessToken::new(format!("token-{id}")),
                expires_in: Duration::from_secs((lifetime - at.elapsed()).as_secs().max(1)),
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_wecom_hands_out_again_is_used_to_its_end_not_refetched() {
        let source = Arc::new(WeComLike::default());
        let cache = cache(source.clone());
        // A call every 10 s for a little more than one lifetime.
        for _ in 0..740 {
            cache.get().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        // The first fetch, one refresh ahead of expiry (which gets the same token),
        // and one fetch once WeCom's lifetime is over.
        assert_eq!(source.calls.load(Ordering::SeqCst), 3);
        assert_eq!(cache.get().await.unwrap().expose(), "token-3");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_token_that_the_requested_fetch_hands_out_again_is_used() {
        // WeCom returns the same token while it is valid, even right after a call
        // was refused with it (a 40014 from a proxy, say): one fetch, then the call
        // retries with what it got.
        let source = Arc::new(WeComLike::default());
        let cache = cache(source.clone());
        let first = cache.get().await.unwrap();
        let again = cache.replace(&first).await.unwrap();
        assert_eq!(again, first);
        assert_eq!(source.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn replacing_a_token_already_replaced_makes_no_fetch() {
        let source = Scripted::new(HOUR);
        let cache = cache(source.clone());
        let first = cache.get().await.unwrap();
        let second = cache.replace(&first).await.unwrap();
        // A late refusal of the first token takes the second as it is.
        assert_eq!(cache.replace(&first).await.unwrap(), second);
        assert_eq!(source.calls(), 2);
    }

    /// Always the same token, each fetch taking 50 ms; panics on the fetches listed.
    #[derive(Debug, Default)]
    struct Same {
        calls: AtomicUsize,
        panic_on: Vec<usize>,
    }

    #[async_trait]
    impl TokenSource for Same {
        async fn fetch(&self, _attempt: u32) -> Result<IssuedToken, Error> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!self.panic_on.contains(&n), "scripted panic");
            Ok(IssuedToken {
                token: AccessToken::new("same"),
                expires_in: HOUR,
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_fetch_already_under_way_cannot_hand_back_the_refused_token() {
        let source = Arc::new(Same::default());
        let cache = cache(source.clone());
        let refused = cache.get().await.unwrap();
        tokio::time::advance(Duration::from_secs(3600 - 30 - 299)).await;
        cache.get().await.unwrap(); // starts a background refresh
        // Refused while that refresh, which will bring back the same token, runs: the
        // caller does not take its outcome but asks for a fetch of its own.
        let again = cache.replace(&refused).await.unwrap();
        assert_eq!(again, refused, "what its own fetch brought is used");
        assert_eq!(source.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_source_fails_one_fetch_and_the_next_one_succeeds() {
        let source = Arc::new(Same {
            panic_on: vec![1],
            ..Same::default()
        });
        let cache = cache(source.clone());
        let error = cache.get().await.unwrap_err();
        assert!(matches!(error, Error::Transport { .. }), "{error:?}");
        tokio::time::advance(Duration::from_millis(600)).await; // past the first hold
        assert_eq!(cache.get().await.unwrap().expose(), "same");
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_cache_stops_its_refresher() {
        let source = Arc::new(Same::default());
        let cache = TokenCache::new("test", source.clone(), policy(), RETRY, &Metrics::new());
        cache.get().await.unwrap();
        assert_eq!(
            Arc::strong_count(&source),
            2,
            "the refresher holds the source"
        );
        drop(cache);
        tokio::task::yield_now().await;
        assert_eq!(Arc::strong_count(&source), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_absurd_expires_in_is_capped_not_overflowed() {
        let source = Scripted::new(Duration::from_secs(u64::MAX));
        let cache = cache(source.clone());
        assert_eq!(cache.get().await.unwrap().expose(), "token-1");
        assert!(cache.remaining().unwrap() <= MAX_TOKEN_LIFETIME);
    }
}
