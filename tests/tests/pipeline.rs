//! The pipeline end to end on the emulator: S3 upload -> orchestrator ->
//! DynamoDB -> SQS -> concurrent workers -> exactly-once finalization.

use aws_sdk_dynamodb::types::AttributeValue;
use bulk_import::job::JobId;
use bulk_import::locate;
use bulk_import::objects::S3Objects;
use bulk_import::store::{BatchState, JobControl};
use bulk_import::JobStatus;
use integration_tests::{Item, Stack};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

const DEFINITION: &str = r#"{
  "fields": [
    {"name": "email", "type": "email", "required": true},
    {"name": "name", "type": "string", "required": true, "trim": true, "aliases": ["full name"]},
    {"name": "age", "type": "integer"},
    {"name": "plan", "type": "enum", "values": ["free", "pro"], "default": "free"}
  ],
  "keyField": "email",
  "batchSize": 500,
  "delimiter": ",",
  "hasHeader": true,
  "continueOnError": true,
  "maxRetries": 3
}"#;

/// 10k rows; every 97th is invalid, cycling through three kinds of error.
/// Returns the CSV, the valid emails, and the expected failures by line.
fn users(rows: u64) -> (String, HashSet<String>, BTreeMap<u64, &'static str>) {
    let mut csv = String::from("email,full name,age,plan\n");
    let mut valid = HashSet::new();
    let mut invalid = BTreeMap::new();
    for i in 0..rows {
        let line = i + 2;
        let email = format!("user{i}@example.com");
        let (email_cell, age, plan) = if i % 97 == 96 {
            match (i / 97) % 3 {
                0 => {
                    invalid.insert(line, "email");
                    (format!("user{i}-at-example.com"), "30", "pro")
                }
                1 => {
                    invalid.insert(line, "age");
                    (email.clone(), "thirty", "pro")
                }
                _ => {
                    invalid.insert(line, "plan");
                    (email.clone(), "30", "gold")
                }
            }
        } else {
            valid.insert(email.clone());
            (email.clone(), "30", if i % 2 == 0 { "pro" } else { "" })
        };
        csv.push_str(&format!("{email_cell}, User {i} ,{age},{plan}\n"));
    }
    (csv, valid, invalid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_rows_with_four_workers_import_every_valid_record_exactly_once() {
    let stack = Stack::new(DEFINITION).await;
    let (csv, valid, invalid) = users(10_000);
    let event = stack.upload("uploads/users 10k.csv", csv).await;
    let prepared = stack.orchestrate(event).await;
    let job_id = JobId::new(&prepared[0].job_id);
    assert_eq!(
        (prepared[0].total_records, prepared[0].total_batches),
        (10_000, 20)
    );

    stack.run_workers(4, &job_id).await;

    let job = stack.job(&job_id).await;
    assert_eq!(job.status, JobStatus::CompletedWithErrors);
    assert_eq!(job.total_records, 10_000);
    assert_eq!(job.processed, valid.len() as u64);
    assert_eq!(job.failed, invalid.len() as u64);
    assert_eq!(job.batches_done, 20);
    assert_eq!(stack.events.endings().len(), 1, "completed exactly once");

    // Every valid record is in the target table, exactly once (the table is
    // keyed by email, so count and key set together prove it).
    let items = stack.target_items().await;
    let keys: HashSet<String> = items
        .iter()
        .map(|i| i["email"].as_s().expect("email is a string").clone())
        .collect();
    assert_eq!(items.len(), valid.len());
    assert_eq!(keys, valid);
    let sample = items
        .iter()
        .find(|i| i["email"].as_s().unwrap() == "user1@example.com")
        .unwrap();
    assert_eq!(sample["name"].as_s().unwrap(), "User 1", "trimmed");
    assert_eq!(sample["plan"].as_s().unwrap(), "free", "default applied");
    assert_eq!(sample["age"].as_n().unwrap(), "30");

    // Invalid rows are reported with their line numbers and reasons.
    let mut reported = BTreeMap::new();
    for batch in 0..job.total_batches {
        let info = stack
            .watcher
            .batch_info(&job_id, batch)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(info.state, BatchState::Done, "batch {batch}");
        for failure in stack.watcher.failed_records(&job_id, batch).await.unwrap() {
            let issue = &failure.issues[0];
            assert!(!issue.message.is_empty());
            reported.insert(failure.line, issue.field.clone().unwrap());
        }
    }
    let expected: BTreeMap<u64, String> =
        invalid.iter().map(|(l, f)| (*l, f.to_string())).collect();
    assert_eq!(reported, expected);

    // Every item the job wrote expires with it: job, definition, cursors,
    // counters, batches, records and failures alike.
    let items = stack.scan(&stack.resources.state_table).await;
    let kinds: std::collections::BTreeSet<String> = items
        .iter()
        .filter_map(|i| i.get("sk")?.as_s().ok())
        .map(|sk| sk.split('#').next().unwrap_or(sk).to_owned())
        .collect();
    for kind in ["JOB", "DEFINITION", "CURSOR", "COUNTERS", "BATCH", "C"] {
        assert!(
            kinds.contains(kind),
            "the job wrote {kind} items: {kinds:?}"
        );
    }
    let lasting: Vec<String> = items
        .iter()
        .filter(|i| !i.contains_key("expiresAt"))
        .map(|i| format!("{:?} {:?}", i.get("pk"), i.get("sk")))
        .collect();
    assert!(lasting.is_empty(), "items that never expire: {lasting:?}");

    // The error report is in S3: each failed row as it was, in input order.
    let location = format!("s3://{}/reports/{}.csv", stack.resources.bucket, job_id);
    assert_eq!(job.report.as_deref(), Some(location.as_str()));
    let object = stack
        .clients
        .s3
        .get_object()
        .bucket(&stack.resources.bucket)
        .key(format!("reports/{job_id}.csv"))
        .send()
        .await
        .expect("report object");
    let body = object.body.collect().await.unwrap().into_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("email,full name,age,plan,line,field,reason")
    );
    let report_lines: Vec<u64> = lines
        .map(|l| l.split(',').nth(4).unwrap().parse().unwrap())
        .collect();
    assert_eq!(report_lines, invalid.keys().copied().collect::<Vec<_>>());

    // The export holds the imported records, in input order.
    let mut out = Vec::new();
    let definition = bulk_import::Definition::from_json(DEFINITION, "test").unwrap();
    let written = bulk_import::dump::dump_ndjson(&stack.watcher, &definition, &job, &mut out)
        .await
        .unwrap();
    assert_eq!(written.written, valid.len() as u64);
    assert_eq!((written.unprocessed_batches, written.file_read), (0, true));
    let exported: Vec<serde_json::Value> = out
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let order: Vec<u64> = exported
        .iter()
        .map(|r| {
            r["email"]
                .as_str()
                .unwrap()
                .trim_start_matches("user")
                .trim_end_matches("@example.com")
                .parse()
                .unwrap()
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "input order");
    assert_eq!(
        exported[0],
        serde_json::json!({"email": "user0@example.com", "name": "User 0", "age": 30, "plan": "pro"})
    );

    // The cost report is on the job.
    assert!(job.cost.requests > 0);
    assert!(job.cost.write_units > 0.0);
}

#[tokio::test]
async fn the_same_s3_event_delivered_twice_gives_one_job() {
    let stack = Stack::new(DEFINITION).await;
    let (csv, _, _) = users(1_200);
    let event = stack.upload("uploads/twice.csv", csv).await;
    let (first, second) = tokio::join!(
        stack.orchestrate(event.clone()),
        stack.orchestrate(event.clone())
    );
    let third = stack.orchestrate(event).await;
    assert_eq!(first[0].job_id, second[0].job_id);
    assert_eq!(first[0].job_id, third[0].job_id);
    let outcomes: HashSet<&str> = [first[0].outcome, second[0].outcome].into();
    assert!(outcomes.contains("prepared"), "{outcomes:?}");
    assert_eq!(third[0].outcome, "duplicate");
    assert_eq!(stack.jobs_in_state_table().await, 1);

    let job_id = JobId::new(&first[0].job_id);
    stack.run_workers(2, &job_id).await;
    let job = stack.job(&job_id).await;
    assert_eq!(job.total_records, 1_200);
    assert_eq!(job.processed + job.failed, 1_200);
    assert_eq!(stack.events.endings().len(), 1);
}

#[tokio::test]
async fn a_missing_required_column_fails_the_job_with_that_reason() {
    let stack = Stack::new(DEFINITION).await;
    let event = stack
        .upload("uploads/no-email.csv", "full name,age\nAda,36\n")
        .await;
    let prepared = stack.orchestrate(event).await;
    assert_eq!(prepared[0].outcome, "rejected");
    let job = stack.job(&JobId::new(&prepared[0].job_id)).await;
    assert_eq!(job.status, JobStatus::Failed);
    let reason = job.failure_reason.unwrap();
    assert!(
        reason.contains("missing required column") && reason.contains("email"),
        "{reason}"
    );
    assert!(
        reason.contains("uploads/no-email.csv"),
        "names the file: {reason}"
    );
}

#[tokio::test]
async fn write_units_per_record_stay_within_budget() {
    let stack = Stack::new(DEFINITION).await;
    let (csv, _, _) = users(2_000);
    let bytes = csv.len() as f64;
    let event = stack.upload("uploads/cost.csv", csv).await;
    let prepared = stack.orchestrate(event).await;
    let job_id = JobId::new(&prepared[0].job_id);
    stack.run_workers(2, &job_id).await;
    let job = stack.job(&job_id).await;
    let per_record = job.cost.write_units / job.total_records as f64;
    let per_batch_fixed = 20.0;
    let budget =
        1.2 * (bytes / 2_000.0 / 1024.0) * 2_000.0 + per_batch_fixed * job.total_batches as f64;
    assert!(
        job.cost.write_units <= budget,
        "{} write units > budget {budget}",
        job.cost.write_units
    );
    assert!(per_record < 0.3, "{per_record} write units per record");
    let _ = HashMap::<(), ()>::new();
}

/// The job's items left in the state table (its partitions `J#<jobId>…`).
async fn items_of(stack: &Stack, job: &JobId) -> Vec<Item> {
    let pk = bulk_import::store::dynamodb::items::job_pk(job);
    stack
        .scan(&stack.resources.state_table)
        .await
        .into_iter()
        .filter(|i| {
            i["pk"]
                .as_s()
                .is_ok_and(|p| p == &pk || p.starts_with(&format!("{pk}#")))
        })
        .collect()
}

/// Last-Modified of the object, from a HEAD, in seconds.
async fn last_modified(stack: &Stack, key: &str) -> i64 {
    stack
        .clients
        .s3
        .head_object()
        .bucket(&stack.resources.bucket)
        .key(key)
        .send()
        .await
        .expect("head object")
        .last_modified()
        .expect("Last-Modified")
        .secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_file_uploaded_again_after_its_job_expired_is_a_new_job_with_exact_counts() {
    // The stack's bucket is unversioned: its uploads have no version id.
    let stack = Stack::new(DEFINITION).await;
    let key = "uploads/again.csv";
    let (csv, valid, invalid) = users(1_200);
    let event = stack.upload(key, csv.clone()).await;
    let uploaded_object = &event.records[0].s3.object;
    assert!(
        uploaded_object
            .version_id
            .as_deref()
            .unwrap_or_default()
            .is_empty(),
        "an unversioned bucket: the event names no version"
    );
    let etag = uploaded_object.e_tag.clone();
    let first = stack.orchestrate(event.clone()).await;
    let first_job = JobId::new(&first[0].job_id);
    stack.run_workers(2, &first_job).await;
    let job = stack.job(&first_job).await;
    assert_eq!(job.status, JobStatus::CompletedWithErrors);
    assert_eq!((job.processed, job.batches_done), (valid.len() as u64, 3));
    let objects = S3Objects::new(stack.clients.s3.clone());
    let object = format!("s3://{}/{key}", stack.resources.bucket);
    assert_eq!(locate::job_id(&objects, &object).await.unwrap(), first_job);

    // The event delivered again finds its job.
    let redelivered = stack.orchestrate(event).await;
    assert_eq!(redelivered[0].job_id, first_job.as_str());
    assert_eq!(redelivered[0].outcome, "duplicate");

    // The retention period passes; DynamoDB's TTL has deleted the job item
    // and nothing else yet: counter shards, cursors, batches, records and
    // the pinned definition are left.
    stack
        .clients
        .dynamodb
        .delete_item()
        .table_name(&stack.resources.state_table)
        .key(
            "pk",
            AttributeValue::S(bulk_import::store::dynamodb::items::job_pk(&first_job)),
        )
        .key("sk", AttributeValue::S("JOB".into()))
        .send()
        .await
        .expect("delete the job item");
    let left: BTreeSet<String> = items_of(&stack, &first_job)
        .await
        .iter()
        .filter_map(|i| i["sk"].as_s().ok())
        .map(|sk| sk.split('#').next().unwrap_or(sk).to_owned())
        .collect();
    for kind in ["DEFINITION", "CURSOR", "COUNTERS", "BATCH"] {
        assert!(left.contains(kind), "{kind} items are left: {left:?}");
    }
    assert!(!left.contains("JOB"));
    // The target is emptied, so that what the next job writes shows.
    for item in stack.target_items().await {
        stack
            .clients
            .dynamodb
            .delete_item()
            .table_name(&stack.resources.target_table)
            .key("email", item["email"].clone())
            .send()
            .await
            .expect("delete target item");
    }

    // The same bytes uploaded again: the same ETag, and as soon as S3's
    // clock (to the second) has moved, another Last-Modified. Each round is
    // a real upload; the first to land in a later second is the new one.
    let uploaded = last_modified(&stack, key).await;
    let started = std::time::Instant::now();
    let event = loop {
        let event = stack.upload(key, csv.clone()).await;
        if last_modified(&stack, key).await != uploaded {
            break event;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "Last-Modified never moved"
        );
    };
    assert_eq!(event.records[0].s3.object.e_tag, etag, "the same bytes");
    let second = stack.orchestrate(event).await;
    let second_job = JobId::new(&second[0].job_id);
    assert_ne!(second_job, first_job, "a new upload is a new job");
    assert_eq!(second[0].outcome, "prepared");
    assert_eq!(locate::job_id(&objects, &object).await.unwrap(), second_job);
    stack.run_workers(2, &second_job).await;

    let job = stack.job(&second_job).await;
    assert_eq!(job.status, JobStatus::CompletedWithErrors);
    assert_eq!(job.total_records, 1_200);
    assert_eq!(job.processed, valid.len() as u64);
    assert_eq!(job.failed, invalid.len() as u64);
    assert_eq!((job.total_batches, job.batches_done), (3, 3));
    for batch in 0..3 {
        let info = stack
            .watcher
            .batch_info(&second_job, batch)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(info.state, BatchState::Done, "batch {batch}");
    }
    // Every valid record went through the processor again.
    let keys: HashSet<String> = stack
        .target_items()
        .await
        .iter()
        .map(|i| i["email"].as_s().expect("email").clone())
        .collect();
    assert_eq!(keys.len(), valid.len(), "records written by the new job");
    assert_eq!(keys, valid);
    assert_eq!(stack.events.endings().len(), 2);
}

#[tokio::test]
async fn an_upload_replaced_before_its_event_is_handled_fails_its_job_as_replaced() {
    let stack = Stack::new(DEFINITION).await;
    let key = "uploads/replaced.csv";
    let replaced = stack.upload(key, users(10).0).await;
    let current = stack.upload(key, users(20).0).await;
    let prepared = stack.orchestrate(replaced.clone()).await;
    // Its upload can no longer be told by its time: its ETag alone names it.
    let etag = replaced.records[0].s3.object.e_tag.clone().expect("ETag");
    let version = format!("{}{etag}", bulk_import::objects::ETAG_PREFIX);
    let expected = JobId::for_object(&stack.resources.bucket, key, &version);
    assert_eq!(prepared[0].job_id, expected.as_str());
    assert_eq!(prepared[0].outcome, "rejected");
    let job = stack.job(&expected).await;
    assert_eq!(job.status, JobStatus::Failed);
    let reason = job.failure_reason.unwrap_or_default();
    assert!(
        reason.contains("deleted or replaced since the upload event"),
        "{reason}"
    );
    let again = stack.orchestrate(replaced).await;
    assert_eq!(
        (again[0].job_id.as_str(), again[0].outcome),
        (expected.as_str(), "duplicate")
    );

    // The upload that replaced it is a job of its own.
    let prepared = stack.orchestrate(current).await;
    assert_ne!(prepared[0].job_id, expected.as_str());
    assert_eq!(
        (prepared[0].outcome, prepared[0].total_records),
        ("prepared", 20)
    );
}
