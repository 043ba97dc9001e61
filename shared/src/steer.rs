//! Steering a job after the fact: retrying what failed in processing, and
//! what an abort left unprocessed.
//!
//! A retry is a new round of the same job. It requeues every batch that
//! holds processing failures (the processor's errors, poison batches): their
//! failed records leave the failed count until the rerun commits, and only
//! they run again (records that succeeded, and validation failures, keep
//! their outcome). Then it reopens the job (PROCESSING, `retries` + 1),
//! wakes workers and, when the file was not read to the end (an abort during
//! prepare), continues prepare at its checkpoint. Batches an abort left
//! unclaimed are claimed as usual. The job then finalizes again, once, with
//! a new report and a new event id.

use crate::events::JobEvents;
use crate::events::{deliver_owed as deliver, DeliveryError};
use crate::job::{now_ms, Job, JobId, JobStatus};
use crate::queue::{PrepareQueue, QueueError, WorkMessage, WorkQueue};
use crate::store::{JobStore, StoreError};
use futures::{StreamExt, TryStreamExt};

/// Batches requeued at once.
const PARALLEL_REQUEUES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("job {0} not found")]
    NotFound(JobId),
    #[error("job {0} is still PROCESSING: wait for it to end, or abort it first")]
    NotFinal(JobId),
    #[error("job {job} ({status}) has nothing to retry: no processing failures and nothing left unprocessed")]
    NothingToRetry { job: JobId, status: JobStatus },
    #[error("job {0} was retried by someone else at the same time")]
    Busy(JobId),
    #[error("job {0} is still writing the error report of its ending: retry in a minute")]
    Settling(JobId),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("sending the previous round's event failed")]
    Event(#[source] DeliveryError),
}

/// What a retry needs: the store, the queues that wake workers and
/// prepare, and the event channel (an event still owed by the previous
/// round goes out before the new round starts).
pub struct Steering<'a> {
    pub store: &'a dyn JobStore,
    pub queue: &'a dyn WorkQueue,
    /// `None`: the sweeper resumes an unfinished prepare.
    pub prepare_queue: Option<&'a dyn PrepareQueue>,
    pub events: &'a dyn JobEvents,
    /// Workers woken at most.
    pub max_workers: u32,
}

/// What a retry started.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryStarted {
    /// The job as reopened.
    pub job: Job,
    /// Batches requeued for their processing failures, and their records.
    pub batches: u64,
    pub records: u64,
    /// Batches not processed yet besides those (an abort left them).
    pub unprocessed: u64,
    /// The file was not read to the end: prepare continues.
    pub resumes_prepare: bool,
}

impl Steering<'_> {
    /// Starts a retry round of a final job (see the module doc).
    pub async fn retry(&self, id: &JobId) -> Result<RetryStarted, SteerError> {
        let mut job = self.job(id).await?;
        if !job.status.is_final() {
            return Err(SteerError::NotFinal(id.clone()));
        }
        if job.report_owed {
            // An ending with nothing to report (an abort before any
            // failure) records so at once; a report being written is
            // waited for: its round's event carries it.
            if job.failed > 0 {
                return Err(SteerError::Settling(id.clone()));
            }
            self.store.record_report(id, job.retries, None).await?;
            job = self.job(id).await?;
        }
        // What the previous round owes goes out first, with that round's
        // counts, before anything of the next round moves them.
        deliver(self.store, self.events, &job)
            .await
            .map_err(SteerError::Event)?;
        // Requeued before the job reopens, so no worker can find the round
        // finished before its batches are back. A retry interrupted here
        // leaves a final job with batches requeued; the next one reopens it.
        let requeued: Vec<u64> = futures::stream::iter(self.store.retryable_batches(id).await?)
            .map(|index| self.store.requeue_batch(id, index))
            .buffer_unordered(PARALLEL_REQUEUES)
            .try_filter_map(|n| async move { Ok(n) })
            .try_collect()
            .await?;
        let job = self.job(id).await?;
        let unfinished = !job.prepared || job.batches_done < job.total_batches;
        if !unfinished {
            return Err(SteerError::NothingToRetry {
                job: id.clone(),
                status: job.status,
            });
        }
        let reopened = self
            .store
            .reopen(id, job.retries, now_ms())
            .await?
            .ok_or_else(|| SteerError::Busy(id.clone()))?;
        tracing::info!(job_id = %id, retries = reopened.retries, batches = requeued.len(), records = requeued.iter().sum::<u64>(), prepared = reopened.prepared, "job reopened for a retry");
        let resumes_prepare = !reopened.prepared;
        if resumes_prepare {
            if let Some(queue) = self.prepare_queue {
                queue.continue_prepare(id).await?;
            }
        }
        let waiting = reopened.total_batches.max(reopened.batches_ready) - reopened.batches_done;
        let workers = waiting.clamp(1, u64::from(self.max_workers.max(1)));
        let message = WorkMessage {
            job_id: id.clone(),
            continuation: false,
        };
        self.queue.send(&vec![message; workers as usize]).await?;
        Ok(RetryStarted {
            unprocessed: waiting.saturating_sub(requeued.len() as u64),
            job: reopened,
            batches: requeued.len() as u64,
            records: requeued.iter().sum(),
            resumes_prepare,
        })
    }

    async fn job(&self, id: &JobId) -> Result<Job, SteerError> {
        self.store
            .get_job(id)
            .await?
            .ok_or_else(|| SteerError::NotFound(id.clone()))
    }
}
