//! Phase one (the orchestrator): turn an uploaded object into a job of
//! batches. Streams the object, cuts batches deterministically, writes each
//! one as soon as it is cut, fans out worker messages, and resumes after a
//! crash or a hand-off from the checkpoint published with the last batches.

mod cutting;
mod partitions;
mod publishing;
mod resume;
#[cfg(test)]
mod resume_tests;
#[cfg(test)]
mod tests;

use cutting::{object_stop, source_stop, Stop};
pub use cutting::{MAX_BATCHES_PER_WRITE, MAX_BYTES_IN_FLIGHT, MAX_WRITES_IN_FLIGHT};
use publishing::Progress;

use crate::clock::{Clock, Instant};
use crate::events::JobEvents;
use crate::finalize::{FinalizeError, Finalizer};
use crate::job::{FieldIssue, Job, SourceRef, StagedRecord};
use crate::metrics::{Metric, MetricsSink};
use crate::objects::{ObjectError, ObjectSource};
use crate::processor::Processors;
use crate::queue::{QueueError, WorkMessage, WorkQueue};
use crate::report::ReportSink;
use crate::schema::Definition;
use crate::source::{Checkpoint, SourceError};
use crate::store::{codec, CreateOutcome, JobStore, NewBatch, PrepareLease, StoreError};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A batch is also cut when its records reach this many bytes, so memory
/// stays bounded whatever the batch size and row size.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Time kept in hand before the deadline: enough to write one more batch
/// and release the lease.
pub const HANDOFF_MARGIN: Duration = Duration::from_secs(30);

/// Written batches are published (made claimable) in groups of this many,
/// so the job item takes one write per group instead of one per batch...
pub const PUBLISH_EVERY: u64 = 8;
/// ...or sooner when this long passed since the last publication, so a slow
/// file still feeds its workers. The first batch is published at once.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct PrepareSettings {
    /// Worker messages sent per job: min(total batches, this).
    pub max_workers: u32,
    /// How long a prepare lease lasts without progress.
    pub lease_ms: i64,
    /// Hand the prepare over after writing this many batches in one run, as
    /// if the deadline had come: a deterministic way to exercise resumption.
    /// `None` (the default) hands over only near the deadline.
    pub handoff_after_batches: Option<u64>,
    /// Writes in flight while the file is read on (1: one at a time).
    pub writes_in_flight: usize,
    /// Batches one write carries at most: those cut while earlier writes
    /// were out share its requests.
    pub batches_per_write: usize,
}

impl Default for PrepareSettings {
    fn default() -> Self {
        PrepareSettings {
            max_workers: 10,
            lease_ms: 60_000,
            handoff_after_batches: None,
            writes_in_flight: MAX_WRITES_IN_FLIGHT,
            batches_per_write: MAX_BATCHES_PER_WRITE,
        }
    }
}

#[derive(Clone, Copy)]
pub struct Preparer<'a> {
    pub store: &'a dyn JobStore,
    pub objects: &'a dyn ObjectSource,
    pub queue: &'a dyn WorkQueue,
    pub events: &'a dyn JobEvents,
    pub reports: &'a dyn ReportSink,
    pub metrics: &'a dyn MetricsSink,
    pub definition: &'a Definition,
    pub settings: &'a PrepareSettings,
    /// Leases, timestamps, publication timers and the deadline.
    pub clock: &'a Clock,
    /// For a job that ends while prepared (`Finalizer::with_processors`).
    pub processors: Option<&'a Processors>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PrepareOutcome {
    /// Batches written, workers fanned out.
    Prepared(Job),
    /// The job already existed and is prepared or finished (a re-delivered event).
    AlreadyPrepared(Job),
    /// Another orchestrator is preparing this job right now.
    InProgress(Job),
    /// The file was rejected; the job is FAILED with the reason.
    Rejected(Job),
    /// The invocation's deadline came first: the lease is released and the
    /// next sweep resumes at the checkpoint published with it.
    HandedOff(Job),
    /// The job ended while prepare ran (aborted, or failed by a worker):
    /// prepare stopped at its next publication.
    Stopped(Job),
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Finalize(#[from] FinalizeError),
    #[error("reading the object failed; the job resumes when the event is retried")]
    Object(#[source] ObjectError),
    #[error("reading the object failed; the job resumes when the event is retried")]
    Read(#[source] SourceError),
}

impl<'a> Preparer<'a> {
    /// The same preparer, for a job running on `definition` (its pinned
    /// one).
    pub fn on<'b>(self, definition: &'b Definition) -> Preparer<'b>
    where
        'a: 'b,
    {
        let mut preparer: Preparer<'b> = self;
        preparer.definition = definition;
        preparer
    }

    /// Creates (or resumes) the job for `source` and prepares it. `owner`
    /// identifies this invocation (the Lambda request id).
    pub async fn run(
        &self,
        source: &SourceRef,
        owner: &str,
    ) -> Result<PrepareOutcome, PrepareError> {
        self.run_until(source, owner, None).await
    }

    /// Creates the job for `source`, of no kind, and fails it at once with
    /// `reason`, reading nothing: an upload no route takes. A job that
    /// exists already (the event delivered again) is left as it is.
    pub async fn refuse(
        &self,
        source: &SourceRef,
        owner: &str,
        reason: String,
    ) -> Result<PrepareOutcome, PrepareError> {
        let lease = PrepareLease {
            owner: owner.to_owned(),
            lease_ms: self.settings.lease_ms,
        };
        match self
            .store
            .create_job_of(source, "", &lease, self.clock.now_ms())
            .await?
        {
            CreateOutcome::Created(job) => {
                crate::events::announce(self.store, self.events, &job).await;
                self.reject(job, reason).await
            }
            CreateOutcome::Exists(job) if job.status.is_final() => {
                Ok(PrepareOutcome::AlreadyPrepared(job))
            }
            // Created by a delivery that stopped before failing it.
            CreateOutcome::Exists(job) => self.reject(job, reason).await,
        }
    }

    /// `run`, handing the prepare over (to the next sweep) instead of
    /// starting another batch when `deadline` is less than
    /// `HANDOFF_MARGIN` away (or while re-reading towards its checkpoint).
    pub async fn run_until(
        &self,
        source: &SourceRef,
        owner: &str,
        deadline: Option<Instant>,
    ) -> Result<PrepareOutcome, PrepareError> {
        let lease = PrepareLease {
            owner: owner.to_owned(),
            lease_ms: self.settings.lease_ms,
        };
        let job = match self
            .store
            .create_job_of(
                source,
                self.definition.kind_name(),
                &lease,
                self.clock.now_ms(),
            )
            .await?
        {
            CreateOutcome::Created(job) => {
                crate::events::announce(self.store, self.events, &job).await;
                job
            }
            CreateOutcome::Exists(job) if job.prepared || job.status.is_final() => {
                return Ok(PrepareOutcome::AlreadyPrepared(job));
            }
            CreateOutcome::Exists(job) => match self
                .store
                .acquire_prepare(&job.id, &lease, self.clock.now_ms())
                .await?
            {
                Some(job) => {
                    tracing::info!(job_id = %job.id, from_batch = job.batches_ready, "resuming prepare");
                    job
                }
                None => return Ok(PrepareOutcome::InProgress(job)),
            },
        };
        let mut progress = Progress {
            started: job.batches_ready,
            written: job.batches_ready,
            published: job.batches_ready,
            last_publish: self.clock.instant(),
            last_renewal: self.clock.instant(),
            woken: 0,
            records_read: 0,
        };
        let result = self.prepare(&job, &lease, deadline, &mut progress).await;
        self.metrics.record(Metric::Prepared {
            job: job.id.clone(),
            records_read: progress.records_read,
            batches_written: progress.written.saturating_sub(progress.started),
        });
        if let Err(PrepareError::Store(StoreError::PrepareLeaseLost(_))) = &result {
            // Fenced out: by a newer owner, or because the job ended.
            if let Some(current) = self.store.get_job(&job.id).await? {
                if current.status.is_final() {
                    tracing::info!(job_id = %job.id, status = %current.status, "job ended while preparing; prepare stopped");
                    return Ok(PrepareOutcome::Stopped(current));
                }
            }
        }
        result
    }

    async fn prepare(
        &self,
        job: &Job,
        lease: &PrepareLease,
        deadline: Option<Instant>,
        progress: &mut Progress,
    ) -> Result<PrepareOutcome, PrepareError> {
        let source = &job.source;
        let job = job.clone();
        let lease = lease.clone();
        match self.write_batches(&job, &lease, deadline, progress).await {
            Ok((total_records, total_batches)) => {
                if total_records == 0 {
                    let reason = format!("{source}: the file holds no records");
                    return self.reject(job, reason).await;
                }
                let job = self
                    .store
                    .finish_prepare(&job.id, &lease, total_records, total_batches)
                    .await?;
                // Wake the rest (a resumed prepare wakes anew: the workers
                // woken before the crash may be gone).
                self.wake_for(&job, total_batches, progress).await?;
                tracing::info!(job_id = %job.id, total_records, total_batches, "prepared");
                crate::events::announce(self.store, self.events, &job).await;
                // Workers may have finished every batch already.
                self.finalizer(deadline).complete(&job).await?;
                Ok(PrepareOutcome::Prepared(job))
            }
            Err(Stop::Reject(reason)) => self.reject(job, reason).await,
            Err(Stop::Handoff(checkpoint)) => {
                self.publish(&job, &lease, progress, checkpoint.as_ref())
                    .await?;
                self.store.release_prepare(&job.id, &lease).await?;
                let job = self.store.get_job(&job.id).await?.unwrap_or(job);
                tracing::warn!(job_id = %job.id, batches = job.batches_ready, "deadline near; prepare handed over");
                Ok(PrepareOutcome::HandedOff(job))
            }
            Err(Stop::Error(e)) => {
                // Whoever retries (the event's redelivery, the sweeper) need
                // not wait for the lease to expire.
                if let Err(release) = self.store.release_prepare(&job.id, &lease).await {
                    let error = crate::telemetry::error_chain(&release);
                    tracing::warn!(job_id = %job.id, %error, "prepare lease not released");
                }
                Err(e)
            }
        }
    }

    fn finalizer(&self, deadline: Option<Instant>) -> Finalizer<'_> {
        Finalizer::new(
            self.store,
            self.events,
            self.reports,
            self.metrics,
            self.definition,
            self.clock,
        )
        .with_processors(self.processors)
        .until(deadline)
    }

    async fn reject(&self, job: Job, reason: String) -> Result<PrepareOutcome, PrepareError> {
        tracing::warn!(job_id = %job.id, %reason, "file rejected");
        // A rejected file's report (rows failed before it) is small.
        self.finalizer(None).fail(&job.id, reason).await?;
        let job = self.store.get_job(&job.id).await?.unwrap_or(job);
        Ok(PrepareOutcome::Rejected(job))
    }

    /// Less than `HANDOFF_MARGIN` left before the deadline.
    fn near(&self, deadline: Option<Instant>) -> bool {
        deadline.is_some_and(|d| self.clock.until(d) < HANDOFF_MARGIN)
    }

    /// Near the deadline, or done with this run's share of batches.
    fn must_hand_off(&self, deadline: Option<Instant>, cut_this_run: u64) -> bool {
        self.near(deadline)
            || self
                .settings
                .handoff_after_batches
                .is_some_and(|n| cut_this_run >= n)
    }
}
