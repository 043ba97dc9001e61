//! What the throughput cap holds: the same job run twice against the
//! emulator by several workers, uncapped and then with
//! `maxWriteUnitsPerSecond` well below what the emulator can take. A write
//! ledger timestamps every write to the target table, so the write units of
//! each wall-clock second (the cap's window) are measured from outside, and
//! it counts the reservation requests the cap adds.
//!
//!     make bench-throttle     (THROTTLE_ROWS, THROTTLE_CAP, THROTTLE_WORKERS, THROTTLE_BATCH_SIZE)

use bulk_import::aws::Clients;
use bulk_import::job::JobId;
use integration_tests::ledger::Ledger;
use integration_tests::{Stack, StackOptions};
use std::collections::BTreeMap;
use std::time::Instant;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Run {
    records: u64,
    batches: u64,
    seconds: f64,
    /// Write units sent to the target table in each wall-clock second.
    windows: BTreeMap<i64, f64>,
    /// Reservation requests (window item writes, refused ones included).
    reservations: u64,
}

async fn run(
    clients: &Clients,
    ledger: &Ledger,
    rows: u64,
    batch_size: u64,
    workers: usize,
    cap: Option<u64>,
) -> Run {
    let cap_option = cap.map_or(String::new(), |c| {
        format!(r#", "maxWriteUnitsPerSecond": {c}"#)
    });
    let definition = format!(
        r#"{{"fields": [
            {{"name": "email", "type": "email", "required": true}},
            {{"name": "name", "type": "string"}}
          ], "keyField": "email", "batchSize": {batch_size}{cap_option}}}"#
    );
    let opts = StackOptions {
        max_workers: workers as u32,
        ..StackOptions::default()
    };
    let stack = Stack::with_clients(&definition, opts, clients.clone()).await;
    let mut csv = String::from("email,name\n");
    for i in 0..rows {
        csv.push_str(&format!("user{i}@example.com,User {i}\n"));
    }
    let event = stack.upload("uploads/throttle.csv", csv).await;
    let prepared = stack.orchestrate(event).await;
    let job_id = JobId::new(&prepared[0].job_id);
    let started = Instant::now();
    stack.run_workers(workers, &job_id).await;
    let seconds = started.elapsed().as_secs_f64();
    let job = stack.job(&job_id).await;
    assert_eq!(job.processed, rows, "every record imported: {job:?}");
    let target = stack.resources.target_table.clone();
    let state = stack.resources.state_table.clone();
    let windows_pk = format!("J#{job_id}#W#");
    ledger.with(|t| {
        let mut windows = BTreeMap::new();
        for (ms, table, units) in &t.timeline {
            if *table == target {
                *windows.entry(ms.div_euclid(1000)).or_default() += units;
            }
        }
        let reservations = t
            .item_writes
            .iter()
            .filter(|(k, _)| k.0 == state && k.1.starts_with(&windows_pk))
            .map(|(_, n)| n)
            .sum();
        Run {
            records: job.processed,
            batches: job.total_batches,
            seconds,
            windows,
            reservations,
        }
    })
}

/// The windows between the first and the last, which are partly idle.
fn full_windows(run: &Run) -> Vec<f64> {
    let n = run.windows.len();
    run.windows
        .values()
        .copied()
        .skip(1)
        .take(n.saturating_sub(2))
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows = env_number("THROTTLE_ROWS", 6_000);
    let cap = env_number("THROTTLE_CAP", 200);
    let workers = env_number("THROTTLE_WORKERS", 8) as usize;
    let batch_size = env_number("THROTTLE_BATCH_SIZE", 100);
    let ledger = Ledger::default();
    let clients = integration_tests::ledger_clients(&ledger).await;

    let free = run(&clients, &ledger, rows, batch_size, workers, None).await;
    let free_units: f64 = free.windows.values().sum();
    println!(
        "uncapped: {} records, {} batches of {batch_size}, {workers} workers: {:.1} s, {:.0} write units/s into the target ({:.0} units in all)",
        free.records,
        free.batches,
        free.seconds,
        free_units / free.seconds,
        free_units
    );
    let peak = free.windows.values().copied().fold(0.0, f64::max);
    println!("uncapped busiest second: {peak:.0} write units");

    let capped = run(&clients, &ledger, rows, batch_size, workers, Some(cap)).await;
    let units: f64 = capped.windows.values().sum();
    let full = full_windows(&capped);
    let within = full
        .iter()
        .filter(|&&u| (u - cap as f64).abs() <= cap as f64 * 0.1)
        .count();
    let over = full.iter().filter(|&&u| u > cap as f64 * 1.1).count();
    let mean = full.iter().sum::<f64>() / full.len().max(1) as f64;
    let (min, max) = full
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &u| (lo.min(u), hi.max(u)));
    println!(
        "capped at {cap} write units/s: {} records in {:.1} s, {:.0} write units/s overall ({units:.0} units)",
        capped.records,
        capped.seconds,
        units / capped.seconds
    );
    let per_window: Vec<String> = capped.windows.values().map(|u| format!("{u:.0}")).collect();
    println!(
        "write units per window (each wall-clock second, first and last partial): {}",
        per_window.join(" ")
    );
    println!(
        "full windows: {}, mean {mean:.1} ({:.1}% of the cap), min {min:.0}, max {max:.0}; {within} of {} within 10% of the cap, {over} above it by more",
        full.len(),
        mean / cap as f64 * 100.0,
        full.len()
    );
    println!(
        "cost of the cap: {} reservation requests (refused ones included): {:.2} a batch, {:.3} a record, {:.1} a second",
        capped.reservations,
        capped.reservations as f64 / capped.batches as f64,
        capped.reservations as f64 / capped.records as f64,
        capped.reservations as f64 / capped.seconds
    );
    Ok(())
}
