//! Item shapes and keys of the state table (see docs/design.md). One table,
//! generic `pk`/`sk` keys, one sparse index (`leases`) over unfinished batches.

use crate::job::{Cost, EventKind, Job, JobId, JobSource, JobStatus, SourceRef};
use crate::store::{BatchContent, BatchInfo, BatchState};
use serde::{Deserialize, Serialize};

pub const LEASE_INDEX: &str = "leases";
/// Jobs by status, newest first: `lpk = STATUS#<status>`, `lsk = createdAt`.
pub const JOBS_INDEX: &str = "jobs";

pub fn status_lpk(status: JobStatus) -> String {
    format!("STATUS#{status}")
}
pub const JOB_SK: &str = "JOB";
pub const BATCH_SK: &str = "BATCH";
pub const CURSOR_SK: &str = "CURSOR";
pub const COUNTERS_SK: &str = "COUNTERS";
/// The job's pinned import definition, beside the job item (written once,
/// read once per process, kept off the job item so its writes stay small).
pub const DEFINITION_SK: &str = "DEFINITION";
/// Failed records are spread over this many partitions per job, so a job
/// with many failures does not write to one hot partition.
pub const FAILURE_SHARDS: u64 = 16;
/// Claim cursors and lease-index partitions of a job. Batch `i` belongs
/// to shard `i % shards`, so each of these items and partitions sees
/// 1/shards of a job's claims. A job keeps the count it was created with
/// (its item's `shards`).
pub const SHARDS: u64 = 32;
/// Counter shards of a job, each taking a commit's transaction at random:
/// a transaction holds its items, so these see more contention than the
/// cursors. With the cursors and the job item, one `BatchGetItem` (100
/// keys) still reads a job's status.
pub const COUNTER_SHARDS: u64 = 64;
/// The count of a job whose item names none (created before the count was
/// kept on the item): 8 of each.
pub const FIRST_SHARDS: u64 = 8;

fn first_shards() -> u64 {
    FIRST_SHARDS
}

pub fn job_pk(job: &JobId) -> String {
    format!("J#{job}")
}

pub fn batch_pk(job: &JobId, index: u64) -> String {
    format!("J#{job}#B#{index}")
}

pub fn cursor_pk(job: &JobId, shard: u64) -> String {
    format!("J#{job}#K#{shard}")
}

pub fn counter_pk(job: &JobId, shard: u64) -> String {
    format!("J#{job}#N#{shard}")
}

/// Lease-index partition of a batch, of a job of `shards` shards.
pub fn lease_gpk(job: &JobId, shards: u64, index: u64) -> String {
    format!("J#{job}#L#{}", index % shards)
}

pub fn lease_shard_gpk(job: &JobId, shard: u64) -> String {
    format!("J#{job}#L#{shard}")
}

/// Batches of shard `shard` (of `shards`) among the first `ready`: those
/// `i < ready` with `i % shards == shard`.
pub fn shard_len(shards: u64, ready: u64, shard: u64) -> u64 {
    ready / shards + u64::from(shard < ready % shards)
}

/// The batch a shard's cursor hands out as its `k`-th (0-based).
pub fn shard_batch(shards: u64, shard: u64, k: u64) -> u64 {
    shard + k * shards
}

pub fn chunk_sk(n: usize) -> String {
    format!("C#{n:04}")
}

pub fn failure_pk(job: &JobId, index: u64) -> String {
    format!("J#{job}#E#{:02}", index % FAILURE_SHARDS)
}

pub fn failure_sk_prefix(index: u64) -> String {
    format!("{index:012}#")
}

pub fn failure_sk(index: u64, part: usize) -> String {
    format!("{index:012}#{part:04}")
}

/// The job item: identity, status, prepare lease and publication. Written
/// by prepare once per group of batches and at the end, never per batch:
/// progress counters live on the counter shards.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobItem {
    pub pk: String,
    pub sk: String,
    pub job_id: JobId,
    /// Projected into the jobs index: listings filter on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub status: JobStatus,
    pub bucket: String,
    pub key: String,
    pub version: String,
    pub prepared: bool,
    #[serde(default)]
    pub total_records: u64,
    #[serde(default)]
    pub total_batches: u64,
    /// Batches `0..batchesReady` are claimable.
    #[serde(default)]
    pub batches_ready: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepare_owner: Option<String>,
    #[serde(default)]
    pub prepare_lease_until: i64,
    #[serde(default)]
    pub prepare_failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_prepare_error: Option<String>,
    /// Where a resumed prepare reads on (a few dozen bytes of JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepare_checkpoint: Option<String>,
    pub created_at: i64,
    /// Last publication, end or reopening (commits stamp the counters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// Set by a finalization that owes a report, removed once it is written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub report_owed: bool,
    /// Spend of prepare and finalization (workers' is on the counters).
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub write_units: f64,
    #[serde(default)]
    pub read_units: f64,
    #[serde(default)]
    pub conflicts: u64,
    /// Times the job was retried.
    #[serde(default)]
    pub retries: u32,
    /// Cursor and lease-index shards, fixed at creation.
    #[serde(default = "first_shards")]
    pub shards: u64,
    /// Counter shards, fixed at creation (as many as `shards` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<u64>,
    /// The current round's requeue pass is running (removed when it ends).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requeuing: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requeue_cursor: Option<String>,
    /// Set by a retry (absent on a job never retried: the job item stays
    /// as small as it was).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub requeued_at: i64,
    /// When the current round's work started, and what it found settled.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub round_started_at: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub round_base: u64,
    /// Lifecycle events recorded and not yet delivered: a string set, moved
    /// by `ADD` (who records one) and `DELETE` (who acknowledges it).
    #[serde(
        with = "serde_dynamo::string_set",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub owed_events: Vec<EventKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Lease index key while the job is PROCESSING: the sweeper's list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gsk: Option<i64>,
    /// `jobs` index keys: status and creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lpk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsk: Option<i64>,
}

fn is_zero<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Index partition listing the jobs still PROCESSING.
pub const ACTIVE_JOBS: &str = "JOBS";
/// Index partition listing final jobs that owe events (an active job's
/// owed events are read from its item, which is listed under `JOBS`).
pub const PENDING_EVENTS: &str = "EVENTS";

/// One counter shard: what the commits of its batches added up to. Moved
/// only by `ADD` in transactions, so the sums are exact. One shard alone
/// can be negative: a retry takes its requeued records off a random shard.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CounterItem {
    #[serde(default)]
    pub batches_done: i64,
    #[serde(default)]
    pub processed: i64,
    #[serde(default)]
    pub failed: i64,
    /// Of `failed`, the processing failures (what a retry reruns).
    #[serde(default)]
    pub retryable: i64,
    /// Rows found to repeat a key of the job.
    #[serde(default)]
    pub duplicates: i64,
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub write_units: f64,
    #[serde(default)]
    pub read_units: f64,
    #[serde(default)]
    pub conflicts: u64,
    /// When a commit last moved this shard.
    #[serde(default)]
    pub updated_at: i64,
}

/// One claim cursor: how many of its shard's batches it handed out.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CursorItem {
    #[serde(default)]
    pub k: u64,
}

impl JobItem {
    pub fn new(
        source: &SourceRef,
        owner: &str,
        lease_until: i64,
        now_ms: i64,
        expires_at: Option<i64>,
    ) -> Self {
        let id = source.job_id();
        JobItem {
            pk: job_pk(&id),
            sk: JOB_SK.into(),
            job_id: id,
            kind: None,
            status: JobStatus::Processing,
            bucket: source.bucket.clone(),
            key: source.key.clone(),
            version: source.version.clone(),
            prepared: false,
            total_records: 0,
            total_batches: 0,
            batches_ready: 0,
            prepare_owner: Some(owner.into()),
            prepare_lease_until: lease_until,
            prepare_failures: 0,
            last_prepare_error: None,
            prepare_checkpoint: None,
            created_at: now_ms,
            updated_at: None,
            finished_at: None,
            failure_reason: None,
            report: None,
            report_owed: false,
            requests: 0,
            write_units: 0.0,
            read_units: 0.0,
            conflicts: 0,
            retries: 0,
            shards: SHARDS,
            counters: Some(COUNTER_SHARDS),
            requeuing: false,
            requeue_cursor: None,
            requeued_at: 0,
            round_started_at: 0,
            round_base: 0,
            owed_events: vec![EventKind::Started],
            expires_at,
            gpk: Some(ACTIVE_JOBS.into()),
            gsk: Some(now_ms),
            lpk: Some(status_lpk(JobStatus::Processing)),
            lsk: Some(now_ms),
        }
    }

    /// The job with its counters summed from the shards and the cursors.
    pub fn into_job(self, counters: &[CounterItem], cursors: &[CursorItem]) -> Job {
        let mut cost = Cost {
            requests: self.requests,
            write_units: self.write_units,
            read_units: self.read_units,
            conflicts: self.conflicts,
        };
        let (mut done, mut processed, mut failed, mut retryable) = (0i64, 0i64, 0i64, 0i64);
        let mut duplicates = 0i64;
        let mut updated = self
            .updated_at
            .unwrap_or(self.created_at)
            .max(self.finished_at.unwrap_or(0));
        for c in counters {
            done += c.batches_done;
            processed += c.processed;
            failed += c.failed;
            retryable += c.retryable;
            duplicates += c.duplicates;
            updated = updated.max(c.updated_at);
            cost.add(Cost {
                requests: c.requests,
                write_units: c.write_units,
                read_units: c.read_units,
                conflicts: c.conflicts,
            });
        }
        Job {
            id: self.job_id,
            kind: self.kind,
            status: self.status,
            source: JobSource::Object(SourceRef {
                bucket: self.bucket,
                key: self.key,
                version: self.version,
            }),
            prepared: self.prepared,
            total_records: self.total_records,
            total_batches: self.total_batches,
            batches_ready: self.batches_ready,
            batches_handed_out: cursors.iter().map(|c| c.k).sum(),
            batches_done: done.max(0) as u64,
            processed: processed.max(0) as u64,
            failed: failed.max(0) as u64,
            retryable: retryable.max(0) as u64,
            duplicates: duplicates.max(0) as u64,
            prepare_lease_until_ms: if self.prepared {
                0
            } else {
                self.prepare_lease_until
            },
            prepare_failures: self.prepare_failures,
            prepare_checkpoint: self.prepare_checkpoint.filter(|_| !self.prepared),
            created_at_ms: self.created_at,
            updated_at_ms: updated,
            finished_at_ms: self.finished_at,
            failure_reason: self.failure_reason,
            report: self.report,
            report_owed: self.report_owed,
            cost,
            retries: self.retries,
            round: crate::job::Round {
                requeuing: self.requeuing,
                requeue_cursor: self.requeue_cursor,
                requeued_at_ms: self.requeued_at,
                started_at_ms: self.round_started_at,
                base: self.round_base,
            },
            // A set has no order: lifecycle order is delivery order.
            owed_events: {
                let mut owed = self.owed_events;
                owed.sort();
                owed
            },
        }
    }
}

/// The batch control item: small (one write unit), separate from the records.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchItem {
    pub pk: String,
    pub sk: String,
    pub index: u64,
    pub state: BatchState,
    pub version: u64,
    pub records: u64,
    pub chunks: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default)]
    pub lease_until: i64,
    /// Lease index key: present only while the batch is unfinished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gsk: Option<i64>,
    #[serde(default)]
    pub processed: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Absent for a batch of records.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub content: BatchContent,
    /// The version when a retry requeued the batch (attempts count from it).
    #[serde(default)]
    pub queued_version: u64,
    /// What the earlier run left, while a retry's rerun is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_processed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_failed: Option<u64>,
    /// The retry round that last ran or requeued the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
    /// The batch after it in its key partition, once linked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

impl BatchItem {
    /// The earlier run's standing, when this is a retry's rerun.
    pub fn rerun(&self) -> Option<crate::store::Rerun> {
        Some(crate::store::Rerun {
            processed: self.prior_processed?,
            failed: self.prior_failed?,
        })
    }
}

/// The batch index a failure item's sort key names (`<index>#<part>`).
pub fn failure_batch(sk: &str) -> Option<u64> {
    sk.split_once('#')?.0.parse().ok()
}

impl BatchItem {
    pub fn info(&self) -> BatchInfo {
        BatchInfo {
            index: self.index,
            state: self.state,
            version: self.version,
            worker: self.worker.clone(),
            lease_until_ms: self.lease_until,
            record_count: self.records,
            processed: self.processed,
            failed: self.failed,
            last_error: self.last_error.clone(),
        }
    }
}

/// Packed records (`codec`) of one batch, or packed failures of one batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackedItem {
    pub pk: String,
    pub sk: String,
    #[serde(with = "serde_bytes")]
    pub d: Vec<u8>,
    #[serde(default, rename = "expiresAt", skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

impl Serialize for BatchState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for BatchState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        BatchState::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown batch state {s:?}")))
    }
}

impl BatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Waiting => "WAITING",
            BatchState::Pending => "PENDING",
            BatchState::Processing => "PROCESSING",
            BatchState::Done => "DONE",
            BatchState::Failed => "FAILED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "WAITING" => BatchState::Waiting,
            "PENDING" => BatchState::Pending,
            "PROCESSING" => BatchState::Processing,
            "DONE" => BatchState::Done,
            "FAILED" => BatchState::Failed,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::types::AttributeValue;
    use serde_dynamo::aws_sdk_dynamodb_1::{from_item, to_item};
    use std::collections::HashMap;

    #[test]
    fn a_batch_of_records_is_stored_as_before_and_read_as_records() {
        let batch = BatchItem {
            pk: "B#j#0".into(),
            sk: "B".into(),
            index: 0,
            state: BatchState::Pending,
            version: 0,
            records: 3,
            chunks: 1,
            worker: None,
            lease_until: 0,
            gpk: None,
            gsk: None,
            processed: 0,
            failed: 0,
            last_error: None,
            expires_at: None,
            content: BatchContent::Records,
            queued_version: 0,
            prior_processed: None,
            prior_failed: None,
            round: None,
            next: None,
        };
        let item: HashMap<String, AttributeValue> = to_item(&batch).unwrap();
        assert!(!item.contains_key("content"), "{item:?}");
        let read: BatchItem = from_item(item).unwrap();
        assert_eq!(read.content, BatchContent::Records);
    }
}
