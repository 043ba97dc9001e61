//! An upload through every handler to one completion, and what the handlers
//! do with redeliveries, malformed messages, a changed deployment and a file
//! missing a required column.

use super::*;

#[tokio::test]
async fn fixtures_drive_the_whole_pipeline_to_one_completion() {
    let f = fixture(CSV);
    let event: S3Event = serde_json::from_str(S3_PUT).unwrap();
    let prepared = orchestrator::handle(&f.deps, LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    assert_eq!(prepared.len(), 1);
    let p = &prepared[0];
    assert_eq!(
        (p.outcome, p.total_records, p.total_batches),
        ("prepared", 5, 3)
    );
    let sent = f.queue.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 3, "min(batches, max workers) messages");

    let response = worker::handle(
        &f.deps,
        LambdaEvent::new(work_event(&p.job_id, SQS_WORK), Context::default()),
    )
    .await
    .unwrap();
    assert!(response.batch_item_failures.is_empty());

    let job = f
        .store
        .get_job(&crate::JobId::new(&p.job_id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, JobStatus::CompletedWithErrors);
    assert_eq!((job.total_records, job.processed, job.failed), (5, 3, 2));
    let lines: Vec<u64> = f
        .recorder
        .records
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.line)
        .collect();
    assert_eq!(lines, vec![2, 3, 5]);
    let completed = f.events.endings();
    assert_eq!(completed.len(), 1, "exactly one job-completed event");
    let lifecycle: Vec<(EventKind, String)> = f
        .events
        .all()
        .into_iter()
        .map(|e| (e.kind, e.event_id))
        .collect();
    assert_eq!(
        lifecycle,
        vec![
            (EventKind::Started, format!("{}:started", job.id)),
            (EventKind::Prepared, format!("{}:prepared", job.id)),
            (EventKind::Completed, format!("{}:completed", job.id)),
        ]
    );
    assert_eq!(completed[0].status, JobStatus::CompletedWithErrors);
    assert_eq!(
        (
            completed[0].total_records,
            completed[0].processed,
            completed[0].failed
        ),
        (Some(job.total_records), job.processed, job.failed)
    );
    assert_eq!(completed[0].report, job.report);
    assert!(f.store.pending_events().await.unwrap().is_empty());
    assert!(f
        .store
        .get_job(&job.id)
        .await
        .unwrap()
        .unwrap()
        .owed_events
        .is_empty());

    let mut failed = Vec::new();
    for batch in 0..job.total_batches {
        failed.extend(f.store.failed_records(&job.id, batch).await.unwrap());
    }
    let summary: Vec<(u64, Option<&str>)> = failed
        .iter()
        .map(|r| (r.line, r.issues[0].field.as_deref()))
        .collect();
    assert_eq!(summary, vec![(4, Some("email")), (6, Some("plan"))]);

    // The error report holds the rows as they were, and the job says where
    // it is.
    let reports = f.reports.reports.lock().unwrap().clone();
    assert_eq!(reports.len(), 1);
    assert_eq!(job.report.as_deref(), Some(reports[0].0.as_str()));
    assert_eq!(
        reports[0].1,
        "email,full name,age,plan,country,city,signup_date,score,active,line,field,reason\n\
         not-an-email,Alan Turing,41,free,GB,Wilmslow,2024-06-07,1,true,4,email,not a valid email address\n\
         barbara@example.com,Barbara Liskov,84,gold,US,Boston,2024-03-04,3,no,6,plan,\"must be one of: free, pro, team\"\n"
    );

    // A continuation for a finished job is a no-op that succeeds.
    let again = worker::handle(
        &f.deps,
        LambdaEvent::new(work_event(&p.job_id, SQS_CONTINUATION), Context::default()),
    )
    .await
    .unwrap();
    assert!(again.batch_item_failures.is_empty());
    assert_eq!(f.events.endings().len(), 1);
}

#[tokio::test]
async fn a_job_keeps_the_definition_it_was_created_with_when_the_deployment_changes() {
    let mut f = fixture(CSV);
    let event: S3Event = serde_json::from_str(S3_PUT).unwrap();
    // The first orchestrator is near its deadline: it creates the job, pins
    // the definition and hands the prepare over before any batch.
    let mut near = Context::default();
    near.deadline = (now_ms() + 1_000) as u64;
    let first = orchestrator::handle(&f.deps, LambdaEvent::new(event.clone(), near))
        .await
        .unwrap();
    assert_eq!(first[0].outcome, "handed-off");
    // A new deployment: other batch size, other field order, and a required
    // column the file does not have.
    let mut changed: serde_json::Value = serde_json::from_str(DEFINITION).unwrap();
    changed["batchSize"] = 4.into();
    changed["fields"].as_array_mut().unwrap().reverse();
    changed["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "tenant", "type": "string", "required": true}));
    f.deps.routes = Arc::new(crate::routes::Routes::single(
        Definition::from_json(&changed.to_string(), "v2").unwrap(),
    ));
    f.deps.pinned = Arc::default();

    let again = orchestrator::handle(&f.deps, LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    assert_eq!(
        (
            again[0].outcome,
            again[0].total_records,
            again[0].total_batches
        ),
        ("prepared", 5, 3),
        "the resumed prepare cuts batches of the pinned batchSize"
    );
    worker::handle(
        &f.deps,
        LambdaEvent::new(work_event(&again[0].job_id, SQS_WORK), Context::default()),
    )
    .await
    .unwrap();
    let job = f
        .store
        .get_job(&crate::JobId::new(&again[0].job_id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, JobStatus::CompletedWithErrors);
    assert_eq!((job.processed, job.failed), (3, 2));
    let records = f.recorder.records.lock().unwrap().clone();
    assert_eq!(
        records[0].get("email"),
        Some(FieldValue::String("ada@example.com"))
    );
    assert_eq!(records[0].get("tenant"), None);
}

#[tokio::test]
async fn redelivered_s3_event_finds_the_existing_job() {
    let f = fixture(CSV);
    let event: S3Event = serde_json::from_str(S3_PUT).unwrap();
    let first = orchestrator::handle(&f.deps, LambdaEvent::new(event.clone(), Context::default()))
        .await
        .unwrap();
    let second = orchestrator::handle(&f.deps, LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    assert_eq!(first[0].job_id, second[0].job_id);
    assert_eq!(second[0].outcome, "duplicate");
    assert_eq!(f.queue.sent.lock().unwrap().len(), 3, "no second fan-out");
}

#[tokio::test]
async fn malformed_message_fails_alone() {
    let f = fixture(CSV);
    let mut event = work_event("0123", SQS_WORK);
    event.records[1].body = Some("not json".into());
    let response = worker::handle(&f.deps, LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    let ids: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    // The first message names an unknown job: a store error, so it is retried too.
    assert!(ids.contains(&"2e1424d4-f796-459a-8184-9c92662be6da"));
}

#[tokio::test]
async fn missing_required_column_fails_the_job_with_the_reason() {
    let f = fixture("full name,age\nAda,36\n");
    let event: S3Event = serde_json::from_str(S3_PUT).unwrap();
    let prepared = orchestrator::handle(&f.deps, LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    assert_eq!(prepared[0].outcome, "rejected");
    let job = f
        .store
        .get_job(&crate::JobId::new(&prepared[0].job_id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    let reason = job.failure_reason.unwrap();
    assert!(reason.contains("email"), "{reason}");
    assert!(f.queue.sent.lock().unwrap().is_empty());
    assert_eq!(f.events.endings().len(), 1);
}

#[tokio::test]
async fn sweeper_fixture_deserializes_and_runs() {
    let f = fixture(CSV);
    let event: EventBridgeEvent = serde_json::from_str(SCHEDULE).unwrap();
    let report = sweeper::handle(&f.deps, LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    assert_eq!(report.active_jobs, 0);
    let _ = WorkMessage {
        job_id: crate::JobId::new("x"),
        continuation: false,
    };
}

#[tokio::test]
async fn an_object_no_route_takes_gets_a_failed_job_saying_where_uploads_go() {
    let mut f = fixture(CSV);
    let definition = f.deps.routes.primary().clone();
    let mut orders = (*definition).clone();
    orders.kind = Some("orders".into());
    f.deps.routes = Arc::new(
        crate::routes::Routes::prefixed("imports/", definition).with("orders/", ".csv", orders),
    );
    let event: S3Event = serde_json::from_str(S3_PUT).unwrap();
    let prepared = orchestrator::handle(&f.deps, LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    assert_eq!(prepared.len(), 1, "{prepared:?}");
    assert_eq!(prepared[0].outcome, "unrouted");
    let id = crate::JobId::new(&prepared[0].job_id);
    let job = f.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.kind, None);
    assert_eq!(
        job.failure_reason.as_deref(),
        Some("no route takes uploads/users 2026-11(1).csv: uploads are imported from imports/* (users), orders/*.csv (orders)")
    );
    assert!(f.queue.sent.lock().unwrap().is_empty());
    let types: Vec<_> = f.events.all().iter().map(|e| e.kind).collect();
    assert_eq!(types, [EventKind::Started, EventKind::Failed]);
    // The event delivered again finds the same job, left as it is.
    let event: S3Event = serde_json::from_str(S3_PUT).unwrap();
    let again = orchestrator::handle(&f.deps, LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    assert_eq!(again[0].job_id, prepared[0].job_id);
    assert_eq!(f.events.all().len(), 2);
    // The sweeper settles it like any ended job.
    f.deps.sweeper().sweep("sweeper", None).await.unwrap();

    // The same upload under a route's prefix is imported.
    f.deps.routes = Arc::new(crate::routes::Routes::prefixed(
        "uploads/",
        f.deps.routes.primary().clone(),
    ));
    let event: S3Event = serde_json::from_str(S3_PUT).unwrap();
    let prepared = orchestrator::handle(&f.deps, LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    assert_eq!(prepared.len(), 1);
}
