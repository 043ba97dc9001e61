//! Creating a job and writing its batches, fenced by the prepare lease
//! (`PrepareStore`): batches are written first, then published.

use super::*;
use crate::job::{Cost, JobSource};

#[async_trait]
impl PrepareStore for MemoryStore {
    async fn create_job_of(
        &self,
        source: &SourceRef,
        kind: &str,
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
            kind: Some(kind.to_owned()).filter(|k| !k.is_empty()),
            status: JobStatus::Processing,
            source: JobSource::Object(source.clone()),
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
            duplicates: 0,
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
                report_lease_until_ms: 0,
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
        let indexes: Vec<u64> = batches.iter().map(|b| b.index).collect();
        self.pass_holds(&indexes).await;
        self.with_job(job, |s| {
            for batch in batches {
                s.batches.entry(batch.index).or_insert_with(|| StoredBatch {
                    info: BatchInfo {
                        index: batch.index,
                        state: if batch.after.is_some() {
                            BatchState::Waiting
                        } else {
                            BatchState::Pending
                        },
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
                    content: BatchContent::Records,
                    next: None,
                });
            }
            Ok(())
        })
    }

    async fn link_batch(&self, job: &JobId, after: u64, index: u64) -> Result<(), StoreError> {
        self.with_job(job, |s| {
            let missing = |i: u64| StoreError::Corrupt {
                job: job.clone(),
                message: format!("batch {i} to chain does not exist"),
            };
            let before = s.batches.get_mut(&after).ok_or_else(|| missing(after))?;
            let ended = matches!(before.info.state, BatchState::Done | BatchState::Failed);
            if !ended {
                before.next = Some(index);
                return Ok(());
            }
            let batch = s.batches.get_mut(&index).ok_or_else(|| missing(index))?;
            if batch.info.state == BatchState::Waiting {
                batch.info.state = BatchState::Pending;
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
