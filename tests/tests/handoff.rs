//! A prepare handed over near the orchestrator's deadline continues at once
//! through the prepare queue (real SQS on the emulator), not at the next
//! sweep.

use bulk_import::handlers::orchestrator;
use bulk_import::job::JobId;
use bulk_import::local::context;
use bulk_import::queue::SqsQueue;
use integration_tests::Stack;
use lambda_runtime::LambdaEvent;
use std::sync::Arc;
use std::time::Duration;

const DEFINITION: &str = r#"{
  "fields": [{"name": "email", "type": "email", "required": true}],
  "keyField": "email",
  "batchSize": 5
}"#;

#[tokio::test]
async fn a_handed_over_prepare_is_continued_from_the_prepare_queue() {
    let mut stack = Stack::new(DEFINITION).await;
    let queue_url = stack
        .clients
        .sqs
        .create_queue()
        .queue_name(format!("{}-prepare", stack.resources.queue))
        .send()
        .await
        .expect("prepare queue")
        .queue_url
        .expect("url");
    stack.deps.prepare_queue = Some(Arc::new(SqsQueue::new(
        stack.clients.sqs.clone(),
        &queue_url,
    )));
    let mut csv = String::from("email\n");
    for i in 0..23 {
        csv.push_str(&format!("user{i}@example.com\n"));
    }
    let event = stack.upload("uploads/handoff.csv", csv).await;

    // An invocation with a second left: well inside the hand-off margin.
    let first = orchestrator::handle(
        &stack.deps,
        LambdaEvent::new(event, context(Duration::from_secs(1))),
    )
    .await
    .expect("orchestrator");
    assert_eq!(first[0].outcome, "handed-off");
    let job = JobId::new(&first[0].job_id);

    let received = stack
        .clients
        .sqs
        .receive_message()
        .queue_url(&queue_url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .send()
        .await
        .expect("receive")
        .messages
        .unwrap_or_default();
    assert_eq!(received.len(), 1, "one continuation on the prepare queue");
    let message = &received[0];
    let sqs_event = serde_json::json!({
        "Records": [{
            "messageId": message.message_id(),
            "receiptHandle": message.receipt_handle(),
            "body": message.body(),
            "attributes": {},
            "messageAttributes": {},
            "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:prepare",
            "awsRegion": "us-east-1"
        }]
    });
    let response = orchestrator::handle_any(
        &stack.deps,
        LambdaEvent::new(sqs_event, context(Duration::from_secs(900))),
    )
    .await
    .expect("continuation");
    assert_eq!(response["batchItemFailures"], serde_json::json!([]));

    stack.run_workers(2, &job).await;
    let done = stack.job(&job).await;
    assert_eq!(done.status, bulk_import::JobStatus::Completed);
    assert_eq!(
        (done.total_records, done.total_batches, done.processed),
        (23, 5, 23)
    );
}
