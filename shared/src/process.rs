//! Phase two (the workers): claim a batch, validate and process its records,
//! commit the outcome fenced by the claim, repeat; whoever commits the last
//! batch finalizes the job, exactly once.

use crate::events::JobEvents;
use crate::finalize::{FinalizeError, Finalizer};
use crate::job::{now_ms, FailedRecord, FieldIssue, JobId, StagedRecord};
use crate::processor::{ProcessContext, RecordProcessor};
use crate::report::ReportSink;
use crate::retry::Backoff;
use crate::schema::{Definition, ValidRecord};
use crate::store::{BatchOutcome, BatchState, Claim, ClaimedBatch, JobStore, StoreError};
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
    pub reports: &'a dyn ReportSink,
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
pub enum WorkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Finalize(#[from] FinalizeError),
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
        let mut slowest = Duration::ZERO;
        let mut waits = 0;
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
                Claim::Batch(c) => {
                    waits = 0;
                    c
                }
                Claim::Wait => {
                    // Prepare is still writing batches: poll, backing off.
                    self.settings.backoff.wait(waits.min(4)).await;
                    waits += 1;
                    continue;
                }
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
                    // for the lease (if this fails too, the lease expires).
                    let _ = self.store.release_batch(&claim, &e.to_string()).await;
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
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

    fn finalizer(&self) -> Finalizer<'_> {
        Finalizer {
            store: self.store,
            events: self.events,
            reports: self.reports,
            definition: self.definition,
        }
    }

    /// After a commit: fail the job on a failed record when `continueOnError`
    /// is off, else complete it if this was the last batch.
    async fn after_commit(&self, job: &JobId, outcome: &BatchOutcome) -> Result<bool, WorkError> {
        if let Some(first) = outcome
            .failed
            .first()
            .filter(|_| !self.definition.continue_on_error)
        {
            let message = first
                .issues
                .first()
                .map(|i| i.message.as_str())
                .unwrap_or("record failed");
            let reason = format!("line {}: {message} (continueOnError is false)", first.line);
            return Ok(self.finalizer().fail(job, reason).await?);
        }
        let Some(current) = self.store.get_job(job).await? else {
            return Err(StoreError::JobNotFound(job.clone()).into());
        };
        Ok(self.finalizer().complete(&current).await?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::MemoryEvents;
    use crate::job::JobStatus;
    use crate::job::SourceRef;
    use crate::processor::ProcessError;
    use crate::report::MemoryReports;
    use crate::store::memory::MemoryStore;
    use crate::store::{CreateOutcome, NewBatch, PrepareLease};
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    const DEFINITION: &str = r#"{"fields": [{"name": "email", "type": "email", "required": true}], "keyField": "email", "batchSize": 2, "maxRetries": 2, "maxAttempts": 3}"#;

    fn definition(extra: &str) -> Definition {
        let text = if extra.is_empty() {
            DEFINITION.to_string()
        } else {
            DEFINITION.replacen('{', &format!("{{{extra},"), 1)
        };
        Definition::from_json(&text, "test").unwrap()
    }

    fn record(line: u64, email: &str) -> StagedRecord {
        StagedRecord {
            line,
            values: vec![Some(email.into())],
            issue: None,
        }
    }

    async fn job(store: &MemoryStore, batches: &[Vec<StagedRecord>]) -> JobId {
        let lease = PrepareLease {
            owner: "o".into(),
            lease_ms: 60_000,
        };
        let src = SourceRef {
            bucket: "b".into(),
            key: "k".into(),
            version: "v".into(),
        };
        let CreateOutcome::Created(job) = store.create_job(&src, &lease, now_ms()).await.unwrap()
        else {
            panic!()
        };
        for (index, records) in batches.iter().enumerate() {
            store
                .add_batch(
                    &job.id,
                    &lease,
                    NewBatch {
                        index: index as u64,
                        records,
                    },
                    now_ms(),
                )
                .await
                .unwrap();
        }
        let total = batches.iter().map(|b| b.len() as u64).sum();
        store
            .finish_prepare(&job.id, &lease, total, batches.len() as u64)
            .await
            .unwrap();
        job.id
    }

    /// Fails every record whose email starts with "flaky" the first `flaky`
    /// times (retryable), and "bad" ones always (permanent).
    #[derive(Default)]
    struct Scripted {
        flaky: u32,
        calls: AtomicU32,
        done: Mutex<Vec<u64>>,
    }

    #[async_trait]
    impl RecordProcessor for Scripted {
        async fn process(
            &self,
            record: &ValidRecord,
            ctx: &ProcessContext<'_>,
        ) -> Result<(), ProcessError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let email = record.values["email"].as_str().unwrap();
            if email.starts_with("bad") {
                return Err(ProcessError::permanent("rejected by the target"));
            }
            if email.starts_with("flaky") && ctx.retry < self.flaky {
                return Err(ProcessError::retryable("timeout"));
            }
            self.done.lock().unwrap().push(record.line);
            Ok(())
        }
    }

    fn settings() -> WorkerSettings {
        WorkerSettings {
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(2)),
            ..WorkerSettings::default()
        }
    }

    #[tokio::test]
    async fn retryable_errors_are_retried_and_permanent_ones_reported() {
        let store = MemoryStore::new();
        let id = job(
            &store,
            &[
                vec![record(2, "flaky@x.org"), record(3, "bad@x.org")],
                vec![record(4, "ok@x.org"), record(5, "nope")],
            ],
        )
        .await;
        let (events, def, s) = (MemoryEvents::default(), definition(""), settings());
        let processor = Scripted {
            flaky: 2,
            ..Default::default()
        };
        let reports = MemoryReports::default();
        let worker = Worker {
            store: &store,
            processor: &processor,
            events: &events,
            reports: &reports,
            definition: &def,
            settings: &s,
        };
        let report = worker.run(&id, "w", None).await.unwrap();
        assert_eq!(
            (
                report.batches,
                report.processed,
                report.failed,
                report.finalized
            ),
            (2, 2, 2, true)
        );
        assert_eq!(*processor.done.lock().unwrap(), vec![2, 4]);
        let failed = store.failed_records(&id, 0).await.unwrap();
        assert_eq!(failed[0].line, 3);
        assert_eq!(
            failed[0].issues[0].message,
            "processing failed: rejected by the target"
        );
        let invalid = store.failed_records(&id, 1).await.unwrap();
        assert_eq!(
            (invalid[0].line, invalid[0].issues[0].field.as_deref()),
            (5, Some("email"))
        );
        let j = store.get_job(&id).await.unwrap().unwrap();
        assert_eq!(j.status, JobStatus::CompletedWithErrors);
        assert_eq!(events.completed.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_record_still_failing_after_max_retries_is_reported_with_the_count() {
        let store = MemoryStore::new();
        let id = job(&store, &[vec![record(2, "flaky@x.org")]]).await;
        let (events, def, s) = (MemoryEvents::default(), definition(""), settings());
        let processor = Scripted {
            flaky: 10,
            ..Default::default()
        };
        let reports = MemoryReports::default();
        let worker = Worker {
            store: &store,
            processor: &processor,
            events: &events,
            reports: &reports,
            definition: &def,
            settings: &s,
        };
        worker.run(&id, "w", None).await.unwrap();
        assert_eq!(
            processor.calls.load(Ordering::SeqCst),
            3,
            "first try + maxRetries"
        );
        let failed = store.failed_records(&id, 0).await.unwrap();
        assert_eq!(
            failed[0].issues[0].message,
            "processing failed after 2 retries: timeout"
        );
        let j = store.get_job(&id).await.unwrap().unwrap();
        assert_eq!(j.status, JobStatus::Failed, "every record failed");
        assert_eq!(j.failure_reason.as_deref(), Some("all 1 records failed"));
    }

    #[tokio::test]
    async fn poison_batch_is_failed_after_max_attempts_and_the_job_still_finishes() {
        let store = MemoryStore::new();
        let id = job(
            &store,
            &[
                vec![record(2, "a@x.org"), record(3, "b@x.org")],
                vec![record(4, "c@x.org")],
            ],
        )
        .await;
        // Batch 1 goes through; three workers in a row claim batch 0 and die.
        let long_ago = now_ms() - 600_000;
        let Claim::Batch(c) = store
            .claim_batch(&id, "doomed", long_ago, 60_000)
            .await
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(c.index, 0);
        let Claim::Batch(ok) = store
            .claim_batch(&id, "fine", long_ago, 60_000)
            .await
            .unwrap()
        else {
            panic!()
        };
        let outcome = BatchOutcome {
            state: BatchState::Done,
            processed: 1,
            failed: vec![],
            error: None,
        };
        store.commit_batch(&ok, &outcome, long_ago).await.unwrap();
        for attempt in 1..3 {
            let Claim::Batch(c) = store
                .claim_batch(&id, "doomed", long_ago + attempt * 61_000, 60_000)
                .await
                .unwrap()
            else {
                panic!()
            };
            assert_eq!((c.index, c.version), (0, attempt as u64 + 1));
        }
        let (events, def, s) = (MemoryEvents::default(), definition(""), settings());
        let processor = Scripted::default();
        let reports = MemoryReports::default();
        let worker = Worker {
            store: &store,
            processor: &processor,
            events: &events,
            reports: &reports,
            definition: &def,
            settings: &s,
        };
        let report = worker.run(&id, "w", None).await.unwrap();
        assert!(report.finalized);
        let info = store.batch_info(&id, 0).await.unwrap().unwrap();
        assert_eq!(
            (info.state, info.version, info.failed),
            (BatchState::Failed, 4, 2)
        );
        assert!(info
            .last_error
            .unwrap()
            .starts_with("batch abandoned after 3 attempts"));
        let failed = store.failed_records(&id, 0).await.unwrap();
        assert_eq!(
            failed.iter().map(|f| f.line).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(
            processor.done.lock().unwrap().is_empty(),
            "the poison batch's records were not processed"
        );
        let j = store.get_job(&id).await.unwrap().unwrap();
        assert_eq!(
            (j.status, j.processed, j.failed),
            (JobStatus::CompletedWithErrors, 1, 2)
        );
    }

    #[tokio::test]
    async fn continue_on_error_false_fails_the_job_at_the_first_failed_record() {
        let store = MemoryStore::new();
        let id = job(
            &store,
            &[
                vec![record(2, "ok@x.org"), record(3, "nope")],
                vec![record(4, "c@x.org")],
            ],
        )
        .await;
        let (events, def, s) = (
            MemoryEvents::default(),
            definition(r#""continueOnError": false"#),
            settings(),
        );
        let processor = Scripted::default();
        let reports = MemoryReports::default();
        let worker = Worker {
            store: &store,
            processor: &processor,
            events: &events,
            reports: &reports,
            definition: &def,
            settings: &s,
        };
        let report = worker.run(&id, "w", None).await.unwrap();
        assert_eq!(
            (report.stop, report.batches, report.finalized),
            (StopReason::JobFinished, 1, true)
        );
        let j = store.get_job(&id).await.unwrap().unwrap();
        assert_eq!(j.status, JobStatus::Failed);
        assert!(j.failure_reason.unwrap().starts_with("line 3: "));
        assert_eq!(events.completed.lock().unwrap().len(), 1);
    }

    /// Holds every record until released, so a test can act mid-batch.
    struct Gate(tokio::sync::Notify);

    #[async_trait]
    impl RecordProcessor for Gate {
        async fn process(
            &self,
            _record: &ValidRecord,
            _ctx: &ProcessContext<'_>,
        ) -> Result<(), ProcessError> {
            self.0.notified().await;
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn worker_whose_lease_was_taken_stops_and_drops_its_result() {
        let store = MemoryStore::new();
        let id = job(&store, &[vec![record(2, "a@x.org")]]).await;
        let (events, def) = (MemoryEvents::default(), definition(""));
        let s = WorkerSettings {
            lease: Duration::from_secs(3),
            ..settings()
        };
        let gate = Gate(tokio::sync::Notify::new());
        let reports = MemoryReports::default();
        let worker = Worker {
            store: &store,
            processor: &gate,
            events: &events,
            reports: &reports,
            definition: &def,
            settings: &s,
        };
        let run = worker.run(&id, "slow", None);
        tokio::pin!(run);
        // Let the slow worker claim the batch and block in the processor.
        tokio::select! { _ = &mut run => panic!("the gate holds the worker"), _ = tokio::task::yield_now() => {} }
        let held = store.batch_info(&id, 0).await.unwrap().unwrap();
        assert_eq!(held.worker.as_deref(), Some("slow"));
        // Another worker reclaims it as if the lease had expired.
        let Claim::Batch(fresh) = store
            .claim_batch(&id, "fresh", held.lease_until_ms + 1, 60_000)
            .await
            .unwrap()
        else {
            panic!()
        };
        // The slow worker's next heartbeat finds the claim gone and stops.
        let report = run.await.unwrap();
        assert_eq!((report.lost_claims, report.batches), (1, 0));
        store
            .commit_batch(
                &fresh,
                &BatchOutcome {
                    state: BatchState::Done,
                    processed: 1,
                    failed: vec![],
                    error: None,
                },
                now_ms(),
            )
            .await
            .unwrap();
        assert_eq!(store.get_job(&id).await.unwrap().unwrap().processed, 1);
    }
}
