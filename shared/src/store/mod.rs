//! Job state: the `JobStore` trait (the batch protocol: prepare fencing,
//! claim, lease, fenced commit, exactly-once finalization) and its backends.
//! `memory` serves unit and property tests; `dynamodb` is the real thing.
//! Both pass the same conformance suite (`conformance`).

pub mod codec;
#[cfg(any(test, feature = "testing"))]
pub mod conformance;
pub mod dynamodb;
pub mod memory;
#[cfg(test)]
mod proptests;

use crate::job::{EventKind, FailedRecord, Job, JobId, JobStatus, SourceRef, StagedRecord};
use async_trait::async_trait;

/// A batch as prepare hands it to the store.
#[derive(Debug, Clone, Copy)]
pub struct NewBatch<'a> {
    pub index: u64,
    pub records: &'a [StagedRecord],
    /// The batch before it in its key partition, if any: it is written
    /// `Waiting`, and claimable only once that one is final (`link_batch`).
    pub after: Option<u64>,
}

/// Who holds the right to write a job's batches, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareLease {
    pub owner: String,
    pub lease_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// A new job, whose prepare lease the caller holds.
    Created(Job),
    /// The job already existed (re-delivered event).
    Exists(Job),
}

/// A batch this worker holds: its claim version fences every later write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedBatch {
    pub job_id: JobId,
    pub index: u64,
    /// Incremented by every claim; also the number of attempts so far.
    pub version: u64,
    pub worker: String,
    pub lease_until_ms: i64,
    pub record_count: u64,
    /// Why the previous attempt gave up, when it said so.
    pub last_error: Option<String>,
    /// Claims of this batch since it was last queued (written or requeued
    /// by a retry); past `maxAttempts` it is a poison batch.
    pub attempt: u64,
    /// What the batch's earlier run left, when a retry requeued it: the
    /// rerun handles only its processing failures.
    pub rerun: Option<Rerun>,
    /// The job's round (`Job::retries`) when it was claimed: the commit
    /// stamps it on the batch, so a retry's requeue pass never puts back
    /// a batch its own round already ran.
    pub round: u32,
    /// What the batch holds, which decides the work done on it.
    pub content: BatchContent,
    /// The batch after it in its key partition, when linked by the time
    /// of the claim: the commit makes that one claimable.
    pub next: Option<u64>,
}

/// What a batch holds, and so which kind of work a worker does with it
/// (`process::Worker::kind_of`). Stored on the batch item; absent means
/// records, the only content so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BatchContent {
    /// Records staged from an uploaded file, in the batch's chunks.
    #[default]
    Records,
}

/// One page of the batches a retry reruns (`JobControl::retryable_batches`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryablePage {
    /// In index order within the page.
    pub batches: Vec<u64>,
    /// Where the next page starts; `None` after the last.
    pub next: Option<String>,
}

/// What reopening a final job for a retry round records (`reopen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reopening {
    /// The round the caller saw: of two retries of one round, one reopens.
    pub seen_retries: u32,
    /// The round has failed batches to put back: it starts with a requeue
    /// pass, during which the job cannot complete.
    pub requeue: bool,
    /// Records settled when the round starts (`processed + failed`), which
    /// its rate does not count.
    pub base: u64,
    pub now_ms: i64,
}

/// A requeued batch's standing from its earlier run: records processed,
/// and records still failed (validation failures, which a retry keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rerun {
    pub processed: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    Batch(ClaimedBatch),
    /// Nothing claimable now: every batch is done or under a live lease.
    NoneAvailable,
    /// Nothing claimable yet, but prepare is still writing batches.
    Wait,
    /// The job is final; nothing more will ever be claimable.
    JobFinished(JobStatus),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchState {
    /// Written, and waiting for the batch before it in its key partition
    /// to be final (`NewBatch::after`); then pending.
    Waiting,
    Pending,
    Processing,
    Done,
    /// Abandoned after too many attempts; its records count as failed.
    Failed,
}

/// What a worker commits for a batch it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutcome {
    pub state: BatchState,
    pub processed: u64,
    pub failed: Vec<FailedRecord>,
    pub error: Option<String>,
    /// Rows found to repeat a key of the job (`Job::duplicates`).
    pub duplicates: u64,
}

/// A batch as stored (for inspection, tests and the sweeper).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchInfo {
    pub index: u64,
    pub state: BatchState,
    pub version: u64,
    pub worker: Option<String>,
    pub lease_until_ms: i64,
    pub record_count: u64,
    pub processed: u64,
    pub failed: u64,
    pub last_error: Option<String>,
}

/// The final word on a job, written exactly once.
#[derive(Debug, Clone, PartialEq)]
pub struct Finalization {
    pub status: JobStatus,
    pub reason: Option<String>,
    /// The ending owes an error report: written after the update, by its
    /// winner or whoever finds it owed (`record_report`), and announced
    /// with it.
    pub report_owed: bool,
    pub now_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job {0} not found")]
    JobNotFound(JobId),
    #[error("batch {index} of job {job}: claim version {version} was superseded (the lease expired and the batch was reclaimed)")]
    ClaimLost {
        job: JobId,
        index: u64,
        version: u64,
    },
    #[error("job {0}: another orchestrator holds the prepare lease")]
    PrepareLeaseLost(JobId),
    #[error("job {job}: stored data is corrupt: {message}")]
    Corrupt { job: JobId, message: String },
    #[error("{operation} failed after retries")]
    Backend {
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    pub fn backend(
        operation: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError::Backend {
            operation,
            source: source.into(),
        }
    }

    /// The claim `claim` was superseded by a reclaim.
    pub fn claim_lost(claim: &ClaimedBatch) -> Self {
        StoreError::ClaimLost {
            job: claim.job_id.clone(),
            index: claim.index,
            version: claim.version,
        }
    }

    /// Worth another attempt later (as opposed to a protocol outcome).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Backend { .. })
    }
}

/// When a finalization may happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalizeWhen {
    /// Only once prepare has finished and every batch is terminal (normal
    /// completion).
    AllBatchesDone,
    /// Now, whatever the batches (a file-level error, an abort).
    Now,
}

/// Jobs a listing filtered by kind reads at most in each status: a
/// bounded request, whatever the number of jobs kept.
pub const MAX_LISTED: usize = 5_000;

/// Phase one: creating a job and writing its batches, fenced by the
/// prepare lease. Times are passed in (milliseconds since the epoch) so
/// tests control the clock.
#[async_trait]
pub trait PrepareStore: Send + Sync {
    /// Creates the job of kind `kind` (`""`: none) for an object version
    /// unless it exists; the creator holds the prepare lease. The new job
    /// owes its `started` event.
    async fn create_job_of(
        &self,
        source: &SourceRef,
        kind: &str,
        lease: &PrepareLease,
        now_ms: i64,
    ) -> Result<CreateOutcome, StoreError>;

    /// `create_job_of` a job of no kind.
    async fn create_job(
        &self,
        source: &SourceRef,
        lease: &PrepareLease,
        now_ms: i64,
    ) -> Result<CreateOutcome, StoreError> {
        self.create_job_of(source, "", lease, now_ms).await
    }

    /// Pins an import definition (its JSON) to a job unless one is pinned
    /// already; returns the pinned one. Called before the job is created,
    /// so the first deployment to see an object decides its definition.
    async fn pin_definition(&self, job: &JobId, definition: &str) -> Result<String, StoreError>;

    /// Pins, beside the definition, the names of the file's columns that
    /// feed a field, in file order (from its header row), unless some are
    /// pinned already: the error report lays failed rows out by them.
    /// Prepare pins them once it has read the header, before any batch.
    async fn pin_columns(&self, job: &JobId, columns: &[String]) -> Result<(), StoreError>;

    /// Takes over an unfinished prepare whose previous owner's lease expired
    /// (or that the caller already owns). `None` when someone else holds it
    /// or prepare has finished.
    async fn acquire_prepare(
        &self,
        job: &JobId,
        lease: &PrepareLease,
        now_ms: i64,
    ) -> Result<Option<Job>, StoreError>;

    /// Stores batches and their records, not yet claimable (see `publish`).
    /// Idempotent: batches are cut deterministically, so a second write of
    /// the same index (a resumed or a fenced-out orchestrator) changes
    /// nothing. Several batches at once share requests.
    async fn write_batches(
        &self,
        job: &JobId,
        batches: &[NewBatch<'_>],
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// `write_batches` of one batch.
    async fn write_batch(
        &self,
        job: &JobId,
        batch: NewBatch<'_>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write_batches(job, &[batch], now_ms).await
    }

    /// Chains batch `index` (written with `after`) after batch `after`, both
    /// written: `index` stays `Waiting` until the commit of `after` makes it
    /// pending, or is made pending now when `after` is final already.
    /// Idempotent.
    async fn link_batch(&self, job: &JobId, after: u64, index: u64) -> Result<(), StoreError>;

    /// Makes batches `0..ready` claimable and extends the prepare lease,
    /// fenced by it (`PrepareLeaseLost` for a stale owner or a job that is
    /// no longer preparing). Publishing several batches at once keeps the
    /// job item out of the per-batch path. `checkpoint` (where batch
    /// `ready` starts in the file) replaces the stored one in the same
    /// write; `None` removes it, so that it never lags the publication.
    async fn publish(
        &self,
        job: &JobId,
        lease: &PrepareLease,
        ready: u64,
        checkpoint: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// Extends the prepare lease without publishing (a prepare working its
    /// way back to its checkpoint), fenced like `publish`.
    async fn renew_prepare(
        &self,
        job: &JobId,
        lease: &PrepareLease,
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// Gives the prepare lease up at once (an orchestrator near its deadline),
    /// so the next owner resumes the prepare without waiting for it to expire.
    async fn release_prepare(&self, job: &JobId, lease: &PrepareLease) -> Result<(), StoreError>;

    /// Counts one more prepare attempt that failed without publishing
    /// anything since the last one (publishing resets the count); returns
    /// the count.
    async fn note_prepare_failure(&self, job: &JobId, error: &str) -> Result<u32, StoreError>;

    /// Publishes every batch, records the totals and marks prepare finished;
    /// the job then owes its `prepared` event. Returns the job after.
    async fn finish_prepare(
        &self,
        job: &JobId,
        lease: &PrepareLease,
        total_records: u64,
        total_batches: u64,
    ) -> Result<Job, StoreError>;
}

/// Phase two: what a worker does with batches.
#[async_trait]
pub trait ClaimStore: Send + Sync {
    /// Claims the next batch: a published pending one, or one whose lease
    /// expired.
    async fn claim_batch(
        &self,
        job: &JobId,
        worker: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Claim, StoreError>;

    /// The staged records of a batch, in input order.
    /// Claims batch `index` if it is claimable (published and pending, or
    /// its lease expired) and the job is not final: the batch a commit just
    /// made claimable, taken by the worker that committed.
    async fn claim_index(
        &self,
        job: &JobId,
        index: u64,
        worker: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<ClaimedBatch>, StoreError>;

    async fn load_records(&self, job: &JobId, index: u64) -> Result<Vec<StagedRecord>, StoreError>;

    /// Extends the lease while the claim is still ours; `ClaimLost` otherwise.
    async fn extend_lease(&self, claim: &ClaimedBatch, until_ms: i64) -> Result<(), StoreError>;

    /// Gives a claimed batch back at once (after an error), so another worker
    /// can retry it without waiting for the lease to expire.
    async fn release_batch(&self, claim: &ClaimedBatch, error: &str) -> Result<(), StoreError>;

    /// Gives a claimed batch back at once without the claim counting as an
    /// attempt toward `maxAttempts` (`ClaimedBatch::attempt` of the next
    /// claim is this one's): the worker ran out of time, which says
    /// nothing about the batch. Keeps its last error; fenced by the claim
    /// like `release_batch` (`ClaimLost`).
    async fn yield_batch(&self, claim: &ClaimedBatch) -> Result<(), StoreError>;

    /// Commits the batch's terminal state together with the job's counters and
    /// its failed records, only if the claim is still ours (`ClaimLost`).
    /// A commit after the job was finalized early still counts: its records
    /// were processed. The batch chained after it in its key partition, if
    /// any, becomes claimable in the same write (a retry's rerun leaves it
    /// as it is: it was released by the first run).
    async fn commit_batch(
        &self,
        claim: &ClaimedBatch,
        outcome: &BatchOutcome,
        now_ms: i64,
    ) -> Result<(), StoreError>;
}

/// Reading and ending jobs (finalizers, the sweeper, status).
#[async_trait]
pub trait JobControl: Send + Sync {
    /// The job with its counters, in one read whatever its size.
    async fn get_job(&self, job: &JobId) -> Result<Option<Job>, StoreError>;

    /// Moves the job from PROCESSING to a final status and records that the
    /// event announcing it is owed (`EventKind::ending`), whatever else is
    /// owed already. True for the one caller that succeeded.
    async fn finalize(
        &self,
        job: &JobId,
        fin: &Finalization,
        when: FinalizeWhen,
    ) -> Result<bool, StoreError>;

    /// Records where the error report of round `round` of a final job is
    /// (`None`: it had nothing to report), which it owed since its
    /// finalization. False when it is not owed (recorded already, or
    /// another round).
    async fn record_report(
        &self,
        job: &JobId,
        round: u32,
        location: Option<&str>,
    ) -> Result<bool, StoreError>;

    /// Takes the right to write the error report round `round` of a
    /// final job owes, until `until_ms`: true for one caller at a time, so
    /// that the workers and sweeps that find a report owed do not all read
    /// every failure of the job at once. A holder that dies leaves it to
    /// the next caller once `until_ms` has passed. False when another
    /// holds it, or the report is not owed (recorded, or another round).
    async fn lease_report(
        &self,
        job: &JobId,
        round: u32,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError>;

    /// The definition pinned to a job (its JSON), if any.
    async fn pinned_definition(&self, job: &JobId) -> Result<Option<String>, StoreError>;

    /// The column names pinned to a job (`pin_columns`), if any.
    async fn pinned_columns(&self, job: &JobId) -> Result<Option<Vec<String>>, StoreError>;

    /// Failed records of one batch, in input order.
    async fn failed_records(
        &self,
        job: &JobId,
        batch: u64,
    ) -> Result<Vec<FailedRecord>, StoreError>;

    async fn batch_info(&self, job: &JobId, index: u64) -> Result<Option<BatchInfo>, StoreError>;

    /// Jobs still PROCESSING (the sweeper's worklist).
    async fn active_jobs(&self) -> Result<Vec<JobId>, StoreError>;

    /// Whether anyone is working on `job`, and, when nobody is, what is
    /// waiting for a worker.
    async fn lease_view(&self, job: &JobId, now_ms: i64) -> Result<LeaseView, StoreError>;

    /// When the first of the live leases of `job` that `worker` watches
    /// runs out (`None`: it watches none). A worker with nothing to claim
    /// waits for it, in case its holder died. A store may share a job's
    /// leases out among workers, so that each has a few watchers rather
    /// than the whole fleet.
    async fn next_expiry(
        &self,
        job: &JobId,
        worker: &str,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError>;

    /// Jobs newest first (by creation), optionally only those in `status`
    /// and of `kind`; at most `limit`. Filtered by kind, a listing reads at
    /// most `MAX_LISTED` jobs of each status looking for matches.
    async fn list_jobs(
        &self,
        status: Option<JobStatus>,
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError>;

    /// Final jobs that owe an event (`Job::owed_events`). An active job's
    /// owed events are found on the job itself, which the sweeper reads
    /// anyway, so only final jobs need listing.
    async fn pending_events(&self) -> Result<Vec<JobId>, StoreError>;

    /// Records that the `kind` event of round `round` (`Job::retries` when
    /// it was sent) of `job` was delivered: it is owed no more (a final job
    /// that owes nothing leaves `pending_events`). Fenced by the round, so a
    /// late acknowledgement cannot erase the next round's event of the same
    /// kind. Acknowledging an event not owed changes nothing.
    async fn ack_event(&self, job: &JobId, kind: EventKind, round: u32) -> Result<(), StoreError>;

    /// One page of the batches holding processing failures (the
    /// processor's errors, poison batches): what a retry reruns. `after` is
    /// the `next` of the page before (`None`: the first page); a page reads
    /// at most about `limit` items, whatever the job's size. A batch listed
    /// may have been requeued since (`requeue_batch` checks).
    async fn retryable_batches(
        &self,
        job: &JobId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<RetryablePage, StoreError>;

    /// Makes a terminal batch claimable again for round `round`'s retry:
    /// its processing failures leave the job's failed count, and the batch
    /// its done count, until the rerun commits (`ClaimedBatch::rerun`).
    /// Fenced by the round: only while the job is PROCESSING in round
    /// `round`'s requeue pass, and only a batch that round has not run or
    /// requeued already, so a pass that runs twice, or late, requeues
    /// nothing twice. Returns how many records will rerun; `None` when the
    /// batch is not terminal, has nothing to rerun or the fence refuses.
    async fn requeue_batch(
        &self,
        job: &JobId,
        index: u64,
        round: u32,
    ) -> Result<Option<u64>, StoreError>;

    /// Opens a final job for another round: PROCESSING again, `retries`
    /// one more, the previous end (finish time, reason, report) cleared and
    /// the prepare lease freed with its failure count (an unfinished
    /// prepare resumes at its checkpoint), the round's start and base
    /// recorded and, with `requeue`, its requeue pass begun. Fenced by the
    /// round the caller saw, so of two retries of one round one reopens;
    /// `None` for the other, if the job is not final, or while its final
    /// event is still owed (deliver it first). Returns the job after.
    async fn reopen(&self, job: &JobId, reopening: &Reopening) -> Result<Option<Job>, StoreError>;

    /// Records how far round `round`'s requeue pass got (`cursor`, the
    /// next page) and that it is alive. False when that pass is over: it
    /// finished, or the job ended or moved to another round.
    async fn note_requeue(
        &self,
        job: &JobId,
        round: u32,
        cursor: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Ends round `round`'s requeue pass: the job may complete again, and
    /// the round counts its rate from `now_ms` over the records settled
    /// since `base`. False when the pass was over already.
    async fn finish_requeue(
        &self,
        job: &JobId,
        round: u32,
        base: u64,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
}

/// The whole batch protocol: every backend implements the three phase traits.
pub trait JobStore: PrepareStore + ClaimStore + JobControl {}

impl<T: PrepareStore + ClaimStore + JobControl + ?Sized> JobStore for T {}

/// Claims at a glance, for deciding whether a job needs workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseView {
    /// Some batch is held under a live lease (a worker is alive).
    pub live: bool,
    /// Batches handed out whose lease expired or that were never claimed
    /// (counted up to a small cap), when no lease is live; 0 when one is:
    /// its worker takes them as it claims on.
    pub reclaimable: u64,
}
