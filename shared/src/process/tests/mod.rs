//! The worker loop on the in-memory store, one file per topic: record
//! failures, poison batches, leases, an operator's retry, the write cap and
//! the processor's end-of-batch hook.
//! This module holds the fixtures they share.

mod cap;
mod failures;
mod finish;
mod leases;
mod poison;
mod retry;

use super::*;
use crate::events::MemoryEvents;
use crate::job::{now_ms, SourceRef, StagedRecord};
use crate::processor::{ProcessContext, ProcessError};
use crate::report::MemoryReports;
use crate::schema::ValidRecord;
use crate::store::memory::MemoryStore;
use crate::store::{BatchState, ClaimStore, JobControl, PrepareStore};
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
            after: None,
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
    clock: Clock,
    rng: Rng,
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
            clock: Clock::system(),
            rng: Rng::seeded(7),
        }
    }

    fn worker<'a>(&'a self, processor: &'a dyn RecordProcessor) -> Worker<'a> {
        Worker {
            store: &self.store,
            processor,
            throttle: &self.throttle,
            events: &self.events,
            reports: &self.reports,
            metrics: &crate::metrics::NoMetrics,
            definition: &self.definition,
            job_created_at_ms: 0,
            settings: &self.settings,
            clock: &self.clock,
            rng: &self.rng,
            processors: None,
        }
    }
}

/// Fails every record whose email starts with "flaky" the first `flaky`
/// times (retryable), and "bad" ones always (permanent). Billed like a
/// DynamoDB writer, so a throughput cap holds it back.
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

    fn write_cost(&self) -> Option<&dyn crate::processor::WriteCost> {
        Some(&crate::processor::JsonSize)
    }
}

fn settings() -> WorkerSettings {
    WorkerSettings {
        backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(2)),
        ..WorkerSettings::default()
    }
}
