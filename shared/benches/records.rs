//! CPU cost of the hot paths, in MB/s of CSV: streaming parse, validation,
//! packing batches for storage, and the three together, beside a bare
//! `csv-core` scan of the same bytes as the ceiling. The input is the demo's
//! rows (`bulkimport generate`). Run with `make bench-cpu`.
//!
//! Times are the benchmark thread's CPU time, not the wall clock: that is
//! the cost in question, and it is less disturbed by other work on a shared
//! machine (though a busy one still slows it through caches).

use bulk_import::job::StagedRecord;
use bulk_import::source::{OpenOptions, RecordReader};
use bulk_import::store::codec;
use bulk_import::Definition;
use bytes::Bytes;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use csv_core::ReadRecordResult;
use std::hint::black_box;
use std::time::Duration;

/// The allocator the binaries use (`functions/*`, `cli`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The generator behind `bulkimport generate`, so the rows are the demo's.
#[allow(dead_code, unused_imports)]
#[path = "../../cli/src/generate.rs"]
mod generate;

const DEFINITION: &str = include_str!("../../examples/users.json");
const ROWS: u64 = 20_000;
/// `bulkimport generate`'s defaults.
const INVALID_EVERY: u64 = 2_000;
const SEED: u64 = 42;
const BATCH: usize = 500;

fn sample_csv() -> Bytes {
    let mut out = Vec::new();
    generate::users_csv(&mut out, ROWS, INVALID_EVERY, SEED).expect("writing to a Vec");
    out.into()
}

/// Every record of the file through csv-core alone, fields copied out as
/// any parser must: as fast as CSV can be split on one core.
fn scan(mut input: &[u8]) -> usize {
    let mut rdr = csv_core::Reader::new();
    let mut out = vec![0u8; 64 * 1024];
    let mut ends = vec![0usize; 1024];
    let mut records = 0;
    loop {
        let (result, read, _, _) = rdr.read_record(input, &mut out, &mut ends);
        input = &input[read..];
        match result {
            ReadRecordResult::Record => records += 1,
            ReadRecordResult::InputEmpty => {}
            ReadRecordResult::End => return records,
            ReadRecordResult::OutputFull | ReadRecordResult::OutputEndsFull => {
                panic!("a demo row outgrew the scan buffers")
            }
        }
    }
}

async fn open(csv: Bytes, def: &Definition) -> RecordReader {
    RecordReader::open(
        std::io::Cursor::new(csv),
        OpenOptions::new("users.csv"),
        def,
    )
    .await
    .expect("the sample opens")
}

/// Every record, handed on in batches as prepare does (it drops a batch's
/// records once they are written), so that the figure is what parsing costs
/// rather than what holding a whole file of records in memory does.
async fn parse(csv: Bytes, def: &Definition) -> usize {
    let mut reader = open(csv, def).await;
    let mut batch = Vec::with_capacity(BATCH);
    let mut records = 0;
    while let Some(r) = reader.next_record().await.expect("the sample parses") {
        batch.push(r);
        if batch.len() == BATCH {
            records += batch.len();
            batch.clear();
        }
    }
    records + batch.len()
}

async fn parse_all(csv: Bytes, def: &Definition) -> Vec<StagedRecord> {
    let mut reader = open(csv, def).await;
    let mut records = Vec::with_capacity(ROWS as usize);
    while let Some(r) = reader.next_record().await.expect("the sample parses") {
        records.push(r);
    }
    records
}

/// Parse, validate every record and pack batches as they fill: the CPU a
/// record costs from the file to its stored form.
async fn all_three(csv: Bytes, def: &Definition) -> (usize, usize) {
    let mut reader = open(csv, def).await;
    let mut batch = Vec::with_capacity(BATCH);
    let (mut valid, mut packed) = (0, 0);
    while let Some(r) = reader.next_record().await.expect("the sample parses") {
        valid += usize::from(def.validate(&r).is_ok());
        batch.push(r);
        if batch.len() == BATCH {
            packed += codec::pack(&batch).len();
            batch.clear();
        }
    }
    if !batch.is_empty() {
        packed += codec::pack(&batch).len();
    }
    (valid, packed)
}

/// The calling thread's CPU time in nanoseconds; the runtime is
/// current-thread, so that is all the work measured.
struct CpuTime;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for CpuTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns() - start
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, value: &u64) -> f64 {
        *value as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Nanoseconds, as the wall clock's: its units and throughputs apply.
        static WALL: WallTime = WallTime;
        WALL.formatter()
    }
}

fn benches(c: &mut Criterion<CpuTime>) {
    let def = Definition::from_json(DEFINITION, "examples/users.json").expect("the example loads");
    let csv = sample_csv();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let records = rt.block_on(parse_all(csv.clone(), &def));
    let packed: usize = codec::pack(&records[..BATCH]).iter().map(Vec::len).sum();
    let raw: usize = records[..BATCH].iter().map(codec::encoded_len).sum();
    println!(
        "{} rows, {} bytes ({:.1} a row); a batch of {BATCH} packs {raw} bytes into {packed} ({:.1} a record)",
        records.len(),
        csv.len(),
        csv.len() as f64 / records.len() as f64,
        packed as f64 / BATCH as f64
    );

    let mut group = c.benchmark_group("records");
    group.throughput(Throughput::BytesDecimal(csv.len() as u64));
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("csv-core scan (ceiling)", |b| {
        b.iter(|| scan(black_box(&csv)))
    });
    group.bench_function("parse", |b| {
        b.iter(|| rt.block_on(parse(csv.clone(), &def)))
    });
    group.bench_function("validate", |b| {
        b.iter(|| records.iter().filter(|r| def.validate(r).is_ok()).count())
    });
    group.bench_function("pack", |b| {
        b.iter(|| {
            records
                .chunks(BATCH)
                .map(|c| codec::pack(c).len())
                .sum::<usize>()
        })
    });
    group.bench_function("parse+validate+pack", |b| {
        b.iter(|| rt.block_on(all_three(csv.clone(), &def)))
    });
    group.finish();
}

criterion_group! {
    name = records;
    config = Criterion::default().with_measurement(CpuTime);
    targets = benches
}
criterion_main!(records);
