//! Phase one (the orchestrator): turn an uploaded object into a job of
//! batches. Streams the object, cuts batches deterministically, writes each
//! one as soon as it is cut, fans out worker messages, and resumes after a
//! crash or a hand-off from the checkpoint published with the last batches.

mod resume;
#[cfg(test)]
mod resume_tests;

use crate::clock::{Clock, Instant};
use crate::events::JobEvents;
use crate::finalize::{FinalizeError, Finalizer};
use crate::job::{FieldIssue, Job, SourceRef, StagedRecord};
use crate::metrics::{Metric, MetricsSink};
use crate::objects::{ObjectError, ObjectSource};
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
            .create_job(source, &lease, self.clock.now_ms())
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
        .until(deadline)
    }

    async fn reject(&self, job: Job, reason: String) -> Result<PrepareOutcome, PrepareError> {
        tracing::warn!(job_id = %job.id, %reason, "file rejected");
        // A rejected file's report (rows failed before it) is small.
        self.finalizer(None).fail(&job.id, reason).await?;
        let job = self.store.get_job(&job.id).await?.unwrap_or(job);
        Ok(PrepareOutcome::Rejected(job))
    }

    /// Streams the object into batches from where the last publication
    /// left off. Without a checkpoint the object is read from the start and
    /// the batches a previous owner published are cut again but not written
    /// (cutting is deterministic, so they are identical).
    ///
    /// Reading and writing overlap: the reader cuts batches while up to
    /// `writes_in_flight` (4) writes of earlier ones are out, each carrying
    /// the batches cut meanwhile, up to `batches_per_write` (4) (and at most
    /// `MAX_BYTES_IN_FLIGHT` of records held). Batches are published in
    /// order as the writes before them complete, so the protocol sees the
    /// same sequence as a one-at-a-time prepare.
    async fn write_batches(
        &self,
        job: &Job,
        lease: &PrepareLease,
        deadline: Option<Instant>,
        progress: &mut Progress,
    ) -> Result<(u64, u64), Stop> {
        let start = self.open_reader(job, lease, deadline, progress).await?;
        // Room for a full group of batches to gather while writes are out.
        let (cuts, to_write) =
            futures::channel::mpsc::channel::<Cut>(self.settings.batches_per_write.max(1));
        let budget = Arc::new(Semaphore::new(BUDGET_UNITS));
        let mut renewed = progress.last_renewal;
        let mut records_read = 0;
        let read = self.cut_batches(
            job,
            lease,
            deadline,
            start,
            cuts,
            budget,
            &mut renewed,
            &mut records_read,
        );
        let write = self.write_cuts(job, lease, to_write, progress);
        let (read, write) = futures::join!(read, write);
        progress.records_read += records_read;
        // A failed write stops the reader (its next send fails): the
        // write's error is the one to report.
        write?;
        read
    }

    /// The reading half: records into batches, each sent with where the
    /// next one starts (known once the next record is read).
    #[allow(clippy::too_many_arguments)]
    async fn cut_batches(
        &self,
        job: &Job,
        lease: &PrepareLease,
        deadline: Option<Instant>,
        start: resume::Start,
        mut cuts: futures::channel::mpsc::Sender<Cut>,
        budget: Arc<Semaphore>,
        renewed: &mut Instant,
        records_read: &mut u64,
    ) -> Result<(u64, u64), Stop> {
        let resume_from = job.batches_ready;
        let mut reader = start.reader;
        let (mut index, mut total) = (start.index, start.records);
        let mut batch: Vec<StagedRecord> = Vec::with_capacity(self.definition.batch_size);
        let mut batch_bytes = 0usize;
        let mut cut_this_run = 0u64;
        // A full batch waits here for the next record's checkpoint.
        let mut full: Option<(u64, Vec<StagedRecord>, usize)> = None;
        while let Some(record) = reader.next_record().await.map_err(source_stop)? {
            if batch.is_empty() {
                // Where this batch starts: the checkpoint published with the
                // batches before it.
                let batch_start = reader.checkpoint();
                if let Some(previous) = full.take() {
                    if !send_cut(&mut cuts, &budget, previous, batch_start.clone()).await {
                        return Ok((total, index));
                    }
                }
                if index < resume_from {
                    self.keep_alive(job, lease, deadline, renewed).await?;
                } else if self.must_hand_off(deadline, cut_this_run) {
                    // Before reading the batch: what this run reads past
                    // the checkpoint, the next one reads again.
                    return Err(Stop::Handoff(batch_start));
                }
            }
            *records_read += 1;
            let (record, size) = storable(record);
            batch_bytes += size;
            batch.push(record);
            total += 1;
            if batch.len() >= self.definition.batch_size || batch_bytes >= MAX_BATCH_BYTES {
                let records =
                    std::mem::replace(&mut batch, Vec::with_capacity(self.definition.batch_size));
                if index >= resume_from {
                    full = Some((index, records, batch_bytes));
                    cut_this_run += 1;
                }
                index += 1;
                batch_bytes = 0;
            }
        }
        if let Some(previous) = full.take() {
            if !send_cut(&mut cuts, &budget, previous, None).await {
                return Ok((total, index));
            }
        }
        if !batch.is_empty() {
            if index >= resume_from
                && !send_cut(&mut cuts, &budget, (index, batch, batch_bytes), None).await
            {
                return Ok((total, index));
            }
            index += 1;
        }
        Ok((total, index))
    }

    /// The writing half: up to `writes_in_flight` writes at once, of up to
    /// `batches_per_write` batches each, completed in order; publishes as
    /// they complete. Each batch is not claimable until published, with the
    /// checkpoint of the batch after it.
    async fn write_cuts(
        &self,
        job: &Job,
        lease: &PrepareLease,
        cuts: futures::channel::mpsc::Receiver<Cut>,
        progress: &mut Progress,
    ) -> Result<(), Stop> {
        // Batches cut while writes are in flight go out together, sharing
        // requests.
        let in_flight = self.settings.writes_in_flight.max(1);
        let mut written = cuts
            .ready_chunks(self.settings.batches_per_write.max(1))
            .map(|group| async move {
                let batches: Vec<NewBatch<'_>> = group
                    .iter()
                    .map(|cut| NewBatch {
                        index: cut.index,
                        records: &cut.records,
                    })
                    .collect();
                self.store
                    .write_batches(&job.id, &batches, self.clock.now_ms())
                    .await
                    .map(|()| {
                        group
                            .into_iter()
                            .map(|cut| (cut.index, cut.next_start))
                            .collect::<Vec<_>>()
                    })
            })
            .buffered(in_flight);
        // One publication at a time, while the writes go on: the latest
        // publishable point waits for the one in flight.
        let mut publishing: Option<futures::future::BoxFuture<'_, Result<u64, StoreError>>> = None;
        let mut publishable: Option<(u64, Checkpoint)> = None;
        let mut writing = true;
        while writing || publishing.is_some() {
            tokio::select! {
                // A fixed order, so a run on a paused clock repeats (tokio
                // otherwise picks among ready branches at random). The
                // publication first: it is one at a time, so it cannot
                // starve the writes, while a stream of ready writes could
                // hold back the workers it wakes.
                biased;
                published = async { publishing.as_mut().expect("guarded").await }, if publishing.is_some() => {
                    publishing = None;
                    progress.published = published.map_err(|e| Stop::Error(e.into()))?;
                    progress.last_publish = self.clock.instant();
                    progress.last_renewal = progress.last_publish;
                    self.wake_for(job, progress.published, progress)
                        .await
                        .map_err(|e| Stop::Error(e.into()))?;
                }
                // `Buffered::next` is cancel-safe: a write completing while
                // a publication does stays in the stream.
                done = written.next(), if writing => match done {
                    None => writing = false,
                    Some(done) => {
                        for (index, next_start) in done.map_err(|e| Stop::Error(e.into()))? {
                            progress.written = index + 1;
                            // The last batch is published by `finish_prepare`.
                            if let Some(next_start) = next_start {
                                publishable = Some((index + 1, next_start));
                            }
                        }
                    }
                },
            }
            if publishing.is_none() && progress.publication_due(self.clock.instant()) {
                if let Some((ready, next_start)) = publishable.take() {
                    let checkpoint = next_start.encode();
                    let id = job.id.clone();
                    publishing = Some(Box::pin(async move {
                        self.store
                            .publish(&id, lease, ready, Some(&checkpoint), self.clock.now_ms())
                            .await
                            .map(|()| ready)
                    }));
                }
            }
        }
        Ok(())
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

    /// Makes every written batch claimable and wakes workers for them: one
    /// per batch, up to MAX_WORKERS, so workers start while the file is
    /// still being read.
    /// `checkpoint` is where batch `progress.written` starts.
    async fn publish(
        &self,
        job: &Job,
        lease: &PrepareLease,
        progress: &mut Progress,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), PrepareError> {
        if progress.written > progress.published {
            let checkpoint = checkpoint.map(Checkpoint::encode);
            self.store
                .publish(
                    &job.id,
                    lease,
                    progress.written,
                    checkpoint.as_deref(),
                    self.clock.now_ms(),
                )
                .await?;
            progress.published = progress.written;
            progress.last_publish = self.clock.instant();
            progress.last_renewal = progress.last_publish;
        }
        self.wake_for(job, progress.published, progress).await?;
        Ok(())
    }

    async fn wake_for(
        &self,
        job: &Job,
        ready: u64,
        progress: &mut Progress,
    ) -> Result<(), QueueError> {
        let wanted = ready.min(u64::from(self.settings.max_workers));
        if wanted > progress.woken {
            self.wake(job, wanted - progress.woken).await?;
            progress.woken = wanted;
        }
        Ok(())
    }

    async fn wake(&self, job: &Job, workers: u64) -> Result<(), QueueError> {
        let message = WorkMessage {
            job_id: job.id.clone(),
            continuation: false,
        };
        self.queue.send(&vec![message; workers as usize]).await
    }
}

/// Writes in flight at once while the file is read on.
pub const MAX_WRITES_IN_FLIGHT: usize = 4;
/// Batches in one write at most. With `MAX_WRITES_IN_FLIGHT`, 16 batches in
/// flight: at 10 ms a request that is some 400,000 records a second of the
/// demo's, past what one vCPU parses, while the memory they hold (records,
/// packed chunks, request bodies) stays a few MiB.
pub const MAX_BATCHES_PER_WRITE: usize = 4;
/// Records held for writes in flight (and the batch waiting to be sent)
/// at most, whatever the batch size.
pub const MAX_BYTES_IN_FLIGHT: usize = 32 * 1024 * 1024;
const BUDGET_UNIT: usize = 1024;
const BUDGET_UNITS: usize = MAX_BYTES_IN_FLIGHT / BUDGET_UNIT;

/// A batch cut from the file, on its way to be written: its records, where
/// the batch after it starts (`None` for the last), and its share of the
/// in-flight budget, given back when it is dropped.
struct Cut {
    index: u64,
    records: Vec<StagedRecord>,
    next_start: Option<Checkpoint>,
    _held: OwnedSemaphorePermit,
}

/// Hands a full batch to the writer once the in-flight budget has room for
/// it. False when the writer stopped (on an error it reports itself).
async fn send_cut(
    cuts: &mut futures::channel::mpsc::Sender<Cut>,
    budget: &Arc<Semaphore>,
    (index, records, bytes): (u64, Vec<StagedRecord>, usize),
    next_start: Option<Checkpoint>,
) -> bool {
    use futures::SinkExt;
    let units = (bytes / BUDGET_UNIT + 1).min(BUDGET_UNITS) as u32;
    let permit = budget
        .clone()
        .acquire_many_owned(units)
        .await
        .expect("the budget is never closed");
    let cut = Cut {
        index,
        records,
        next_start,
        _held: permit,
    };
    cuts.send(cut).await.is_ok()
}

/// How far this prepare got: batches written, published, workers woken.
struct Progress {
    /// Batches published when this run began.
    started: u64,
    written: u64,
    published: u64,
    last_publish: Instant,
    /// Last extension of the prepare lease (a publication extends it too).
    last_renewal: Instant,
    woken: u64,
    /// Records this run read (those a resumed run reads again included).
    records_read: u64,
}

impl Progress {
    /// Written batches wait to be published: the first at once, then in
    /// groups, or after a while on a slow file (`now` on the phase's clock).
    fn publication_due(&self, now: Instant) -> bool {
        let waiting = self.written - self.published;
        waiting > 0
            && (self.published == 0
                || waiting >= PUBLISH_EVERY
                || now.saturating_duration_since(self.last_publish) >= PUBLISH_INTERVAL)
    }
}

enum Stop {
    /// The file is unusable: the job fails with this reason.
    Reject(String),
    /// Too close to the deadline to write another batch: publish what was
    /// written, with where the next batch starts (when known), and let go.
    Handoff(Option<Checkpoint>),
    Error(PrepareError),
}

fn object_stop(e: ObjectError) -> Stop {
    if e.is_transient() {
        Stop::Error(PrepareError::Object(e))
    } else {
        Stop::Reject(e.to_string())
    }
}

fn source_stop(e: SourceError) -> Stop {
    if e.is_transient() {
        Stop::Error(PrepareError::Read(e))
    } else {
        Stop::Reject(e.to_string())
    }
}

/// A record too large for one DynamoDB item is kept as a failed record
/// (its line and the reason) instead of breaking the batch write.
/// Returns the record as it will be stored, with its stored size.
fn storable(record: StagedRecord) -> (StagedRecord, usize) {
    let size = codec::encoded_len(&record);
    if size <= codec::MAX_CHUNK_BYTES {
        return (record, size);
    }
    let kept = StagedRecord {
        line: record.line,
        values: crate::job::Values::absent(record.values.len()),
        issue: Some(Box::new(FieldIssue::new(
            None,
            None,
            format!(
                "record is {size} bytes when stored; the limit is {} bytes",
                codec::MAX_CHUNK_BYTES
            ),
        ))),
    };
    let size = codec::encoded_len(&kept);
    (kept, size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::MemoryEvents;
    use crate::job::{now_ms, FailedRecord, JobStatus};
    use crate::objects::MemoryObjects;
    use crate::queue::MemoryQueue;
    use crate::report::MemoryReports;
    use crate::store::memory::MemoryStore;
    use crate::store::{BatchOutcome, BatchState, Claim, ClaimStore, PrepareStore};

    /// The preparers' clock: these cases run in real time.
    static SYSTEM: Clock = Clock::system();

    #[tokio::test]
    async fn an_orchestrator_near_its_deadline_hands_over_and_the_next_one_resumes_at_once() {
        let def = Definition::from_json(
            r#"{"fields": [{"name": "n", "type": "integer"}], "batchSize": 2}"#,
            "t",
        )
        .unwrap();
        let objects = MemoryObjects::default();
        objects.put("b", "k.csv", "n\n1\n2\n3\n4\n5\n");
        let (store, queue, events, reports) = (
            MemoryStore::new(),
            MemoryQueue::default(),
            MemoryEvents::default(),
            MemoryReports::default(),
        );
        let settings = PrepareSettings::default();
        let preparer = Preparer {
            store: &store,
            objects: &objects,
            queue: &queue,
            events: &events,
            reports: &reports,
            metrics: &crate::metrics::NoMetrics,
            definition: &def,
            settings: &settings,
            clock: &SYSTEM,
        };
        let source = SourceRef {
            bucket: "b".into(),
            key: "k.csv".into(),
            version: "v".into(),
        };
        let soon = Instant::now() + Duration::from_secs(1);
        let PrepareOutcome::HandedOff(job) = preparer
            .run_until(&source, "first", Some(soon))
            .await
            .unwrap()
        else {
            panic!("expected a handoff")
        };
        assert_eq!((job.prepared, job.prepare_lease_until_ms), (false, 0));
        let PrepareOutcome::Prepared(job) = preparer.run(&source, "second").await.unwrap() else {
            panic!("the released prepare is resumed without waiting for the lease")
        };
        assert_eq!((job.total_records, job.total_batches), (5, 3));
    }

    #[tokio::test]
    async fn a_job_rejected_during_prepare_reports_the_records_that_failed_before() {
        let def = Definition::from_json(
            r#"{"fields": [{"name": "n", "type": "integer"}], "batchSize": 2, "limits": {"maxRecords": 2}}"#,
            "t",
        )
        .unwrap();
        let objects = MemoryObjects::default();
        objects.put("b", "k.csv", "n\n1\nx\n3\n");
        let (store, queue, events, reports) = (
            MemoryStore::new(),
            MemoryQueue::default(),
            MemoryEvents::default(),
            MemoryReports::default(),
        );
        let source = SourceRef {
            bucket: "b".into(),
            key: "k.csv".into(),
            version: "v".into(),
        };
        // An orchestrator wrote the first batch, and a worker committed it
        // with a failed record, before the rest of the file was read.
        let lease = PrepareLease {
            owner: "orchestrator".into(),
            lease_ms: 60_000,
        };
        let CreateOutcome::Created(job) =
            store.create_job(&source, &lease, now_ms()).await.unwrap()
        else {
            panic!("a new job")
        };
        let staged = |line: u64, n: &str| StagedRecord {
            line,
            values: vec![Some(n.into())].into(),
            issue: None,
        };
        let records = [staged(2, "1"), staged(3, "x")];
        let batch = NewBatch {
            index: 0,
            records: &records,
        };
        store.write_batch(&job.id, batch, now_ms()).await.unwrap();
        store
            .publish(&job.id, &lease, 1, None, now_ms())
            .await
            .unwrap();
        let Claim::Batch(claim) = store
            .claim_batch(&job.id, "w", now_ms(), 60_000)
            .await
            .unwrap()
        else {
            panic!("the written batch is claimable")
        };
        let outcome = BatchOutcome {
            state: BatchState::Done,
            processed: 1,
            failed: vec![FailedRecord::invalid(
                3,
                vec![FieldIssue::new(Some("n"), Some("x"), "not an integer")],
            )],
            error: None,
        };
        store
            .commit_batch(&claim, &outcome, now_ms())
            .await
            .unwrap();

        // The same orchestrator reads on and finds the file over the limit.
        let settings = PrepareSettings::default();
        let preparer = Preparer {
            store: &store,
            objects: &objects,
            queue: &queue,
            events: &events,
            reports: &reports,
            metrics: &crate::metrics::NoMetrics,
            definition: &def,
            settings: &settings,
            clock: &SYSTEM,
        };
        let PrepareOutcome::Rejected(job) = preparer.run(&source, "orchestrator").await.unwrap()
        else {
            panic!("the file is over the record limit")
        };
        assert_eq!((job.status, job.prepared), (JobStatus::Failed, false));
        let reports = reports.reports.lock().unwrap().clone();
        assert_eq!(job.report.as_deref(), Some(reports[0].0.as_str()));
        assert_eq!(reports[0].1, "n,line,field,reason\nx,3,n,not an integer\n");
    }

    /// Serves the object a few bytes a read and runs `then` once, after the
    /// first `after` bytes: something that happens while prepare reads.
    struct Interrupting {
        body: std::io::Cursor<Vec<u8>>,
        after: u64,
        then: Option<Box<dyn FnOnce() + Send + Unpin>>,
    }

    impl tokio::io::AsyncRead for Interrupting {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.body.position() >= self.after {
                if let Some(then) = self.then.take() {
                    then();
                }
            }
            let mut small = [0u8; 4];
            let n = std::io::Read::read(&mut self.body, &mut small)?;
            buf.put_slice(&small[..n]);
            std::task::Poll::Ready(Ok(()))
        }
    }

    struct AbortingObjects {
        body: Vec<u8>,
        store: std::sync::Arc<MemoryStore>,
        job: crate::job::JobId,
    }

    #[async_trait::async_trait]
    impl crate::objects::ObjectSource for AbortingObjects {
        async fn open(
            &self,
            _source: &SourceRef,
        ) -> Result<crate::objects::ObjectBody, crate::objects::ObjectError> {
            let (store, job) = (self.store.clone(), self.job.clone());
            let abort = move || {
                let fin = crate::store::Finalization {
                    status: JobStatus::Aborted,
                    reason: Some("stopped by an operator".into()),
                    report_owed: false,
                    now_ms: now_ms(),
                };
                // The memory store never waits on anything.
                futures::executor::block_on(crate::store::JobControl::finalize(
                    store.as_ref(),
                    &job,
                    &fin,
                    crate::store::FinalizeWhen::Now,
                ))
                .unwrap();
            };
            Ok(crate::objects::ObjectBody {
                size: Some(self.body.len() as i64),
                content_encoding: None,
                reader: Box::new(Interrupting {
                    body: std::io::Cursor::new(self.body.clone()),
                    after: self.body.len() as u64 / 2,
                    then: Some(Box::new(abort)),
                }),
            })
        }
    }

    #[tokio::test]
    async fn an_abort_stops_prepare_at_its_next_publication_and_nothing_more_is_claimable() {
        let def = Definition::from_json(
            r#"{"fields": [{"name": "n", "type": "integer"}], "batchSize": 1}"#,
            "t",
        )
        .unwrap();
        let mut body = String::from("n\n");
        for i in 0..40 {
            body.push_str(&format!("{i}\n"));
        }
        let source = SourceRef {
            bucket: "b".into(),
            key: "k.csv".into(),
            version: "v".into(),
        };
        let store = std::sync::Arc::new(MemoryStore::new());
        let objects = AbortingObjects {
            body: body.into_bytes(),
            store: store.clone(),
            job: source.job_id(),
        };
        let (queue, events, reports) = (
            MemoryQueue::default(),
            MemoryEvents::default(),
            MemoryReports::default(),
        );
        let settings = PrepareSettings::default();
        let preparer = Preparer {
            store: store.as_ref(),
            objects: &objects,
            queue: &queue,
            events: &events,
            reports: &reports,
            metrics: &crate::metrics::NoMetrics,
            definition: &def,
            settings: &settings,
            clock: &SYSTEM,
        };
        let PrepareOutcome::Stopped(job) = preparer.run(&source, "o").await.unwrap() else {
            panic!("prepare should stop at the abort")
        };
        assert_eq!(job.status, JobStatus::Aborted);
        assert!(!job.prepared);
        assert!(
            job.batches_ready < 40,
            "publication stopped: {} batches",
            job.batches_ready
        );
        assert_eq!(
            store
                .claim_batch(&job.id, "w", now_ms(), 60_000)
                .await
                .unwrap(),
            Claim::JobFinished(JobStatus::Aborted)
        );
    }
}
