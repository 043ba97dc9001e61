//! The metered calls every operation goes through: one place that records
//! what each request costs and retries what the SDK does not.

use super::*;

impl DynamoStore {
    pub(super) async fn get(
        &self,
        job: &JobId,
        pk: String,
        sk: &str,
    ) -> Result<Option<Item>, StoreError> {
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
        self.meter
            .record(job, computed, out.consumed_capacity.as_slice());
        Ok(out.item)
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

    pub(super) fn update(
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
    pub(super) async fn transact(
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
                write_units: 0.0,
                read_units: read_units(size, false),
            },
            out.consumed_capacity.as_slice(),
        );
        Ok(out.items.unwrap_or_default())
    }

    pub(super) fn fence(
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

    pub(super) async fn fenced_update(
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

    /// Every packed entry of one partition whose sort key starts with
    /// `prefix`, in sort-key order (a consistent, paginated Query).
    pub(super) async fn query_packed<T: serde::de::DeserializeOwned>(
        &self,
        job: &JobId,
        pk: String,
        prefix: &str,
    ) -> Result<Vec<T>, StoreError> {
        let mut entries = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(pk))
            .expression_attribute_values(":prefix", s(prefix))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| StoreError::backend("Query", e))?;
            let size: usize = page.items().iter().map(item_size).sum();
            let computed = Cost {
                requests: 1,
                write_units: 0.0,
                read_units: read_units(size, true),
            };
            self.meter
                .record(job, computed, page.consumed_capacity.as_slice());
            for item in page.items.unwrap_or_default() {
                let packed: PackedItem = from_item(item).map_err(|e| corrupt(job, e))?;
                entries.extend(codec::unpack::<T>(&packed.d).map_err(|e| corrupt(job, e))?);
            }
        }
        Ok(entries)
    }
}
