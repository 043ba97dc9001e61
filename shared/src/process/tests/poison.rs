//! Poison batches: a batch whose workers keep dying, or whose records
//! cannot be loaded, fails after maxAttempts and the job still finishes.

use super::*;
use crate::job::JobStatus;

#[tokio::test]
async fn poison_batch_is_failed_after_max_attempts_and_the_job_still_finishes() {
    let f = Fixture::new("");
    let id = job(
        &f.store,
        &[
            vec![record(2, "a@x.org"), record(3, "b@x.org")],
            vec![record(4, "c@x.org")],
        ],
    )
    .await;
    // Batch 1 goes through; three workers in a row claim batch 0 and die.
    let long_ago = now_ms() - 600_000;
    let Claim::Batch(c) = f
        .store
        .claim_batch(&id, "doomed", long_ago, 60_000)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(c.index, 0);
    let Claim::Batch(ok) = f
        .store
        .claim_batch(&id, "fine", long_ago, 60_000)
        .await
        .unwrap()
    else {
        panic!()
    };
    let outcome = BatchOutcome {
        state: BatchState::Done,
        processed: 1,
        failed: vec![],
        error: None,
        duplicates: 0,
    };
    f.store.commit_batch(&ok, &outcome, long_ago).await.unwrap();
    for attempt in 1..3 {
        let Claim::Batch(c) = f
            .store
            .claim_batch(&id, "doomed", long_ago + attempt * 61_000, 60_000)
            .await
            .unwrap()
        else {
            panic!()
        };
        assert_eq!((c.index, c.version), (0, attempt as u64 + 1));
    }
    let processor = Scripted::default();
    let worker = f.worker(&processor);
    let report = worker.run(&id, "w", None).await.unwrap();
    assert!(report.finalized);
    let info = f.store.batch_info(&id, 0).await.unwrap().unwrap();
    assert_eq!(
        (info.state, info.version, info.failed),
        (BatchState::Failed, 4, 2)
    );
    assert!(info
        .last_error
        .unwrap()
        .starts_with("batch abandoned after 3 attempts"));
    let failed = f.store.failed_records(&id, 0).await.unwrap();
    assert_eq!(
        failed.iter().map(|f| f.line).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert!(
        processor.done.lock().unwrap().is_empty(),
        "the poison batch's records were not processed"
    );
    let j = f.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(
        (j.status, j.processed, j.failed),
        (JobStatus::CompletedWithErrors, 1, 2)
    );
}

#[tokio::test]
async fn a_batch_whose_records_cannot_be_loaded_is_failed_after_max_attempts() {
    let f = Fixture::new("");
    let id = job(
        &f.store,
        &[
            vec![record(2, "a@x.org"), record(3, "b@x.org")],
            vec![record(4, "c@x.org")],
        ],
    )
    .await;
    f.store.lose_records(&id, 0);
    let processor = Scripted::default();
    let worker = f.worker(&processor);
    let mut load_errors = 0;
    let mut finalized = false;
    for _ in 0..10 {
        match worker.run(&id, "w", None).await {
            Ok(report) if report.finalized => {
                finalized = true;
                break;
            }
            Ok(_) => {}
            Err(WorkError::Store(StoreError::Corrupt { .. })) => {
                load_errors += 1;
                // Given back with the reason, for the next attempt at once.
                let info = f.store.batch_info(&id, 0).await.unwrap().unwrap();
                assert_eq!(info.lease_until_ms, 0);
                let reason = info.last_error.unwrap();
                assert!(
                    reason.contains("batch 0 holds 0 records, expected 2"),
                    "{reason}"
                );
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert!(finalized, "the job finishes despite the unreadable batch");
    assert_eq!(load_errors, 3, "one failed attempt per maxAttempts");
    let info = f.store.batch_info(&id, 0).await.unwrap().unwrap();
    assert_eq!((info.state, info.failed), (BatchState::Failed, 2));
    let failed = f.store.failed_records(&id, 0).await.unwrap();
    assert_eq!(failed.len(), 2, "one failed record per record of the batch");
    for record in &failed {
        assert_eq!(record.line, 0, "the lines cannot be known");
        let message = &record.issues[0].message;
        assert!(
            message.starts_with("batch 0: records could not be loaded after 3 attempts: "),
            "{message}"
        );
    }
    let j = f.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(
        (j.status, j.processed, j.failed),
        (JobStatus::CompletedWithErrors, 1, 2)
    );
}
