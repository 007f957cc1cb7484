//! Retry timing: exponential backoff with equal jitter (half fixed, half
//! random, so no retry is immediate), capped, and the
//! upstream's `Retry-After` honoured when it asks for longer.

use std::time::{Duration, SystemTime};

/// Backoff schedule for retries.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay scale for the first retry.
    pub base: Duration,
    /// Longest delay between two attempts, `Retry-After` included.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (1-based): a random point in
    /// [exp/2, exp] where exp = base * 2^(attempt-1), raised to `retry_after`
    /// when the upstream asked for that, all capped at `max`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max);
        // Half fixed, half random: spreads retries from many workers without
        // ever retrying immediately.
        let jittered = exp / 2 + exp.mul_f64(fastrand::f64() / 2.0);
        jittered.max(retry_after.unwrap_or_default()).min(self.max)
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_bounds() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        for attempt in 1..=10 {
            let exp = Duration::from_millis(100 * (1 << (attempt - 1))).min(b.max);
            for _ in 0..50 {
                let d = b.delay(attempt, None);
                assert!(d >= exp / 2 && d <= exp, "attempt {attempt}: {d:?}");
            }
        }
    }

    #[test]
    fn honours_retry_after_up_to_the_cap() {
        let b = Backoff {
            base: Duration::from_millis(1),
            max: Duration::from_secs(10),
        };
        assert!(b.delay(1, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        assert_eq!(
            b.delay(1, Some(Duration::from_secs(999))),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn parses_retry_after_forms() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
