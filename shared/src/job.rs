//! The nouns of the system: jobs, batches, staged and validated records,
//! per-record failures and the job summary users read.

mod id;
mod records;
mod source;
mod status;
mod values;

pub use self::id::JobId;
pub use self::records::{
    truncate_value, FailedRecord, FailureStage, FieldIssue, StagedRecord, MAX_REPORTED_VALUE_CHARS,
};
pub use self::source::{JobSource, SourceRef};
pub use self::status::{EventKind, JobStatus};
pub use self::values::Values;

use serde::{Deserialize, Serialize};

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
    /// The kind of import (the definition's `kind`); `None` for a job of
    /// no kind (an upload no route took, a definition assembled in code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub status: JobStatus,
    /// What the job reads.
    pub source: JobSource,
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
    /// Rows found to repeat a key another row of the job has (all of a
    /// key's rows but one), as the processor noted them.
    #[serde(default)]
    pub duplicates: u64,
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
            kind: self.kind.clone(),
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
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
}
