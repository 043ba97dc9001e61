//! The seed sweep: small worlds on the simulated AWS, every fault on, each
//! seed a different run; every invariant must hold in each. A failing seed
//! prints the command that replays it. `SIM_SEEDS` sets how many (200).

use bulk_import::sim::fleet::{self, FleetConfig};

#[test]
fn every_invariant_holds_in_small_worlds_under_faults() {
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sweep = fleet::sweep(1..1 + seeds, threads, FleetConfig::small);
    println!(
        "{} seeds in {:.1} s: {:.0} seeds a minute",
        sweep.seeds,
        sweep.wall.as_secs_f64(),
        sweep.seeds_per_minute()
    );
    let failed: Vec<String> = sweep
        .failures
        .iter()
        .map(|(seed, summary)| {
            format!("{summary}replay: make simulate ARGS=\"--small --seed {seed}\"\n")
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} seeds failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
