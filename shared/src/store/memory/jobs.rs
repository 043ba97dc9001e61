//! Reading and ending jobs (`JobControl`): finalization, reports, events,
//! the job lists, and a retry's reopening and requeue pass.

use super::*;

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
            s.report_lease_until_ms = 0;
            s.job.report = location.map(str::to_owned);
            Ok(true)
        })
    }

    async fn lease_report(
        &self,
        job: &JobId,
        round: u32,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        self.with_job(job, |s| {
            if !s.job.report_owed || s.job.retries != round || s.report_lease_until_ms > now_ms {
                return Ok(false);
            }
            s.report_lease_until_ms = until_ms;
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
                    BatchState::Waiting | BatchState::Done | BatchState::Failed => {}
                }
            }
            if view.live {
                view.reclaimable = 0;
            }
            Ok(view)
        })
    }

    async fn next_expiry(
        &self,
        job: &JobId,
        _worker: &str,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        self.with_job(job, |s| {
            Ok(s.batches
                .values()
                .filter(|b| b.info.state == BatchState::Processing)
                .map(|b| b.info.lease_until_ms)
                .filter(|until| *until >= now_ms)
                .min())
        })
    }

    async fn batch_info(&self, job: &JobId, index: u64) -> Result<Option<BatchInfo>, StoreError> {
        self.with_job(job, |s| Ok(s.batches.get(&index).map(|b| b.info.clone())))
    }

    async fn list_jobs(
        &self,
        status: Option<JobStatus>,
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        let jobs = self.jobs.lock().expect("memory store poisoned");
        let mut found: Vec<&Job> = jobs
            .values()
            .map(|s| &s.job)
            .filter(|j| status.is_none_or(|s| j.status == s))
            .filter(|j| kind.is_none_or(|k| j.kind.as_deref() == Some(k)))
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
