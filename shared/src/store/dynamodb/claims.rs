//! Handing out batches and finishing them: the cursor, claims, leases and
//! the fenced commit transaction.

use super::*;

impl DynamoStore {
    /// Hands out the next batch index from the job's cursor; otherwise says
    /// why there is none (`Err` holds the claim answer to give).
    pub(super) async fn next_index(&self, job: &JobId) -> Result<Result<u64, Claim>, StoreError> {
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
    pub(super) async fn try_claim(
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
                self.meter
                    .record(job, cost, out.consumed_capacity.as_slice());
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

    /// Batches whose lease expired, or that the cursor handed out but nobody
    /// claimed: the index holds only unfinished batches, keyed by lease expiry
    /// (0 for never claimed).
    pub(super) async fn expired(&self, job: &JobId, now_ms: i64) -> Result<Vec<u64>, StoreError> {
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

    pub(super) async fn claim_batch(
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

    pub(super) async fn load_records(
        &self,
        job: &JobId,
        index: u64,
    ) -> Result<Vec<StagedRecord>, StoreError> {
        self.query_packed(job, batch_pk(job, index), "C#").await
    }

    pub(super) async fn extend_lease(
        &self,
        claim: &ClaimedBatch,
        until_ms: i64,
    ) -> Result<(), StoreError> {
        let update = self
            .update(batch_pk(&claim.job_id, claim.index), BATCH_SK)
            .update_expression("SET leaseUntil = :until, gsk = :until")
            .expression_attribute_values(":until", n(until_ms));
        self.fenced_update(claim, update).await
    }

    pub(super) async fn release_batch(
        &self,
        claim: &ClaimedBatch,
        error: &str,
    ) -> Result<(), StoreError> {
        let update = self
            .update(batch_pk(&claim.job_id, claim.index), BATCH_SK)
            .update_expression("SET leaseUntil = :zero, gsk = :zero, lastError = :e")
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":e", s(truncate_value(error)));
        self.fenced_update(claim, update).await
    }

    pub(super) async fn commit_batch(
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
