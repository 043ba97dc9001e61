//! Phase two (the workers): claim a batch, work on it, commit the outcome
//! fenced by the claim, repeat; whoever commits the last batch finalizes the
//! job, exactly once.
//!
//! This module is the protocol, the same whatever a batch holds: claiming a
//! batch under a lease, renewing the lease while the batch is worked on,
//! committing the outcome fenced by the claim, handing the batch back when
//! its work fails or runs out of time, failing the job after a commit when
//! `continueOnError` is off, and completing or finalizing the job when
//! nothing is left or the deadline is near. The protocol ends where a claimed
//! batch is turned into an outcome: that is the batch's kind (`BatchKind`),
//! chosen in `Worker::kind_of`. Every batch today is a batch of imported
//! records (`records`).

mod records;

use crate::clock::{Clock, Instant};
use crate::events::JobEvents;
use crate::finalize::{FinalizeError, Finalizer};
use crate::job::JobId;
use crate::metrics::{Metric, MetricsSink};
use crate::processor::Processors;
use crate::processor::{ProcessError, RecordProcessor};
use crate::report::ReportSink;
use crate::retry::Backoff;
use crate::rng::Rng;
use crate::schema::Definition;
use crate::store::{BatchContent, BatchOutcome, Claim, ClaimedBatch, JobStore, StoreError};
use crate::throttle::{Throttle, ThrottleError};
use async_trait::async_trait;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// A claim's lease; renewed every `lease / 3` while the batch is worked on.
    pub lease: Duration,
    /// Stop claiming when less than this (or twice the slowest batch so far)
    /// is left before the deadline. Half of it is kept to commit or give
    /// back the batch in hand: a worker waiting for the throughput cap
    /// stops that long before the deadline.
    pub deadline_margin: Duration,
    pub backoff: Backoff,
    /// The throughput cap of jobs whose definition sets none (0: none).
    pub max_write_units_per_second: u32,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            lease: Duration::from_secs(60),
            deadline_margin: Duration::from_secs(20),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            max_write_units_per_second: 0,
        }
    }
}

pub struct Worker<'a> {
    pub store: &'a dyn JobStore,
    pub processor: &'a dyn RecordProcessor,
    /// The windows of jobs' throughput caps.
    pub throttle: &'a dyn Throttle,
    pub events: &'a dyn JobEvents,
    pub reports: &'a dyn ReportSink,
    pub metrics: &'a dyn MetricsSink,
    pub definition: &'a Definition,
    /// When the job was created (`ProcessContext::job_created_at_ms`).
    pub job_created_at_ms: i64,
    pub settings: &'a WorkerSettings,
    /// Leases, deadlines, the cap's windows and every wait.
    pub clock: &'a Clock,
    /// Jitter of backoffs and of waits for the cap.
    pub rng: &'a Rng,
    /// For a job that ends here (`Finalizer::with_processors`).
    pub processors: Option<&'a Processors>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Nothing claimable: every batch is done or held under a live lease.
    NoWork,
    /// The job is final.
    JobFinished,
    /// Too close to the deadline to take another batch.
    Deadline,
}

/// What one worker run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    pub stop: StopReason,
    pub batches: u64,
    pub processed: u64,
    pub failed: u64,
    /// Claims lost to a reclaim before commit (results dropped).
    pub lost_claims: u64,
    /// This worker finalized the job.
    pub finalized: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Finalize(#[from] FinalizeError),
    #[error(transparent)]
    Throttle(#[from] ThrottleError),
    /// The processor's `finish_batch` failed: the batch was handed back.
    #[error("job {job}: finishing batch {batch} failed")]
    FinishBatch {
        job: JobId,
        batch: u64,
        #[source]
        source: ProcessError,
    },
}

/// A kind of batch: what a claimed batch holds and how it is worked on.
///
/// The protocol claims the batch, keeps its lease alive while `work` runs,
/// commits the outcome `work` returns (fenced by the claim), and decides
/// from an `Unfinished` what becomes of the batch. A new kind of batch is a
/// file of its own in this module (declared with `mod` beside `records`)
/// with a type that implements `work`, and one line in `Worker::kind_of`,
/// which chooses the kind of each claimed batch.
#[async_trait]
trait BatchKind: Send + Sync {
    /// Turns the claimed batch into the outcome to commit. Work that waits
    /// (such as for a throughput cap) stops at `stop_at`, if any, with
    /// `Unfinished::OutOfTime`, leaving the rest of the margin to give the
    /// batch back. A batch may be worked on again (reclaimed after a lost
    /// lease, handed back, requeued by a retry), so the work must be safe to
    /// repeat; the claim tells which attempt this is.
    async fn work(
        &self,
        claim: &ClaimedBatch,
        stop_at: Option<Instant>,
    ) -> Result<BatchOutcome, Unfinished>;
}

/// Why work on a claimed batch ended without an outcome to commit.
#[derive(Debug, thiserror::Error)]
enum Unfinished {
    /// A lost claim drops the work; a transient error hands the batch back.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The throughput cap's windows could not be reached.
    #[error(transparent)]
    Throttle(#[from] ThrottleError),
    /// No time is left before the worker must stop: the batch goes back
    /// without the attempt counting against it.
    #[error("no time is left for the batch before the invocation's deadline")]
    OutOfTime,
    /// The kind's own work failed, though the batch did not: the batch goes
    /// back and the run fails with this error, whose source is the cause.
    #[error(transparent)]
    Failed(WorkError),
}

/// Past a lease's expiry, before a watcher looks at it: the holder's and
/// the watcher's clocks may differ by this much.
const LEASE_SLACK: Duration = Duration::from_millis(500);
/// How often a worker waiting for a lease to run out looks at it.
const LEASE_WATCH: Duration = Duration::from_secs(1);

impl Worker<'_> {
    /// Works on `job` until nothing is claimable or `deadline` is near.
    pub async fn run(
        &self,
        job: &JobId,
        worker_id: &str,
        deadline: Option<Instant>,
    ) -> Result<RunReport, WorkError> {
        let mut report = RunReport {
            stop: StopReason::NoWork,
            batches: 0,
            processed: 0,
            failed: 0,
            lost_claims: 0,
            finalized: false,
        };
        // Time is told by the clock: tokio's monotonic clock, which tests
        // pause (it then moves as the worker waits).
        let now = || self.clock.instant();
        // Work on a batch stops here, leaving half the margin to commit it
        // or give it back.
        let stop_at = deadline.map(|d| {
            d.checked_sub(self.settings.deadline_margin / 2)
                .unwrap_or_else(now)
        });
        let mut slowest = Duration::ZERO;
        let mut waits = 0;
        let mut next_in_partition = None;
        loop {
            if let Some(ends) = deadline {
                let needed = self.settings.deadline_margin.max(slowest * 2);
                if ends.saturating_duration_since(now()) < needed {
                    if report.batches > 0 {
                        report.finalized |= self.complete(job, deadline).await?;
                    }
                    report.stop = StopReason::Deadline;
                    return Ok(report);
                }
            }
            let lease_ms = self.settings.lease.as_millis() as i64;
            // The batch the last commit released in its key partition: this
            // worker takes it, so a partition goes on without a search.
            let chained = match next_in_partition.take() {
                Some(index) => {
                    let now_ms = self.clock.now_ms();
                    self.store
                        .claim_index(job, index, worker_id, now_ms, lease_ms)
                        .await?
                }
                None => None,
            };
            let claimed = match chained {
                Some(c) => Claim::Batch(c),
                None => {
                    self.store
                        .claim_batch(job, worker_id, self.clock.now_ms(), lease_ms)
                        .await?
                }
            };
            let claim = match claimed {
                Claim::Batch(c) => {
                    waits = 0;
                    c
                }
                Claim::Wait => {
                    // Prepare is still writing batches (or a retry putting
                    // them back): wait, backing off, and claim again. A
                    // claim that finds nothing only reads, and reads the
                    // job item once: cheaper than a failing cursor write,
                    // and as cheap as reading the job to see whether
                    // anything is new. The deadline is checked above.
                    self.settings
                        .backoff
                        .sleep(waits.min(4), self.clock, self.rng)
                        .await;
                    waits += 1;
                    continue;
                }
                Claim::NoneAvailable => {
                    // Whoever finds nothing left after the last commit
                    // finalizes; every committer looks once more before it
                    // leaves, so the last one always sees the full count.
                    let Some(current) = self.store.get_job(job).await? else {
                        return Err(StoreError::JobNotFound(job.clone()).into());
                    };
                    report.finalized |= self.finalizer(deadline).complete(&current).await?;
                    // Batches are held: if a lease this worker watches runs
                    // out before its deadline, wait for it and look again,
                    // in case its holder died (the sweeper would find it
                    // only on its next pass).
                    if !report.finalized
                        && !current.status.is_final()
                        && self.watch_lease(job, worker_id, deadline).await?
                    {
                        continue;
                    }
                    report.stop = StopReason::NoWork;
                    return Ok(report);
                }
                Claim::JobFinished(_) => {
                    // An ending written in a hurry (an abort through the
                    // API, a finalizer out of time) may still owe its
                    // report and event: a worker woken for it writes them.
                    self.finalizer(deadline).settle(job).await?;
                    report.stop = StopReason::JobFinished;
                    return Ok(report);
                }
            };
            let started = now();
            match self.work_on(&claim, stop_at).await {
                Ok(outcome) => {
                    let (processed, failed) = settled_now(&claim, &outcome);
                    self.metrics.record(Metric::BatchCommitted {
                        job: job.clone(),
                        batch: claim.index,
                        processed,
                        failed,
                        took: self.clock.since(started),
                    });
                    report.batches += 1;
                    report.processed += processed;
                    report.failed += failed;
                    report.finalized |= self.after_commit(&claim, &outcome, deadline).await?;
                    next_in_partition = claim.next.filter(|_| claim.rerun.is_none());
                }
                Err(Unfinished::Store(StoreError::ClaimLost { .. })) => {
                    tracing::warn!(job_id = %job, batch = claim.index, version = claim.version, "claim lost to a reclaim; result dropped");
                    report.lost_claims += 1;
                }
                Err(Unfinished::Store(e)) if e.is_transient() => {
                    // Hand the batch back so another attempt need not wait
                    // for the lease (if this fails too, the lease expires).
                    let _ = self.store.release_batch(&claim, &e.to_string()).await;
                    return Err(e.into());
                }
                Err(Unfinished::Store(e)) => return Err(e.into()),
                Err(Unfinished::Throttle(e)) => {
                    // Like a transient store error: the batch did not fail,
                    // so hand it back for another attempt.
                    if e.is_transient() {
                        let reason = crate::telemetry::error_chain(&e);
                        let _ = self.store.release_batch(&claim, &reason).await;
                    }
                    return Err(e.into());
                }
                Err(Unfinished::Failed(e)) => {
                    // As for a transient store error: this attempt fails and
                    // the batch goes back, so another worker need not wait
                    // for the lease (if this fails too, the lease expires).
                    let reason = crate::telemetry::error_chain(&e);
                    let _ = self.store.release_batch(&claim, &reason).await;
                    return Err(e);
                }
                Err(Unfinished::OutOfTime) => {
                    // The batch did not fail, the invocation ran out: give it
                    // back without it counting toward maxAttempts, so a
                    // batch slowed by the cap is never declared poison.
                    // The next claim works on it again from the start (a
                    // kind's work is safe to repeat). No completion check:
                    // this batch is not done, so the job is not.
                    match self.store.yield_batch(&claim).await {
                        Ok(()) => {
                            tracing::info!(job_id = %job, batch = claim.index, version = claim.version, "out of time under the throughput cap; batch given back")
                        }
                        Err(StoreError::ClaimLost { .. }) => report.lost_claims += 1,
                        Err(e) => {
                            tracing::warn!(job_id = %job, batch = claim.index, error = %e, "giving the batch back failed; its lease will expire")
                        }
                    }
                    report.stop = StopReason::Deadline;
                    return Ok(report);
                }
            }
            slowest = slowest.max(self.clock.since(started));
        }
    }

    /// Works on and commits one claimed batch while keeping its lease
    /// alive; `OutOfTime` when its work has no room before `stop_at`.
    async fn work_on(
        &self,
        claim: &ClaimedBatch,
        stop_at: Option<Instant>,
    ) -> Result<BatchOutcome, Unfinished> {
        let kind = self.kind_of(claim);
        let work = kind.work(claim, stop_at);
        tokio::pin!(work);
        let every = self.settings.lease / 3;
        let outcome = loop {
            tokio::select! {
                // The work first: a batch done when the renewal falls due
                // commits rather than renewing a lease it no longer needs,
                // and the order of a tie does not vary from run to run (a
                // paused clock wakes both at the same instant).
                biased;
                outcome = &mut work => break outcome?,
                _ = self.clock.sleep(every) => {
                    let until = self.clock.now_ms() + self.settings.lease.as_millis() as i64;
                    match self.store.extend_lease(claim, until).await {
                        Ok(()) => {}
                        // Someone reclaimed the batch: stop working on it.
                        Err(e @ StoreError::ClaimLost { .. }) => return Err(e.into()),
                        Err(e) => tracing::warn!(job_id = %claim.job_id, batch = claim.index, error = %e, "lease renewal failed; retrying"),
                    }
                }
            }
        };
        self.store
            .commit_batch(claim, &outcome, self.clock.now_ms())
            .await?;
        Ok(outcome)
    }

    /// The kind of work a claimed batch needs, by what it holds (stored on
    /// the batch): a batch of imported records is the only content today;
    /// another is one line here.
    fn kind_of(&self, claim: &ClaimedBatch) -> Box<dyn BatchKind + '_> {
        match claim.content {
            BatchContent::Records => Box::new(records::Records::of(self)),
        }
    }

    fn finalizer(&self, deadline: Option<Instant>) -> Finalizer<'_> {
        Finalizer::new(
            self.store,
            self.events,
            self.reports,
            self.metrics,
            self.definition,
            self.clock,
        )
        .with_processors(self.processors)
        .until(deadline)
    }

    /// After a commit: fail the job on a failed record when `continueOnError`
    /// is off. (Completion is checked when a worker runs out of batches, not
    /// after every commit, so the per-batch path reads no job-wide state.)
    async fn after_commit(
        &self,
        claim: &ClaimedBatch,
        outcome: &BatchOutcome,
        deadline: Option<Instant>,
    ) -> Result<bool, WorkError> {
        let job = &claim.job_id;
        // A rerun's validation failures are the earlier run's, already
        // counted against the job before.
        let Some(first) = outcome
            .failed
            .iter()
            .find(|f| claim.rerun.is_none() || !f.stage.is_validation())
            .filter(|_| !self.definition.continue_on_error)
        else {
            return Ok(false);
        };
        let message = first
            .issues
            .first()
            .map(|i| i.message.as_str())
            .unwrap_or("record failed");
        let reason = format!("line {}: {message} (continueOnError is false)", first.line);
        Ok(self.finalizer(deadline).fail(job, reason).await?)
    }

    /// Waits while the first lease `worker_id` watches runs out, if that
    /// leaves the margin before the deadline: true once it ran out (or its
    /// batch was committed), so that a claim may find it; false, and at
    /// once, when there is none to watch or no room, or when its holder
    /// shows it is alive by renewing it. It looks every `LEASE_WATCH`, one
    /// query each time.
    async fn watch_lease(
        &self,
        job: &JobId,
        worker_id: &str,
        deadline: Option<Instant>,
    ) -> Result<bool, StoreError> {
        let now_ms = self.clock.now_ms();
        let Some(first) = self.store.next_expiry(job, worker_id, now_ms).await? else {
            return Ok(false);
        };
        let left = Duration::from_millis((first - now_ms).max(0) as u64) + LEASE_SLACK;
        let room = deadline.is_none_or(|d| {
            d.saturating_duration_since(self.clock.instant()) > left + self.settings.deadline_margin
        });
        if !room {
            return Ok(false);
        }
        loop {
            let now_ms = self.clock.now_ms();
            let wait = Duration::from_millis((first - now_ms).max(0) as u64) + LEASE_SLACK;
            self.clock.sleep(wait.min(LEASE_WATCH)).await;
            match self
                .store
                .next_expiry(job, worker_id, self.clock.now_ms())
                .await?
            {
                Some(until) if until > first => return Ok(false),
                Some(_) => {}
                None => return Ok(true),
            }
            if self.clock.now_ms() > first + LEASE_SLACK.as_millis() as i64 {
                return Ok(true);
            }
        }
    }

    /// Completes the job if prepare has finished and every batch is terminal.
    async fn complete(&self, job: &JobId, deadline: Option<Instant>) -> Result<bool, WorkError> {
        let Some(current) = self.store.get_job(job).await? else {
            return Err(StoreError::JobNotFound(job.clone()).into());
        };
        Ok(self.finalizer(deadline).complete(&current).await?)
    }
}

/// The records a commit settled in this run: a rerun's outcome covers the
/// whole batch, and what its earlier run processed, or failed validation,
/// was counted then.
fn settled_now(claim: &ClaimedBatch, outcome: &BatchOutcome) -> (u64, u64) {
    let prior = claim.rerun.unwrap_or(crate::store::Rerun {
        processed: 0,
        failed: 0,
    });
    (
        outcome.processed.saturating_sub(prior.processed),
        (outcome.failed.len() as u64).saturating_sub(prior.failed),
    )
}

#[cfg(test)]
mod tests;
