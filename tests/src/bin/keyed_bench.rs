//! What `onDuplicateKey` costs: one file whose keys repeat (a third of
//! them 2-10 times) imported by the same workers three times, through a
//! write ledger: by an unconditional upsert (BatchWriteItem, 25 items a
//! request, whichever write lands last wins: the upsert before keyed
//! imports), then under `last` and `first`, and under `last` again with
//! 16 key partitions (`partitionBy`). For each: requests and write
//! units sent to the target table per record, wall time on the emulator
//! (indicative only: it serves a few hundred requests a second) and the
//! CPU time this process spent, orchestrator and workers together.
//!
//!     make bench-keyed     (KEYED_BENCH_ROWS, KEYED_BENCH_WORKERS)

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use bulk_import::job::JobId;
use bulk_import::processor::{ProcessContext, ProcessError, RecordProcessor};
use bulk_import::schema::{FieldValue, ValidRecord};
use integration_tests::keyed::{csv, definition_with, is_valid, rows, sequential};
use integration_tests::ledger::Ledger;
use integration_tests::{Stack, StackOptions};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The upsert as it was before ranks: each batch's items (the last of a
/// key in the batch) in BatchWriteItem requests of 25, no condition.
struct Unconditional {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

#[async_trait]
impl RecordProcessor for Unconditional {
    async fn process(
        &self,
        record: &ValidRecord,
        ctx: &ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        self.process_batch(&[record], ctx).await.remove(0)
    }

    async fn process_batch(
        &self,
        records: &[&ValidRecord],
        _ctx: &ProcessContext<'_>,
    ) -> Vec<Result<(), ProcessError>> {
        let mut items: HashMap<String, HashMap<String, AttributeValue>> = HashMap::new();
        for record in records {
            let item: HashMap<String, AttributeValue> = record
                .iter()
                .map(|(name, value)| {
                    let attr = match value {
                        FieldValue::String(s) => AttributeValue::S(s.to_owned()),
                        FieldValue::Integer(n) => AttributeValue::N(n.to_string()),
                        FieldValue::Number(x) => AttributeValue::N(x.to_string()),
                        FieldValue::Boolean(b) => AttributeValue::Bool(b),
                    };
                    (name.to_owned(), attr)
                })
                .collect();
            let key = format!("{:?}", item.get("email"));
            items.insert(key, item);
        }
        let requests: Vec<WriteRequest> = items
            .into_values()
            .map(|item| {
                let put = PutRequest::builder().set_item(Some(item)).build().unwrap();
                WriteRequest::builder().put_request(put).build()
            })
            .collect();
        for chunk in requests.chunks(25) {
            let mut pending = chunk.to_vec();
            while !pending.is_empty() {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, pending)
                    .send()
                    .await;
                match out {
                    Ok(out) => {
                        pending = out
                            .unprocessed_items
                            .and_then(|mut m| m.remove(&self.table))
                            .unwrap_or_default()
                    }
                    Err(e) => {
                        let message = format!("batch write failed: {e}");
                        return records
                            .iter()
                            .map(|_| Err(ProcessError::retryable(message.clone())))
                            .collect();
                    }
                }
            }
        }
        records.iter().map(|_| Ok(())).collect()
    }
}

/// CPU time this process has used (user + system), in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after ")".
    (ticks(11) + ticks(12)) / 100.0
}

/// Write requests and write units sent to `table` so far.
fn sent_to(ledger: &Ledger, table: &str) -> (u64, f64) {
    ledger.with(|t| {
        let units: f64 = t
            .partition_units
            .iter()
            .filter(|((name, _), _)| name == table)
            .map(|(_, u)| u)
            .sum();
        (t.table_requests.get(table).copied().unwrap_or(0), units)
    })
}

struct Figures {
    records: u64,
    duplicates: u64,
    requests: u64,
    units: f64,
    seconds: f64,
    cpu: f64,
}

async fn run(
    clients: &bulk_import::aws::Clients,
    ledger: &Ledger,
    file: &str,
    policy: Option<&str>,
    options: &str,
    workers: usize,
) -> (Figures, HashMap<String, (String, String)>) {
    let opts = StackOptions {
        max_workers: workers as u32,
        ..StackOptions::default()
    };
    let mut stack = Stack::with_clients(
        &definition_with(policy.unwrap_or("last"), options),
        opts,
        clients.clone(),
    )
    .await;
    if policy.is_none() {
        stack.deps.processors = Arc::new(bulk_import::processor::Processors::given(Arc::new(
            Unconditional {
                client: clients.dynamodb.clone(),
                table: stack.resources.target_table.clone(),
            },
        )));
    }
    let target = stack.resources.target_table.clone();
    let before = sent_to(ledger, &target);
    let event = stack.upload("uploads/keyed.csv", file.to_owned()).await;
    let job = JobId::new(&stack.orchestrate(event).await[0].job_id);
    let (started, cpu) = (Instant::now(), cpu_seconds());
    stack.run_workers(workers, &job).await;
    let (seconds, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    let state = stack.job(&job).await;
    let (requests, units) = sent_to(ledger, &target);
    let table = stack
        .target_items()
        .await
        .iter()
        .map(|i| {
            let text = |name: &str| match &i[name] {
                AttributeValue::S(s) | AttributeValue::N(s) => s.clone(),
                other => panic!("{other:?}"),
            };
            (text("email"), (text("name"), text("n")))
        })
        .collect();
    let figures = Figures {
        records: state.processed,
        duplicates: state.duplicates,
        requests: requests - before.0,
        units: units - before.1,
        seconds,
        cpu,
    };
    (figures, table)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count = env_number("KEYED_BENCH_ROWS", 10_000) as usize;
    let workers = env_number("KEYED_BENCH_WORKERS", 4) as usize;
    let rows = rows(count, 7);
    let file = csv(&rows);
    let valid = rows.iter().filter(|r| is_valid(r)).count();
    let keys = sequential(&rows, "last").len();
    println!(
        "{count} rows, {valid} valid, {keys} keys ({} valid rows repeat a key), batches of 100, {workers} workers",
        valid - keys
    );
    let ledger = Ledger::default();
    let clients = integration_tests::ledger_clients(&ledger).await;
    let mut baseline = None;
    let mut rates = Vec::new();
    let partitioned = r#""partitionBy": ["email"], "partitions": 16,"#;
    let runs = [
        ("unconditional", None, ""),
        ("last", Some("last"), ""),
        ("first", Some("first"), ""),
        ("last, 16 partitions", Some("last"), partitioned),
    ];
    for (name, policy, options) in runs {
        let (f, table) = run(&clients, &ledger, &file, policy, options, workers).await;
        let matches = match policy {
            Some(p) => table == sequential(&rows, p),
            None => table == sequential(&rows, "last"),
        };
        let per = |x: f64| x / f.records as f64;
        let against = match baseline {
            Some((units, requests)) => format!(
                " ({:+.1}% write units, x{:.1} requests against unconditional)",
                (per(f.units) / units - 1.0) * 100.0,
                per(f.requests as f64) / requests
            ),
            None => String::new(),
        };
        println!(
            "{name:>19}: {:.4} requests and {:.4} write units a record{against}; {:.1} s, {:.0} records/s, {:.2} ms CPU a record; duplicates counted {}; table {} a sequential import",
            per(f.requests as f64),
            per(f.units),
            f.seconds,
            f.records as f64 / f.seconds,
            per(f.cpu * 1000.0),
            f.duplicates,
            if matches { "equals" } else { "differs from" },
        );
        if baseline.is_none() {
            baseline = Some((per(f.units), per(f.requests as f64)));
        }
        rates.push(f.records as f64 / f.seconds);
    }
    println!(
        "16 key partitions: {:.0}% of the records a second of the same job unpartitioned",
        rates[3] / rates[1] * 100.0
    );
    Ok(())
}
