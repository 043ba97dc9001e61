//! The operator's commands against the emulator: `bulkimport jobs` and
//! `bulkimport status` find a finished job by id or by its S3 object and
//! report how it ended; `abort` stops one and `retry` runs again what
//! failed in processing or was left unprocessed.

use integration_tests::{bulkimport, Stack};
use tokio::process::Command;

const DEFINITION: &str = r#"{
  "fields": [
    {"name": "email", "type": "email", "required": true},
    {"name": "name", "type": "string"}
  ],
  "keyField": "email",
  "batchSize": 4
}"#;

async fn cli(stack: &Stack, args: &[&str]) -> (i32, String) {
    let r = &stack.resources;
    let out = Command::new(bulkimport())
        .args(["--bucket", &r.bucket, "--state-table", &r.state_table])
        .args(["--queue", &r.queue])
        .args(args)
        .output()
        .await
        .expect("run bulkimport");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code().is_some(),
        "bulkimport was killed: {stderr}"
    );
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).expect("UTF-8 output"),
    )
}

#[tokio::test]
async fn abort_stops_a_job_once_and_nothing_more_is_claimed() {
    let stack = Stack::new(DEFINITION).await;
    let mut csv = String::from("email,name\n");
    for i in 0..20 {
        csv.push_str(&format!("user{i}@example.com,User {i}\n"));
    }
    let event = stack.upload("uploads/stop.csv", csv).await;
    let prepared = stack.orchestrate(event).await;
    let job = bulk_import::JobId::new(&prepared[0].job_id);

    let (code, out) = cli(&stack, &["abort", job.as_str(), "--reason", "wrong file"]).await;
    assert_eq!(code, 0, "{out}");
    let view: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(view["status"], "ABORTED");
    assert_eq!(view["failureReason"], "wrong file");
    let (again, _) = cli(&stack, &["abort", job.as_str()]).await;
    assert_eq!(again, 1, "an ended job is not aborted twice");

    // Workers woken for the job find nothing to claim.
    let stats = stack.run_workers(2, &job).await;
    assert_eq!(stats.failed_messages, 0);
    let done = stack.job(&job).await;
    assert_eq!(
        (done.status, done.processed),
        (bulk_import::JobStatus::Aborted, 0)
    );
    assert!(stack.target_items().await.is_empty());
    let (code, _) = cli(&stack, &["status", job.as_str(), "--watch"]).await;
    assert_eq!(code, 3, "the exit code of an aborted job");
}

#[tokio::test]
async fn status_and_jobs_find_a_finished_job_by_its_object_and_say_how_it_ended() {
    let stack = Stack::new(DEFINITION).await;
    let mut csv = String::from("email,name\n");
    for i in 0..10 {
        csv.push_str(&format!("user{i}@example.com,User {i}\n"));
    }
    csv.push_str("not-an-email,Broken\n");
    let event = stack.upload("uploads/people.csv", csv).await;
    let prepared = stack.orchestrate(event).await;
    let job = bulk_import::JobId::new(&prepared[0].job_id);
    stack.run_workers(2, &job).await;

    let object = format!("s3://{}/uploads/people.csv", stack.resources.bucket);
    let (code, out) = cli(&stack, &["status", &object, "--watch"]).await;
    assert_eq!(code, 2, "completed with errors: {out}");
    let view: serde_json::Value = serde_json::from_str(&out).expect("status is JSON");
    assert_eq!(view["jobId"], job.as_str());
    assert_eq!(view["status"], "COMPLETED_WITH_ERRORS");
    assert_eq!(view["progress"], 100);
    assert_eq!(
        (view["processed"].as_u64(), view["failed"].as_u64()),
        (Some(10), Some(1))
    );
    assert_eq!(view["totalBatches"], 3);

    let (code, out) = cli(&stack, &["status", job.as_str()]).await;
    assert_eq!(code, 0);
    assert!(out.contains("\"phase\": \"done\""), "{out}");

    let (code, errors) = cli(&stack, &["errors", job.as_str(), "--limit", "5"]).await;
    assert_eq!(code, 0);
    let rows: Vec<&str> = errors.lines().collect();
    assert_eq!(rows[0], "line,field,value,message");
    assert_eq!(rows.len(), 2, "{errors}");
    assert!(rows[1].starts_with("12,email,not-an-email,"), "{errors}");
    // The report to fix and upload again: the row as it was, then where and why.
    let (code, report) = cli(&stack, &["errors", job.as_str(), "--report"]).await;
    assert_eq!(code, 0);
    let rows: Vec<&str> = report.lines().collect();
    assert_eq!(rows[0], "email,name,line,field,reason", "{report}");
    assert_eq!(rows.len(), 2, "{report}");
    assert!(rows[1].starts_with("not-an-email,"), "{report}");
    assert!(rows[1].contains(",12,email,"), "{report}");

    let (code, csv_out) = cli(&stack, &["export", job.as_str(), "--format", "csv"]).await;
    assert_eq!(code, 0);
    let rows: Vec<&str> = csv_out.lines().collect();
    assert_eq!(
        rows.len(),
        11,
        "header and the 10 imported records: {csv_out}"
    );
    assert_eq!(rows[0], "email,name");
    assert_eq!(rows[1], "user0@example.com,User 0");
    let (_, json_out) = cli(&stack, &["export", &object, "--format", "json"]).await;
    let records: Vec<serde_json::Value> = serde_json::from_str(&json_out).expect("a JSON array");
    assert_eq!(records.len(), 10);
    assert_eq!(records[9]["email"], "user9@example.com");
    let to = format!("s3://{}/exports/people.csv", stack.resources.bucket);
    let (code, _) = cli(
        &stack,
        &["export", job.as_str(), "--format", "csv", "--out", &to],
    )
    .await;
    assert_eq!(code, 0);
    let uploaded = stack
        .clients
        .s3
        .get_object()
        .bucket(&stack.resources.bucket)
        .key("exports/people.csv")
        .send()
        .await
        .expect("the export is in S3");
    let body = uploaded.body.collect().await.expect("body").into_bytes();
    assert_eq!(String::from_utf8_lossy(&body), csv_out);

    let (_, listed) = cli(&stack, &["jobs", "--status", "completed-with-errors"]).await;
    assert!(listed.contains(job.as_str()), "{listed}");
    let (_, failed) = cli(&stack, &["jobs", "--status", "FAILED"]).await;
    assert!(!failed.contains(job.as_str()), "{failed}");
    // The kind: the definition file's name, shown and filtered on.
    let kind = stack.job(&job).await.kind.expect("a kind");
    let (_, of_kind) = cli(&stack, &["jobs", "--kind", &kind]).await;
    assert!(
        of_kind.contains(job.as_str()) && of_kind.contains(&kind),
        "{of_kind}"
    );
    let (_, other) = cli(&stack, &["jobs", "--kind", "orders"]).await;
    assert!(!other.contains(job.as_str()), "{other}");
}

fn users(n: usize) -> String {
    let mut csv = String::from("email,name\n");
    for i in 0..n {
        csv.push_str(&format!("user{i}@example.com,User {i}\n"));
    }
    csv
}

#[tokio::test]
async fn abort_then_retry_processes_what_the_abort_left() {
    let stack = Stack::new(DEFINITION).await;
    let event = stack.upload("uploads/later.csv", users(20)).await;
    let prepared = stack.orchestrate(event).await;
    let job = bulk_import::JobId::new(&prepared[0].job_id);
    // The operator's commands announce on a bus of their own, so the test
    // sees exactly what they sent (the functions' events go to memory).
    let tap = integration_tests::EventTap::new(&stack.clients, &stack.resources.queue).await;
    let (code, _) = cli(&stack, &["abort", job.as_str(), "--event-bus", &tap.bus]).await;
    assert_eq!(code, 0);
    let sent: Vec<serde_json::Value> = tap.drain(&stack.clients.sqs).await;
    let ids: Vec<&str> = sent
        .iter()
        .map(|e| e["detail"]["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [format!("{job}:aborted")], "one job.aborted, once");
    stack.run_workers(2, &job).await;
    assert_eq!(
        stack.job(&job).await.processed,
        0,
        "nothing ran after the abort"
    );

    let (code, out) = cli(&stack, &["retry", job.as_str(), "--event-bus", &tap.bus]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        tap.drain(&stack.clients.sqs).await.is_empty(),
        "the aborted round owed nothing more"
    );
    let view: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(view["status"], "PROCESSING");
    assert_eq!(view["retries"], 1);
    let stats = stack.run_workers(2, &job).await;
    assert_eq!(stats.failed_messages, 0);
    let done = stack.job(&job).await;
    assert_eq!(
        (done.status, done.processed, done.failed, done.retries),
        (bulk_import::JobStatus::Completed, 20, 0, 1)
    );
    assert_eq!(stack.target_items().await.len(), 20);
    let (code, _) = cli(&stack, &["retry", job.as_str()]).await;
    assert_eq!(code, 1, "a completed job has nothing to retry");
    let ids: Vec<String> = stack
        .events
        .endings()
        .iter()
        .map(|e| e.event_id.clone())
        .collect();
    assert_eq!(ids, vec![format!("{job}:completed:retry-1")]);
}

#[tokio::test]
async fn retry_after_the_target_is_fixed_moves_failures_to_processed() {
    let definition = DEFINITION.replace(r#""batchSize": 4"#, r#""batchSize": 4, "maxRetries": 0"#);
    let stack = Stack::new(&definition).await;
    let mut csv = users(10);
    csv.push_str("not-an-email,Broken\n");
    let event = stack.upload("uploads/down.csv", csv).await;
    // The target table is gone while the job runs: every valid record
    // fails in processing.
    let target = stack.resources.target_table.clone();
    stack
        .clients
        .dynamodb
        .delete_table()
        .table_name(&target)
        .send()
        .await
        .expect("delete the target table");
    let prepared = stack.orchestrate(event).await;
    let job = bulk_import::JobId::new(&prepared[0].job_id);
    stack.run_workers(2, &job).await;
    let failed = stack.job(&job).await;
    assert_eq!(
        (failed.status, failed.processed, failed.failed),
        (bulk_import::JobStatus::Failed, 0, 11)
    );

    // The operator fixes the cause and retries.
    bulk_import::local::ensure_resources(&stack.clients, &stack.resources)
        .await
        .expect("recreate the target table");
    let (code, out) = cli(&stack, &["retry", job.as_str()]).await;
    assert_eq!(code, 0, "{out}");
    stack.run_workers(2, &job).await;
    let done = stack.job(&job).await;
    assert_eq!(
        (done.status, done.processed, done.failed, done.retries),
        (bulk_import::JobStatus::CompletedWithErrors, 10, 1, 1)
    );
    assert_eq!(stack.target_items().await.len(), 10);
    // The report now holds only the invalid row.
    let (_, errors) = cli(&stack, &["errors", job.as_str()]).await;
    let rows: Vec<&str> = errors.lines().collect();
    assert_eq!(rows.len(), 2, "{errors}");
    assert!(rows[1].starts_with("12,email,not-an-email,"), "{errors}");
    let events = stack.events.endings();
    let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(
        ids,
        vec![format!("{job}:failed"), format!("{job}:completed:retry-1")]
    );
}

#[tokio::test]
async fn check_validates_a_local_file_and_exits_by_outcome() {
    let dir = std::env::temp_dir().join(integration_tests::unique("check"));
    std::fs::create_dir_all(&dir).unwrap();
    let definition = dir.join("definition.json");
    std::fs::write(&definition, DEFINITION).unwrap();
    let run = |name: &str, body: String| {
        let file = dir.join(name);
        std::fs::write(&file, body).unwrap();
        let definition = definition.clone();
        async move {
            let out = Command::new(bulkimport())
                .arg("check")
                .arg(&file)
                .arg("--definition")
                .arg(&definition)
                .output()
                .await
                .expect("run bulkimport check");
            (
                out.status.code().expect("exit code"),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (code, out, _) = run("good.csv", users(5)).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("5 rows, 5 valid, 0 failed"), "{out}");
    assert!(
        out.contains("keys (email): every valid row has its own"),
        "{out}"
    );

    let mut csv = users(5);
    csv.push_str("user1@example.com,User 1 again\nuser1@example.com,And again\n");
    let (code, out, _) = run("repeats.csv", csv).await;
    assert_eq!(code, 0, "repeated keys are not failures: {out}");
    assert!(
        out.contains("keys (email): 1 key repeated, on 2 valid rows after the first"),
        "{out}"
    );
    assert!(out.contains("line 8 repeats the key of line 3"), "{out}");
    assert!(
        out.contains("(onDuplicateKey last: each key keeps its last row)"),
        "{out}"
    );

    let mut csv = users(5);
    csv.push_str("not-an-email,Broken\n");
    let (code, out, _) = run("some-bad.csv", csv).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("6 rows, 5 valid, 1 failed"), "{out}");
    assert!(out.contains("1  email: not a valid email address"), "{out}");
    assert!(out.contains("7,email,not-an-email,"), "{out}");

    let (code, _, err) = run("no-email.csv", "name\nx\n".into()).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("no-email.csv"),
        "the error names the file: {err}"
    );
}
