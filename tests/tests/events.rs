//! Job events on EventBridge, end to end on the emulator: a rule on the bus
//! forwards them to an SQS queue, as a subscriber would set up.

use bulk_import::events::EventBridgeEvents;
use bulk_import::job::{EventKind, JobId};
use bulk_import::store::JobControl;
use integration_tests::{EventTap, Stack};
use serde_json::Value;
use std::sync::Arc;

const DEFINITION: &str = r#"{
  "fields": [
    {"name": "email", "type": "email", "required": true},
    {"name": "name", "type": "string", "required": true}
  ],
  "keyField": "email",
  "batchSize": 20
}"#;

/// 100 rows, of which 2 have a bad email.
fn users() -> String {
    let mut csv = String::from("email,name\n");
    for i in 0..100 {
        let email = if i % 50 == 7 {
            format!("user{i}-at-example.com")
        } else {
            format!("user{i}@example.com")
        };
        csv.push_str(&format!("{email},User {i}\n"));
    }
    csv
}

fn bus_events(stack: &Stack, bus: &str) -> Arc<EventBridgeEvents> {
    Arc::new(EventBridgeEvents {
        client: stack.clients.eventbridge.clone(),
        bus: Some(bus.to_owned()),
    })
}

/// Runs a job for `key` to its end; returns its id.
async fn import(stack: &Stack, key: &str) -> JobId {
    let event = stack.upload(key, users()).await;
    let prepared = stack.orchestrate(event).await;
    let job = JobId::new(&prepared[0].job_id);
    stack.run_workers(2, &job).await;
    job
}

/// The events' detail types, in lifecycle order (a queue need not keep
/// the order they were sent in).
fn types(events: &[Value]) -> Vec<String> {
    let mut types: Vec<(EventKind, String)> = events
        .iter()
        .map(|e| {
            let t = e["detail-type"].as_str().expect("detail-type").to_owned();
            let kind = t.trim_start_matches("job.").parse().expect("known type");
            (kind, t)
        })
        .collect();
    types.sort();
    types.into_iter().map(|(_, t)| t).collect()
}

fn detail<'a>(events: &'a [Value], kind: &str) -> &'a Value {
    &events
        .iter()
        .find(|e| e["detail-type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} event in {events:?}"))["detail"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_announces_its_start_its_prepare_and_its_end_on_the_bus() {
    let mut stack = Stack::new(DEFINITION).await;
    let tap = EventTap::new(&stack.clients, &stack.resources.queue).await;
    stack.deps.events = bus_events(&stack, &tap.bus);

    let id = import(&stack, "uploads/users.csv").await;
    let job = stack.job(&id).await;
    let events = tap.drain(&stack.clients.sqs).await;

    assert_eq!(
        types(&events),
        ["job.started", "job.prepared", "job.completed"]
    );
    for e in &events {
        assert_eq!(e["source"], "bulk-import");
    }
    let started = detail(&events, "job.started");
    assert_eq!(started["eventId"], format!("{id}:started"));
    assert_eq!(started["bucket"], stack.resources.bucket.as_str());
    assert_eq!(started["key"], "uploads/users.csv");
    assert!(started["totalRecords"].is_null(), "{started}");

    let prepared = detail(&events, "job.prepared");
    assert_eq!(prepared["eventId"], format!("{id}:prepared"));
    assert_eq!(prepared["totalRecords"], 100);

    let completed = detail(&events, "job.completed");
    assert_eq!(completed["eventId"], format!("{id}:completed"));
    assert_eq!(completed["jobId"], id.as_str());
    assert_eq!(completed["status"], "COMPLETED_WITH_ERRORS");
    assert_eq!(
        (
            &completed["totalRecords"],
            &completed["processed"],
            &completed["failed"]
        ),
        (&Value::from(100), &Value::from(98), &Value::from(2))
    );
    assert_eq!(
        completed["report"],
        job.report.clone().expect("report").as_str()
    );
    assert_eq!(completed["retries"], 0);

    // Everything delivered is acknowledged: nothing is owed or listed.
    assert!(job.owed_events.is_empty(), "{:?}", job.owed_events);
    assert!(stack.watcher.pending_events().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_that_could_not_be_sent_are_sent_by_the_next_sweep_once() {
    let mut stack = Stack::new(DEFINITION).await;
    let tap = EventTap::new(&stack.clients, &stack.resources.queue).await;
    // A bus that does not exist: every PutEvents fails.
    stack.deps.events = bus_events(&stack, &format!("{}-missing", tap.bus));

    let id = import(&stack, "uploads/outage.csv").await;
    let job = stack.job(&id).await;
    assert_eq!(
        job.owed_events,
        [
            EventKind::Started,
            EventKind::Prepared,
            EventKind::Completed
        ]
    );
    assert_eq!(
        stack.watcher.pending_events().await.unwrap(),
        vec![id.clone()]
    );
    assert!(tap.drain(&stack.clients.sqs).await.is_empty());

    // The outage ends; the sweeper delivers what is owed, and only once.
    stack.deps.events = bus_events(&stack, &tap.bus);
    let first = stack
        .deps
        .sweeper()
        .sweep("sweeper", None)
        .await
        .expect("sweep");
    assert_eq!(first.events_sent, 3);
    let second = stack
        .deps
        .sweeper()
        .sweep("sweeper", None)
        .await
        .expect("sweep");
    assert_eq!(second.events_sent, 0);

    let events = tap.drain(&stack.clients.sqs).await;
    assert_eq!(
        types(&events),
        ["job.started", "job.prepared", "job.completed"]
    );
    assert_eq!(
        detail(&events, "job.completed")["eventId"],
        format!("{id}:completed")
    );
    assert!(stack.job(&id).await.owed_events.is_empty());
    assert!(stack.watcher.pending_events().await.unwrap().is_empty());
}
