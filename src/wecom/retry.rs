//! How transient failures are retried, and the jittered backoff shared with the
//! token cache's hold after a failed fetch.

use std::time::Duration;

use super::Error;
use crate::telemetry::ErrorChain;

/// How transient failures (errcode -1, HTTP 5xx, transport errors) are retried:
/// at most `max_retries` times, waiting a jittered delay that starts at `backoff`
/// and doubles, up to [`Retry::MAX_DELAY`].
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The first delay.
    pub backoff: Duration,
}

impl Retry {
    /// The longest wait between two attempts: past it, the caller is better served
    /// by the error than by more waiting.
    pub const MAX_DELAY: Duration = Duration::from_secs(2);

    /// Waits before retry number `retry` (1-based) and says whether to retry at all.
    pub(crate) async fn pause_before(&self, retry: u32, error: &Error) -> bool {
        if !error.is_transient() || retry > self.max_retries {
            return false;
        }
        let wait = backoff(self.backoff, retry, Self::MAX_DELAY);
        tracing::debug!(
            error = %ErrorChain(error),
            retry,
            wait_ms = wait.as_millis() as u64,
            "retrying after a transient error"
        );
        tokio::time::sleep(wait).await;
        true
    }
}

/// Exponential backoff with jitter: attempt 1 waits between `base / 2` and `base`,
/// each later attempt up to twice as long, never more than `max`.
pub(crate) fn backoff(base: Duration, attempt: u32, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    let ceiling = base.saturating_mul(factor).min(max);
    // Jitter spreads the retries of many callers so they do not arrive together.
    ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn backoff_stays_within_half_and_whole_of_the_capped_exponential(
            base_ms in 1u64..10_000,
            attempt in 0u32..200,
            max_ms in 1u64..100_000,
        ) {
            let (base, max) = (Duration::from_millis(base_ms), Duration::from_millis(max_ms));
            let wait = backoff(base, attempt, max);
            let exp = 2u128.saturating_pow(attempt.saturating_sub(1));
            let ceiling = (base.as_nanos().saturating_mul(exp)).min(max.as_nanos());
            prop_assert!(wait.as_nanos() <= ceiling);
            prop_assert!(wait.as_nanos() >= ceiling / 2);
        }
    }
}
