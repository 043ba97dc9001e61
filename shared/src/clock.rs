//! Time as the library reads it: wall milliseconds since the epoch (leases,
//! timestamps, throughput windows, shared by machines) and a monotonic
//! instant (deadlines, timers), both through one handle that `Deps` carries,
//! so a test on a paused tokio runtime moves every reading the library takes.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The monotonic instant of deadlines and timers: tokio's, which a paused
/// runtime drives (`std::time::Instant` would escape it).
pub use tokio::time::Instant;

/// Wall and monotonic time. `system()` in production, `simulated(origin)`
/// in tests; cloning shares the same readings.
#[derive(Clone, Copy)]
pub struct Clock {
    wall: Wall,
}

#[derive(Clone, Copy)]
enum Wall {
    /// The system's clock, read each time: a Lambda container lives for
    /// hours and leases are compared across machines, so the wall time
    /// follows the system's (NTP-disciplined) clock rather than drifting
    /// with an extrapolation from the container's start.
    System,
    /// `origin_ms` at `start`, then advanced by tokio's clock only: a
    /// paused runtime moves it exactly as far as its timers.
    Simulated { origin_ms: i64, start: Instant },
}

impl Clock {
    /// The production clock: the system's wall time, tokio's monotonic one.
    pub const fn system() -> Clock {
        Clock { wall: Wall::System }
    }

    /// A clock that reads `origin_ms` now and then moves with tokio's
    /// clock alone (paused in tests: simulated minutes pass at once).
    pub fn simulated(origin_ms: i64) -> Clock {
        Clock {
            wall: Wall::Simulated {
                origin_ms,
                start: Instant::now(),
            },
        }
    }

    /// Milliseconds since the Unix epoch (the unit of every timestamp we
    /// store).
    pub fn now_ms(&self) -> i64 {
        match self.wall {
            Wall::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            Wall::Simulated { origin_ms, start } => origin_ms + start.elapsed().as_millis() as i64,
        }
    }

    /// The monotonic now, on tokio's clock.
    pub fn instant(&self) -> Instant {
        Instant::now()
    }

    /// How long since `earlier`.
    pub fn since(&self, earlier: Instant) -> Duration {
        self.instant().saturating_duration_since(earlier)
    }

    /// How long until `deadline`, zero once it has passed.
    pub fn until(&self, deadline: Instant) -> Duration {
        deadline.saturating_duration_since(self.instant())
    }

    /// The instant at wall time `epoch_ms` (a Lambda deadline), `None` when
    /// it is not in the future.
    pub fn instant_at(&self, epoch_ms: i64) -> Option<Instant> {
        let ahead = epoch_ms.checked_sub(self.now_ms()).filter(|&ms| ms > 0)?;
        Some(self.instant() + Duration::from_millis(ahead as u64))
    }

    /// Waits `duration` on tokio's clock.
    pub fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        tokio::time::sleep(duration)
    }

    /// Waits until `deadline` on tokio's clock.
    pub fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
        tokio::time::sleep_until(deadline)
    }

    /// `work`, or `Err` once `deadline` passes first.
    pub async fn timeout_at<F: Future>(
        &self,
        deadline: Instant,
        work: F,
    ) -> Result<F::Output, tokio::time::error::Elapsed> {
        tokio::time::timeout_at(deadline, work).await
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.wall {
            Wall::System => "system",
            Wall::Simulated { .. } => "simulated",
        };
        write!(f, "Clock({kind}, {})", self.now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_simulated_clock_moves_with_the_paused_runtime_only() {
        let clock = Clock::simulated(1_700_000_000_000);
        let started = clock.instant();
        clock.sleep(Duration::from_secs(600)).await;
        assert_eq!(clock.now_ms(), 1_700_000_000_000 + 600_000);
        assert_eq!(clock.instant() - started, Duration::from_secs(600));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wall_deadline_becomes_an_instant_only_when_ahead() {
        let clock = Clock::simulated(10_000);
        assert_eq!(clock.instant_at(10_000), None);
        assert_eq!(clock.instant_at(9_000), None);
        let at = clock.instant_at(12_500).unwrap();
        assert_eq!(clock.until(at), Duration::from_millis(2_500));
    }
}
