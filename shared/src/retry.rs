//! Jittered exponential backoff for the retries the SDK cannot do for us:
//! processor errors, BatchWriteItem's UnprocessedItems and transaction
//! conflicts.

use crate::clock::Clock;
use crate::rng::Rng;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(25),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max }
    }

    /// "Full jitter": uniform in [0, min(max, base * 2^attempt)], so many
    /// workers retrying together spread out instead of colliding again.
    pub fn delay(&self, attempt: u32, rng: &Rng) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        let millis = cap.as_millis() as u64;
        if millis == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(rng.up_to(millis))
    }

    /// Sleeps the jittered delay of `attempt` on `clock`, drawing from
    /// `rng` (the handles `Deps` carries).
    pub async fn sleep(&self, attempt: u32, clock: &Clock, rng: &Rng) {
        clock.sleep(self.delay(attempt, rng)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_never_exceeds_the_cap() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(300));
        let rng = Rng::seeded(1);
        for attempt in 0..40 {
            assert!(b.delay(attempt, &rng) <= Duration::from_millis(300));
        }
        assert!(b.delay(0, &rng) <= Duration::from_millis(10));
    }
}
