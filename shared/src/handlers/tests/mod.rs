//! The handlers driven by the fixtures in `events/`, on in-memory backends:
//! the whole pipeline without an emulator. This module holds the fixtures;
//! the cases are in one file per topic.

mod pipeline;
mod prepare_queue;
mod sweeping;
mod virtual_time;

use super::*;
use crate::events::MemoryEvents;
use crate::job::JobId;
use crate::job::{now_ms, EventKind, JobStatus};
use crate::objects::{MemoryObjects, ObjectHead};
use crate::processor::MemoryProcessor;
use crate::queue::{MemoryPrepareQueue, MemoryQueue, WorkMessage};
use crate::report::MemoryReports;
use crate::schema::{Definition, FieldValue};
use crate::store::memory::MemoryStore;
use crate::store::{BatchState, ClaimStore, JobControl, PrepareStore};
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::s3::S3Event;
use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{Context, LambdaEvent};

const DEFINITION: &str = include_str!("../../../../examples/users.json");
const S3_PUT: &str = include_str!("../../../../events/s3-put.json");
const SQS_WORK: &str = include_str!("../../../../events/sqs-work.json");
const SQS_CONTINUATION: &str = include_str!("../../../../events/sqs-continuation.json");
const SCHEDULE: &str = include_str!("../../../../events/sweeper-schedule.json");
const SQS_PREPARE: &str = include_str!("../../../../events/sqs-prepare-continuation.json");

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
        metrics: Arc::new(crate::metrics::NoMetrics),
        processors: Arc::new(crate::processor::Processors::given(recorder.clone())),
        throttle: Arc::new(crate::throttle::MemoryThrottle::default()),
        routes: Arc::new(crate::routes::Routes::single(definition)),
        pinned: Arc::default(),
        prepare: PrepareSettings {
            max_workers: 3,
            lease_ms: 60_000,
            ..PrepareSettings::default()
        },
        worker: WorkerSettings::default(),
        clock: Clock::system(),
        rng: Rng::seeded(3),
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
