//! The per-job throughput cap (`maxWriteUnitsPerSecond`): every worker of
//! a job reserves the write units a processor call will spend in the job's
//! current one-second window before making the call, and waits for the next
//! window when the current one is full. A reservation is one conditional
//! write per processor call, never one per record.

use crate::clock::{Clock, Instant};
use crate::job::JobId;
use crate::rng::Rng;
use crate::schema::Definition;
use async_trait::async_trait;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;
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

/// The longest one batch may take to write at the full cap, counting at
/// least one write unit a record: a fifth of the worker function's timeout
/// (300 s), so a batch fits in an invocation with room to spare, also when
/// a few workers share the cap. (Lambda allows at most 15 minutes, less
/// `DEADLINE_MARGIN_SECONDS`; a batch that cannot fit in that would never
/// finish, and one that fits only barely would rarely.)
pub const MAX_BATCH_SECONDS: u64 = 60;

/// A throughput cap under which one batch cannot be written in the time a
/// batch may take (`MAX_BATCH_SECONDS`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapError {
    #[error(
        "import definition {origin}: batchSize {batch_size} at maxWriteUnitsPerSecond {cap} \
         needs at least {} s per batch at the full cap (a record costs at least 1 write unit), \
         more than the {MAX_BATCH_SECONDS} s a batch may take: lower batchSize to at most {} \
         or raise maxWriteUnitsPerSecond to at least {}",
        seconds_per_batch(*.batch_size, *.cap),
        largest_batch(*.cap),
        smallest_cap(*.batch_size)
    )]
    Definition {
        origin: String,
        batch_size: usize,
        cap: u64,
    },
    #[error(
        "import definition {origin} sets no maxWriteUnitsPerSecond, so its jobs run under the \
         deployment's MAX_WRITE_UNITS_PER_SECOND {cap}: batchSize {batch_size} at {cap} write \
         units a second needs at least {} s per batch at the full cap (a record costs at least \
         1 write unit), more than the {MAX_BATCH_SECONDS} s a batch may take: lower batchSize to \
         at most {}, raise MAX_WRITE_UNITS_PER_SECOND to at least {}, or set \
         maxWriteUnitsPerSecond in the definition",
        seconds_per_batch(*.batch_size, *.cap),
        largest_batch(*.cap),
        smallest_cap(*.batch_size)
    )]
    Deployment {
        origin: String,
        batch_size: usize,
        cap: u64,
    },
}

fn seconds_per_batch(batch_size: usize, cap: u64) -> u64 {
    (batch_size as u64).div_ceil(cap.max(1))
}

fn largest_batch(cap: u64) -> u64 {
    cap.saturating_mul(MAX_BATCH_SECONDS)
}

fn smallest_cap(batch_size: usize) -> u64 {
    (batch_size as u64).div_ceil(MAX_BATCH_SECONDS)
}

/// Refuses a cap under which a batch of `definition` cannot be written in
/// `MAX_BATCH_SECONDS`: a worker gives such a batch back each time its
/// invocation runs out, so it would never finish. Checked where the
/// definition meets the deployment's default (the functions' cold start,
/// `bulkimport check` with no default); `origin` names the definition.
pub fn check_cap(
    definition: &Definition,
    deployment_default: u32,
    origin: &str,
) -> Result<(), CapError> {
    let Some(cap) = cap_of(definition.max_write_units_per_second, deployment_default) else {
        return Ok(());
    };
    let batch_size = definition.batch_size;
    if seconds_per_batch(batch_size, cap) <= MAX_BATCH_SECONDS {
        return Ok(());
    }
    let origin = origin.to_owned();
    Err(match definition.max_write_units_per_second {
        Some(_) => CapError::Definition {
            origin,
            batch_size,
            cap,
        },
        None => CapError::Deployment {
            origin,
            batch_size,
            cap,
        },
    })
}

/// Why a reservation could not be asked for.
#[derive(Debug, thiserror::Error)]
pub enum ThrottleError {
    /// Where the windows live did not answer (the store's or SDK's error is
    /// the source): worth retrying, the cap itself was not refused.
    #[error("reserving write units in a throughput window of job {job} failed")]
    Unavailable {
        job: JobId,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ThrottleError {
    /// Whether asking again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ThrottleError::Unavailable { .. } => true,
        }
    }
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
    ) -> Result<Reservation, ThrottleError>;
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
    ) -> Result<Reservation, ThrottleError> {
        let mut windows = self.windows.lock().expect("throttle poisoned");
        let used = windows.entry((job.clone(), second)).or_default();
        if *used + units > cap {
            return Ok(Reservation::Full);
        }
        *used += units;
        Ok(Reservation::Granted)
    }
}

/// One worker's view of a job's cap.
pub struct Limiter<'a> {
    pub throttle: &'a dyn Throttle,
    /// Windows are wall-clock seconds (shared by workers on different
    /// machines); waits and `stop_at` are on its monotonic time.
    pub clock: &'a Clock,
    /// Jitters the retries of workers turned away by a full window.
    pub rng: &'a Rng,
    pub job: &'a JobId,
    /// Write units a second, more than 0.
    pub cap: u64,
    /// When the worker must stop working to leave time to commit or give
    /// its batch back (on the clock's monotonic time); `None` for no
    /// deadline. No reservation is made after it and no wait ends past it.
    pub stop_at: Option<Instant>,
}

/// What getting a reservation took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Acquired {
    /// Reservation requests made (the one granted included).
    pub requests: u32,
    /// Windows that turned the reservation away.
    pub full: u32,
}

/// How asking for a reservation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// The units are reserved: spend them now.
    Granted(Acquired),
    /// No window with room opens before the worker must stop (`stop_at`):
    /// nothing is reserved, and no wait was started.
    OutOfTime(Acquired),
}

impl Grant {
    /// The reservation, if it was made.
    pub fn granted(self) -> Option<Acquired> {
        match self {
            Grant::Granted(acquired) => Some(acquired),
            Grant::OutOfTime(_) => None,
        }
    }

    /// What asking took, granted or not.
    pub fn acquired(self) -> Acquired {
        match self {
            Grant::Granted(acquired) | Grant::OutOfTime(acquired) => acquired,
        }
    }
}

impl Limiter<'_> {
    /// The most one reservation takes.
    pub fn slice(&self) -> u64 {
        (self.cap / SLICES_PER_WINDOW).max(1)
    }

    /// Returns once `units` may be spent, reserved in the current window
    /// (or the first later one with room). More than the cap takes a whole
    /// window to itself, so a single huge record still goes through.
    /// `OutOfTime` instead when `stop_at` has passed, or when the next
    /// window opens after it: a worker must not sleep through the time it
    /// needs to commit or give its batch back.
    pub async fn acquire(&self, units: u64) -> Result<Grant, ThrottleError> {
        let mut acquired = Acquired::default();
        if units == 0 {
            return Ok(Grant::Granted(acquired));
        }
        let units = units.min(self.cap);
        loop {
            // Units reserved now and not spent would be lost to the whole
            // job for this second.
            if self
                .stop_at
                .is_some_and(|stop| self.clock.instant() >= stop)
            {
                return Ok(Grant::OutOfTime(acquired));
            }
            let second = self.clock.now_ms().div_euclid(1000);
            acquired.requests += 1;
            let reservation = self
                .throttle
                .reserve(self.job, second, units, self.cap)
                .await?;
            if reservation == Reservation::Granted {
                return Ok(Grant::Granted(acquired));
            }
            acquired.full += 1;
            let wait = (second + 1) * 1000 - self.clock.now_ms();
            if wait > 0 {
                let jitter = self.rng.below(JITTER_MS);
                let wait = Duration::from_millis(wait as u64 + jitter);
                if self
                    .stop_at
                    .is_some_and(|stop| self.clock.instant() + wait > stop)
                {
                    return Ok(Grant::OutOfTime(acquired));
                }
                self.clock.sleep(wait).await;
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
