//! The handlers driven by the fixtures in `events/`, on in-memory backends:
//! the whole pipeline without an emulator.

use super::*;
use crate::events::MemoryEvents;
use crate::job::JobStatus;
use crate::objects::MemoryObjects;
use crate::processor::{ProcessContext, ProcessError};
use crate::queue::{MemoryQueue, WorkMessage};
use crate::schema::ValidRecord;
use crate::store::memory::MemoryStore;
use async_trait::async_trait;
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::s3::S3Event;
use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{Context, LambdaEvent};
use std::sync::Mutex;

const DEFINITION: &str = include_str!("../../../examples/users.json");
const S3_PUT: &str = include_str!("../../../events/s3-put.json");
const SQS_WORK: &str = include_str!("../../../events/sqs-work.json");
const SQS_CONTINUATION: &str = include_str!("../../../events/sqs-continuation.json");
const SCHEDULE: &str = include_str!("../../../events/sweeper-schedule.json");

#[derive(Default)]
struct Recorder {
    records: Mutex<Vec<ValidRecord>>,
}

#[async_trait]
impl RecordProcessor for Recorder {
    async fn process(
        &self,
        record: &ValidRecord,
        _ctx: &ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        self.records.lock().unwrap().push(record.clone());
        Ok(())
    }
}

struct Fixture {
    deps: Deps,
    store: Arc<MemoryStore>,
    queue: Arc<MemoryQueue>,
    events: Arc<MemoryEvents>,
    recorder: Arc<Recorder>,
}

fn fixture(csv: &str) -> Fixture {
    let objects = Arc::new(MemoryObjects::default());
    // The fixture's key, decoded the way S3 encodes it in events.
    objects.put("bulk-import-uploads", "uploads/users 2026-11(1).csv", csv);
    let store = Arc::new(MemoryStore::new());
    let queue = Arc::new(MemoryQueue::default());
    let events = Arc::new(MemoryEvents::default());
    let recorder = Arc::new(Recorder::default());
    let mut definition = Definition::from_json(DEFINITION, "examples/users.json").unwrap();
    definition.batch_size = 2;
    let deps = Deps {
        store: store.clone(),
        objects,
        queue: queue.clone(),
        events: events.clone(),
        processor: Some(recorder.clone()),
        definition: Arc::new(definition),
        prepare: PrepareSettings {
            max_workers: 3,
            lease_ms: 60_000,
        },
        worker: WorkerSettings::default(),
    };
    Fixture {
        deps,
        store,
        queue,
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
    let completed = f.events.completed.lock().unwrap().clone();
    assert_eq!(completed.len(), 1, "exactly one job-completed event");

    let mut failed = Vec::new();
    for batch in 0..job.total_batches {
        failed.extend(f.store.failed_records(&job.id, batch).await.unwrap());
    }
    let summary: Vec<(u64, Option<&str>)> = failed
        .iter()
        .map(|r| (r.line, r.issues[0].field.as_deref()))
        .collect();
    assert_eq!(summary, vec![(4, Some("email")), (6, Some("plan"))]);

    // A continuation for a finished job is a no-op that succeeds.
    let again = worker::handle(
        &f.deps,
        LambdaEvent::new(work_event(&p.job_id, SQS_CONTINUATION), Context::default()),
    )
    .await
    .unwrap();
    assert!(again.batch_item_failures.is_empty());
    assert_eq!(f.events.completed.lock().unwrap().len(), 1);
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
    assert_eq!(f.events.completed.lock().unwrap().len(), 1);
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
