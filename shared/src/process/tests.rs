//! The worker loop on the in-memory store: retries, poison batches,
//! continueOnError, and a worker that loses its lease mid-batch.

use super::*;
use crate::events::MemoryEvents;
use crate::job::JobStatus;
use crate::job::SourceRef;
use crate::processor::ProcessError;
use crate::report::MemoryReports;
use crate::store::memory::MemoryStore;
use crate::store::{ClaimStore, JobControl, PrepareStore};
use crate::store::{CreateOutcome, NewBatch, PrepareLease};
use crate::throttle::MemoryThrottle;
use async_trait::async_trait;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

const DEFINITION: &str = r#"{"fields": [{"name": "email", "type": "email", "required": true}], "keyField": "email", "batchSize": 2, "maxRetries": 2, "maxAttempts": 3}"#;

fn definition(extra: &str) -> Definition {
    let text = if extra.is_empty() {
        DEFINITION.to_string()
    } else {
        DEFINITION.replacen('{', &format!("{{{extra},"), 1)
    };
    Definition::from_json(&text, "test").unwrap()
}

fn record(line: u64, email: &str) -> StagedRecord {
    StagedRecord {
        line,
        values: vec![Some(email.into())].into(),
        issue: None,
    }
}

fn lease() -> PrepareLease {
    PrepareLease {
        owner: "o".into(),
        lease_ms: 60_000,
    }
}

/// A job with these batches written, prepare still running.
async fn open_job(store: &MemoryStore, batches: &[Vec<StagedRecord>]) -> JobId {
    let src = SourceRef {
        bucket: "b".into(),
        key: "k".into(),
        version: "v".into(),
    };
    let CreateOutcome::Created(job) = store.create_job(&src, &lease(), now_ms()).await.unwrap()
    else {
        panic!("a new job")
    };
    for (index, records) in batches.iter().enumerate() {
        let batch = NewBatch {
            index: index as u64,
            records,
        };
        store.write_batch(&job.id, batch, now_ms()).await.unwrap();
    }
    job.id
}

/// A prepared job with these batches.
async fn job(store: &MemoryStore, batches: &[Vec<StagedRecord>]) -> JobId {
    let id = open_job(store, batches).await;
    let total = batches.iter().map(|b| b.len() as u64).sum();
    store
        .finish_prepare(&id, &lease(), total, batches.len() as u64)
        .await
        .unwrap();
    id
}

/// The in-memory backends a worker runs on.
struct Fixture {
    store: MemoryStore,
    throttle: MemoryThrottle,
    events: MemoryEvents,
    reports: MemoryReports,
    definition: Definition,
    settings: WorkerSettings,
}

impl Fixture {
    fn new(extra_options: &str) -> Self {
        Fixture {
            store: MemoryStore::new(),
            throttle: MemoryThrottle::default(),
            events: MemoryEvents::default(),
            reports: MemoryReports::default(),
            definition: definition(extra_options),
            settings: settings(),
        }
    }

    fn worker<'a>(&'a self, processor: &'a dyn RecordProcessor) -> Worker<'a> {
        Worker {
            store: &self.store,
            processor,
            throttle: &self.throttle,
            events: &self.events,
            reports: &self.reports,
            definition: &self.definition,
            settings: &self.settings,
        }
    }
}

/// Fails every record whose email starts with "flaky" the first `flaky`
/// times (retryable), and "bad" ones always (permanent).
#[derive(Default)]
struct Scripted {
    flaky: u32,
    calls: AtomicU32,
    done: Mutex<Vec<u64>>,
    /// The cause was fixed downstream: every record goes through.
    fixed: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl RecordProcessor for Scripted {
    async fn process(
        &self,
        record: &ValidRecord,
        ctx: &ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let email = record.get("email").and_then(|v| v.as_str()).unwrap();
        if self.fixed.load(Ordering::SeqCst) {
            self.done.lock().unwrap().push(record.line);
            return Ok(());
        }
        if email.starts_with("bad") {
            return Err(ProcessError::permanent("rejected by the target"));
        }
        if email.starts_with("flaky") && ctx.retry < self.flaky {
            return Err(ProcessError::retryable("timeout"));
        }
        self.done.lock().unwrap().push(record.line);
        Ok(())
    }
}

fn settings() -> WorkerSettings {
    WorkerSettings {
        backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(2)),
        ..WorkerSettings::default()
    }
}

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

/// Holds every record until released, so a test can act mid-batch.
struct Gate(tokio::sync::Notify);

#[async_trait]
impl RecordProcessor for Gate {
    async fn process(
        &self,
        _record: &ValidRecord,
        _ctx: &ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        self.0.notified().await;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn worker_whose_lease_was_taken_stops_and_drops_its_result() {
    let mut f = Fixture::new("");
    f.settings.lease = Duration::from_secs(3);
    let id = job(&f.store, &[vec![record(2, "a@x.org")]]).await;
    let gate = Gate(tokio::sync::Notify::new());
    let worker = f.worker(&gate);
    let run = worker.run(&id, "slow", None);
    tokio::pin!(run);
    // Let the slow worker claim the batch and block in the processor.
    tokio::select! { _ = &mut run => panic!("the gate holds the worker"), _ = tokio::task::yield_now() => {} }
    let held = f.store.batch_info(&id, 0).await.unwrap().unwrap();
    assert_eq!(held.worker.as_deref(), Some("slow"));
    // Another worker reclaims it as if the lease had expired.
    let Claim::Batch(fresh) = f
        .store
        .claim_batch(&id, "fresh", held.lease_until_ms + 1, 60_000)
        .await
        .unwrap()
    else {
        panic!()
    };
    // The slow worker's next heartbeat finds the claim gone and stops.
    let report = run.await.unwrap();
    assert_eq!((report.lost_claims, report.batches), (1, 0));
    f.store
        .commit_batch(
            &fresh,
            &BatchOutcome {
                state: BatchState::Done,
                processed: 1,
                failed: vec![],
                error: None,
            },
            now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(f.store.get_job(&id).await.unwrap().unwrap().processed, 1);
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_catches_up_with_prepare_waits_for_the_next_batch() {
    let f = Fixture::new("");
    let id = open_job(&f.store, &[vec![record(2, "a@x.org")]]).await;
    let processor = Scripted::default();
    let worker = f.worker(&processor);
    // The orchestrator writes the second batch while the worker waits.
    let orchestrator = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let second = vec![record(3, "b@x.org")];
        let batch = NewBatch {
            index: 1,
            records: &second,
        };
        f.store.write_batch(&id, batch, now_ms()).await.unwrap();
        f.store.finish_prepare(&id, &lease(), 2, 2).await.unwrap();
    };
    let (report, ()) = tokio::join!(worker.run(&id, "w", None), orchestrator);
    let report = report.unwrap();
    assert_eq!(
        (report.batches, report.processed, report.finalized),
        (2, 2, true)
    );
    assert_eq!(*processor.done.lock().unwrap(), vec![2, 3]);
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
    assert_eq!(
        (started.requeuing, started.records),
        (false, 2),
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

/// Wall-clock time that follows tokio's paused clock, from half past a
/// second: the cap's windows advance only as the workers wait for them.
fn paused_clock() -> Clock {
    const ORIGIN_MS: i64 = 1_800_000_000_500;
    let origin = tokio::time::Instant::now();
    Clock::new(move || ORIGIN_MS + origin.elapsed().as_millis() as i64)
}

#[tokio::test(start_paused = true)]
async fn capped_workers_share_the_cap_and_a_batch_larger_than_it_spans_windows() {
    let mut f = Fixture::new(r#""maxWriteUnitsPerSecond": 5"#);
    f.settings.clock = paused_clock();
    let batches: Vec<Vec<StagedRecord>> = (0..3)
        .map(|b| {
            (0..8)
                .map(|i| record(2 + b * 8 + i, &format!("u{b}-{i}@x.org")))
                .collect()
        })
        .collect();
    let id = job(&f.store, &batches).await;
    let processor = crate::processor::MemoryProcessor::default();
    let (a, b) = (f.worker(&processor), f.worker(&processor));
    let (ra, rb) = tokio::time::timeout(Duration::from_secs(3600), async {
        tokio::join!(a.run(&id, "a", None), b.run(&id, "b", None))
    })
    .await
    .expect("capped workers finish");
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.processed + rb.processed, 24);
    assert!(
        ra.batches > 0 && rb.batches > 0,
        "both workers took batches"
    );
    // Each record is one write unit: 24 units at 5 a second, every window
    // used to the cap and none beyond it.
    let used: Vec<u64> = f.throttle.windows(&id).iter().map(|w| w.1).collect();
    assert_eq!(used, vec![5, 5, 5, 5, 4]);
    let j = f.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(
        (j.status, j.processed, j.failed),
        (JobStatus::Completed, 24, 0)
    );
    assert_eq!(processor.records.lock().unwrap().len(), 24);
}

#[tokio::test(start_paused = true)]
async fn the_deployment_cap_applies_unless_the_definition_lifts_it() {
    let batch = || vec![vec![record(2, "a@x.org"), record(3, "b@x.org")]];
    for (options, capped) in [("", true), (r#""maxWriteUnitsPerSecond": 0"#, false)] {
        let mut f = Fixture::new(options);
        f.settings.clock = paused_clock();
        f.settings.max_write_units_per_second = 1;
        let id = job(&f.store, &batch()).await;
        let processor = crate::processor::MemoryProcessor::default();
        f.worker(&processor).run(&id, "w", None).await.unwrap();
        let used: Vec<u64> = f.throttle.windows(&id).iter().map(|w| w.1).collect();
        let expected = if capped { vec![1, 1] } else { vec![] };
        assert_eq!(used, expected, "options {options:?}");
        assert_eq!(processor.records.lock().unwrap().len(), 2);
    }
}

/// A deadline `after` from now on tokio's (paused) clock.
fn deadline_in(after: Duration) -> Instant {
    (tokio::time::Instant::now() + after).into_std()
}

#[tokio::test(start_paused = true)]
async fn a_capped_worker_gives_its_batch_back_before_the_deadline_without_an_attempt() {
    // 1 write unit a second: the batch's 30 records take 30 s, more than
    // an invocation with 25 s left (20 s of margin) can give them.
    let mut f = Fixture::new(r#""maxWriteUnitsPerSecond": 1"#);
    f.settings.clock = paused_clock();
    let records: Vec<StagedRecord> = (0..30)
        .map(|i| record(2 + i, &format!("u{i}@x.org")))
        .collect();
    let id = job(&f.store, &[records]).await;
    let processor = Scripted::default();
    let worker = f.worker(&processor);
    // More invocations than maxAttempts (3) run out of time on the batch.
    for run in 1..=5u64 {
        let before = processor.done.lock().unwrap().len();
        let deadline = deadline_in(Duration::from_secs(25));
        let report = worker.run(&id, "w", Some(deadline)).await.unwrap();
        assert_eq!(
            (report.stop, report.batches, report.processed, report.failed),
            (StopReason::Deadline, 0, 0, 0),
            "run {run}"
        );
        let stopped = tokio::time::Instant::now();
        assert!(
            stopped < tokio::time::Instant::from_std(deadline),
            "run {run} stopped before its deadline"
        );
        let written = processor.done.lock().unwrap().len() - before;
        assert!(
            (1..30).contains(&written),
            "run {run} wrote part of the batch: {written}"
        );
        let info = f.store.batch_info(&id, 0).await.unwrap().unwrap();
        assert_eq!(
            (info.state, info.version, info.lease_until_ms, info.failed),
            (BatchState::Processing, run, 0, 0),
            "run {run} gave the batch back, uncommitted"
        );
    }
    // None of those claims counted as an attempt.
    let Claim::Batch(claim) = f
        .store
        .claim_batch(&id, "probe", now_ms(), 60_000)
        .await
        .unwrap()
    else {
        panic!("the batch is claimable at once")
    };
    assert_eq!((claim.version, claim.attempt), (6, 1));
    f.store.yield_batch(&claim).await.unwrap();

    // An invocation with time enough finishes the job: no record failed as
    // poison, and every one was written (some more than once).
    let report = worker
        .run(&id, "w", Some(deadline_in(Duration::from_secs(300))))
        .await
        .unwrap();
    assert_eq!(
        (
            report.batches,
            report.processed,
            report.failed,
            report.finalized
        ),
        (1, 30, 0, true)
    );
    let info = f.store.batch_info(&id, 0).await.unwrap().unwrap();
    assert_eq!(
        (info.state, info.processed, info.failed),
        (BatchState::Done, 30, 0)
    );
    let j = f.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(
        (j.status, j.processed, j.failed),
        (JobStatus::Completed, 30, 0)
    );
    let mut written = processor.done.lock().unwrap().clone();
    written.sort_unstable();
    written.dedup();
    assert_eq!(written, (2..32).collect::<Vec<u64>>());
}
