//! Ending a job, exactly once: the conditional update from PROCESSING that
//! exactly one caller wins, then the error report, then the event
//! announcing the end.
//!
//! The status changes first, in a bounded number of requests whatever the
//! job's size (one read and one update), so an abort through the API or a
//! finalizer near its deadline always ends the job. The same update records
//! that the ending owes its report; the report, whose writing grows with
//! the job's failures, is written afterwards (under a key of the round, so
//! no other ending's report can overwrite it) and recorded on the job, and
//! only then is the ending announced, with the report's location. Whoever
//! finds a report owed writes it: the winner when it has the time, a worker
//! woken for the ended job, the sweeper.

use crate::clock::{Clock, Instant};
use crate::events::{announce, JobEvents};
use crate::job::{Job, JobId, JobStatus};
use crate::metrics::{Metric, MetricsSink};
use crate::processor::{registry, JobContext, Processors};
use crate::report::{ReportError, ReportSink};
use crate::schema::Definition;
use crate::store::{Finalization, FinalizeWhen, JobStore, StoreError};
use std::time::Duration;

/// A report is not started with less than this left before the deadline
/// (whoever finds it owed later writes it), and one still being written
/// this close to the deadline is given up.
pub const REPORT_MARGIN: Duration = Duration::from_secs(30);

/// How long a caller holds the report it writes at most: one that dies
/// holding it delays the report by no more than this, and a report that
/// takes longer gets a second writer (the same object, written again).
const REPORT_LEASE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum FinalizeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("the processor's end of the job failed")]
    Processor(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Built by `new` only (`Deps::finalizer`, the phases, the API and the
/// command line all go through it), so a service added here is given by
/// every caller.
#[derive(Clone, Copy)]
pub struct Finalizer<'a> {
    store: &'a dyn JobStore,
    events: &'a dyn JobEvents,
    reports: &'a dyn ReportSink,
    metrics: &'a dyn MetricsSink,
    definition: &'a Definition,
    /// Timestamps the ending and tells how far the deadline is.
    clock: &'a Clock,
    /// The invocation's deadline: a report that cannot be written before
    /// it stays owed for the next one to find.
    deadline: Option<Instant>,
    /// Whose `finish_job` runs when a job of a type that asks for it
    /// ends; without them, such an ending stays owed for a caller that
    /// has them (a worker, the sweeper).
    processors: Option<&'a Processors>,
}

/// What settling an ended job did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    /// The owed report was written and recorded.
    pub report: bool,
    /// Events sent.
    pub events: u64,
}

impl<'a> Finalizer<'a> {
    /// A finalizer for jobs running on `definition`, with no deadline.
    pub fn new(
        store: &'a dyn JobStore,
        events: &'a dyn JobEvents,
        reports: &'a dyn ReportSink,
        metrics: &'a dyn MetricsSink,
        definition: &'a Definition,
        clock: &'a Clock,
    ) -> Self {
        Finalizer {
            store,
            events,
            reports,
            metrics,
            definition,
            clock,
            deadline: None,
            processors: None,
        }
    }

    /// The same finalizer, running processors' `finish_job`.
    pub fn with_processors(mut self, processors: Option<&'a Processors>) -> Self {
        self.processors = processors;
        self
    }

    /// The same finalizer, for a job running on `definition` (its pinned
    /// one).
    pub fn on<'b>(self, definition: &'b Definition) -> Finalizer<'b>
    where
        'a: 'b,
    {
        let mut finalizer: Finalizer<'b> = self;
        finalizer.definition = definition;
        finalizer
    }

    /// The same finalizer, bound by `deadline`.
    pub fn until(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    /// Completes `job` if prepare has finished and every batch is terminal.
    /// True for the one caller whose conditional update succeeded.
    pub async fn complete(&self, job: &Job) -> Result<bool, FinalizeError> {
        if job.status.is_final() || !job.all_batches_done() {
            return Ok(false);
        }
        let (status, reason) = final_status(job, self.definition);
        let fin = Finalization {
            status,
            reason,
            // With every batch terminal the failures are final. A
            // processor's `finish_job` is owed like the report.
            report_owed: job.failed > 0 || registry::finishes_jobs(self.definition),
            now_ms: self.clock.now_ms(),
        };
        if !self
            .store
            .finalize(&job.id, &fin, FinalizeWhen::AllBatchesDone)
            .await?
        {
            return Ok(false);
        }
        self.ended(&job.id, status);
        self.after_end(&job.id).await;
        Ok(true)
    }

    /// Ends `job` as FAILED now, whatever its batches (a file-level error,
    /// or a failed record with `continueOnError` off).
    pub async fn fail(&self, job: &JobId, reason: String) -> Result<bool, FinalizeError> {
        if !self.end_now(job, JobStatus::Failed, reason).await? {
            return Ok(false);
        }
        self.after_end(job).await;
        Ok(true)
    }

    /// Stops `job` now (an operator's abort): prepare publishes nothing
    /// more, workers claim nothing more (the batch in hand still commits
    /// and counts), and the job ends ABORTED. Only the ending is written
    /// here, in one read and one update: its report (the failures known by
    /// then) and event follow through `settle`. False when the job was
    /// already final.
    pub async fn abort(&self, job: &JobId, reason: String) -> Result<bool, FinalizeError> {
        self.end_now(job, JobStatus::Aborted, reason).await
    }

    /// `abort`, then the report and the event in this process (a caller
    /// without a time limit, such as the command line).
    pub async fn abort_and_settle(
        &self,
        job: &JobId,
        reason: String,
    ) -> Result<bool, FinalizeError> {
        if !self.abort(job, reason).await? {
            return Ok(false);
        }
        self.settle(job).await?;
        Ok(true)
    }

    async fn end_now(
        &self,
        job: &JobId,
        status: JobStatus,
        reason: String,
    ) -> Result<bool, FinalizeError> {
        let Some(current) = self.store.get_job(job).await? else {
            return Err(StoreError::JobNotFound(job.clone()).into());
        };
        if current.status.is_final() {
            return Ok(false);
        }
        let fin = Finalization {
            status,
            reason: Some(reason),
            // A batch in hand may still commit failures after the end, so
            // the report is owed whatever the count now; written with none
            // it records no report.
            report_owed: true,
            now_ms: self.clock.now_ms(),
        };
        let ended = self.store.finalize(job, &fin, FinalizeWhen::Now).await?;
        if ended {
            self.ended(job, status);
        }
        Ok(ended)
    }

    /// The one report of a job's end, by the caller whose update ended it
    /// (the report and the event that follow may be done, and retried, by
    /// anyone).
    fn ended(&self, job: &JobId, status: JobStatus) {
        tracing::info!(job_id = %job, %status, "job finalized");
        self.metrics.record(Metric::JobEnded {
            job: job.clone(),
            status,
        });
    }

    /// The winner's follow-up: the report and the event now if it can; a
    /// failure loses nothing, both stay owed for whoever comes next.
    async fn after_end(&self, job: &JobId) {
        if let Err(e) = self.settle(job).await {
            let error = crate::telemetry::error_chain(&e);
            tracing::warn!(job_id = %job, %error, "job report or event not done yet; whoever finds it owed does it");
        }
    }

    /// Writes the report an ended job owes (when there is time before the
    /// deadline), records it, then sends the events it owes. Anything
    /// left undone stays owed; calling it again is safe.
    pub async fn settle(&self, job: &JobId) -> Result<Settled, FinalizeError> {
        let mut settled = Settled::default();
        let Some(mut ended) = self.store.get_job(job).await? else {
            return Ok(settled);
        };
        if ended.report_owed && ended.status.is_final() {
            if !self.report_fits() {
                tracing::info!(job_id = %job, "too close to the deadline to write the report; it stays owed");
                return Ok(settled);
            }
            // One writer at a time: every worker that finds the job ended
            // comes here, and each write reads every failure of the job.
            let now_ms = self.clock.now_ms();
            if !self
                .store
                .lease_report(job, ended.retries, now_ms, now_ms + self.report_lease_ms())
                .await?
            {
                tracing::info!(job_id = %job, "another caller is writing the report");
                return Ok(settled);
            }
            if registry::finishes_jobs(self.definition) && !self.finish_job(&ended).await? {
                return Ok(settled);
            }
            let location = match ended.failed {
                0 => None,
                _ => Some(self.write_report(&ended).await?),
            };
            settled.report = self
                .store
                .record_report(job, ended.retries, location.as_deref())
                .await?;
            match self.store.get_job(job).await? {
                Some(j) => ended = j,
                None => return Ok(settled),
            }
        }
        settled.events = announce(self.store, self.events, &ended).await;
        Ok(settled)
    }

    /// The processor's `finish_job`; false when this caller cannot build
    /// the processor (the ending stays owed).
    async fn finish_job(&self, job: &Job) -> Result<bool, FinalizeError> {
        let processor = match self.processors.map(|p| p.of(self.definition)) {
            Some(Ok(Some(processor))) => processor,
            Some(Err(e)) => return Err(FinalizeError::Processor(Box::new(e))),
            _ => {
                tracing::info!(job_id = %job.id, "the job's processor is not built here; its end stays owed");
                return Ok(false);
            }
        };
        let ctx = JobContext {
            job,
            definition: self.definition,
        };
        processor
            .finish_job(&ctx)
            .await
            .map_err(|e| FinalizeError::Processor(Box::new(e)))?;
        Ok(true)
    }

    /// How long this caller holds the report: `REPORT_LEASE`, or less when
    /// its deadline comes first (it stops writing by then).
    fn report_lease_ms(&self) -> i64 {
        let lease = self
            .deadline
            .map_or(REPORT_LEASE, |d| self.clock.until(d).min(REPORT_LEASE));
        lease.as_millis() as i64
    }

    fn report_fits(&self) -> bool {
        self.deadline
            .is_none_or(|d| self.clock.until(d) > REPORT_MARGIN * 2)
    }

    /// The report, given up (and left owed) if the deadline comes first.
    async fn write_report(&self, job: &Job) -> Result<String, FinalizeError> {
        let write = self.reports.write(job, self.definition, self.store);
        let Some(deadline) = self.deadline else {
            return Ok(write.await?);
        };
        let until = deadline.checked_sub(REPORT_MARGIN).unwrap_or(deadline);
        match self.clock.timeout_at(until, write).await {
            Ok(written) => Ok(written?),
            Err(_) => Err(ReportError::Unfinished.into()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::MemoryEvents;
    use crate::job::{EventKind, FailedRecord, FieldIssue, SourceRef, StagedRecord};
    use crate::report::MemoryReports;
    use crate::store::memory::MemoryStore;
    use crate::store::{
        BatchOutcome, BatchState, Claim, ClaimStore, CreateOutcome, JobControl, NewBatch,
        PrepareLease, PrepareStore,
    };

    const DEFINITION: &str = r#"{"fields": [{"name": "email", "type": "email"}]}"#;

    /// A prepared job of one batch of two records, one failed, committed.
    async fn done_with_a_failure(store: &MemoryStore) -> Job {
        let source = SourceRef {
            bucket: "b".into(),
            key: "k.csv".into(),
            version: "v".into(),
        };
        let lease = PrepareLease {
            owner: "o".into(),
            lease_ms: 60_000,
        };
        let CreateOutcome::Created(job) = store.create_job(&source, &lease, 0).await.unwrap()
        else {
            panic!("new job");
        };
        let records: Vec<StagedRecord> = (2..4)
            .map(|line| StagedRecord {
                line,
                values: vec![Some(format!("u{line}@x.org"))].into(),
                issue: None,
            })
            .collect();
        let batch = NewBatch {
            index: 0,
            records: &records,
            after: None,
        };
        store.write_batch(&job.id, batch, 0).await.unwrap();
        store.finish_prepare(&job.id, &lease, 2, 1).await.unwrap();
        let Claim::Batch(c) = store.claim_batch(&job.id, "w", 0, 60_000).await.unwrap() else {
            panic!("a batch");
        };
        let outcome = BatchOutcome {
            state: BatchState::Done,
            processed: 1,
            failed: vec![FailedRecord::unprocessed(
                3,
                vec![FieldIssue::new(None, None, "refused")],
            )],
            error: None,
            duplicates: 0,
        };
        store.commit_batch(&c, &outcome, 0).await.unwrap();
        store.get_job(&job.id).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn a_finalizer_out_of_time_ends_the_job_and_leaves_its_report_owed() {
        let (store, events, reports) = (
            MemoryStore::new(),
            MemoryEvents::default(),
            MemoryReports::default(),
        );
        let definition = Definition::from_json(DEFINITION, "test").unwrap();
        let clock = Clock::system();
        let finalizer = Finalizer::new(
            &store,
            &events,
            &reports,
            &crate::metrics::NoMetrics,
            &definition,
            &clock,
        );
        let job = done_with_a_failure(&store).await;
        let hurried = finalizer.until(Some(clock.instant() + REPORT_MARGIN));
        assert!(
            hurried.complete(&job).await.unwrap(),
            "the ending is written"
        );
        let ended = store.get_job(&job.id).await.unwrap().unwrap();
        assert_eq!(ended.status, JobStatus::CompletedWithErrors);
        assert!(ended.report_owed);
        assert!(reports.reports.lock().unwrap().is_empty());
        assert!(events.endings().is_empty(), "announced with its report");
        assert_eq!(store.pending_events().await.unwrap(), vec![job.id.clone()]);

        // Whoever finds it owed (a woken worker, the sweeper) writes it.
        let settled = finalizer.settle(&job.id).await.unwrap();
        assert!(settled.report);
        let ended = store.get_job(&job.id).await.unwrap().unwrap();
        let location = format!("memory://reports/{}.csv", job.id);
        assert_eq!(
            (ended.report_owed, ended.report.as_deref()),
            (false, Some(location.as_str()))
        );
        let endings = events.of(EventKind::Completed);
        assert_eq!(endings.len(), 1);
        assert_eq!(endings[0].report.as_deref(), Some(location.as_str()));
        assert!(store.pending_events().await.unwrap().is_empty());
    }

    /// Reports that take a while to write, as a large one does.
    #[derive(Default)]
    struct SlowReports(MemoryReports);

    #[async_trait::async_trait]
    impl ReportSink for SlowReports {
        async fn write(
            &self,
            job: &Job,
            definition: &Definition,
            store: &dyn JobStore,
        ) -> Result<String, ReportError> {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            self.0.write(job, definition, store).await
        }
    }

    #[tokio::test]
    async fn of_many_callers_that_find_a_report_owed_one_writes_it() {
        let (store, events, reports) = (
            MemoryStore::new(),
            MemoryEvents::default(),
            SlowReports::default(),
        );
        let definition = Definition::from_json(DEFINITION, "test").unwrap();
        let clock = Clock::system();
        let finalizer = Finalizer::new(
            &store,
            &events,
            &reports,
            &crate::metrics::NoMetrics,
            &definition,
            &clock,
        );
        let job = done_with_a_failure(&store).await;
        let hurried = finalizer.until(Some(clock.instant() + REPORT_MARGIN));
        assert!(hurried.complete(&job).await.unwrap());

        // Every worker of a large fleet finds the job ended at once.
        let settles = (0..8).map(|_| finalizer.settle(&job.id));
        let settled = futures::future::join_all(settles).await;
        assert_eq!(
            settled
                .iter()
                .filter(|s| s.as_ref().unwrap().report)
                .count(),
            1
        );
        assert_eq!(reports.0.reports.lock().unwrap().len(), 1, "written once");
        assert_eq!(events.of(EventKind::Completed).len(), 1);
    }

    #[test]
    fn each_round_of_a_job_reports_under_its_own_name() {
        let mut job =
            futures::executor::block_on(async { done_with_a_failure(&MemoryStore::new()).await });
        let first = crate::report::report_name(&job);
        job.retries = 2;
        let third = crate::report::report_name(&job);
        assert_eq!(first, format!("{}.csv", job.id));
        assert_eq!(third, format!("{}.retry-2.csv", job.id));
    }
}
