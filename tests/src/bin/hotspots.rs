//! Where one job's writes land: runs a job of at least 1,000 batches against
//! the emulator (orchestrator and workers concurrently, as in production)
//! through a write ledger, and prints the hottest item and the hottest
//! partitions (table and `leases` index) in writes and write units per
//! batch. DynamoDB serializes writes to one item and gives one partition
//! about 1,000 write units a second, so these figures bound one job's speed.
//!
//!     make bench-hotspots            (HOTSPOT_ROWS, HOTSPOT_BATCH_SIZE, HOTSPOT_WORKERS,
//!                                     HOTSPOT_PARTITIONS: key partitions, none when 0)

use bulk_import::handlers::orchestrator::source_of;
use integration_tests::ledger::Ledger;
use integration_tests::{Stack, StackOptions};
use std::time::Instant;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Per-batch figure of the largest entry of a tally.
fn hottest<K: std::fmt::Debug + Clone>(
    entries: impl Iterator<Item = (K, f64)>,
    batches: u64,
) -> Option<(K, f64)> {
    entries
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(k, v)| (k, v / batches as f64))
}

/// Names a state-table key by its role, not its job id.
fn role(pk: &str) -> String {
    let rest = pk.split_once('#').map_or(pk, |x| x.1);
    match rest.split_once('#') {
        None => "job item".into(),
        Some((_, "")) => pk.into(),
        Some((_, tail)) => match tail.split_once('#') {
            Some(("K", n)) => format!("claim cursor shard {n}"),
            Some(("N", n)) => format!("counter shard {n}"),
            Some(("L", n)) => format!("lease index shard {n}"),
            Some(("B", n)) => format!("batch {n}"),
            Some(("E", n)) => format!("failure shard {n}"),
            _ => tail.into(),
        },
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows = env_number("HOTSPOT_ROWS", 20_000);
    let batch_size = env_number("HOTSPOT_BATCH_SIZE", 20);
    let workers = env_number("HOTSPOT_WORKERS", 8) as usize;
    let partitions = match env_number("HOTSPOT_PARTITIONS", 0) {
        0 => String::new(),
        n => format!(r#", "partitionBy": ["email"], "partitions": {n}"#),
    };
    let ledger = Ledger::default();
    let clients = integration_tests::ledger_clients(&ledger).await;
    let definition = format!(
        r#"{{"fields": [
            {{"name": "email", "type": "email", "required": true}},
            {{"name": "name", "type": "string"}}
          ], "keyField": "email", "batchSize": {batch_size}, "continueOnError": true{partitions}}}"#
    );
    let opts = StackOptions {
        max_workers: workers as u32,
        ..StackOptions::default()
    };
    let stack = Stack::with_clients(&definition, opts, clients).await;
    let mut csv = String::from("email,name\n");
    for i in 0..rows {
        csv.push_str(&format!("user{i}@example.com,User {i}\n"));
    }
    let event = stack.upload("uploads/hotspots.csv", csv).await;
    let job_id = source_of(stack.deps.versions.as_ref(), &event.records[0], 0)
        .await?
        .job_id();
    let started = Instant::now();
    // Workers poll while the file is read, as the fan-out wakes them.
    let (prepared, _) = tokio::join!(
        stack.orchestrate(event),
        stack.run_workers(workers, &job_id)
    );
    let elapsed = started.elapsed();
    assert_eq!(prepared[0].job_id, job_id.as_str());
    let job = stack.job(&job_id).await;
    let batches = job.total_batches;
    let state = stack.resources.state_table.clone();
    let (item, partition, index, requests, operations) = ledger.with(|t| {
        let item = hottest(
            t.item_writes
                .iter()
                .filter(|(k, _)| k.0 == state)
                .map(|(k, v)| (k.1.clone(), *v as f64)),
            batches,
        );
        let partition = hottest(
            t.partition_units
                .iter()
                .filter(|(k, _)| k.0 == state)
                .map(|(k, v)| (k.1.clone(), *v)),
            batches,
        );
        let index = hottest(
            t.index_units
                .iter()
                .filter(|(k, _)| k.0 == state && k.1.starts_with("J#"))
                .map(|(k, v)| (k.1.clone(), *v)),
            batches,
        );
        let mut operations: Vec<(String, u64)> =
            t.operations.iter().map(|(k, v)| (k.clone(), *v)).collect();
        operations.sort_by_key(|o| std::cmp::Reverse(o.1));
        (item, partition, index, t.requests, operations)
    });
    println!(
        "job: {} records, {batches} batches of {batch_size}, {workers} workers, {:?}, status {}, {} conflicts retried",
        job.total_records,
        elapsed,
        job.status,
        job.cost.conflicts
    );
    println!(
        "write requests to DynamoDB (state and target tables): {requests} ({:.2} a batch)",
        requests as f64 / batches as f64
    );
    let per_batch: Vec<String> = operations
        .iter()
        .map(|(op, n)| format!("{op} {:.2}", *n as f64 / batches as f64))
        .collect();
    println!("requests a batch by operation: {}", per_batch.join(", "));
    if let Some((pk, v)) = item {
        println!(
            "hottest item:            {v:.3} writes a batch       ({})   target <= 0.25",
            role(&pk)
        );
    }
    if let Some((pk, v)) = &partition {
        println!(
            "hottest table partition: {v:.3} write units a batch  ({})   target <= 1",
            role(pk)
        );
    }
    if let Some((gpk, v)) = index {
        println!(
            "hottest index partition: {v:.3} write units a batch  ({})   target <= 1",
            role(&gpk)
        );
        let worst = v.max(partition.as_ref().map_or(0.0, |p| p.1));
        println!(
            "one job's ceiling at 1,000 write units a second per partition: {:.0} batches a second ({:.0} records a second at {batch_size} a batch)",
            1000.0 / worst,
            1000.0 / worst * batch_size as f64
        );
    }
    Ok(())
}
