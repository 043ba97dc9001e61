//! Ending a job, exactly once: the conditional update from PROCESSING that
//! exactly one caller wins, the error report written before it, and the
//! event announcing the end, sent by the winner.

use crate::events::{announce, JobEvents};
use crate::job::{now_ms, Job, JobId, JobStatus};
use crate::report::{ReportError, ReportSink};
use crate::schema::Definition;
use crate::store::{Finalization, FinalizeWhen, JobStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum FinalizeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Report(#[from] ReportError),
}

pub struct Finalizer<'a> {
    pub store: &'a dyn JobStore,
    pub events: &'a dyn JobEvents,
    pub reports: &'a dyn ReportSink,
    pub definition: &'a Definition,
}

impl Finalizer<'_> {
    /// Completes `job` if prepare has finished and every batch is terminal.
    /// True for the one caller whose conditional update succeeded.
    pub async fn complete(&self, job: &Job) -> Result<bool, FinalizeError> {
        if job.status.is_final() || !job.all_batches_done() {
            return Ok(false);
        }
        let (status, reason) = final_status(job, self.definition);
        // The report is written before the job says where it is; with every
        // batch terminal its content is final, so racing finalizers write
        // the same object.
        let report = if job.failed > 0 {
            Some(self.reports.write(job, self.definition, self.store).await?)
        } else {
            None
        };
        let fin = Finalization {
            status,
            reason,
            report,
            now_ms: now_ms(),
        };
        if !self
            .store
            .finalize(&job.id, &fin, FinalizeWhen::AllBatchesDone)
            .await?
        {
            return Ok(false);
        }
        self.announce(&job.id).await;
        Ok(true)
    }

    /// Ends `job` as FAILED now, whatever its batches (a file-level error,
    /// or a failed record with `continueOnError` off).
    pub async fn fail(&self, job: &JobId, reason: String) -> Result<bool, FinalizeError> {
        self.end_now(job, JobStatus::Failed, reason).await
    }

    /// Stops `job` now (an operator's abort): prepare publishes nothing
    /// more, workers claim nothing more (the batch in hand still commits
    /// and counts), and the job ends ABORTED with the failures known so far
    /// in its report. False when the job was already final.
    pub async fn abort(&self, job: &JobId, reason: String) -> Result<bool, FinalizeError> {
        self.end_now(job, JobStatus::Aborted, reason).await
    }

    async fn end_now(
        &self,
        job: &JobId,
        status: JobStatus,
        reason: String,
    ) -> Result<bool, FinalizeError> {
        let report = match self.store.get_job(job).await? {
            Some(j) if j.failed > 0 && !j.status.is_final() => {
                Some(self.reports.write(&j, self.definition, self.store).await?)
            }
            _ => None,
        };
        let fin = Finalization {
            status,
            reason: Some(reason),
            report,
            now_ms: now_ms(),
        };
        if !self.store.finalize(job, &fin, FinalizeWhen::Now).await? {
            return Ok(false);
        }
        self.announce(job).await;
        Ok(true)
    }

    /// Sends the event the finalization recorded as owed (with anything
    /// else still owed). A failure here loses nothing: the event stays owed
    /// and the sweeper sends it.
    async fn announce(&self, job: &JobId) {
        match self.store.get_job(job).await {
            Ok(Some(ended)) => {
                tracing::info!(job_id = %job, status = %ended.status, processed = ended.processed, failed = ended.failed, "job finalized");
                crate::metrics::job_ended(&ended);
                announce(self.store, self.events, &ended).await;
            }
            Ok(None) => {}
            Err(e) => {
                let error = crate::telemetry::error_chain(&e);
                tracing::warn!(job_id = %job, %error, "job event not sent yet; the sweeper resends it");
            }
        }
    }
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
