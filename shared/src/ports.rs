//! The bundle of services every phase of a job talks to (store, objects,
//! queue, events, reports, metrics), the clock and the randomness source,
//! with the deployment's definition and settings, built once per process; and the one place that assembles the
//! phases (`Preparer`, `Worker`, `Finalizer`, `Sweeper`) from it. The
//! Lambda handlers wire it to AWS (`handlers`), tests to in-memory backends.

use crate::clock::Clock;
use crate::events::JobEvents;
use crate::finalize::Finalizer;
use crate::job::JobId;
use crate::metrics::MetricsSink;
use crate::objects::{ObjectSource, ObjectVersions};
use crate::pinned::PinnedDefinitions;
use crate::prepare::{PrepareSettings, Preparer};
use crate::process::{Worker, WorkerSettings};
use crate::processor::{Processors, RecordProcessor};
use crate::queue::{PrepareQueue, QueueError, WorkQueue};
use crate::report::ReportSink;
use crate::rng::Rng;
use crate::routes::Routes;
use crate::schema::Definition;
use crate::store::JobStore;
use crate::sweep::Sweeper;
use crate::throttle::Throttle;
use std::sync::Arc;

#[derive(Clone)]
pub struct Deps {
    pub store: Arc<dyn JobStore>,
    pub objects: Arc<dyn ObjectSource>,
    /// HEADs of uploaded objects: the orchestrator learns from it which
    /// upload of an unversioned bucket an event is for.
    pub versions: Arc<dyn ObjectVersions>,
    pub queue: Arc<dyn WorkQueue>,
    /// Continuations of prepares handed over near a deadline (`None`: the
    /// sweeper resumes them).
    pub prepare_queue: Option<Arc<dyn PrepareQueue>>,
    pub events: Arc<dyn JobEvents>,
    pub reports: Arc<dyn ReportSink>,
    /// Where the phases report what they did (EMF lines in Lambda).
    pub metrics: Arc<dyn MetricsSink>,
    /// What workers run on the valid records of each definition's jobs.
    pub processors: Arc<Processors>,
    /// The windows of jobs' throughput caps (`maxWriteUnitsPerSecond`).
    pub throttle: Arc<dyn Throttle>,
    /// Which definition an uploaded object is imported with: pinned to
    /// each new job, which then runs on its pinned copy (`pinned`).
    pub routes: Arc<Routes>,
    pub pinned: Arc<PinnedDefinitions>,
    pub prepare: PrepareSettings,
    pub worker: WorkerSettings,
    /// Every reading of time and every wait of the phases: the system's in
    /// production, a simulated one on a paused runtime in tests.
    pub clock: Clock,
    /// Every random draw of the phases (jitter, counter shards): seeded
    /// from entropy in production, from a fixed seed in tests.
    pub rng: Rng,
}

impl Deps {
    /// The orchestrator's phase for a job running on `definition`.
    pub fn preparer<'a>(&'a self, definition: &'a Definition) -> Preparer<'a> {
        Preparer {
            store: self.store.as_ref(),
            objects: self.objects.as_ref(),
            queue: self.queue.as_ref(),
            events: self.events.as_ref(),
            reports: self.reports.as_ref(),
            metrics: self.metrics.as_ref(),
            definition,
            settings: &self.prepare,
            clock: &self.clock,
            processors: Some(&self.processors),
        }
    }

    /// A worker for a job running on `definition`.
    pub fn worker<'a>(
        &'a self,
        processor: &'a dyn RecordProcessor,
        definition: &'a Definition,
        job_created_at_ms: i64,
    ) -> Worker<'a> {
        Worker {
            store: self.store.as_ref(),
            processor,
            throttle: self.throttle.as_ref(),
            events: self.events.as_ref(),
            reports: self.reports.as_ref(),
            metrics: self.metrics.as_ref(),
            definition,
            job_created_at_ms,
            settings: &self.worker,
            clock: &self.clock,
            rng: &self.rng,
            processors: Some(&self.processors),
        }
    }

    /// Asks for a handed-over prepare to be continued at once (through the
    /// prepare queue); without one, the next sweep resumes it.
    pub async fn continue_prepare(&self, job: &JobId) -> Result<(), QueueError> {
        crate::queue::continue_prepare(self.prepare_queue.as_deref(), job).await
    }

    /// Retries of ended jobs, waking this deployment's workers.
    pub fn steering(&self) -> crate::steer::Steering<'_> {
        crate::steer::Steering {
            store: self.store.as_ref(),
            queue: self.queue.as_ref(),
            prepare_queue: self.prepare_queue.as_deref(),
            events: self.events.as_ref(),
            max_workers: self.prepare.max_workers,
            inline_requeue: false,
            clock: &self.clock,
        }
    }

    pub fn finalizer<'a>(&'a self, definition: &'a Definition) -> Finalizer<'a> {
        Finalizer::new(
            self.store.as_ref(),
            self.events.as_ref(),
            self.reports.as_ref(),
            self.metrics.as_ref(),
            definition,
            &self.clock,
        )
        .with_processors(Some(&self.processors))
    }

    /// The sweeper: the phases above on the deployment's definition, which
    /// it rebinds to each job's pinned one.
    pub fn sweeper(&self) -> Sweeper<'_> {
        Sweeper {
            store: self.store.as_ref(),
            events: self.events.as_ref(),
            queue: self.queue.as_ref(),
            prepare_queue: self.prepare_queue.as_deref(),
            metrics: self.metrics.as_ref(),
            pinned: &self.pinned,
            routes: &self.routes,
            preparer: self.preparer(self.routes.primary()),
            finalizer: self.finalizer(self.routes.primary()),
            steering: self.steering(),
            clock: &self.clock,
        }
    }
}
