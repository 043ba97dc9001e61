//! Steering a job after the fact: retrying what failed in processing, and
//! what an abort left unprocessed.
//!
//! A retry is a new round of the same job. Starting it does a bounded amount
//! of work, whatever the job's size: it reopens the job (PROCESSING,
//! `retries` + 1) and wakes what the round needs. Batches that hold
//! processing failures (the processor's errors, poison batches) are put back
//! by the round's requeue pass, which grows with the job and so runs outside
//! the request that asked for the retry: in the orchestrator, through the
//! prepare queue, handing over near its deadline; in the sweeper when it
//! stalls; or inline in the command-line tool. The pass walks the failures
//! page by page from a cursor recorded on the job, and each requeue is fenced
//! by the round, so a pass that runs twice or late requeues nothing twice.
//! Until the pass ends the job cannot complete. A requeued batch's failed
//! records leave the failed count until its rerun commits, and only they run
//! again (records that succeeded, and validation failures, keep their
//! outcome). Batches an abort left unclaimed are claimed as usual; a file
//! not read to the end (an abort during prepare) is read on from its
//! checkpoint. The job then finalizes again, once, with a new report and a
//! new event id.

use crate::clock::Clock;
use crate::events::JobEvents;
use crate::events::{deliver_owed as deliver, DeliveryError};
use crate::job::{Job, JobId, JobStatus};
use crate::queue::{PrepareQueue, QueueError, WorkMessage, WorkQueue};
use crate::store::{JobStore, Reopening, StoreError};

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
/// continue prepares and requeue passes, and the event channel (an event
/// still owed by the previous round goes out before the new round starts).
pub struct Steering<'a> {
    pub store: &'a dyn JobStore,
    pub queue: &'a dyn WorkQueue,
    /// Where the orchestrator continues an unfinished prepare and runs a
    /// retry's requeue pass. `None`: the sweeper does both (a requeue pass
    /// once it stalled), unless `inline_requeue`.
    pub prepare_queue: Option<&'a dyn PrepareQueue>,
    pub events: &'a dyn JobEvents,
    /// Workers woken at most.
    pub max_workers: u32,
    /// The caller runs the requeue pass itself (`requeue`: a command-line
    /// tool, with no deadline) rather than hand it to the orchestrator.
    pub inline_requeue: bool,
    /// Timestamps the reopening and the requeue pass's progress.
    pub clock: &'a Clock,
}

/// What a retry started.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryStarted {
    /// The job as reopened.
    pub job: Job,
    /// Records whose processing failed, which run again.
    pub records: u64,
    /// Batches not processed yet besides those (an abort left them).
    pub unprocessed: u64,
    /// The round starts with a requeue pass putting the failed batches
    /// back (`requeue`: in the orchestrator, the sweeper or the caller).
    pub requeuing: bool,
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
        let unprocessed = if job.prepared {
            job.total_batches.saturating_sub(job.batches_done)
        } else {
            job.batches_ready.saturating_sub(job.batches_done)
        };
        let requeue = job.retryable > 0;
        if !requeue && job.prepared && unprocessed == 0 {
            return Err(SteerError::NothingToRetry {
                job: id.clone(),
                status: job.status,
            });
        }
        let reopening = Reopening {
            seen_retries: job.retries,
            requeue,
            base: job.processed + job.failed,
            now_ms: self.clock.now_ms(),
        };
        let reopened = self
            .store
            .reopen(id, &reopening)
            .await?
            .ok_or_else(|| SteerError::Busy(id.clone()))?;
        tracing::info!(job_id = %id, retries = reopened.retries, records = job.retryable, unprocessed, prepared = reopened.prepared, "job reopened for a retry");
        let resumes_prepare = !reopened.prepared;
        // One continuation does both: the orchestrator runs the requeue
        // pass, then reads on.
        let hand_over = (requeue && !self.inline_requeue) || resumes_prepare;
        if let (true, Some(queue)) = (hand_over, self.prepare_queue) {
            queue.continue_prepare(id).await?;
        }
        self.wake(id, unprocessed).await?;
        Ok(RetryStarted {
            records: job.retryable,
            unprocessed,
            requeuing: requeue,
            resumes_prepare,
            job: reopened,
        })
    }

    fn workers(&self) -> u64 {
        u64::from(self.max_workers.max(1))
    }

    /// Sends up to `max_workers` messages for `batches` batches waiting.
    async fn wake(&self, id: &JobId, batches: u64) -> Result<(), SteerError> {
        let workers = batches.min(self.workers());
        if workers == 0 {
            return Ok(());
        }
        let message = WorkMessage {
            job_id: id.clone(),
            continuation: false,
        };
        self.queue.send(&vec![message; workers as usize]).await?;
        Ok(())
    }

    async fn job(&self, id: &JobId) -> Result<Job, SteerError> {
        self.store
            .get_job(id)
            .await?
            .ok_or_else(|| SteerError::NotFound(id.clone()))
    }
}

mod requeue;
pub use requeue::{RequeueOutcome, REQUEUE_PAGE};

#[cfg(test)]
mod tests;
