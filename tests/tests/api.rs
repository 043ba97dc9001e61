//! The HTTP API on the emulator, through the real SDK: every endpoint, its
//! errors and the failed-record pages, with every response checked against
//! docs/openapi.yaml (the documented status for that path and method, and
//! its JSON schema; the checks are in `contract`).

#[path = "api/contract.rs"]
mod contract;

use bulk_import::api::{Api, ApiRequest, Method};
use bulk_import::objects::S3Objects;
use bulk_import::store::dynamodb::DynamoStore;
use bulk_import::JobId;
use contract::call;
use integration_tests::{clients, Stack};
use serde_json::json;
use std::sync::Arc;

const DEFINITION: &str = r#"{
  "fields": [
    {"name": "email", "type": "email", "required": true},
    {"name": "age", "type": "integer"}
  ],
  "keyField": "email",
  "batchSize": 4
}"#;

fn api(stack: &Stack) -> Api {
    Api {
        store: stack.deps.store.clone(),
        objects: Arc::new(S3Objects::new(stack.clients.s3.clone())),
        events: stack.deps.events.clone(),
        reports: stack.deps.reports.clone(),
        queue: stack.deps.queue.clone(),
        prepare_queue: stack.deps.prepare_queue.clone(),
        max_workers: 2,
        version: "test".into(),
        clock: stack.deps.clock,
    }
}

fn csv(rows: usize, bad_every: usize) -> String {
    let mut csv = String::from("email,age\n");
    for i in 0..rows {
        if bad_every > 0 && i % bad_every == 0 {
            csv.push_str(&format!("user{i}-at-example.com,old\n"));
        } else {
            csv.push_str(&format!("user{i}@example.com,{i}\n"));
        }
    }
    csv
}

/// Uploads `body` and runs its job to the end; returns its id.
async fn finished_job(stack: &Stack, key: &str, body: String) -> JobId {
    let event = stack.upload(key, body).await;
    let prepared = stack.orchestrate(event).await;
    let job = JobId::new(&prepared[0].job_id);
    stack.run_workers(2, &job).await;
    job
}

#[tokio::test]
async fn jobs_are_listed_looked_up_by_id_and_object_and_errors_follow_the_contract() {
    let stack = Stack::new(DEFINITION).await;
    let api = api(&stack);
    let job = finished_job(&stack, "uploads/people.csv", csv(10, 5)).await;

    let (status, view) = call(&api, ApiRequest::get(&format!("/jobs/{job}"))).await;
    assert_eq!(status, 200);
    assert_eq!(view["status"], "COMPLETED_WITH_ERRORS");
    assert_eq!(
        (view["processed"].as_u64(), view["failed"].as_u64()),
        (Some(8), Some(2))
    );
    assert_eq!(
        (view["phase"].as_str(), view["progress"].as_u64()),
        (Some("done"), Some(100))
    );
    assert_eq!(view["totalBatches"], 3);
    let report = format!("s3://{}/reports/{job}.csv", stack.resources.bucket);
    assert_eq!(view["report"], report.as_str());

    let (_, list) = call(&api, ApiRequest::get("/jobs")).await;
    assert_eq!(list["jobs"][0], view);
    let (_, list) = call(
        &api,
        ApiRequest::get("/jobs").with_query("status", "completed-with-errors"),
    )
    .await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    let (_, list) = call(
        &api,
        ApiRequest::get("/jobs").with_query("status", "FAILED"),
    )
    .await;
    assert_eq!(list, json!({"jobs": []}));
    let object = format!("s3://{}/uploads/people.csv", stack.resources.bucket);
    let (_, found) = call(&api, ApiRequest::get("/jobs").with_query("source", &object)).await;
    assert_eq!(found["jobs"][0]["jobId"], job.as_str());
    let missing = format!("s3://{}/uploads/nothing.csv", stack.resources.bucket);
    let (_, none) = call(
        &api,
        ApiRequest::get("/jobs").with_query("source", &missing),
    )
    .await;
    assert_eq!(none, json!({"jobs": []}));

    for (request, status, code) in [
        (
            ApiRequest::get("/jobs/0123456789abcdef0123456789abcdef"),
            404,
            "not_found",
        ),
        (
            ApiRequest::get("/jobs/0123456789abcdef0123456789abcdef/errors"),
            404,
            "not_found",
        ),
        (
            ApiRequest::get("/jobs").with_query("status", "DONE"),
            400,
            "bad_request",
        ),
        (
            ApiRequest::get("/jobs").with_query("limit", "101"),
            400,
            "bad_request",
        ),
        (
            ApiRequest::get("/jobs").with_query("source", "people.csv"),
            400,
            "bad_request",
        ),
        (
            ApiRequest::get("/jobs").with_query("page", "2"),
            400,
            "bad_request",
        ),
        (
            ApiRequest::post(&format!("/jobs/{job}")),
            405,
            "method_not_allowed",
        ),
        (
            ApiRequest::get(&format!("/jobs/{job}/abort")),
            405,
            "method_not_allowed",
        ),
        (
            ApiRequest {
                method: Method::Other("DELETE".into()),
                ..ApiRequest::get(&format!("/jobs/{job}"))
            },
            405,
            "method_not_allowed",
        ),
        (ApiRequest::get("/imports"), 404, "not_found"),
    ] {
        let path = request.path.clone();
        let (got, body) = call(&api, request).await;
        assert_eq!(
            (got, body["code"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn failed_records_page_through_an_opaque_cursor_to_a_last_page_without_one() {
    let stack = Stack::new(DEFINITION).await;
    let api = api(&stack);
    // 30 rows in 8 batches of 4; rows 0, 3, 6, ... fail on both fields.
    let job = finished_job(&stack, "uploads/bad.csv", csv(30, 3)).await;
    let path = format!("/jobs/{job}/errors");

    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut request = ApiRequest::get(&path).with_query("limit", "3");
        if let Some(c) = &cursor {
            request = request.with_query("cursor", c);
        }
        let (status, page) = call(&api, request.clone()).await;
        assert_eq!(status, 200);
        assert_eq!(
            call(&api, request).await.1,
            page,
            "the same cursor, the same page"
        );
        pages += 1;
        rows.extend(page["errors"].as_array().unwrap().iter().cloned());
        match page.get("nextCursor") {
            Some(next) => cursor = Some(next.as_str().unwrap().to_owned()),
            None => break,
        }
    }
    // 10 bad records, two problems each.
    assert_eq!(rows.len(), 20);
    assert_eq!(pages, 7, "20 rows, 3 a page");
    let lines: Vec<u64> = rows.iter().map(|r| r["line"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (0..30)
        .step_by(3)
        .flat_map(|i| [i as u64 + 2, i as u64 + 2])
        .collect();
    assert_eq!(lines, expected, "input order");
    assert_eq!(rows[0]["field"], "email");
    assert_eq!(rows[0]["value"], "user0-at-example.com");
    assert_eq!(rows[0]["stage"], "validation");

    let (_, all) = call(&api, ApiRequest::get(&path).with_query("limit", "1000")).await;
    assert_eq!(all["errors"].as_array().unwrap(), &rows);
    assert!(all.get("nextCursor").is_none());

    for bad in ["not base64!", "MTIz", "OTkuOTk5"] {
        let (status, body) = call(&api, ApiRequest::get(&path).with_query("cursor", bad)).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    let (status, _) = call(&api, ApiRequest::get(&path).with_query("limit", "0")).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn abort_ends_a_job_once_and_retry_runs_what_it_left() {
    let stack = Stack::new(DEFINITION).await;
    let api = api(&stack);
    let event = stack.upload("uploads/stop.csv", csv(20, 0)).await;
    let job = JobId::new(&stack.orchestrate(event).await[0].job_id);
    let abort = format!("/jobs/{job}/abort");

    let (status, _) = call(&api, ApiRequest::post(&abort).with_body("{\"why\": 1}")).await;
    assert_eq!(status, 400, "an unknown body field");
    let (status, view) = call(
        &api,
        ApiRequest::post(&abort).with_body(r#"{"reason": "wrong file"}"#),
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "ABORTED");
    assert_eq!(view["failureReason"], "wrong file");
    assert_eq!(
        stack.job(&job).await.status,
        bulk_import::JobStatus::Aborted
    );
    assert_eq!(view["reportPending"], true, "{view}");
    assert!(
        stack.events.endings().is_empty(),
        "the abort's request only ends the job"
    );
    // The worker the abort woke settles the ending: no failures to report,
    // and the event.
    stack.run_workers(1, &job).await;
    let (_, view) = call(&api, ApiRequest::get(&format!("/jobs/{job}"))).await;
    assert!(view.get("reportPending").is_none(), "{view}");
    assert_eq!(
        stack.events.endings().len(),
        1,
        "the completion event is sent"
    );

    let (status, body) = call(&api, ApiRequest::post(&abort)).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("conflict")));
    let (status, _) = call(
        &api,
        ApiRequest::post("/jobs/0123456789abcdef0123456789abcdef/abort"),
    )
    .await;
    assert_eq!(status, 404);

    // The retry round runs the 20 records the abort left, and conflicts
    // while it runs and once nothing is left.
    let retry = format!("/jobs/{job}/retry");
    let (status, view) = call(&api, ApiRequest::post(&retry)).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        (&view["status"], &view["retries"]),
        (&json!("PROCESSING"), &json!(1))
    );
    let (status, body) = call(&api, ApiRequest::post(&retry)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("conflict")),
        "still running"
    );
    stack.run_workers(2, &job).await;
    let (_, view) = call(&api, ApiRequest::get(&format!("/jobs/{job}"))).await;
    assert_eq!(
        (&view["status"], &view["processed"]),
        (&json!("COMPLETED"), &json!(20))
    );
    let (status, body) = call(&api, ApiRequest::post(&retry)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    let (status, _) = call(
        &api,
        ApiRequest::post("/jobs/0123456789abcdef0123456789abcdef/retry"),
    )
    .await;
    assert_eq!(status, 404);
}

/// A retry through the API must start within the API function's 30
/// seconds whatever the job's size: the request reopens the job and hands
/// the requeue pass, which grows with the failures, to the orchestrator.
#[tokio::test]
async fn retry_of_a_job_with_many_failed_batches_starts_in_a_bounded_number_of_requests() {
    const ROWS: u64 = 60;
    let definition = DEFINITION.replace(
        r#""batchSize": 4"#,
        r#""batchSize": 1, "maxRetries": 0, "continueOnError": true"#,
    );
    let stack = Stack::new(&definition).await;
    let event = stack
        .upload("uploads/down.csv", csv(ROWS as usize, 0))
        .await;
    // The target table is gone while the job runs: every record fails in
    // processing, one batch each.
    stack
        .clients
        .dynamodb
        .delete_table()
        .table_name(&stack.resources.target_table)
        .send()
        .await
        .expect("delete the target table");
    let job = JobId::new(&stack.orchestrate(event).await[0].job_id);
    stack.run_workers(4, &job).await;
    let failed = stack.job(&job).await;
    assert_eq!(
        (failed.status, failed.failed, failed.retryable),
        (bulk_import::JobStatus::Failed, ROWS, ROWS)
    );
    bulk_import::local::ensure_resources(&stack.clients, &stack.resources)
        .await
        .expect("recreate the target table");

    // The API's store counts its requests.
    let ledger = integration_tests::ledger::Ledger::default();
    let counted = integration_tests::ledger_clients(&ledger).await;
    let mut api = api(&stack);
    api.store = Arc::new(DynamoStore::new(
        counted.dynamodb.clone(),
        &stack.resources.state_table,
        false,
    ));
    let (status, view) = call(&api, ApiRequest::post(&format!("/jobs/{job}/retry"))).await;
    assert_eq!(status, 200, "{view}");
    let requests: u64 = ledger.with(|t| t.operations.values().sum());
    assert!(
        requests <= 6,
        "{requests} requests for {ROWS} failed batches: {:?}",
        ledger.with(|t| t.operations.clone())
    );
    // Reopened and consistent: nothing requeued yet, and it cannot complete
    // until the pass has put every failed batch back.
    let reopened = stack.job(&job).await;
    assert_eq!(
        (
            reopened.status,
            reopened.retries,
            reopened.round.requeuing,
            reopened.batches_done,
            reopened.failed
        ),
        (bulk_import::JobStatus::Processing, 1, true, ROWS, ROWS)
    );
    assert_eq!(
        (&view["status"], &view["requeuing"]),
        (&json!("PROCESSING"), &json!(true))
    );

    // The orchestrator runs the pass from the prepare queue.
    let continued = stack.continue_prepares(&job).await;
    assert_eq!(continued.failed_messages, 0);
    let requeued = stack.job(&job).await;
    assert_eq!(
        (
            requeued.round.requeuing,
            requeued.batches_done,
            requeued.failed,
            requeued.retryable
        ),
        (false, 0, 0, 0)
    );
    stack.run_workers(4, &job).await;
    let done = stack.job(&job).await;
    assert_eq!(
        (done.status, done.processed, done.failed, done.retries),
        (bulk_import::JobStatus::Completed, ROWS, 0, 1)
    );
    assert_eq!(stack.target_items().await.len() as u64, ROWS);
    let ids: Vec<String> = stack
        .events
        .endings()
        .iter()
        .map(|e| e.event_id.clone())
        .collect();
    assert_eq!(
        ids,
        vec![format!("{job}:failed"), format!("{job}:completed:retry-1")]
    );
}

#[tokio::test]
async fn stats_count_jobs_per_status_and_sum_recent_records() {
    let stack = Stack::new(DEFINITION).await;
    let api = api(&stack);
    finished_job(&stack, "uploads/one.csv", csv(10, 5)).await;
    finished_job(&stack, "uploads/two.csv", csv(6, 0)).await;
    let event = stack.upload("uploads/three.csv", csv(4, 0)).await;
    let open = JobId::new(&stack.orchestrate(event).await[0].job_id);
    call(&api, ApiRequest::post(&format!("/jobs/{open}/abort"))).await;

    let (status, stats) = call(&api, ApiRequest::get("/stats")).await;
    assert_eq!(status, 200);
    assert_eq!(
        stats["jobsByStatus"],
        json!({"PROCESSING": 0, "COMPLETED": 1, "COMPLETED_WITH_ERRORS": 1, "FAILED": 0, "ABORTED": 1})
    );
    assert_eq!(stats["recent"]["jobs"], 3);
    assert_eq!(
        (
            stats["recent"]["processed"].as_u64(),
            stats["recent"]["failed"].as_u64()
        ),
        (Some(14), Some(2))
    );
    assert_eq!(stats["recent"]["successRate"], 0.875);
    let (status, _) = call(&api, ApiRequest::get("/stats").with_query("window", "5")).await;
    assert_eq!(status, 400);

    let (status, health) = call(&api, ApiRequest::get("/health")).await;
    assert_eq!(
        (status, health),
        (200, json!({"status": "ok", "version": "test"}))
    );
}

#[tokio::test]
async fn health_is_unavailable_when_the_state_table_does_not_answer() {
    let clients = clients().await;
    let stack_free = Api {
        store: Arc::new(DynamoStore::new(
            clients.dynamodb.clone(),
            "no-such-table",
            false,
        )),
        objects: Arc::new(S3Objects::new(clients.s3.clone())),
        events: Arc::new(bulk_import::events::MemoryEvents::default()),
        reports: Arc::new(bulk_import::report::MemoryReports::default()),
        queue: Arc::new(bulk_import::queue::MemoryQueue::default()),
        prepare_queue: None,
        max_workers: 2,
        version: "test".into(),
        clock: bulk_import::clock::Clock::system(),
    };
    let (status, body) = call(&stack_free, ApiRequest::get("/health")).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")));
    let message = body["message"].as_str().unwrap();
    assert!(
        !message.contains("no-such-table"),
        "no internal details: {message}"
    );
    let (status, body) = call(&stack_free, ApiRequest::get("/jobs")).await;
    assert_eq!((status, body["code"].as_str()), (500, Some("internal")));
    assert!(!body["message"].as_str().unwrap().contains("no-such-table"));
}
