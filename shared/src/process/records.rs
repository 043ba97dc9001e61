//! The kind of every batch today: a batch of imported records, staged by
//! prepare. Working on one loads its records (checked against the count the
//! claim carries), validates them against the job's definition, runs the
//! processor on the valid ones with retries, under the job's throughput cap,
//! and ends with the processor's `finish_batch`. A rerun after an operator's
//! retry keeps what the earlier run settled (`Earlier`); a batch claimed
//! past `maxAttempts` fails without being processed (`poisoned`, or
//! `unloadable` when its records cannot be read).
//!
//! Claiming, the lease, the commit and what becomes of a batch whose work
//! ends unfinished belong to the protocol, in the parent module: this file
//! only turns a claimed batch into its outcome.

use super::{BatchKind, Unfinished, WorkError, Worker, WorkerSettings};
use crate::clock::{Clock, Instant};
use crate::job::{FailedRecord, FieldIssue, StagedRecord};
use crate::metrics::{Metric, MetricsSink};
use crate::processor::{BatchContext, Duplicates, ProcessContext, ProcessError, RecordProcessor};
use crate::rng::Rng;
use crate::schema::{Definition, ValidRecord};
use crate::store::{BatchOutcome, BatchState, ClaimedBatch, JobStore, StoreError};
use crate::throttle::{self, Grant, Limiter, Throttle};
use async_trait::async_trait;

/// A batch of records and what working on it uses: the worker's backends
/// less those of the job's ending (events, reports).
pub(super) struct Records<'a> {
    store: &'a dyn JobStore,
    processor: &'a dyn RecordProcessor,
    throttle: &'a dyn Throttle,
    metrics: &'a dyn MetricsSink,
    definition: &'a Definition,
    job_created_at_ms: i64,
    settings: &'a WorkerSettings,
    clock: &'a Clock,
    rng: &'a Rng,
}

impl<'a> Records<'a> {
    pub(super) fn of(worker: &Worker<'a>) -> Self {
        Records {
            store: worker.store,
            processor: worker.processor,
            throttle: worker.throttle,
            metrics: worker.metrics,
            definition: worker.definition,
            job_created_at_ms: worker.job_created_at_ms,
            settings: worker.settings,
            clock: worker.clock,
            rng: worker.rng,
        }
    }
}

#[async_trait]
impl BatchKind for Records<'_> {
    /// Validates and processes the batch's records into an outcome.
    async fn work(
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
                // The protocol gives back only transiently failed batches;
                // give this one back too, so the next attempt need not wait for the
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
        let duplicates = Duplicates::default();
        let processed = self
            .run_processor(claim, &valid, &mut failed, &duplicates, stop_at)
            .await?;
        let batch = BatchContext {
            job_id: &claim.job_id,
            batch_index: claim.index,
            round: claim.round,
            definition: self.definition,
        };
        self.processor
            .finish_batch(&batch)
            .await
            .map_err(|source| {
                Unfinished::Failed(WorkError::FinishBatch {
                    job: claim.job_id.clone(),
                    batch: claim.index,
                    source,
                })
            })?;
        failed.sort_by_key(|f| f.line);
        Ok(BatchOutcome {
            state: BatchState::Done,
            processed: settled + processed,
            failed,
            error: None,
            // The first run counted every repeat it met, failed rows included.
            duplicates: if claim.rerun.is_some() {
                0
            } else {
                duplicates.count()
            },
        })
    }
}

impl Records<'_> {
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
        duplicates: &Duplicates,
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
                job_created_at_ms: self.job_created_at_ms,
                batch_index: claim.index,
                retry,
                definition: self.definition,
                duplicates,
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
        duplicates: 0,
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
        duplicates: 0,
    }
}
