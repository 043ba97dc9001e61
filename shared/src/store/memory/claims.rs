//! Handing out batches and finishing them (`ClaimStore`): the cursor,
//! reclaiming expired or orphaned batches, and the writes a claim's version
//! fences (lease, release, yield, commit).

use super::*;

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
        BatchState::Waiting | BatchState::Done | BatchState::Failed => false,
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
        content: batch.content,
        next: batch.next,
    })
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
                    BatchState::Waiting | BatchState::Done | BatchState::Failed => false,
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

    async fn claim_index(
        &self,
        job: &JobId,
        index: u64,
        worker: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<ClaimedBatch>, StoreError> {
        self.with_job(job, |s| {
            if s.job.status.is_final() || index >= s.job.batches_ready {
                return Ok(None);
            }
            Ok(take(s, index, worker, now_ms, lease_ms))
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
            let next = b.next.filter(|_| claim.rerun.is_none());
            s.open.remove(&claim.index);
            if let Some(next) = next.and_then(|n| s.batches.get_mut(&n)) {
                if next.info.state == BatchState::Waiting {
                    next.info.state = BatchState::Pending;
                }
            }
            s.job.batches_done += 1;
            // A rerun's earlier processing failures left the count when it
            // was requeued: whatever fails in processing now is new.
            s.job.retryable += outcome
                .failed
                .iter()
                .filter(|f| !f.stage.is_validation())
                .count() as u64;
            s.job.processed += outcome.processed - prior.processed;
            s.job.duplicates += outcome.duplicates;
            s.job.failed += outcome.failed.len() as u64 - prior.failed;
            s.job.updated_at_ms = s.job.updated_at_ms.max(now_ms);
            Ok(())
        })
    }
}
