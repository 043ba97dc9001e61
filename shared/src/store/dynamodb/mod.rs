//! `JobStore` on one DynamoDB table, with no item or partition that every
//! batch writes: claim cursors, counters and lease-index partitions are
//! sharded by batch index, and prepare publishes batches in groups. Claims
//! are O(1) amortized: a cursor shard hands out batch indexes; batches
//! whose lease expired (or whose claimer died before claiming) are found
//! through the sparse `leases` index, which only holds unfinished batches.

mod claims;
mod commit;
pub mod cost;
mod errors;
mod io;
pub mod items;
mod jobs;
mod prepare;
mod requeue;
pub mod table;
mod throttle;

use self::cost::{item_size, read_units, write, write_units, Meter};
use self::errors::{cancellation, conflict_at, is_busy, is_condition_failed, Cancelled};
use self::items::*;
use super::*;
use crate::clock::Clock;
use crate::job::{truncate_value, Cost};
use crate::retry::Backoff;
use crate::rng::Rng;
use crate::store::codec;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, KeysAndAttributes, Put, PutRequest,
    ReturnConsumedCapacity, ReturnValue, TransactWriteItem, Update, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use serde_dynamo::aws_sdk_dynamodb_1::{from_item, to_item};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

type Item = HashMap<String, AttributeValue>;

/// BatchWriteItem's limit (the service rejects more; emulators may not).
const BATCH_WRITE_MAX: usize = 25;
/// Attempts for work the SDK does not retry itself: UnprocessedItems,
/// writes to an item a transaction holds, and transactions cancelled by a
/// conflict. With the default backoff (25 ms doubling to 5 s, full jitter)
/// that is up to about 30 s of waiting before the error surfaces.
const MAX_CONFLICT_RETRIES: u32 = 12;
/// Failure detail committed with one batch stays under this many
/// uncompressed bytes, so the commit transaction stays under its 4 MB cap.
const MAX_FAILURE_BYTES: usize = 3 * 1024 * 1024;
/// Job and batch items are small; this bounds their write cost estimate
/// before the service tells us their real size.
const SMALL_ITEM_BYTES: usize = 1024;

pub struct DynamoStore {
    client: Client,
    table: String,
    meter: Meter,
    retention_ms: Option<i64>,
    backoff: Backoff,
    /// Expiry times, and the waits of `backoff`.
    clock: Clock,
    /// Backoff jitter and counter-shard picks.
    rng: Rng,
    /// When each job's lease index was last searched in vain while its
    /// prepare was still running (see `claim_batch`).
    searched: std::sync::Mutex<HashMap<JobId, i64>>,
    /// Each job's shard count, as its item names it (fixed at creation).
    shards: std::sync::Mutex<HashMap<JobId, (u64, u64)>>,
    /// Where this process last saw each job's cursors (see `claim_batch`).
    floors: std::sync::Mutex<HashMap<JobId, Vec<u64>>>,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key(pk: String, sk: &str) -> Item {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
}

fn corrupt(job: &JobId, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        job: job.clone(),
        message: e.to_string(),
    }
}

/// A worker's home cursor shard, of `shards`.
fn shard_of(worker: &str, shards: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    worker.hash(&mut h);
    h.finish() % shards
}

/// The batch index of a lease-index entry (its `pk`).
fn batch_index(job: &JobId, item: &Item) -> Option<u64> {
    item.get("pk")?
        .as_s()
        .ok()?
        .strip_prefix(&format!("{}#B#", job_pk(job)))?
        .parse()
        .ok()
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>, trust_consumed_capacity: bool) -> Self {
        DynamoStore {
            client,
            table: table.into(),
            meter: Meter::new(trust_consumed_capacity),
            retention_ms: None,
            backoff: Backoff::default(),
            clock: Clock::system(),
            rng: Rng::from_entropy(),
            searched: Default::default(),
            shards: Default::default(),
            floors: Default::default(),
        }
    }

    /// The shard count of `job`: remembered, or read from its item once
    /// (`FIRST_SHARDS` when there is none yet).
    async fn shards(&self, job: &JobId) -> Result<u64, StoreError> {
        Ok(self.sharding(job).await?.0)
    }

    /// The cursor and counter shard counts of `job`, as `shards`.
    async fn sharding(&self, job: &JobId) -> Result<(u64, u64), StoreError> {
        if let Some(&known) = self.shards.lock().expect("shard counts poisoned").get(job) {
            return Ok(known);
        }
        match self.get(job, job_pk(job), JOB_SK).await? {
            Some(item) => {
                let item: JobItem = from_item(item).map_err(|e| corrupt(job, e))?;
                Ok(self.remember_shards(job, &item))
            }
            None => Ok((FIRST_SHARDS, FIRST_SHARDS)),
        }
    }

    /// Notes the shard counts a job item names (cursors, counters).
    fn remember_shards(&self, job: &JobId, item: &JobItem) -> (u64, u64) {
        let counts = (item.shards, item.counters.unwrap_or(item.shards));
        self.shards
            .lock()
            .expect("shard counts poisoned")
            .insert(job.clone(), counts);
        counts
    }

    /// Reads time from `clock` (the deployment's, `Deps::clock`) rather
    /// than the system's.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Draws jitter and counter shards from `rng` (`Deps::rng`) rather
    /// than a source of its own.
    pub fn with_rng(mut self, rng: Rng) -> Self {
        self.rng = rng;
        self
    }

    /// Reports the writes turned away by a conflict to `metrics` (none
    /// are reported without it).
    pub fn with_metrics(
        mut self,
        metrics: std::sync::Arc<dyn crate::metrics::MetricsSink>,
    ) -> Self {
        self.meter.metrics = metrics;
        self
    }

    /// Items expire (DynamoDB TTL) this long after the job was created.
    pub fn with_retention_days(mut self, days: u32) -> Self {
        self.retention_ms = Some(i64::from(days) * 86_400_000);
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn expires_at(&self, now_ms: i64) -> Option<i64> {
        // TTL attributes are in seconds.
        self.retention_ms.map(|r| (now_ms + r) / 1000)
    }

    /// `, expiresAt = if_not_exists(expiresAt, :exp)` for an update that
    /// may create its item (a cursor or counter shard), with `:exp` in
    /// `values`; nothing without a retention. Every item of a job expires.
    fn expiry_clause(&self, values: &mut Item) -> &'static str {
        match self.expires_at(self.clock.now_ms()) {
            Some(at) => {
                values.insert(":exp".into(), n(at));
                ", expiresAt = if_not_exists(expiresAt, :exp)"
            }
            None => "",
        }
    }
}

/// A one-element string set naming an event kind (for `ADD` / `DELETE` on
/// `owedEvents`).
fn kind_set(kind: EventKind) -> AttributeValue {
    AttributeValue::Ss(vec![kind.as_str().to_owned()])
}

/// `ADD` clause that flushes metered cost into the job item.
const ADD_COST: &str = "ADD requests :rq, writeUnits :wu, readUnits :ru, conflicts :cf";

fn with_cost(values: &mut Item, cost: Cost) {
    values.insert(":rq".into(), n(cost.requests));
    values.insert(":wu".into(), n(cost.write_units));
    values.insert(":ru".into(), n(cost.read_units));
    values.insert(":cf".into(), n(cost.conflicts));
}

fn names(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Idempotency token: a retried commit of the same claim is the same
/// transaction, so a lost response cannot turn a success into `ClaimLost`.
fn token(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..18])
}

/// Forwards to the inherent methods of the same name, grouped by phase in
/// `prepare`, `claims`, `commit`, `requeue` and `jobs` (low-level calls
/// with metering in `io`, error reading in `errors`).
#[async_trait]
impl PrepareStore for DynamoStore {
    async fn create_job_of(
        &self,
        source: &SourceRef,
        kind: &str,
        lease: &PrepareLease,
        now_ms: i64,
    ) -> Result<CreateOutcome, StoreError> {
        Self::create_job_of(self, source, kind, lease, now_ms).await
    }

    async fn pin_definition(&self, job: &JobId, definition: &str) -> Result<String, StoreError> {
        Self::pin_definition(self, job, definition).await
    }

    async fn pin_columns(&self, job: &JobId, columns: &[String]) -> Result<(), StoreError> {
        Self::pin_columns(self, job, columns).await
    }

    async fn acquire_prepare(
        &self,
        job: &JobId,
        lease: &PrepareLease,
        now_ms: i64,
    ) -> Result<Option<Job>, StoreError> {
        Self::acquire_prepare(self, job, lease, now_ms).await
    }

    async fn write_batches(
        &self,
        job: &JobId,
        batches: &[NewBatch<'_>],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        Self::write_batches(self, job, batches, now_ms).await
    }

    async fn link_batch(&self, job: &JobId, after: u64, index: u64) -> Result<(), StoreError> {
        Self::link_batch(self, job, after, index).await
    }

    async fn publish(
        &self,
        job: &JobId,
        lease: &PrepareLease,
        ready: u64,
        checkpoint: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        Self::publish(self, job, lease, ready, checkpoint, now_ms).await
    }

    async fn renew_prepare(
        &self,
        job: &JobId,
        lease: &PrepareLease,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        Self::renew_prepare(self, job, lease, now_ms).await
    }

    async fn note_prepare_failure(&self, job: &JobId, error: &str) -> Result<u32, StoreError> {
        Self::note_prepare_failure(self, job, error).await
    }

    async fn release_prepare(&self, job: &JobId, lease: &PrepareLease) -> Result<(), StoreError> {
        Self::release_prepare(self, job, lease).await
    }

    async fn finish_prepare(
        &self,
        job: &JobId,
        lease: &PrepareLease,
        total_records: u64,
        total_batches: u64,
    ) -> Result<Job, StoreError> {
        Self::finish_prepare(self, job, lease, total_records, total_batches).await
    }
}

#[async_trait]
impl ClaimStore for DynamoStore {
    async fn claim_batch(
        &self,
        job: &JobId,
        worker: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Claim, StoreError> {
        Self::claim_batch(self, job, worker, now_ms, lease_ms).await
    }

    async fn claim_index(
        &self,
        job: &JobId,
        index: u64,
        worker: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<ClaimedBatch>, StoreError> {
        Self::claim_index(self, job, index, worker, now_ms, lease_ms).await
    }

    async fn load_records(&self, job: &JobId, index: u64) -> Result<Vec<StagedRecord>, StoreError> {
        Self::load_records(self, job, index).await
    }

    async fn extend_lease(&self, claim: &ClaimedBatch, until_ms: i64) -> Result<(), StoreError> {
        Self::extend_lease(self, claim, until_ms).await
    }

    async fn release_batch(&self, claim: &ClaimedBatch, error: &str) -> Result<(), StoreError> {
        Self::release_batch(self, claim, error).await
    }

    async fn yield_batch(&self, claim: &ClaimedBatch) -> Result<(), StoreError> {
        Self::yield_batch(self, claim).await
    }

    async fn commit_batch(
        &self,
        claim: &ClaimedBatch,
        outcome: &BatchOutcome,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        Self::commit_batch(self, claim, outcome, now_ms).await
    }
}

#[async_trait]
impl JobControl for DynamoStore {
    async fn get_job(&self, job: &JobId) -> Result<Option<Job>, StoreError> {
        Self::get_job(self, job).await
    }

    async fn finalize(
        &self,
        job: &JobId,
        fin: &Finalization,
        when: FinalizeWhen,
    ) -> Result<bool, StoreError> {
        Self::finalize(self, job, fin, when).await
    }

    async fn record_report(
        &self,
        job: &JobId,
        round: u32,
        location: Option<&str>,
    ) -> Result<bool, StoreError> {
        Self::record_report(self, job, round, location).await
    }

    async fn lease_report(
        &self,
        job: &JobId,
        round: u32,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        Self::lease_report(self, job, round, now_ms, until_ms).await
    }

    async fn pinned_definition(&self, job: &JobId) -> Result<Option<String>, StoreError> {
        Self::pinned_definition(self, job).await
    }

    async fn pinned_columns(&self, job: &JobId) -> Result<Option<Vec<String>>, StoreError> {
        Self::pinned_columns(self, job).await
    }

    async fn failed_records(
        &self,
        job: &JobId,
        batch: u64,
    ) -> Result<Vec<FailedRecord>, StoreError> {
        Self::failed_records(self, job, batch).await
    }

    async fn active_jobs(&self) -> Result<Vec<JobId>, StoreError> {
        Self::active_jobs(self).await
    }

    async fn lease_view(&self, job: &JobId, now_ms: i64) -> Result<LeaseView, StoreError> {
        Self::lease_view(self, job, now_ms).await
    }

    async fn next_expiry(
        &self,
        job: &JobId,
        worker: &str,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        Self::next_expiry(self, job, worker, now_ms).await
    }

    async fn batch_info(&self, job: &JobId, index: u64) -> Result<Option<BatchInfo>, StoreError> {
        Self::batch_info(self, job, index).await
    }

    async fn pending_events(&self) -> Result<Vec<JobId>, StoreError> {
        Self::pending_events(self).await
    }

    async fn list_jobs(
        &self,
        status: Option<JobStatus>,
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        Self::list_jobs(self, status, kind, limit).await
    }

    async fn ack_event(&self, job: &JobId, kind: EventKind, round: u32) -> Result<(), StoreError> {
        Self::ack_event(self, job, kind, round).await
    }

    async fn retryable_batches(
        &self,
        job: &JobId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<RetryablePage, StoreError> {
        Self::retryable_batches(self, job, after, limit).await
    }

    async fn requeue_batch(
        &self,
        job: &JobId,
        index: u64,
        round: u32,
    ) -> Result<Option<u64>, StoreError> {
        Self::requeue_batch(self, job, index, round).await
    }

    async fn reopen(&self, job: &JobId, reopening: &Reopening) -> Result<Option<Job>, StoreError> {
        Self::reopen(self, job, reopening).await
    }

    async fn note_requeue(
        &self,
        job: &JobId,
        round: u32,
        cursor: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        Self::note_requeue(self, job, round, cursor, now_ms).await
    }

    async fn finish_requeue(
        &self,
        job: &JobId,
        round: u32,
        base: u64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        Self::finish_requeue(self, job, round, base, now_ms).await
    }
}
