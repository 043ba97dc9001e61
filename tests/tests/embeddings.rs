//! The `embeddings` processor through the real SDK client (`InvokeModel`)
//! against a local stand-in for Bedrock Runtime serving Titan Text
//! Embeddings V2, which throttles every seventh request: every record gets
//! its vector on its item or a reported failure, and the model calls in
//! flight never exceed the processor's limit.

use aws_sdk_dynamodb::types::AttributeValue;
use bulk_import::job::{JobId, JobStatus};
use bulk_import::store::JobControl;
use integration_tests::standin::{clients_with, StandIn};
use integration_tests::{clients, Item, Stack, StackOptions};
use std::collections::BTreeMap;

const DEFINITION: &str = r#"{"kind": "products",
  "fields": [
    {"name": "id", "type": "string", "required": true},
    {"name": "title", "type": "string"},
    {"name": "description", "type": "string"}],
  "keyField": "id", "batchSize": 20,
  "processor": {"type": "embeddings", "model": "amazon.titan-embed-text-v2:0",
    "dimensions": 256, "template": "{title}. {description}", "concurrency": 3}}"#;

fn vector(item: &Item) -> Vec<f64> {
    match item.get("embedding") {
        Some(AttributeValue::L(values)) => values
            .iter()
            .map(|v| v.as_n().expect("a number").parse().expect("a float"))
            .collect(),
        other => panic!("embedding: {other:?}"),
    }
}

#[tokio::test]
async fn every_record_gets_its_vector_or_a_reported_failure_within_the_limit_in_flight() {
    let bedrock = StandIn::start(
        "bedrock_standin.py",
        &["--throttle-every", "7", "--latency-ms", "15"],
    );
    let clients = clients_with(clients().await, None, Some(&bedrock)).await;
    let stack = Stack::with_clients(DEFINITION, StackOptions::default(), clients).await;
    let mut csv = String::from("id,title,description\n");
    let mut empty = BTreeMap::new();
    for i in 0..90u64 {
        match i % 9 {
            // Nothing to embed but the template's own ". ".
            4 => {
                empty.insert(i + 2, ());
                csv.push_str(&format!("p{i},,\n"));
            }
            // The same text as two products before.
            5 => csv.push_str(&format!("p{i},Lamp {},Warm light\n", i - 2)),
            _ => csv.push_str(&format!("p{i},Lamp {i},Warm light\n")),
        }
    }
    let event = stack.upload("uploads/products.csv", csv).await;
    let job = JobId::new(&stack.orchestrate(event).await[0].job_id);
    // Three workers in one process share the processor and its limit.
    stack.run_workers(3, &job).await;

    let done = stack.job(&job).await;
    assert_eq!(done.status, JobStatus::CompletedWithErrors);
    assert_eq!(
        (done.processed, done.failed),
        (90 - empty.len() as u64, empty.len() as u64)
    );
    let mut reasons = BTreeMap::new();
    for batch in 0..done.total_batches {
        for f in stack.watcher.failed_records(&job, batch).await.unwrap() {
            reasons.insert(f.line, f.issues[0].message.clone());
        }
    }
    let wanted: BTreeMap<u64, String> = empty
        .keys()
        .map(|line| {
            (
                *line,
                "processing failed: nothing to embed: title, description have no value".to_owned(),
            )
        })
        .collect();
    assert_eq!(reasons, wanted);

    let mut items: BTreeMap<String, Item> = BTreeMap::new();
    let mut pages = stack
        .clients
        .dynamodb
        .scan()
        .table_name(&stack.resources.target_table)
        .into_paginator()
        .items()
        .send();
    while let Some(item) = pages.next().await {
        let item = item.unwrap();
        let id = item["id"].as_s().unwrap().clone();
        items.insert(id, item);
    }
    assert_eq!(items.len() as u64, done.processed);
    for (id, item) in &items {
        let v = vector(item);
        assert_eq!(v.len(), 256, "{id}");
        let norm: f64 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6, "{id}: |v| = {norm}");
    }
    // One text, one vector; another text, another.
    assert_eq!(vector(&items["p5"]), vector(&items["p3"]));
    assert_ne!(vector(&items["p1"]), vector(&items["p2"]));

    let stats = bedrock.stats().await;
    assert!(stats["throttled"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(
        stats["embeddings"].as_u64().unwrap(),
        done.processed,
        "{stats}"
    );
    let arrived = stats["maxArrived"].as_u64().unwrap();
    assert!(arrived <= 3, "more than 3 model calls in flight: {stats}");
    assert!(arrived >= 2, "calls never overlapped: {stats}");
}

#[tokio::test]
async fn a_float32_vector_is_stored_in_four_bytes_a_dimension() {
    let bedrock = StandIn::start("bedrock_standin.py", &[]);
    let clients = clients_with(clients().await, None, Some(&bedrock)).await;
    let definition = DEFINITION.replace(
        r#""concurrency": 3"#,
        r#""concurrency": 3, "encoding": "float32""#,
    );
    let stack = Stack::with_clients(&definition, StackOptions::default(), clients).await;
    let event = stack
        .upload(
            "uploads/products.csv",
            "id,title,description\np1,Lamp,Warm light\n",
        )
        .await;
    let job = JobId::new(&stack.orchestrate(event).await[0].job_id);
    stack.run_workers(1, &job).await;
    assert_eq!(stack.job(&job).await.processed, 1);
    let item = stack
        .clients
        .dynamodb
        .get_item()
        .table_name(&stack.resources.target_table)
        .key("id", AttributeValue::S("p1".into()))
        .send()
        .await
        .unwrap()
        .item
        .expect("the item");
    let bytes = item["embedding"].as_b().expect("binary").as_ref().to_vec();
    assert_eq!(bytes.len(), 256 * 4);
    let norm: f32 = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()).powi(2))
        .sum::<f32>()
        .sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "|v| = {norm}");
}
