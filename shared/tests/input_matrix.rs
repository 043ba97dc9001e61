//! What an import of a given input file ends with, through the real pipeline
//! on in-memory backends: the orchestrator's prepare, then workers until the
//! job is final. Each case states the exact records imported (line and typed
//! values, in order) and the exact errors reported, or the reason a file was
//! rejected.
//!
//! Every import is run three times, with the object delivered whole, one
//! byte per read and in 1–7 byte pieces, and must end the same way each time:
//! where S3 cuts the body must never show in the outcome.

#[path = "input_matrix/csv.rs"]
mod csv;
#[path = "input_matrix/errors.rs"]
mod errors;
#[path = "input_matrix/limits.rs"]
mod limits;
#[path = "input_matrix/ndjson.rs"]
mod ndjson;

use async_trait::async_trait;
use bulk_import::events::MemoryEvents;
use bulk_import::job::{JobId, SourceRef};
use bulk_import::objects::{MemoryObjects, ObjectBody, ObjectError, ObjectSource};
use bulk_import::prepare::{PrepareOutcome, PrepareSettings, Preparer};
use bulk_import::process::{Worker, WorkerSettings};
use bulk_import::processor::MemoryProcessor;
use bulk_import::queue::MemoryQueue;
use bulk_import::report::MemoryReports;
use bulk_import::retry::Backoff;
use bulk_import::store::memory::MemoryStore;
use bulk_import::store::JobControl;
use bulk_import::{Definition, JobStatus};
use bytes::Bytes;
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;
use tokio_util::io::StreamReader;

const BUCKET: &str = "uploads";

/// How an import ended, as a user of the system sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: JobStatus,
    pub reason: Option<String>,
    /// Records the processor received: line and typed values.
    pub imported: Vec<(u64, Value)>,
    /// Every issue of every failed record: line, field, message.
    pub errors: Vec<(u64, Option<String>, String)>,
}

/// Imports `bytes` stored under the key `name` with the definition given as
/// JSON; also checks that the outcome does not depend on read sizes.
pub async fn run_import(name: &str, bytes: impl Into<Vec<u8>>, definition: &str) -> Outcome {
    let bytes = bytes.into();
    let whole = run_import_from(&whole_object(name, &bytes), name, definition).await;
    for pieces in [&[1][..], &[1, 2, 3, 4, 5, 6, 7]] {
        let trickled = run_import_in_pieces(name, &bytes, definition, pieces).await;
        assert_eq!(
            trickled, whole,
            "reading in pieces of {pieces:?} bytes changed the outcome"
        );
    }
    whole
}

/// Imports with the object's body delivered in reads of the given sizes
/// (cycled).
pub async fn run_import_in_pieces(
    name: &str,
    bytes: &[u8],
    definition: &str,
    pieces: &[usize],
) -> Outcome {
    let objects = Trickle {
        bytes: bytes.to_vec(),
        pieces: pieces.to_vec(),
    };
    run_import_from(&objects, name, definition).await
}

fn whole_object(name: &str, bytes: &[u8]) -> MemoryObjects {
    let objects = MemoryObjects::default();
    objects.put(BUCKET, name, bytes.to_vec());
    objects
}

/// The pipeline: prepare (which rejects unusable files), then one worker
/// run after another until the job is final.
pub async fn run_import_from(objects: &dyn ObjectSource, name: &str, definition: &str) -> Outcome {
    let definition = Definition::from_json(definition, "definition.json")
        .unwrap_or_else(|e| panic!("the test's definition is invalid: {e}"));
    let store = MemoryStore::new();
    let (queue, events, reports) = (
        MemoryQueue::default(),
        MemoryEvents::default(),
        MemoryReports::default(),
    );
    let recorder = MemoryProcessor::default();
    let source = SourceRef {
        bucket: BUCKET.into(),
        key: name.into(),
        version: "v1".into(),
    };
    let clock = bulk_import::clock::Clock::system();
    let preparer = Preparer {
        store: &store,
        objects,
        queue: &queue,
        events: &events,
        reports: &reports,
        metrics: &bulk_import::metrics::NoMetrics,
        definition: &definition,
        settings: &PrepareSettings::default(),
        clock: &clock,
        processors: None,
    };
    let job = match preparer.run(&source, "orchestrator").await.unwrap() {
        PrepareOutcome::Prepared(job) | PrepareOutcome::Rejected(job) => job,
        other => panic!("a fresh job is prepared or rejected, got {other:?}"),
    };
    let settings = WorkerSettings {
        backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(2)),
        ..WorkerSettings::default()
    };
    let worker = Worker {
        store: &store,
        processor: &recorder,
        throttle: &bulk_import::throttle::MemoryThrottle::default(),
        events: &events,
        reports: &reports,
        metrics: &bulk_import::metrics::NoMetrics,
        definition: &definition,
        job_created_at_ms: 0,
        settings: &settings,
        clock: &clock,
        rng: &bulk_import::rng::Rng::seeded(5),
        processors: None,
    };
    for _ in 0..100 {
        if current(&store, &job.id).await.status.is_final() {
            break;
        }
        worker.run(&job.id, "worker", None).await.unwrap();
    }
    let job = current(&store, &job.id).await;
    assert!(job.status.is_final(), "the job never finished: {job:?}");
    assert_eq!(events.endings().len(), 1, "one job-completed event");
    let mut errors = Vec::new();
    for batch in 0..job.total_batches {
        for record in store.failed_records(&job.id, batch).await.unwrap() {
            for issue in record.issues {
                errors.push((record.line, issue.field, issue.message));
            }
        }
    }
    let imported = recorder.records.into_inner().unwrap();
    Outcome {
        status: job.status,
        reason: job.failure_reason,
        imported: imported
            .into_iter()
            .map(|r| (r.line, Value::Object(r.to_json())))
            .collect(),
        errors,
    }
}

async fn current(store: &MemoryStore, job: &JobId) -> bulk_import::job::Job {
    store.get_job(job).await.unwrap().expect("the job exists")
}

/// An object whose body arrives in reads of the given sizes, like a slow
/// network stream.
struct Trickle {
    bytes: Vec<u8>,
    pieces: Vec<usize>,
}

#[async_trait]
impl ObjectSource for Trickle {
    async fn open(&self, _source: &SourceRef) -> Result<ObjectBody, ObjectError> {
        let mut chunks = Vec::new();
        let mut rest = &self.bytes[..];
        for &size in self.pieces.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            chunks.push(Ok::<_, std::io::Error>(Bytes::copy_from_slice(chunk)));
            rest = tail;
        }
        Ok(ObjectBody {
            reader: Box::new(StreamReader::new(futures::stream::iter(chunks))),
            content_encoding: None,
            size: Some(self.bytes.len() as i64),
        })
    }
}

/// An import that completed without a single failure.
pub fn completed(imported: Vec<(u64, Value)>) -> Outcome {
    Outcome {
        status: JobStatus::Completed,
        reason: None,
        imported,
        errors: Vec::new(),
    }
}

/// An import whose file was rejected: nothing imported, nothing reported
/// per record.
pub fn rejected(reason: &str) -> Outcome {
    Outcome {
        status: JobStatus::Failed,
        reason: Some(reason.to_owned()),
        imported: Vec::new(),
        errors: Vec::new(),
    }
}

pub fn error(line: u64, field: Option<&str>, message: &str) -> (u64, Option<String>, String) {
    (line, field.map(str::to_owned), message.to_owned())
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Name, age and email; only the name is required.
pub const PEOPLE: &str = r#"{"fields": [
    {"name": "name", "type": "string", "required": true},
    {"name": "age", "type": "integer"},
    {"name": "email", "type": "email"}
]}"#;

/// `PEOPLE` with extra top-level settings, e.g. `"delimiter": ";"`.
pub fn people_with(settings: &str) -> String {
    PEOPLE.replacen('{', &format!("{{{settings},"), 1)
}

pub fn person(line: u64, name: &str, age: i64, email: &str) -> (u64, Value) {
    (line, json!({"name": name, "age": age, "email": email}))
}

/// The three people most cases import, as a header plus rows.
pub const PEOPLE_CSV: &str = "name,age,email\n\
    Ada,36,ada@example.org\n\
    Grace,85,grace@example.org\n\
    Alan,41,alan@example.org\n";

pub fn three_people() -> Vec<(u64, Value)> {
    vec![
        person(2, "Ada", 36, "ada@example.org"),
        person(3, "Grace", 85, "grace@example.org"),
        person(4, "Alan", 41, "alan@example.org"),
    ]
}
