//! What each processor type costs: one job of each kind (the examples'
//! definitions), the same number of rows, 4 workers, on the emulator with
//! the local stand-ins for Lambda and Bedrock. DynamoDB and S3 requests
//! are counted by a ledger on the wire, the function's and the model's
//! calls by their stand-ins: requests are counted, not timed. Wall time
//! is the emulator's (a few hundred requests a second), so records a
//! second are indicative only. Costs are list prices (us-east-1, on
//! demand), per million records:
//!
//! - DynamoDB: $0.625 per million write request units, $0.125 per million
//!   read request units;
//! - S3: $0.005 per thousand PUT or LIST requests;
//! - Lambda: $0.20 per million invocations (the function's own duration
//!   is yours, and not counted);
//! - Bedrock, Titan Text Embeddings V2: $0.02 per million input tokens.
//!
//!     make bench-processors     (PROCESSORS_BENCH_ROWS)

use aws_sdk_dynamodb::types::AttributeValue;
use bulk_import::job::{JobId, JobStatus};
use integration_tests::ledger::Ledger;
use integration_tests::standin::{clients_with, StandIn};
use integration_tests::{ledger_clients, unique, Stack, StackOptions};
use std::time::Instant;

const WRU: f64 = 0.625;
const RRU: f64 = 0.125;
const S3_WRITE: f64 = 5.0; // per million
const LAMBDA: f64 = 0.20;
const TOKENS: f64 = 0.02;

/// What one run counted.
#[derive(Default)]
struct Run {
    kind: &'static str,
    records: u64,
    seconds: f64,
    /// DynamoDB requests and write units on the processor's tables.
    target_requests: u64,
    target_units: f64,
    /// Read units of existence checks, at most (see `run`).
    lookup_units: f64,
    /// BatchGetItem requests of existence checks.
    lookups: u64,
    s3_requests: u64,
    function_calls: u64,
    model_calls: u64,
    tokens: u64,
    /// The pipeline's own spend on the state table.
    state_write_units: f64,
    state_read_units: f64,
}

impl Run {
    fn per(&self, n: f64) -> f64 {
        n / self.records as f64
    }

    fn cost_per_million(&self) -> f64 {
        let million = 1e6 / self.records as f64;
        million
            * ((self.target_units + self.state_write_units) * WRU / 1e6
                + (self.lookup_units + self.state_read_units) * RRU / 1e6
                + self.s3_requests as f64 * S3_WRITE / 1e6
                + self.function_calls as f64 * LAMBDA / 1e6
                + self.tokens as f64 * TOKENS / 1e6)
    }
}

fn rows_env() -> u64 {
    std::env::var("PROCESSORS_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

struct Case {
    kind: &'static str,
    csv: String,
    /// Tables whose requests are the processor's.
    tables: Vec<String>,
    /// The things table of existence checks.
    lookup_table: Option<String>,
}

/// The ledger's counts so far of what `case`'s processor sends: requests
/// and write units on its tables, S3 PUT and LIST requests, and reads of
/// its things table.
fn counts(ledger: &Ledger, case: &Case) -> ((u64, f64), u64, u64) {
    ledger.with(|t| {
        let requests: u64 = case
            .tables
            .iter()
            .map(|n| t.table_requests.get(n).copied().unwrap_or(0))
            .sum();
        let units: f64 = t
            .partition_units
            .iter()
            .filter(|((table, _), _)| case.tables.contains(table))
            .map(|(_, u)| u)
            .sum();
        let s3: u64 = ["PutObject", "ListObjectsV2"]
            .iter()
            .map(|o| t.s3_operations.get(*o).copied().unwrap_or(0))
            .sum();
        let lookups = case
            .lookup_table
            .as_ref()
            .and_then(|n| t.table_reads.get(n).copied())
            .unwrap_or(0);
        ((requests, units), s3, lookups)
    })
}

async fn run(
    case: Case,
    stack: &Stack,
    ledger: &Ledger,
    lambda: &StandIn,
    bedrock: &StandIn,
) -> Run {
    let event = stack
        .upload(
            &format!("uploads/{}.csv", case.kind.replace([',', ' '], "-")),
            case.csv.clone(),
        )
        .await;
    let before_lambda = lambda.stats().await;
    let before_bedrock = bedrock.stats().await;
    let (before_tables, before_s3, before_lookups) = counts(ledger, &case);
    let started = Instant::now();
    let job = JobId::new(&stack.orchestrate(event).await[0].job_id);
    stack.run_workers(4, &job).await;
    let seconds = started.elapsed().as_secs_f64();
    let done = stack.job(&job).await;
    assert_eq!(done.status, JobStatus::Completed, "{}: {done:?}", case.kind);
    let (tables, s3, lookups) = counts(ledger, &case);
    let lambda_stats = lambda.stats().await;
    let bedrock_stats = bedrock.stats().await;
    let delta = |after: &serde_json::Value, before: &serde_json::Value, key: &str| {
        after[key].as_u64().unwrap_or(0) - before[key].as_u64().unwrap_or(0)
    };
    // An existence check reads each end of each edge at most once a
    // batch: at most 2 small items a record, half a read unit each
    // (BatchGetItem reads eventually consistent, items under 4 KB).
    let lookup_items = if case.lookup_table.is_some() {
        done.processed as f64 * 2.0
    } else {
        0.0
    };
    Run {
        kind: case.kind,
        records: done.processed,
        seconds,
        target_requests: tables.0 - before_tables.0,
        target_units: tables.1 - before_tables.1,
        lookup_units: lookup_items * 0.5,
        lookups: lookups - before_lookups,
        s3_requests: s3 - before_s3,
        function_calls: delta(&lambda_stats, &before_lambda, "invocations"),
        model_calls: delta(&bedrock_stats, &before_bedrock, "requests"),
        tokens: 0,
        state_write_units: done.cost.write_units,
        state_read_units: done.cost.read_units,
    }
}

#[tokio::main]
async fn main() {
    let rows = rows_env();
    let lambda = StandIn::start(
        "lambda_standin.py",
        &[
            "--handler",
            "examples/processors/orders_handler.py:handler",
            "--function-name",
            "reserve-stock",
            "--quiet",
        ],
    );
    let bedrock = StandIn::start("bedrock_standin.py", &[]);
    let ledger = Ledger::default();
    let clients = clients_with(ledger_clients(&ledger).await, Some(&lambda), Some(&bedrock)).await;
    let names = unique("bench");
    let mut results = Vec::new();

    // dynamodb: the users example, into the stack's target table.
    let mut csv = String::from("email,name,plan\n");
    for i in 0..rows {
        csv.push_str(&format!(
            "user{i}@example.com,User {i},{}\n",
            if i % 3 == 0 { "pro" } else { "free" }
        ));
    }
    let definition = std::fs::read_to_string("examples/routes/definitions/users.json").unwrap();
    let stack = Stack::with_clients(&definition, StackOptions::default(), clients.clone()).await;
    let target = stack.resources.target_table.clone();
    results.push(
        run(
            Case {
                kind: "dynamodb",
                csv,
                tables: vec![target],
                lookup_table: None,
            },
            &stack,
            &ledger,
            &lambda,
            &bedrock,
        )
        .await,
    );

    // relationships: follows among 500 accounts, both ends checked, reverse edges.
    let (graph, accounts) = (format!("{names}-graph"), format!("{names}-accounts"));
    let definition = std::fs::read_to_string("examples/routes/definitions/follows.json")
        .unwrap()
        .replace("social-graph", &graph)
        .replace("\"accounts\"", &format!("\"{accounts}\""));
    let stack = Stack::with_clients(&definition, StackOptions::default(), clients.clone()).await;
    stack.create_table(&graph, &["pk", "sk"]).await;
    stack.create_table(&accounts, &["handle"]).await;
    for i in 0..500 {
        stack
            .clients
            .dynamodb
            .put_item()
            .table_name(&accounts)
            .item("handle", AttributeValue::S(format!("@u{i}")))
            .send()
            .await
            .unwrap();
    }
    let mut csv = String::from("from,to,since\n");
    for i in 0..rows {
        csv.push_str(&format!(
            "@u{},@u{},2026-01-01\n",
            i % 500,
            (i * 7 + 1) % 500
        ));
    }
    results.push(
        run(
            Case {
                kind: "relationships",
                csv,
                tables: vec![graph],
                lookup_table: Some(accounts),
            },
            &stack,
            &ledger,
            &lambda,
            &bedrock,
        )
        .await,
    );

    // s3: clicks as Parquet parts.
    let lake = format!("{names}-lake");
    let definition = std::fs::read_to_string("examples/routes/definitions/clicks.json")
        .unwrap()
        .replace("my-data-lake", &lake);
    let stack = Stack::with_clients(&definition, StackOptions::default(), clients.clone()).await;
    stack
        .clients
        .s3
        .create_bucket()
        .bucket(&lake)
        .send()
        .await
        .unwrap();
    let mut csv = String::from("user,page,at,ms\n");
    for i in 0..rows {
        csv.push_str(&format!(
            "u{},/p/{i},2026-12-05T10:{:02}:00Z,{}\n",
            i % 97,
            i % 60,
            i * 3
        ));
    }
    results.push(
        run(
            Case {
                kind: "s3",
                csv,
                tables: vec![],
                lookup_table: None,
            },
            &stack,
            &ledger,
            &lambda,
            &bedrock,
        )
        .await,
    );

    // lambda: orders through the example function.
    let definition = std::fs::read_to_string("examples/routes/definitions/orders.json").unwrap();
    let stack = Stack::with_clients(&definition, StackOptions::default(), clients.clone()).await;
    let mut csv = String::from("order_id,sku,quantity\n");
    for i in 0..rows {
        csv.push_str(&format!("A-{i},SKU-{},{}\n", i % 50, 1 + i % 4));
    }
    results.push(
        run(
            Case {
                kind: "lambda",
                csv,
                tables: vec![],
                lookup_table: None,
            },
            &stack,
            &ledger,
            &lambda,
            &bedrock,
        )
        .await,
    );

    // embeddings: products, 512 dimensions, vectors on the items.
    let definition = std::fs::read_to_string("examples/routes/definitions/products.json").unwrap();
    let products = format!("{names}-products");
    let definition = definition.replace("\"products\"", &format!("\"{products}\""));
    let stack = Stack::with_clients(&definition, StackOptions::default(), clients.clone()).await;
    stack.create_table(&products, &["id"]).await;
    let mut csv = String::from("id,title,description\n");
    let mut tokens = 0;
    for i in 0..rows {
        let (title, description) = (
            format!("Desk lamp {i}"),
            "Warm light, brass arm, 40 cm shade",
        );
        // The stand-in's estimate: words and punctuation marks.
        tokens += format!("{title}. {description}")
            .split(|c: char| c.is_whitespace())
            .filter(|w| !w.is_empty())
            .map(|w| 1 + w.chars().filter(|c| c.is_ascii_punctuation()).count() as u64)
            .sum::<u64>();
        csv.push_str(&format!("p{i},{title},\"{description}\"\n"));
    }
    let mut embeddings = run(
        Case {
            kind: "embeddings",
            csv: csv.clone(),
            tables: vec![products],
            lookup_table: None,
        },
        &stack,
        &ledger,
        &lambda,
        &bedrock,
    )
    .await;
    embeddings.tokens = tokens;
    results.push(embeddings);

    // embeddings again, the vectors stored as float32.
    let products = format!("{names}-products32");
    let definition = std::fs::read_to_string("examples/routes/definitions/products.json")
        .unwrap()
        .replace("\"products\"", &format!("\"{products}\""))
        .replace(
            "\"concurrency\": 8",
            "\"concurrency\": 8, \"encoding\": \"float32\"",
        );
    assert!(definition.contains("float32"));
    let stack = Stack::with_clients(&definition, StackOptions::default(), clients.clone()).await;
    stack.create_table(&products, &["id"]).await;
    let mut float32 = run(
        Case {
            kind: "embeddings, float32",
            csv,
            tables: vec![products],
            lookup_table: None,
        },
        &stack,
        &ledger,
        &lambda,
        &bedrock,
    )
    .await;
    float32.tokens = tokens;
    results.push(float32);

    println!(
        "{rows} rows a job, 4 workers; per record unless said (DynamoDB and S3 requests counted on the wire, calls by the stand-ins)"
    );
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "type",
        "records/s",
        "table req",
        "table WU",
        "lookups",
        "S3 req",
        "fn calls",
        "model",
        "state WU",
        "$/M records"
    );
    for r in &results {
        println!(
            "{:<20} {:>10.0} {:>10.4} {:>10.3} {:>10.4} {:>10.4} {:>10.4} {:>10.3} {:>10.3} {:>12.2}",
            r.kind,
            r.records as f64 / r.seconds,
            r.per(r.target_requests as f64),
            r.per(r.target_units),
            r.per(r.lookups as f64),
            r.per(r.s3_requests as f64),
            r.per(r.function_calls as f64),
            r.per(r.model_calls as f64),
            r.per(r.state_write_units),
            r.cost_per_million()
        );
    }
}
