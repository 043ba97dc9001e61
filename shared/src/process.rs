//! Phase two (the workers): claim a batch, validate and process its records,
//! commit the outcome fenced by the claim, repeat; whoever commits the last
//! batch finalizes the job, exactly once.

use crate::events::JobEvents;
use crate::job::{now_ms, FailedRecord, FieldIssue, Job, JobId, JobStatus, StagedRecord};
use crate::processor::{ProcessContext, RecordProcessor};
use crate::retry::Backoff;
use crate::schema::{Definition, ValidRecord};
use crate::store::{
    BatchOutcome, BatchState, Claim, ClaimedBatch, Finalization, JobStore, StoreError,
};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// A claim's lease; renewed every `lease / 3` while the batch is worked on.
    pub lease: Duration,
    /// Stop claiming when less than this (or twice the slowest batch so far)
    /// is left before the deadline.
    pub deadline_margin: Duration,
    pub backoff: Backoff,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            lease: Duration::from_secs(60),
            deadline_margin: Duration::from_secs(20),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
        }
    }
}

pub struct Worker<'a> {
    pub store: &'a dyn JobStore,
    pub processor: &'a dyn RecordProcessor,
    pub events: &'a dyn JobEvents,
    pub definition: &'a Definition,
    pub settings: &'a WorkerSettings,
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
pub enum FinalizeError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Finalizes `job` if prepare has finished and every batch is terminal.
/// True for the one caller whose conditional update succeeded; only it emits
/// the job-completed event.
pub async fn try_finalize(
    store: &dyn JobStore,
    events: &dyn JobEvents,
    definition: &Definition,
    job: &Job,
) -> Result<bool, FinalizeError> {
    if job.status.is_final() || !job.all_batches_done() {
        return Ok(false);
    }
    let (status, reason) = final_status(job, definition);
    let fin = Finalization {
        status,
        reason,
        report: None,
        now_ms: now_ms(),
    };
    if !store.finalize(&job.id, &fin, true).await? {
        return Ok(false);
    }
    announce(store, events, &job.id).await?;
    Ok(true)
}

async fn announce(
    store: &dyn JobStore,
    events: &dyn JobEvents,
    job: &JobId,
) -> Result<(), StoreError> {
    if let Some(done) = store.get_job(job).await? {
        let summary = done.summary(now_ms());
        tracing::info!(job_id = %job, status = %summary.status, processed = summary.processed, failed = summary.failed, "job finalized");
        if let Err(e) = events.job_completed(&summary).await {
            tracing::error!(job_id = %job, error = %e, "job-completed event could not be published");
        }
    }
    Ok(())
}

/// The final status follows from the counters, which cannot change once
/// every batch is terminal.
pub fn final_status(job: &Job, definition: &Definition) -> (JobStatus, Option<String>) {
    let total = job.processed + job.failed;
    if job.failed == 0 {
        (JobStatus::Completed, None)
    } else if !definition.continue_on_error {
        (
            JobStatus::Failed,
            Some(format!(
                "{} of {total} records failed and continueOnError is false",
                job.failed
            )),
        )
    } else if job.processed == 0 {
        (
            JobStatus::Failed,
            Some(format!("all {total} records failed")),
        )
    } else {
        (JobStatus::CompletedWithErrors, None)
    }
}

impl Worker<'_> {
    /// Works on `job` until nothing is claimable or `deadline` is near.
    pub async fn run(
        &self,
        job: &JobId,
        worker_id: &str,
        deadline: Option<Instant>,
    ) -> Result<RunReport, StoreError> {
        let mut report = RunReport {
            stop: StopReason::NoWork,
            batches: 0,
            processed: 0,
            failed: 0,
            lost_claims: 0,
            finalized: false,
        };
        let mut slowest = Duration::ZERO;
        loop {
            if let Some(deadline) = deadline {
                let needed = self.settings.deadline_margin.max(slowest * 2);
                if deadline.saturating_duration_since(Instant::now()) < needed {
                    report.stop = StopReason::Deadline;
                    return Ok(report);
                }
            }
            let lease_ms = self.settings.lease.as_millis() as i64;
            let claim = match self
                .store
                .claim_batch(job, worker_id, now_ms(), lease_ms)
                .await?
            {
                Claim::Batch(c) => c,
                Claim::NoneAvailable => {
                    report.stop = StopReason::NoWork;
                    return Ok(report);
                }
                Claim::JobFinished(_) => {
                    report.stop = StopReason::JobFinished;
                    return Ok(report);
                }
            };
            let started = Instant::now();
            match self.work_on(&claim).await {
                Ok(outcome) => {
                    report.batches += 1;
                    report.processed += outcome.processed;
                    report.failed += outcome.failed.len() as u64;
                    report.finalized |= self.after_commit(job, &outcome).await?;
                }
                Err(StoreError::ClaimLost { .. }) => {
                    tracing::warn!(job_id = %job, batch = claim.index, version = claim.version, "claim lost to a reclaim; result dropped");
                    report.lost_claims += 1;
                }
                Err(e) if e.is_transient() => {
                    // Hand the batch back so another attempt need not wait
                    // for the lease; the error is the batch's last error.
                    let _ = self.store.release_batch(&claim, &e.to_string()).await;
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
            slowest = slowest.max(started.elapsed());
        }
    }

    /// Processes and commits one claimed batch while keeping its lease alive.
    async fn work_on(&self, claim: &ClaimedBatch) -> Result<BatchOutcome, StoreError> {
        let work = self.process(claim);
        tokio::pin!(work);
        let every = self.settings.lease / 3;
        let outcome = loop {
            tokio::select! {
                outcome = &mut work => break outcome?,
                _ = tokio::time::sleep(every) => {
                    let until = now_ms() + self.settings.lease.as_millis() as i64;
                    match self.store.extend_lease(claim, until).await {
                        Ok(()) => {}
                        // Someone reclaimed the batch: stop working on it.
                        Err(e @ StoreError::ClaimLost { .. }) => return Err(e),
                        Err(e) => tracing::warn!(job_id = %claim.job_id, batch = claim.index, error = %e, "lease renewal failed; retrying"),
                    }
                }
            }
        };
        self.store.commit_batch(claim, &outcome, now_ms()).await?;
        Ok(outcome)
    }

    /// Validates and processes the batch's records into an outcome.
    async fn process(&self, claim: &ClaimedBatch) -> Result<BatchOutcome, StoreError> {
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
        let max_attempts = u64::from(self.definition.max_attempts);
        if claim.version > max_attempts {
            return Ok(poisoned(claim, &records, max_attempts));
        }
        let mut failed = Vec::new();
        let mut valid = Vec::with_capacity(records.len());
        for record in &records {
            match self.definition.validate(record) {
                Ok(v) => valid.push(v),
                Err(issues) => failed.push(FailedRecord {
                    line: record.line,
                    issues,
                }),
            }
        }
        let processed = self.run_processor(claim, &valid, &mut failed).await;
        failed.sort_by_key(|f| f.line);
        Ok(BatchOutcome {
            state: BatchState::Done,
            processed,
            failed,
            error: None,
        })
    }

    /// Runs the processor with retries for retryable errors; returns how many
    /// records succeeded and adds the rest to `failed`.
    async fn run_processor(
        &self,
        claim: &ClaimedBatch,
        valid: &[ValidRecord],
        failed: &mut Vec<FailedRecord>,
    ) -> u64 {
        let mut pending: Vec<&ValidRecord> = valid.iter().collect();
        let mut processed = 0;
        let max_retries = self.definition.max_retries;
        for retry in 0..=max_retries {
            if retry > 0 {
                self.settings.backoff.wait(retry - 1).await;
            }
            let ctx = ProcessContext {
                job_id: &claim.job_id,
                batch_index: claim.index,
                retry,
                definition: self.definition,
            };
            let results = self.processor.process_batch(&pending, &ctx).await;
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
                        failed.push(FailedRecord {
                            line: record.line,
                            issues: vec![FieldIssue::new(None, None, message)],
                        });
                    }
                }
            }
            if again.is_empty() {
                break;
            }
            pending = again;
        }
        processed
    }

    /// After a commit: abort the job on a failure when `continueOnError` is
    /// off, else finalize it if this was the last batch.
    async fn after_commit(&self, job: &JobId, outcome: &BatchOutcome) -> Result<bool, StoreError> {
        if !outcome.failed.is_empty() && !self.definition.continue_on_error {
            let first = &outcome.failed[0];
            let reason = format!(
                "line {}: {} (continueOnError is false)",
                first.line,
                first
                    .issues
                    .first()
                    .map(|i| i.message.as_str())
                    .unwrap_or("record failed")
            );
            let fin = Finalization {
                status: JobStatus::Failed,
                reason: Some(reason),
                report: None,
                now_ms: now_ms(),
            };
            if self.store.finalize(job, &fin, false).await? {
                announce(self.store, self.events, job).await?;
                return Ok(true);
            }
            return Ok(false);
        }
        let Some(current) = self.store.get_job(job).await? else {
            return Err(StoreError::JobNotFound(job.clone()));
        };
        try_finalize(self.store, self.events, self.definition, &current)
            .await
            .map_err(|FinalizeError::Store(e)| e)
    }
}

/// A batch claimed more than `max_attempts` times crashed every worker that
/// took it: fail its records (with their lines) so the job can finish.
fn poisoned(claim: &ClaimedBatch, records: &[StagedRecord], max_attempts: u64) -> BatchOutcome {
    let cause = claim
        .last_error
        .as_deref()
        .unwrap_or("the worker stopped without committing");
    let message = format!("batch abandoned after {max_attempts} attempts; last error: {cause}");
    tracing::error!(job_id = %claim.job_id, batch = claim.index, attempts = claim.version - 1, "poison batch failed");
    BatchOutcome {
        state: BatchState::Failed,
        processed: 0,
        failed: records
            .iter()
            .map(|r| FailedRecord {
                line: r.line,
                issues: vec![FieldIssue::new(None, None, message.clone())],
            })
            .collect(),
        error: Some(message),
    }
}
