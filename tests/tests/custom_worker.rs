//! Your own Rust processor, deployable: the worker `make build` packages
//! from functions/custom-worker (the README's example) runs as Lambda runs
//! it, its bootstrap polling a local Lambda Runtime API
//! (`scripts/runtime_api.py`) for an SQS event, and processes a job with
//! the example's processor instead of the built-in upsert.

use bulk_import::job::{JobId, JobStatus};
use bulk_import::store::JobControl;
use integration_tests::{Stack, StackOptions};
use std::path::PathBuf;
use std::process::Command;

const DEFINITION: &str = r#"{"fields": [
    {"name": "email", "type": "email"},
    {"name": "name", "type": "string", "required": true}],
  "keyField": "name", "batchSize": 4}"#;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test]
async fn the_packaged_custom_worker_processes_a_job_with_the_example_processor() {
    let bootstrap = std::env::var("CUSTOM_WORKER_BOOTSTRAP")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target/lambda-debug/custom-worker/bootstrap"));
    assert!(
        bootstrap.exists(),
        "{} is not built: run `make build-check` (make test does) first",
        bootstrap.display()
    );
    let stack = Stack::with_clients(
        DEFINITION,
        StackOptions::default(),
        integration_tests::clients().await,
    )
    .await;
    let mut csv = String::from("email,name\n");
    for i in 0..10 {
        match i {
            6 => csv.push_str(",Nobody\n"),
            _ => csv.push_str(&format!("user{i}@example.com,User {i}\n")),
        }
    }
    let event = stack.upload("uploads/users.csv", csv).await;
    let job = JobId::new(&stack.orchestrate(event).await[0].job_id);

    let sqs_event = serde_json::json!({"Records": [{
        "messageId": "m-1",
        "receiptHandle": "r-1",
        "body": serde_json::json!({"jobId": job.as_str()}).to_string(),
        "attributes": {},
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:work",
        "awsRegion": "us-east-1"
    }]});
    let event_path = std::env::temp_dir().join(format!("{job}-event.json"));
    std::fs::write(&event_path, sqs_event.to_string()).unwrap();
    let root = root();
    let output = tokio::task::spawn_blocking({
        let definition = stack.definition_path.clone();
        let state = stack.resources.state_table.clone();
        let queue = stack.queue_url.clone();
        move || {
            Command::new(root.join(".venv/bin/python"))
                .arg(root.join("scripts/runtime_api.py"))
                .args([
                    "--event",
                    &event_path.to_string_lossy(),
                    "--function-name",
                    "custom-worker",
                    "--",
                ])
                .arg(&bootstrap)
                .env("STATE_TABLE", state)
                .env("QUEUE_URL", queue)
                .env("IMPORT_DEFINITION", definition)
                .env_remove("TARGET_TABLE")
                .output()
                .expect("run the bootstrap")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(
        answer,
        serde_json::json!({"response": {"batchItemFailures": []}})
    );

    let done = stack.job(&job).await;
    assert_eq!(
        (done.status, done.processed, done.failed),
        (JobStatus::CompletedWithErrors, 9, 1)
    );
    let failed = stack.watcher.failed_records(&job, 6 / 4).await.unwrap();
    assert_eq!(failed[0].issues[0].message, "processing failed: no email");
    // The example's processor delivered the records; none was upserted.
    let scanned = stack
        .clients
        .dynamodb
        .scan()
        .table_name(&stack.resources.target_table)
        .send()
        .await
        .unwrap();
    assert_eq!(scanned.count(), 0);
}
