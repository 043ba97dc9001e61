//! The sweeper: makes sure no job stays PROCESSING forever. For each active
//! job it resumes a prepare whose orchestrator died, finalizes a job whose
//! last committer died before finalizing, and re-fans out workers to a job
//! with waiting batches and no live lease.

use crate::finalize::{FinalizeError, Finalizer};
use crate::handlers::Deps;
use crate::job::{now_ms, JobId};
use crate::prepare::{PrepareError, Preparer};
use crate::queue::{QueueError, WorkMessage};
use crate::store::StoreError;
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    pub active_jobs: u64,
    /// Jobs that got new worker messages.
    pub refanned: u64,
    pub prepares_resumed: u64,
    pub finalized: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Finalize(#[from] FinalizeError),
    #[error("resuming the prepare of job {job} failed")]
    Prepare {
        job: JobId,
        #[source]
        source: PrepareError,
    },
}

/// One pass over the active jobs. `owner` names this sweep when it takes a
/// prepare over (the Lambda request id).
pub async fn sweep(
    deps: &Deps,
    owner: &str,
    deadline: Option<Instant>,
) -> Result<SweepReport, SweepError> {
    let store = deps.store.as_ref();
    let mut report = SweepReport::default();
    for id in store.active_jobs().await? {
        let Some(job) = store.get_job(&id).await? else {
            continue;
        };
        if job.status.is_final() {
            continue;
        }
        report.active_jobs += 1;
        let now = now_ms();
        if !job.prepared {
            if job.prepare_lease_until_ms < now {
                tracing::warn!(job_id = %id, from_batch = job.batches_ready, "resuming an abandoned prepare");
                let preparer = Preparer {
                    store,
                    objects: deps.objects.as_ref(),
                    queue: deps.queue.as_ref(),
                    events: deps.events.as_ref(),
                    reports: deps.reports.as_ref(),
                    definition: &deps.definition,
                    settings: &deps.prepare,
                };
                preparer
                    .run_until(&job.source, owner, deadline)
                    .await
                    .map_err(|source| SweepError::Prepare {
                        job: id.clone(),
                        source,
                    })?;
                report.prepares_resumed += 1;
            }
            continue;
        }
        if job.all_batches_done() {
            let finalizer = Finalizer {
                store,
                events: deps.events.as_ref(),
                reports: deps.reports.as_ref(),
                definition: &deps.definition,
            };
            if finalizer.complete(&job).await? {
                tracing::warn!(job_id = %id, "finalized a job whose last worker stopped before finalizing");
                report.finalized += 1;
            }
            continue;
        }
        let view = store.lease_view(&id, now).await?;
        let waiting = job.batches_ready.saturating_sub(job.batches_handed_out) + view.reclaimable;
        if !view.live && waiting > 0 {
            let count = waiting.min(u64::from(deps.prepare.max_workers)) as usize;
            tracing::warn!(job_id = %id, waiting, messages = count, "no live worker; fanning out again");
            deps.queue
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
    }
    Ok(report)
}
