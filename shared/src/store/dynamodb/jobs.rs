//! Reading and ending jobs: the job with its summed shards, finalization,
//! failed records, the active-job list and the lease view the sweeper uses.

use super::*;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use futures::{StreamExt, TryStreamExt};

/// Lease-index partitions read at once when a job's stalled batches are
/// counted.
const PARALLEL_SHARD_READS: usize = 8;

impl DynamoStore {
    /// The job item, its cursor shards and its counter shards: one
    /// BatchGetItem, the same cost whatever the job's size.
    pub(super) async fn get_job(&self, job: &JobId) -> Result<Option<Job>, StoreError> {
        let (shards, counters) = self.sharding(job).await?;
        let mut keys = vec![key(job_pk(job), JOB_SK)];
        keys.extend((0..shards).map(|c| key(cursor_pk(job, c), CURSOR_SK)));
        keys.extend((0..counters).map(|c| key(counter_pk(job, c), COUNTERS_SK)));
        let mut items = self.get_many(job, keys).await?.into_iter();
        let Some(Some(job_item)) = items.next() else {
            return Ok(None);
        };
        let job_item: JobItem = from_item(job_item).map_err(|e| corrupt(job, e))?;
        let cursors = items
            .by_ref()
            .take(shards as usize)
            .map(|i| i.map(from_item).transpose().map(Option::unwrap_or_default))
            .collect::<Result<Vec<CursorItem>, _>>()
            .map_err(|e| corrupt(job, e))?;
        let counters = items
            .map(|i| i.map(from_item).transpose().map(Option::unwrap_or_default))
            .collect::<Result<Vec<CounterItem>, _>>()
            .map_err(|e| corrupt(job, e))?;
        Ok(Some(job_item.into_job(&counters, &cursors)))
    }

    pub(super) async fn finalize(
        &self,
        job: &JobId,
        fin: &Finalization,
        when: FinalizeWhen,
    ) -> Result<bool, StoreError> {
        if when == FinalizeWhen::AllBatchesDone {
            // Counters only grow, one commit per batch: once they add up to
            // the total, no batch is left to change them.
            match self.get_job(job).await? {
                Some(j) if j.all_batches_done() && !j.status.is_final() => {}
                _ => return Ok(false),
            }
        }
        let cost = self.meter.take(job, write(SMALL_ITEM_BYTES));
        let mut values: Item = HashMap::from([
            (":processing".into(), s(JobStatus::Processing.as_str())),
            (":st".into(), s(fin.status.as_str())),
            (":at".into(), n(fin.now_ms)),
            (":events".into(), s(PENDING_EVENTS)),
            (":lpk".into(), s(status_lpk(fin.status))),
        ]);
        with_cost(&mut values, cost);
        // The announcement joins whatever else is owed (a retried job's
        // earlier events were delivered before it could reopen).
        let mut add_owed = String::new();
        if let Some(kind) = EventKind::ending(fin.status) {
            values.insert(":owed".into(), kind_set(kind));
            add_owed.push_str(", owedEvents :owed");
        }
        // The job moves from the active list to the owed-events list.
        let mut set =
            "SET #status = :st, finishedAt = :at, gpk = :events, gsk = :at, lpk = :lpk".to_string();
        if let Some(reason) = &fin.reason {
            values.insert(":reason".into(), s(truncate_value(reason)));
            set.push_str(", failureReason = :reason");
        }
        if fin.report_owed {
            values.insert(":owed_report".into(), AttributeValue::Bool(true));
            set.push_str(", reportOwed = :owed_report");
        }
        let mut condition = "#status = :processing".to_string();
        if when == FinalizeWhen::AllBatchesDone {
            // Not while a retry's requeue pass puts batches back.
            values.insert(":true".into(), AttributeValue::Bool(true));
            condition.push_str(" AND prepared = :true AND attribute_not_exists(requeuing)");
        }
        // An unfinished prepare keeps its checkpoint: a retry resumes there.
        // A requeue pass under way ends with the round.
        let update = self
            .update(job_pk(job), JOB_SK)
            .update_expression(format!(
                "{set} REMOVE prepareOwner, report, requeuing, requeueCursor {ADD_COST}{add_owed}"
            ))
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names(&[("#status", "status")])))
            .set_expression_attribute_values(Some(values));
        self.update_carrying(job, update, cost).await
    }

    pub(super) async fn record_report(
        &self,
        job: &JobId,
        round: u32,
        location: Option<&str>,
    ) -> Result<bool, StoreError> {
        let update = self.owed_report_update(job, round, "");
        let update = match location {
            Some(location) => update
                .update_expression("SET report = :report REMOVE reportOwed, reportLease")
                .expression_attribute_values(":report", s(location)),
            None => update.update_expression("REMOVE reportOwed, reportLease"),
        };
        self.send_if_owed(job, update).await
    }

    pub(super) async fn lease_report(
        &self,
        job: &JobId,
        round: u32,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        let held = " AND (attribute_not_exists(reportLease) OR reportLease <= :now)";
        let update = self
            .owed_report_update(job, round, held)
            .update_expression("SET reportLease = :until")
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":until", n(until_ms));
        self.send_if_owed(job, update).await
    }

    /// An update of the job item on condition that it owes round `round`'s
    /// report (and `more`).
    fn owed_report_update(&self, job: &JobId, round: u32, more: &str) -> UpdateItemFluentBuilder {
        self.update(job_pk(job), JOB_SK)
            .condition_expression(format!("reportOwed = :true AND {}{more}", round_is(round)))
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .expression_attribute_values(":round", n(round))
    }

    /// False when the report was not owed.
    async fn send_if_owed(
        &self,
        job: &JobId,
        update: UpdateItemFluentBuilder,
    ) -> Result<bool, StoreError> {
        match self.send_update(job, update, write(SMALL_ITEM_BYTES)).await {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(StoreError::backend("UpdateItem", e)),
        }
    }

    pub(super) async fn pinned_definition(
        &self,
        job: &JobId,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .get(job, job_pk(job), DEFINITION_SK)
            .await?
            .and_then(|mut item| item.remove("d"))
            .and_then(|d| d.as_s().ok().cloned()))
    }

    pub(super) async fn pinned_columns(
        &self,
        job: &JobId,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let Some(list) = self
            .get(job, job_pk(job), DEFINITION_SK)
            .await?
            .and_then(|mut item| item.remove("c"))
        else {
            return Ok(None);
        };
        let list = list
            .as_l()
            .map_err(|_| corrupt(job, "pinned columns are not a list"))?;
        list.iter()
            .map(|c| c.as_s().cloned())
            .collect::<Result<Vec<String>, _>>()
            .map(Some)
            .map_err(|_| corrupt(job, "a pinned column name is not a string"))
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
        self.jobs_listed(ACTIVE_JOBS).await
    }

    pub(super) async fn list_jobs(
        &self,
        status: Option<JobStatus>,
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        let statuses = match status {
            Some(s) => vec![s],
            None => JobStatus::ALL.to_vec(),
        };
        // Newest first within each status; merged by creation time.
        let mut found: Vec<(i64, JobId)> = Vec::new();
        for status in statuses {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(JOBS_INDEX)
                .key_condition_expression("lpk = :lpk")
                .expression_attribute_values(":lpk", s(status_lpk(status)))
                .scan_index_forward(false);
            let mut items = Vec::new();
            if let Some(kind) = kind {
                // The index projects `kind`; the page limit counts the jobs
                // read before the filter, so read on until enough match.
                query = query
                    .filter_expression("#kind = :kind")
                    .expression_attribute_names("#kind", "kind")
                    .expression_attribute_values(":kind", s(kind));
                let mut pages = query.into_paginator().page_size(1000).send();
                let mut read = 0;
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| StoreError::backend("Query", e))?;
                    read += page.scanned_count() as usize;
                    items.extend(page.items.unwrap_or_default());
                    if items.len() >= limit || read >= crate::store::MAX_LISTED {
                        break;
                    }
                }
            } else {
                let out = query
                    .limit(limit.clamp(1, 1000) as i32)
                    .send()
                    .await
                    .map_err(|e| StoreError::backend("Query", e))?;
                items = out.items.unwrap_or_default();
            }
            for item in items {
                let created = item
                    .get("lsk")
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if let Some(id) = item
                    .get("pk")
                    .and_then(|v| v.as_s().ok())
                    .and_then(|pk| pk.strip_prefix("J#"))
                {
                    found.push((created, JobId::new(id)));
                }
            }
        }
        found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        Ok(found.into_iter().take(limit).map(|(_, id)| id).collect())
    }

    pub(super) async fn pending_events(&self) -> Result<Vec<JobId>, StoreError> {
        self.jobs_listed(PENDING_EVENTS).await
    }

    pub(super) async fn ack_event(
        &self,
        job: &JobId,
        kind: EventKind,
        round: u32,
    ) -> Result<(), StoreError> {
        // DynamoDB drops a set once its last element is deleted.
        let update = self
            .update(job_pk(job), JOB_SK)
            .update_expression("DELETE owedEvents :kind")
            .condition_expression(format!("attribute_exists(pk) AND {}", round_is(round)))
            .expression_attribute_values(":kind", kind_set(kind))
            .expression_attribute_values(":round", n(round))
            .return_values(ReturnValue::AllNew);
        let after = match self.send_update(job, update, write(SMALL_ITEM_BYTES)).await {
            Ok(out) => out.attributes.unwrap_or_default(),
            Err(e) if is_condition_failed(&e) => return Ok(()),
            Err(e) => return Err(StoreError::backend("UpdateItem", e)),
        };
        let listed = after
            .get("gpk")
            .and_then(|v| v.as_s().ok())
            .map(String::as_str);
        if after.contains_key("owedEvents") || listed != Some(PENDING_EVENTS) {
            return Ok(());
        }
        // A final job that owes nothing leaves the owed-events list; unless
        // something was owed meanwhile, or a retry reopened it.
        let update = self
            .update(job_pk(job), JOB_SK)
            .update_expression("REMOVE gpk, gsk")
            .condition_expression("gpk = :events AND attribute_not_exists(owedEvents)")
            .expression_attribute_values(":events", s(PENDING_EVENTS));
        match self.send_update(job, update, write(SMALL_ITEM_BYTES)).await {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(StoreError::backend("UpdateItem", e)),
        }
    }

    pub(super) async fn reopen(
        &self,
        job: &JobId,
        reopening: &Reopening,
    ) -> Result<Option<Job>, StoreError> {
        let (seen_retries, now_ms) = (reopening.seen_retries, reopening.now_ms);
        let finals: Vec<JobStatus> = JobStatus::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .collect();
        let mut values: Item = HashMap::from([
            (":processing".into(), s(JobStatus::Processing.as_str())),
            (":lpk".into(), s(status_lpk(JobStatus::Processing))),
            (":jobs".into(), s(ACTIVE_JOBS)),
            (":now".into(), n(now_ms)),
            (":zero".into(), n(0)),
            (":one".into(), n(1)),
            (":base".into(), n(reopening.base)),
        ]);
        // The round's requeue pass, if it has one, starts with it.
        let (requeuing, no_pass) = if reopening.requeue {
            values.insert(":true".into(), AttributeValue::Bool(true));
            ("requeuing = :true, ", "")
        } else {
            ("", ", requeuing")
        };
        let mut any_final = Vec::new();
        for (i, status) in finals.iter().enumerate() {
            values.insert(format!(":final{i}"), s(status.as_str()));
            any_final.push(format!(":final{i}"));
        }
        values.insert(":round".into(), n(seen_retries));
        let seen = round_is(seen_retries);
        // Back on the active list and on the PROCESSING listing; the
        // previous round's events go out first (an owed event of a final
        // job is sent by whoever finds it in the `EVENTS` list).
        let update = self
            .update(job_pk(job), JOB_SK)
            .update_expression(format!(
                "SET #status = :processing, retries = if_not_exists(retries, :zero) + :one, \
                 gpk = :jobs, gsk = :now, lpk = :lpk, prepareLeaseUntil = :zero, prepareFailures = :zero, \
                 updatedAt = :now, {requeuing}requeuedAt = :now, roundStartedAt = :now, roundBase = :base \
                 REMOVE finishedAt, failureReason, report, reportOwed, prepareOwner, requeueCursor{no_pass}"
            ))
            .condition_expression(format!(
                "#status IN ({}) AND {seen} AND attribute_not_exists(owedEvents)",
                any_final.join(", ")
            ))
            .expression_attribute_names("#status", "status")
            .set_expression_attribute_values(Some(values));
        match self.send_update(job, update, write(SMALL_ITEM_BYTES)).await {
            Ok(_) => self.get_job(job).await,
            Err(e) if is_condition_failed(&e) => Ok(None),
            Err(e) => Err(StoreError::backend("UpdateItem", e)),
        }
    }

    pub(super) async fn note_requeue(
        &self,
        job: &JobId,
        round: u32,
        cursor: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let update = self
            .update(job_pk(job), JOB_SK)
            .update_expression("SET requeueCursor = :cursor, requeuedAt = :now")
            .expression_attribute_values(":cursor", s(cursor))
            .expression_attribute_values(":now", n(now_ms));
        self.in_requeue_pass(job, round, update).await
    }

    pub(super) async fn finish_requeue(
        &self,
        job: &JobId,
        round: u32,
        base: u64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let update = self
            .update(job_pk(job), JOB_SK)
            .update_expression(
                "SET requeuedAt = :now, roundStartedAt = :now, roundBase = :base, updatedAt = :now \
                 REMOVE requeuing, requeueCursor",
            )
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":base", n(base));
        self.in_requeue_pass(job, round, update).await
    }

    /// `update` of the job item, if it is in round `round`'s requeue pass.
    async fn in_requeue_pass(
        &self,
        job: &JobId,
        round: u32,
        update: aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
    ) -> Result<bool, StoreError> {
        let update = update
            .condition_expression(format!(
                "#status = :processing AND requeuing = :true AND {}",
                round_is(round)
            ))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":processing", s(JobStatus::Processing.as_str()))
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .expression_attribute_values(":round", n(round));
        match self.send_update(job, update, write(SMALL_ITEM_BYTES)).await {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(StoreError::backend("UpdateItem", e)),
        }
    }

    /// Job ids in one partition of the lease index (`JOBS`, `EVENTS`).
    async fn jobs_listed(&self, list: &str) -> Result<Vec<JobId>, StoreError> {
        let mut ids = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(LEASE_INDEX)
            .key_condition_expression("gpk = :gpk")
            .expression_attribute_values(":gpk", s(list))
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

    /// A live lease anywhere ends the look: its worker claims on, and
    /// takes what is stalled itself. So a busy job costs the first query
    /// that finds one (its first, mostly), and only a job nobody works on
    /// gets every shard read, its stalled batches counted a few shards at
    /// a time.
    pub(super) async fn lease_view(
        &self,
        job: &JobId,
        now_ms: i64,
    ) -> Result<LeaseView, StoreError> {
        let shards = self.shards(job).await?;
        for shard in 0..shards {
            let gpk = lease_shard_gpk(job, shard);
            let live = self
                .index_query(job, "gpk = :gpk AND gsk >= :now", gpk, now_ms, 1)
                .await?;
            if !live.is_empty() {
                return Ok(LeaseView {
                    live: true,
                    reclaimable: 0,
                });
            }
        }
        let Some((item, cursors)) = self.claim_view(job).await? else {
            return Ok(LeaseView::default());
        };
        // The index also holds batches no cursor has handed out yet (PENDING
        // too); only those behind their shard's cursor are stalled.
        let shards = item.shards;
        let handed_out = |index: u64| index / shards < cursors[(index % shards) as usize].k;
        let stale = futures::stream::iter(0..shards)
            .map(|shard| {
                let gpk = lease_shard_gpk(job, shard);
                self.index_query(job, "gpk = :gpk AND gsk < :now", gpk, now_ms, 25)
            })
            .buffer_unordered(PARALLEL_SHARD_READS)
            .try_fold(0u64, |count, stale| {
                let stalled = stale
                    .iter()
                    .filter_map(|i| batch_index(job, i))
                    .filter(|index| handed_out(*index))
                    .count() as u64;
                futures::future::ready(Ok(count + stalled))
            });
        Ok(LeaseView {
            live: false,
            reclaimable: stale.await?,
        })
    }

    /// The first expiry among the live leases of the worker's own shard:
    /// one query of its lease-index partition, and each lease watched by
    /// the workers of its shard, not the whole fleet.
    pub(super) async fn next_expiry(
        &self,
        job: &JobId,
        worker: &str,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let shards = self.shards(job).await?;
        let gpk = lease_shard_gpk(job, shard_of(worker, shards));
        let live = self
            .index_query(job, "gpk = :gpk AND gsk >= :now", gpk, now_ms, 1)
            .await?;
        Ok(live
            .first()
            .and_then(|i| i.get("gsk")?.as_n().ok()?.parse().ok()))
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

/// A condition that the job is in round `round` (`:round`): a job never
/// retried has no `retries` attribute.
pub(super) fn round_is(round: u32) -> &'static str {
    if round == 0 {
        "(attribute_not_exists(retries) OR retries = :round)"
    } else {
        "retries = :round"
    }
}
