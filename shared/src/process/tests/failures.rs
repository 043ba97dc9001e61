//! How record failures end: retryable ones are retried up to maxRetries,
//! permanent ones are reported, continueOnError=false fails the job, and a
//! processor's missing or surplus results are handled.

use super::*;
use crate::job::JobStatus;

#[tokio::test]
async fn retryable_errors_are_retried_and_permanent_ones_reported() {
    let f = Fixture::new("");
    let id = job(
        &f.store,
        &[
            vec![record(2, "flaky@x.org"), record(3, "bad@x.org")],
            vec![record(4, "ok@x.org"), record(5, "nope")],
        ],
    )
    .await;
    let processor = Scripted {
        flaky: 2,
        ..Default::default()
    };
    let worker = f.worker(&processor);
    let report = worker.run(&id, "w", None).await.unwrap();
    assert_eq!(
        (
            report.batches,
            report.processed,
            report.failed,
            report.finalized
        ),
        (2, 2, 2, true)
    );
    assert_eq!(*processor.done.lock().unwrap(), vec![2, 4]);
    let failed = f.store.failed_records(&id, 0).await.unwrap();
    assert_eq!(failed[0].line, 3);
    assert_eq!(
        failed[0].issues[0].message,
        "processing failed: rejected by the target"
    );
    let invalid = f.store.failed_records(&id, 1).await.unwrap();
    assert_eq!(
        (invalid[0].line, invalid[0].issues[0].field.as_deref()),
        (5, Some("email"))
    );
    let j = f.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::CompletedWithErrors);
    assert_eq!(f.events.endings().len(), 1);
}

#[tokio::test]
async fn a_record_still_failing_after_max_retries_is_reported_with_the_count() {
    let f = Fixture::new("");
    let id = job(&f.store, &[vec![record(2, "flaky@x.org")]]).await;
    let processor = Scripted {
        flaky: 10,
        ..Default::default()
    };
    let worker = f.worker(&processor);
    worker.run(&id, "w", None).await.unwrap();
    assert_eq!(
        processor.calls.load(Ordering::SeqCst),
        3,
        "first try + maxRetries"
    );
    let failed = f.store.failed_records(&id, 0).await.unwrap();
    assert_eq!(
        failed[0].issues[0].message,
        "processing failed after 2 retries: timeout"
    );
    let j = f.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Failed, "every record failed");
    assert_eq!(j.failure_reason.as_deref(), Some("all 1 records failed"));
}

#[tokio::test]
async fn continue_on_error_false_fails_the_job_at_the_first_failed_record() {
    let f = Fixture::new(r#""continueOnError": false"#);
    let id = job(
        &f.store,
        &[
            vec![record(2, "ok@x.org"), record(3, "nope")],
            vec![record(4, "c@x.org")],
        ],
    )
    .await;
    let processor = Scripted::default();
    let worker = f.worker(&processor);
    let report = worker.run(&id, "w", None).await.unwrap();
    assert_eq!(
        (report.stop, report.batches, report.finalized),
        (StopReason::JobFinished, 1, true)
    );
    let j = f.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Failed);
    assert!(j.failure_reason.unwrap().starts_with("line 3: "));
    assert_eq!(f.events.endings().len(), 1);
}

/// Processes every record but answers for the first `answers` only (or for
/// more records than it was given), as a buggy batch processor would.
struct Miscounting {
    answers: usize,
    calls: AtomicU32,
}

#[async_trait]
impl RecordProcessor for Miscounting {
    async fn process(
        &self,
        _record: &ValidRecord,
        _ctx: &ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        Ok(())
    }

    async fn process_batch(
        &self,
        _records: &[&ValidRecord],
        _ctx: &ProcessContext<'_>,
    ) -> Vec<Result<(), ProcessError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        (0..self.answers).map(|_| Ok(())).collect()
    }
}

#[tokio::test]
async fn records_the_processor_returned_no_result_for_fail_permanently() {
    let f = Fixture::new("");
    let id = job(
        &f.store,
        &[vec![
            record(2, "a@x.org"),
            record(3, "b@x.org"),
            record(4, "c@x.org"),
        ]],
    )
    .await;
    let processor = Miscounting {
        answers: 1,
        calls: AtomicU32::new(0),
    };
    let report = f.worker(&processor).run(&id, "w", None).await.unwrap();
    assert_eq!((report.processed, report.failed), (1, 2));
    assert_eq!(processor.calls.load(Ordering::SeqCst), 1, "not retried");
    let failed = f.store.failed_records(&id, 0).await.unwrap();
    assert_eq!(
        failed
            .iter()
            .map(|r| (r.line, r.issues[0].message.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (
                3,
                "processing failed: the processor returned 1 results for 3 records"
            ),
            (
                4,
                "processing failed: the processor returned 1 results for 3 records"
            ),
        ]
    );
    let j = f.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(
        (j.status, j.processed, j.failed),
        (JobStatus::CompletedWithErrors, 1, 2)
    );
}

#[tokio::test]
async fn surplus_results_of_the_processor_are_ignored() {
    let f = Fixture::new("");
    let id = job(
        &f.store,
        &[vec![record(2, "a@x.org"), record(3, "b@x.org")]],
    )
    .await;
    let processor = Miscounting {
        answers: 5,
        calls: AtomicU32::new(0),
    };
    let report = f.worker(&processor).run(&id, "w", None).await.unwrap();
    assert_eq!((report.processed, report.failed), (2, 0));
    let j = f.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(
        (j.status, j.processed, j.failed),
        (JobStatus::Completed, 2, 0)
    );
}
