//! Chaos: worker *processes* against the emulator, killed with SIGKILL at
//! random mid-batch and replaced, with duplicate SQS messages, a duplicate
//! S3 event and DynamoDB faults (throttling, 500s, transaction conflicts)
//! injected into a share of requests. The job must still finish exactly
//! once with every valid record imported.
//!
//! Scale with CHAOS_ROWS (default 12,000) and CHAOS_KILLS (default 12);
//! `make chaos` runs 50,000 rows and 40 kills.

use bulk_import::events::EventBridgeEvents;
use bulk_import::job::JobId;
use bulk_import::store::{BatchState, JobControl};
use bulk_import::JobStatus;
use integration_tests::chaos::Chaos;
use integration_tests::{EventTap, Stack, StackOptions};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

const WORKERS: usize = 8;
const LEASE_SECONDS: u64 = 3;

const DEFINITION: &str = r#"{
  "fields": [
    {"name": "email", "type": "email", "required": true},
    {"name": "name", "type": "string", "required": true},
    {"name": "n", "type": "integer", "required": true}
  ],
  "keyField": "email",
  "batchSize": 200,
  "maxAttempts": 50
}"#;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn csv(rows: u64) -> (String, HashSet<String>, u64) {
    let mut text = String::from("email,name,n\n");
    let mut valid = HashSet::new();
    let mut invalid = 0;
    for i in 0..rows {
        if i % 500 == 499 {
            text.push_str(&format!("broken-{i},Name {i},{i}\n"));
            invalid += 1;
        } else {
            let email = format!("chaos{i}@example.com");
            text.push_str(&format!("{email},Name {i},{i}\n"));
            valid.insert(email);
        }
    }
    (text, valid, invalid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_survives_killed_workers_duplicates_and_throttling() {
    let rows = env_number("CHAOS_ROWS", 12_000);
    let max_kills = env_number("CHAOS_KILLS", 12);
    let opts = StackOptions {
        lease: Duration::from_secs(LEASE_SECONDS),
        max_workers: WORKERS as u32,
        visibility_timeout: Duration::from_secs(10),
    };
    let mut stack = Stack::with(DEFINITION, opts).await;
    let tap = EventTap::new(&stack.clients, &stack.resources.queue).await;
    stack.deps.events = Arc::new(EventBridgeEvents {
        client: stack.clients.eventbridge.clone(),
        bus: Some(tap.bus.clone()),
    });
    let (text, valid, invalid) = csv(rows);
    let event = stack.upload("uploads/chaos.csv", text).await;
    // The S3 event arrives twice, concurrently.
    let (a, b) = tokio::join!(stack.orchestrate(event.clone()), stack.orchestrate(event));
    assert_eq!(a[0].job_id, b[0].job_id);
    let job_id = JobId::new(&a[0].job_id);
    let chaos = Chaos {
        workers: WORKERS,
        kills: max_kills,
        lease_seconds: LEASE_SECONDS,
        fault_rate: "0.05",
        event_bus: Some(tap.bus.clone()),
        timeout: Duration::from_secs(env_number("CHAOS_TIMEOUT_SECONDS", 900)),
    };
    let run = chaos.run(&stack, &job_id).await;

    let job = stack.job(&job_id).await;
    let mut reclaims = 0;
    for index in 0..job.total_batches {
        let batch = stack
            .watcher
            .batch_info(&job_id, index)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(batch.state, BatchState::Done, "batch {index}: {batch:?}");
        reclaims += batch.version.saturating_sub(1);
    }
    // The scheduled sweeper's next pass: sends a completion event that a
    // killed finalizer could not.
    stack.sweep().await;
    let completed: Vec<serde_json::Value> = tap
        .drain(&stack.clients.sqs)
        .await
        .into_iter()
        .filter(|e| e["detail-type"] == "job.completed")
        .collect();
    let event_ids: HashSet<String> = completed
        .iter()
        .map(|e| {
            e["detail"]["eventId"]
                .as_str()
                .expect("event id")
                .to_owned()
        })
        .collect();
    println!(
        "chaos: rows={rows} workers={WORKERS} kills={} reclaims={reclaims} duplicate_messages={} \
         duplicate_s3_events=1 injected_faults={} conflicts={} failed_worker_runs={} sweeps={} elapsed_ms={}",
        run.kills,
        run.duplicate_messages,
        run.injected_faults,
        job.cost.conflicts,
        run.failed_runs.len(),
        run.sweeps,
        run.elapsed.as_millis()
    );
    assert!(
        run.failed_by_conflict().is_empty(),
        "a conflict failed a worker's messages: {:?}",
        run.failed_by_conflict()
    );

    // At least once, one distinct event.
    assert!(!completed.is_empty(), "no job-completed event");
    assert_eq!(event_ids.len(), 1, "job-completed events: {completed:?}");
    assert_eq!(job.status, JobStatus::CompletedWithErrors);
    assert_eq!(job.total_records, rows);
    assert_eq!(job.processed + job.failed, rows);
    assert_eq!(job.failed, invalid);
    let keys: HashSet<String> = stack
        .target_items()
        .await
        .iter()
        .map(|i| i["email"].as_s().unwrap().clone())
        .collect();
    assert_eq!(keys, valid);
    assert!(run.injected_faults > 0, "faults were injected");
}
