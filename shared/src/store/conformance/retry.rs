//! Conformance cases for retries: a final job reopens once per round, the
//! batches with processing failures are listed and requeued, and the
//! counters move once.

use super::*;
use crate::job::FieldIssue;

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
        duplicates: 0,
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
            duplicates: 0,
        },
        1 => done(3),
        _ => BatchOutcome {
            state: BatchState::Failed,
            processed: 0,
            failed: (202..205).map(target_refused).collect(),
            error: Some("poison".into()),
            duplicates: 0,
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
                    duplicates: 0,
                }
            }
            _ => {
                assert_eq!((rerun.processed, rerun.failed), (0, 0));
                BatchOutcome {
                    state: BatchState::Done,
                    processed: 2,
                    failed: vec![target_refused(203)],
                    error: None,
                    duplicates: 0,
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
        duplicates: 0,
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
            .list_jobs(Some(JobStatus::Processing), None, 10)
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
