//! Creating a job and writing its batches, fenced by the prepare lease.

use super::*;

impl DynamoStore {
    pub(super) async fn create_job(
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

    pub(super) async fn acquire_prepare(
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

    pub(super) async fn add_batch(
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

    pub(super) async fn release_prepare(
        &self,
        job: &JobId,
        lease: &PrepareLease,
    ) -> Result<(), StoreError> {
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

    pub(super) async fn finish_prepare(
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
}
