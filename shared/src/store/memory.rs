//! In-memory `JobStore` with the same protocol as the DynamoDB one: batches
//! are written, then published; a cursor hands out published batch indexes,
//! expired or orphaned batches are reclaimed after the cursor runs out,
//! every write after a claim is fenced by its version.

use super::*;
use crate::job::Cost;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

#[derive(Debug, Clone)]
struct StoredBatch {
    info: BatchInfo,
    records: Vec<StagedRecord>,
    failures: Vec<FailedRecord>,
    /// The claim version when the batch was last queued.
    base_version: u64,
    rerun: Option<Rerun>,
    /// The round that last ran or requeued it.
    round: u32,
}

#[derive(Debug)]
struct JobState {
    job: Job,
    prepare: Option<(String, i64)>,
    /// Written batches, published or not (`job.batches_ready` says).
    batches: BTreeMap<u64, StoredBatch>,
    /// Handed-out batches not yet terminal (what the DynamoDB store's
    /// lease index holds): a claim past the cursor looks only at these.
    open: std::collections::BTreeSet<u64>,
    /// Prepare lease renewals without publication.
    renewals: u64,
}

impl JobState {
    /// Whether `lease` may still write this job's batches.
    fn preparing(&self, lease: &PrepareLease) -> bool {
        matches!(&self.prepare, Some((owner, _)) if owner == &lease.owner)
            && !self.job.prepared
            && !self.job.status.is_final()
    }
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    jobs: Mutex<HashMap<JobId, JobState>>,
    definitions: Mutex<HashMap<JobId, String>>,
    columns: Mutex<HashMap<JobId, Vec<String>>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times the prepare lease of `job` was renewed without a
    /// publication (a timing-free view for tests).
    pub fn prepare_renewals(&self, job: &JobId) -> u64 {
        let jobs = self.jobs.lock().expect("memory store poisoned");
        jobs.get(job).map_or(0, |s| s.renewals)
    }

    fn with_job<T>(
        &self,
        job: &JobId,
        f: impl FnOnce(&mut JobState) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut jobs = self.jobs.lock().expect("memory store poisoned");
        let state = jobs
            .get_mut(job)
            .ok_or_else(|| StoreError::JobNotFound(job.clone()))?;
        f(state)
    }
}

/// Records that `job` owes its `kind` event (once, in lifecycle order).
fn owe(job: &mut Job, kind: EventKind) {
    if let Err(at) = job.owed_events.binary_search(&kind) {
        job.owed_events.insert(at, kind);
    }
}

fn held<'a>(
    state: &'a mut JobState,
    claim: &ClaimedBatch,
) -> Result<&'a mut StoredBatch, StoreError> {
    match state.batches.get_mut(&claim.index) {
        Some(b) if b.info.state == BatchState::Processing && b.info.version == claim.version => {
            Ok(b)
        }
        _ => Err(StoreError::claim_lost(claim)),
    }
}

fn take(
    state: &mut JobState,
    index: u64,
    worker: &str,
    now_ms: i64,
    lease_ms: i64,
) -> Option<ClaimedBatch> {
    let batch = state.batches.get_mut(&index)?;
    let claimable = match batch.info.state {
        BatchState::Pending => true,
        BatchState::Processing => batch.info.lease_until_ms < now_ms,
        BatchState::Done | BatchState::Failed => false,
    };
    if !claimable {
        return None;
    }
    let info = &mut batch.info;
    info.state = BatchState::Processing;
    info.version += 1;
    info.worker = Some(worker.to_owned());
    info.lease_until_ms = now_ms + lease_ms;
    Some(ClaimedBatch {
        job_id: state.job.id.clone(),
        index,
        version: info.version,
        worker: worker.to_owned(),
        lease_until_ms: info.lease_until_ms,
        record_count: info.record_count,
        last_error: info.last_error.clone(),
        attempt: info.version - batch.base_version,
        rerun: batch.rerun,
        round: state.job.retries,
    })
}

#[async_trait]
impl PrepareStore for MemoryStore {
    async fn create_job(
        &self,
        source: &SourceRef,
        lease: &PrepareLease,
        now_ms: i64,
    ) -> Result<CreateOutcome, StoreError> {
        let id = source.job_id();
        let mut jobs = self.jobs.lock().expect("memory store poisoned");
        if let Some(existing) = jobs.get(&id) {
            return Ok(CreateOutcome::Exists(existing.job.clone()));
        }
        let job = Job {
            id: id.clone(),
            status: JobStatus::Processing,
            source: source.clone(),
            prepared: false,
            total_records: 0,
            total_batches: 0,
            batches_ready: 0,
            batches_handed_out: 0,
            batches_done: 0,
            processed: 0,
            failed: 0,
            prepare_lease_until_ms: now_ms + lease.lease_ms,
            prepare_failures: 0,
            prepare_checkpoint: None,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            finished_at_ms: None,
            failure_reason: None,
            report: None,
            report_owed: false,
            cost: Cost::default(),
            retries: 0,
            retryable: 0,
            owed_events: vec![EventKind::Started],
            round: Default::default(),
        };
        jobs.insert(
            id,
            JobState {
                job: job.clone(),
                prepare: Some((lease.owner.clone(), now_ms + lease.lease_ms)),
                batches: BTreeMap::new(),
                open: Default::default(),
                renewals: 0,
            },
        );
        Ok(CreateOutcome::Created(job))
    }

    async fn pin_definition(&self, job: &JobId, definition: &str) -> Result<String, StoreError> {
        Ok(self
            .definitions
            .lock()
            .expect("memory store poisoned")
            .entry(job.clone())
            .or_insert_with(|| definition.to_owned())
            .clone())
    }

    async fn pin_columns(&self, job: &JobId, columns: &[String]) -> Result<(), StoreError> {
        self.columns
            .lock()
            .expect("memory store poisoned")
            .entry(job.clone())
            .or_insert_with(|| columns.to_vec());
        Ok(())
    }

    async fn acquire_prepare(
        &self,
        job: &JobId,
        lease: &PrepareLease,
        now_ms: i64,
    ) -> Result<Option<Job>, StoreError> {
        self.with_job(job, |s| {
            if s.job.prepared || s.job.status.is_final() {
                return Ok(None);
            }
            let free = match &s.prepare {
                Some((owner, until)) => owner == &lease.owner || *until < now_ms,
                None => true,
            };
            if !free {
                return Ok(None);
            }
            s.prepare = Some((lease.owner.clone(), now_ms + lease.lease_ms));
            s.job.prepare_lease_until_ms = now_ms + lease.lease_ms;
            Ok(Some(s.job.clone()))
        })
    }

    async fn write_batches(
        &self,
        job: &JobId,
        batches: &[NewBatch<'_>],
        _now_ms: i64,
    ) -> Result<(), StoreError> {
        self.with_job(job, |s| {
            for batch in batches {
                s.batches.entry(batch.index).or_insert_with(|| StoredBatch {
                    info: BatchInfo {
                        index: batch.index,
                        state: BatchState::Pending,
                        version: 0,
                        worker: None,
                        lease_until_ms: 0,
                        record_count: batch.records.len() as u64,
                        processed: 0,
                        failed: 0,
                        last_error: None,
                    },
                    records: batch.records.to_vec(),
                    failures: Vec::new(),
                    base_version: 0,
                    rerun: None,
                    round: 0,
                });
            }
            Ok(())
        })
    }

    async fn publish(
        &self,
        job: &JobId,
        lease: &PrepareLease,
        ready: u64,
        checkpoint: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.with_job(job, |s| {
            if !s.preparing(lease) || s.job.batches_ready > ready {
                return Err(StoreError::PrepareLeaseLost(job.clone()));
            }
            s.prepare = Some((lease.owner.clone(), now_ms + lease.lease_ms));
            s.job.prepare_lease_until_ms = now_ms + lease.lease_ms;
            if ready > s.job.batches_ready {
                s.job.prepare_failures = 0;
            }
            s.job.batches_ready = ready;
            s.job.prepare_checkpoint = checkpoint.map(str::to_owned);
            s.job.updated_at_ms = s.job.updated_at_ms.max(now_ms);
            Ok(())
        })
    }

    async fn renew_prepare(
        &self,
        job: &JobId,
        lease: &PrepareLease,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.with_job(job, |s| {
            if !s.preparing(lease) {
                return Err(StoreError::PrepareLeaseLost(job.clone()));
            }
            s.prepare = Some((lease.owner.clone(), now_ms + lease.lease_ms));
            s.job.prepare_lease_until_ms = now_ms + lease.lease_ms;
            s.renewals += 1;
            Ok(())
        })
    }

    async fn note_prepare_failure(&self, job: &JobId, _error: &str) -> Result<u32, StoreError> {
        self.with_job(job, |s| {
            s.job.prepare_failures += 1;
            Ok(s.job.prepare_failures)
        })
    }

    async fn release_prepare(&self, job: &JobId, lease: &PrepareLease) -> Result<(), StoreError> {
        self.with_job(job, |s| {
            if matches!(&s.prepare, Some((owner, _)) if owner == &lease.owner) {
                s.prepare = Some((lease.owner.clone(), 0));
                s.job.prepare_lease_until_ms = 0;
            }
            Ok(())
        })
    }

    async fn finish_prepare(
        &self,
        job: &JobId,
        lease: &PrepareLease,
        total_records: u64,
        total_batches: u64,
    ) -> Result<Job, StoreError> {
        self.with_job(job, |s| {
            if !s.preparing(lease) || s.job.batches_ready > total_batches {
                return Err(StoreError::PrepareLeaseLost(job.clone()));
            }
            s.prepare = None;
            s.job.batches_ready = total_batches;
            s.job.prepare_lease_until_ms = 0;
            s.job.prepare_checkpoint = None;
            s.job.prepared = true;
            s.job.total_records = total_records;
            s.job.total_batches = total_batches;
            owe(&mut s.job, EventKind::Prepared);
            Ok(s.job.clone())
        })
    }
}

#[async_trait]
impl ClaimStore for MemoryStore {
    async fn claim_batch(
        &self,
        job: &JobId,
        worker: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Claim, StoreError> {
        self.with_job(job, |s| {
            if s.job.status.is_final() {
                return Ok(Claim::JobFinished(s.job.status));
            }
            // Mirror the DynamoDB store: the cursor first, then anything the
            // cursor already handed out whose lease expired or never started.
            while s.job.batches_handed_out < s.job.batches_ready {
                let index = s.job.batches_handed_out;
                s.job.batches_handed_out += 1;
                s.open.insert(index);
                if let Some(c) = take(s, index, worker, now_ms, lease_ms) {
                    return Ok(Claim::Batch(c));
                }
            }
            let reclaimable = s.open.iter().copied().find(|index| {
                s.batches.get(index).is_some_and(|b| match b.info.state {
                    BatchState::Pending => true,
                    BatchState::Processing => b.info.lease_until_ms < now_ms,
                    BatchState::Done | BatchState::Failed => false,
                })
            });
            if let Some(c) = reclaimable.and_then(|index| take(s, index, worker, now_ms, lease_ms))
            {
                return Ok(Claim::Batch(c));
            }
            // A requeue pass puts batches back as it goes: wait for it.
            Ok(if s.job.prepared && !s.job.round.requeuing {
                Claim::NoneAvailable
            } else {
                Claim::Wait
            })
        })
    }

    async fn load_records(&self, job: &JobId, index: u64) -> Result<Vec<StagedRecord>, StoreError> {
        self.with_job(job, |s| {
            s.batches
                .get(&index)
                .map(|b| b.records.clone())
                .ok_or_else(|| StoreError::Corrupt {
                    job: job.clone(),
                    message: format!("batch {index} does not exist"),
                })
        })
    }

    async fn extend_lease(&self, claim: &ClaimedBatch, until_ms: i64) -> Result<(), StoreError> {
        self.with_job(&claim.job_id, |s| {
            held(s, claim)?.info.lease_until_ms = until_ms;
            Ok(())
        })
    }

    async fn release_batch(&self, claim: &ClaimedBatch, error: &str) -> Result<(), StoreError> {
        self.with_job(&claim.job_id, |s| {
            let b = held(s, claim)?;
            b.info.lease_until_ms = 0;
            b.info.last_error = Some(error.to_owned());
            Ok(())
        })
    }

    async fn yield_batch(&self, claim: &ClaimedBatch) -> Result<(), StoreError> {
        self.with_job(&claim.job_id, |s| {
            let b = held(s, claim)?;
            b.info.lease_until_ms = 0;
            // Attempts count from `base_version`: moving it with the
            // version the next claim takes leaves the count as it is.
            b.base_version += 1;
            Ok(())
        })
    }

    async fn commit_batch(
        &self,
        claim: &ClaimedBatch,
        outcome: &BatchOutcome,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.with_job(&claim.job_id, |s| {
            let b = held(s, claim)?;
            // A rerun's outcome covers the whole batch; the counters still
            // hold what its earlier run left (see `requeue_batch`).
            let prior = b.rerun.take().unwrap_or(Rerun {
                processed: 0,
                failed: 0,
            });
            b.info.state = outcome.state;
            b.info.processed = outcome.processed;
            b.info.failed = outcome.failed.len() as u64;
            b.info.last_error = outcome.error.clone().or(b.info.last_error.take());
            b.failures = outcome.failed.clone();
            b.round = claim.round;
            s.open.remove(&claim.index);
            s.job.batches_done += 1;
            // A rerun's earlier processing failures left the count when it
            // was requeued: whatever fails in processing now is new.
            s.job.retryable += outcome
                .failed
                .iter()
                .filter(|f| !f.stage.is_validation())
                .count() as u64;
            s.job.processed += outcome.processed - prior.processed;
            s.job.failed += outcome.failed.len() as u64 - prior.failed;
            s.job.updated_at_ms = s.job.updated_at_ms.max(now_ms);
            Ok(())
        })
    }
}

#[async_trait]
impl JobControl for MemoryStore {
    async fn get_job(&self, job: &JobId) -> Result<Option<Job>, StoreError> {
        Ok(self
            .jobs
            .lock()
            .expect("memory store poisoned")
            .get(job)
            .map(|s| s.job.clone()))
    }

    async fn finalize(
        &self,
        job: &JobId,
        fin: &Finalization,
        when: FinalizeWhen,
    ) -> Result<bool, StoreError> {
        self.with_job(job, |s| {
            let waiting = when == FinalizeWhen::AllBatchesDone && !s.job.all_batches_done();
            if s.job.status.is_final() || waiting {
                return Ok(false);
            }
            s.job.status = fin.status;
            // A requeue pass under way ends with the round.
            s.job.round.requeuing = false;
            s.job.round.requeue_cursor = None;
            s.job.failure_reason = fin.reason.clone();
            s.job.report = None;
            s.job.report_owed = fin.report_owed;
            s.job.finished_at_ms = Some(fin.now_ms);
            s.job.updated_at_ms = s.job.updated_at_ms.max(fin.now_ms);
            if let Some(kind) = EventKind::ending(fin.status) {
                owe(&mut s.job, kind);
            }
            Ok(true)
        })
    }

    async fn record_report(
        &self,
        job: &JobId,
        round: u32,
        location: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.with_job(job, |s| {
            if !s.job.report_owed || s.job.retries != round {
                return Ok(false);
            }
            s.job.report_owed = false;
            s.job.report = location.map(str::to_owned);
            Ok(true)
        })
    }

    async fn pinned_definition(&self, job: &JobId) -> Result<Option<String>, StoreError> {
        Ok(self
            .definitions
            .lock()
            .expect("memory store poisoned")
            .get(job)
            .cloned())
    }

    async fn pinned_columns(&self, job: &JobId) -> Result<Option<Vec<String>>, StoreError> {
        Ok(self
            .columns
            .lock()
            .expect("memory store poisoned")
            .get(job)
            .cloned())
    }

    async fn failed_records(
        &self,
        job: &JobId,
        batch: u64,
    ) -> Result<Vec<FailedRecord>, StoreError> {
        self.with_job(job, |s| {
            Ok(s.batches
                .get(&batch)
                .map(|b| b.failures.clone())
                .unwrap_or_default())
        })
    }

    async fn active_jobs(&self) -> Result<Vec<JobId>, StoreError> {
        let jobs = self.jobs.lock().expect("memory store poisoned");
        let mut ids: Vec<JobId> = jobs
            .values()
            .filter(|s| !s.job.status.is_final())
            .map(|s| s.job.id.clone())
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn lease_view(&self, job: &JobId, now_ms: i64) -> Result<LeaseView, StoreError> {
        self.with_job(job, |s| {
            let mut view = LeaseView::default();
            for b in s.batches.range(..s.job.batches_handed_out).map(|(_, b)| b) {
                match b.info.state {
                    BatchState::Processing if b.info.lease_until_ms >= now_ms => view.live = true,
                    BatchState::Processing | BatchState::Pending => view.reclaimable += 1,
                    BatchState::Done | BatchState::Failed => {}
                }
            }
            Ok(view)
        })
    }

    async fn batch_info(&self, job: &JobId, index: u64) -> Result<Option<BatchInfo>, StoreError> {
        self.with_job(job, |s| Ok(s.batches.get(&index).map(|b| b.info.clone())))
    }

    async fn list_jobs(
        &self,
        status: Option<JobStatus>,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        let jobs = self.jobs.lock().expect("memory store poisoned");
        let mut found: Vec<&Job> = jobs
            .values()
            .map(|s| &s.job)
            .filter(|j| status.is_none_or(|s| j.status == s))
            .collect();
        found.sort_by(|a, b| {
            b.created_at_ms
                .cmp(&a.created_at_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(found
            .into_iter()
            .take(limit)
            .map(|j| j.id.clone())
            .collect())
    }

    async fn pending_events(&self) -> Result<Vec<JobId>, StoreError> {
        let jobs = self.jobs.lock().expect("memory store poisoned");
        let mut ids: Vec<JobId> = jobs
            .values()
            .filter(|s| s.job.status.is_final() && !s.job.owed_events.is_empty())
            .map(|s| s.job.id.clone())
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn ack_event(&self, job: &JobId, kind: EventKind, round: u32) -> Result<(), StoreError> {
        self.with_job(job, |s| {
            if s.job.retries == round {
                s.job.owed_events.retain(|k| *k != kind);
            }
            Ok(())
        })
    }

    async fn retryable_batches(
        &self,
        job: &JobId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<RetryablePage, StoreError> {
        let start = match after {
            None => 0,
            Some(cursor) => cursor.parse::<u64>().map_err(|_| StoreError::Corrupt {
                job: job.clone(),
                message: format!("requeue cursor {cursor:?} is not a batch index"),
            })?,
        };
        self.with_job(job, |s| {
            // Like the DynamoDB store, a page reads at most `limit` batches
            // with failures, retryable or not.
            let mut page = RetryablePage::default();
            let mut read = 0;
            for (index, b) in s.batches.range(start..) {
                if b.failures.is_empty() {
                    continue;
                }
                if read == limit.max(1) {
                    page.next = Some(index.to_string());
                    break;
                }
                read += 1;
                if b.failures.iter().any(|f| !f.stage.is_validation()) {
                    page.batches.push(*index);
                }
            }
            Ok(page)
        })
    }

    async fn requeue_batch(
        &self,
        job: &JobId,
        index: u64,
        round: u32,
    ) -> Result<Option<u64>, StoreError> {
        self.with_job(job, |s| {
            let in_pass = in_requeue_pass(&s.job, round);
            let Some(b) = s
                .batches
                .get_mut(&index)
                .filter(|b| in_pass && b.round < round)
            else {
                return Ok(None);
            };
            let rerun = b
                .failures
                .iter()
                .filter(|f| !f.stage.is_validation())
                .count() as u64;
            let terminal = matches!(b.info.state, BatchState::Done | BatchState::Failed);
            if !terminal || rerun == 0 {
                return Ok(None);
            }
            b.info.state = BatchState::Processing;
            b.info.lease_until_ms = 0;
            b.info.worker = None;
            b.info.failed -= rerun;
            b.base_version = b.info.version;
            b.round = round;
            b.rerun = Some(Rerun {
                processed: b.info.processed,
                failed: b.info.failed,
            });
            s.open.insert(index);
            s.job.batches_done -= 1;
            s.job.failed -= rerun;
            s.job.retryable -= rerun;
            Ok(Some(rerun))
        })
    }

    async fn reopen(&self, job: &JobId, reopening: &Reopening) -> Result<Option<Job>, StoreError> {
        let now_ms = reopening.now_ms;
        self.with_job(job, |s| {
            // The previous round's event goes out first (see the trait).
            if !s.job.status.is_final()
                || s.job.retries != reopening.seen_retries
                || !s.job.owed_events.is_empty()
            {
                return Ok(None);
            }
            s.job.round = crate::job::Round {
                requeuing: reopening.requeue,
                requeue_cursor: None,
                requeued_at_ms: now_ms,
                started_at_ms: now_ms,
                base: reopening.base,
            };
            s.job.status = JobStatus::Processing;
            s.job.retries += 1;
            s.job.updated_at_ms = s.job.updated_at_ms.max(now_ms);
            s.job.finished_at_ms = None;
            s.job.failure_reason = None;
            s.job.report = None;
            s.job.report_owed = false;
            s.job.prepare_lease_until_ms = 0;
            s.job.prepare_failures = 0;
            s.prepare = None;
            Ok(Some(s.job.clone()))
        })
    }

    async fn note_requeue(
        &self,
        job: &JobId,
        round: u32,
        cursor: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.with_job(job, |s| {
            if !in_requeue_pass(&s.job, round) {
                return Ok(false);
            }
            s.job.round.requeue_cursor = Some(cursor.to_owned());
            s.job.round.requeued_at_ms = now_ms;
            Ok(true)
        })
    }

    async fn finish_requeue(
        &self,
        job: &JobId,
        round: u32,
        base: u64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.with_job(job, |s| {
            if !in_requeue_pass(&s.job, round) {
                return Ok(false);
            }
            s.job.round = crate::job::Round {
                requeuing: false,
                requeue_cursor: None,
                requeued_at_ms: now_ms,
                started_at_ms: now_ms,
                base,
            };
            s.job.updated_at_ms = s.job.updated_at_ms.max(now_ms);
            Ok(true)
        })
    }
}

/// Whether `job` is PROCESSING in round `round`'s requeue pass.
fn in_requeue_pass(job: &Job, round: u32) -> bool {
    !job.status.is_final() && job.retries == round && job.round.requeuing
}

#[cfg(test)]
impl MemoryStore {
    /// Forgets the stored records of a batch, as a lost chunk item would;
    /// the batch still says how many it had.
    pub(crate) fn lose_records(&self, job: &JobId, index: u64) {
        let mut jobs = self.jobs.lock().expect("memory store poisoned");
        let state = jobs.get_mut(job).expect("job exists");
        let batch = state.batches.get_mut(&index).expect("batch exists");
        batch.records.clear();
    }
}

#[cfg(test)]
mod tests {
    crate::conformance_tests!(async { super::MemoryStore::new() });
}
