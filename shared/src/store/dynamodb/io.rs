//! The metered calls every operation goes through: one place that records
//! what each request costs and retries what the SDK does not (conflicts with
//! transactions, throttling that outlasted the SDK's retries).

use super::*;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

type UpdateResult = Result<UpdateItemOutput, SdkError<UpdateItemError, HttpResponse>>;

impl DynamoStore {
    pub(super) async fn get(
        &self,
        job: &JobId,
        pk: String,
        sk: &str,
    ) -> Result<Option<Item>, StoreError> {
        self.get_read(job, (pk, sk), true).await
    }

    /// `get`, read consistently or not (half the read units, and it may
    /// miss the latest writes).
    pub(super) async fn get_read(
        &self,
        job: &JobId,
        (pk, sk): (String, &str),
        consistent: bool,
    ) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(consistent)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| StoreError::backend("GetItem", e))?;
        let size = out.item().map(item_size).unwrap_or(0);
        let computed = Cost {
            requests: 1,
            read_units: read_units(size, consistent),
            ..Cost::default()
        };
        self.meter
            .record(job, computed, out.consumed_capacity.as_slice());
        Ok(out.item)
    }

    /// Consistent reads of several items in one BatchGetItem per 100 keys,
    /// in the order of `keys` (`None` for a missing item).
    pub(super) async fn get_many(
        &self,
        job: &JobId,
        keys: Vec<Item>,
    ) -> Result<Vec<Option<Item>>, StoreError> {
        self.get_many_read(job, keys, true).await
    }

    /// `get_many`, read consistently or not.
    pub(super) async fn get_many_read(
        &self,
        job: &JobId,
        keys: Vec<Item>,
        consistent: bool,
    ) -> Result<Vec<Option<Item>>, StoreError> {
        let mut found: Vec<Item> = Vec::with_capacity(keys.len());
        for group in keys.chunks(100) {
            let mut pending = KeysAndAttributes::builder()
                .set_keys(Some(group.to_vec()))
                .consistent_read(consistent)
                .build()
                .expect("keys are set");
            let mut attempt = 0;
            loop {
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, pending)
                    .return_consumed_capacity(ReturnConsumedCapacity::Total)
                    .send()
                    .await
                    .map_err(|e| StoreError::backend("BatchGetItem", e))?;
                let mut responses = out.responses.unwrap_or_default();
                let items = responses.remove(&self.table).unwrap_or_default();
                let size: usize = items.iter().map(item_size).sum();
                self.meter.record(
                    job,
                    Cost {
                        requests: 1,
                        read_units: read_units(size, consistent)
                            .max(items.len() as f64 / if consistent { 1.0 } else { 2.0 }),
                        ..Cost::default()
                    },
                    out.consumed_capacity.as_deref().unwrap_or_default(),
                );
                found.extend(items);
                match out.unprocessed_keys.and_then(|mut m| m.remove(&self.table)) {
                    Some(rest) if !rest.keys().is_empty() => {
                        attempt += 1;
                        if attempt > MAX_CONFLICT_RETRIES {
                            return Err(StoreError::backend(
                                "BatchGetItem",
                                format!("{} keys still unprocessed", rest.keys().len()),
                            ));
                        }
                        self.backoff.sleep(attempt, &self.clock, &self.rng).await;
                        pending = rest;
                    }
                    _ => break,
                }
            }
        }
        let key_of = |i: &Item| {
            let part = |name: &str| {
                i.get(name)
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default()
            };
            (part("pk"), part("sk"))
        };
        let mut by_key: HashMap<_, Item> = found.into_iter().map(|i| (key_of(&i), i)).collect();
        Ok(keys.iter().map(|k| by_key.remove(&key_of(k))).collect())
    }

    /// Sends a single-item write, retrying while the item is held by a
    /// transaction (or throttled). Each retry is counted as a conflict.
    pub(super) async fn retry_busy<T, E, Fut>(
        &self,
        job: &JobId,
        mut send: impl FnMut() -> Fut,
    ) -> Result<T, SdkError<E, HttpResponse>>
    where
        Fut: std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
    {
        let mut attempt = 0;
        loop {
            match send().await {
                Err(e) if is_busy(&e) && attempt < MAX_CONFLICT_RETRIES => {
                    self.meter.conflict(job);
                    attempt += 1;
                    self.backoff.sleep(attempt, &self.clock, &self.rng).await;
                }
                result => return result,
            }
        }
    }

    /// An UpdateItem through `retry_busy`, metered as `computed` (nothing
    /// when the update carries its own cost in an `ADD`).
    pub(super) async fn send_update(
        &self,
        job: &JobId,
        update: UpdateItemFluentBuilder,
        computed: Cost,
    ) -> UpdateResult {
        let result = self.retry_busy(job, || update.clone().send()).await;
        if computed.requests > 0 {
            let consumed = result
                .as_ref()
                .ok()
                .and_then(|out| out.consumed_capacity.clone());
            self.meter.record(job, computed, consumed.as_slice());
        }
        result
    }

    /// An UpdateItem that carries `cost` (taken from the meter) in its `ADD`:
    /// if it fails, the cost goes back to the meter. False when its
    /// condition failed.
    pub(super) async fn update_carrying(
        &self,
        job: &JobId,
        update: UpdateItemFluentBuilder,
        cost: Cost,
    ) -> Result<bool, StoreError> {
        match self.send_update(job, update, Cost::default()).await {
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

    /// Writes items with BatchWriteItem, 25 a request, retrying
    /// UnprocessedItems with backoff; never drops one silently.
    pub(super) async fn put_all(&self, job: &JobId, items: Vec<Item>) -> Result<(), StoreError> {
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
                    .request_items(&self.table, requests.clone())
                    .return_consumed_capacity(ReturnConsumedCapacity::Total)
                    .send()
                    .await;
                let out = match out {
                    Ok(out) => out,
                    Err(e) if is_busy(&e) && attempt < MAX_CONFLICT_RETRIES => {
                        self.meter.conflict(job);
                        attempt += 1;
                        self.backoff.sleep(attempt, &self.clock, &self.rng).await;
                        continue;
                    }
                    Err(e) => return Err(StoreError::backend("BatchWriteItem", e)),
                };
                self.meter.record(
                    job,
                    Cost {
                        requests: 1,
                        write_units: units,
                        ..Cost::default()
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
                    self.backoff.sleep(attempt, &self.clock, &self.rng).await;
                }
            }
        }
        Ok(())
    }

    pub(super) fn update(&self, pk: String, sk: &str) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
    }

    /// Runs a transaction, retrying cancellations caused by conflicts or
    /// throttling (and nothing else: a validation error would fail again).
    /// `Ok(Err(i))` when the condition on item `i` failed.
    /// Sends a transaction, retrying it while it is busy. `counter` is
    /// the position of a counter shard's update among `items`, if any, and
    /// the job's counter shard count: a
    /// conflict on that shard moves the update to another shard, picked at
    /// random, and retries at once (under a token of its own, since the
    /// request changed) instead of waiting for the busy one.
    pub(super) async fn transact(
        &self,
        job: &JobId,
        mut items: Vec<TransactWriteItem>,
        counter: Option<(usize, u64)>,
        computed: Cost,
        token: Option<String>,
    ) -> Result<Result<(), Cancelled>, StoreError> {
        let mut attempt = 0;
        let mut sent_token = token.clone();
        loop {
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .set_client_request_token(sent_token.clone())
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            match result {
                // Its cost travels inside the transaction (`ADD` on the job).
                Ok(_) => return Ok(Ok(())),
                Err(e) => match cancellation(&e) {
                    Some(refused @ (Cancelled::Condition(_) | Cancelled::TokenReused)) => {
                        return Ok(Err(refused))
                    }
                    Some(Cancelled::Busy) if attempt < MAX_CONFLICT_RETRIES => {
                        // A cancelled transaction is billed too.
                        self.meter.record(job, computed, &[]);
                        self.meter.conflict(job);
                        attempt += 1;
                        match counter.filter(|&(at, _)| conflict_at(&e) == Some(at)) {
                            Some((at, counters)) => {
                                items[at] = self.other_counter_shard((job, counters), &items[at]);
                                sent_token = token
                                    .as_deref()
                                    .map(|t| super::token(&[t, &attempt.to_string()]));
                                // Busy again after moving: the shards are
                                // crowded, so wait as well.
                                if attempt > 1 {
                                    self.backoff
                                        .sleep(attempt - 1, &self.clock, &self.rng)
                                        .await;
                                }
                            }
                            None => self.backoff.sleep(attempt, &self.clock, &self.rng).await,
                        }
                    }
                    _ => return Err(StoreError::backend("TransactWriteItems", e)),
                },
            }
        }
    }

    pub(super) async fn index_query(
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
                read_units: read_units(size, false),
                ..Cost::default()
            },
            out.consumed_capacity.as_slice(),
        );
        Ok(out.items.unwrap_or_default())
    }

    pub(super) fn fence(
        &self,
        claim: &ClaimedBatch,
        update: UpdateItemFluentBuilder,
    ) -> UpdateItemFluentBuilder {
        update
            .condition_expression("#state = :processing AND version = :v")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":processing", s(BatchState::Processing.as_str()))
            .expression_attribute_values(":v", n(claim.version))
    }

    pub(super) async fn fenced_update(
        &self,
        claim: &ClaimedBatch,
        update: UpdateItemFluentBuilder,
    ) -> Result<(), StoreError> {
        // The item write and the index entry's move.
        let cost = Cost {
            requests: 1,
            write_units: 3.0,
            ..Cost::default()
        };
        match self
            .send_update(&claim.job_id, self.fence(claim, update), cost)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Err(StoreError::claim_lost(claim)),
            Err(e) => Err(StoreError::backend("UpdateItem", e)),
        }
    }

    /// Every packed entry of one partition whose sort key starts with
    /// `prefix`, in sort-key order (a consistent, paginated Query).
    pub(super) async fn query_packed<T: codec::Entry>(
        &self,
        job: &JobId,
        pk: String,
        prefix: &str,
    ) -> Result<Vec<T>, StoreError> {
        Ok(self
            .query_parts(job, pk, prefix)
            .await?
            .into_iter()
            .flat_map(|(_, entries)| entries)
            .collect())
    }

    /// Like `query_packed`, item by item: each item's sort key with its
    /// entries.
    pub(super) async fn query_parts<T: codec::Entry>(
        &self,
        job: &JobId,
        pk: String,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<T>)>, StoreError> {
        let mut parts = Vec::new();
        let mut query = self
            .client
            .query()
            .table_name(&self.table)
            .expression_attribute_values(":pk", s(pk))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        // DynamoDB refuses an empty key value: no prefix, no condition on it.
        query = if prefix.is_empty() {
            query.key_condition_expression("pk = :pk")
        } else {
            query
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":prefix", s(prefix))
        };
        let mut pages = query.into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| StoreError::backend("Query", e))?;
            parts.extend(self.unpack_page(job, page)?);
        }
        Ok(parts)
    }

    /// The packed items of one consistent query page, its reads metered.
    fn unpack_page<T: codec::Entry>(
        &self,
        job: &JobId,
        page: aws_sdk_dynamodb::operation::query::QueryOutput,
    ) -> Result<Vec<(String, Vec<T>)>, StoreError> {
        let size: usize = page.items().iter().map(item_size).sum();
        let computed = Cost {
            requests: 1,
            read_units: read_units(size, true),
            ..Cost::default()
        };
        self.meter
            .record(job, computed, page.consumed_capacity.as_slice());
        let mut parts = Vec::new();
        for item in page.items.unwrap_or_default() {
            let packed: PackedItem = from_item(item).map_err(|e| corrupt(job, e))?;
            let entries = codec::unpack::<T>(&packed.d).map_err(|e| corrupt(job, e))?;
            parts.push((packed.sk, entries));
        }
        Ok(parts)
    }

    /// Up to `limit` packed items of partition `pk` after sort key `after`,
    /// in one query, and whether more follow.
    pub(super) async fn query_parts_after<T: codec::Entry>(
        &self,
        job: &JobId,
        pk: String,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, Vec<T>)>, bool), StoreError> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .expression_attribute_values(":pk", s(pk))
            .consistent_read(true)
            .limit(limit.clamp(1, 1000) as i32)
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        let query = match after {
            None => query.key_condition_expression("pk = :pk"),
            Some(after) => query
                .key_condition_expression("pk = :pk AND sk > :after")
                .expression_attribute_values(":after", s(after)),
        };
        let page = query
            .send()
            .await
            .map_err(|e| StoreError::backend("Query", e))?;
        let more = page.last_evaluated_key.is_some();
        Ok((self.unpack_page(job, page)?, more))
    }
}
