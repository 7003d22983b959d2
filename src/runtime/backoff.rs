//! Jittered exponential backoff, shared by reconnecting listeners and
//! workers retrying after a database error.

use std::time::Duration;

/// Delays that double per attempt from `min` up to `max`, each drawn
/// uniformly from its upper half ("equal jitter"): never shorter than half
/// the nominal delay, and spread out so that many processes that lost the
/// same server do not reconnect in lockstep.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
        }
    }

    /// The delay before attempt `attempt` (1 = the first retry).
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        let nominal = self.min.saturating_mul(1u32 << doublings).min(self.max);
        let half = nominal / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// `base` spread by ±20%, so that timers armed together do not fire together.
pub(crate) fn jittered(base: Duration) -> Duration {
    base.mul_f64(0.8 + 0.4 * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_and_stop_at_the_maximum() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        for attempt in 1..=20 {
            let nominal = Duration::from_millis(100)
                .saturating_mul(1 << (attempt - 1).min(30))
                .min(Duration::from_secs(30));
            let delay = backoff.delay(attempt);
            assert!(
                delay >= nominal / 2 && delay <= nominal,
                "attempt {attempt}: {delay:?}"
            );
        }
        assert!(backoff.delay(u32::MAX) <= Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(8) && d <= Duration::from_secs(12));
        }
    }
}
