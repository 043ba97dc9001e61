//! A prepare handed over near its deadline: the prepare queue continues it
//! at once (or the sweeper, without a queue), and stale or empty
//! continuations change nothing.

use super::*;

/// The prepare-queue fixture naming `job`, as Lambda passes it.
fn prepare_event(job: &str) -> serde_json::Value {
    serde_json::from_str(&SQS_PREPARE.replace("3f2b8c0e9a7d4e51b6c2d1f0a9e8b7c6", job)).unwrap()
}

/// A context whose deadline is a second away: inside the hand-off margin.
fn near_deadline() -> Context {
    let mut near = Context::default();
    near.deadline = (now_ms() + 1_000) as u64;
    near
}

#[tokio::test]
async fn a_prepare_handed_over_near_the_deadline_continues_at_once_from_the_prepare_queue() {
    let f = fixture(CSV);
    // Both events go through the entry point Lambda calls.
    let s3: serde_json::Value = serde_json::from_str(S3_PUT).unwrap();
    let first = orchestrator::handle_any(&f.deps, LambdaEvent::new(s3, near_deadline()))
        .await
        .unwrap();
    assert_eq!(first[0]["outcome"], "handed-off");
    let continuation = f.prepare_queue.sent.lock().unwrap().clone();
    assert_eq!(continuation.len(), 1, "one continuation, sent at once");
    let job = continuation[0].job_id.clone();
    assert_eq!(first[0]["jobId"], job.as_str());
    assert!(!f.store.get_job(&job).await.unwrap().unwrap().prepared);

    let sqs = prepare_event(job.as_str());
    let response =
        orchestrator::handle_any(&f.deps, LambdaEvent::new(sqs.clone(), Context::default()))
            .await
            .unwrap();
    assert_eq!(response["batchItemFailures"], serde_json::json!([]));
    let done = f.store.get_job(&job).await.unwrap().unwrap();
    assert!(done.prepared);
    assert_eq!((done.total_records, done.total_batches), (5, 3));
    // A second delivery of the same continuation changes nothing.
    orchestrator::handle_any(&f.deps, LambdaEvent::new(sqs, Context::default()))
        .await
        .unwrap();
    assert_eq!(f.prepare_queue.sent.lock().unwrap().len(), 1);
    assert_eq!(
        f.store.get_job(&job).await.unwrap().unwrap().total_batches,
        3
    );
}

#[tokio::test]
async fn a_continued_prepare_near_its_deadline_hands_over_again() {
    let f = fixture(CSV);
    let s3: serde_json::Value = serde_json::from_str(S3_PUT).unwrap();
    orchestrator::handle_any(&f.deps, LambdaEvent::new(s3, near_deadline()))
        .await
        .unwrap();
    let job = f.prepare_queue.sent.lock().unwrap()[0].job_id.clone();

    let response = orchestrator::handle_any(
        &f.deps,
        LambdaEvent::new(prepare_event(job.as_str()), near_deadline()),
    )
    .await
    .unwrap();
    assert_eq!(response["batchItemFailures"], serde_json::json!([]));
    let sent = f.prepare_queue.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 2, "the continuation asks for another");
    assert_eq!(sent[1].job_id, job);
    assert!(!f.store.get_job(&job).await.unwrap().unwrap().prepared);
}

#[tokio::test]
async fn without_a_prepare_queue_the_sweeper_resumes_a_handed_over_prepare() {
    let mut f = fixture(CSV);
    f.deps.prepare_queue = None;
    let event: S3Event = serde_json::from_str(S3_PUT).unwrap();
    let first = orchestrator::handle(&f.deps, LambdaEvent::new(event, near_deadline()))
        .await
        .unwrap();
    assert_eq!(first[0].outcome, "handed-off");
    let job = crate::JobId::new(&first[0].job_id);

    let schedule: EventBridgeEvent = serde_json::from_str(SCHEDULE).unwrap();
    sweeper::handle(&f.deps, LambdaEvent::new(schedule, Context::default()))
        .await
        .unwrap();
    let job = f.store.get_job(&job).await.unwrap().unwrap();
    assert!(job.prepared);
    assert_eq!(job.total_batches, 3);
}

#[tokio::test]
async fn a_continuation_for_a_finished_job_changes_nothing() {
    let f = fixture(CSV);
    let event: S3Event = serde_json::from_str(S3_PUT).unwrap();
    let prepared = orchestrator::handle(&f.deps, LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    let job = crate::JobId::new(&prepared[0].job_id);
    worker::handle(
        &f.deps,
        LambdaEvent::new(work_event(job.as_str(), SQS_WORK), Context::default()),
    )
    .await
    .unwrap();
    let finished = f.store.get_job(&job).await.unwrap().unwrap();
    assert!(finished.status.is_final());
    let work_messages = f.queue.sent.lock().unwrap().len();

    let response = orchestrator::handle_any(
        &f.deps,
        LambdaEvent::new(prepare_event(job.as_str()), Context::default()),
    )
    .await
    .unwrap();
    assert_eq!(response["batchItemFailures"], serde_json::json!([]));
    let after = f.store.get_job(&job).await.unwrap().unwrap();
    assert_eq!(after.status, finished.status);
    assert_eq!(after.finished_at_ms, finished.finished_at_ms);
    assert_eq!(
        (after.total_batches, after.processed, after.failed),
        (finished.total_batches, finished.processed, finished.failed)
    );
    assert_eq!(f.queue.sent.lock().unwrap().len(), work_messages);
    assert!(f.prepare_queue.sent.lock().unwrap().is_empty());
    assert_eq!(f.events.endings().len(), 1);
}

#[tokio::test]
async fn a_continuation_that_names_no_job_fails_alone() {
    let f = fixture(CSV);
    let event: S3Event = serde_json::from_str(S3_PUT).unwrap();
    let prepared = orchestrator::handle(&f.deps, LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    let mut sqs = prepare_event(&prepared[0].job_id);
    let mut broken = sqs["Records"][0].clone();
    broken["messageId"] = "broken".into();
    broken["body"] = "not json".into();
    sqs["Records"].as_array_mut().unwrap().push(broken);
    let response = orchestrator::handle_any(&f.deps, LambdaEvent::new(sqs, Context::default()))
        .await
        .unwrap();
    assert_eq!(
        response["batchItemFailures"],
        serde_json::json!([{"itemIdentifier": "broken"}])
    );
}
