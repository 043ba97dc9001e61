//! Committing a claimed batch: one fenced transaction writes its outcome,
//! its failure items and a counter shard's share of the job's totals;
//! failure detail is trimmed to what one transaction can carry.

use super::*;

impl DynamoStore {
    pub(super) async fn commit_batch(
        &self,
        claim: &ClaimedBatch,
        outcome: &BatchOutcome,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        // The commit releases the batch chained after this one, as the
        // claim saw it; prepare may have linked one since (it links only
        // while this batch is not final), which fails the commit's
        // condition: commit again with that one.
        let mut next = claim.next;
        for _ in 0..3 {
            match self.commit_once(claim, outcome, now_ms, next).await {
                Err(StoreError::ClaimLost { .. }) if claim.rerun.is_none() => {
                    let item = self.get(
                        &claim.job_id,
                        batch_pk(&claim.job_id, claim.index),
                        BATCH_SK,
                    );
                    let batch = match item.await? {
                        Some(item) => Some(
                            from_item::<BatchItem>(item).map_err(|e| corrupt(&claim.job_id, e))?,
                        ),
                        None => None,
                    };
                    match batch {
                        Some(b)
                            if b.version == claim.version
                                && b.state == BatchState::Processing
                                && b.next != next =>
                        {
                            next = b.next;
                        }
                        _ => return Err(StoreError::claim_lost(claim)),
                    }
                }
                done => return done,
            }
        }
        Err(StoreError::claim_lost(claim))
    }

    async fn commit_once(
        &self,
        claim: &ClaimedBatch,
        outcome: &BatchOutcome,
        now_ms: i64,
        next: Option<u64>,
    ) -> Result<(), StoreError> {
        let job = &claim.job_id;
        let (shards, counters) = self.sharding(job).await?;
        // A rerun's chained batch was released by the first run.
        let next = next.filter(|_| claim.rerun.is_none());
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
        let released = f64::from(u8::from(next.is_some()));
        let own = Cost {
            requests: 1,
            // Batch and counter items, doubled in a transaction, the index
            // entry removal, the failure items and the stale ones deleted,
            // and the released batch with its index entry.
            write_units: 2.0 * (2.0 + failure_units + stale.len() as f64 + released)
                + 1.0
                + released,
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
        if let Some(next) = next {
            batch_values.insert(":next".into(), n(next));
        }
        let mut set =
            "SET #state = :st, #processed = :p, failed = :f, finishedAt = :at, #round = :round"
                .to_string();
        if let Some(e) = &outcome.error {
            batch_values.insert(":e".into(), s(truncate_value(e)));
            set.push_str(", lastError = :e");
        }
        let mut batch_names = vec![
            ("#state", "state"),
            ("#processed", "processed"),
            ("#round", "round"),
        ];
        if claim.rerun.is_none() {
            batch_names.push(("#next", "next"));
        }
        let batch_update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(batch_pk(job, claim.index), BATCH_SK)))
            .update_expression(format!(
                "{set} REMOVE gpk, gsk, priorProcessed, priorFailed"
            ))
            .condition_expression(match (claim.rerun, next) {
                (Some(_), _) => "#state = :processing AND version = :v",
                (None, Some(_)) => "#state = :processing AND version = :v AND #next = :next",
                (None, None) => {
                    "#state = :processing AND version = :v AND attribute_not_exists(#next)"
                }
            })
            .set_expression_attribute_names(Some(names(&batch_names)))
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
            (":d".into(), n(outcome.duplicates)),
        ]);
        with_cost(&mut counter_values, cost);
        let expiry = self.expiry_clause(&mut counter_values);
        let counter_update = self.counter_shard_update(
            (job, counters),
            format!(
                "{ADD_COST}, batchesDone :one, #processed :p, failed :f, retryable :r, duplicates :d SET updatedAt = :at{expiry}"
            ),
            counter_values,
            Some(names(&[("#processed", "processed")])),
        );
        let mut items = vec![
            TransactWriteItem::builder().update(batch_update).build(),
            TransactWriteItem::builder().update(counter_update).build(),
        ];
        if let Some(next) = next {
            let release = Update::builder()
                .table_name(&self.table)
                .set_key(Some(key(batch_pk(job, next), BATCH_SK)))
                .update_expression("SET #state = :pending, gpk = :gpk, gsk = :zero")
                .condition_expression("#state = :waiting")
                .set_expression_attribute_names(Some(names(&[("#state", "state")])))
                .set_expression_attribute_values(Some(HashMap::from([
                    (":pending".into(), s(BatchState::Pending.as_str())),
                    (":waiting".into(), s(BatchState::Waiting.as_str())),
                    (":gpk".into(), s(lease_gpk(job, shards, next))),
                    (":zero".into(), n(0)),
                ])))
                .build()
                .expect("update is complete");
            items.push(TransactWriteItem::builder().update(release).build());
        }
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
            &next.map_or(String::new(), |n| n.to_string()),
        ]);
        // The counter shard's update is second.
        let counter = Some((1, counters));
        match self.transact(job, items, counter, own, Some(tok)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(refused)) => {
                // A commit of this very claim may have gone out before (its
                // answer lost, or a second call, under this token or one of
                // a retry on another counter shard): if it landed, the batch
                // is committed at this version and counted once.
                self.meter.restore(job, cost);
                match self.batch_info(job, claim.index).await? {
                    Some(b)
                        if b.version == claim.version
                            && matches!(b.state, BatchState::Done | BatchState::Failed) =>
                    {
                        Ok(())
                    }
                    _ => {
                        let at = match refused {
                            Cancelled::Condition(at) => Some(at),
                            _ => None,
                        };
                        tracing::debug!(job_id = %job, batch = claim.index, item = ?at, "commit refused by its condition");
                        Err(StoreError::claim_lost(claim))
                    }
                }
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
    /// 1/shards of them (`shards`, the job's count). The pick is made
    /// once; a retry of the transaction sends the same one unless that one
    /// was busy (see `transact`).
    pub(super) fn counter_shard_update(
        &self,
        (job, shards): (&JobId, u64),
        expression: String,
        values: Item,
        names: Option<HashMap<String, String>>,
    ) -> Update {
        Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(
                counter_pk(job, self.rng.below(shards)),
                COUNTERS_SK,
            )))
            .update_expression(expression)
            .set_expression_attribute_names(names)
            .set_expression_attribute_values(Some(values))
            .build()
            .expect("update is complete")
    }

    /// `item`, a counter shard's update, moved to another of `shards`.
    pub(super) fn other_counter_shard(
        &self,
        (job, shards): (&JobId, u64),
        item: &TransactWriteItem,
    ) -> TransactWriteItem {
        let Some(update) = item.update() else {
            return item.clone();
        };
        let mut moved = update.clone();
        moved.key = key(counter_pk(job, self.rng.below(shards)), COUNTERS_SK);
        TransactWriteItem::builder().update(moved).build()
    }

    /// Sort keys of a batch's failure items.
    async fn failure_parts(&self, job: &JobId, index: u64) -> Result<Vec<String>, StoreError> {
        let parts = self
            .query_parts::<FailedRecord>(job, failure_pk(job, index), &failure_sk_prefix(index))
            .await?;
        Ok(parts.into_iter().map(|(sk, _)| sk).collect())
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
