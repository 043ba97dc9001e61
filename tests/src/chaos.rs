//! The chaos driver: worker *processes* against the emulator, killed with
//! SIGKILL at random mid-batch and replaced, with duplicate SQS messages
//! and DynamoDB faults (throttling, 500s, transaction conflicts) injected
//! into a share of their requests, and the sweeper passing now and then,
//! until the job is final.

use crate::Stack;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use bulk_import::job::JobId;
use rand::Rng;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How hard to shake a job.
#[derive(Debug, Clone)]
pub struct Chaos {
    pub workers: usize,
    pub kills: u64,
    /// Lease each worker process takes on a batch.
    pub lease_seconds: u64,
    /// Share of the workers' DynamoDB requests that fail.
    pub fault_rate: &'static str,
    /// The event bus workers send job events to, if any.
    pub event_bus: Option<String>,
    pub timeout: Duration,
}

/// What a chaos run did.
#[derive(Debug, Clone)]
pub struct ChaosRun {
    pub kills: u64,
    pub duplicate_messages: u64,
    pub sweeps: u64,
    pub injected_faults: usize,
    pub elapsed: Duration,
    /// Lines workers logged as failed runs (their messages are retried).
    pub failed_runs: Vec<String>,
}

impl ChaosRun {
    /// Failed runs a transaction conflict caused: there should be none.
    pub fn failed_by_conflict(&self) -> Vec<&String> {
        self.failed_runs
            .iter()
            .filter(|l| l.contains("TransactionConflict") || l.contains("TransactionCanceled"))
            .collect()
    }
}

impl Chaos {
    /// Runs `job` to its end under chaos; panics when it does not end in
    /// time.
    pub async fn run(&self, stack: &Stack, job: &JobId) -> ChaosRun {
        let fault_log = std::env::temp_dir().join(format!("{}-faults.log", stack.resources.queue));
        let error_log = std::env::temp_dir().join(format!("{}-errors.log", stack.resources.queue));
        let spawn = || self.spawn_worker(stack, job, &fault_log, &error_log);
        let started = Instant::now();
        let mut workers: Vec<Child> = (0..self.workers).map(|_| spawn()).collect();
        let (mut kills, mut duplicates, mut sweeps) = (0u64, 0u64, 0u64);
        let deadline = started + self.timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(400));
        let mut last_sweep = Instant::now();
        loop {
            tick.tick().await;
            let state = stack.job(job).await;
            if state.status.is_final() {
                break;
            }
            assert!(Instant::now() < deadline, "job did not finish: {state:?}");
            let (kill, duplicate, victim) = {
                let mut rng = rand::rng();
                (
                    rng.random_bool(0.5),
                    rng.random_bool(0.15),
                    rng.random_range(0..self.workers),
                )
            };
            if kills < self.kills && kill {
                // SIGKILL: no chance to release anything.
                workers[victim].start_kill().expect("kill");
                let _ = workers[victim].wait().await;
                workers[victim] = spawn();
                kills += 1;
            }
            if duplicate {
                send_duplicates(stack, job).await;
                duplicates += 3;
            }
            if last_sweep.elapsed() > Duration::from_secs(5) {
                stack.sweep().await;
                sweeps += 1;
                last_sweep = Instant::now();
            }
        }
        let elapsed = started.elapsed();
        for mut w in workers {
            let _ = w.start_kill();
            let _ = w.wait().await;
        }
        let injected_faults = std::fs::read_to_string(&fault_log)
            .map(|s| s.lines().count())
            .unwrap_or(0);
        let _ = std::fs::remove_file(&fault_log);
        let errors = std::fs::read_to_string(&error_log).unwrap_or_default();
        let _ = std::fs::remove_file(&error_log);
        ChaosRun {
            kills,
            duplicate_messages: duplicates,
            sweeps,
            injected_faults,
            elapsed,
            failed_runs: errors
                .lines()
                .filter(|l| l.contains("messages will be retried"))
                .map(str::to_owned)
                .collect(),
        }
    }

    fn spawn_worker(
        &self,
        stack: &Stack,
        job: &JobId,
        fault_log: &std::path::Path,
        error_log: &std::path::Path,
    ) -> Child {
        let errors = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(error_log)
            .expect("error log");
        let r = &stack.resources;
        let mut command = Command::new(crate::bulkimport());
        command
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
                &self.lease_seconds.to_string(),
                "--invocation-timeout",
                "20",
            ])
            .arg("--definition")
            .arg(&stack.definition_path);
        if let Some(bus) = &self.event_bus {
            command.arg("--event-bus").arg(bus);
        }
        command
            .env("BULKIMPORT_FAULT_RATE", self.fault_rate)
            .env("BULKIMPORT_FAULT_LOG", fault_log)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(errors)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn worker")
    }
}

/// Three more messages for `job`, as SQS may deliver.
async fn send_duplicates(stack: &Stack, job: &JobId) {
    let body = serde_json::json!({ "jobId": job }).to_string();
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
}
