//! Phase two (the workers): claim a batch, validate and process its records,
//! commit the outcome fenced by the claim, repeat; whoever commits the last
//! batch finalizes the job, exactly once.

use crate::clock::{Clock, Instant};
use crate::events::JobEvents;
use crate::finalize::{FinalizeError, Finalizer};
use crate::job::{FailedRecord, FieldIssue, JobId, StagedRecord};
use crate::metrics::{Metric, MetricsSink};
use crate::processor::{BatchContext, ProcessContext, ProcessError, RecordProcessor};
use crate::report::ReportSink;
use crate::retry::Backoff;
use crate::rng::Rng;
use crate::schema::{Definition, ValidRecord};
use crate::store::{BatchOutcome, BatchState, Claim, ClaimedBatch, JobStore, StoreError};
use crate::throttle::{self, Grant, Limiter, Throttle, ThrottleError};
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
    pub settings: &'a WorkerSettings,
    /// Leases, deadlines, the cap's windows and every wait.
    pub clock: &'a Clock,
    /// Jitter of backoffs and of waits for the cap.
    pub rng: &'a Rng,
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

/// Why work on a claimed batch ended without an outcome to commit.
#[derive(Debug, thiserror::Error)]
enum Unfinished {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The throughput cap's windows could not be reached.
    #[error(transparent)]
    Throttle(#[from] ThrottleError),
    /// The throughput cap has no room left before the worker must stop.
    #[error("the throughput cap has no room before the invocation's deadline")]
    OutOfTime,
    /// The processor's `finish_batch` failed.
    #[error("finishing the batch failed")]
    Finish(#[source] ProcessError),
}

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
            let claim = match self
                .store
                .claim_batch(job, worker_id, self.clock.now_ms(), lease_ms)
                .await?
            {
                Claim::Batch(c) => {
                    waits = 0;
                    c
                }
                Claim::Wait => {
                    // Prepare is still writing batches: poll, backing off,
                    // with reads (cheaper than a failing cursor write) until
                    // there is something new to claim.
                    loop {
                        self.settings
                            .backoff
                            .sleep(waits.min(4), self.clock, self.rng)
                            .await;
                        waits += 1;
                        let Some(j) = self.store.get_job(job).await? else {
                            break;
                        };
                        let nothing_new = !j.prepared && j.batches_handed_out >= j.batches_ready;
                        let out_of_time = deadline.is_some_and(|d| {
                            d.saturating_duration_since(now()) < self.settings.deadline_margin
                        });
                        if j.status.is_final() || !nothing_new || out_of_time {
                            break;
                        }
                    }
                    continue;
                }
                Claim::NoneAvailable => {
                    // Whoever finds nothing left after the last commit
                    // finalizes; every committer looks once more before it
                    // leaves, so the last one always sees the full count.
                    report.finalized |= self.complete(job, deadline).await?;
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
                Err(Unfinished::Finish(source)) => {
                    // As for a transient store error: this attempt fails and
                    // the batch goes back, so another worker need not wait
                    // for the lease (if this fails too, the lease expires).
                    let e = WorkError::FinishBatch {
                        job: job.clone(),
                        batch: claim.index,
                        source,
                    };
                    let reason = crate::telemetry::error_chain(&e);
                    let _ = self.store.release_batch(&claim, &reason).await;
                    return Err(e);
                }
                Err(Unfinished::OutOfTime) => {
                    // The batch did not fail, the invocation ran out: give it
                    // back without it counting toward maxAttempts, so a
                    // batch slowed by the cap is never declared poison.
                    // The next claim writes its records again from the
                    // first (processors are idempotent). No completion
                    // check: this batch is not done, so the job is not.
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

    /// Processes and commits one claimed batch while keeping its lease
    /// alive; `OutOfTime` when the cap leaves no room before `stop_at`.
    async fn work_on(
        &self,
        claim: &ClaimedBatch,
        stop_at: Option<Instant>,
    ) -> Result<BatchOutcome, Unfinished> {
        let work = self.process(claim, stop_at);
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

    /// Validates and processes the batch's records into an outcome.
    async fn process(
        &self,
        claim: &ClaimedBatch,
        stop_at: Option<Instant>,
    ) -> Result<BatchOutcome, Unfinished> {
        let max_attempts = u64::from(self.definition.max_attempts);
        // A retry's rerun keeps what the earlier run settled: records that
        // succeeded, and validation failures (the file is what it is).
        let earlier = match claim.rerun {
            Some(_) => Some(Earlier::of(
                self.store
                    .failed_records(&claim.job_id, claim.index)
                    .await?,
            )),
            None => None,
        };
        let records = match self.load(claim).await {
            Ok(records) => records,
            // Every claim of a corrupt batch fails the same way: after
            // maxAttempts it is a poison batch, failed without its records.
            Err(e @ StoreError::Corrupt { .. }) if claim.attempt > max_attempts => {
                let mut outcome = unloadable(claim, &e, max_attempts);
                if let (Some(earlier), Some(prior)) = (earlier, claim.rerun) {
                    let rerun = claim.record_count - prior.processed - prior.failed;
                    outcome.failed.truncate(rerun as usize);
                    outcome.failed.extend(earlier.kept);
                    outcome.processed = prior.processed;
                }
                return Ok(outcome);
            }
            Err(e @ StoreError::Corrupt { .. }) => {
                // `run` gives back only transiently failed batches; give this
                // one back too, so the next attempt need not wait for the
                // lease and the last one can say what went wrong.
                if let Err(release) = self.store.release_batch(claim, &e.to_string()).await {
                    tracing::warn!(job_id = %claim.job_id, batch = claim.index, error = %release, "releasing an unloadable batch failed; its lease will expire");
                }
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        let (records, mut failed, settled) = match earlier {
            Some(earlier) => earlier.split(records, claim.rerun.map_or(0, |r| r.processed)),
            None => (records, Vec::new(), 0),
        };
        if claim.attempt > max_attempts {
            let mut outcome = poisoned(claim, &records, max_attempts);
            outcome.processed = settled;
            outcome.failed.append(&mut failed);
            outcome.failed.sort_by_key(|f| f.line);
            return Ok(outcome);
        }
        let mut valid = Vec::with_capacity(records.len());
        for record in &records {
            match self.definition.validate(record) {
                Ok(v) => valid.push(v),
                Err(issues) => failed.push(FailedRecord::invalid(record.line, issues)),
            }
        }
        let processed = self
            .run_processor(claim, &valid, &mut failed, stop_at)
            .await?;
        let batch = BatchContext {
            job_id: &claim.job_id,
            batch_index: claim.index,
            definition: self.definition,
        };
        self.processor
            .finish_batch(&batch)
            .await
            .map_err(Unfinished::Finish)?;
        failed.sort_by_key(|f| f.line);
        Ok(BatchOutcome {
            state: BatchState::Done,
            processed: settled + processed,
            failed,
            error: None,
        })
    }

    /// The batch's records, checked against the count the claim carries (a
    /// lost chunk item shows only as missing records).
    async fn load(&self, claim: &ClaimedBatch) -> Result<Vec<StagedRecord>, StoreError> {
        let records = self.store.load_records(&claim.job_id, claim.index).await?;
        if records.len() as u64 != claim.record_count {
            return Err(StoreError::Corrupt {
                job: claim.job_id.clone(),
                message: format!(
                    "batch {} holds {} records, expected {}",
                    claim.index,
                    records.len(),
                    claim.record_count
                ),
            });
        }
        Ok(records)
    }

    /// Runs the processor with retries for retryable errors; returns how many
    /// records succeeded and adds the rest to `failed`. Fails only when the
    /// throughput cap's windows cannot be reached or have no room before
    /// `stop_at`.
    async fn run_processor(
        &self,
        claim: &ClaimedBatch,
        valid: &[ValidRecord],
        failed: &mut Vec<FailedRecord>,
        stop_at: Option<Instant>,
    ) -> Result<u64, Unfinished> {
        let mut pending: Vec<&ValidRecord> = valid.iter().collect();
        let mut processed = 0;
        let max_retries = self.definition.max_retries;
        for retry in 0..=max_retries {
            if retry > 0 {
                self.settings
                    .backoff
                    .sleep(retry - 1, self.clock, self.rng)
                    .await;
            }
            let ctx = ProcessContext {
                job_id: &claim.job_id,
                batch_index: claim.index,
                retry,
                definition: self.definition,
            };
            let results = self.call_processor(claim, &pending, &ctx, stop_at).await?;
            let mut again = Vec::new();
            for (record, result) in pending.into_iter().zip(results) {
                match result {
                    Ok(()) => processed += 1,
                    Err(e) if e.is_retryable() && retry < max_retries => again.push(record),
                    Err(e) => {
                        let message = if e.is_retryable() {
                            format!("processing failed after {} retries: {e}", max_retries)
                        } else {
                            format!("processing failed: {e}")
                        };
                        failed.push(FailedRecord::unprocessed(
                            record.line,
                            vec![FieldIssue::new(None, None, message)],
                        ));
                    }
                }
            }
            if again.is_empty() {
                break;
            }
            self.metrics.record(Metric::ProcessorRetries {
                records: again.len() as u64,
            });
            pending = again;
        }
        Ok(processed)
    }

    /// One result per record from the processor. Under a throughput cap the
    /// records go in slices of at most a tenth of the cap, each reserved in
    /// the job's current window first (waiting for a window with room), so
    /// a batch larger than the cap spreads over several seconds, and stops
    /// (`OutOfTime`) rather than wait for a window past `stop_at`.
    async fn call_processor(
        &self,
        claim: &ClaimedBatch,
        records: &[&ValidRecord],
        ctx: &ProcessContext<'_>,
        stop_at: Option<Instant>,
    ) -> Result<Vec<Result<(), ProcessError>>, Unfinished> {
        let cap = throttle::cap_of(
            self.definition.max_write_units_per_second,
            self.settings.max_write_units_per_second,
        );
        // A processor that does not write DynamoDB costs nothing against
        // the cap: it runs as if there were none.
        let (Some(cap), Some(cost)) = (cap, self.processor.write_cost()) else {
            let results = self.processor.process_batch(records, ctx).await;
            return Ok(one_result_per_record(claim, records.len(), results));
        };
        let limiter = Limiter {
            throttle: self.throttle,
            clock: self.clock,
            rng: self.rng,
            job: &claim.job_id,
            cap,
            stop_at,
        };
        let units: Vec<u64> = records.iter().map(|r| cost.write_units(r, ctx)).collect();
        let mut results = Vec::with_capacity(records.len());
        for run in throttle::slices(&units, limiter.slice()) {
            let acquired = match limiter.acquire(units[run.clone()].iter().sum()).await? {
                Grant::Granted(acquired) => acquired,
                Grant::OutOfTime(_) => return Err(Unfinished::OutOfTime),
            };
            if acquired.full > 0 {
                tracing::debug!(job_id = %claim.job_id, batch = claim.index, windows_full = acquired.full, "waited for the throughput cap");
            }
            let slice = &records[run];
            let answers = self.processor.process_batch(slice, ctx).await;
            results.extend(one_result_per_record(claim, slice.len(), answers));
        }
        Ok(results)
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

/// What a requeued batch's earlier run settled: its validation failures
/// (kept as they are) and the lines whose processing failed (run again).
struct Earlier {
    kept: Vec<FailedRecord>,
    rerun: std::collections::HashSet<u64>,
    /// The earlier run could not load the records (failures on line 0): run
    /// every record not kept.
    all: bool,
}

impl Earlier {
    fn of(failures: Vec<FailedRecord>) -> Self {
        let (kept, rerun): (Vec<_>, Vec<_>) =
            failures.into_iter().partition(|f| f.stage.is_validation());
        Earlier {
            all: rerun.iter().any(|f| f.line == 0),
            rerun: rerun.iter().map(|f| f.line).collect(),
            kept,
        }
    }

    /// The records to run again, the failures kept, and how many records
    /// the earlier run processed (`processed`, which stays counted).
    fn split(
        self,
        records: Vec<StagedRecord>,
        processed: u64,
    ) -> (Vec<StagedRecord>, Vec<FailedRecord>, u64) {
        let kept_lines: std::collections::HashSet<u64> = self.kept.iter().map(|f| f.line).collect();
        let rerun = records
            .into_iter()
            .filter(|r| {
                if self.all {
                    !kept_lines.contains(&r.line)
                } else {
                    self.rerun.contains(&r.line)
                }
            })
            .collect();
        (rerun, self.kept, if self.all { 0 } else { processed })
    }
}

/// A processor must answer once per record, in order. A miscounting one
/// must not make records vanish from both counts: records left without a
/// result fail (permanently: retrying a bug does not fix it), and surplus
/// results, which belong to no record, are dropped.
fn one_result_per_record(
    claim: &ClaimedBatch,
    records: usize,
    mut results: Vec<Result<(), ProcessError>>,
) -> Vec<Result<(), ProcessError>> {
    let returned = results.len();
    if returned != records {
        tracing::error!(job_id = %claim.job_id, batch = claim.index, returned, records, "the processor returned a result count different from the record count");
        let message = format!("the processor returned {returned} results for {records} records");
        results.truncate(records);
        results.resize_with(records, || Err(ProcessError::permanent(message.clone())));
    }
    results
}

/// A batch claimed more than `max_attempts` times crashed every worker that
/// took it: fail its records (with their lines) so the job can finish.
fn poisoned(claim: &ClaimedBatch, records: &[StagedRecord], max_attempts: u64) -> BatchOutcome {
    let cause = claim
        .last_error
        .as_deref()
        .unwrap_or("the worker stopped without committing");
    let message = format!("batch abandoned after {max_attempts} attempts; last error: {cause}");
    tracing::error!(job_id = %claim.job_id, batch = claim.index, attempts = claim.attempt - 1, "poison batch failed");
    BatchOutcome {
        state: BatchState::Failed,
        processed: 0,
        failed: records
            .iter()
            .map(|r| {
                FailedRecord::unprocessed(
                    r.line,
                    vec![FieldIssue::new(None, None, message.clone())],
                )
            })
            .collect(),
        error: Some(message),
    }
}

/// A poison batch whose records cannot be loaded: its lines are unknown,
/// but its record count is not, and the job's counters must add up to it.
/// So each record fails on line 0 with a message that names the batch.
fn unloadable(claim: &ClaimedBatch, error: &StoreError, max_attempts: u64) -> BatchOutcome {
    let message = format!(
        "batch {}: records could not be loaded after {max_attempts} attempts: {error}",
        claim.index
    );
    tracing::error!(job_id = %claim.job_id, batch = claim.index, attempts = claim.attempt - 1, error = %error, "unloadable batch failed");
    BatchOutcome {
        state: BatchState::Failed,
        processed: 0,
        failed: (0..claim.record_count)
            .map(|_| {
                FailedRecord::unprocessed(0, vec![FieldIssue::new(None, None, message.clone())])
            })
            .collect(),
        error: Some(message),
    }
}

#[cfg(test)]
mod tests;
