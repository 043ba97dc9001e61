//! Creating a job and writing its batches. Batch writes are idempotent and
//! touch only the batch's own partition; the job item is written once per
//! published group of batches, fenced by the prepare lease.

use super::*;

impl DynamoStore {
    pub(super) async fn create_job_of(
        &self,
        source: &SourceRef,
        kind: &str,
        lease: &PrepareLease,
        now_ms: i64,
    ) -> Result<CreateOutcome, StoreError> {
        let id = source.job_id();
        let mut item = JobItem::new(
            source,
            &lease.owner,
            now_ms + lease.lease_ms,
            now_ms,
            self.expires_at(now_ms),
        );
        item.kind = Some(kind.to_owned()).filter(|k| !k.is_empty());
        let attrs: Item = to_item(&item).map_err(|e| corrupt(&id, e))?;
        let size = item_size(&attrs);
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(attrs))
            .condition_expression("attribute_not_exists(pk)");
        let result = self.retry_busy(&id, || put.clone().send()).await;
        self.meter.record(&id, write(size), &[]);
        match result {
            Ok(_) => {
                self.remember_shards(&id, &item);
                Ok(CreateOutcome::Created(item.into_job(&[], &[])))
            }
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

    pub(super) async fn pin_definition(
        &self,
        job: &JobId,
        definition: &str,
    ) -> Result<String, StoreError> {
        let mut item = key(job_pk(job), DEFINITION_SK);
        item.insert("d".into(), s(definition));
        if let Some(at) = self.expires_at(self.clock.now_ms()) {
            item.insert("expiresAt".into(), n(at));
        }
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)");
        let size = definition.len() + 32;
        let result = self.retry_busy(job, || put.clone().send()).await;
        self.meter.record(job, write(size), &[]);
        match result {
            Ok(_) => Ok(definition.to_owned()),
            Err(e) if is_condition_failed(&e) => self
                .pinned_definition(job)
                .await?
                .ok_or_else(|| corrupt(job, "pinned definition vanished")),
            Err(e) => Err(StoreError::backend("PutItem", e)),
        }
    }

    /// `c` on the definition item, set once: every prepare of the job
    /// reads the same header, so a second write would change nothing.
    pub(super) async fn pin_columns(
        &self,
        job: &JobId,
        columns: &[String],
    ) -> Result<(), StoreError> {
        let list = AttributeValue::L(columns.iter().map(s).collect());
        let update = self
            .update(job_pk(job), DEFINITION_SK)
            .update_expression("SET c = if_not_exists(c, :c)")
            .expression_attribute_values(":c", list);
        // The item holds the definition too, which the update rewrites:
        // about a kilobyte, plus the names.
        let size = SMALL_ITEM_BYTES + columns.iter().map(|c| c.len() + 3).sum::<usize>();
        self.send_update(job, update, write(size))
            .await
            .map_err(|e| StoreError::backend("UpdateItem", e))?;
        Ok(())
    }

    pub(super) async fn acquire_prepare(
        &self,
        job: &JobId,
        lease: &PrepareLease,
        now_ms: i64,
    ) -> Result<Option<Job>, StoreError> {
        let update = self
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
            .expression_attribute_values(":now", n(now_ms));
        match self.send_update(job, update, write(SMALL_ITEM_BYTES)).await {
            Ok(_) => self.get_job(job).await,
            Err(e) if is_condition_failed(&e) => Ok(None),
            Err(e) => Err(StoreError::backend("UpdateItem", e)),
        }
    }

    /// Records of every batch first, packed, in as few BatchWriteItem
    /// requests as their items allow: a batch item exists only with all of
    /// its records stored. Rewriting records is harmless: batches are cut
    /// deterministically, so the content is identical. Then each batch
    /// item, conditionally and all at once.
    pub(super) async fn write_batches(
        &self,
        job: &JobId,
        batches: &[NewBatch<'_>],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let expires_at = self.expires_at(now_ms);
        let mut records = Vec::new();
        let mut chunk_counts = Vec::with_capacity(batches.len());
        for batch in batches {
            let pk = batch_pk(job, batch.index);
            let chunks = codec::pack(batch.records);
            chunk_counts.push(chunks.len() as u64);
            for (i, d) in chunks.into_iter().enumerate() {
                let item = to_item(PackedItem {
                    pk: pk.clone(),
                    sk: chunk_sk(i),
                    d,
                    expires_at,
                })
                .map_err(|e| corrupt(job, e))?;
                records.push(item);
            }
        }
        // The records and the batches' own items at once: nothing written
        // here is claimable before `publish`, which comes after both.
        let shards = self.shards(job).await?;
        let puts = batches
            .iter()
            .zip(chunk_counts)
            .map(|(batch, chunks)| self.put_batch_item((job, shards), batch, chunks, expires_at));
        futures::future::try_join(
            self.put_all(job, records),
            futures::future::try_join_all(puts),
        )
        .await?;
        Ok(())
    }

    /// A batch's own item, never over an existing one: it may be claimed
    /// or done already.
    async fn put_batch_item(
        &self,
        (job, shards): (&JobId, u64),
        batch: &NewBatch<'_>,
        chunks: u64,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let pk = batch_pk(job, batch.index);
        let waits = batch.after.is_some();
        let batch_item = BatchItem {
            pk,
            sk: BATCH_SK.into(),
            index: batch.index,
            state: if waits {
                BatchState::Waiting
            } else {
                BatchState::Pending
            },
            version: 0,
            records: batch.records.len() as u64,
            chunks,
            worker: None,
            lease_until: 0,
            // A waiting batch joins the lease index when it is released.
            gpk: (!waits).then(|| lease_gpk(job, shards, batch.index)),
            gsk: (!waits).then_some(0),
            processed: 0,
            failed: 0,
            last_error: None,
            expires_at,
            content: BatchContent::Records,
            queued_version: 0,
            prior_processed: None,
            prior_failed: None,
            round: None,
            next: None,
        };
        let attrs: Item = to_item(&batch_item).map_err(|e| corrupt(job, e))?;
        // The item and its index entry.
        let cost = Cost {
            requests: 1,
            write_units: write_units(item_size(&attrs)) + 1.0,
            ..Cost::default()
        };
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(attrs))
            .condition_expression("attribute_not_exists(pk)");
        let result = self.retry_busy(job, || put.clone().send()).await;
        self.meter.record(job, cost, &[]);
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(StoreError::backend("PutItem", e)),
        }
    }

    pub(super) async fn link_batch(
        &self,
        job: &JobId,
        after: u64,
        index: u64,
    ) -> Result<(), StoreError> {
        let update = self
            .update(batch_pk(job, after), BATCH_SK)
            .update_expression("SET #next = :next")
            .condition_expression("attribute_exists(pk) AND #state <> :done AND #state <> :failed")
            .expression_attribute_names("#next", "next")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":next", n(index))
            .expression_attribute_values(":done", s(BatchState::Done.as_str()))
            .expression_attribute_values(":failed", s(BatchState::Failed.as_str()));
        match self.send_update(job, update, write(SMALL_ITEM_BYTES)).await {
            Ok(_) => Ok(()),
            // Ended already (or missing, which the release below finds):
            // nobody will release `index`, so this does.
            Err(e) if is_condition_failed(&e) => self.release_waiting(job, index).await,
            Err(e) => Err(StoreError::backend("UpdateItem", e)),
        }
    }

    /// Makes a waiting batch pending, with its lease index entry.
    pub(super) async fn release_waiting(&self, job: &JobId, index: u64) -> Result<(), StoreError> {
        let shards = self.shards(job).await?;
        let update = self
            .update(batch_pk(job, index), BATCH_SK)
            .update_expression("SET #state = :pending, gpk = :gpk, gsk = :zero")
            .condition_expression("#state = :waiting")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":pending", s(BatchState::Pending.as_str()))
            .expression_attribute_values(":waiting", s(BatchState::Waiting.as_str()))
            .expression_attribute_values(":gpk", s(lease_gpk(job, shards, index)))
            .expression_attribute_values(":zero", n(0));
        let cost = Cost {
            requests: 1,
            write_units: 2.0,
            ..Cost::default()
        };
        match self.send_update(job, update, cost).await {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => match self.batch_info(job, index).await? {
                Some(_) => Ok(()),
                None => Err(StoreError::Corrupt {
                    job: job.clone(),
                    message: format!("batch {index} to chain does not exist"),
                }),
            },
            Err(e) => Err(StoreError::backend("UpdateItem", e)),
        }
    }

    pub(super) async fn publish(
        &self,
        job: &JobId,
        lease: &PrepareLease,
        ready: u64,
        checkpoint: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let cost = self.meter.take(job, write(SMALL_ITEM_BYTES));
        let mut values: Item = HashMap::from([
            (":o".into(), s(&lease.owner)),
            (":ready".into(), n(ready)),
            (":now".into(), n(now_ms)),
            (":zero".into(), n(0)),
            (":until".into(), n(now_ms + lease.lease_ms)),
            (":false".into(), AttributeValue::Bool(false)),
            (":processing".into(), s(JobStatus::Processing.as_str())),
        ]);
        with_cost(&mut values, cost);
        // The checkpoint moves with the publication it belongs to.
        let checkpoint = match checkpoint {
            Some(checkpoint) => {
                values.insert(":cp".into(), s(checkpoint));
                ", prepareCheckpoint = :cp"
            }
            None => " REMOVE prepareCheckpoint",
        };
        let update = self
            .update(job_pk(job), JOB_SK)
            .update_expression(format!(
                "SET batchesReady = :ready, prepareLeaseUntil = :until, prepareFailures = :zero, \
                 updatedAt = :now\
                 {checkpoint} {ADD_COST}"
            ))
            .condition_expression(
                "#status = :processing AND prepareOwner = :o AND prepared = :false \
                 AND batchesReady <= :ready",
            )
            .expression_attribute_names("#status", "status")
            .set_expression_attribute_values(Some(values));
        if !self.update_carrying(job, update, cost).await? {
            return Err(StoreError::PrepareLeaseLost(job.clone()));
        }
        Ok(())
    }

    pub(super) async fn renew_prepare(
        &self,
        job: &JobId,
        lease: &PrepareLease,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let update = self
            .update(job_pk(job), JOB_SK)
            .update_expression("SET prepareLeaseUntil = :until")
            .condition_expression(
                "#status = :processing AND prepareOwner = :o AND prepared = :false",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":processing", s(JobStatus::Processing.as_str()))
            .expression_attribute_values(":o", s(&lease.owner))
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .expression_attribute_values(":until", n(now_ms + lease.lease_ms));
        match self.send_update(job, update, write(SMALL_ITEM_BYTES)).await {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Err(StoreError::PrepareLeaseLost(job.clone())),
            Err(e) => Err(StoreError::backend("UpdateItem", e)),
        }
    }

    pub(super) async fn note_prepare_failure(
        &self,
        job: &JobId,
        error: &str,
    ) -> Result<u32, StoreError> {
        let update = self
            .update(job_pk(job), JOB_SK)
            .update_expression("SET lastPrepareError = :e ADD prepareFailures :one")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":e", s(truncate_value(error)))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::UpdatedNew);
        match self.send_update(job, update, write(SMALL_ITEM_BYTES)).await {
            Ok(out) => Ok(out
                .attributes()
                .and_then(|a| a.get("prepareFailures"))
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(1)),
            Err(e) if is_condition_failed(&e) => Err(StoreError::JobNotFound(job.clone())),
            Err(e) => Err(StoreError::backend("UpdateItem", e)),
        }
    }

    pub(super) async fn release_prepare(
        &self,
        job: &JobId,
        lease: &PrepareLease,
    ) -> Result<(), StoreError> {
        let update = self
            .update(job_pk(job), JOB_SK)
            .update_expression("SET prepareLeaseUntil = :zero")
            .condition_expression("prepareOwner = :o")
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":o", s(&lease.owner));
        match self.send_update(job, update, write(SMALL_ITEM_BYTES)).await {
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
            (":processing".into(), s(JobStatus::Processing.as_str())),
            (":owed".into(), kind_set(EventKind::Prepared)),
        ]);
        with_cost(&mut values, cost);
        let update = self
            .update(job_pk(job), JOB_SK)
            .update_expression(format!(
                "SET prepared = :true, totalRecords = :tr, totalBatches = :tb, batchesReady = :tb \
                 REMOVE prepareOwner, prepareCheckpoint {ADD_COST}, owedEvents :owed"
            ))
            .condition_expression(
                "#status = :processing AND prepareOwner = :o AND prepared = :false \
                 AND batchesReady <= :tb",
            )
            .expression_attribute_names("#status", "status")
            .set_expression_attribute_values(Some(values));
        if !self.update_carrying(job, update, cost).await? {
            return Err(StoreError::PrepareLeaseLost(job.clone()));
        }
        self.get_job(job)
            .await?
            .ok_or_else(|| StoreError::JobNotFound(job.clone()))
    }
}
