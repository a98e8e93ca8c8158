//! Retry policy: exponential backoff with a cap and jitter.
//!
//! Jitter matters here: when a backend comes back after an outage, every gateway in the
//! field reconnects; without jitter they would all retry in the same instant. "Equal jitter"
//! is used (half the delay fixed, half random) so that a retry never comes immediately.

use std::future::Future;
use std::time::Duration;

use serde::Deserialize;

/// An exponential backoff policy. The pure part ([`Backoff::delay`]) takes its randomness as
/// an argument so it can be tested exactly.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    /// The base delay of the first retry.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// No delay grows past this.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Growth per attempt.
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0 for the first retry), given `unit_random`
    /// in [0, 1): between half and all of `min(max, initial × multiplier^attempt)`.
    pub fn delay(&self, attempt: u32, unit_random: f64) -> Duration {
        let exponent = i32::try_from(attempt).unwrap_or(i32::MAX);
        let base = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        let capped = base.min(self.max.as_secs_f64()).max(0.0);
        let jittered = capped / 2.0 + capped / 2.0 * unit_random.clamp(0.0, 1.0);
        Duration::from_secs_f64(jittered)
    }

    /// The delays of successive retries, with jitter from a fast non-cryptographic RNG.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        let policy = *self;
        (0u32..).map(move |attempt| policy.delay(attempt, fastrand::f64()))
    }
}

/// Runs `operation` until it succeeds, `retryable` says an error is final, or `max_attempts`
/// (counting the first) have been made. Sleeps on the tokio clock between attempts.
pub async fn retry<T, E, F, Fut>(
    policy: &Backoff,
    max_attempts: u32,
    mut operation: F,
    retryable: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delays = policy.delays();
    let mut attempt = 1;
    loop {
        match operation().await {
            Ok(value) => return Ok(value),
            Err(err) if attempt >= max_attempts || !retryable(&err) => return Err(err),
            Err(_) => {
                let delay = delays.next().unwrap_or(policy.max);
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            multiplier: 2.0,
        }
    }

    #[test]
    fn grows_then_caps() {
        let p = policy();
        let top: Vec<u128> = (0..10).map(|a| p.delay(a, 1.0).as_millis()).collect();
        assert_eq!(
            top,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
        );
        let bottom: Vec<u128> = (0..3).map(|a| p.delay(a, 0.0).as_millis()).collect();
        assert_eq!(bottom, [50, 100, 200]);
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        assert_eq!(policy().delay(u32::MAX, 1.0), Duration::from_secs(5));
    }

    proptest! {
        #[test]
        fn delay_stays_within_half_and_whole_of_the_capped_base(attempt in 0u32..64, r in 0.0f64..1.0) {
            let p = policy();
            let d = p.delay(attempt, r);
            let base = p.delay(attempt, 1.0);
            prop_assert!(d <= p.max);
            prop_assert!(d * 2 >= base - Duration::from_nanos(2));
            prop_assert!(d <= base);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_and_sleeps_between() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let result: Result<u32, &str> = retry(
            &policy(),
            5,
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 2 { Err("down") } else { Ok(n) }
            },
            |_| true,
        )
        .await;
        assert_eq!(result, Ok(2));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // Two sleeps: at least 50 ms + 100 ms, at most 100 ms + 200 ms.
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(150) && waited <= Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn stops_on_final_errors_and_at_the_attempt_limit() {
        let calls = AtomicU32::new(0);
        let result: Result<(), &str> = retry(
            &policy(),
            5,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("bad request")
            },
            |e| *e != "bad request",
        )
        .await;
        assert_eq!(result, Err("bad request"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        calls.store(0, Ordering::SeqCst);
        let result: Result<(), &str> = retry(
            &policy(),
            4,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("down")
            },
            |_| true,
        )
        .await;
        assert_eq!(result, Err("down"));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }
}
