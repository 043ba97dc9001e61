//! One deployment, several kinds of work: a routes file sends uploads of
//! users to the DynamoDB upsert, of follows to the relationships processor
//! (both ends checked against an accounts table) and of clicks to an `s3`
//! transform; the three jobs run at once on the same workers, and an upload
//! under no route gets a failed job that says where uploads go.

use aws_sdk_dynamodb::types::AttributeValue;
use bulk_import::job::{JobId, JobStatus};
use bulk_import::processor::s3::Manifest;
use bulk_import::store::JobControl;
use integration_tests::{clients, unique, Item, Stack, StackOptions};
use std::collections::{BTreeMap, BTreeSet};

async fn scan(stack: &Stack, name: &str) -> Vec<Item> {
    let mut items = Vec::new();
    let mut pages = stack
        .clients
        .dynamodb
        .scan()
        .table_name(name)
        .into_paginator()
        .items()
        .send();
    while let Some(item) = pages.next().await {
        items.push(item.expect("scan"));
    }
    items
}

fn s(item: &Item, name: &str) -> String {
    match item.get(name) {
        Some(AttributeValue::S(v)) => v.clone(),
        Some(AttributeValue::N(v)) => v.clone(),
        other => panic!("{name}: {other:?}"),
    }
}

async fn object(stack: &Stack, bucket: &str, key: &str) -> Vec<u8> {
    stack
        .clients
        .s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"))
        .body
        .collect()
        .await
        .expect("read")
        .into_bytes()
        .to_vec()
}

#[tokio::test]
async fn three_kinds_of_work_run_at_once_on_one_deployment_and_an_unrouted_upload_is_told_why() {
    let names = unique("routes");
    let (users_table, graph_table, accounts_table, lake) = (
        format!("{names}-users"),
        format!("{names}-graph"),
        format!("{names}-accounts"),
        format!("{names}-lake"),
    );
    let users = format!(
        r#"{{"fields": [
            {{"name": "email", "type": "email", "required": true}},
            {{"name": "name", "type": "string", "required": true}}],
          "keyField": "email", "batchSize": 20,
          "processor": {{"type": "dynamodb", "table": "{users_table}"}}}}"#
    );
    let follows = format!(
        r#"{{"kind": "follows",
          "fields": [
            {{"name": "from", "type": "string", "required": true}},
            {{"name": "to", "type": "string", "required": true}},
            {{"name": "since", "type": "date"}}],
          "batchSize": 15,
          "processor": {{"type": "relationships", "table": "{graph_table}",
            "from": "from", "to": "to", "relation": "follows", "reverse": true,
            "mustExist": {{"table": "{accounts_table}", "key": "handle"}}}}}}"#
    );
    let clicks = format!(
        r#"{{"fields": [
            {{"name": "user", "type": "string", "required": true}},
            {{"name": "page", "type": "string", "required": true}},
            {{"name": "ms", "type": "integer"}}],
          "batchSize": 25,
          "processor": {{"type": "s3", "bucket": "{lake}", "prefix": "clean/clicks/"}}}}"#
    );
    let routes = r#"{"routes": [
        {"prefix": "uploads/users/", "definition": "definitions/users.json"},
        {"prefix": "uploads/follows/", "suffix": ".csv", "definition": "definitions/follows.json"},
        {"prefix": "uploads/clicks/", "kind": "clicks", "definition": "definitions/clicks.json"}
    ]}"#;
    let stack = Stack::with_routes(
        &[
            ("routes.json", routes),
            ("definitions/users.json", &users),
            ("definitions/follows.json", &follows),
            ("definitions/clicks.json", &clicks),
        ],
        StackOptions::default(),
        clients().await,
    )
    .await;
    stack.create_table(&users_table, &["email"]).await;
    stack.create_table(&graph_table, &["pk", "sk"]).await;
    stack.create_table(&accounts_table, &["handle"]).await;
    stack
        .clients
        .s3
        .create_bucket()
        .bucket(&lake)
        .send()
        .await
        .expect("create lake bucket");
    // The things follows may join: @u0 .. @u29.
    for i in 0..30 {
        stack
            .clients
            .dynamodb
            .put_item()
            .table_name(&accounts_table)
            .item("handle", AttributeValue::S(format!("@u{i}")))
            .send()
            .await
            .expect("seed accounts");
    }

    // Users: 100 rows, one with a bad email.
    let mut users_csv = String::from("email,name\n");
    for i in 0..100 {
        match i {
            37 => users_csv.push_str("not-an-email,Broken\n"),
            _ => users_csv.push_str(&format!("user{i}@example.com,User {i}\n")),
        }
    }
    // Follows: 60 edges; every seventh names a handle no account has.
    let mut follows_csv = String::from("from,to,since\n");
    let mut missing = BTreeMap::new();
    let mut edges = BTreeSet::new();
    for i in 0..60u64 {
        let from = format!("@u{}", i % 30);
        let to = if i % 7 == 3 {
            missing.insert(i + 2, format!("@ghost{i}"));
            format!("@ghost{i}")
        } else {
            format!("@u{}", (i * 7 + 1) % 30)
        };
        if !to.starts_with("@ghost") {
            edges.insert((from.clone(), to.clone()));
        }
        follows_csv.push_str(&format!("{from},{to},2026-0{}-1{}\n", 1 + i % 9, i % 10));
    }
    // Clicks: 120 rows.
    let mut clicks_csv = String::from("user,page,ms\n");
    let mut clicks_rows = Vec::new();
    for i in 0..120 {
        let (user, page, ms) = (format!("u{}", i % 13), format!("/p/{i}"), i * 3);
        clicks_csv.push_str(&format!("{user},{page},{ms}\n"));
        clicks_rows.push(serde_json::json!({"user": user, "page": page, "ms": ms}));
    }

    let mut jobs = Vec::new();
    for (key, body) in [
        ("uploads/users/2026-12.csv", users_csv),
        ("uploads/follows/graph.csv", follows_csv),
        ("uploads/clicks/day-1.csv", clicks_csv),
        ("uploads/misc/notes.csv", "a,b\n1,2\n".to_owned()),
    ] {
        let event = stack.upload(key, body).await;
        let prepared = stack.orchestrate(event).await;
        jobs.push(JobId::new(&prepared[0].job_id));
    }
    let [users_job, follows_job, clicks_job, unrouted_job] = <[JobId; 4]>::try_from(jobs).unwrap();
    // The three imports share the deployment's workers.
    stack
        .run_workers_for(
            4,
            &[users_job.clone(), follows_job.clone(), clicks_job.clone()],
        )
        .await;

    // Each job recorded its kind, and is listed by it.
    for (job, kind) in [
        (&users_job, "users"),
        (&follows_job, "follows"),
        (&clicks_job, "clicks"),
    ] {
        assert_eq!(stack.job(job).await.kind.as_deref(), Some(kind));
        let listed = stack.watcher.list_jobs(None, Some(kind), 10).await.unwrap();
        assert_eq!(listed, vec![job.clone()], "{kind}");
    }

    // Users: every valid row upserted, the bad one failed.
    let job = stack.job(&users_job).await;
    assert_eq!(
        (job.status, job.processed, job.failed),
        (JobStatus::CompletedWithErrors, 99, 1)
    );
    let items = scan(&stack, &users_table).await;
    assert_eq!(items.len(), 99);
    assert!(items
        .iter()
        .any(|i| s(i, "email") == "user5@example.com" && s(i, "name") == "User 5"));

    // Follows: an edge under each end; an edge with an end no account has
    // failed, naming it.
    let job = stack.job(&follows_job).await;
    assert_eq!(job.status, JobStatus::CompletedWithErrors);
    assert_eq!(
        (job.processed, job.failed),
        (60 - missing.len() as u64, missing.len() as u64)
    );
    let mut failures = BTreeMap::new();
    for batch in 0..job.total_batches {
        for f in stack
            .watcher
            .failed_records(&follows_job, batch)
            .await
            .unwrap()
        {
            failures.insert(f.line, f.issues[0].message.clone());
        }
    }
    let expected: BTreeMap<u64, String> = missing
        .iter()
        .map(|(line, ghost)| {
            (*line, format!("processing failed: the edge's destination {ghost:?} is not in {accounts_table}"))
        })
        .collect();
    assert_eq!(failures, expected);
    let graph = scan(&stack, &graph_table).await;
    let stored: BTreeSet<(String, String)> =
        graph.iter().map(|i| (s(i, "pk"), s(i, "sk"))).collect();
    let mut wanted = BTreeSet::new();
    for (from, to) in &edges {
        wanted.insert((from.clone(), format!("follows#{to}")));
        wanted.insert((to.clone(), format!("~follows#{from}")));
    }
    assert_eq!(stored, wanted);
    assert!(graph.iter().all(|i| i.contains_key("since")));

    // Clicks: one NDJSON part per batch, listed by the manifest, the rows
    // in file order.
    let job = stack.job(&clicks_job).await;
    assert_eq!(
        (job.status, job.processed, job.failed),
        (JobStatus::Completed, 120, 0)
    );
    let prefix = format!("clean/clicks/{clicks_job}/");
    let manifest: Manifest =
        serde_json::from_slice(&object(&stack, &lake, &format!("{prefix}manifest.json")).await)
            .unwrap();
    assert_eq!(manifest.records, 120);
    assert_eq!(manifest.kind.as_deref(), Some("clicks"));
    let expected_parts: Vec<String> = (0..job.total_batches)
        .map(|b| format!("s3://{lake}/{prefix}part-{b:06}.ndjson"))
        .collect();
    let parts: Vec<String> = manifest.parts.iter().map(|p| p.location.clone()).collect();
    assert_eq!(parts, expected_parts);
    let mut rows = Vec::new();
    for part in &manifest.parts {
        let key = part
            .location
            .trim_start_matches(&format!("s3://{lake}/"))
            .to_owned();
        let body = object(&stack, &lake, &key).await;
        assert_eq!(body.len() as i64, part.bytes);
        for line in String::from_utf8(body).unwrap().lines() {
            rows.push(serde_json::from_str::<serde_json::Value>(line).unwrap());
        }
    }
    assert_eq!(rows, clicks_rows);

    // The upload under no route: a failed job of no kind, saying where
    // uploads of each kind go.
    let job = stack.job(&unrouted_job).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.kind, None);
    assert_eq!(
        job.failure_reason.as_deref(),
        Some(
            "no route takes uploads/misc/notes.csv: uploads are imported from \
             uploads/users/* (users), uploads/follows/*.csv (follows), uploads/clicks/* (clicks)"
        )
    );
    // The events say the kind.
    let completed = stack.events.of(bulk_import::job::EventKind::Completed);
    let clicks_event = completed
        .iter()
        .find(|e| e.job_id == clicks_job)
        .expect("completed");
    assert_eq!(clicks_event.job_kind.as_deref(), Some("clicks"));
    let failed = stack.events.of(bulk_import::job::EventKind::Failed);
    let unrouted_event = failed
        .iter()
        .find(|e| e.job_id == unrouted_job)
        .expect("failed");
    assert_eq!(unrouted_event.job_kind, None);
}
