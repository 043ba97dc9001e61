//! The handlers driven by the fixtures in `events/`, on in-memory backends:
//! the whole pipeline without an emulator.

use super::*;
use crate::events::MemoryEvents;
use crate::job::{now_ms, EventKind, JobStatus};
use crate::objects::{MemoryObjects, ObjectHead};
use crate::processor::MemoryProcessor;
use crate::queue::{MemoryPrepareQueue, MemoryQueue, WorkMessage};
use crate::report::MemoryReports;
use crate::schema::{Definition, FieldValue};
use crate::store::memory::MemoryStore;
use crate::store::{ClaimStore, JobControl, PrepareStore};
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::s3::S3Event;
use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{Context, LambdaEvent};

const DEFINITION: &str = include_str!("../../../examples/users.json");
const S3_PUT: &str = include_str!("../../../events/s3-put.json");
const SQS_WORK: &str = include_str!("../../../events/sqs-work.json");
const SQS_CONTINUATION: &str = include_str!("../../../events/sqs-continuation.json");
const SCHEDULE: &str = include_str!("../../../events/sweeper-schedule.json");
const SQS_PREPARE: &str = include_str!("../../../events/sqs-prepare-continuation.json");

struct Fixture {
    deps: Deps,
    reports: Arc<MemoryReports>,
    store: Arc<MemoryStore>,
    queue: Arc<MemoryQueue>,
    prepare_queue: Arc<MemoryPrepareQueue>,
    events: Arc<MemoryEvents>,
    recorder: Arc<MemoryProcessor>,
}

fn fixture(csv: &str) -> Fixture {
    let objects = Arc::new(MemoryObjects::default());
    // The fixture's key, decoded the way S3 encodes it in events, under the
    // ETag its event names.
    objects.put_with(
        "bulk-import-uploads",
        "uploads/users 2026-11(1).csv",
        csv,
        ObjectHead {
            version_id: None,
            etag: "d41d8cd98f00b204e9800998ecf8427e".into(),
            last_modified: now_ms() / 1000,
        },
    );
    let store = Arc::new(MemoryStore::new());
    let queue = Arc::new(MemoryQueue::default());
    let prepare_queue = Arc::new(MemoryPrepareQueue::default());
    let events = Arc::new(MemoryEvents::default());
    let recorder = Arc::new(MemoryProcessor::default());
    let reports = Arc::new(MemoryReports::default());
    let mut definition = Definition::from_json(DEFINITION, "examples/users.json").unwrap();
    definition.batch_size = 2;
    let deps = Deps {
        store: store.clone(),
        objects: objects.clone(),
        versions: objects,
        queue: queue.clone(),
        prepare_queue: Some(prepare_queue.clone()),
        events: events.clone(),
        reports: reports.clone(),
        processor: Some(recorder.clone()),
        throttle: Arc::new(crate::throttle::MemoryThrottle::default()),
        definition: Arc::new(definition),
        pinned: Arc::default(),
        prepare: PrepareSettings {
            max_workers: 3,
            lease_ms: 60_000,
            ..PrepareSettings::default()
        },
        worker: WorkerSettings::default(),
    };
    Fixture {
        deps,
        reports,
        store,
        queue,
        prepare_queue,
        events,
        recorder,
    }
}

const CSV: &str = "email,full name,age,plan,country,city,signup_date,score,active\n\
ada@example.com,Ada Lovelace,36,pro,GB,London,2024-01-02,99.5,true\n\
grace@example.com, Grace Hopper ,85,,US,Arlington,2023-12-09,12,false\n\
not-an-email,Alan Turing,41,free,GB,Wilmslow,2024-06-07,1,true\n\
ken@example.com,Ken Thompson,80,team,US,Berkeley,2024-02-03,7.25,yes\n\
barbara@example.com,Barbara Liskov,84,gold,US,Boston,2024-03-04,3,no\n";

fn work_event(job: &str, fixture: &str) -> SqsEvent {
    let text = fixture.replace("3f2b8c0e9a7d4e51b6c2d1f0a9e8b7c6", job);
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn fixtures_drive_the_whole_pipeline_to_one_completion() {
    let f = fixture(CSV);
    let event: S3Event = serde_json::from_str(S3_PUT).unwrap();
    let prepared = orchestrator::handle(&f.deps, LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    assert_eq!(prepared.len(), 1);
    let p = &prepared[0];
    assert_eq!(
        (p.outcome, p.total_records, p.total_batches),
        ("prepared", 5, 3)
    );
    let sent = f.queue.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 3, "min(batches, max workers) messages");

    let response = worker::handle(
        &f.deps,
        LambdaEvent::new(work_event(&p.job_id, SQS_WORK), Context::default()),
    )
    .await
    .unwrap();
    assert!(response.batch_item_failures.is_empty());

    let job = f
        .store
        .get_job(&crate::JobId::new(&p.job_id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, JobStatus::CompletedWithErrors);
    assert_eq!((job.total_records, job.processed, job.failed), (5, 3, 2));
    let lines: Vec<u64> = f
        .recorder
        .records
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.line)
        .collect();
    assert_eq!(lines, vec![2, 3, 5]);
    let completed = f.events.endings();
    assert_eq!(completed.len(), 1, "exactly one job-completed event");
    let lifecycle: Vec<(EventKind, String)> = f
        .events
        .all()
        .into_iter()
        .map(|e| (e.kind, e.event_id))
        .collect();
    assert_eq!(
        lifecycle,
        vec![
            (EventKind::Started, format!("{}:started", job.id)),
            (EventKind::Prepared, format!("{}:prepared", job.id)),
            (EventKind::Completed, format!("{}:completed", job.id)),
        ]
    );
    assert_eq!(completed[0].status, JobStatus::CompletedWithErrors);
    assert_eq!(
        (
            completed[0].total_records,
            completed[0].processed,
            completed[0].failed
        ),
        (Some(job.total_records), job.processed, job.failed)
    );
    assert_eq!(completed[0].report, job.report);
    assert!(f.store.pending_events().await.unwrap().is_empty());
    assert!(f
        .store
        .get_job(&job.id)
        .await
        .unwrap()
        .unwrap()
        .owed_events
        .is_empty());

    let mut failed = Vec::new();
    for batch in 0..job.total_batches {
        failed.extend(f.store.failed_records(&job.id, batch).await.unwrap());
    }
    let summary: Vec<(u64, Option<&str>)> = failed
        .iter()
        .map(|r| (r.line, r.issues[0].field.as_deref()))
        .collect();
    assert_eq!(summary, vec![(4, Some("email")), (6, Some("plan"))]);

    // The error report holds the rows as they were, and the job says where
    // it is.
    let reports = f.reports.reports.lock().unwrap().clone();
    assert_eq!(reports.len(), 1);
    assert_eq!(job.report.as_deref(), Some(reports[0].0.as_str()));
    assert_eq!(
        reports[0].1,
        "email,full name,age,plan,country,city,signup_date,score,active,line,field,reason\n\
         not-an-email,Alan Turing,41,free,GB,Wilmslow,2024-06-07,1,true,4,email,not a valid email address\n\
         barbara@example.com,Barbara Liskov,84,gold,US,Boston,2024-03-04,3,no,6,plan,\"must be one of: free, pro, team\"\n"
    );

    // A continuation for a finished job is a no-op that succeeds.
    let again = worker::handle(
        &f.deps,
        LambdaEvent::new(work_event(&p.job_id, SQS_CONTINUATION), Context::default()),
    )
    .await
    .unwrap();
    assert!(again.batch_item_failures.is_empty());
    assert_eq!(f.events.endings().len(), 1);
}

#[tokio::test]
async fn a_job_keeps_the_definition_it_was_created_with_when_the_deployment_changes() {
    let mut f = fixture(CSV);
    let event: S3Event = serde_json::from_str(S3_PUT).unwrap();
    // The first orchestrator is near its deadline: it creates the job, pins
    // the definition and hands the prepare over before any batch.
    let mut near = Context::default();
    near.deadline = (now_ms() + 1_000) as u64;
    let first = orchestrator::handle(&f.deps, LambdaEvent::new(event.clone(), near))
        .await
        .unwrap();
    assert_eq!(first[0].outcome, "handed-off");
    // A new deployment: other batch size, other field order, and a required
    // column the file does not have.
    let mut changed: serde_json::Value = serde_json::from_str(DEFINITION).unwrap();
    changed["batchSize"] = 4.into();
    changed["fields"].as_array_mut().unwrap().reverse();
    changed["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "tenant", "type": "string", "required": true}));
    f.deps.definition = Arc::new(Definition::from_json(&changed.to_string(), "v2").unwrap());
    f.deps.pinned = Arc::default();

    let again = orchestrator::handle(&f.deps, LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    assert_eq!(
        (
            again[0].outcome,
            again[0].total_records,
            again[0].total_batches
        ),
        ("prepared", 5, 3),
        "the resumed prepare cuts batches of the pinned batchSize"
    );
    worker::handle(
        &f.deps,
        LambdaEvent::new(work_event(&again[0].job_id, SQS_WORK), Context::default()),
    )
    .await
    .unwrap();
    let job = f
        .store
        .get_job(&crate::JobId::new(&again[0].job_id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, JobStatus::CompletedWithErrors);
    assert_eq!((job.processed, job.failed), (3, 2));
    let records = f.recorder.records.lock().unwrap().clone();
    assert_eq!(
        records[0].get("email"),
        Some(FieldValue::String("ada@example.com"))
    );
    assert_eq!(records[0].get("tenant"), None);
}

/// The prepare-queue fixture naming `job`, as Lambda passes it.
fn prepare_event(job: &str) -> serde_json::Value {
    serde_json::from_str(&SQS_PREPARE.replace("3f2b8c0e9a7d4e51b6c2d1f0a9e8b7c6", job)).unwrap()
}

/// A context whose deadline is a second away: inside the hand-off margin.
fn near_deadline() -> Context {
    let mut near = Context::default();
    near.deadline = (now_ms() + 1_000) as u64;
    near
}

#[tokio::test]
async fn a_prepare_handed_over_near_the_deadline_continues_at_once_from_the_prepare_queue() {
    let f = fixture(CSV);
    // Both events go through the entry point Lambda calls.
    let s3: serde_json::Value = serde_json::from_str(S3_PUT).unwrap();
    let first = orchestrator::handle_any(&f.deps, LambdaEvent::new(s3, near_deadline()))
        .await
        .unwrap();
    assert_eq!(first[0]["outcome"], "handed-off");
    let continuation = f.prepare_queue.sent.lock().unwrap().clone();
    assert_eq!(continuation.len(), 1, "one continuation, sent at once");
    let job = continuation[0].job_id.clone();
    assert_eq!(first[0]["jobId"], job.as_str());
    assert!(!f.store.get_job(&job).await.unwrap().unwrap().prepared);

    let sqs = prepare_event(job.as_str());
    let response =
        orchestrator::handle_any(&f.deps, LambdaEvent::new(sqs.clone(), Context::default()))
            .await
            .unwrap();
    assert_eq!(response["batchItemFailures"], serde_json::json!([]));
    let done = f.store.get_job(&job).await.unwrap().unwrap();
    assert!(done.prepared);
    assert_eq!((done.total_records, done.total_batches), (5, 3));
    // A second delivery of the same continuation changes nothing.
    orchestrator::handle_any(&f.deps, LambdaEvent::new(sqs, Context::default()))
        .await
        .unwrap();
    assert_eq!(f.prepare_queue.sent.lock().unwrap().len(), 1);
    assert_eq!(
        f.store.get_job(&job).await.unwrap().unwrap().total_batches,
        3
    );
}

#[tokio::test]
async fn a_continued_prepare_near_its_deadline_hands_over_again() {
    let f = fixture(CSV);
    let s3: serde_json::Value = serde_json::from_str(S3_PUT).unwrap();
    orchestrator::handle_any(&f.deps, LambdaEvent::new(s3, near_deadline()))
        .await
        .unwrap();
    let job = f.prepare_queue.sent.lock().unwrap()[0].job_id.clone();

    let response = orchestrator::handle_any(
        &f.deps,
        LambdaEvent::new(prepare_event(job.as_str()), near_deadline()),
    )
    .await
    .unwrap();
    assert_eq!(response["batchItemFailures"], serde_json::json!([]));
    let sent = f.prepare_queue.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 2, "the continuation asks for another");
    assert_eq!(sent[1].job_id, job);
    assert!(!f.store.get_job(&job).await.unwrap().unwrap().prepared);
}

#[tokio::test]
async fn without_a_prepare_queue_the_sweeper_resumes_a_handed_over_prepare() {
    let mut f = fixture(CSV);
    f.deps.prepare_queue = None;
    let event: S3Event = serde_json::from_str(S3_PUT).unwrap();
    let first = orchestrator::handle(&f.deps, LambdaEvent::new(event, near_deadline()))
        .await
        .unwrap();
    assert_eq!(first[0].outcome, "handed-off");
    let job = crate::JobId::new(&first[0].job_id);

    let schedule: EventBridgeEvent = serde_json::from_str(SCHEDULE).unwrap();
    sweeper::handle(&f.deps, LambdaEvent::new(schedule, Context::default()))
        .await
        .unwrap();
    let job = f.store.get_job(&job).await.unwrap().unwrap();
    assert!(job.prepared);
    assert_eq!(job.total_batches, 3);
}

#[tokio::test]
async fn a_continuation_for_a_finished_job_changes_nothing() {
    let f = fixture(CSV);
    let event: S3Event = serde_json::from_str(S3_PUT).unwrap();
    let prepared = orchestrator::handle(&f.deps, LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    let job = crate::JobId::new(&prepared[0].job_id);
    worker::handle(
        &f.deps,
        LambdaEvent::new(work_event(job.as_str(), SQS_WORK), Context::default()),
    )
    .await
    .unwrap();
    let finished = f.store.get_job(&job).await.unwrap().unwrap();
    assert!(finished.status.is_final());
    let work_messages = f.queue.sent.lock().unwrap().len();

    let response = orchestrator::handle_any(
        &f.deps,
        LambdaEvent::new(prepare_event(job.as_str()), Context::default()),
    )
    .await
    .unwrap();
    assert_eq!(response["batchItemFailures"], serde_json::json!([]));
    let after = f.store.get_job(&job).await.unwrap().unwrap();
    assert_eq!(after.status, finished.status);
    assert_eq!(after.finished_at_ms, finished.finished_at_ms);
    assert_eq!(
        (after.total_batches, after.processed, after.failed),
        (finished.total_batches, finished.processed, finished.failed)
    );
    assert_eq!(f.queue.sent.lock().unwrap().len(), work_messages);
    assert!(f.prepare_queue.sent.lock().unwrap().is_empty());
    assert_eq!(f.events.endings().len(), 1);
}

#[tokio::test]
async fn a_continuation_that_names_no_job_fails_alone() {
    let f = fixture(CSV);
    let event: S3Event = serde_json::from_str(S3_PUT).unwrap();
    let prepared = orchestrator::handle(&f.deps, LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    let mut sqs = prepare_event(&prepared[0].job_id);
    let mut broken = sqs["Records"][0].clone();
    broken["messageId"] = "broken".into();
    broken["body"] = "not json".into();
    sqs["Records"].as_array_mut().unwrap().push(broken);
    let response = orchestrator::handle_any(&f.deps, LambdaEvent::new(sqs, Context::default()))
        .await
        .unwrap();
    assert_eq!(
        response["batchItemFailures"],
        serde_json::json!([{"itemIdentifier": "broken"}])
    );
}

#[tokio::test]
async fn redelivered_s3_event_finds_the_existing_job() {
    let f = fixture(CSV);
    let event: S3Event = serde_json::from_str(S3_PUT).unwrap();
    let first = orchestrator::handle(&f.deps, LambdaEvent::new(event.clone(), Context::default()))
        .await
        .unwrap();
    let second = orchestrator::handle(&f.deps, LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    assert_eq!(first[0].job_id, second[0].job_id);
    assert_eq!(second[0].outcome, "duplicate");
    assert_eq!(f.queue.sent.lock().unwrap().len(), 3, "no second fan-out");
}

#[tokio::test]
async fn malformed_message_fails_alone() {
    let f = fixture(CSV);
    let mut event = work_event("0123", SQS_WORK);
    event.records[1].body = Some("not json".into());
    let response = worker::handle(&f.deps, LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    let ids: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    // The first message names an unknown job: a store error, so it is retried too.
    assert!(ids.contains(&"2e1424d4-f796-459a-8184-9c92662be6da"));
}

#[tokio::test]
async fn missing_required_column_fails_the_job_with_the_reason() {
    let f = fixture("full name,age\nAda,36\n");
    let event: S3Event = serde_json::from_str(S3_PUT).unwrap();
    let prepared = orchestrator::handle(&f.deps, LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    assert_eq!(prepared[0].outcome, "rejected");
    let job = f
        .store
        .get_job(&crate::JobId::new(&prepared[0].job_id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    let reason = job.failure_reason.unwrap();
    assert!(reason.contains("email"), "{reason}");
    assert!(f.queue.sent.lock().unwrap().is_empty());
    assert_eq!(f.events.endings().len(), 1);
}

#[tokio::test]
async fn sweeper_fixture_deserializes_and_runs() {
    let f = fixture(CSV);
    let event: EventBridgeEvent = serde_json::from_str(SCHEDULE).unwrap();
    let report = sweeper::handle(&f.deps, LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    assert_eq!(report.active_jobs, 0);
    let _ = WorkMessage {
        job_id: crate::JobId::new("x"),
        continuation: false,
    };
}

mod sweeping {
    use super::*;
    use crate::job::{now_ms, SourceRef};
    use crate::store::{BatchOutcome, BatchState, Claim, CreateOutcome, NewBatch, PrepareLease};

    const MINUTE: i64 = 60_000;

    fn source() -> SourceRef {
        SourceRef {
            bucket: "bulk-import-uploads".into(),
            key: "uploads/users 2026-11(1).csv".into(),
            version: "etag:d41d8cd98f00b204e9800998ecf8427e".into(),
        }
    }

    /// A prepared job of `batches` batches of two records, created long ago.
    async fn old_job(f: &Fixture, batches: u64) -> crate::JobId {
        let long_ago = now_ms() - 30 * MINUTE;
        let lease = PrepareLease {
            owner: "orchestrator".into(),
            lease_ms: MINUTE,
        };
        let CreateOutcome::Created(job) = f
            .store
            .create_job(&source(), &lease, long_ago)
            .await
            .unwrap()
        else {
            panic!()
        };
        let mut all = Vec::new();
        let mut reader = crate::source::RecordReader::open(
            std::io::Cursor::new(CSV.as_bytes().to_vec()),
            crate::source::OpenOptions::new("users.csv"),
            &f.deps.definition,
        )
        .await
        .unwrap();
        while let Some(r) = reader.next_record().await.unwrap() {
            all.push(r);
        }
        for index in 0..batches {
            let records = &all[(index as usize * 2)..(index as usize * 2 + 2)];
            f.store
                .write_batch(&job.id, NewBatch { index, records }, long_ago)
                .await
                .unwrap();
        }
        f.store
            .finish_prepare(&job.id, &lease, batches * 2, batches)
            .await
            .unwrap();
        job.id
    }

    async fn sweep(f: &Fixture) -> crate::sweep::SweepReport {
        let event: EventBridgeEvent = serde_json::from_str(SCHEDULE).unwrap();
        sweeper::handle(&f.deps, LambdaEvent::new(event, Context::default()))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn job_whose_workers_all_died_is_fanned_out_again() {
        let f = fixture(CSV);
        let job = old_job(&f, 2).await;
        // A worker claimed a batch long ago and died.
        let Claim::Batch(_) = f
            .store
            .claim_batch(&job, "dead", now_ms() - 20 * MINUTE, MINUTE)
            .await
            .unwrap()
        else {
            panic!()
        };
        let report = sweep(&f).await;
        assert_eq!((report.active_jobs, report.refanned), (1, 1));
        let sent = f.queue.sent.lock().unwrap().clone();
        assert_eq!(
            sent.len(),
            2,
            "one message per waiting batch, up to max workers"
        );
        assert!(sent.iter().all(|m| m.job_id == job));
    }

    #[tokio::test]
    async fn job_with_a_live_worker_is_left_alone() {
        let f = fixture(CSV);
        let job = old_job(&f, 2).await;
        let Claim::Batch(_) = f
            .store
            .claim_batch(&job, "alive", now_ms(), 10 * MINUTE)
            .await
            .unwrap()
        else {
            panic!()
        };
        let report = sweep(&f).await;
        assert_eq!((report.active_jobs, report.refanned), (1, 0));
        assert!(f.queue.sent.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn job_whose_last_worker_died_before_finalizing_is_finalized_once() {
        let f = fixture(CSV);
        let job = old_job(&f, 1).await;
        let Claim::Batch(c) = f
            .store
            .claim_batch(&job, "w", now_ms(), MINUTE)
            .await
            .unwrap()
        else {
            panic!()
        };
        let outcome = BatchOutcome {
            state: BatchState::Done,
            processed: 2,
            failed: vec![],
            error: None,
        };
        f.store.commit_batch(&c, &outcome, now_ms()).await.unwrap();
        assert_eq!(sweep(&f).await.finalized, 1);
        assert_eq!(sweep(&f).await.active_jobs, 0);
        let done = f.store.get_job(&job).await.unwrap().unwrap();
        assert_eq!(done.status, JobStatus::Completed);
        assert_eq!(f.events.endings().len(), 1);
    }

    /// Claims every batch and fails one record of each in processing.
    async fn fail_every_batch(f: &Fixture, job: &crate::JobId) {
        while let Claim::Batch(c) = f
            .store
            .claim_batch(job, "w", now_ms(), MINUTE)
            .await
            .unwrap()
        {
            let outcome = BatchOutcome {
                state: BatchState::Done,
                processed: 1,
                failed: vec![crate::job::FailedRecord::unprocessed(
                    c.index * 2 + 2,
                    vec![crate::job::FieldIssue::new(None, None, "refused")],
                )],
                error: None,
            };
            f.store.commit_batch(&c, &outcome, now_ms()).await.unwrap();
        }
    }

    /// A retry's requeue pass whose orchestrator died (or whose message was
    /// lost) is taken over once it has been silent for a minute, and not
    /// before.
    #[tokio::test]
    async fn a_stalled_requeue_pass_is_taken_over_and_a_live_one_left_alone() {
        let f = fixture(CSV);
        let job = old_job(&f, 2).await;
        fail_every_batch(&f, &job).await;
        assert_eq!(sweep(&f).await.finalized, 1);
        let ended = f.store.get_job(&job).await.unwrap().unwrap();
        for kind in ended.owed_events {
            f.store.ack_event(&job, kind, 0).await.unwrap();
        }
        let reopening = |now_ms| crate::store::Reopening {
            seen_retries: 0,
            requeue: true,
            base: 4,
            now_ms,
        };
        f.store
            .reopen(&job, &reopening(now_ms()))
            .await
            .unwrap()
            .unwrap();
        let report = sweep(&f).await;
        assert_eq!(report.requeues_resumed, 0, "a pass that just started");
        assert!(
            f.store
                .get_job(&job)
                .await
                .unwrap()
                .unwrap()
                .round
                .requeuing
        );

        // Started two minutes ago and silent since.
        let f = fixture(CSV);
        let job = old_job(&f, 2).await;
        fail_every_batch(&f, &job).await;
        sweep(&f).await;
        let ended = f.store.get_job(&job).await.unwrap().unwrap();
        for kind in ended.owed_events {
            f.store.ack_event(&job, kind, 0).await.unwrap();
        }
        f.store
            .reopen(&job, &reopening(now_ms() - 2 * MINUTE))
            .await
            .unwrap()
            .unwrap();
        f.queue.sent.lock().unwrap().clear();
        let report = sweep(&f).await;
        assert_eq!(report.requeues_resumed, 1);
        let j = f.store.get_job(&job).await.unwrap().unwrap();
        assert!(!j.round.requeuing);
        assert_eq!((j.batches_done, j.failed, j.retryable), (0, 0, 0));
        assert!(
            !f.queue.sent.lock().unwrap().is_empty(),
            "workers are woken for the batches back"
        );
    }

    #[tokio::test]
    async fn abandoned_prepare_is_resumed_after_its_lease() {
        let f = fixture(CSV);
        let long_ago = now_ms() - 30 * MINUTE;
        let lease = PrepareLease {
            owner: "crashed".into(),
            lease_ms: MINUTE,
        };
        let CreateOutcome::Created(job) = f
            .store
            .create_job(&source(), &lease, long_ago)
            .await
            .unwrap()
        else {
            panic!()
        };
        let report = sweep(&f).await;
        assert_eq!(report.prepares_resumed, 1);
        let job = f.store.get_job(&job.id).await.unwrap().unwrap();
        assert!(job.prepared);
        assert_eq!((job.total_records, job.total_batches), (5, 3));
        assert_eq!(f.queue.sent.lock().unwrap().len(), 3);
    }

    /// Objects that cannot be read for now (a transient error every time).
    struct Unreadable {
        inner: Arc<dyn crate::objects::ObjectSource>,
        key: &'static str,
    }

    #[async_trait::async_trait]
    impl crate::objects::ObjectSource for Unreadable {
        async fn open(
            &self,
            source: &SourceRef,
        ) -> Result<crate::objects::ObjectBody, crate::objects::ObjectError> {
            if source.key == self.key {
                return Err(crate::objects::ObjectError::Transient {
                    object: source.to_string(),
                    source: "connection reset".into(),
                });
            }
            self.inner.open(source).await
        }
    }

    #[tokio::test]
    async fn a_prepare_that_keeps_failing_blocks_no_other_job_and_is_given_up() {
        let mut f = fixture(CSV);
        f.deps.objects = Arc::new(Unreadable {
            inner: f.deps.objects.clone(),
            key: "uploads/unreadable.csv",
        });
        let long_ago = now_ms() - 30 * MINUTE;
        let crashed = PrepareLease {
            owner: "crashed".into(),
            lease_ms: MINUTE,
        };
        let broken = SourceRef {
            key: "uploads/unreadable.csv".into(),
            ..source()
        };
        let mut ids = Vec::new();
        for src in [&broken, &source()] {
            let CreateOutcome::Created(job) =
                f.store.create_job(src, &crashed, long_ago).await.unwrap()
            else {
                panic!()
            };
            ids.push(job.id);
        }
        let (broken_id, good_id) = (&ids[0], &ids[1]);
        let report = sweep(&f).await;
        assert_eq!((report.failed, report.prepares_resumed), (1, 1));
        assert!(f.store.get_job(good_id).await.unwrap().unwrap().prepared);
        for _ in 1..crate::sweep::MAX_PREPARE_FAILURES {
            let j = f.store.get_job(broken_id).await.unwrap().unwrap();
            assert_eq!(j.status, JobStatus::Processing, "not given up yet");
            sweep(&f).await;
        }
        let j = f.store.get_job(broken_id).await.unwrap().unwrap();
        assert_eq!(j.status, JobStatus::Failed);
        let reason = j.failure_reason.unwrap();
        assert!(reason.contains("prepare failed 5 times"), "{reason}");
        assert!(reason.contains("connection reset"), "{reason}");
    }

    #[tokio::test]
    async fn a_completion_event_the_finalizer_could_not_send_is_sent_by_the_sweeper() {
        let f = fixture(CSV);
        let job = old_job(&f, 1).await;
        f.events
            .failing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let Claim::Batch(c) = f
            .store
            .claim_batch(&job, "w", now_ms(), MINUTE)
            .await
            .unwrap()
        else {
            panic!()
        };
        let outcome = BatchOutcome {
            state: BatchState::Done,
            processed: 2,
            failed: vec![],
            error: None,
        };
        f.store.commit_batch(&c, &outcome, now_ms()).await.unwrap();
        assert_eq!(sweep(&f).await.finalized, 1);
        assert!(f.events.endings().is_empty());
        assert_eq!(f.store.pending_events().await.unwrap(), vec![job.clone()]);
        f.events
            .failing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        // Everything the job owes: its start and its prepare, which nobody
        // announced either, then its completion.
        assert_eq!(sweep(&f).await.events_sent, 3);
        assert_eq!(sweep(&f).await.events_sent, 0, "acknowledged");
        let kinds: Vec<EventKind> = f.events.all().iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            vec![
                EventKind::Started,
                EventKind::Prepared,
                EventKind::Completed
            ]
        );
        let sent = f.events.endings();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].event_id, format!("{job}:completed"));
    }
}
