//! The DynamoDB store's shards on the simulated DynamoDB: a job keeps the
//! shard count it was created with, and a commit that meets a busy counter
//! shard moves to another.

use super::{SimAws, SimConfig, ORIGIN_MS};
use crate::job::{JobId, SourceRef, StagedRecord};
use crate::store::dynamodb::table::create_state_table;
use crate::store::dynamodb::DynamoStore;
use crate::store::{
    BatchOutcome, BatchState, Claim, ClaimStore, CreateOutcome, JobControl, NewBatch, PrepareLease,
    PrepareStore,
};
use serde_json::{json, Value};
use std::time::Duration;

const TABLE: &str = "state";
const LEASE: i64 = 60_000;

async fn world() -> SimAws {
    let aws = SimAws::new(SimConfig::exact(11));
    create_state_table(&aws.clients().dynamodb, TABLE)
        .await
        .expect("create the state table");
    aws
}

/// A store as a new process has it: nothing remembered.
fn store(aws: &SimAws) -> DynamoStore {
    DynamoStore::new(aws.clients().dynamodb, TABLE, true)
        .with_clock(aws.clock)
        .with_rng(crate::rng::Rng::seeded(5))
}

fn owner() -> PrepareLease {
    PrepareLease {
        owner: "orchestrator".into(),
        lease_ms: LEASE,
    }
}

/// A prepared job of `batches` batches of one record each; `legacy`: its
/// item names no shard count, as an older version wrote it.
async fn job(aws: &SimAws, store: &DynamoStore, batches: u64, legacy: bool) -> JobId {
    let job = open_job(aws, store, batches, legacy).await;
    store
        .finish_prepare(&job, &owner(), batches, batches)
        .await
        .unwrap();
    job
}

/// `job`, its prepare still running with `batches` published.
async fn open_job(aws: &SimAws, store: &DynamoStore, batches: u64, legacy: bool) -> JobId {
    let source = SourceRef {
        bucket: "uploads".into(),
        key: "users.csv".into(),
        version: "v1".into(),
    };
    let now = ORIGIN_MS;
    let CreateOutcome::Created(job) = store.create_job(&source, &owner(), now).await.unwrap()
    else {
        panic!("the job is new");
    };
    if legacy {
        let remove = json!({
            "TableName": TABLE,
            "Key": key(&format!("J#{}", job.id), "JOB"),
            "UpdateExpression": "REMOVE shards, counters",
        });
        let answer = aws.dynamodb.serve_direct("UpdateItem", &remove.to_string());
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    for index in 0..batches {
        let records = vec![StagedRecord {
            line: index + 2,
            values: vec![Some(format!("u{index}@example.com"))].into(),
            issue: None,
        }];
        let batch = NewBatch {
            index,
            records: &records,
            after: None,
        };
        store.write_batch(&job.id, batch, now).await.unwrap();
    }
    store
        .publish(&job.id, &owner(), batches, None, now)
        .await
        .unwrap();
    job.id
}

fn done() -> BatchOutcome {
    BatchOutcome {
        state: BatchState::Done,
        processed: 1,
        failed: vec![],
        error: None,
        duplicates: 0,
    }
}

fn key(pk: &str, sk: &str) -> Value {
    json!({ "pk": { "S": pk }, "sk": { "S": sk } })
}

/// The shard numbers of the items of `job` named `J#<job>#<kind>#<n>`.
fn shards_written(aws: &SimAws, job: &JobId, kind: char) -> Vec<u64> {
    let prefix = format!("J#{job}#{kind}#");
    let mut found: Vec<u64> = aws
        .dynamodb
        .scan(TABLE)
        .iter()
        .filter_map(|i| i["pk"]["S"].as_str()?.strip_prefix(&prefix)?.parse().ok())
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

#[tokio::test(start_paused = true)]
async fn a_job_created_before_shard_counts_were_kept_runs_on_eight() {
    let aws = world().await;
    // Created by an older version; its workers are of this one, each in
    // its own process.
    let job = job(&aws, &store(&aws), 40, true).await;
    for worker in 0..40 {
        let store = store(&aws);
        let Claim::Batch(claim) = store
            .claim_batch(&job, &format!("w{worker}"), ORIGIN_MS, LEASE)
            .await
            .unwrap()
        else {
            panic!("batch {worker} is claimable");
        };
        store
            .commit_batch(&claim, &done(), ORIGIN_MS)
            .await
            .unwrap();
    }
    let j = store(&aws).get_job(&job).await.unwrap().unwrap();
    assert!(j.all_batches_done(), "{j:?}");
    assert_eq!(j.processed, 40);
    assert_eq!(shards_written(&aws, &job, 'K'), (0..8).collect::<Vec<_>>());
    assert!(shards_written(&aws, &job, 'N').iter().all(|&s| s < 8));
}

#[tokio::test(start_paused = true)]
async fn a_new_job_spreads_its_batches_over_its_own_shard_count() {
    let aws = world().await;
    let store = store(&aws);
    let job = job(&aws, &store, 64, false).await;
    let item = aws
        .dynamodb
        .item(TABLE, &key(&format!("J#{job}"), "JOB"))
        .unwrap();
    assert_eq!(item["shards"]["N"], "32");
    assert_eq!(item["counters"]["N"], "64");
    while let Claim::Batch(c) = store
        .claim_batch(&job, "w", ORIGIN_MS, LEASE)
        .await
        .unwrap()
    {
        store.commit_batch(&c, &done(), ORIGIN_MS).await.unwrap();
    }
    assert_eq!(shards_written(&aws, &job, 'K'), (0..32).collect::<Vec<_>>());
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!((j.processed, j.batches_done), (64, 64));
}

/// A commit whose counter shard a transaction holds moves to another
/// shard: it neither waits for the busy one nor lands on it.
#[tokio::test(start_paused = true)]
async fn a_commit_that_meets_a_busy_counter_shard_moves_to_another() {
    let aws = world().await;
    let store = store(&aws);
    let job = job(&aws, &store, 24, false).await;
    // Half the shards busy for an hour.
    let busy: Vec<Value> = (0..16)
        .map(|s| key(&format!("J#{job}#N#{s}"), "COUNTERS"))
        .collect();
    let until = tokio::time::Instant::now() + Duration::from_secs(3600);
    for shard in &busy {
        aws.dynamodb.hold(TABLE, shard, until);
    }
    while let Claim::Batch(c) = store
        .claim_batch(&job, "w", ORIGIN_MS, LEASE)
        .await
        .unwrap()
    {
        store.commit_batch(&c, &done(), ORIGIN_MS).await.unwrap();
    }
    assert!(tokio::time::Instant::now() < until, "a commit waited");
    assert!(busy.iter().all(|s| aws.dynamodb.item(TABLE, s).is_none()));
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!((j.processed, j.batches_done), (24, 24));
    assert!(
        aws.dynamodb.stats().conflicts > 0,
        "no commit met the busy shard"
    );
}

/// Read units spent on the job item of `job` so far.
fn job_item_reads(aws: &SimAws, job: &JobId) -> f64 {
    let item = format!("{TABLE}|{{\"S\":\"J#{job}\"}}|{{\"S\":\"JOB\"}}");
    let stats = aws.dynamodb.stats();
    stats.item_reads.get(&item).copied().unwrap_or_default()
}

/// The job item is the one item every claim of a job reads: a claim reads
/// it once, at half a read unit (not consistently), however many cursors it
/// has to look at or races it loses; the claim that finds nothing left
/// reads it again, consistently, before it sends the worker away.
#[tokio::test(start_paused = true)]
async fn a_claim_reads_the_job_item_once() {
    let aws = world().await;
    let store = store(&aws);
    let job = job(&aws, &store, 64, false).await;
    let before = job_item_reads(&aws, &job);
    let mut claims = 0;
    loop {
        claims += 1;
        let Claim::Batch(c) = store
            .claim_batch(&job, "w", ORIGIN_MS, LEASE)
            .await
            .unwrap()
        else {
            break;
        };
        store.commit_batch(&c, &done(), ORIGIN_MS).await.unwrap();
    }
    assert_eq!(claims, 65);
    assert_eq!(
        job_item_reads(&aws, &job) - before,
        0.5 * f64::from(claims) + 1.0
    );
}

/// Read units spent on the cursors of `job` so far.
fn cursor_reads(aws: &SimAws, job: &JobId) -> f64 {
    let prefix = format!("{TABLE}|{{\"S\":\"J#{job}#K#");
    let stats = aws.dynamodb.stats();
    stats
        .item_reads
        .iter()
        .filter(|(item, _)| item.starts_with(&prefix))
        .map(|(_, units)| units)
        .sum()
}

/// Queries of the lease index so far.
fn lease_queries(aws: &SimAws) -> u64 {
    let stats = aws.dynamodb.stats();
    stats
        .shapes
        .get("Query leases J#<id>#L#<n>")
        .copied()
        .unwrap_or_default()
}

/// A worker that has claimed everything published and waits for more
/// reads the job item and nothing else: it knows where the cursors it
/// saw stand, and they only move forward.
#[tokio::test(start_paused = true)]
async fn a_waiting_worker_reads_only_the_job_item() {
    let aws = world().await;
    let store = store(&aws);
    let job = open_job(&aws, &store, 40, false).await;
    while let Claim::Batch(c) = store
        .claim_batch(&job, "w", ORIGIN_MS, LEASE)
        .await
        .unwrap()
    {
        store.commit_batch(&c, &done(), ORIGIN_MS).await.unwrap();
    }
    let (jobs, cursors) = (job_item_reads(&aws, &job), cursor_reads(&aws, &job));
    let searches = || lease_queries(&aws);
    for _ in 0..10 {
        let claim = store.claim_batch(&job, "w", ORIGIN_MS, LEASE).await;
        assert!(matches!(claim.unwrap(), Claim::Wait));
    }
    assert_eq!(cursor_reads(&aws, &job), cursors);
    assert_eq!(job_item_reads(&aws, &job) - jobs, 5.0);
    // Nor does it search for abandoned batches before a quarter lease:
    // none can have expired yet.
    assert_eq!(searches(), 0);
    // Once more are published, they are claimed.
    let owner = owner();
    let records = vec![StagedRecord {
        line: 100,
        values: vec![Some("late@example.com".to_owned())].into(),
        issue: None,
    }];
    let batch = NewBatch {
        index: 40,
        records: &records,
        after: None,
    };
    store.write_batch(&job, batch, ORIGIN_MS).await.unwrap();
    store
        .publish(&job, &owner, 41, None, ORIGIN_MS)
        .await
        .unwrap();
    let Claim::Batch(c) = store
        .claim_batch(&job, "w2", ORIGIN_MS, LEASE)
        .await
        .unwrap()
    else {
        panic!("the batch published last is claimable");
    };
    assert_eq!(c.index, 40);
}

/// The sweeper's look at a job someone works on costs one query of the
/// lease index, whatever the shard count: a live lease ends the look.
/// Only a job nobody works on gets every shard read.
#[tokio::test(start_paused = true)]
async fn a_sweep_of_a_busy_job_reads_one_lease_partition() {
    let aws = world().await;
    let store = store(&aws);
    let job = job(&aws, &store, 64, false).await;
    let Claim::Batch(_held) = store
        .claim_batch(&job, "w", ORIGIN_MS, LEASE)
        .await
        .unwrap()
    else {
        panic!("a batch is claimable");
    };
    let searches = || lease_queries(&aws);
    // The index lags the table: a look once it has caught up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = searches();
    let view = store.lease_view(&job, ORIGIN_MS + 1_000).await.unwrap();
    assert!(view.live);
    assert_eq!(searches() - before, 1);
    // Once the lease has run out, every shard is read: for a live lease,
    // then for stalled batches.
    let before = searches();
    let view = store.lease_view(&job, ORIGIN_MS + 2 * LEASE).await.unwrap();
    assert_eq!((view.live, view.reclaimable), (false, 1));
    assert_eq!(searches() - before, 2 * 32);
}

/// A claim whose own cursor has nothing left reads the next few cursors
/// that may have something, not all of them: with every claim of a fleet
/// reading all 32, each cursor was as hot as the job item.
#[tokio::test(start_paused = true)]
async fn a_claim_past_its_own_cursor_reads_a_few_others() {
    let aws = world().await;
    let store = store(&aws);
    let job = job(&aws, &store, 64, false).await;
    let read = cursor_reads(&aws, &job);
    // Two batches a shard: the first two claims empty the home cursor.
    for _ in 0..2 {
        let Claim::Batch(c) = store
            .claim_batch(&job, "w", ORIGIN_MS, LEASE)
            .await
            .unwrap()
        else {
            panic!("the home cursor has batches");
        };
        store.commit_batch(&c, &done(), ORIGIN_MS).await.unwrap();
    }
    assert_eq!(
        cursor_reads(&aws, &job),
        read,
        "the home cursor is not read"
    );
    let Claim::Batch(_) = store
        .claim_batch(&job, "w", ORIGIN_MS, LEASE)
        .await
        .unwrap()
    else {
        panic!("other cursors have batches");
    };
    // Eight cursors, half a unit each.
    assert_eq!(cursor_reads(&aws, &job) - read, 4.0);
}
