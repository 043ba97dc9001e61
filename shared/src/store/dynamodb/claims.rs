//! Handing out batches: the cursor shards, claims of pending or expired
//! batches, and the leases a claim's version fences (extend, release,
//! yield). Committing is in `commit`, requeueing for a retry in `requeue`.

use super::*;

/// Cursors a claim reads at once when its own has nothing left.
const CURSORS_READ_AT_ONCE: usize = 8;

impl DynamoStore {
    /// The job item and every cursor shard, in one consistent read.
    pub(super) async fn claim_view(
        &self,
        job: &JobId,
    ) -> Result<Option<(JobItem, Vec<CursorItem>)>, StoreError> {
        let shards = self.shards(job).await?;
        self.view_of(job, &(0..shards).collect::<Vec<_>>()).await
    }

    /// The job item and the cursors of `shards` (in that order), in one
    /// consistent read.
    async fn view_of(
        &self,
        job: &JobId,
        shards: &[u64],
    ) -> Result<Option<(JobItem, Vec<CursorItem>)>, StoreError> {
        let mut keys = vec![key(job_pk(job), JOB_SK)];
        keys.extend(shards.iter().map(|&c| key(cursor_pk(job, c), CURSOR_SK)));
        let mut items = self.get_many(job, keys).await?.into_iter();
        let Some(Some(job_item)) = items.next() else {
            return Ok(None);
        };
        let job_item: JobItem = from_item(job_item).map_err(|e| corrupt(job, e))?;
        self.remember_shards(job, &job_item);
        let cursors = items
            .map(|i| match i {
                Some(i) => from_item(i).map_err(|e| corrupt(job, e)),
                None => Ok(CursorItem::default()),
            })
            .collect::<Result<Vec<CursorItem>, StoreError>>()?;
        Ok(Some((job_item, cursors)))
    }

    /// The cursors of `shards` (in that order), in one read that need not
    /// be consistent: a cursor seen behind where it is costs a failed
    /// advance, and half the read units of a fleet's reads of them.
    async fn cursors_of(&self, job: &JobId, shards: &[u64]) -> Result<Vec<CursorItem>, StoreError> {
        let keys = shards
            .iter()
            .map(|&c| key(cursor_pk(job, c), CURSOR_SK))
            .collect();
        self.get_many_read(job, keys, false)
            .await?
            .into_iter()
            .map(|i| match i {
                Some(i) => from_item(i).map_err(|e| corrupt(job, e)),
                None => Ok(CursorItem::default()),
            })
            .collect()
    }

    /// Advances cursor shard `shard` unless it already handed out its
    /// `limit` published batches; the batch index it handed out, or `None`
    /// when another worker got there first.
    async fn advance_cursor(
        &self,
        job: &JobId,
        (shards, shard): (u64, u64),
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
                Ok(Some(shard_batch(shards, shard, k - 1)))
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
                    // A batch put back for a retry names its round, which a
                    // claim's read of the job may not show yet.
                    round: round.max(item.round.unwrap_or_default()),
                    content: item.content,
                    next: item.next,
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
        // one cursor. The loop ends: every pass either claims, or learns
        // that a shard has nothing left to hand out (its cursor reached
        // the published batches of the shard), and there are finitely many
        // shards.
        //
        // The job item is read once, not consistently: every claim of a
        // large fleet reads it, so it is the hottest item a job has, and
        // half a read unit doubles what its partition serves. A stale copy
        // hands out fewer batches (the published count only grows), and
        // what would send the worker away is read again consistently.
        //
        // Where the cursors stand is remembered (they only move forward,
        // so what was seen is a floor): a claim tries its home cursor
        // without reading it; when that one has nothing left, it reads the
        // next few that may have something (in ring order from its home,
        // so a fleet spreads its reads), and reads none while all are
        // known to have handed out everything published. Every claim
        // reading every cursor made each cursor as hot as the job item.
        let Some(item) = self.claim_item(job).await? else {
            return Err(StoreError::JobNotFound(job.clone()));
        };
        if item.status.is_final() {
            return Ok(Claim::JobFinished(item.status));
        }
        let shards = item.shards;
        let home = shard_of(worker, shards);
        let all: Vec<u64> = (0..shards).map(|i| (home + i) % shards).collect();
        let ready = item.batches_ready;
        let limit = |c: u64| shard_len(shards, ready, c);
        let mut floors = self.floors(job, shards);
        // The shards this claim knows where they stand: its home (tried
        // without reading), then those read, a few at a time.
        let mut looked = vec![home];
        loop {
            let open = |floors: &[u64], shards: &[u64]| {
                shards
                    .iter()
                    .copied()
                    .find(|&c| floors[c as usize] < limit(c))
            };
            let Some(shard) = open(&floors, &looked) else {
                let next: Vec<u64> = all
                    .iter()
                    .copied()
                    .filter(|c| !looked.contains(c) && floors[*c as usize] < limit(*c))
                    .take(CURSORS_READ_AT_ONCE)
                    .collect();
                if next.is_empty() {
                    break;
                }
                let cursors = self.cursors_of(job, &next).await?;
                for (&c, cursor) in next.iter().zip(&cursors) {
                    floors[c as usize] = floors[c as usize].max(cursor.k);
                }
                self.remember_floors(job, &floors);
                looked.extend(next);
                continue;
            };
            let advanced = self
                .advance_cursor(job, (shards, shard), limit(shard))
                .await?;
            let at = &mut floors[shard as usize];
            *at = match advanced {
                Some(index) => (*at).max(index / shards + 1),
                // The cursor is at the shard's limit already.
                None => limit(shard),
            };
            self.remember_floors(job, &floors);
            if let Some(index) = advanced {
                if let Some(c) = self
                    .try_claim(job, index, worker, now_ms, lease_ms, item.retries)
                    .await?
                {
                    return Ok(Claim::Batch(c));
                }
            }
        }
        // Every published batch was handed out: look for abandoned ones.
        // While prepare runs, workers come back here each time they wake
        // to wait; a lease expires only after `lease_ms`, so searching
        // more often than every quarter lease finds nothing new.
        if !item.prepared && !self.search_due(job, now_ms, lease_ms) {
            return Ok(Claim::Wait);
        }
        for &shard in &all {
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
        if !item.prepared || item.requeuing {
            return Ok(Claim::Wait);
        }
        // Sending the worker away: on the job as it is now.
        let Some(now) = self.job_item(job, true).await? else {
            return Err(StoreError::JobNotFound(job.clone()));
        };
        Ok(if now.status.is_final() {
            Claim::JobFinished(now.status)
        } else if now.requeuing || now.batches_ready > ready {
            Claim::Wait
        } else {
            Claim::NoneAvailable
        })
    }

    /// The job item as a claim reads it: not consistently, unless that
    /// finds no job or a final one (which would send the worker away).
    async fn claim_item(&self, job: &JobId) -> Result<Option<JobItem>, StoreError> {
        match self.job_item(job, false).await? {
            Some(item) if !item.status.is_final() => Ok(Some(item)),
            _ => self.job_item(job, true).await,
        }
    }

    async fn job_item(&self, job: &JobId, consistent: bool) -> Result<Option<JobItem>, StoreError> {
        let Some(item) = self
            .get_read(job, (job_pk(job), JOB_SK), consistent)
            .await?
        else {
            return Ok(None);
        };
        let item: JobItem = from_item(item).map_err(|e| corrupt(job, e))?;
        self.remember_shards(job, &item);
        Ok(Some(item))
    }

    /// Where this process last saw each cursor of `job` (of `shards`).
    fn floors(&self, job: &JobId, shards: u64) -> Vec<u64> {
        let floors = self.floors.lock().expect("cursor floors poisoned");
        let mut seen = floors.get(job).cloned().unwrap_or_default();
        seen.resize(shards as usize, 0);
        seen
    }

    fn remember_floors(&self, job: &JobId, seen: &[u64]) {
        let mut floors = self.floors.lock().expect("cursor floors poisoned");
        let known = floors.entry(job.clone()).or_default();
        known.resize(seen.len(), 0);
        for (known, &seen) in known.iter_mut().zip(seen) {
            *known = (*known).max(seen);
        }
    }

    /// Whether a claim that waits for prepare searches the lease index: a
    /// quarter lease after this process last searched, or first waited
    /// (before that, what a search finds are mostly batches whose claims
    /// are on their way, and a fleet's first waits would all search).
    fn search_due(&self, job: &JobId, now_ms: i64, lease_ms: i64) -> bool {
        let mut searched = self.searched.lock().expect("search times poisoned");
        let last = *searched.entry(job.clone()).or_insert(now_ms);
        now_ms - last >= lease_ms / 4 || now_ms < last
    }

    pub(super) async fn claim_index(
        &self,
        job: &JobId,
        index: u64,
        worker: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<ClaimedBatch>, StoreError> {
        let Some(item) = self.get(job, job_pk(job), JOB_SK).await? else {
            return Ok(None);
        };
        let item: JobItem = from_item(item).map_err(|e| corrupt(job, e))?;
        if item.status.is_final() || index >= item.batches_ready {
            return Ok(None);
        }
        self.try_claim(job, index, worker, now_ms, lease_ms, item.retries)
            .await
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
}
