//! The `lambda` processor through the real SDK client (`Invoke`) against a
//! local stand-in for Lambda that runs the README's example function
//! (`examples/processors/orders_handler.py`) in a process of its own. The
//! function fails some records permanently and some retryably, raises on
//! the first call for some (a function error) and runs past its timeout
//! for others; Lambda throttles the first calls. Every count and every
//! reason in the report is what the function's rules say.

use bulk_import::job::{JobId, JobStatus};
use bulk_import::store::JobControl;
use integration_tests::standin::{clients_with, StandIn};
use integration_tests::{clients, Stack, StackOptions};
use std::collections::BTreeMap;

fn definition(settings: &str) -> String {
    format!(
        r#"{{"kind": "orders",
          "fields": [
            {{"name": "order_id", "type": "string", "required": true}},
            {{"name": "sku", "type": "string", "required": true}},
            {{"name": "quantity", "type": "integer", "required": true}}],
          "batchSize": 10, "maxRetries": 3,
          "processor": {{"type": "lambda",
            "function": "arn:aws:lambda:us-east-1:123456789012:function:orders"{settings}}}}}"#
    )
}

/// 80 orders: a tenth with no quantity to reserve, a tenth back-ordered, a
/// tenth on a flaky service, two slow. In each batch of ten, rows 0-3 make
/// one call, 4-7 the next, 8-9 the last.
fn orders() -> (String, BTreeMap<u64, &'static str>) {
    let mut csv = String::from("order_id,sku,quantity\n");
    let mut failures = BTreeMap::new();
    for i in 0..80u64 {
        let line = i + 2;
        let (sku, quantity) = match i % 10 {
            0 => {
                failures.insert(line, "quantity must be positive");
                (format!("SKU-{i}"), 0)
            }
            1 => {
                failures.insert(line, "out of stock");
                (format!("BACKORDER-{i}"), 2)
            }
            2 => (format!("FLAKY-{i}"), 1),
            9 if i % 40 == 9 => (format!("SLOW-{i}"), 1),
            _ => (format!("SKU-{i}"), 3),
        };
        csv.push_str(&format!("A-{i},{sku},{quantity}\n"));
    }
    (csv, failures)
}

async fn failure_reasons(stack: &Stack, job: &JobId) -> BTreeMap<u64, String> {
    let mut reasons = BTreeMap::new();
    for batch in 0..stack.job(job).await.total_batches {
        for f in stack.watcher.failed_records(job, batch).await.unwrap() {
            reasons.insert(f.line, f.issues[0].message.clone());
        }
    }
    reasons
}

/// The stand-in running the example function as `orders`, with `args`.
fn orders_function(args: &[&str]) -> StandIn {
    let mut all = vec![
        "--handler",
        "examples/processors/orders_handler.py:handler",
        "--function-name",
        "orders",
        "--quiet",
    ];
    all.extend_from_slice(args);
    StandIn::start("lambda_standin.py", &all)
}

#[tokio::test]
async fn a_users_function_decides_each_records_fate_through_retries_errors_and_timeouts() {
    let lambda = orders_function(&["--timeout", "1", "--throttle-first", "3"]);
    let clients = clients_with(clients().await, Some(&lambda), None).await;
    let stack = Stack::with_clients(
        &definition(r#", "maxRecordsPerCall": 4"#),
        StackOptions::default(),
        clients,
    )
    .await;
    let (csv, expected) = orders();
    let event = stack.upload("uploads/orders.csv", csv).await;
    let job = JobId::new(&stack.orchestrate(event).await[0].job_id);
    stack.run_workers(2, &job).await;

    let done = stack.job(&job).await;
    assert_eq!(done.status, JobStatus::CompletedWithErrors);
    assert_eq!(done.failed, expected.len() as u64);
    assert_eq!(done.processed, 80 - expected.len() as u64);
    // All failed in processing: a retry of the job would run them again.
    assert_eq!(done.retryable, expected.len() as u64);
    let reasons = failure_reasons(&stack, &job).await;
    let wanted: BTreeMap<u64, String> = expected
        .iter()
        .map(|(line, reason)| match *reason {
            "out of stock" => (
                *line,
                format!("processing failed after 3 retries: {reason}"),
            ),
            _ => (*line, format!("processing failed: {reason}")),
        })
        .collect();
    assert_eq!(reasons, wanted);

    let stats = lambda.stats().await;
    // The flaky call of each batch raised once; each slow call timed out
    // once; the first three calls were throttled and retried by the SDK.
    assert_eq!(stats["timeouts"], 2, "{stats}");
    assert_eq!(stats["functionErrors"], 8 + 2, "{stats}");
    assert_eq!(stats["throttled"], 3, "{stats}");
}

#[tokio::test]
async fn a_batch_is_split_into_calls_under_the_payload_limit() {
    let lambda = orders_function(&[]);
    let clients = clients_with(clients().await, Some(&lambda), None).await;
    let stack = Stack::with_clients(
        &definition(r#", "maxPayloadBytes": 1024"#),
        StackOptions::default(),
        clients,
    )
    .await;
    let mut csv = String::from("order_id,sku,quantity\n");
    for i in 0..50 {
        // About 150 bytes of JSON each: six or so to a call.
        csv.push_str(&format!("A-{i}-{},SKU-{i},1\n", "x".repeat(80)));
    }
    let event = stack.upload("uploads/orders.csv", csv).await;
    let job = JobId::new(&stack.orchestrate(event).await[0].job_id);
    stack.run_workers(1, &job).await;
    let done = stack.job(&job).await;
    assert_eq!((done.status, done.processed), (JobStatus::Completed, 50));
    let stats = lambda.stats().await;
    assert_eq!(stats["records"], 50, "{stats}");
    let largest = stats["maxPayloadBytes"].as_u64().unwrap();
    assert!(largest <= 1024 && largest > 512, "{stats}");
    assert!(stats["invocations"].as_u64().unwrap() >= 10, "{stats}");
}
