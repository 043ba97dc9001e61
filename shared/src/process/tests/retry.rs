//! An operator's retry of a finished job: only processing failures rerun,
//! a poison batch gets its attempts back, and a running job is not retried.

use super::*;
use crate::job::JobStatus;

fn steering<'a>(
    f: &'a Fixture,
    queue: &'a crate::queue::MemoryQueue,
) -> crate::steer::Steering<'a> {
    crate::steer::Steering {
        store: &f.store,
        queue,
        prepare_queue: None,
        events: &f.events,
        max_workers: 4,
        inline_requeue: true,
        clock: &f.clock,
    }
}

#[tokio::test]
async fn a_retry_reruns_processing_failures_only_and_counts_move() {
    let f = Fixture::new("");
    let id = job(
        &f.store,
        &[
            vec![record(2, "flaky@x.org"), record(3, "ok@x.org")],
            vec![record(4, "nope"), record(5, "bad@x.org")],
        ],
    )
    .await;
    let processor = Scripted {
        flaky: 10,
        ..Default::default()
    };
    f.worker(&processor).run(&id, "w", None).await.unwrap();
    let j = f.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(
        (j.status, j.processed, j.failed),
        (JobStatus::CompletedWithErrors, 1, 3)
    );

    // The target is fixed; the operator retries.
    processor.fixed.store(true, Ordering::SeqCst);
    processor.done.lock().unwrap().clear();
    let queue = crate::queue::MemoryQueue::default();
    let started = steering(&f, &queue).retry(&id).await.unwrap();
    let pass = steering(&f, &queue).requeue(&id, None).await.unwrap();
    assert_eq!(
        pass,
        crate::steer::RequeueOutcome::Finished {
            batches: 2,
            records: 2
        }
    );
    assert_eq!(
        (started.requeuing, started.records),
        (true, 2),
        "the pass ran inline and put both failures back"
    );
    assert_eq!(started.job.retries, 1);
    assert!(!queue.sent.lock().unwrap().is_empty(), "workers are woken");
    let report = f.worker(&processor).run(&id, "w", None).await.unwrap();
    assert!(report.finalized);
    assert_eq!(
        (report.processed, report.failed),
        (2, 0),
        "a rerun counts the records it settled, not the earlier run's"
    );
    let mut rerun = processor.done.lock().unwrap().clone();
    rerun.sort();
    assert_eq!(rerun, vec![2, 5], "only the processing failures ran again");
    let j = f.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(
        (j.status, j.processed, j.failed, j.retries),
        (JobStatus::CompletedWithErrors, 3, 1, 1)
    );
    let left = f.store.failed_records(&id, 1).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0].line, left[0].stage),
        (4, crate::job::FailureStage::Validation)
    );
    assert!(f.store.failed_records(&id, 0).await.unwrap().is_empty());
    let ids: Vec<String> = f
        .events
        .endings()
        .iter()
        .map(|e| e.event_id.clone())
        .collect();
    assert_eq!(
        ids,
        vec![format!("{id}:completed"), format!("{id}:completed:retry-1")]
    );

    // Only validation failures are left: nothing more to retry.
    let again = steering(&f, &queue).retry(&id).await;
    assert!(
        matches!(again, Err(crate::steer::SteerError::NothingToRetry { .. })),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_retried_poison_batch_gets_its_attempts_back() {
    let f = Fixture::new("");
    let id = job(
        &f.store,
        &[vec![record(2, "a@x.org"), record(3, "b@x.org")]],
    )
    .await;
    // Three workers in a row claim the batch and die.
    let long_ago = now_ms() - 600_000;
    for attempt in 0..3 {
        let claim = f
            .store
            .claim_batch(&id, "doomed", long_ago + attempt * 61_000, 60_000)
            .await
            .unwrap();
        assert!(matches!(claim, Claim::Batch(_)));
    }
    let processor = Scripted::default();
    f.worker(&processor).run(&id, "w", None).await.unwrap();
    let j = f.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!((j.status, j.failed), (JobStatus::Failed, 2));

    let queue = crate::queue::MemoryQueue::default();
    steering(&f, &queue).retry(&id).await.unwrap();
    steering(&f, &queue).requeue(&id, None).await.unwrap();
    f.worker(&processor).run(&id, "w", None).await.unwrap();
    assert_eq!(*processor.done.lock().unwrap(), vec![2, 3]);
    let j = f.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(
        (j.status, j.processed, j.failed),
        (JobStatus::Completed, 2, 0)
    );
}

#[tokio::test]
async fn a_running_job_is_not_retried() {
    let f = Fixture::new("");
    let id = job(&f.store, &[vec![record(2, "a@x.org")]]).await;
    let queue = crate::queue::MemoryQueue::default();
    let r = steering(&f, &queue).retry(&id).await;
    assert!(
        matches!(r, Err(crate::steer::SteerError::NotFinal(_))),
        "{r:?}"
    );
    let r = steering(&f, &queue).retry(&JobId::new("nope")).await;
    assert!(
        matches!(r, Err(crate::steer::SteerError::NotFound(_))),
        "{r:?}"
    );
}
