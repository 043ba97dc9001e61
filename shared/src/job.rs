//! The nouns of the system: jobs, batches, staged and validated records,
//! per-record failures and the job summary users read.

mod values;

pub use self::values::Values;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// Deterministic job identifier: the same object version always maps to the
/// same job, so a re-delivered S3 event finds the job it already created.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// Derives the id from the object's identity: bucket, key and version
    /// (`SourceRef::version`).
    pub fn for_object(bucket: &str, key: &str, version: &str) -> Self {
        let mut h = Sha256::new();
        for part in [bucket, key, version] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        JobId(hex::encode(&h.finalize()[..16]))
    }

    pub fn new(id: impl Into<String>) -> Self {
        JobId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a job's input lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceRef {
    pub bucket: String,
    pub key: String,
    /// Version id; when the bucket is not versioned, ETag and Last-Modified
    /// time, which name one upload (`objects::etag_version`).
    pub version: String,
}

impl SourceRef {
    pub fn job_id(&self) -> JobId {
        JobId::for_object(&self.bucket, &self.key, &self.version)
    }
}

impl fmt::Display for SourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    /// Batches are being written and/or processed.
    Processing,
    Completed,
    CompletedWithErrors,
    Failed,
    /// Stopped by an operator: nothing more is published or claimed.
    Aborted,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Processing,
        JobStatus::Completed,
        JobStatus::CompletedWithErrors,
        JobStatus::Failed,
        JobStatus::Aborted,
    ];

    pub fn is_final(self) -> bool {
        !matches!(self, JobStatus::Processing)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Processing => "PROCESSING",
            JobStatus::Completed => "COMPLETED",
            JobStatus::CompletedWithErrors => "COMPLETED_WITH_ERRORS",
            JobStatus::Failed => "FAILED",
            JobStatus::Aborted => "ABORTED",
        }
    }
}

impl std::str::FromStr for JobStatus {
    type Err = String;

    /// `COMPLETED_WITH_ERRORS`, `completed-with-errors`, ... (any case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_uppercase().replace('-', "_");
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == wanted)
            .ok_or_else(|| {
                let names: Vec<&str> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown status {s:?}; one of {}", names.join(", "))
            })
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that widths in format strings apply.
        f.pad(self.as_str())
    }
}

/// A job's lifecycle events, in the order they happen. Each is recorded on
/// the job when it happens (it is then owed) and delivered at least once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The job was created for an uploaded object.
    Started,
    /// The whole file was read: the totals are known.
    Prepared,
    /// The job ended COMPLETED or COMPLETED_WITH_ERRORS.
    Completed,
    Failed,
    Aborted,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        EventKind::Started,
        EventKind::Prepared,
        EventKind::Completed,
        EventKind::Failed,
        EventKind::Aborted,
    ];

    /// The name in event ids and in the store (`completed`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Prepared => "prepared",
            EventKind::Completed => "completed",
            EventKind::Failed => "failed",
            EventKind::Aborted => "aborted",
        }
    }

    /// The event's type as subscribers see it (`job.completed`).
    pub fn event_type(self) -> &'static str {
        match self {
            EventKind::Started => "job.started",
            EventKind::Prepared => "job.prepared",
            EventKind::Completed => "job.completed",
            EventKind::Failed => "job.failed",
            EventKind::Aborted => "job.aborted",
        }
    }

    /// The event that announces a job ending in `status` (`None` for
    /// PROCESSING).
    pub fn ending(status: JobStatus) -> Option<EventKind> {
        match status {
            JobStatus::Processing => None,
            JobStatus::Completed | JobStatus::CompletedWithErrors => Some(EventKind::Completed),
            JobStatus::Failed => Some(EventKind::Failed),
            JobStatus::Aborted => Some(EventKind::Aborted),
        }
    }
}

impl std::str::FromStr for EventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown event kind {s:?}"))
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// DynamoDB spend of a job, as DynamoDB bills it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cost {
    pub requests: u64,
    pub write_units: f64,
    pub read_units: f64,
    /// Writes DynamoDB turned away because a transaction held the item
    /// (retried with backoff; they cost time, not data).
    #[serde(default)]
    pub conflicts: u64,
}

impl Cost {
    pub fn add(&mut self, other: Cost) {
        self.requests += other.requests;
        self.write_units += other.write_units;
        self.read_units += other.read_units;
        self.conflicts += other.conflicts;
    }
}

/// The job as stored: status, progress counters and spend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: JobId,
    pub status: JobStatus,
    pub source: SourceRef,
    /// True once prepare has written every batch and the totals are final.
    pub prepared: bool,
    pub total_records: u64,
    pub total_batches: u64,
    /// Batches written so far (claimable as soon as they are written).
    pub batches_ready: u64,
    /// Batches handed out to workers so far (the claim cursor).
    pub batches_handed_out: u64,
    /// Batches in a terminal state (done or failed).
    pub batches_done: u64,
    pub processed: u64,
    pub failed: u64,
    /// Of `failed`, the records whose processing failed (the processor's
    /// errors, poison batches): what a retry runs again. Validation
    /// failures stay failed: fixing them means fixing the file.
    #[serde(default)]
    pub retryable: u64,
    /// Until when the current orchestrator holds the right to write batches
    /// (0 once prepare has finished).
    pub prepare_lease_until_ms: i64,
    /// Prepare attempts that failed in a row without publishing a batch.
    #[serde(default)]
    pub prepare_failures: u32,
    /// Where in the file the first unpublished batch starts, as prepare
    /// recorded it with the last publication (opaque to the store); a
    /// resumed prepare reads on from there. `None` once prepared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepare_checkpoint: Option<String>,
    pub created_at_ms: i64,
    /// When the job last moved: a publication, a commit, its end.
    #[serde(default)]
    pub updated_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub failure_reason: Option<String>,
    /// Location of the error report, when one was written.
    pub report: Option<String>,
    /// The ending owes its error report (written after the status changed);
    /// its event waits for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub report_owed: bool,
    pub cost: Cost,
    /// Times an operator reran the job's failed or unprocessed records.
    #[serde(default)]
    pub retries: u32,
    /// Lifecycle events recorded but not yet delivered, in lifecycle order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owed_events: Vec<EventKind>,
    /// Where the current round (`retries`) stands.
    #[serde(default)]
    pub round: Round,
}

/// The current round of a job: the first run is round 0, each retry opens
/// the next. A retry puts its failed batches back in a requeue pass that
/// runs outside the request that asked for it (it grows with the job), and
/// counts its rate from when its batches are back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Round {
    /// The requeue pass is still putting failed batches back: the job cannot
    /// complete, and workers with nothing to claim wait instead of leaving.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requeuing: bool,
    /// Where the requeue pass goes on (opaque to all but the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requeue_cursor: Option<String>,
    /// When the requeue pass last moved: a pass that stalls (its function
    /// died) is taken over after `REQUEUE_STALL_MS`.
    #[serde(default)]
    pub requeued_at_ms: i64,
    /// When the round's work started (0: the job's creation).
    #[serde(default)]
    pub started_at_ms: i64,
    /// Records settled when it started (`processed + failed`), which its
    /// rate does not count.
    #[serde(default)]
    pub base: u64,
}

/// A requeue pass that has not moved for this long is taken over by the
/// sweeper (a pass records its progress every page, a few seconds apart).
pub const REQUEUE_STALL_MS: i64 = 60_000;

impl Job {
    /// Every batch is terminal and no more will be written or requeued.
    pub fn all_batches_done(&self) -> bool {
        self.prepared && !self.round.requeuing && self.batches_done >= self.total_batches
    }

    /// When the current round's work started.
    pub fn round_started_at_ms(&self) -> i64 {
        if self.round.started_at_ms > 0 {
            self.round.started_at_ms
        } else {
            self.created_at_ms
        }
    }

    /// Records settled in the current round, and the round's rate of them
    /// (records a second) until `now_ms` or the job's end.
    pub fn round_rate(&self, now_ms: i64) -> (u64, f64) {
        let settled = if self.round.requeuing {
            0
        } else {
            (self.processed + self.failed).saturating_sub(self.round.base)
        };
        let end = self.finished_at_ms.unwrap_or(now_ms);
        let elapsed_ms = (end - self.round_started_at_ms()).max(0);
        let rate = if elapsed_ms == 0 {
            0.0
        } else {
            settled as f64 * 1000.0 / elapsed_ms as f64
        };
        (settled, rate)
    }

    /// The stable id of this job's `kind` event: the same for every
    /// delivery, different for each retry's round.
    pub fn event_id(&self, kind: EventKind) -> String {
        match self.retries {
            0 => format!("{}:{kind}", self.id),
            n => format!("{}:{kind}:retry-{n}", self.id),
        }
    }

    pub fn summary(&self, now_ms: i64) -> JobSummary {
        let end = self.finished_at_ms.unwrap_or(now_ms);
        let elapsed_ms = (end - self.created_at_ms).max(0) as u64;
        let (_, rate) = self.round_rate(now_ms);
        JobSummary {
            job_id: self.id.clone(),
            status: self.status,
            total_records: self.total_records,
            processed: self.processed,
            failed: self.failed,
            elapsed_ms,
            records_per_second: rate.round(),
            requests: self.cost.requests,
            write_units: self.cost.write_units,
            read_units: self.cost.read_units,
            conflicts: self.cost.conflicts,
            write_units_per_record: if self.total_records == 0 {
                0.0
            } else {
                self.cost.write_units / self.total_records as f64
            },
            failure_reason: self.failure_reason.clone(),
            report: self.report.clone(),
        }
    }
}

/// The one-line summary printed by the CLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSummary {
    pub job_id: JobId,
    pub status: JobStatus,
    pub total_records: u64,
    pub processed: u64,
    pub failed: u64,
    pub elapsed_ms: u64,
    pub records_per_second: f64,
    pub requests: u64,
    pub write_units: f64,
    pub read_units: f64,
    #[serde(default)]
    pub conflicts: u64,
    pub write_units_per_record: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
}

/// One input row as prepare stores it: raw text values in the definition's
/// field order (`None` when the column is absent or the NDJSON key missing),
/// plus a row-level problem found while parsing (ragged row, bad UTF-8...).
/// Type validation happens in the worker. Few records have an issue, so it
/// is boxed: records move through the reader and into batches by value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedRecord {
    /// 1-based line number in the (decompressed) file where the row starts.
    #[serde(rename = "l")]
    pub line: u64,
    #[serde(rename = "v")]
    pub values: Values,
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub issue: Option<Box<FieldIssue>>,
}

/// What is wrong with one value (or with the whole row when `field` is None).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldIssue {
    #[serde(rename = "f", default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The offending value, truncated for the report.
    #[serde(rename = "v", default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(rename = "m")]
    pub message: String,
}

/// Longest value kept in a failure report.
pub const MAX_REPORTED_VALUE_CHARS: usize = 200;

impl FieldIssue {
    pub fn new(field: Option<&str>, value: Option<&str>, message: impl Into<String>) -> Self {
        FieldIssue {
            field: field.map(str::to_owned),
            value: value.map(truncate_value),
            message: message.into(),
        }
    }
}

/// Truncates on a char boundary and marks the cut.
pub fn truncate_value(value: &str) -> String {
    match value.char_indices().nth(MAX_REPORTED_VALUE_CHARS) {
        None => value.to_owned(),
        Some((cut, _)) => format!("{}…", &value[..cut]),
    }
}

/// A record that did not make it: its line and every problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRecord {
    #[serde(rename = "l")]
    pub line: u64,
    #[serde(rename = "i")]
    pub issues: Vec<FieldIssue>,
    /// Where it failed: a retry reruns processing failures only.
    #[serde(
        rename = "s",
        default,
        skip_serializing_if = "FailureStage::is_validation"
    )]
    pub stage: FailureStage,
}

impl FailedRecord {
    /// A record the definition rejected: fixing it means fixing the file.
    pub fn invalid(line: u64, issues: Vec<FieldIssue>) -> Self {
        FailedRecord {
            line,
            issues,
            stage: FailureStage::Validation,
        }
    }

    /// A valid record that the processor (or a crashing batch) failed: a
    /// retry runs it again.
    pub fn unprocessed(line: u64, issues: Vec<FieldIssue>) -> Self {
        FailedRecord {
            line,
            issues,
            stage: FailureStage::Processing,
        }
    }
}

/// Whether a failure is the input's fault or the processing's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureStage {
    /// Parsing or validation: stays failed until the file is fixed.
    #[default]
    #[serde(rename = "v")]
    Validation,
    /// The processor, or a batch that crashed every worker: retryable.
    #[serde(rename = "p")]
    Processing,
}

impl FailureStage {
    pub fn is_validation(&self) -> bool {
        *self == FailureStage::Validation
    }
}

/// Milliseconds since the Unix epoch (the unit of every timestamp we store)
/// on the system's clock: for the edges (the command line, tests). The
/// library reads time from the clock `Deps` carries (`clock::Clock`).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_is_deterministic_and_separates_parts() {
        let a = JobId::for_object("b", "k", "v1");
        assert_eq!(a, JobId::for_object("b", "k", "v1"));
        assert_ne!(a, JobId::for_object("b", "k", "v2"));
        assert_ne!(
            JobId::for_object("ab", "c", "v"),
            JobId::for_object("a", "bc", "v")
        );
        assert_eq!(a.as_str().len(), 32);
    }

    #[test]
    fn event_ids_are_stable_per_round_and_change_with_each_retry() {
        use crate::store::memory::MemoryStore;
        use crate::store::{CreateOutcome, PrepareLease, PrepareStore};
        let source = SourceRef {
            bucket: "b".into(),
            key: "k".into(),
            version: "v".into(),
        };
        let lease = PrepareLease {
            owner: "o".into(),
            lease_ms: 1,
        };
        let created =
            futures::executor::block_on(MemoryStore::new().create_job(&source, &lease, 0));
        let Ok(CreateOutcome::Created(mut job)) = created else {
            panic!("job not created: {created:?}");
        };
        assert_eq!(
            job.event_id(EventKind::Completed),
            format!("{}:completed", job.id)
        );
        job.retries = 2;
        assert_eq!(
            job.event_id(EventKind::Failed),
            format!("{}:failed:retry-2", job.id)
        );
    }

    #[test]
    fn every_ending_status_has_its_event_and_kinds_round_trip() {
        for status in JobStatus::ALL {
            assert_eq!(EventKind::ending(status).is_some(), status.is_final());
        }
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(kind));
            assert_eq!(kind.event_type(), format!("job.{kind}"));
        }
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let long = "é".repeat(300);
        let t = truncate_value(&long);
        assert_eq!(t.chars().count(), MAX_REPORTED_VALUE_CHARS + 1);
        assert_eq!(truncate_value("short"), "short");
    }
}
