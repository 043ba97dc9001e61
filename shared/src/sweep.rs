//! The sweeper: makes sure no job stays PROCESSING forever. For each active
//! job it resumes a prepare whose orchestrator died (giving up after
//! repeated failures), takes over a retry's requeue pass that stalled,
//! finalizes a job whose last committer died before
//! finalizing, and re-fans out workers to a job with waiting batches and no
//! live lease, and sends the events it owes; then it sends what final jobs
//! still owe.

use crate::clock::{Clock, Instant};
use crate::events::{deliver_owed, JobEvents};
use crate::finalize::{FinalizeError, Finalizer};
use crate::job::{JobId, JobSource, REQUEUE_STALL_MS};
use crate::metrics::{Metric, MetricsSink};
use crate::pinned::PinnedDefinitions;
use crate::prepare::{PrepareError, Preparer};
use crate::queue::{PrepareQueue, QueueError, WorkMessage, WorkQueue};
use crate::routes::Routes;
use crate::steer::Steering;
use crate::store::{JobStore, StoreError};
use serde::Serialize;

/// A prepare that failed this many times in a row without publishing a
/// batch ends its job FAILED with the last error, instead of being retried
/// by every sweep forever.
pub const MAX_PREPARE_FAILURES: u32 = 5;

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    pub active_jobs: u64,
    /// Jobs that got new worker messages.
    pub refanned: u64,
    pub prepares_resumed: u64,
    /// Retries' requeue passes taken over after they stalled.
    pub requeues_resumed: u64,
    pub finalized: u64,
    /// Job events sent that whoever recorded them had not delivered.
    pub events_sent: u64,
    /// Error reports of ended jobs that whoever ended them had not written.
    pub reports_written: u64,
    /// Jobs whose recovery failed this pass (logged; the next pass retries).
    pub failed: u64,
}

impl SweepReport {
    /// Jobs this pass had to recover (the `JobsRecovered` metric).
    pub fn recovered(&self) -> u64 {
        self.refanned + self.prepares_resumed + self.requeues_resumed + self.finalized
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Finalize(#[from] FinalizeError),
    #[error(transparent)]
    Definition(#[from] crate::pinned::PinError),
    #[error("taking over the requeue pass of job {job} failed")]
    Requeue {
        job: JobId,
        #[source]
        source: crate::steer::SteerError,
    },
    #[error("resuming the prepare of job {job} failed")]
    Prepare {
        job: JobId,
        #[source]
        source: PrepareError,
    },
}

/// What a sweep works with, assembled by `Deps::sweeper`: the phases it
/// runs, on the deployment's definition until it rebinds them to a job's
/// pinned one, and the services it reads and wakes jobs through.
pub struct Sweeper<'a> {
    pub store: &'a dyn JobStore,
    pub events: &'a dyn JobEvents,
    pub queue: &'a dyn WorkQueue,
    /// `None`: a prepare handed over is left for the next pass.
    pub prepare_queue: Option<&'a dyn PrepareQueue>,
    pub metrics: &'a dyn MetricsSink,
    pub pinned: &'a PinnedDefinitions,
    /// For jobs created before definitions were pinned: the definition
    /// their object is routed to.
    pub routes: &'a Routes,
    pub preparer: Preparer<'a>,
    pub finalizer: Finalizer<'a>,
    pub steering: Steering<'a>,
    /// Tells a stalled requeue pass by its last progress.
    pub clock: &'a Clock,
}

impl Sweeper<'_> {
    /// One pass over the active jobs. `owner` names this sweep when it takes
    /// a prepare over (the Lambda request id). Each job is recovered on its
    /// own: one that fails is logged and counted, and the pass goes on.
    pub async fn sweep(
        &self,
        owner: &str,
        deadline: Option<Instant>,
    ) -> Result<SweepReport, SweepError> {
        let mut report = SweepReport::default();
        for id in self.store.active_jobs().await? {
            if let Err(e) = self.recover(&id, owner, deadline, &mut report).await {
                report.failed += 1;
                let error = crate::telemetry::error_chain(&e);
                tracing::error!(job_id = %id, %error, "recovering the job failed; the next sweep retries");
            }
        }
        for id in self.store.pending_events().await? {
            match self.settle(&id, deadline).await {
                Ok(settled) => {
                    report.events_sent += settled.events;
                    report.reports_written += u64::from(settled.report);
                }
                Err(e) => {
                    let error = crate::telemetry::error_chain(&e);
                    tracing::warn!(job_id = %id, %error, "job report or event still not done");
                }
            }
        }
        self.metrics.record(Metric::Swept {
            active_jobs: report.active_jobs,
            recovered: report.recovered(),
        });
        Ok(report)
    }

    /// Writes the report an ended job still owes, then sends its owed events.
    async fn settle(
        &self,
        id: &JobId,
        deadline: Option<Instant>,
    ) -> Result<crate::finalize::Settled, SweepError> {
        let definition = self.pinned.of(self.store, id, self.routes).await?;
        Ok(self
            .finalizer
            .on(&definition)
            .until(deadline)
            .settle(id)
            .await?)
    }

    async fn continue_prepare(&self, job: &JobId) -> Result<(), QueueError> {
        crate::queue::continue_prepare(self.prepare_queue, job).await
    }

    async fn recover(
        &self,
        id: &JobId,
        owner: &str,
        deadline: Option<Instant>,
        report: &mut SweepReport,
    ) -> Result<(), SweepError> {
        let store = self.store;
        let definition = self.pinned.of(store, id, self.routes).await?;
        let finalizer = self.finalizer.on(&definition).until(deadline);
        let Some(job) = store.get_job(id).await? else {
            return Ok(());
        };
        if job.status.is_final() {
            return Ok(());
        }
        report.active_jobs += 1;
        if !job.owed_events.is_empty() {
            // The orchestrator that recorded them stopped before sending.
            match deliver_owed(store, self.events, &job).await {
                Ok(sent) => report.events_sent += sent,
                Err(e) => {
                    let error = crate::telemetry::error_chain(&e);
                    tracing::warn!(job_id = %id, %error, "job event still not sent");
                }
            }
        }
        let now = self.clock.now_ms();
        if job.round.requeuing {
            // The pass records its progress every page; one silent for this
            // long died with its function (or its continuation was lost).
            if job.round.requeued_at_ms + REQUEUE_STALL_MS < now {
                tracing::warn!(job_id = %id, round = job.retries, "taking over a stalled requeue pass");
                let outcome = self
                    .steering
                    .requeue(id, deadline)
                    .await
                    .map_err(|source| SweepError::Requeue {
                        job: id.clone(),
                        source,
                    })?;
                if let crate::steer::RequeueOutcome::HandedOff { .. } = outcome {
                    self.continue_prepare(id).await?;
                }
                report.requeues_resumed += 1;
            }
            return Ok(());
        }
        if !job.prepared {
            if job.prepare_lease_until_ms < now {
                tracing::warn!(job_id = %id, from_batch = job.batches_ready, "resuming an abandoned prepare");
                let preparer = self.preparer.on(&definition);
                let JobSource::Object(object) = &job.source;
                let outcome = preparer.run_until(object, owner, deadline).await;
                if let Ok(crate::prepare::PrepareOutcome::HandedOff(job)) = &outcome {
                    self.continue_prepare(&job.id).await?;
                }
                if let Err(source) = outcome {
                    let error = crate::telemetry::error_chain(&source);
                    let failures = store.note_prepare_failure(id, &error).await?;
                    if failures >= MAX_PREPARE_FAILURES {
                        let reason = format!("prepare failed {failures} times in a row: {error}");
                        tracing::error!(job_id = %id, %reason, "giving the job up");
                        finalizer.fail(id, reason).await?;
                    }
                    return Err(SweepError::Prepare {
                        job: id.clone(),
                        source,
                    });
                }
                report.prepares_resumed += 1;
            }
            return Ok(());
        }
        if job.all_batches_done() {
            if finalizer.complete(&job).await? {
                tracing::warn!(job_id = %id, "finalized a job whose last worker stopped before finalizing");
                report.finalized += 1;
            }
            return Ok(());
        }
        let view = store.lease_view(id, now).await?;
        let waiting = job.batches_ready.saturating_sub(job.batches_handed_out) + view.reclaimable;
        if !view.live && waiting > 0 {
            let count = waiting.min(u64::from(self.preparer.settings.max_workers)) as usize;
            tracing::warn!(job_id = %id, waiting, messages = count, "no live worker; fanning out again");
            self.queue
                .send(&vec![
                    WorkMessage {
                        job_id: id.clone(),
                        continuation: true
                    };
                    count
                ])
                .await?;
            report.refanned += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_recovered_counts_refanned_resumed_and_finalized_jobs() {
        let report = SweepReport {
            active_jobs: 5,
            refanned: 1,
            prepares_resumed: 1,
            finalized: 1,
            // Events and reports are owed work, not a job brought back.
            events_sent: 4,
            reports_written: 1,
            ..SweepReport::default()
        };
        assert_eq!(report.recovered(), 3);
    }
}
