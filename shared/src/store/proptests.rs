//! Property test of the batch protocol on the in-memory store: random
//! interleavings of claim, heartbeat, clock advance, commit, release, crash
//! and finalize across simulated workers never count a batch twice, never
//! let two workers commit one batch, finalize at most once, and always
//! leave a job that a surviving worker can finish. With key partitions,
//! no batch is claimed before the one before it in its partition is final.

use super::memory::MemoryStore;
use super::*;
use crate::job::JobStatus;
use proptest::prelude::*;
use std::collections::HashMap;

const LEASE: i64 = 1_000;
const WORKERS: usize = 4;
const RECORDS_PER_BATCH: u64 = 3;

#[derive(Debug, Clone)]
enum Op {
    Claim(usize),
    Heartbeat(usize),
    Advance(i64),
    Commit(usize),
    Release(usize),
    Crash(usize),
    Finalize,
}

fn op() -> impl Strategy<Value = Op> {
    let w = 0..WORKERS;
    prop_oneof![
        3 => w.clone().prop_map(Op::Claim),
        2 => w.clone().prop_map(Op::Heartbeat),
        2 => (1..(2 * LEASE)).prop_map(Op::Advance),
        3 => w.clone().prop_map(Op::Commit),
        1 => w.clone().prop_map(Op::Release),
        1 => w.prop_map(Op::Crash),
        1 => Just(Op::Finalize),
    ]
}

fn done() -> BatchOutcome {
    BatchOutcome {
        state: BatchState::Done,
        processed: RECORDS_PER_BATCH,
        failed: vec![],
        error: None,
        duplicates: 0,
    }
}

async fn finalize(store: &MemoryStore, job: &JobId, now: i64) -> bool {
    let fin = Finalization {
        status: JobStatus::Completed,
        reason: None,
        report_owed: false,
        now_ms: now,
    };
    store
        .finalize(job, &fin, FinalizeWhen::AllBatchesDone)
        .await
        .unwrap()
}

/// Batch `index`'s predecessor in its partition, with `partitions` of
/// them (batch i in partition i % partitions; none when 0).
fn after(index: u64, partitions: u64) -> Option<u64> {
    (partitions > 0)
        .then(|| index.checked_sub(partitions))
        .flatten()
}

async fn run(batches: u64, partitions: u64, ops: Vec<Op>) {
    let store = MemoryStore::new();
    let src = SourceRef {
        bucket: "b".into(),
        key: "k".into(),
        version: "v".into(),
    };
    let lease = PrepareLease {
        owner: "o".into(),
        lease_ms: LEASE,
    };
    let mut now = 1_000_000;
    let CreateOutcome::Created(job) = store.create_job(&src, &lease, now).await.unwrap() else {
        unreachable!()
    };
    let records: Vec<StagedRecord> = (0..RECORDS_PER_BATCH)
        .map(|i| StagedRecord {
            line: i + 2,
            values: crate::job::Values::default(),
            issue: None,
        })
        .collect();
    for index in 0..batches {
        store
            .write_batch(
                &job.id,
                NewBatch {
                    index,
                    records: &records,
                    after: after(index, partitions),
                },
                now,
            )
            .await
            .unwrap();
        if let Some(before) = after(index, partitions) {
            store.link_batch(&job.id, before, index).await.unwrap();
        }
    }
    store
        .finish_prepare(&job.id, &lease, batches * RECORDS_PER_BATCH, batches)
        .await
        .unwrap();

    let mut held: HashMap<usize, ClaimedBatch> = HashMap::new();
    let mut committed: HashMap<u64, u32> = HashMap::new();
    let mut finalized = 0;
    for op in ops {
        match op {
            Op::Claim(w) if !held.contains_key(&w) => {
                if let Claim::Batch(c) = store
                    .claim_batch(&job.id, &format!("w{w}"), now, LEASE)
                    .await
                    .unwrap()
                {
                    if let Some(before) = after(c.index, partitions) {
                        assert!(
                            committed.contains_key(&before),
                            "batch {} claimed before batch {before} ended",
                            c.index
                        );
                    }
                    // Nobody else may hold this batch under a live lease.
                    for (other, h) in &held {
                        if h.index == c.index {
                            assert!(
                                h.lease_until_ms < now,
                                "w{w} took batch {} from live w{other}",
                                c.index
                            );
                            assert!(h.version < c.version);
                        }
                    }
                    held.insert(w, c);
                }
            }
            Op::Heartbeat(w) => {
                if let Some(c) = held.get_mut(&w) {
                    match store.extend_lease(c, now + LEASE).await {
                        Ok(()) => c.lease_until_ms = now + LEASE,
                        Err(StoreError::ClaimLost { .. }) => {
                            held.remove(&w);
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            Op::Advance(ms) => now += ms,
            Op::Commit(w) => {
                if let Some(c) = held.remove(&w) {
                    match store.commit_batch(&c, &done(), now).await {
                        Ok(()) => *committed.entry(c.index).or_default() += 1,
                        Err(StoreError::ClaimLost { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                    // The worker takes the batch its commit released.
                    if let Some(next) = c.next {
                        let w_id = format!("w{w}");
                        if let Some(n) = store
                            .claim_index(&job.id, next, &w_id, now, LEASE)
                            .await
                            .unwrap()
                        {
                            assert!(
                                committed.contains_key(&c.index),
                                "batch {next} claimed before batch {} ended",
                                c.index
                            );
                            held.insert(w, n);
                        }
                    }
                }
            }
            Op::Release(w) => {
                if let Some(c) = held.remove(&w) {
                    let _ = store.release_batch(&c, "gave up").await;
                }
            }
            Op::Crash(w) => {
                held.remove(&w);
            }
            Op::Finalize => finalized += finalize(&store, &job.id, now).await as u32,
            Op::Claim(_) => {}
        }
        let j = store.get_job(&job.id).await.unwrap().unwrap();
        assert!(
            committed.values().all(|n| *n == 1),
            "a batch committed twice: {committed:?}"
        );
        assert_eq!(j.batches_done, committed.len() as u64);
        assert_eq!(j.processed, committed.len() as u64 * RECORDS_PER_BATCH);
        assert!(finalized <= 1);
        if finalized == 1 {
            assert_eq!(j.batches_done, batches, "finalized with batches open");
        }
    }

    // Everyone else dies; one fresh worker, after the leases run out,
    // finishes the job.
    now += 2 * LEASE;
    while let Claim::Batch(c) = store
        .claim_batch(&job.id, "survivor", now, LEASE)
        .await
        .unwrap()
    {
        if let Some(before) = after(c.index, partitions) {
            assert!(committed.contains_key(&before));
        }
        store.commit_batch(&c, &done(), now).await.unwrap();
        *committed.entry(c.index).or_default() += 1;
    }
    finalized += finalize(&store, &job.id, now).await as u32;
    let j = store.get_job(&job.id).await.unwrap().unwrap();
    assert_eq!(finalized, 1, "finalized exactly once");
    assert_eq!(j.status, JobStatus::Completed);
    assert_eq!(j.batches_done, batches);
    assert_eq!(j.processed, batches * RECORDS_PER_BATCH);
    assert!(committed.values().all(|n| *n == 1));
    for index in 0..batches {
        assert_eq!(
            store
                .batch_info(&job.id, index)
                .await
                .unwrap()
                .unwrap()
                .state,
            BatchState::Done
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn random_interleavings_keep_the_protocol_invariants(batches in 1u64..8, partitions in 0u64..3, ops in prop::collection::vec(op(), 0..80)) {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(run(batches, partitions, ops));
    }
}
