//! Flat memory, shown: the orchestrator alone prepares a large file (1 GiB
//! in `make bench-scale`) against the emulator, streaming it from S3; prints
//! records and megabytes a second and this process's peak resident memory.
//!
//!     make bench-scale             (SCALE_BENCH_MB, default 1024)
//!     scale-bench FILE.csv         (the demo's definition, examples/users.json)

use aws_sdk_s3::primitives::ByteStream;
use bulk_import::local::s3_put_event;
use integration_tests::Stack;
use std::time::Instant;

/// Peak resident set size of this process, from /proc (Linux).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The orchestrator's allocator, so that memory and speed are its own.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let file = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: scale-bench FILE.csv"))?;
    let size = std::fs::metadata(&file)?.len();
    let definition = std::fs::read_to_string("examples/users.json")?;
    let stack = Stack::new(&definition).await;
    let key = "uploads/scale.csv";
    // Streamed from disk: this process never holds the file.
    let out = stack
        .clients
        .s3
        .put_object()
        .bucket(&stack.resources.bucket)
        .key(key)
        .body(ByteStream::from_path(&file).await?)
        .send()
        .await?;
    let event = s3_put_event(
        &stack.resources.bucket,
        key,
        out.e_tag().unwrap_or_default(),
        out.version_id(),
        size as i64,
    );
    let before = peak_rss_mib().unwrap_or(0.0);
    let started = Instant::now();
    let prepared = stack.orchestrate(event).await;
    let took = started.elapsed().as_secs_f64();
    let p = &prepared[0];
    anyhow::ensure!(p.outcome == "prepared", "prepare ended {}", p.outcome);
    println!(
        "prepared {file}: {:.0} MiB, {} records, {} batches in {took:.1} s: {:.0} records/s, {:.1} MB/s",
        size as f64 / 1048576.0,
        p.total_records,
        p.total_batches,
        p.total_records as f64 / took,
        size as f64 / 1e6 / took
    );
    println!(
        "peak resident memory: {:.1} MiB ({before:.1} MiB after the upload, before prepare)",
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    Ok(())
}
