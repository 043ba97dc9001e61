//! Chaos: worker *processes* against the emulator, killed with SIGKILL at
//! random mid-batch and replaced, with duplicate SQS messages, a duplicate
//! S3 event and DynamoDB faults (throttling, 500s, transaction conflicts)
//! injected into a share of requests. The job must still finish exactly
//! once with every valid record imported.
//!
//! Scale with CHAOS_ROWS (default 20,000) and CHAOS_KILLS (default 12);
//! `make chaos` runs 50,000 rows and 40 kills.

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use bulk_import::events::EventBridgeEvents;
use bulk_import::job::JobId;
use bulk_import::store::{BatchState, JobControl};
use bulk_import::JobStatus;
use integration_tests::{EventTap, Stack, StackOptions};
use rand::Rng;
use std::collections::HashSet;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

const WORKERS: usize = 8;
const LEASE_SECONDS: u64 = 3;
const FAULT_RATE: &str = "0.05";

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

fn spawn_worker(
    stack: &Stack,
    job: &JobId,
    event_bus: &str,
    fault_log: &std::path::Path,
    error_log: &std::path::Path,
) -> Child {
    let errors = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(error_log)
        .expect("error log");
    let r = &stack.resources;
    Command::new(integration_tests::bulkimport())
        .args([
            "--bucket",
            &r.bucket,
            "--queue",
            &r.queue,
            "--state-table",
            &r.state_table,
        ])
        .args([
            "--target-table",
            &r.target_table,
            "worker",
            "--job",
            job.as_str(),
        ])
        .args([
            "--lease",
            &LEASE_SECONDS.to_string(),
            "--invocation-timeout",
            "20",
        ])
        .arg("--definition")
        .arg(&stack.definition_path)
        .arg("--event-bus")
        .arg(event_bus)
        .env("BULKIMPORT_FAULT_RATE", FAULT_RATE)
        .env("BULKIMPORT_FAULT_LOG", fault_log)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(errors)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn worker")
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
    let rows = env_number("CHAOS_ROWS", 20_000);
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
    let fault_log = std::env::temp_dir().join(format!("{}-faults.log", stack.resources.queue));
    let error_log = std::env::temp_dir().join(format!("{}-errors.log", stack.resources.queue));

    let started = Instant::now();
    let (text, valid, invalid) = csv(rows);
    let event = stack.upload("uploads/chaos.csv", text).await;
    // The S3 event arrives twice, concurrently.
    let (a, b) = tokio::join!(stack.orchestrate(event.clone()), stack.orchestrate(event));
    assert_eq!(a[0].job_id, b[0].job_id);
    let job_id = JobId::new(&a[0].job_id);

    let mut workers: Vec<Child> = (0..WORKERS)
        .map(|_| spawn_worker(&stack, &job_id, &tap.bus, &fault_log, &error_log))
        .collect();
    let (mut kills, mut duplicates, mut sweeps) = (0u64, 0u64, 0u64);
    let deadline = started + Duration::from_secs(env_number("CHAOS_TIMEOUT_SECONDS", 900));
    let mut tick = tokio::time::interval(Duration::from_millis(400));
    let mut last_sweep = Instant::now();
    loop {
        tick.tick().await;
        let job = stack.job(&job_id).await;
        if job.status.is_final() {
            break;
        }
        assert!(Instant::now() < deadline, "job did not finish: {job:?}");
        let (kill, duplicate, victim) = {
            let mut rng = rand::rng();
            (
                rng.random_bool(0.5),
                rng.random_bool(0.15),
                rng.random_range(0..WORKERS),
            )
        };
        if kills < max_kills && kill {
            // SIGKILL: no chance to release anything.
            workers[victim].start_kill().expect("kill");
            let _ = workers[victim].wait().await;
            workers[victim] = spawn_worker(&stack, &job_id, &tap.bus, &fault_log, &error_log);
            kills += 1;
        }
        if duplicate {
            let body = serde_json::json!({ "jobId": job_id }).to_string();
            let entries = (0..3)
                .map(|i| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(&body)
                        .build()
                        .unwrap()
                })
                .collect();
            stack
                .clients
                .sqs
                .send_message_batch()
                .queue_url(&stack.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .unwrap();
            duplicates += 3;
        }
        if last_sweep.elapsed() > Duration::from_secs(5) {
            stack
                .deps
                .sweeper()
                .sweep("chaos-sweeper", None)
                .await
                .expect("sweep");
            sweeps += 1;
            last_sweep = Instant::now();
        }
    }
    let elapsed = started.elapsed();
    for mut w in workers {
        let _ = w.start_kill();
        let _ = w.wait().await;
    }

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
    stack
        .deps
        .sweeper()
        .sweep("chaos-sweeper", None)
        .await
        .expect("sweep");
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
    let injected = std::fs::read_to_string(&fault_log)
        .map(|s| s.lines().count())
        .unwrap_or(0);
    let _ = std::fs::remove_file(&fault_log);
    let errors = std::fs::read_to_string(&error_log).unwrap_or_default();
    let _ = std::fs::remove_file(&error_log);
    let failed_runs: Vec<&str> = errors
        .lines()
        .filter(|l| l.contains("messages will be retried"))
        .collect();
    let failed_by_conflict: Vec<&&str> = failed_runs
        .iter()
        .filter(|l| l.contains("TransactionConflict") || l.contains("TransactionCanceled"))
        .collect();
    println!(
        "chaos: rows={rows} workers={WORKERS} kills={kills} reclaims={reclaims} duplicate_messages={duplicates} \
         duplicate_s3_events=1 injected_faults={injected} conflicts={} failed_worker_runs={} sweeps={sweeps} elapsed_ms={}",
        job.cost.conflicts,
        failed_runs.len(),
        elapsed.as_millis()
    );
    assert!(
        failed_by_conflict.is_empty(),
        "a conflict failed a worker's messages: {failed_by_conflict:?}"
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
    assert!(injected > 0, "faults were injected");
}
