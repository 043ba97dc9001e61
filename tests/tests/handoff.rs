//! A prepare handed over near the orchestrator's deadline continues at once
//! through the prepare queue (real SQS on the emulator, consumed the way the
//! orchestrator's event source mapping consumes it), not at the next sweep.

use bulk_import::handlers::orchestrator;
use bulk_import::job::JobId;
use bulk_import::local::context;
use integration_tests::Stack;
use lambda_runtime::LambdaEvent;
use std::time::Duration;

const DEFINITION: &str = r#"{
  "fields": [{"name": "email", "type": "email", "required": true}],
  "keyField": "email",
  "batchSize": 5
}"#;

/// Uploads 23 rows to `key` and runs the orchestrator with a second left,
/// well inside the hand-off margin: it hands the prepare over.
async fn handed_off(stack: &Stack, key: &str) -> JobId {
    let mut csv = String::from("email\n");
    for i in 0..23 {
        csv.push_str(&format!("user{i}@example.com\n"));
    }
    let event = stack.upload(key, csv).await;
    let first = orchestrator::handle(
        &stack.deps,
        LambdaEvent::new(event, context(Duration::from_secs(1))),
    )
    .await
    .expect("orchestrator");
    assert_eq!(first[0].outcome, "handed-off");
    JobId::new(&first[0].job_id)
}

#[tokio::test]
async fn a_handed_over_prepare_is_continued_from_the_prepare_queue() {
    let stack = Stack::new(DEFINITION).await;
    let job = handed_off(&stack, "uploads/handoff.csv").await;
    assert!(!stack.job(&job).await.prepared);
    assert_eq!(
        stack.queue_depth(&stack.prepare_queue_url).await,
        1,
        "one continuation on the prepare queue"
    );

    let continued = stack.continue_prepares(&job).await;
    assert_eq!(
        (continued.messages, continued.failed_messages),
        (1, 0),
        "the orchestrator received the continuation and handled it"
    );
    let prepared = stack.job(&job).await;
    assert!(prepared.prepared);
    assert_eq!((prepared.total_records, prepared.total_batches), (23, 5));

    stack.run_workers(2, &job).await;
    let done = stack.job(&job).await;
    assert_eq!(done.status, bulk_import::JobStatus::Completed);
    assert_eq!(done.processed, 23);
}

#[tokio::test]
async fn a_prepare_aborted_midway_resumes_at_its_checkpoint_on_retry() {
    let stack = Stack::new(DEFINITION).await;
    let job = handed_off(&stack, "uploads/stopped.csv").await;

    let definition = stack.deps.routes.primary().clone();
    assert!(stack
        .deps
        .finalizer(&definition)
        .abort(&job, "wrong time".into())
        .await
        .expect("abort"));
    let at_abort = stack.job(&job).await;
    assert!(at_abort.batches_ready < 5, "the abort came midway");
    // The continuation finds the job ended and reads nothing more.
    stack.continue_prepares(&job).await;
    let aborted = stack.job(&job).await;
    assert_eq!(aborted.status, bulk_import::JobStatus::Aborted);
    assert!(!aborted.prepared);
    assert_eq!(
        (aborted.batches_ready, &aborted.prepare_checkpoint),
        (at_abort.batches_ready, &at_abort.prepare_checkpoint),
        "nothing more was published after the abort"
    );

    let started = stack.deps.steering().retry(&job).await.expect("retry");
    assert!(started.resumes_prepare);
    let continued = stack.continue_prepares(&job).await;
    assert_eq!(continued.failed_messages, 0);
    let prepared = stack.job(&job).await;
    assert!(prepared.prepared);
    assert_eq!((prepared.total_records, prepared.total_batches), (23, 5));
    stack.run_workers(2, &job).await;
    let done = stack.job(&job).await;
    assert_eq!(
        (done.status, done.processed, done.failed, done.retries),
        (bulk_import::JobStatus::Completed, 23, 0, 1)
    );
    assert_eq!(stack.target_items().await.len(), 23);
}
