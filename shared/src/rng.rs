//! The one source of randomness the library draws from (backoff jitter,
//! counter-shard picks, throughput-window jitter), carried by `Deps`:
//! seeded from entropy in production, from a fixed seed in tests, so a run
//! on a paused runtime repeats exactly.

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};
use std::sync::{Arc, Mutex};

/// A shared, seedable generator; clones draw from the same sequence.
#[derive(Clone)]
pub struct Rng(Arc<Mutex<StdRng>>);

impl Rng {
    /// Seeded from the operating system: production.
    pub fn from_entropy() -> Rng {
        Rng::of(StdRng::from_os_rng())
    }

    /// The same sequence on every run with the same `seed`.
    pub fn seeded(seed: u64) -> Rng {
        Rng::of(StdRng::seed_from_u64(seed))
    }

    fn of(rng: StdRng) -> Rng {
        Rng(Arc::new(Mutex::new(rng)))
    }

    /// Uniform in `0..n`; `n` more than 0.
    pub fn below(&self, n: u64) -> u64 {
        self.draw(|rng| rng.random_range(0..n))
    }

    /// Uniform in `0..=max`.
    pub fn up_to(&self, max: u64) -> u64 {
        self.draw(|rng| rng.random_range(0..=max))
    }

    fn draw<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        // A panic while drawing leaves the generator's state valid: any
        // state is as random as any other.
        let mut rng = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut rng)
    }
}

impl Default for Rng {
    fn default() -> Rng {
        Rng::from_entropy()
    }
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rng")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_gives_one_sequence() {
        let (a, b) = (Rng::seeded(7), Rng::seeded(7));
        let draws = |r: &Rng| (0..16).map(|_| r.below(1000)).collect::<Vec<_>>();
        assert_eq!(draws(&a), draws(&b));
        assert!((0..100).all(|_| a.up_to(3) <= 3));
    }
}
