//! Prepare alone, one batch write at a time against several in flight,
//! each carrying the batches cut meanwhile: the
//! same file through the orchestrator twice against the emulator, with the
//! emulator's per-request latency set like DynamoDB's from Lambda
//! (`MOTO_LATENCY_MS`, 10 in `make bench-prepare`), times side by side:
//! the best of `PREPARE_BENCH_RUNS` (3) each, as other load on the machine
//! only ever adds time.
//!
//!     make bench-prepare           (PREPARE_BENCH_ROWS, default 100,000)
//!     prepare-bench FILE.csv       (the demo's definition, examples/users.json)

use bulk_import::prepare::{MAX_BATCHES_PER_WRITE, MAX_WRITES_IN_FLIGHT};
use integration_tests::Stack;
use std::time::Instant;

/// The orchestrator's allocator, so that memory and speed are its own.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    let runs: usize = std::env::var("PREPARE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut times = Vec::new();
    for (in_flight, per_write) in [(1, 1), (MAX_WRITES_IN_FLIGHT, MAX_BATCHES_PER_WRITE)] {
        let mut best = f64::INFINITY;
        let mut counts = (0, 0);
        let mut requests = 0;
        for run in 0..runs {
            // A fresh stack each: tables the emulator scans stay small.
            let mut stack = Stack::new(&definition).await;
            stack.deps.prepare.writes_in_flight = in_flight;
            stack.deps.prepare.batches_per_write = per_write;
            let key = format!("uploads/prepare-{in_flight}-{run}.csv");
            let event = stack.upload(&key, body.clone()).await;
            let started = Instant::now();
            let prepared = stack.orchestrate(event).await;
            let took = started.elapsed().as_secs_f64();
            let p = &prepared[0];
            anyhow::ensure!(p.outcome == "prepared", "prepare ended {}", p.outcome);
            counts = (p.total_records, p.total_batches);
            best = best.min(took);
            let job = stack.job(&bulk_import::JobId::new(&p.job_id)).await;
            requests = job.cost.requests;
        }
        println!(
            "{in_flight} write(s) in flight, up to {per_write} batch(es) each: {:>6.2} s  ({} records, {} batches, {:.0} records/s; best of {runs}; {:.2} DynamoDB requests a batch)",
            best,
            counts.0,
            counts.1,
            counts.0 as f64 / best,
            requests as f64 / counts.1.max(1) as f64
        );
        times.push(best);
    }
    println!("speed-up: {:.1}x", times[0] / times[1]);
    Ok(())
}
