//! Rate limiting of failed authentication, per client, so that tokens cannot
//! be guessed online (and so that a broken client stops hammering us).
//!
//! A sliding window: a client is blocked while its last `max_failures`
//! failures all lie within the last `window_secs` seconds. The client key is
//! generic (callers use an IP address) and time is passed in, so this stays
//! pure and testable.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Counts failed authentications per client and says who must wait.
///
/// Memory is bounded: at most `max_clients` clients are remembered, each with
/// at most `max_failures` timestamps. When a new client does not fit, clients
/// whose failures have all left the window are dropped first, then those
/// with the oldest activity.
#[derive(Debug, Clone)]
pub struct FailureLimiter<K> {
    /// At least 1.
    max_failures: usize,
    window_secs: u64,
    /// At least 1.
    max_clients: usize,
    clients: HashMap<K, Failures>,
}

/// One client's most recent failures, oldest first, at most `max_failures`
/// of them (older ones can no longer decide anything), never empty.
#[derive(Debug, Clone)]
struct Failures(VecDeque<u64>);

impl Failures {
    /// The time of the latest failure: the client's last activity.
    fn last(&self) -> u64 {
        self.0.back().copied().unwrap_or(0)
    }
}

impl<K: Hash + Eq + Clone> FailureLimiter<K> {
    /// A limiter blocking a client after `max_failures` failures within
    /// `window_secs`, remembering at most `max_clients` clients. Zero for
    /// either count is read as 1, so a mistaken configuration still limits.
    pub fn new(max_failures: u32, window_secs: u64, max_clients: usize) -> Self {
        FailureLimiter {
            max_failures: usize::try_from(max_failures).unwrap_or(usize::MAX).max(1),
            window_secs,
            max_clients: max_clients.max(1),
            clients: HashMap::new(),
        }
    }

    /// Notes a failed authentication by `client` at `now`.
    ///
    /// Failures recorded while the client is blocked count too and so extend
    /// the block; callers normally refuse blocked clients before checking
    /// their credentials and record nothing then.
    pub fn record_failure(&mut self, client: &K, now: u64) {
        let (max_failures, window) = (self.max_failures, self.window_secs);
        if let Some(failures) = self.clients.get_mut(client) {
            // A clock that steps back is read as no time passing, which keeps
            // each client's times sorted, so the front is always the oldest.
            let now = now.max(failures.last());
            while failures
                .0
                .front()
                .is_some_and(|&t| t.saturating_add(window) <= now)
            {
                failures.0.pop_front();
            }
            failures.0.push_back(now);
            while failures.0.len() > max_failures {
                failures.0.pop_front();
            }
            return;
        }
        if self.clients.len() >= self.max_clients {
            self.make_room(now);
        }
        self.clients
            .insert(client.clone(), Failures(VecDeque::from([now])));
    }

    /// Does nothing, deliberately: a success must not clear the failures,
    /// or an attacker holding one valid token could interleave it with
    /// guesses and never be blocked. Exists so callers can say so.
    pub fn record_success(&self, _client: &K, _now: u64) {}

    /// `Some(seconds to wait)` while `client` has had `max_failures` failures
    /// within the window ending at `now`; `None` when it may try.
    pub fn blocked(&self, client: &K, now: u64) -> Option<u64> {
        let failures = &self.clients.get(client)?.0;
        if failures.len() < self.max_failures {
            return None;
        }
        // The oldest of the last `max_failures` failures leaves the window at
        // `until`, and with it the block.
        let until = failures.front()?.saturating_add(self.window_secs);
        // Capped at the window for a clock that stepped back.
        (until > now).then(|| (until - now).min(self.window_secs))
    }

    /// How many clients are remembered.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Drops clients whose failures have all left the window at `now`; they
    /// would not be blocked and their history can no longer block them.
    pub fn forget_expired(&mut self, now: u64) {
        let window = self.window_secs;
        self.clients
            .retain(|_, failures| failures.last().saturating_add(window) > now);
    }

    /// Makes room for one more client: expired clients first, then the
    /// least recently active. Evicts an eighth of the capacity at once so
    /// that a flood of new clients costs amortised O(1) each, not a scan of
    /// the map per new client.
    fn make_room(&mut self, now: u64) {
        self.forget_expired(now);
        let len = self.clients.len();
        if len < self.max_clients {
            return;
        }
        let keep = (self.max_clients - 1).saturating_sub(self.max_clients / 8);
        let remove = len.saturating_sub(keep);
        let mut lasts: Vec<u64> = self.clients.values().map(Failures::last).collect();
        let Some(index) = remove.checked_sub(1).filter(|&i| i < lasts.len()) else {
            return;
        };
        let cutoff = *lasts.select_nth_unstable(index).1;
        // Everything older than the cutoff goes, plus as many at the cutoff
        // as are needed to reach `remove` (ties broken arbitrarily).
        let below = lasts.iter().filter(|&&last| last < cutoff).count();
        let mut at_cutoff = remove - below;
        self.clients.retain(|_, failures| {
            let last = failures.last();
            if last < cutoff {
                false
            } else if last == cutoff && at_cutoff > 0 {
                at_cutoff -= 1;
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_failures_within_the_window() {
        let mut limiter = FailureLimiter::new(3, 60, 100);
        let ip = "192.0.2.1";
        assert_eq!(limiter.blocked(&ip, 0), None);
        limiter.record_failure(&ip, 0);
        limiter.record_failure(&ip, 10);
        assert_eq!(limiter.blocked(&ip, 10), None);
        limiter.record_failure(&ip, 20);
        assert_eq!(limiter.blocked(&ip, 20), Some(40));
        assert_eq!(limiter.blocked(&ip, 59), Some(1));
        // The first failure leaves the window: two within it, unblocked.
        assert_eq!(limiter.blocked(&ip, 60), None);
        assert_eq!(limiter.blocked(&ip, 1_000), None);
        // Other clients are unaffected.
        assert_eq!(limiter.blocked(&"192.0.2.2", 20), None);
    }

    #[test]
    fn failures_spread_over_more_than_the_window_do_not_block() {
        let mut limiter = FailureLimiter::new(3, 60, 100);
        for t in [0, 30, 61, 95, 125] {
            limiter.record_failure(&1u8, t);
            assert_eq!(limiter.blocked(&1u8, t), None, "at {t}");
        }
        // Three within 60 seconds now: 95, 125, 140.
        limiter.record_failure(&1u8, 140);
        assert_eq!(limiter.blocked(&1u8, 140), Some(15));
    }

    #[test]
    fn success_does_not_reset() {
        let mut limiter = FailureLimiter::new(2, 60, 100);
        limiter.record_failure(&7u32, 0);
        limiter.record_success(&7u32, 1);
        limiter.record_failure(&7u32, 2);
        limiter.record_success(&7u32, 3);
        assert_eq!(limiter.blocked(&7u32, 3), Some(57));
    }

    #[test]
    fn failures_while_blocked_count() {
        let mut limiter = FailureLimiter::new(2, 60, 100);
        limiter.record_failure(&0u8, 0);
        limiter.record_failure(&0u8, 0);
        limiter.record_failure(&0u8, 50);
        assert_eq!(limiter.blocked(&0u8, 59), Some(1));
        assert_eq!(limiter.blocked(&0u8, 60), None);
        // The failure at 50 still counts: one more re-blocks at once.
        limiter.record_failure(&0u8, 70);
        assert_eq!(limiter.blocked(&0u8, 70), Some(40));
    }

    #[test]
    fn degenerate_settings_still_limit_or_never_panic() {
        let mut one = FailureLimiter::new(0, 60, 0);
        one.record_failure(&'a', 5);
        assert_eq!(one.blocked(&'a', 5), Some(60));
        one.record_failure(&'b', 6);
        assert_eq!(one.len(), 1);
        let mut no_window = FailureLimiter::new(1, 0, 10);
        no_window.record_failure(&'a', 5);
        assert_eq!(no_window.blocked(&'a', 5), None);
        let mut forever = FailureLimiter::new(1, u64::MAX, 10);
        forever.record_failure(&'a', u64::MAX);
        assert_eq!(forever.blocked(&'a', 0), Some(u64::MAX));
    }

    #[test]
    fn a_clock_stepping_back_neither_panics_nor_unblocks() {
        let mut limiter = FailureLimiter::new(2, 60, 10);
        limiter.record_failure(&1u8, 1_000);
        limiter.record_failure(&1u8, 900);
        assert_eq!(limiter.blocked(&1u8, 1_000), Some(60));
        assert_eq!(limiter.blocked(&1u8, 0), Some(60));
    }

    #[test]
    fn memory_is_bounded_and_recent_clients_survive() {
        let mut limiter = FailureLimiter::new(3, 600, 16);
        // The most recently active client, blocked, and a flood of others.
        for _ in 0..3 {
            limiter.record_failure(&u32::MAX, 10_000);
        }
        for i in 0..10_000u32 {
            limiter.record_failure(&i, u64::from(i));
            assert!(limiter.len() <= 16);
        }
        assert_eq!(limiter.blocked(&u32::MAX, 10_000), Some(600));
        // The latest client is remembered, the earliest were evicted.
        assert!(limiter.clients.contains_key(&9_999));
        assert!(!limiter.clients.contains_key(&0));
        assert!(!limiter.is_empty());
    }

    #[test]
    fn expired_clients_are_dropped_before_active_ones() {
        let mut limiter = FailureLimiter::new(3, 60, 4);
        // Active: recent failures. Expired: failures long ago.
        limiter.record_failure(&"active", 990);
        limiter.record_failure(&"old1", 0);
        limiter.record_failure(&"old2", 1);
        limiter.record_failure(&"old3", 2);
        limiter.record_failure(&"new", 1_000);
        assert_eq!(limiter.len(), 2);
        assert!(limiter.clients.contains_key("active"));
        assert!(limiter.clients.contains_key("new"));
        limiter.forget_expired(2_000);
        assert!(limiter.is_empty());
    }

    #[test]
    fn when_all_are_active_the_oldest_activity_goes() {
        let mut limiter = FailureLimiter::new(3, 1_000, 3);
        limiter.record_failure(&"a", 10);
        limiter.record_failure(&"b", 20);
        limiter.record_failure(&"c", 30);
        // `a` is the oldest client but was active most recently.
        limiter.record_failure(&"a", 40);
        limiter.record_failure(&"d", 50);
        assert_eq!(limiter.len(), 3);
        assert!(!limiter.clients.contains_key("b"));
        for kept in ["a", "c", "d"] {
            assert!(limiter.clients.contains_key(kept), "{kept}");
        }
    }
}
