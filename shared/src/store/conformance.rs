//! The `JobStore` conformance suite: plain async functions, one per protocol
//! rule, run against every backend by `conformance_tests!` (one test each, a
//! fresh store each, so one failure does not hide the rest).

use super::*;
use crate::job::{EventKind, FieldIssue};

const LEASE: i64 = 60_000;
const T0: i64 = 1_700_000_000_000;

fn source(name: &str) -> SourceRef {
    SourceRef {
        bucket: "uploads".into(),
        key: format!("{name}.csv"),
        version: "v1".into(),
    }
}

fn lease(owner: &str) -> PrepareLease {
    PrepareLease {
        owner: owner.into(),
        lease_ms: LEASE,
    }
}

fn records(batch: u64, n: u64) -> Vec<StagedRecord> {
    (0..n)
        .map(|i| StagedRecord {
            line: batch * 100 + i + 2,
            values: vec![
                Some(format!("user{i}@example.com")),
                Some(format!("User {i}")),
                None,
            ]
            .into(),
            issue: None,
        })
        .collect()
}

/// A job with `batches` batches of 3 records; prepared unless `open`.
async fn job_with(store: &dyn JobStore, name: &str, batches: u64, open: bool) -> JobId {
    let src = source(name);
    let owner = lease("orchestrator");
    let CreateOutcome::Created(job) = store.create_job(&src, &owner, T0).await.unwrap() else {
        panic!("job should be new");
    };
    for index in 0..batches {
        let recs = records(index, 3);
        store
            .write_batch(
                &job.id,
                NewBatch {
                    index,
                    records: &recs,
                },
                T0,
            )
            .await
            .unwrap();
        store
            .publish(&job.id, &owner, index + 1, None, T0)
            .await
            .unwrap();
    }
    if !open {
        store
            .finish_prepare(&job.id, &owner, batches * 3, batches)
            .await
            .unwrap();
    }
    job.id
}

async fn claim(store: &dyn JobStore, job: &JobId, worker: &str, now: i64) -> ClaimedBatch {
    match store.claim_batch(job, worker, now, LEASE).await.unwrap() {
        Claim::Batch(c) => c,
        other => panic!("expected a batch for {worker}, got {other:?}"),
    }
}

fn done(processed: u64) -> BatchOutcome {
    BatchOutcome {
        state: BatchState::Done,
        processed,
        failed: vec![],
        error: None,
    }
}

fn fin(status: JobStatus) -> Finalization {
    Finalization {
        status,
        reason: None,
        report_owed: false,
        now_ms: T0 + 1,
    }
}

pub async fn create_job_is_idempotent_per_object_version(store: &dyn JobStore) {
    let src = source("dup");
    let first = store.create_job(&src, &lease("a"), T0).await.unwrap();
    let second = store.create_job(&src, &lease("b"), T0 + 5).await.unwrap();
    let CreateOutcome::Created(job) = first else {
        panic!("first delivery creates the job")
    };
    let CreateOutcome::Exists(again) = second else {
        panic!("second delivery finds it")
    };
    assert_eq!(job.id, again.id);
    assert_eq!(again.created_at_ms, T0);
    let other = SourceRef {
        version: "v2".into(),
        ..src
    };
    assert!(matches!(
        store.create_job(&other, &lease("a"), T0).await.unwrap(),
        CreateOutcome::Created(_)
    ));
}

pub async fn batches_are_claimable_as_soon_as_written(store: &dyn JobStore) {
    let job = job_with(store, "early", 1, true).await;
    let c = claim(store, &job, "w1", T0).await;
    assert_eq!((c.index, c.version, c.record_count), (0, 1, 3));
    assert_eq!(
        store.load_records(&job, c.index).await.unwrap(),
        records(0, 3)
    );
    let next = store.claim_batch(&job, "w2", T0, LEASE).await.unwrap();
    assert_eq!(next, Claim::Wait, "more batches are coming");
    store
        .finish_prepare(&job, &lease("orchestrator"), 3, 1)
        .await
        .unwrap();
    let next = store.claim_batch(&job, "w2", T0, LEASE).await.unwrap();
    assert_eq!(next, Claim::NoneAvailable);
}

pub async fn each_batch_goes_to_one_of_two_racing_workers(store: &dyn JobStore) {
    let job = job_with(store, "race", 1, false).await;
    let (a, b) = tokio::join!(
        store.claim_batch(&job, "w1", T0, LEASE),
        store.claim_batch(&job, "w2", T0, LEASE)
    );
    let won = [a.unwrap(), b.unwrap()]
        .into_iter()
        .filter(|c| matches!(c, Claim::Batch(_)))
        .count();
    assert_eq!(won, 1, "exactly one worker gets the batch");
}

pub async fn every_batch_is_handed_out_once_while_leases_are_live(store: &dyn JobStore) {
    let job = job_with(store, "many", 5, false).await;
    let mut seen = Vec::new();
    for w in 0..7 {
        match store
            .claim_batch(&job, &format!("w{w}"), T0, LEASE)
            .await
            .unwrap()
        {
            Claim::Batch(c) => seen.push(c.index),
            Claim::NoneAvailable => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    seen.sort();
    assert_eq!(seen, vec![0, 1, 2, 3, 4]);
}

pub async fn expired_lease_is_reclaimed_with_a_higher_version(store: &dyn JobStore) {
    let job = job_with(store, "stale", 1, false).await;
    let first = claim(store, &job, "w1", T0).await;
    assert!(matches!(
        store
            .claim_batch(&job, "w2", T0 + LEASE - 1, LEASE)
            .await
            .unwrap(),
        Claim::NoneAvailable
    ));
    let second = claim(store, &job, "w2", T0 + LEASE + 1).await;
    assert_eq!(second.index, first.index);
    assert!(second.version > first.version);
}

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

pub async fn zombie_worker_cannot_extend_or_release_a_reclaimed_lease(store: &dyn JobStore) {
    let job = job_with(store, "zombie-lease", 1, false).await;
    let zombie = claim(store, &job, "w1", T0).await;
    store.extend_lease(&zombie, T0 + 2 * LEASE).await.unwrap();
    // The extension holds: the batch is not reclaimable at the old expiry.
    assert!(matches!(
        store
            .claim_batch(&job, "w2", T0 + LEASE + 1, LEASE)
            .await
            .unwrap(),
        Claim::NoneAvailable
    ));
    let _fresh = claim(store, &job, "w2", T0 + 2 * LEASE + 1).await;
    assert!(matches!(
        store.extend_lease(&zombie, T0 + 5 * LEASE).await,
        Err(StoreError::ClaimLost { .. })
    ));
    assert!(matches!(
        store.release_batch(&zombie, "boom").await,
        Err(StoreError::ClaimLost { .. })
    ));
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

pub async fn released_batch_is_reclaimable_at_once_and_keeps_its_error(store: &dyn JobStore) {
    let job = job_with(store, "release", 1, false).await;
    let c = claim(store, &job, "w1", T0).await;
    store
        .release_batch(&c, "target table unavailable")
        .await
        .unwrap();
    let again = claim(store, &job, "w2", T0 + 1).await;
    assert_eq!(again.index, c.index);
    assert_eq!(again.version, c.version + 1);
    assert_eq!(
        again.last_error.as_deref(),
        Some("target table unavailable")
    );
}

/// A batch given back because its worker ran out of time is claimable at
/// once, and that claim does not count as an attempt; a release does.
pub async fn yielded_batch_is_reclaimable_at_once_without_an_attempt(store: &dyn JobStore) {
    let job = job_with(store, "yield", 1, false).await;
    let first = claim(store, &job, "w1", T0).await;
    assert_eq!(first.attempt, 1);
    store
        .release_batch(&first, "target table unavailable")
        .await
        .unwrap();
    let second = claim(store, &job, "w2", T0 + 1).await;
    assert_eq!(second.attempt, 2, "a released claim counts");
    store.yield_batch(&second).await.unwrap();
    let third = claim(store, &job, "w3", T0 + 2).await;
    assert_eq!(
        (third.index, third.version, third.attempt),
        (second.index, second.version + 1, 2),
        "a yielded claim does not count"
    );
    assert_eq!(
        third.last_error.as_deref(),
        Some("target table unavailable"),
        "the last error is kept"
    );
    store.yield_batch(&third).await.unwrap();
    let fourth = claim(store, &job, "w4", T0 + 3).await;
    assert_eq!((fourth.version, fourth.attempt), (third.version + 1, 2));
    // Fenced by the claim: a stale one gives nothing back.
    assert!(matches!(
        store.yield_batch(&third).await,
        Err(StoreError::ClaimLost { .. })
    ));
    let info = store.batch_info(&job, 0).await.unwrap().unwrap();
    assert_eq!(info.worker.as_deref(), Some("w4"));
    store.commit_batch(&fourth, &done(3), T0 + 4).await.unwrap();
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!((j.batches_done, j.processed, j.failed), (1, 3, 0));
}

pub async fn finalize_waits_for_prepare_and_every_batch(store: &dyn JobStore) {
    let job = job_with(store, "final", 2, true).await;
    let a = claim(store, &job, "w1", T0).await;
    let b = claim(store, &job, "w2", T0).await;
    store.commit_batch(&a, &done(3), T0).await.unwrap();
    assert!(
        !store
            .finalize(
                &job,
                &fin(JobStatus::Completed),
                FinalizeWhen::AllBatchesDone
            )
            .await
            .unwrap(),
        "a batch is still open"
    );
    store.commit_batch(&b, &done(3), T0).await.unwrap();
    assert!(
        !store
            .finalize(
                &job,
                &fin(JobStatus::Completed),
                FinalizeWhen::AllBatchesDone
            )
            .await
            .unwrap(),
        "prepare has not finished"
    );
    store
        .finish_prepare(&job, &lease("orchestrator"), 6, 2)
        .await
        .unwrap();
    assert!(store
        .finalize(
            &job,
            &fin(JobStatus::Completed),
            FinalizeWhen::AllBatchesDone
        )
        .await
        .unwrap());
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Completed);
    assert_eq!(j.finished_at_ms, Some(T0 + 1));
    assert!(matches!(
        store.claim_batch(&job, "w3", T0, LEASE).await.unwrap(),
        Claim::JobFinished(JobStatus::Completed)
    ));
}

pub async fn exactly_one_of_racing_finalizers_wins(store: &dyn JobStore) {
    let job = job_with(store, "finalizers", 1, false).await;
    let c = claim(store, &job, "w1", T0).await;
    store.commit_batch(&c, &done(3), T0).await.unwrap();
    let f = fin(JobStatus::Completed);
    let results = futures::future::join_all(
        (0..6).map(|_| store.finalize(&job, &f, FinalizeWhen::AllBatchesDone)),
    )
    .await;
    let wins = results
        .into_iter()
        .map(Result::unwrap)
        .filter(|won| *won)
        .count();
    assert_eq!(wins, 1);
}

pub async fn abort_finalizes_before_all_batches_are_done(store: &dyn JobStore) {
    let job = job_with(store, "abort", 3, false).await;
    let mut f = fin(JobStatus::Failed);
    f.reason = Some("2 records failed and continueOnError is false".into());
    assert!(store.finalize(&job, &f, FinalizeWhen::Now).await.unwrap());
    assert!(
        !store
            .finalize(&job, &fin(JobStatus::Completed), FinalizeWhen::Now)
            .await
            .unwrap(),
        "final is final"
    );
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(j.failure_reason, f.reason);
}

pub async fn prepare_lease_fences_a_second_orchestrator(store: &dyn JobStore) {
    let job = job_with(store, "prepare", 1, true).await;
    let second = lease("orchestrator-2");
    assert!(
        store
            .acquire_prepare(&job, &second, T0 + 1)
            .await
            .unwrap()
            .is_none(),
        "first lease is live"
    );
    let taken = store
        .acquire_prepare(&job, &second, T0 + LEASE + 1)
        .await
        .unwrap()
        .expect("expired lease");
    assert_eq!(
        taken.batches_ready, 1,
        "the new owner resumes after the written batch"
    );
    let recs = records(1, 3);
    let batch = NewBatch {
        index: 1,
        records: &recs,
    };
    // Writing a batch is idempotent and unfenced (its content is fixed by
    // the file); making it claimable is fenced.
    store
        .write_batch(&job, batch, T0 + LEASE + 2)
        .await
        .unwrap();
    let stale = store
        .publish(&job, &lease("orchestrator"), 2, None, T0 + LEASE + 2)
        .await;
    assert!(matches!(stale, Err(StoreError::PrepareLeaseLost(_))));
    let c = claim(store, &job, "w1", T0 + LEASE + 2).await;
    assert_eq!(c.index, 0, "an unpublished batch is not claimable");
    assert_eq!(
        store
            .claim_batch(&job, "w2", T0 + LEASE + 2, LEASE)
            .await
            .unwrap(),
        Claim::Wait
    );
    store
        .write_batch(&job, batch, T0 + LEASE + 3)
        .await
        .unwrap();
    store
        .publish(&job, &second, 2, None, T0 + LEASE + 3)
        .await
        .unwrap();
    let next = claim(store, &job, "w2", T0 + LEASE + 3).await;
    assert_eq!((next.index, next.record_count), (1, 3));
    assert_eq!(store.load_records(&job, 1).await.unwrap(), recs);
    assert!(
        matches!(
            store.publish(&job, &second, 1, None, T0 + LEASE + 4).await,
            Err(StoreError::PrepareLeaseLost(_))
        ),
        "publication never goes back"
    );
    let j = store.finish_prepare(&job, &second, 6, 2).await.unwrap();
    assert!(j.prepared);
    assert_eq!(
        (j.total_records, j.total_batches, j.batches_ready),
        (6, 2, 2)
    );
    assert!(
        store
            .acquire_prepare(&job, &second, T0 + 10 * LEASE)
            .await
            .unwrap()
            .is_none(),
        "prepare is over"
    );
}

pub async fn active_jobs_are_those_still_processing(store: &dyn JobStore) {
    let a = job_with(store, "active-a", 1, false).await;
    let b = job_with(store, "active-b", 1, true).await;
    let mut active = store.active_jobs().await.unwrap();
    active.sort();
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(active, both);
    assert!(store
        .finalize(&a, &fin(JobStatus::Failed), FinalizeWhen::Now)
        .await
        .unwrap());
    assert_eq!(store.active_jobs().await.unwrap(), vec![b]);
}

pub async fn lease_view_tells_live_workers_from_stalled_batches(store: &dyn JobStore) {
    let job = job_with(store, "view", 3, false).await;
    let view = store.lease_view(&job, T0).await.unwrap();
    assert_eq!(
        view,
        LeaseView {
            live: false,
            reclaimable: 0
        },
        "batches not handed out yet are not stalled"
    );
    let _dead = claim(store, &job, "dead", T0 - 2 * LEASE).await;
    let _alive = claim(store, &job, "alive", T0).await;
    let view = store.lease_view(&job, T0).await.unwrap();
    assert_eq!(
        view,
        LeaseView {
            live: true,
            reclaimable: 1
        }
    );
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!(j.batches_handed_out, 2);
}

pub async fn released_prepare_lease_is_taken_over_at_once(store: &dyn JobStore) {
    let job = job_with(store, "handoff", 1, true).await;
    let next = lease("orchestrator-2");
    assert!(store
        .acquire_prepare(&job, &next, T0 + 1)
        .await
        .unwrap()
        .is_none());
    // A stranger's release changes nothing.
    store
        .release_prepare(&job, &lease("stranger"))
        .await
        .unwrap();
    assert!(store
        .acquire_prepare(&job, &next, T0 + 2)
        .await
        .unwrap()
        .is_none());
    store
        .release_prepare(&job, &lease("orchestrator"))
        .await
        .unwrap();
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!(j.prepare_lease_until_ms, 0);
    let taken = store
        .acquire_prepare(&job, &next, T0 + 3)
        .await
        .unwrap()
        .expect("released lease");
    assert_eq!(taken.batches_ready, 1);
}

pub async fn after_an_early_finalization_commits_count_and_prepare_is_fenced(store: &dyn JobStore) {
    let owner = lease("orchestrator");
    let job = job_with(store, "aborted", 2, true).await;
    let in_flight = claim(store, &job, "w1", T0).await;
    assert!(store
        .finalize(&job, &fin(JobStatus::Failed), FinalizeWhen::Now)
        .await
        .unwrap());
    // The batch in flight was processed: its commit still counts.
    store
        .commit_batch(&in_flight, &done(3), T0 + 1)
        .await
        .unwrap();
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!(
        (j.status, j.batches_done, j.processed),
        (JobStatus::Failed, 1, 3)
    );
    // Nothing more is published or claimed.
    let recs = records(2, 3);
    store
        .write_batch(
            &job,
            NewBatch {
                index: 2,
                records: &recs,
            },
            T0 + 2,
        )
        .await
        .unwrap();
    assert!(matches!(
        store.publish(&job, &owner, 3, None, T0 + 2).await,
        Err(StoreError::PrepareLeaseLost(_))
    ));
    assert!(matches!(
        store.finish_prepare(&job, &owner, 9, 3).await,
        Err(StoreError::PrepareLeaseLost(_))
    ));
    assert_eq!(
        store.claim_batch(&job, "w2", T0 + 3, LEASE).await.unwrap(),
        Claim::JobFinished(JobStatus::Failed)
    );
}

pub async fn the_checkpoint_travels_with_its_publication(store: &dyn JobStore) {
    let src = source("checkpoint");
    let owner = lease("orchestrator");
    let CreateOutcome::Created(job) = store.create_job(&src, &owner, T0).await.unwrap() else {
        panic!("job should be new");
    };
    assert_eq!(job.prepare_checkpoint, None);
    for index in 0..2 {
        let recs = records(index, 3);
        let batch = NewBatch {
            index,
            records: &recs,
        };
        store.write_batch(&job.id, batch, T0).await.unwrap();
    }
    let at_one = r#"{"o":120,"l":5,"r":3}"#;
    store
        .publish(&job.id, &owner, 1, Some(at_one), T0)
        .await
        .unwrap();
    store.release_prepare(&job.id, &owner).await.unwrap();
    let next = lease("next");
    let taken = store
        .acquire_prepare(&job.id, &next, T0 + 1)
        .await
        .unwrap()
        .expect("a released prepare");
    assert_eq!(
        (taken.batches_ready, taken.prepare_checkpoint.as_deref()),
        (1, Some(at_one))
    );
    // A publication without a checkpoint leaves none behind: a stale one
    // would send the next owner to the wrong batch.
    store
        .publish(&job.id, &next, 2, None, T0 + 2)
        .await
        .unwrap();
    let j = store.get_job(&job.id).await.unwrap().unwrap();
    assert_eq!((j.batches_ready, j.prepare_checkpoint), (2, None));
    store
        .publish(&job.id, &next, 2, Some(at_one), T0 + 3)
        .await
        .unwrap();
    let j = store.finish_prepare(&job.id, &next, 6, 2).await.unwrap();
    assert_eq!(
        j.prepare_checkpoint, None,
        "nothing to resume once prepared"
    );
}

pub async fn renewing_the_prepare_lease_is_fenced_and_publishes_nothing(store: &dyn JobStore) {
    let job = job_with(store, "renewed", 1, true).await;
    let owner = lease("orchestrator");
    store
        .renew_prepare(&job, &owner, T0 + LEASE / 2)
        .await
        .unwrap();
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!(
        (j.prepare_lease_until_ms, j.batches_ready),
        (T0 + LEASE / 2 + LEASE, 1)
    );
    // Renewed, the lease is not free at the time it would have expired.
    assert!(store
        .acquire_prepare(&job, &lease("sweeper"), T0 + LEASE + 1)
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        store.renew_prepare(&job, &lease("sweeper"), T0 + 1).await,
        Err(StoreError::PrepareLeaseLost(_))
    ));
    store.finish_prepare(&job, &owner, 3, 1).await.unwrap();
    assert!(matches!(
        store.renew_prepare(&job, &owner, T0 + 2).await,
        Err(StoreError::PrepareLeaseLost(_))
    ));
}

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
    assert!(store
        .finalize(
            &job,
            &fin(JobStatus::CompletedWithErrors),
            FinalizeWhen::AllBatchesDone
        )
        .await
        .unwrap());
}

async fn owed(store: &dyn JobStore, job: &JobId) -> Vec<EventKind> {
    store.get_job(job).await.unwrap().unwrap().owed_events
}

pub async fn a_job_owes_each_lifecycle_event_until_acknowledged(store: &dyn JobStore) {
    use EventKind::*;
    let job = job_with(store, "owed", 1, true).await;
    assert_eq!(owed(store, &job).await, vec![Started]);
    store.ack_event(&job, Started, 0).await.unwrap();
    assert_eq!(owed(store, &job).await, vec![]);
    store
        .finish_prepare(&job, &lease("orchestrator"), 3, 1)
        .await
        .unwrap();
    assert_eq!(owed(store, &job).await, vec![Prepared]);
    // An active job's owed events are on the job, not listed.
    assert!(store.pending_events().await.unwrap().is_empty());
    assert!(store
        .finalize(&job, &fin(JobStatus::Failed), FinalizeWhen::Now)
        .await
        .unwrap());
    assert_eq!(owed(store, &job).await, vec![Prepared, Failed]);
    assert_eq!(store.pending_events().await.unwrap(), vec![job.clone()]);
    assert!(store.active_jobs().await.unwrap().is_empty());
    store.ack_event(&job, Failed, 0).await.unwrap();
    assert_eq!(owed(store, &job).await, vec![Prepared]);
    assert_eq!(store.pending_events().await.unwrap(), vec![job.clone()]);
    store.ack_event(&job, Prepared, 0).await.unwrap();
    store.ack_event(&job, Prepared, 0).await.unwrap();
    assert_eq!(owed(store, &job).await, vec![]);
    assert!(store.pending_events().await.unwrap().is_empty());
}

pub async fn each_ending_owes_the_event_that_announces_it(store: &dyn JobStore) {
    let endings = [
        ("end-ok", JobStatus::Completed, EventKind::Completed),
        (
            "end-errors",
            JobStatus::CompletedWithErrors,
            EventKind::Completed,
        ),
        ("end-failed", JobStatus::Failed, EventKind::Failed),
        ("end-aborted", JobStatus::Aborted, EventKind::Aborted),
    ];
    for (name, status, kind) in endings {
        let job = job_with(store, name, 1, false).await;
        store.ack_event(&job, EventKind::Started, 0).await.unwrap();
        store.ack_event(&job, EventKind::Prepared, 0).await.unwrap();
        assert!(store
            .finalize(&job, &fin(status), FinalizeWhen::Now)
            .await
            .unwrap());
        assert_eq!(owed(store, &job).await, vec![kind], "{status}");
    }
}

pub async fn acknowledging_an_event_not_owed_changes_nothing(store: &dyn JobStore) {
    let job = job_with(store, "not-owed", 1, true).await;
    store
        .ack_event(&job, EventKind::Completed, 0)
        .await
        .unwrap();
    assert_eq!(owed(store, &job).await, vec![EventKind::Started]);
    // Still listed as active: the acknowledgement leaves the index alone.
    assert_eq!(store.active_jobs().await.unwrap(), vec![job.clone()]);
    store.ack_event(&job, EventKind::Started, 0).await.unwrap();
    assert_eq!(store.active_jobs().await.unwrap(), vec![job.clone()]);
    assert!(store.pending_events().await.unwrap().is_empty());
}

pub async fn the_first_definition_pinned_to_a_job_stays(store: &dyn JobStore) {
    let job = source("pinned").job_id();
    assert_eq!(store.pinned_definition(&job).await.unwrap(), None);
    let first = r#"{"fields": [{"name": "a"}]}"#;
    assert_eq!(store.pin_definition(&job, first).await.unwrap(), first);
    let later = r#"{"fields": [{"name": "b"}]}"#;
    assert_eq!(store.pin_definition(&job, later).await.unwrap(), first);
    assert_eq!(
        store.pinned_definition(&job).await.unwrap().as_deref(),
        Some(first)
    );
}

pub async fn the_first_columns_pinned_to_a_job_stay_beside_its_definition(store: &dyn JobStore) {
    let job = source("columns").job_id();
    assert_eq!(store.pinned_columns(&job).await.unwrap(), None);
    let definition = r#"{"fields": [{"name": "a"}]}"#;
    store.pin_definition(&job, definition).await.unwrap();
    let first = vec!["A".to_string(), "b, \"quoted\"".to_string()];
    store.pin_columns(&job, &first).await.unwrap();
    store.pin_columns(&job, &["other".into()]).await.unwrap();
    assert_eq!(store.pinned_columns(&job).await.unwrap(), Some(first));
    assert_eq!(
        store.pinned_definition(&job).await.unwrap().as_deref(),
        Some(definition)
    );
    // A header of which no column feeds a field pins an empty list.
    let none = source("no-columns").job_id();
    store.pin_definition(&none, definition).await.unwrap();
    store.pin_columns(&none, &[]).await.unwrap();
    assert_eq!(store.pinned_columns(&none).await.unwrap(), Some(vec![]));
}

pub async fn jobs_are_listed_newest_first_by_status(store: &dyn JobStore) {
    let mut ids = Vec::new();
    for (i, name) in ["list-a", "list-b", "list-c"].iter().enumerate() {
        let CreateOutcome::Created(job) = store
            .create_job(&source(name), &lease("o"), T0 + i as i64)
            .await
            .unwrap()
        else {
            panic!("new job")
        };
        ids.push(job.id);
    }
    assert!(store
        .finalize(&ids[1], &fin(JobStatus::Failed), FinalizeWhen::Now)
        .await
        .unwrap());
    let newest_first: Vec<JobId> = ids.iter().rev().cloned().collect();
    assert_eq!(store.list_jobs(None, 10).await.unwrap(), newest_first);
    assert_eq!(store.list_jobs(None, 2).await.unwrap(), newest_first[..2]);
    assert_eq!(
        store.list_jobs(Some(JobStatus::Failed), 10).await.unwrap(),
        vec![ids[1].clone()]
    );
    assert_eq!(
        store
            .list_jobs(Some(JobStatus::Processing), 10)
            .await
            .unwrap(),
        vec![ids[2].clone(), ids[0].clone()]
    );
}

/// Stamps out one `#[tokio::test]` per conformance case for a backend;
fn target_refused(line: u64) -> FailedRecord {
    FailedRecord::unprocessed(
        line,
        vec![FieldIssue::new(None, None, "the target refused it")],
    )
}

fn not_an_email(line: u64) -> FailedRecord {
    FailedRecord::invalid(
        line,
        vec![FieldIssue::new(
            Some("email"),
            Some("nope"),
            "not a valid email address",
        )],
    )
}

/// Acknowledges every event the job owes (as a delivery would).
async fn ack_all(store: &dyn JobStore, job: &JobId) {
    let j = store.get_job(job).await.unwrap().unwrap();
    let round = j.retries;
    for kind in j.owed_events {
        store.ack_event(job, kind, round).await.unwrap();
    }
}

/// Claims and commits every batch of a prepared job; `outcome(index)` says
/// how each ends.
async fn settle(store: &dyn JobStore, job: &JobId, outcome: impl Fn(u64) -> BatchOutcome) {
    loop {
        match store.claim_batch(job, "w", T0, LEASE).await.unwrap() {
            Claim::Batch(c) => store.commit_batch(&c, &outcome(c.index), T0).await.unwrap(),
            Claim::NoneAvailable => return,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Reopens a final job for round `seen + 1`.
fn reopening(seen: u32, requeue: bool, now_ms: i64) -> Reopening {
    Reopening {
        seen_retries: seen,
        requeue,
        base: 0,
        now_ms,
    }
}

/// Every batch `retryable_batches` lists, a page of at most `limit` at a
/// time.
async fn retryable(store: &dyn JobStore, job: &JobId, limit: usize) -> Vec<u64> {
    let mut found = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .retryable_batches(job, cursor.as_deref(), limit)
            .await
            .unwrap();
        for index in page.batches {
            if found.last() != Some(&index) {
                found.push(index);
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    found.sort_unstable();
    found
}

/// Two requeue passes racing for one batch (a pass taken over by the
/// sweeper while the first still runs): one requeues it, the other is told
/// it is requeued already, and the counters move once.
pub async fn racing_requeues_of_a_batch_move_it_once(store: &dyn JobStore) {
    let job = job_with(store, "racing-requeue", 1, false).await;
    settle(store, &job, |_| BatchOutcome {
        state: BatchState::Done,
        processed: 1,
        failed: vec![target_refused(3), target_refused(4)],
        error: None,
    })
    .await;
    assert!(store
        .finalize(&job, &fin(JobStatus::Failed), FinalizeWhen::AllBatchesDone)
        .await
        .unwrap());
    ack_all(store, &job).await;
    store
        .reopen(&job, &reopening(0, true, T0 + 1))
        .await
        .unwrap()
        .unwrap();
    let (a, b) = futures::join!(
        store.requeue_batch(&job, 0, 1),
        store.requeue_batch(&job, 0, 1)
    );
    let mut outcomes = vec![a.expect("first requeue"), b.expect("second requeue")];
    outcomes.sort();
    assert_eq!(outcomes, vec![None, Some(2)]);
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!((j.batches_done, j.processed, j.failed), (0, 1, 0));
}

pub async fn a_retry_requeues_processing_failures_and_counts_move(store: &dyn JobStore) {
    // Batch 0: one processed, one invalid, one refused by the target;
    // batch 1: all processed; batch 2: poison.
    let job = job_with(store, "retry", 3, false).await;
    settle(store, &job, |index| match index {
        0 => BatchOutcome {
            state: BatchState::Done,
            processed: 1,
            failed: vec![not_an_email(3), target_refused(4)],
            error: None,
        },
        1 => done(3),
        _ => BatchOutcome {
            state: BatchState::Failed,
            processed: 0,
            failed: (202..205).map(target_refused).collect(),
            error: Some("poison".into()),
        },
    })
    .await;
    assert!(store
        .finalize(
            &job,
            &fin(JobStatus::CompletedWithErrors),
            FinalizeWhen::AllBatchesDone
        )
        .await
        .unwrap());
    for limit in [1, 2, 100] {
        assert_eq!(
            retryable(store, &job, limit).await,
            vec![0, 2],
            "pages of {limit}"
        );
    }
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!(j.retryable, 4, "the invalid record is not retryable");
    ack_all(store, &job).await;
    assert_eq!(
        store.requeue_batch(&job, 0, 1).await.unwrap(),
        None,
        "only inside a round's requeue pass"
    );

    let reopened = store
        .reopen(&job, &reopening(0, true, T0 + 10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (reopened.status, reopened.retries, reopened.round.requeuing),
        (JobStatus::Processing, 1, true)
    );
    // Every batch is done until the pass puts some back: the job must not
    // complete, and workers wait rather than leave.
    assert!(!store
        .finalize(
            &job,
            &fin(JobStatus::Completed),
            FinalizeWhen::AllBatchesDone
        )
        .await
        .unwrap());
    assert_eq!(
        store.claim_batch(&job, "w", T0 + 11, LEASE).await.unwrap(),
        Claim::Wait
    );
    assert_eq!(
        store.requeue_batch(&job, 0, 0).await.unwrap(),
        None,
        "a pass of another round"
    );
    assert_eq!(store.requeue_batch(&job, 0, 1).await.unwrap(), Some(1));
    assert_eq!(
        store.requeue_batch(&job, 0, 1).await.unwrap(),
        None,
        "requeued once"
    );
    assert_eq!(
        store.requeue_batch(&job, 1, 1).await.unwrap(),
        None,
        "nothing to rerun"
    );
    assert_eq!(store.requeue_batch(&job, 2, 1).await.unwrap(), Some(3));
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!(
        (j.batches_done, j.processed, j.failed, j.retryable),
        (1, 4, 1, 0)
    );
    assert!(store
        .note_requeue(&job, 1, "somewhere", T0 + 12)
        .await
        .unwrap());
    assert!(!store
        .note_requeue(&job, 0, "somewhere", T0 + 12)
        .await
        .unwrap());
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!(
        (j.round.requeue_cursor.as_deref(), j.round.requeued_at_ms),
        (Some("somewhere"), T0 + 12)
    );
    let mut seen = Vec::new();
    for _ in 0..2 {
        let c = claim(store, &job, "w2", T0 + 20).await;
        assert_eq!(c.attempt, 1, "attempts count from the requeue");
        let rerun = c.rerun.expect("a requeued batch says what it kept");
        let outcome = match c.index {
            0 => {
                assert_eq!((rerun.processed, rerun.failed), (1, 1));
                BatchOutcome {
                    state: BatchState::Done,
                    processed: 2,
                    failed: vec![not_an_email(3)],
                    error: None,
                }
            }
            _ => {
                assert_eq!((rerun.processed, rerun.failed), (0, 0));
                BatchOutcome {
                    state: BatchState::Done,
                    processed: 2,
                    failed: vec![target_refused(203)],
                    error: None,
                }
            }
        };
        store.commit_batch(&c, &outcome, T0 + 30).await.unwrap();
        seen.push(c.index);
    }
    seen.sort();
    assert_eq!(seen, vec![0, 2]);
    assert_eq!(
        store.requeue_batch(&job, 2, 1).await.unwrap(),
        None,
        "a batch its own round ran, found by a pass that runs twice"
    );
    assert_eq!(
        store.claim_batch(&job, "w2", T0 + 40, LEASE).await.unwrap(),
        Claim::Wait,
        "the pass has not ended"
    );
    assert!(store.finish_requeue(&job, 1, 5, T0 + 41).await.unwrap());
    assert!(
        !store.finish_requeue(&job, 1, 5, T0 + 42).await.unwrap(),
        "ended once"
    );
    assert!(!store.note_requeue(&job, 1, "late", T0 + 42).await.unwrap());
    assert!(matches!(
        store.claim_batch(&job, "w2", T0 + 43, LEASE).await.unwrap(),
        Claim::NoneAvailable
    ));
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!(
        (j.batches_done, j.processed, j.failed, j.retryable),
        (3, 7, 2, 1)
    );
    assert_eq!(
        (j.round.requeuing, j.round.started_at_ms, j.round.base),
        (false, T0 + 41, 5)
    );
    assert_eq!(
        store.failed_records(&job, 0).await.unwrap(),
        vec![not_an_email(3)]
    );
    assert_eq!(
        store.failed_records(&job, 2).await.unwrap(),
        vec![target_refused(203)]
    );
    assert!(store
        .finalize(
            &job,
            &fin(JobStatus::CompletedWithErrors),
            FinalizeWhen::AllBatchesDone
        )
        .await
        .unwrap());
    // A pass that runs late, after the round ended, changes nothing.
    assert_eq!(store.requeue_batch(&job, 2, 1).await.unwrap(), None);
    // A round ended during its pass (an abort) ends the pass; the next
    // round without failures to put back has none.
    ack_all(store, &job).await;
    store
        .reopen(&job, &reopening(1, true, T0 + 50))
        .await
        .unwrap()
        .unwrap();
    assert!(store
        .finalize(&job, &fin(JobStatus::Aborted), FinalizeWhen::Now)
        .await
        .unwrap());
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert!(!j.round.requeuing, "the pass ended with its round");
    assert!(!store.note_requeue(&job, 2, "late", T0 + 51).await.unwrap());
    ack_all(store, &job).await;
    let j = store
        .reopen(&job, &reopening(2, false, T0 + 52))
        .await
        .unwrap()
        .unwrap();
    assert!(!j.round.requeuing);
    // The next round sees only what is still retryable.
    assert_eq!(retryable(store, &job, 1).await, vec![2]);
}

pub async fn a_rerun_replaces_the_earlier_failure_items(store: &dyn JobStore) {
    // Failures large enough to take several stored items, then none.
    let job = job_with(store, "replace", 1, false).await;
    let big = |line: u64| {
        FailedRecord::unprocessed(
            line,
            vec![FieldIssue::new(None, None, "x".repeat(150 * 1024))],
        )
    };
    settle(store, &job, |_| BatchOutcome {
        state: BatchState::Done,
        processed: 0,
        failed: (2..5).map(big).collect(),
        error: None,
    })
    .await;
    assert!(store
        .finalize(&job, &fin(JobStatus::Failed), FinalizeWhen::AllBatchesDone)
        .await
        .unwrap());
    ack_all(store, &job).await;
    store
        .reopen(&job, &reopening(0, true, T0 + 10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.requeue_batch(&job, 0, 1).await.unwrap(), Some(3));
    let c = claim(store, &job, "w", T0 + 20).await;
    store.commit_batch(&c, &done(3), T0 + 30).await.unwrap();
    assert!(store.failed_records(&job, 0).await.unwrap().is_empty());
    assert!(retryable(store, &job, 10).await.is_empty());
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!((j.batches_done, j.processed, j.failed), (1, 3, 0));
}

pub async fn a_job_reopens_once_per_round_and_only_when_final(store: &dyn JobStore) {
    let job = job_with(store, "reopen", 1, true).await;
    assert!(
        store
            .reopen(&job, &reopening(0, false, T0))
            .await
            .unwrap()
            .is_none(),
        "a running job is not reopened"
    );
    assert_eq!(store.note_prepare_failure(&job, "boom").await.unwrap(), 1);
    let f = Finalization {
        status: JobStatus::Aborted,
        reason: Some("stop".into()),
        report_owed: true,
        now_ms: T0 + 1,
    };
    assert!(store.finalize(&job, &f, FinalizeWhen::Now).await.unwrap());
    assert!(
        store
            .reopen(&job, &reopening(0, false, T0 + 2))
            .await
            .unwrap()
            .is_none(),
        "not while the aborted event is owed"
    );
    ack_all(store, &job).await;
    assert!(
        store
            .reopen(&job, &reopening(1, false, T0 + 2))
            .await
            .unwrap()
            .is_none(),
        "a round not seen"
    );
    let j = store
        .reopen(&job, &reopening(0, false, T0 + 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((j.status, j.retries), (JobStatus::Processing, 1));
    assert_eq!(
        (j.finished_at_ms, j.failure_reason, j.report),
        (None, None, None)
    );
    assert!(!j.prepared);
    assert_eq!(j.prepare_failures, 0);
    assert_eq!(
        (j.round.requeuing, j.round.started_at_ms),
        (false, T0 + 2),
        "the round counts from its reopening"
    );
    assert!(
        store
            .reopen(&job, &reopening(0, false, T0 + 3))
            .await
            .unwrap()
            .is_none(),
        "a retry of round 0 while round 1 runs"
    );
    assert_eq!(store.active_jobs().await.unwrap(), vec![job.clone()]);
    assert_eq!(
        store
            .list_jobs(Some(JobStatus::Processing), 10)
            .await
            .unwrap(),
        vec![job.clone()]
    );
    // The unfinished prepare is free for the next orchestrator.
    assert!(store
        .acquire_prepare(&job, &lease("next"), T0 + 4)
        .await
        .unwrap()
        .is_some());
    // Round 1 ends too; a late retry of round 0 is fenced by the round
    // alone (the job is final and owes nothing).
    assert!(store.finalize(&job, &f, FinalizeWhen::Now).await.unwrap());
    ack_all(store, &job).await;
    assert!(
        store
            .reopen(&job, &reopening(0, false, T0 + 5))
            .await
            .unwrap()
            .is_none(),
        "a second retry of round 0"
    );
    let j = store
        .reopen(&job, &reopening(1, false, T0 + 5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(j.retries, 2);
}

/// A sweeper that stalled after sending round 0's ending event and then
/// acknowledges it must not erase round 1's event of the same kind.
pub async fn a_late_acknowledgement_leaves_the_next_rounds_event_owed(store: &dyn JobStore) {
    let job = job_with(store, "late-ack", 1, false).await;
    settle(store, &job, |_| done(3)).await;
    let f = fin(JobStatus::Completed);
    assert!(store
        .finalize(&job, &f, FinalizeWhen::AllBatchesDone)
        .await
        .unwrap());
    ack_all(store, &job).await;
    store
        .reopen(&job, &reopening(0, false, T0 + 1))
        .await
        .unwrap()
        .unwrap();
    assert!(store
        .finalize(&job, &f, FinalizeWhen::AllBatchesDone)
        .await
        .unwrap());
    assert_eq!(owed(store, &job).await, vec![EventKind::Completed]);
    store
        .ack_event(&job, EventKind::Completed, 0)
        .await
        .unwrap();
    assert_eq!(
        owed(store, &job).await,
        vec![EventKind::Completed],
        "round 0's acknowledgement is not round 1's"
    );
    assert_eq!(store.pending_events().await.unwrap(), vec![job.clone()]);
    store
        .ack_event(&job, EventKind::Completed, 1)
        .await
        .unwrap();
    assert_eq!(owed(store, &job).await, vec![]);
    assert!(store.pending_events().await.unwrap().is_empty());
}

/// Batches written together (more records items than one BatchWriteItem
/// takes) are each stored whole, and one already written and claimed is
/// left as it is.
pub async fn batches_written_together_are_stored_whole_and_claimed_ones_kept(store: &dyn JobStore) {
    let job = job_with(store, "together", 1, true).await;
    let owner = lease("orchestrator");
    let first = claim(store, &job, "w0", T0 + 1).await;
    assert_eq!(first.index, 0);
    let records: Vec<Vec<StagedRecord>> = (0..30).map(|i| records(i, 1 + i % 4)).collect();
    let batches: Vec<NewBatch<'_>> = records
        .iter()
        .zip(0..)
        .map(|(records, index)| NewBatch { index, records })
        .collect();
    // Batch 0 as it was cut before, written again with the rest.
    let original = self::records(0, 3);
    let mut again = batches.clone();
    again[0].records = &original;
    store.write_batches(&job, &again, T0 + 2).await.unwrap();
    store.publish(&job, &owner, 30, None, T0 + 2).await.unwrap();
    let mut seen = Vec::new();
    for w in 1..30 {
        let c = claim(store, &job, &format!("w{w}"), T0 + 3).await;
        assert_eq!(c.record_count, records[c.index as usize].len() as u64);
        assert_eq!(
            store.load_records(&job, c.index).await.unwrap(),
            records[c.index as usize]
        );
        seen.push(c.index);
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..30).collect::<Vec<u64>>(), "batch 0 stays claimed");
    assert_eq!(
        store
            .claim_batch(&job, "late", T0 + 3, LEASE)
            .await
            .unwrap(),
        Claim::Wait
    );
    assert_eq!(store.load_records(&job, 0).await.unwrap(), original);
    let committed = store.commit_batch(&first, &done(3), T0 + 4).await;
    assert!(
        committed.is_ok(),
        "the first claim still holds: {committed:?}"
    );
}

/// `$make` is an async block returning a fresh store.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            create_job_is_idempotent_per_object_version,
            batches_are_claimable_as_soon_as_written,
            each_batch_goes_to_one_of_two_racing_workers,
            every_batch_is_handed_out_once_while_leases_are_live,
            expired_lease_is_reclaimed_with_a_higher_version,
            zombie_worker_cannot_commit_reclaimed_batch,
            zombie_worker_cannot_extend_or_release_a_reclaimed_lease,
            committing_twice_counts_once,
            counters_and_failures_move_with_the_batch,
            released_batch_is_reclaimable_at_once_and_keeps_its_error,
            yielded_batch_is_reclaimable_at_once_without_an_attempt,
            finalize_waits_for_prepare_and_every_batch,
            exactly_one_of_racing_finalizers_wins,
            abort_finalizes_before_all_batches_are_done,
            prepare_lease_fences_a_second_orchestrator,
            released_prepare_lease_is_taken_over_at_once,
            active_jobs_are_those_still_processing,
            lease_view_tells_live_workers_from_stalled_batches,
            after_an_early_finalization_commits_count_and_prepare_is_fenced,
            the_checkpoint_travels_with_its_publication,
            renewing_the_prepare_lease_is_fenced_and_publishes_nothing,
            counters_add_up_over_many_batches_and_workers,
            a_job_owes_each_lifecycle_event_until_acknowledged,
            each_ending_owes_the_event_that_announces_it,
            acknowledging_an_event_not_owed_changes_nothing,
            the_first_definition_pinned_to_a_job_stays,
            the_first_columns_pinned_to_a_job_stay_beside_its_definition,
            jobs_are_listed_newest_first_by_status,
            a_retry_requeues_processing_failures_and_counts_move,
            racing_requeues_of_a_batch_move_it_once,
            a_rerun_replaces_the_earlier_failure_items,
            a_job_reopens_once_per_round_and_only_when_final,
            a_late_acknowledgement_leaves_the_next_rounds_event_owed,
            batches_written_together_are_stored_whole_and_claimed_ones_kept,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let store = $make.await;
                $crate::store::conformance::$case(&store).await;
            }
        )*
    };
}
