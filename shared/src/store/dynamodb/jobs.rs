//! Reading and ending jobs: finalization, failed records, the active-job
//! list and the lease view the sweeper uses.

use super::*;

impl DynamoStore {
    pub(super) async fn get_job(&self, job: &JobId) -> Result<Option<Job>, StoreError> {
        match self.get(job, job_pk(job), JOB_SK).await? {
            None => Ok(None),
            Some(item) => Ok(Some(
                from_item::<JobItem>(item)
                    .map_err(|e| corrupt(job, e))?
                    .into_job(),
            )),
        }
    }

    pub(super) async fn finalize(
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

    pub(super) async fn failed_records(
        &self,
        job: &JobId,
        batch: u64,
    ) -> Result<Vec<FailedRecord>, StoreError> {
        self.query_packed(job, failure_pk(job, batch), &failure_sk_prefix(batch))
            .await
    }

    pub(super) async fn active_jobs(&self) -> Result<Vec<JobId>, StoreError> {
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

    pub(super) async fn lease_view(
        &self,
        job: &JobId,
        now_ms: i64,
    ) -> Result<LeaseView, StoreError> {
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

    pub(super) async fn batch_info(
        &self,
        job: &JobId,
        index: u64,
    ) -> Result<Option<BatchInfo>, StoreError> {
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
