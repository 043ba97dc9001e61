//! Prepare alone, one batch write at a time against several in flight: the
//! same file through the orchestrator twice against the emulator, with the
//! emulator's per-request latency set like DynamoDB's from Lambda
//! (`MOTO_LATENCY_MS`, 10 in `make bench-prepare`), times side by side.
//!
//!     make bench-prepare           (PREPARE_BENCH_ROWS, default 100,000)
//!     prepare-bench FILE.csv       (the demo's definition, examples/users.json)

use bulk_import::prepare::MAX_WRITES_IN_FLIGHT;
use integration_tests::Stack;
use std::time::Instant;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let file = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: prepare-bench FILE.csv"))?;
    let body = std::fs::read(&file)?;
    let definition = std::fs::read_to_string("examples/users.json")?;
    let latency = std::env::var("MOTO_LATENCY_MS").unwrap_or_else(|_| "0".into());
    println!(
        "prepare of {file} ({:.1} MB), emulator latency {latency} ms a request",
        body.len() as f64 / 1e6
    );
    let mut times = Vec::new();
    for in_flight in [1, MAX_WRITES_IN_FLIGHT] {
        // A fresh stack each: tables the emulator scans stay small.
        let mut stack = Stack::new(&definition).await;
        stack.deps.prepare.writes_in_flight = in_flight;
        let event = stack
            .upload(&format!("uploads/prepare-{in_flight}.csv"), body.clone())
            .await;
        let started = Instant::now();
        let prepared = stack.orchestrate(event).await;
        let took = started.elapsed();
        let p = &prepared[0];
        anyhow::ensure!(p.outcome == "prepared", "prepare ended {}", p.outcome);
        println!(
            "{:>2} write(s) in flight: {:>7.2} s  ({} records, {} batches, {:.0} records/s)",
            in_flight,
            took.as_secs_f64(),
            p.total_records,
            p.total_batches,
            p.total_records as f64 / took.as_secs_f64()
        );
        times.push(took.as_secs_f64());
    }
    println!("speed-up: {:.1}x", times[0] / times[1]);
    Ok(())
}
