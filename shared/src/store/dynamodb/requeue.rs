//! A retry's side of the batches: listing the batches with processing
//! failures a page at a time, and putting one back to be claimed again,
//! within the round's requeue pass.

use super::*;

impl DynamoStore {
    /// A page is one query of one failure partition: the cursor is
    /// `<partition>/<last sort key read>` (empty: from its start).
    pub(super) async fn retryable_batches(
        &self,
        job: &JobId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<RetryablePage, StoreError> {
        let (shard, after) = match after {
            None => (0, None),
            Some(cursor) => {
                let (shard, sk) = cursor
                    .split_once('/')
                    .and_then(|(shard, sk)| Some((shard.parse::<u64>().ok()?, sk)))
                    .filter(|(shard, _)| *shard < FAILURE_SHARDS)
                    .ok_or_else(|| corrupt(job, format!("requeue cursor {cursor:?}")))?;
                (shard, Some(sk).filter(|sk| !sk.is_empty()))
            }
        };
        let (parts, more) = self
            .query_parts_after::<FailedRecord>(job, failure_pk(job, shard), after, limit)
            .await?;
        let mut page = RetryablePage::default();
        for (sk, failures) in &parts {
            if failures.iter().any(|f| !f.stage.is_validation()) {
                // A batch's failures may span items: list it once.
                let index = failure_batch(sk);
                if index.is_some() && page.batches.last().copied() != index {
                    page.batches.extend(index);
                }
            }
        }
        page.next = match (more, parts.last()) {
            (true, Some((sk, _))) => Some(format!("{shard}/{sk}")),
            _ if shard + 1 < FAILURE_SHARDS => Some(format!("{}/", shard + 1)),
            _ => None,
        };
        Ok(page)
    }

    pub(super) async fn requeue_batch(
        &self,
        job: &JobId,
        index: u64,
        round: u32,
    ) -> Result<Option<u64>, StoreError> {
        let Some(item) = self.get(job, batch_pk(job, index), BATCH_SK).await? else {
            return Ok(None);
        };
        let batch: BatchItem = from_item(item).map_err(|e| corrupt(job, e))?;
        let (shards, counters) = self.sharding(job).await?;
        let ran_this_round = batch.round.is_some_and(|r| r >= round);
        if !matches!(batch.state, BatchState::Done | BatchState::Failed) || ran_this_round {
            return Ok(None);
        }
        let rerun = self
            .failed_records(job, index)
            .await?
            .iter()
            .filter(|f| !f.stage.is_validation())
            .count() as u64;
        if rerun == 0 {
            return Ok(None);
        }
        let kept = batch.failed.saturating_sub(rerun);
        // The batch goes back to the lease index as expired (claimable at
        // once), remembering what its earlier run left; its rerun records
        // leave the counters until the rerun commits.
        let batch_update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(batch_pk(job, index), BATCH_SK)))
            .update_expression(
                "SET #state = :processing, leaseUntil = :zero, gpk = :gpk, gsk = :zero, \
                 queuedVersion = version, failed = :kept, priorProcessed = #processed, priorFailed = :kept, \
                 #round = :round \
                 REMOVE worker",
            )
            .condition_expression(
                "version = :v AND #state IN (:done, :failed) \
                 AND (attribute_not_exists(#round) OR #round < :round)",
            )
            .set_expression_attribute_names(Some(names(&[
                ("#state", "state"),
                ("#processed", "processed"),
                ("#round", "round"),
            ])))
            .set_expression_attribute_values(Some(HashMap::from([
                (":processing".into(), s(BatchState::Processing.as_str())),
                (":done".into(), s(BatchState::Done.as_str())),
                (":failed".into(), s(BatchState::Failed.as_str())),
                (":zero".into(), n(0)),
                (":gpk".into(), s(lease_gpk(job, shards, index))),
                (":kept".into(), n(kept)),
                (":v".into(), n(batch.version)),
                (":round".into(), n(round)),
            ])))
            .build()
            .expect("update is complete");
        // Only inside the round's requeue pass: a pass that runs late, after
        // the job ended or moved on, changes nothing.
        let in_pass = ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(job), JOB_SK)))
            .condition_expression(format!(
                "#status = :processing AND requeuing = :true AND {}",
                super::jobs::round_is(round)
            ))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":processing", s(JobStatus::Processing.as_str()))
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .expression_attribute_values(":round", n(round))
            .build()
            .expect("condition check is complete");
        // Three items doubled, and the index entry put back.
        let own = Cost {
            requests: 1,
            write_units: 7.0,
            ..Cost::default()
        };
        let cost = self.meter.take(job, own);
        let mut counter_values: Item = HashMap::from([
            (":minus_one".into(), n(-1)),
            (":minus_rerun".into(), n(-(rerun as i64))),
        ]);
        with_cost(&mut counter_values, cost);
        counter_values.insert(":now".into(), n(self.clock.now_ms()));
        let expiry = self.expiry_clause(&mut counter_values);
        let counter_update = self.counter_shard_update(
            (job, counters),
            format!(
                "{ADD_COST}, batchesDone :minus_one, failed :minus_rerun, retryable :minus_rerun SET updatedAt = :now{expiry}"
            ),
            counter_values,
            None,
        );
        let items = vec![
            TransactWriteItem::builder().update(batch_update).build(),
            TransactWriteItem::builder().update(counter_update).build(),
            TransactWriteItem::builder()
                .condition_check(in_pass)
                .build(),
        ];
        // No idempotency token: racing retries build different requests
        // for one batch (a random counter shard, their own costs), and
        // DynamoDB refuses a token reused with other parameters. The batch
        // condition fences a second requeue instead; an SDK retry after a
        // lost answer finds the batch requeued and says so.
        match self.transact(job, items, None, own, None).await {
            Ok(Ok(())) => Ok(Some(rerun)),
            // Requeued by a racing pass, or the pass is over.
            Ok(Err(_)) => {
                self.meter.restore(job, cost);
                Ok(None)
            }
            Err(e) => {
                self.meter.restore(job, cost);
                Err(e)
            }
        }
    }
}
