//! The worker loop on the in-memory store: retries, poison batches,
//! continueOnError, and a worker that loses its lease mid-batch.

use super::*;
use crate::events::MemoryEvents;
use crate::job::JobStatus;
use crate::job::SourceRef;
use crate::processor::ProcessError;
use crate::report::MemoryReports;
use crate::store::memory::MemoryStore;
use crate::store::{CreateOutcome, NewBatch, PrepareLease};
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
        values: vec![Some(email.into())],
        issue: None,
    }
}

async fn job(store: &MemoryStore, batches: &[Vec<StagedRecord>]) -> JobId {
    let lease = PrepareLease {
        owner: "o".into(),
        lease_ms: 60_000,
    };
    let src = SourceRef {
        bucket: "b".into(),
        key: "k".into(),
        version: "v".into(),
    };
    let CreateOutcome::Created(job) = store.create_job(&src, &lease, now_ms()).await.unwrap()
    else {
        panic!()
    };
    for (index, records) in batches.iter().enumerate() {
        store
            .add_batch(
                &job.id,
                &lease,
                NewBatch {
                    index: index as u64,
                    records,
                },
                now_ms(),
            )
            .await
            .unwrap();
    }
    let total = batches.iter().map(|b| b.len() as u64).sum();
    store
        .finish_prepare(&job.id, &lease, total, batches.len() as u64)
        .await
        .unwrap();
    job.id
}

/// Fails every record whose email starts with "flaky" the first `flaky`
/// times (retryable), and "bad" ones always (permanent).
#[derive(Default)]
struct Scripted {
    flaky: u32,
    calls: AtomicU32,
    done: Mutex<Vec<u64>>,
}

#[async_trait]
impl RecordProcessor for Scripted {
    async fn process(
        &self,
        record: &ValidRecord,
        ctx: &ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let email = record.values["email"].as_str().unwrap();
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
    let store = MemoryStore::new();
    let id = job(
        &store,
        &[
            vec![record(2, "flaky@x.org"), record(3, "bad@x.org")],
            vec![record(4, "ok@x.org"), record(5, "nope")],
        ],
    )
    .await;
    let (events, def, s) = (MemoryEvents::default(), definition(""), settings());
    let processor = Scripted {
        flaky: 2,
        ..Default::default()
    };
    let reports = MemoryReports::default();
    let worker = Worker {
        store: &store,
        processor: &processor,
        events: &events,
        reports: &reports,
        definition: &def,
        settings: &s,
    };
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
    let failed = store.failed_records(&id, 0).await.unwrap();
    assert_eq!(failed[0].line, 3);
    assert_eq!(
        failed[0].issues[0].message,
        "processing failed: rejected by the target"
    );
    let invalid = store.failed_records(&id, 1).await.unwrap();
    assert_eq!(
        (invalid[0].line, invalid[0].issues[0].field.as_deref()),
        (5, Some("email"))
    );
    let j = store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::CompletedWithErrors);
    assert_eq!(events.completed.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_record_still_failing_after_max_retries_is_reported_with_the_count() {
    let store = MemoryStore::new();
    let id = job(&store, &[vec![record(2, "flaky@x.org")]]).await;
    let (events, def, s) = (MemoryEvents::default(), definition(""), settings());
    let processor = Scripted {
        flaky: 10,
        ..Default::default()
    };
    let reports = MemoryReports::default();
    let worker = Worker {
        store: &store,
        processor: &processor,
        events: &events,
        reports: &reports,
        definition: &def,
        settings: &s,
    };
    worker.run(&id, "w", None).await.unwrap();
    assert_eq!(
        processor.calls.load(Ordering::SeqCst),
        3,
        "first try + maxRetries"
    );
    let failed = store.failed_records(&id, 0).await.unwrap();
    assert_eq!(
        failed[0].issues[0].message,
        "processing failed after 2 retries: timeout"
    );
    let j = store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Failed, "every record failed");
    assert_eq!(j.failure_reason.as_deref(), Some("all 1 records failed"));
}

#[tokio::test]
async fn poison_batch_is_failed_after_max_attempts_and_the_job_still_finishes() {
    let store = MemoryStore::new();
    let id = job(
        &store,
        &[
            vec![record(2, "a@x.org"), record(3, "b@x.org")],
            vec![record(4, "c@x.org")],
        ],
    )
    .await;
    // Batch 1 goes through; three workers in a row claim batch 0 and die.
    let long_ago = now_ms() - 600_000;
    let Claim::Batch(c) = store
        .claim_batch(&id, "doomed", long_ago, 60_000)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(c.index, 0);
    let Claim::Batch(ok) = store
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
    store.commit_batch(&ok, &outcome, long_ago).await.unwrap();
    for attempt in 1..3 {
        let Claim::Batch(c) = store
            .claim_batch(&id, "doomed", long_ago + attempt * 61_000, 60_000)
            .await
            .unwrap()
        else {
            panic!()
        };
        assert_eq!((c.index, c.version), (0, attempt as u64 + 1));
    }
    let (events, def, s) = (MemoryEvents::default(), definition(""), settings());
    let processor = Scripted::default();
    let reports = MemoryReports::default();
    let worker = Worker {
        store: &store,
        processor: &processor,
        events: &events,
        reports: &reports,
        definition: &def,
        settings: &s,
    };
    let report = worker.run(&id, "w", None).await.unwrap();
    assert!(report.finalized);
    let info = store.batch_info(&id, 0).await.unwrap().unwrap();
    assert_eq!(
        (info.state, info.version, info.failed),
        (BatchState::Failed, 4, 2)
    );
    assert!(info
        .last_error
        .unwrap()
        .starts_with("batch abandoned after 3 attempts"));
    let failed = store.failed_records(&id, 0).await.unwrap();
    assert_eq!(
        failed.iter().map(|f| f.line).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert!(
        processor.done.lock().unwrap().is_empty(),
        "the poison batch's records were not processed"
    );
    let j = store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(
        (j.status, j.processed, j.failed),
        (JobStatus::CompletedWithErrors, 1, 2)
    );
}

#[tokio::test]
async fn continue_on_error_false_fails_the_job_at_the_first_failed_record() {
    let store = MemoryStore::new();
    let id = job(
        &store,
        &[
            vec![record(2, "ok@x.org"), record(3, "nope")],
            vec![record(4, "c@x.org")],
        ],
    )
    .await;
    let (events, def, s) = (
        MemoryEvents::default(),
        definition(r#""continueOnError": false"#),
        settings(),
    );
    let processor = Scripted::default();
    let reports = MemoryReports::default();
    let worker = Worker {
        store: &store,
        processor: &processor,
        events: &events,
        reports: &reports,
        definition: &def,
        settings: &s,
    };
    let report = worker.run(&id, "w", None).await.unwrap();
    assert_eq!(
        (report.stop, report.batches, report.finalized),
        (StopReason::JobFinished, 1, true)
    );
    let j = store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Failed);
    assert!(j.failure_reason.unwrap().starts_with("line 3: "));
    assert_eq!(events.completed.lock().unwrap().len(), 1);
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
    let store = MemoryStore::new();
    let id = job(&store, &[vec![record(2, "a@x.org")]]).await;
    let (events, def) = (MemoryEvents::default(), definition(""));
    let s = WorkerSettings {
        lease: Duration::from_secs(3),
        ..settings()
    };
    let gate = Gate(tokio::sync::Notify::new());
    let reports = MemoryReports::default();
    let worker = Worker {
        store: &store,
        processor: &gate,
        events: &events,
        reports: &reports,
        definition: &def,
        settings: &s,
    };
    let run = worker.run(&id, "slow", None);
    tokio::pin!(run);
    // Let the slow worker claim the batch and block in the processor.
    tokio::select! { _ = &mut run => panic!("the gate holds the worker"), _ = tokio::task::yield_now() => {} }
    let held = store.batch_info(&id, 0).await.unwrap().unwrap();
    assert_eq!(held.worker.as_deref(), Some("slow"));
    // Another worker reclaims it as if the lease had expired.
    let Claim::Batch(fresh) = store
        .claim_batch(&id, "fresh", held.lease_until_ms + 1, 60_000)
        .await
        .unwrap()
    else {
        panic!()
    };
    // The slow worker's next heartbeat finds the claim gone and stops.
    let report = run.await.unwrap();
    assert_eq!((report.lost_claims, report.batches), (1, 0));
    store
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
    assert_eq!(store.get_job(&id).await.unwrap().unwrap().processed, 1);
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_catches_up_with_prepare_waits_for_the_next_batch() {
    let store = MemoryStore::new();
    let lease = PrepareLease {
        owner: "o".into(),
        lease_ms: 60_000,
    };
    let src = SourceRef {
        bucket: "b".into(),
        key: "slow.csv".into(),
        version: "v".into(),
    };
    let CreateOutcome::Created(created) = store.create_job(&src, &lease, now_ms()).await.unwrap()
    else {
        panic!()
    };
    let first = vec![record(2, "a@x.org")];
    store
        .add_batch(
            &created.id,
            &lease,
            NewBatch {
                index: 0,
                records: &first,
            },
            now_ms(),
        )
        .await
        .unwrap();
    let (events, def, s) = (MemoryEvents::default(), definition(""), settings());
    let reports = MemoryReports::default();
    let processor = Scripted::default();
    let worker = Worker {
        store: &store,
        processor: &processor,
        events: &events,
        reports: &reports,
        definition: &def,
        settings: &s,
    };
    // The orchestrator writes the second batch while the worker waits.
    let orchestrator = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let second = vec![record(3, "b@x.org")];
        store
            .add_batch(
                &created.id,
                &lease,
                NewBatch {
                    index: 1,
                    records: &second,
                },
                now_ms(),
            )
            .await
            .unwrap();
        store
            .finish_prepare(&created.id, &lease, 2, 2)
            .await
            .unwrap();
    };
    let (report, ()) = tokio::join!(worker.run(&created.id, "w", None), orchestrator);
    let report = report.unwrap();
    assert_eq!(
        (report.batches, report.processed, report.finalized),
        (2, 2, true)
    );
    assert_eq!(*processor.done.lock().unwrap(), vec![2, 3]);
}
