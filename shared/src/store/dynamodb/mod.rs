//! `JobStore` on one DynamoDB table. Claims are O(1) amortized: an atomic
//! cursor on the job item hands out batch indexes; batches it handed out
//! whose lease expired (or whose claimer died before claiming) are found
//! through the sparse `leases` index, which only holds unfinished batches.

pub mod cost;
pub mod items;
pub mod table;

use self::cost::{item_size, read_units, write, write_units, Meter};
use self::items::*;
use super::*;
use crate::job::{truncate_value, Cost};
use crate::retry::Backoff;
use crate::store::codec;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, PutRequest, ReturnConsumedCapacity, ReturnValue,
    ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use serde_dynamo::aws_sdk_dynamodb_1::{from_item, to_item};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

type Item = HashMap<String, AttributeValue>;

/// BatchWriteItem's limit (the service rejects more; emulators may not).
const BATCH_WRITE_MAX: usize = 25;
/// Attempts for work the SDK does not retry itself: UnprocessedItems and
/// transactions cancelled by a conflicting transaction.
const MAX_CONFLICT_RETRIES: u32 = 10;
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

fn is_condition_failed<E, R>(e: &SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    e.as_service_error().and_then(|e| e.code()) == Some("ConditionalCheckFailedException")
}

/// How a transaction was cancelled, per item.
enum Cancelled {
    /// A condition failed on the item at this position.
    Condition(usize),
    /// Another transaction touched the same items: retry.
    Conflict,
}

fn cancellation<R>(
    e: &SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError, R>,
) -> Option<Cancelled> {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError as E;
    match e.as_service_error()? {
        E::TransactionCanceledException(c) => {
            let reasons = c.cancellation_reasons();
            if let Some(i) = reasons
                .iter()
                .position(|r| r.code() == Some("ConditionalCheckFailed"))
            {
                return Some(Cancelled::Condition(i));
            }
            Some(Cancelled::Conflict)
        }
        E::TransactionInProgressException(_) => Some(Cancelled::Conflict),
        _ => None,
    }
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>, trust_consumed_capacity: bool) -> Self {
        DynamoStore {
            client,
            table: table.into(),
            meter: Meter::new(trust_consumed_capacity),
            retention_ms: None,
            backoff: Backoff::default(),
        }
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

    async fn get(&self, job: &JobId, pk: String, sk: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| StoreError::backend("GetItem", e))?;
        let size = out.item().map(item_size).unwrap_or(0);
        let computed = Cost {
            requests: 1,
            write_units: 0.0,
            read_units: read_units(size, true),
        };
        self.meter.record(
            job,
            computed,
            out.consumed_capacity()
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
                .as_slice(),
        );
        Ok(out.item)
    }

    /// Writes items with BatchWriteItem, 25 a request, retrying
    /// UnprocessedItems with backoff; never drops one silently.
    async fn put_all(&self, job: &JobId, items: Vec<Item>) -> Result<(), StoreError> {
        for group in items.chunks(BATCH_WRITE_MAX) {
            let mut requests: Vec<WriteRequest> = group
                .iter()
                .map(|item| {
                    WriteRequest::builder()
                        .put_request(
                            PutRequest::builder()
                                .set_item(Some(item.clone()))
                                .build()
                                .expect("item is set"),
                        )
                        .build()
                })
                .collect();
            let mut attempt = 0;
            while !requests.is_empty() {
                let units: f64 = requests
                    .iter()
                    .filter_map(|r| r.put_request())
                    .map(|p| write_units(item_size(p.item())))
                    .sum();
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, requests)
                    .return_consumed_capacity(ReturnConsumedCapacity::Total)
                    .send()
                    .await
                    .map_err(|e| StoreError::backend("BatchWriteItem", e))?;
                self.meter.record(
                    job,
                    Cost {
                        requests: 1,
                        write_units: units,
                        read_units: 0.0,
                    },
                    out.consumed_capacity(),
                );
                requests = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(&self.table))
                    .unwrap_or_default();
                if !requests.is_empty() {
                    attempt += 1;
                    if attempt > MAX_CONFLICT_RETRIES {
                        return Err(StoreError::backend(
                            "BatchWriteItem",
                            format!(
                                "{} items still unprocessed after {attempt} attempts",
                                requests.len()
                            ),
                        ));
                    }
                    self.backoff.wait(attempt).await;
                }
            }
        }
        Ok(())
    }

    fn update(
        &self,
        pk: String,
        sk: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
    }

    /// Runs a transaction, retrying cancellations caused by conflicts.
    /// `Ok(Err(i))` when the condition on item `i` failed.
    async fn transact(
        &self,
        job: &JobId,
        items: Vec<TransactWriteItem>,
        computed: Cost,
        token: Option<String>,
    ) -> Result<Result<(), usize>, StoreError> {
        let mut attempt = 0;
        loop {
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .set_client_request_token(token.clone())
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            match result {
                // Its cost travels inside the transaction (`ADD` on the job).
                Ok(_) => return Ok(Ok(())),
                Err(e) => match cancellation(&e) {
                    Some(Cancelled::Condition(i)) => return Ok(Err(i)),
                    Some(Cancelled::Conflict) if attempt < MAX_CONFLICT_RETRIES => {
                        // A cancelled transaction is billed too.
                        self.meter.record(job, computed, &[]);
                        attempt += 1;
                        self.backoff.wait(attempt).await;
                    }
                    _ => return Err(StoreError::backend("TransactWriteItems", e)),
                },
            }
        }
    }

    /// Hands out the next batch index from the job's cursor; otherwise says
    /// why there is none (`Err` holds the claim answer to give).
    async fn next_index(&self, job: &JobId) -> Result<Result<u64, Claim>, StoreError> {
        let result = self
            .update(job_pk(job), JOB_SK)
            .update_expression("SET #cursor = #cursor + :one")
            .condition_expression("#status = :processing AND #cursor < batchesReady")
            .expression_attribute_names("#cursor", "cursor")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":processing", s(JobStatus::Processing.as_str()))
            .return_values(ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        self.meter.record(job, write(SMALL_ITEM_BYTES), &[]);
        match result {
            Ok(out) => {
                let cursor = out
                    .attributes()
                    .and_then(|a| a.get("cursor"))
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| corrupt(job, "cursor update returned no cursor"))?;
                Ok(Ok(cursor - 1))
            }
            Err(e) if is_condition_failed(&e) => {
                use aws_sdk_dynamodb::operation::update_item::UpdateItemError as E;
                let old = match e.into_service_error() {
                    E::ConditionalCheckFailedException(c) => c.item,
                    _ => None,
                };
                match old {
                    None => Err(StoreError::JobNotFound(job.clone())),
                    Some(item) => {
                        let item: JobItem = from_item(item).map_err(|e| corrupt(job, e))?;
                        Ok(Err(if item.status.is_final() {
                            Claim::JobFinished(item.status)
                        } else if item.prepared {
                            Claim::NoneAvailable
                        } else {
                            Claim::Wait
                        }))
                    }
                }
            }
            Err(e) => Err(StoreError::backend("UpdateItem", e)),
        }
    }

    /// Claims one batch if it is pending or its lease expired.
    async fn try_claim(
        &self,
        job: &JobId,
        index: u64,
        worker: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<ClaimedBatch>, StoreError> {
        let until = now_ms + lease_ms;
        let result = self
            .update(batch_pk(job, index), BATCH_SK)
            .update_expression(
                "SET #state = :processing, version = version + :one, worker = :w, leaseUntil = :until, gsk = :until",
            )
            .condition_expression(
                "attribute_exists(pk) AND (#state = :pending OR (#state = :processing AND leaseUntil < :now))",
            )
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":processing", s(BatchState::Processing.as_str()))
            .expression_attribute_values(":pending", s(BatchState::Pending.as_str()))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":w", s(worker))
            .expression_attribute_values(":until", n(until))
            .expression_attribute_values(":now", n(now_ms))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        // Index entry moves (delete + put) on top of the item write.
        let cost = Cost {
            requests: 1,
            write_units: 3.0,
            read_units: 0.0,
        };
        match result {
            Ok(out) => {
                self.meter.record(
                    job,
                    cost,
                    out.consumed_capacity()
                        .into_iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .as_slice(),
                );
                let item: BatchItem =
                    from_item(out.attributes.unwrap_or_default()).map_err(|e| corrupt(job, e))?;
                Ok(Some(ClaimedBatch {
                    job_id: job.clone(),
                    index,
                    version: item.version,
                    worker: worker.to_owned(),
                    lease_until_ms: until,
                    record_count: item.records,
                    last_error: item.last_error,
                }))
            }
            Err(e) if is_condition_failed(&e) => {
                self.meter.record(job, write(SMALL_ITEM_BYTES), &[]);
                Ok(None)
            }
            Err(e) => Err(StoreError::backend("UpdateItem", e)),
        }
    }

    async fn index_query(
        &self,
        job: &JobId,
        condition: &str,
        gpk: String,
        now_ms: i64,
        limit: i32,
    ) -> Result<Vec<Item>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(LEASE_INDEX)
            .key_condition_expression(condition)
            .expression_attribute_values(":gpk", s(gpk))
            .expression_attribute_values(":now", n(now_ms))
            .limit(limit)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| StoreError::backend("Query", e))?;
        let size: usize = out.items().iter().map(item_size).sum();
        self.meter.record(
            job,
            Cost {
                requests: 1,
                write_units: 0.0,
                read_units: read_units(size, false),
            },
            out.consumed_capacity()
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
                .as_slice(),
        );
        Ok(out.items.unwrap_or_default())
    }

    /// Batches whose lease expired, or that the cursor handed out but nobody
    /// claimed: the index holds only unfinished batches, keyed by lease expiry
    /// (0 for never claimed).
    async fn expired(&self, job: &JobId, now_ms: i64) -> Result<Vec<u64>, StoreError> {
        let items = self
            .index_query(job, "gpk = :gpk AND gsk < :now", job_pk(job), now_ms, 25)
            .await?;
        let prefix = format!("{}#B#", job_pk(job));
        Ok(items
            .iter()
            .filter_map(|i| {
                i.get("pk")?
                    .as_s()
                    .ok()?
                    .strip_prefix(&prefix)?
                    .parse()
                    .ok()
            })
            .collect())
    }

    fn fence(
        &self,
        claim: &ClaimedBatch,
        update: aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        update
            .condition_expression("#state = :processing AND version = :v")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":processing", s(BatchState::Processing.as_str()))
            .expression_attribute_values(":v", n(claim.version))
    }

    async fn fenced_update(
        &self,
        claim: &ClaimedBatch,
        update: aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
    ) -> Result<(), StoreError> {
        let result = self.fence(claim, update).send().await;
        self.meter.record(
            &claim.job_id,
            Cost {
                requests: 1,
                write_units: 3.0,
                read_units: 0.0,
            },
            &[],
        );
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Err(StoreError::ClaimLost {
                job: claim.job_id.clone(),
                index: claim.index,
                version: claim.version,
            }),
            Err(e) => Err(StoreError::backend("UpdateItem", e)),
        }
    }
}

/// Keeps failure detail within what one commit can carry: when a batch fails
/// wholesale with many issues each, keep every line but only its first issue.
fn fit_failures(failed: &[FailedRecord]) -> std::borrow::Cow<'_, [FailedRecord]> {
    let total: usize = failed.iter().map(codec::encoded_len).sum();
    if total <= MAX_FAILURE_BYTES {
        return failed.into();
    }
    failed
        .iter()
        .map(|f| FailedRecord {
            line: f.line,
            issues: f
                .issues
                .iter()
                .take(1)
                .map(|i| crate::job::FieldIssue {
                    field: i.field.clone(),
                    value: None,
                    message: truncate_value(&i.message),
                })
                .collect(),
        })
        .collect::<Vec<_>>()
        .into()
}

/// `ADD` clause that flushes metered cost into the job item.
const ADD_COST: &str = "ADD requests :rq, writeUnits :wu, readUnits :ru";

fn with_cost(values: &mut Item, cost: Cost) {
    values.insert(":rq".into(), n(cost.requests));
    values.insert(":wu".into(), n(cost.write_units));
    values.insert(":ru".into(), n(cost.read_units));
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

#[async_trait]
impl JobStore for DynamoStore {
    async fn create_job(
        &self,
        source: &SourceRef,
        lease: &PrepareLease,
        now_ms: i64,
    ) -> Result<CreateOutcome, StoreError> {
        let id = source.job_id();
        let item = JobItem::new(
            source,
            &lease.owner,
            now_ms + lease.lease_ms,
            now_ms,
            self.expires_at(now_ms),
        );
        let attrs: Item = to_item(&item).map_err(|e| corrupt(&id, e))?;
        let size = item_size(&attrs);
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(attrs))
            .condition_expression("attribute_not_exists(pk)")
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        self.meter.record(&id, write(size), &[]);
        match result {
            Ok(_) => Ok(CreateOutcome::Created(item.into_job())),
            Err(e) if is_condition_failed(&e) => {
                let job = self
                    .get_job(&id)
                    .await?
                    .ok_or_else(|| StoreError::JobNotFound(id.clone()))?;
                Ok(CreateOutcome::Exists(job))
            }
            Err(e) => Err(StoreError::backend("PutItem", e)),
        }
    }

    async fn get_job(&self, job: &JobId) -> Result<Option<Job>, StoreError> {
        match self.get(job, job_pk(job), JOB_SK).await? {
            None => Ok(None),
            Some(item) => Ok(Some(
                from_item::<JobItem>(item)
                    .map_err(|e| corrupt(job, e))?
                    .into_job(),
            )),
        }
    }

    async fn acquire_prepare(
        &self,
        job: &JobId,
        lease: &PrepareLease,
        now_ms: i64,
    ) -> Result<Option<Job>, StoreError> {
        let result = self
            .update(job_pk(job), JOB_SK)
            .update_expression("SET prepareOwner = :o, prepareLeaseUntil = :until")
            .condition_expression(
                "#status = :processing AND prepared = :false \
                 AND (attribute_not_exists(prepareOwner) OR prepareOwner = :o OR prepareLeaseUntil < :now)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":processing", s(JobStatus::Processing.as_str()))
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .expression_attribute_values(":o", s(&lease.owner))
            .expression_attribute_values(":until", n(now_ms + lease.lease_ms))
            .expression_attribute_values(":now", n(now_ms))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        self.meter.record(job, write(SMALL_ITEM_BYTES), &[]);
        match result {
            Ok(out) => {
                let item: JobItem =
                    from_item(out.attributes.unwrap_or_default()).map_err(|e| corrupt(job, e))?;
                Ok(Some(item.into_job()))
            }
            Err(e) if is_condition_failed(&e) => Ok(None),
            Err(e) => Err(StoreError::backend("UpdateItem", e)),
        }
    }

    async fn add_batch(
        &self,
        job: &JobId,
        lease: &PrepareLease,
        batch: NewBatch<'_>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let expires_at = self.expires_at(now_ms);
        let pk = batch_pk(job, batch.index);
        // Records first: a batch becomes visible only with all of them stored.
        // Rewriting them after a crash is harmless: batches are cut
        // deterministically, so the content is identical.
        let chunks = codec::pack(batch.records);
        let chunk_count = chunks.len() as u64;
        let items = chunks
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                to_item(PackedItem {
                    pk: pk.clone(),
                    sk: chunk_sk(i),
                    d,
                    expires_at,
                })
            })
            .collect::<Result<Vec<Item>, _>>()
            .map_err(|e| corrupt(job, e))?;
        self.put_all(job, items).await?;

        let batch_item = BatchItem {
            pk: pk.clone(),
            sk: BATCH_SK.into(),
            index: batch.index,
            state: BatchState::Pending,
            version: 0,
            records: batch.records.len() as u64,
            chunks: chunk_count,
            worker: None,
            lease_until: 0,
            gpk: Some(job_pk(job)),
            gsk: Some(0),
            processed: 0,
            failed: 0,
            last_error: None,
            expires_at,
        };
        let batch_attrs: Item = to_item(&batch_item).map_err(|e| corrupt(job, e))?;
        // Transactional writes bill double; the index entry once.
        let own = Cost {
            requests: 1,
            write_units: 2.0 * (write_units(item_size(&batch_attrs)) + 1.0) + 1.0,
            read_units: 0.0,
        };
        let cost = self.meter.take(job, own);
        let mut values: Item = HashMap::from([
            (":o".into(), s(&lease.owner)),
            (":idx".into(), n(batch.index)),
            (":next".into(), n(batch.index + 1)),
            (":until".into(), n(now_ms + lease.lease_ms)),
            (":false".into(), AttributeValue::Bool(false)),
        ]);
        with_cost(&mut values, cost);
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(batch_attrs))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .expect("put is complete");
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(job), JOB_SK)))
            .update_expression(format!(
                "SET batchesReady = :next, prepareLeaseUntil = :until {ADD_COST}"
            ))
            .condition_expression("prepareOwner = :o AND batchesReady = :idx AND prepared = :false")
            .set_expression_attribute_values(Some(values))
            .build()
            .expect("update is complete");
        let items = vec![
            TransactWriteItem::builder().put(put).build(),
            TransactWriteItem::builder().update(update).build(),
        ];
        let tok = token(&[
            job.as_str(),
            "batch",
            &batch.index.to_string(),
            &lease.owner,
        ]);
        match self.transact(job, items, own, Some(tok)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                self.meter.restore(job, cost);
                Err(StoreError::PrepareLeaseLost(job.clone()))
            }
            Err(e) => {
                self.meter.restore(job, cost);
                Err(e)
            }
        }
    }

    async fn release_prepare(&self, job: &JobId, lease: &PrepareLease) -> Result<(), StoreError> {
        let result = self
            .update(job_pk(job), JOB_SK)
            .update_expression("SET prepareLeaseUntil = :zero")
            .condition_expression("prepareOwner = :o")
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":o", s(&lease.owner))
            .send()
            .await;
        self.meter.record(job, write(SMALL_ITEM_BYTES), &[]);
        match result {
            // Someone else owns it already: nothing to give up.
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(StoreError::backend("UpdateItem", e)),
        }
    }

    async fn finish_prepare(
        &self,
        job: &JobId,
        lease: &PrepareLease,
        total_records: u64,
        total_batches: u64,
    ) -> Result<Job, StoreError> {
        let cost = self.meter.take(job, write(SMALL_ITEM_BYTES));
        let mut values: Item = HashMap::from([
            (":o".into(), s(&lease.owner)),
            (":tr".into(), n(total_records)),
            (":tb".into(), n(total_batches)),
            (":true".into(), AttributeValue::Bool(true)),
            (":false".into(), AttributeValue::Bool(false)),
        ]);
        with_cost(&mut values, cost);
        let result = self
            .update(job_pk(job), JOB_SK)
            .update_expression(format!(
                "SET prepared = :true, totalRecords = :tr, totalBatches = :tb REMOVE prepareOwner {ADD_COST}"
            ))
            .condition_expression("prepareOwner = :o AND batchesReady = :tb AND prepared = :false")
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(out) => {
                let item: JobItem =
                    from_item(out.attributes.unwrap_or_default()).map_err(|e| corrupt(job, e))?;
                Ok(item.into_job())
            }
            Err(e) => {
                self.meter.restore(job, cost);
                if is_condition_failed(&e) {
                    Err(StoreError::PrepareLeaseLost(job.clone()))
                } else {
                    Err(StoreError::backend("UpdateItem", e))
                }
            }
        }
    }

    async fn claim_batch(
        &self,
        job: &JobId,
        worker: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Claim, StoreError> {
        loop {
            match self.next_index(job).await? {
                Ok(index) => {
                    if let Some(c) = self.try_claim(job, index, worker, now_ms, lease_ms).await? {
                        return Ok(Claim::Batch(c));
                    }
                }
                Err(Claim::JobFinished(status)) => return Ok(Claim::JobFinished(status)),
                Err(exhausted) => {
                    for index in self.expired(job, now_ms).await? {
                        if let Some(c) =
                            self.try_claim(job, index, worker, now_ms, lease_ms).await?
                        {
                            return Ok(Claim::Batch(c));
                        }
                    }
                    return Ok(exhausted);
                }
            }
        }
    }

    async fn load_records(&self, job: &JobId, index: u64) -> Result<Vec<StagedRecord>, StoreError> {
        let mut records = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :c)")
            .expression_attribute_values(":pk", s(batch_pk(job, index)))
            .expression_attribute_values(":c", s("C#"))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| StoreError::backend("Query", e))?;
            let size: usize = page.items().iter().map(item_size).sum();
            self.meter.record(
                job,
                Cost {
                    requests: 1,
                    write_units: 0.0,
                    read_units: read_units(size, true),
                },
                page.consumed_capacity()
                    .into_iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .as_slice(),
            );
            for item in page.items.unwrap_or_default() {
                let packed: PackedItem = from_item(item).map_err(|e| corrupt(job, e))?;
                records
                    .extend(codec::unpack::<StagedRecord>(&packed.d).map_err(|e| corrupt(job, e))?);
            }
        }
        Ok(records)
    }

    async fn extend_lease(&self, claim: &ClaimedBatch, until_ms: i64) -> Result<(), StoreError> {
        let update = self
            .update(batch_pk(&claim.job_id, claim.index), BATCH_SK)
            .update_expression("SET leaseUntil = :until, gsk = :until")
            .expression_attribute_values(":until", n(until_ms));
        self.fenced_update(claim, update).await
    }

    async fn release_batch(&self, claim: &ClaimedBatch, error: &str) -> Result<(), StoreError> {
        let update = self
            .update(batch_pk(&claim.job_id, claim.index), BATCH_SK)
            .update_expression("SET leaseUntil = :zero, gsk = :zero, lastError = :e")
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":e", s(truncate_value(error)));
        self.fenced_update(claim, update).await
    }

    async fn commit_batch(
        &self,
        claim: &ClaimedBatch,
        outcome: &BatchOutcome,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let job = &claim.job_id;
        let failed = fit_failures(&outcome.failed);
        let failure_items = codec::pack(&failed)
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                to_item(PackedItem {
                    pk: failure_pk(job, claim.index),
                    sk: failure_sk(claim.index, i),
                    d,
                    expires_at: self.expires_at(now_ms),
                })
            })
            .collect::<Result<Vec<Item>, _>>()
            .map_err(|e| corrupt(job, e))?;
        let failure_units: f64 = failure_items
            .iter()
            .map(|i| write_units(item_size(i)))
            .sum();
        let own = Cost {
            requests: 1,
            // Batch and job items, doubled in a transaction, the index entry
            // removal, and the failure items.
            write_units: 2.0 * (2.0 + failure_units) + 1.0,
            read_units: 0.0,
        };
        let cost = self.meter.take(job, own);

        let mut batch_values: Item = HashMap::from([
            (":processing".into(), s(BatchState::Processing.as_str())),
            (":v".into(), n(claim.version)),
            (":st".into(), s(outcome.state.as_str())),
            (":p".into(), n(outcome.processed)),
            (":f".into(), n(outcome.failed.len())),
            (":at".into(), n(now_ms)),
        ]);
        let mut set =
            "SET #state = :st, #processed = :p, failed = :f, finishedAt = :at".to_string();
        if let Some(e) = &outcome.error {
            batch_values.insert(":e".into(), s(truncate_value(e)));
            set.push_str(", lastError = :e");
        }
        let batch_update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(batch_pk(job, claim.index), BATCH_SK)))
            .update_expression(format!("{set} REMOVE gpk, gsk"))
            .condition_expression("#state = :processing AND version = :v")
            .set_expression_attribute_names(Some(names(&[
                ("#state", "state"),
                ("#processed", "processed"),
            ])))
            .set_expression_attribute_values(Some(batch_values))
            .build()
            .expect("update is complete");
        let mut job_values: Item = HashMap::from([
            (":one".into(), n(1)),
            (":p".into(), n(outcome.processed)),
            (":f".into(), n(outcome.failed.len())),
        ]);
        with_cost(&mut job_values, cost);
        let job_update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(job), JOB_SK)))
            .update_expression(format!(
                "{ADD_COST}, batchesDone :one, #processed :p, failed :f"
            ))
            .condition_expression("attribute_exists(pk)")
            .set_expression_attribute_names(Some(names(&[("#processed", "processed")])))
            .set_expression_attribute_values(Some(job_values))
            .build()
            .expect("update is complete");
        let mut items = vec![
            TransactWriteItem::builder().update(batch_update).build(),
            TransactWriteItem::builder().update(job_update).build(),
        ];
        for item in failure_items {
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .build()
                .expect("put is complete");
            items.push(TransactWriteItem::builder().put(put).build());
        }
        let tok = token(&[
            job.as_str(),
            "commit",
            &claim.index.to_string(),
            &claim.version.to_string(),
        ]);
        match self.transact(job, items, own, Some(tok)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(0)) => {
                self.meter.restore(job, cost);
                Err(StoreError::ClaimLost {
                    job: job.clone(),
                    index: claim.index,
                    version: claim.version,
                })
            }
            Ok(Err(_)) => {
                self.meter.restore(job, cost);
                Err(StoreError::JobNotFound(job.clone()))
            }
            Err(e) => {
                self.meter.restore(job, cost);
                Err(e)
            }
        }
    }

    async fn finalize(
        &self,
        job: &JobId,
        fin: &Finalization,
        require_all_done: bool,
    ) -> Result<bool, StoreError> {
        let cost = self.meter.take(job, write(SMALL_ITEM_BYTES));
        let mut values: Item = HashMap::from([
            (":processing".into(), s(JobStatus::Processing.as_str())),
            (":st".into(), s(fin.status.as_str())),
            (":at".into(), n(fin.now_ms)),
        ]);
        with_cost(&mut values, cost);
        let mut set = "SET #status = :st, finishedAt = :at".to_string();
        if let Some(reason) = &fin.reason {
            values.insert(":reason".into(), s(truncate_value(reason)));
            set.push_str(", failureReason = :reason");
        }
        if let Some(report) = &fin.report {
            values.insert(":report".into(), s(report));
            set.push_str(", report = :report");
        }
        let mut condition = "#status = :processing".to_string();
        if require_all_done {
            values.insert(":true".into(), AttributeValue::Bool(true));
            condition.push_str(" AND prepared = :true AND batchesDone = totalBatches");
        }
        let result = self
            .update(job_pk(job), JOB_SK)
            .update_expression(format!("{set} REMOVE prepareOwner, gpk, gsk {ADD_COST}"))
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names(&[("#status", "status")])))
            .set_expression_attribute_values(Some(values))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) => {
                self.meter.restore(job, cost);
                if is_condition_failed(&e) {
                    Ok(false)
                } else {
                    Err(StoreError::backend("UpdateItem", e))
                }
            }
        }
    }

    async fn failed_records(
        &self,
        job: &JobId,
        batch: u64,
    ) -> Result<Vec<FailedRecord>, StoreError> {
        let mut failed = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(failure_pk(job, batch)))
            .expression_attribute_values(":prefix", s(failure_sk_prefix(batch)))
            .consistent_read(true)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for item in page
                .map_err(|e| StoreError::backend("Query", e))?
                .items
                .unwrap_or_default()
            {
                let packed: PackedItem = from_item(item).map_err(|e| corrupt(job, e))?;
                failed
                    .extend(codec::unpack::<FailedRecord>(&packed.d).map_err(|e| corrupt(job, e))?);
            }
        }
        Ok(failed)
    }

    async fn active_jobs(&self) -> Result<Vec<JobId>, StoreError> {
        let mut ids = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(LEASE_INDEX)
            .key_condition_expression("gpk = :gpk")
            .expression_attribute_values(":gpk", s(ACTIVE_JOBS))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for item in page
                .map_err(|e| StoreError::backend("Query", e))?
                .items
                .unwrap_or_default()
            {
                if let Some(id) = item
                    .get("pk")
                    .and_then(|v| v.as_s().ok())
                    .and_then(|pk| pk.strip_prefix("J#"))
                {
                    ids.push(JobId::new(id));
                }
            }
        }
        Ok(ids)
    }

    async fn lease_view(&self, job: &JobId, now_ms: i64) -> Result<LeaseView, StoreError> {
        let live = self
            .index_query(job, "gpk = :gpk AND gsk >= :now", job_pk(job), now_ms, 1)
            .await?;
        let stale = self
            .index_query(job, "gpk = :gpk AND gsk < :now", job_pk(job), now_ms, 25)
            .await?;
        // The index also holds batches the cursor has not handed out yet
        // (PENDING too); only those behind the cursor are stalled.
        let handed_out = self
            .get_job(job)
            .await?
            .map(|j| j.batches_handed_out)
            .unwrap_or(0);
        let prefix = format!("{}#B#", job_pk(job));
        let reclaimable = stale
            .iter()
            .filter_map(|i| {
                i.get("pk")?
                    .as_s()
                    .ok()?
                    .strip_prefix(&prefix)?
                    .parse::<u64>()
                    .ok()
            })
            .filter(|index| *index < handed_out)
            .count() as u64;
        Ok(LeaseView {
            live: !live.is_empty(),
            reclaimable,
        })
    }

    async fn batch_info(&self, job: &JobId, index: u64) -> Result<Option<BatchInfo>, StoreError> {
        match self.get(job, batch_pk(job, index), BATCH_SK).await? {
            None => Ok(None),
            Some(item) => Ok(Some(
                from_item::<BatchItem>(item)
                    .map_err(|e| corrupt(job, e))?
                    .info(),
            )),
        }
    }
}
