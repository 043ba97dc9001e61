//! Conformance cases for commits: a fenced commit counts once, and the job's
//! counters and failed records move with each batch.

use super::*;
use crate::job::FieldIssue;

pub async fn zombie_worker_cannot_commit_reclaimed_batch(store: &dyn JobStore) {
    let job = job_with(store, "zombie", 1, false).await;
    let zombie = claim(store, &job, "w1", T0).await;
    let fresh = claim(store, &job, "w2", T0 + LEASE + 1).await;
    let err = store
        .commit_batch(&zombie, &done(3), T0 + LEASE + 2)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ClaimLost { .. }), "{err}");
    store
        .commit_batch(&fresh, &done(3), T0 + LEASE + 3)
        .await
        .unwrap();
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!(
        (j.batches_done, j.processed),
        (1, 3),
        "the batch counts once"
    );
}

pub async fn committing_twice_counts_once(store: &dyn JobStore) {
    let job = job_with(store, "twice", 2, false).await;
    let c = claim(store, &job, "w1", T0).await;
    store.commit_batch(&c, &done(3), T0).await.unwrap();
    // A second commit of the claim is refused as lost, or (DynamoDB, whose
    // idempotency token recognises the claim's commit) found committed
    // already; either way it counts nothing more.
    let again = store.commit_batch(&c, &done(3), T0).await;
    assert!(
        matches!(again, Ok(()) | Err(StoreError::ClaimLost { .. })),
        "{again:?}"
    );
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!((j.batches_done, j.processed, j.failed), (1, 3, 0));
}

pub async fn counters_and_failures_move_with_the_batch(store: &dyn JobStore) {
    let job = job_with(store, "counts", 2, false).await;
    let a = claim(store, &job, "w1", T0).await;
    let failed = vec![
        FailedRecord::invalid(
            3,
            vec![FieldIssue::new(
                Some("email"),
                Some("nope"),
                "not a valid email address",
            )],
        ),
        FailedRecord::unprocessed(
            4,
            vec![FieldIssue::new(None, None, "the target refused it")],
        ),
    ];
    let outcome = BatchOutcome {
        state: BatchState::Done,
        processed: 1,
        failed: failed.clone(),
        error: None,
        duplicates: 0,
    };
    store.commit_batch(&a, &outcome, T0).await.unwrap();
    assert_eq!(store.failed_records(&job, a.index).await.unwrap(), failed);
    let info = store.batch_info(&job, a.index).await.unwrap().unwrap();
    assert_eq!(
        (info.state, info.processed, info.failed),
        (BatchState::Done, 1, 2)
    );
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!((j.batches_done, j.processed, j.failed), (1, 1, 2));
    let b = claim(store, &job, "w1", T0).await;
    assert!(store
        .failed_records(&job, b.index)
        .await
        .unwrap()
        .is_empty());
}

/// Processed, failed and duplicate rows add up over every batch.
pub async fn counters_add_up_over_many_batches_and_workers(store: &dyn JobStore) {
    const BATCHES: u64 = 21;
    let job = job_with(store, "many-batches", BATCHES, false).await;
    let mut seen = Vec::new();
    for round in 0.. {
        let worker = format!("w{}", round % 5);
        match store.claim_batch(&job, &worker, T0, LEASE).await.unwrap() {
            Claim::Batch(c) => {
                seen.push(c.index);
                let outcome = BatchOutcome {
                    state: BatchState::Done,
                    processed: 2,
                    failed: vec![FailedRecord::invalid(
                        c.index * 100 + 2,
                        vec![FieldIssue::new(None, None, "bad")],
                    )],
                    error: None,
                    duplicates: c.index % 3,
                };
                store.commit_batch(&c, &outcome, T0).await.unwrap();
            }
            Claim::NoneAvailable => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    seen.sort();
    assert_eq!(seen, (0..BATCHES).collect::<Vec<_>>(), "each batch once");
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!(
        (j.batches_handed_out, j.batches_done, j.processed, j.failed),
        (BATCHES, BATCHES, 2 * BATCHES, BATCHES)
    );
    let duplicates: u64 = (0..BATCHES).map(|i| i % 3).sum();
    assert_eq!(j.duplicates, duplicates, "duplicates add up too");
    assert!(store
        .finalize(
            &job,
            &fin(JobStatus::CompletedWithErrors),
            FinalizeWhen::AllBatchesDone
        )
        .await
        .unwrap());
}
