//! The per-job throughput cap (`maxWriteUnitsPerSecond`): every worker of
//! a job reserves the write units a processor call will spend in the job's
//! current one-second window before making the call, and waits for the next
//! window when the current one is full. A reservation is one conditional
//! write per processor call, never one per record.

use crate::job::JobId;
use crate::store::StoreError;
use async_trait::async_trait;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A reservation takes at most this share of the cap (a tenth), so the
/// reservations that no longer fit leave little of a window unused (at
/// most a tenth of it, about half that on average), and one job makes
/// about this many reservations a second, whatever its cap.
pub const SLICES_PER_WINDOW: u64 = 10;

/// Workers turned away by a full window do not all retry at its very end.
const JITTER_MS: u64 = 20;

/// The cap a job runs under: its definition's `maxWriteUnitsPerSecond` if
/// set (0 there lifts the deployment's default), else the deployment's
/// default (`MAX_WRITE_UNITS_PER_SECOND`, 0 for none).
pub fn cap_of(definition: Option<u32>, deployment_default: u32) -> Option<u64> {
    Some(u64::from(definition.unwrap_or(deployment_default))).filter(|&cap| cap > 0)
}

/// Whether a window had room for a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// The units are reserved: spend them now.
    Granted,
    /// The window cannot take them: wait for the next one.
    Full,
}

/// Where the windows live: the state table in production (one small item
/// per job and second), memory in tests.
#[async_trait]
pub trait Throttle: Send + Sync {
    /// Reserves `units` of `job`'s window `second` (seconds since the
    /// epoch) if what it holds stays within `cap`; `units <= cap`.
    async fn reserve(
        &self,
        job: &JobId,
        second: i64,
        units: u64,
        cap: u64,
    ) -> Result<Reservation, StoreError>;
}

/// Windows in memory, for tests and single-process runs.
#[derive(Debug, Default)]
pub struct MemoryThrottle {
    windows: Mutex<HashMap<(JobId, i64), u64>>,
}

impl MemoryThrottle {
    /// What `job` reserved in each window so far, by second.
    pub fn windows(&self, job: &JobId) -> Vec<(i64, u64)> {
        let mut used: Vec<(i64, u64)> = self
            .windows
            .lock()
            .expect("throttle poisoned")
            .iter()
            .filter(|((j, _), _)| j == job)
            .map(|((_, second), used)| (*second, *used))
            .collect();
        used.sort_unstable();
        used
    }
}

#[async_trait]
impl Throttle for MemoryThrottle {
    async fn reserve(
        &self,
        job: &JobId,
        second: i64,
        units: u64,
        cap: u64,
    ) -> Result<Reservation, StoreError> {
        let mut windows = self.windows.lock().expect("throttle poisoned");
        let used = windows.entry((job.clone(), second)).or_default();
        if *used + units > cap {
            return Ok(Reservation::Full);
        }
        *used += units;
        Ok(Reservation::Granted)
    }
}

/// Wall-clock milliseconds since the epoch: windows are shared by workers
/// on different machines. Tests inject one driven by tokio's paused time.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    pub fn new(now_ms: impl Fn() -> i64 + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now_ms))
    }

    pub fn now_ms(&self) -> i64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new(crate::job::now_ms)
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now_ms())
    }
}

/// One worker's view of a job's cap.
pub struct Limiter<'a> {
    pub throttle: &'a dyn Throttle,
    pub clock: &'a Clock,
    pub job: &'a JobId,
    /// Write units a second, more than 0.
    pub cap: u64,
}

/// What getting a reservation took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Acquired {
    /// Reservation requests made (the one granted included).
    pub requests: u32,
    /// Windows that turned the reservation away.
    pub full: u32,
}

impl Limiter<'_> {
    /// The most one reservation takes.
    pub fn slice(&self) -> u64 {
        (self.cap / SLICES_PER_WINDOW).max(1)
    }

    /// Returns once `units` may be spent, reserved in the current window
    /// (or the first later one with room). More than the cap takes a whole
    /// window to itself, so a single huge record still goes through.
    pub async fn acquire(&self, units: u64) -> Result<Acquired, StoreError> {
        let mut acquired = Acquired::default();
        if units == 0 {
            return Ok(acquired);
        }
        let units = units.min(self.cap);
        loop {
            let second = self.clock.now_ms().div_euclid(1000);
            acquired.requests += 1;
            let reservation = self
                .throttle
                .reserve(self.job, second, units, self.cap)
                .await?;
            if reservation == Reservation::Granted {
                return Ok(acquired);
            }
            acquired.full += 1;
            let wait = (second + 1) * 1000 - self.clock.now_ms();
            if wait > 0 {
                let jitter = rand::random::<u64>() % JITTER_MS;
                tokio::time::sleep(Duration::from_millis(wait as u64 + jitter)).await;
            }
        }
    }
}

/// Cuts records costing `units` each into consecutive runs of at most
/// `max` units (a record costing more is a run of its own).
pub fn slices(units: &[u64], max: u64) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let (mut start, mut sum) = (0, 0);
    for (i, &u) in units.iter().enumerate() {
        if i > start && sum + u > max {
            runs.push(start..i);
            (start, sum) = (i, 0);
        }
        sum += u;
    }
    if start < units.len() {
        runs.push(start..units.len());
    }
    runs
}

#[cfg(test)]
mod tests;
