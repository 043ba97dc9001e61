//! The fleet simulator: the real orchestrator, worker and sweeper on a
//! simulated AWS, in virtual time. One run prints its figures and the
//! invariants it checked; `--seeds N` sweeps N seeds of the world and
//! prints the command that replays each failing one.

use bulk_import::sim::fleet::{self, FleetConfig};
use clap::Parser;
use std::process::ExitCode;

/// The deployed functions' allocator, and a faster one for the millions of
/// small allocations a simulated request makes.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug, Clone)]
#[command(about = "Runs the system on a simulated AWS, deterministically from a seed")]
struct Args {
    /// The seed of the run (the first of a sweep).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Sweep this many seeds from `--seed` on.
    #[arg(long)]
    seeds: Option<u64>,
    /// A small world with every fault on (the seed sweep's), instead of a
    /// deployed fleet: the flags below then change it.
    #[arg(long)]
    small: bool,
    /// Concurrent workers (the worker function's concurrency).
    #[arg(long)]
    workers: Option<u32>,
    /// Jobs, uploaded together.
    #[arg(long)]
    jobs: Option<u32>,
    /// Rows of each job's file.
    #[arg(long)]
    records: Option<u64>,
    #[arg(long)]
    batch_size: Option<u32>,
    /// Share of DynamoDB requests throttled beyond capacity.
    #[arg(long)]
    throttle: Option<f64>,
    /// Share of invocations that crash.
    #[arg(long)]
    crash: Option<f64>,
    /// Share of SQS receives (and S3 events) delivered twice.
    #[arg(long)]
    duplicate: Option<f64>,
    /// Share of batch-request items returned unprocessed.
    #[arg(long)]
    unprocessed: Option<f64>,
    /// Most an index read lags the table, in milliseconds.
    #[arg(long)]
    index_lag_ms: Option<u64>,
    /// Partitions of each table and index.
    #[arg(long)]
    partitions: Option<u32>,
    /// A claim's lease, in seconds (`LEASE_SECONDS` of the deployment).
    #[arg(long)]
    lease: Option<u64>,
    /// Seconds between the sweeper's scheduled passes (60 deployed).
    #[arg(long)]
    sweep_every: Option<u64>,
    /// Threads of a sweep.
    #[arg(long, default_value_t = std::thread::available_parallelism().map_or(1, |n| n.get()))]
    threads: usize,
}

impl Args {
    fn config(&self, seed: u64) -> FleetConfig {
        let mut c = if self.small {
            FleetConfig::small(seed)
        } else {
            FleetConfig::deployed(seed, 100, 1, 1_000_000)
        };
        c.sim.seed = seed;
        if let Some(v) = self.workers {
            c.workers = v;
        }
        if let Some(v) = self.jobs {
            c.jobs = v;
        }
        if let Some(v) = self.records {
            c.records = v;
        }
        if let Some(v) = self.batch_size {
            c.batch_size = v;
        }
        let f = &mut c.sim.faults;
        f.throttle = self.throttle.unwrap_or(f.throttle);
        f.crash = self.crash.unwrap_or(f.crash);
        f.duplicate = self.duplicate.unwrap_or(f.duplicate);
        f.unprocessed = self.unprocessed.unwrap_or(f.unprocessed);
        f.index_lag_ms = self.index_lag_ms.unwrap_or(f.index_lag_ms);
        if let Some(v) = self.partitions {
            c.sim.partitions = v;
        }
        if let Some(v) = self.lease {
            c.lease = std::time::Duration::from_secs(v);
        }
        if let Some(v) = self.sweep_every {
            c.sweep_every = std::time::Duration::from_secs(v.max(1));
        }
        c
    }

    /// The command that replays `seed` of this run.
    fn replay(&self, seed: u64) -> String {
        let mut kept = Vec::new();
        let mut skip = false;
        for a in std::env::args().skip(1) {
            if skip {
                skip = false;
                continue;
            }
            if a == "--seed" || a == "--seeds" || a == "--threads" {
                skip = true;
                continue;
            }
            if a.starts_with("--seed=") || a.starts_with("--seeds=") || a.starts_with("--threads=")
            {
                continue;
            }
            kept.push(a);
        }
        kept.push(format!("--seed {seed}"));
        format!("make simulate ARGS=\"{}\"", kept.join(" "))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.seeds {
        None => {
            let report = fleet::run(args.config(args.seed));
            print!("{}", report.summary());
            if report.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                println!("replay: {}", args.replay(args.seed));
                ExitCode::FAILURE
            }
        }
        Some(n) => {
            let sweep = fleet::sweep(args.seed..args.seed + n, args.threads, |s| args.config(s));
            for (seed, summary) in &sweep.failures {
                println!(
                    "seed {seed} failed:\n{summary}replay: {}\n",
                    args.replay(*seed)
                );
            }
            println!(
                "{} seeds in {:.1} s on {} threads: {:.0} seeds a minute, {:.0} simulated minutes; {} failed",
                sweep.seeds,
                sweep.wall.as_secs_f64(),
                args.threads,
                sweep.seeds_per_minute(),
                sweep.simulated.as_secs_f64() / 60.0,
                sweep.failures.len()
            );
            if sweep.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
