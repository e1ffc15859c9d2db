//! Access tokens: where they come from ([`TokenSource`]) and how they are shared
//! ([`TokenCache`]).
//!
//! The cache is where WeCom SDKs usually go wrong, so it spells out its rules:
//! - single-flight: however many callers find the cache cold or expired, one fetch runs;
//!   the others wait for it and share its result, success or failure;
//! - refresh ahead: a token close to expiry is refreshed in the background while
//!   callers keep using it;
//! - compare-and-invalidate: a business call whose token was refused drops the cached
//!   token only if it is still that token, so a burst of failures causes one refresh;
//! - no hammering: a failed fetch is remembered, for a cool-down when WeCom refused
//!   the credentials, for a jittered backoff when the failure was transient.

use std::{
    fmt,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::{
    Endpoint, Error, Retry, Transport, TransportKind, api::TokenAnswer, backoff, transport::Call,
};
use crate::config::TokenSettings;

/// An access token. Its `Debug` is redacted and it has no `Display`, so it cannot
/// reach a log by accident; [`AccessToken::expose`] is for building the request only.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(Arc<str>);

impl AccessToken {
    /// Wraps a token string.
    pub fn new(token: impl Into<Arc<str>>) -> Self {
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
/// third-party suite's `get_corp_token` or an external token service would plug in here.
#[async_trait]
pub trait TokenSource: Send + Sync + fmt::Debug {
    /// Fetches a new token.
    async fn fetch(&self) -> Result<IssuedToken, Error>;
}

/// `GET /cgi-bin/gettoken?corpid=…&corpsecret=…`.
pub struct GetToken {
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
    async fn fetch(&self) -> Result<IssuedToken, Error> {
        let answer: TokenAnswer = self
            .transport
            .send(Call {
                endpoint: Endpoint::GetToken,
                query: &[
                    ("corpid", &self.corp_id),
                    ("corpsecret", self.secret.expose_secret()),
                ],
                body: None,
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

// === impl TokenCache ===

/// Longest lifetime believed from a token source.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// One app's token, shared by all of its calls.
pub struct TokenCache {
    app: String,
    source: Arc<dyn TokenSource>,
    settings: TokenSettings,
    retry: Retry,
    /// Guarded by a plain mutex: held for a few instructions, never across an await,
    /// and never while logging.
    state: Mutex<State>,
    /// Held while a fetch runs: the single flight.
    fetching: tokio::sync::Mutex<()>,
    /// A background refresh is scheduled or running.
    refreshing: AtomicBool,
}

#[derive(Default)]
struct State {
    current: Option<Cached>,
    /// The last fetch failed: callers get this error, without a new fetch, until
    /// `until`. Kept (past `until`) until a fetch succeeds.
    failed: Option<Held>,
    /// Fetch failures in a row, for the backoff.
    failures: u32,
    /// Finished fetches, so that callers that queued behind a fetch take its outcome
    /// instead of starting another, however short the hold.
    generation: u64,
}

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

enum Lookup {
    Fresh(AccessToken),
    /// Valid, but a background refresh is due.
    RefreshDue(AccessToken),
    Held(Error),
    /// No usable token; the generation seen.
    Missing(u64),
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("app", &self.app)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// A cold cache for `app`. Transient `gettoken` failures are retried inside the
    /// single flight, by `retry`, before callers see them.
    pub fn new(
        app: impl Into<String>,
        source: Arc<dyn TokenSource>,
        settings: TokenSettings,
        retry: Retry,
    ) -> Self {
        Self {
            app: app.into(),
            source,
            settings,
            retry,
            state: Mutex::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
            refreshing: AtomicBool::new(false),
        }
    }

    /// A valid token: the cached one, or one fetched now by exactly one of the
    /// callers that found the cache cold.
    pub async fn get(self: &Arc<Self>) -> Result<AccessToken, Error> {
        self.get_avoiding(None).await
    }

    /// WeCom refused `refused`: drops it if it is still cached (compare-and-invalidate)
    /// and returns a valid token other than it. A token fetched meanwhile is shared;
    /// only if that is `refused` again is another fetch made.
    pub async fn replace(self: &Arc<Self>, refused: &AccessToken) -> Result<AccessToken, Error> {
        self.invalidate(refused);
        self.get_avoiding(Some(refused.clone())).await
    }

    async fn get_avoiding(
        self: &Arc<Self>,
        refused: Option<AccessToken>,
    ) -> Result<AccessToken, Error> {
        let generation = self.state().generation;
        let seen = match self.lookup() {
            Lookup::Fresh(token) | Lookup::RefreshDue(token)
                if Some(&token) == refused.as_ref() =>
            {
                generation
            }
            Lookup::Fresh(token) => return Ok(token),
            Lookup::RefreshDue(token) => {
                self.refresh_in_background();
                return Ok(token);
            }
            Lookup::Held(error) => return Err(error),
            Lookup::Missing(generation) => generation,
        };
        // The flight runs in a task of its own: a caller that gives up (its deadline
        // passed, it cancelled) does not cancel the fetch others wait for, and the
        // fetch's outcome is always recorded, so a failure is held, not retried at once.
        let cache = Arc::clone(self);
        tokio::spawn(async move { cache.fly(seen, refused).await })
            .await
            .unwrap_or_else(|_| {
                // Only a runtime shutting down cancels the task; nothing in it panics.
                Err(Error::Transport {
                    endpoint: Endpoint::GetToken,
                    kind: TransportKind::Other,
                    detail: "the token fetch was cancelled".to_owned(),
                })
            })
    }

    /// Joins the single flight: fetches, unless a fetch finished while we waited
    /// (with a token other than `refused`).
    async fn fly(&self, seen: u64, refused: Option<AccessToken>) -> Result<AccessToken, Error> {
        let _flight = self.fetching.lock().await;
        match self.outcome_since(seen) {
            Some(Ok(token)) if Some(&token) == refused.as_ref() => {}
            Some(outcome) => return outcome,
            None => {}
        }
        let result = self.fetch().await;
        self.record(result, false)
    }

    /// One fetch, with bounded retries of transient failures.
    async fn fetch(&self) -> Result<IssuedToken, Error> {
        let mut retries = 0;
        loop {
            match self.source.fetch().await {
                Err(error) => {
                    retries += 1;
                    if !self.retry.pause_before(retries, &error).await {
                        return Err(error);
                    }
                }
                issued => return issued,
            }
        }
    }

    /// Drops the cached token if it is still `failed`: WeCom refused it. A token
    /// that was already replaced stays, so concurrent failures cause one refresh.
    /// Returns whether the token was dropped.
    pub fn invalidate(&self, failed: &AccessToken) -> bool {
        let dropped = {
            let mut state = self.state();
            let is_current = state.current.as_ref().is_some_and(|c| &c.token == failed);
            if is_current {
                state.current = None;
            }
            is_current
        };
        if dropped {
            tracing::info!(app = %self.app, "access token refused by WeCom; dropped from the cache");
        }
        dropped
    }

    /// Time left before the cached token is dropped, if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        let state = self.state();
        state
            .current
            .as_ref()
            .map(|c| c.expires_at.saturating_duration_since(Instant::now()))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something ever did, the state is
        // still a valid cache (at worst a stale token, which WeCom refuses and we retry).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lookup(&self) -> Lookup {
        let now = Instant::now();
        let state = self.state();
        match &state.current {
            Some(c) if now < c.expires_at && now < c.refresh_at => Lookup::Fresh(c.token.clone()),
            Some(c) if now < c.expires_at => Lookup::RefreshDue(c.token.clone()),
            _ => match &state.failed {
                Some(held) if now < held.until => Lookup::Held(held.error.clone()),
                _ => Lookup::Missing(state.generation),
            },
        }
    }

    /// The outcome of the newest fetch, if one finished after generation `seen`.
    fn outcome_since(&self, seen: u64) -> Option<Result<AccessToken, Error>> {
        let state = self.state();
        if state.generation == seen {
            return None;
        }
        match (&state.current, &state.failed) {
            (Some(c), _) if Instant::now() < c.expires_at => Some(Ok(c.token.clone())),
            (_, Some(held)) => Some(Err(held.error.clone())),
            // It succeeded, and its token has since been refused or has expired.
            _ => None,
        }
    }

    /// Stores what a fetch produced and returns it to the fetching caller.
    fn record(
        &self,
        result: Result<IssuedToken, Error>,
        background: bool,
    ) -> Result<AccessToken, Error> {
        let now = Instant::now();
        let mut guard = self.state();
        let state = &mut *guard;
        state.generation = state.generation.wrapping_add(1);
        match result {
            Ok(issued) => {
                // WeCom says 7200 s; a larger figure is a broken upstream, and an
                // enormous one would overflow the clock.
                let lifetime = issued.expires_in.min(MAX_TOKEN_LIFETIME);
                let renewed = state
                    .current
                    .as_ref()
                    .is_some_and(|c| c.token == issued.token);
                let (expires_at, refresh_at) = if renewed {
                    // WeCom hands out the same token while it is valid, with the time
                    // it has left. Refreshing it again would only get it again: use it
                    // to its end, where a 42001 makes WeCom issue the next one.
                    (now + lifetime, now + lifetime)
                } else {
                    let margin =
                        Duration::from_secs(self.settings.expiry_margin_secs).min(lifetime / 10);
                    let ahead =
                        Duration::from_secs(self.settings.refresh_ahead_secs).min(lifetime / 4);
                    let expires_at = now + lifetime - margin;
                    (expires_at, expires_at - ahead)
                };
                state.current = Some(Cached {
                    token: issued.token.clone(),
                    expires_at,
                    refresh_at,
                });
                state.failed = None;
                state.failures = 0;
                drop(guard);
                tracing::info!(
                    app = %self.app,
                    expires_in_secs = lifetime.as_secs(),
                    background,
                    "access token fetched"
                );
                Ok(issued.token)
            }
            Err(error) => {
                state.failures = state.failures.saturating_add(1);
                let failures = state.failures;
                let wait = if error.is_credential_rejection() {
                    Duration::from_secs(self.settings.credential_cooldown_secs)
                } else {
                    backoff(
                        Duration::from_millis(self.settings.failure_backoff_ms),
                        failures,
                        Duration::from_millis(self.settings.failure_backoff_max_ms),
                    )
                };
                match (&mut state.current, background) {
                    // The token in hand is still valid: keep serving it, retry later.
                    (Some(current), true) => current.refresh_at = now + wait,
                    _ => {
                        state.failed = Some(Held {
                            error: error.clone(),
                            until: now + wait,
                        })
                    }
                }
                drop(guard);
                tracing::warn!(
                    app = %self.app,
                    error = %error,
                    failures,
                    retry_in_ms = wait.as_millis() as u64,
                    background,
                    "access token fetch failed"
                );
                Err(error)
            }
        }
    }

    fn refresh_in_background(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let cache = Arc::clone(self);
        tokio::spawn(async move {
            {
                let _flight = cache.fetching.lock().await;
                // A caller may have fetched a new token while we waited for the lock.
                if matches!(cache.lookup(), Lookup::RefreshDue(_)) {
                    let result = cache.fetch().await;
                    // The outcome is in the cache (or in the log); nobody awaits it here.
                    let _ = cache.record(result, true);
                }
            }
            cache.refreshing.store(false, Ordering::Release);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

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
        async fn fetch(&self) -> Result<IssuedToken, Error> {
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

    fn cache(source: Arc<Scripted>) -> Arc<TokenCache> {
        Arc::new(TokenCache::new(
            "test",
            source,
            TokenSettings::default(),
            RETRY,
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
        let settings = TokenSettings {
            credential_cooldown_secs: 0,
            ..TokenSettings::default()
        };
        let cache = Arc::new(TokenCache::new("test", source.clone(), settings, RETRY));
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
        async fn fetch(&self) -> Result<IssuedToken, Error> {
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
        let cache = Arc::new(TokenCache::new(
            "test",
            source.clone(),
            TokenSettings::default(),
            RETRY,
        ));
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
    async fn an_absurd_expires_in_is_capped_not_overflowed() {
        let source = Scripted::new(Duration::from_secs(u64::MAX));
        let cache = cache(source.clone());
        assert_eq!(cache.get().await.unwrap().expose(), "token-1");
        assert!(cache.remaining().unwrap() <= MAX_TOKEN_LIFETIME);
    }

    #[test]
    fn debug_output_hides_the_token() {
        let token = AccessToken::new("SECRET-TOKEN");
        assert_eq!(format!("{token:?}"), "AccessToken(****)");
    }
}
