//! The one reconnect backoff of k8s-ovs: exponential with jitter.
//!
//! Every reconnect loop (the OpenFlow client, the agent's OVSDB client and
//! etcd watch, the controller's etcd session) takes its pauses from a
//! [`Backoff`]. Without jitter, every agent of a cluster retries a restarted
//! etcd or apiserver in lockstep (they all lost it at the same instant);
//! jitter spreads them out.
//!
//! The pauses are backon's exponential backoff ("equal jitter"): the bound
//! starts at `first`, doubles after each pause up to `max`, and each pause is
//! drawn uniformly from `[bound / 2, bound)`. So a pause never exceeds the
//! configured bounds, and is never shorter than half of them (a dead peer is
//! not hammered).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Jittered exponential pauses between reconnect attempts; [`reset`](Backoff::reset)
/// after a success.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// Pauses bounded by `first`, doubling up to `max` (see the module doc).
    pub fn new(first: Duration, max: Duration) -> Backoff {
        // backon's jitter adds up to 100% of the delay, so half bounds give
        // pauses in [bound/2, bound). No limit on the number of attempts:
        // the callers retry until they succeed or give up by their own clock.
        let builder = ExponentialBuilder::new()
            .with_min_delay(first / 2)
            .with_max_delay(max.max(first) / 2)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Backoff { builder, delays: builder.build(), max: max.max(first) }
    }

    /// The pause before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        // The iterator is endless (no max_times, no total delay); the
        // fallback only keeps this total should backon ever stop.
        self.delays.next().unwrap_or(self.max)
    }

    /// Starts again from the first bound (after a success).
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    /// The bound of the n-th pause (0-based): FIRST doubling up to MAX.
    fn bound(n: u32) -> Duration {
        (FIRST * 2u32.saturating_pow(n.min(20))).min(MAX)
    }

    #[test]
    fn pauses_grow_within_their_bounds_and_are_capped() {
        let mut b = Backoff::new(FIRST, MAX);
        for n in 0..30 {
            let d = b.next_delay();
            let hi = bound(n);
            // f32 arithmetic inside backon: allow a microsecond of rounding.
            let slack = Duration::from_micros(1);
            assert!(d + slack >= hi / 2 && d <= hi + slack, "pause {n}: {d:?} not in [{:?}, {hi:?})", hi / 2);
        }
        // After the cap every pause is in [MAX/2, MAX].
        let late: Vec<Duration> = (0..50).map(|_| b.next_delay()).collect();
        assert!(late
            .iter()
            .all(|d| *d <= MAX + Duration::from_micros(1) && *d >= MAX / 2 - Duration::from_micros(1)));
    }

    #[test]
    fn pauses_vary() {
        // Jitter: two agents that lost the same server do not retry in step.
        let mut b = Backoff::new(FIRST, MAX);
        let capped: Vec<Duration> = (0..40).map(|_| b.next_delay()).skip(10).collect();
        let distinct: std::collections::BTreeSet<Duration> = capped.iter().copied().collect();
        assert!(distinct.len() > 20, "pauses at the cap barely vary: {capped:?}");
        let (mut x, mut y) = (Backoff::new(FIRST, MAX), Backoff::new(FIRST, MAX));
        let xs: Vec<Duration> = (0..10).map(|_| x.next_delay()).collect();
        let ys: Vec<Duration> = (0..10).map(|_| y.next_delay()).collect();
        assert_ne!(xs, ys, "two backoffs gave the same pauses");
    }

    #[test]
    fn reset_starts_again_from_the_first_bound() {
        let mut b = Backoff::new(FIRST, MAX);
        for _ in 0..10 {
            b.next_delay();
        }
        assert!(b.next_delay() >= MAX / 2 - Duration::from_micros(1));
        b.reset();
        let d = b.next_delay();
        assert!(d <= FIRST + Duration::from_micros(1) && d + Duration::from_micros(1) >= FIRST / 2, "{d:?}");
    }

    #[test]
    fn a_max_below_first_keeps_first() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(10));
        assert!((0..10)
            .map(|_| b.next_delay())
            .all(|d| d <= Duration::from_millis(50) + Duration::from_micros(1)));
    }
}
