//! Handing out batches and finishing them: the cursor shards, claims,
//! leases and the fenced commit transaction.

use super::*;

impl DynamoStore {
    /// The job item and every cursor shard, in one consistent read.
    pub(super) async fn claim_view(
        &self,
        job: &JobId,
    ) -> Result<Option<(JobItem, Vec<CursorItem>)>, StoreError> {
        let mut keys = vec![key(job_pk(job), JOB_SK)];
        keys.extend((0..SHARDS).map(|c| key(cursor_pk(job, c), CURSOR_SK)));
        let mut items = self.get_many(job, keys).await?.into_iter();
        let Some(Some(job_item)) = items.next() else {
            return Ok(None);
        };
        let job_item: JobItem = from_item(job_item).map_err(|e| corrupt(job, e))?;
        let cursors = items
            .map(|i| match i {
                Some(i) => from_item(i).map_err(|e| corrupt(job, e)),
                None => Ok(CursorItem::default()),
            })
            .collect::<Result<Vec<CursorItem>, StoreError>>()?;
        Ok(Some((job_item, cursors)))
    }

    /// Advances cursor shard `shard` unless it already handed out its
    /// `limit` published batches; the batch index it handed out, or `None`
    /// when another worker got there first.
    async fn advance_cursor(
        &self,
        job: &JobId,
        shard: u64,
        limit: u64,
    ) -> Result<Option<u64>, StoreError> {
        let mut values: Item = HashMap::from([
            (":zero".into(), n(0)),
            (":one".into(), n(1)),
            (":limit".into(), n(limit)),
        ]);
        let expiry = self.expiry_clause(&mut values);
        let update = self
            .update(cursor_pk(job, shard), CURSOR_SK)
            .update_expression(format!("SET k = if_not_exists(k, :zero) + :one{expiry}"))
            .condition_expression("attribute_not_exists(k) OR k < :limit")
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::UpdatedNew);
        match self.send_update(job, update, write(SMALL_ITEM_BYTES)).await {
            Ok(out) => {
                let k = out
                    .attributes()
                    .and_then(|a| a.get("k"))
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| corrupt(job, "cursor update returned no cursor"))?;
                Ok(Some(shard_batch(shard, k - 1)))
            }
            Err(e) if is_condition_failed(&e) => Ok(None),
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
        round: u32,
    ) -> Result<Option<ClaimedBatch>, StoreError> {
        let until = now_ms + lease_ms;
        let update = self
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
            .return_values(ReturnValue::AllNew);
        // The item write and the index entry's move (delete + put).
        let cost = Cost {
            requests: 1,
            write_units: 3.0,
            ..Cost::default()
        };
        match self.send_update(job, update, cost).await {
            Ok(out) => {
                let item: BatchItem =
                    from_item(out.attributes.unwrap_or_default()).map_err(|e| corrupt(job, e))?;
                Ok(Some(ClaimedBatch {
                    job_id: job.clone(),
                    index,
                    version: item.version,
                    worker: worker.to_owned(),
                    lease_until_ms: until,
                    record_count: item.records,
                    attempt: item.version - item.queued_version,
                    rerun: item.rerun(),
                    last_error: item.last_error,
                    round,
                }))
            }
            Err(e) if is_condition_failed(&e) => Ok(None),
            Err(e) => Err(StoreError::backend("UpdateItem", e)),
        }
    }

    /// Published batches in one lease-index shard whose lease expired, or
    /// that a cursor handed out but nobody claimed (lease 0).
    pub(super) async fn expired(
        &self,
        job: &JobId,
        shard: u64,
        now_ms: i64,
        ready: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let items = self
            .index_query(
                job,
                "gpk = :gpk AND gsk < :now",
                lease_shard_gpk(job, shard),
                now_ms,
                25,
            )
            .await?;
        Ok(items
            .iter()
            .filter_map(|i| batch_index(job, i))
            .filter(|index| *index < ready)
            .collect())
    }

    pub(super) async fn claim_batch(
        &self,
        job: &JobId,
        worker: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Claim, StoreError> {
        // Each worker starts at its own shard, so workers rarely race for
        // one cursor. The loop ends: every pass either claims, or finds
        // that another worker advanced a cursor or claimed a batch, and
        // there are finitely many of both.
        let home = shard_of(worker);
        loop {
            let Some((item, cursors)) = self.claim_view(job).await? else {
                return Err(StoreError::JobNotFound(job.clone()));
            };
            if item.status.is_final() {
                return Ok(Claim::JobFinished(item.status));
            }
            let ready = item.batches_ready;
            let open = (0..SHARDS)
                .map(|i| (home + i) % SHARDS)
                .find(|&c| cursors[c as usize].k < shard_len(ready, c));
            if let Some(shard) = open {
                if let Some(index) = self
                    .advance_cursor(job, shard, shard_len(ready, shard))
                    .await?
                {
                    if let Some(c) = self
                        .try_claim(job, index, worker, now_ms, lease_ms, item.retries)
                        .await?
                    {
                        return Ok(Claim::Batch(c));
                    }
                }
                continue;
            }
            // Every published batch was handed out: look for abandoned ones.
            // While prepare runs, workers come back here each time they wake
            // to wait; a lease expires only after `lease_ms`, so searching
            // more often than every quarter lease finds nothing new.
            if !item.prepared && !self.search_due(job, now_ms, lease_ms) {
                return Ok(Claim::Wait);
            }
            for i in 0..SHARDS {
                let shard = (home + i) % SHARDS;
                for index in self.expired(job, shard, now_ms, ready).await? {
                    if let Some(c) = self
                        .try_claim(job, index, worker, now_ms, lease_ms, item.retries)
                        .await?
                    {
                        return Ok(Claim::Batch(c));
                    }
                }
            }
            self.searched
                .lock()
                .expect("search times poisoned")
                .insert(job.clone(), now_ms);
            // A requeue pass puts batches back as it goes: wait for it.
            return Ok(if item.prepared && !item.requeuing {
                Claim::NoneAvailable
            } else {
                Claim::Wait
            });
        }
    }

    fn search_due(&self, job: &JobId, now_ms: i64, lease_ms: i64) -> bool {
        let searched = self.searched.lock().expect("search times poisoned");
        searched
            .get(job)
            .is_none_or(|last| now_ms - last >= lease_ms / 4 || now_ms < *last)
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

    pub(super) async fn yield_batch(&self, claim: &ClaimedBatch) -> Result<(), StoreError> {
        // A claim's attempt is `version - queuedVersion`: the next claim
        // bumps the version, and this bumps queuedVersion with it, in the
        // same fenced write as the release.
        let update = self
            .update(batch_pk(&claim.job_id, claim.index), BATCH_SK)
            .update_expression("SET leaseUntil = :zero, gsk = :zero ADD queuedVersion :one")
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1));
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
        let packed = codec::pack(&failed);
        // A rerun replaces the earlier run's failure items: those past the
        // new count go.
        let stale = match claim.rerun {
            Some(_) => self.failure_parts(job, claim.index).await?,
            None => Vec::new(),
        };
        let stale: Vec<String> = stale
            .into_iter()
            .filter(|sk| (0..packed.len()).all(|i| failure_sk(claim.index, i) != *sk))
            .collect();
        let failure_items = packed
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
            // Batch and counter items, doubled in a transaction, the index
            // entry removal, the failure items and the stale ones deleted.
            write_units: 2.0 * (2.0 + failure_units + stale.len() as f64) + 1.0,
            ..Cost::default()
        };
        let cost = self.meter.take(job, own);

        let mut batch_values: Item = HashMap::from([
            (":processing".into(), s(BatchState::Processing.as_str())),
            (":v".into(), n(claim.version)),
            (":st".into(), s(outcome.state.as_str())),
            (":p".into(), n(outcome.processed)),
            (":f".into(), n(outcome.failed.len())),
            (":at".into(), n(now_ms)),
            (":round".into(), n(claim.round)),
        ]);
        let mut set =
            "SET #state = :st, #processed = :p, failed = :f, finishedAt = :at, #round = :round"
                .to_string();
        if let Some(e) = &outcome.error {
            batch_values.insert(":e".into(), s(truncate_value(e)));
            set.push_str(", lastError = :e");
        }
        let batch_update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(batch_pk(job, claim.index), BATCH_SK)))
            .update_expression(format!(
                "{set} REMOVE gpk, gsk, priorProcessed, priorFailed"
            ))
            .condition_expression("#state = :processing AND version = :v")
            .set_expression_attribute_names(Some(names(&[
                ("#state", "state"),
                ("#processed", "processed"),
                ("#round", "round"),
            ])))
            .set_expression_attribute_values(Some(batch_values))
            .build()
            .expect("update is complete");
        // A rerun's outcome covers the whole batch; the counters still hold
        // what its earlier run left (see `requeue_batch`).
        let prior = claim.rerun.unwrap_or(Rerun {
            processed: 0,
            failed: 0,
        });
        let mut counter_values: Item = HashMap::from([
            (":one".into(), n(1)),
            (":at".into(), n(now_ms)),
            (
                ":p".into(),
                n(outcome.processed as i64 - prior.processed as i64),
            ),
            (
                ":f".into(),
                n(outcome.failed.len() as i64 - prior.failed as i64),
            ),
            // A rerun's earlier processing failures left the count when it
            // was requeued: whatever fails in processing now is new.
            (
                ":r".into(),
                n(outcome
                    .failed
                    .iter()
                    .filter(|f| !f.stage.is_validation())
                    .count()),
            ),
        ]);
        with_cost(&mut counter_values, cost);
        let expiry = self.expiry_clause(&mut counter_values);
        let counter_update = self.counter_shard_update(
            job,
            format!(
                "{ADD_COST}, batchesDone :one, #processed :p, failed :f, retryable :r SET updatedAt = :at{expiry}"
            ),
            counter_values,
            Some(names(&[("#processed", "processed")])),
        );
        let mut items = vec![
            TransactWriteItem::builder().update(batch_update).build(),
            TransactWriteItem::builder().update(counter_update).build(),
        ];
        for item in failure_items {
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .build()
                .expect("put is complete");
            items.push(TransactWriteItem::builder().put(put).build());
        }
        for sk in stale {
            let delete = Delete::builder()
                .table_name(&self.table)
                .set_key(Some(key(failure_pk(job, claim.index), &sk)))
                .build()
                .expect("delete is complete");
            items.push(TransactWriteItem::builder().delete(delete).build());
        }
        let tok = token(&[
            job.as_str(),
            "commit",
            &claim.index.to_string(),
            &claim.version.to_string(),
        ]);
        match self.transact(job, items, own, Some(tok)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Cancelled::TokenReused)) => {
                // A commit of this very claim went out before (its answer
                // lost, or a second call): if it landed, the batch is
                // committed at this version and counted once.
                self.meter.restore(job, cost);
                match self.batch_info(job, claim.index).await? {
                    Some(b)
                        if b.version == claim.version
                            && matches!(b.state, BatchState::Done | BatchState::Failed) =>
                    {
                        Ok(())
                    }
                    _ => Err(StoreError::claim_lost(claim)),
                }
            }
            Ok(Err(refused)) => {
                let at = match refused {
                    Cancelled::Condition(at) => Some(at),
                    _ => None,
                };
                tracing::debug!(job_id = %job, batch = claim.index, item = ?at, "commit refused by its condition");
                self.meter.restore(job, cost);
                Err(StoreError::claim_lost(claim))
            }
            Err(e) => {
                self.meter.restore(job, cost);
                Err(e)
            }
        }
    }
}

impl DynamoStore {
    /// An update of one of the job's counter shards, picked at random, not
    /// the job item: transactions running at the same time rarely meet on
    /// one item (a transaction holds its items), and each shard takes about
    /// 1/SHARDS of them. The pick is made once, so a retry of the
    /// transaction sends the same one.
    fn counter_shard_update(
        &self,
        job: &JobId,
        expression: String,
        values: Item,
        names: Option<HashMap<String, String>>,
    ) -> Update {
        Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(
                counter_pk(job, self.rng.below(SHARDS)),
                COUNTERS_SK,
            )))
            .update_expression(expression)
            .set_expression_attribute_names(names)
            .set_expression_attribute_values(Some(values))
            .build()
            .expect("update is complete")
    }

    /// Sort keys of a batch's failure items.
    async fn failure_parts(&self, job: &JobId, index: u64) -> Result<Vec<String>, StoreError> {
        let parts = self
            .query_parts::<FailedRecord>(job, failure_pk(job, index), &failure_sk_prefix(index))
            .await?;
        Ok(parts.into_iter().map(|(sk, _)| sk).collect())
    }

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
                (":gpk".into(), s(lease_gpk(job, index))),
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
            job,
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
        match self.transact(job, items, own, None).await {
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
            stage: f.stage,
        })
        .collect::<Vec<_>>()
        .into()
}
