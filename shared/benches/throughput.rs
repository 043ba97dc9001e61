//! CPU cost of the hot paths, per record: streaming parse, validation, and
//! packing a batch for storage. Run with `cargo bench -p bulk-import`.

use bulk_import::job::StagedRecord;
use bulk_import::source::{OpenOptions, RecordReader};
use bulk_import::store::codec;
use bulk_import::Definition;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const DEFINITION: &str = include_str!("../../examples/users.json");
const ROWS: usize = 10_000;

fn sample_csv() -> Vec<u8> {
    let mut out = String::from("email,full name,age,plan,country,city,signup_date,score,active\n");
    for i in 0..ROWS {
        out.push_str(&format!(
            "katherine.johnson{i}@example.com,Katherine Johnson,{},team,US,San Francisco,2023-04-{:02},512.{},true\n",
            18 + i % 70,
            1 + i % 28,
            i % 10
        ));
    }
    out.into_bytes()
}

async fn parse(csv: Vec<u8>, def: &Definition) -> Vec<StagedRecord> {
    let mut reader = RecordReader::open(
        std::io::Cursor::new(csv),
        OpenOptions::new("users.csv"),
        def,
    )
    .await
    .unwrap();
    let mut records = Vec::with_capacity(ROWS);
    while let Some(r) = reader.next_record().await.unwrap() {
        records.push(r);
    }
    records
}

fn benches(c: &mut Criterion) {
    let def = Definition::from_json(DEFINITION, "examples/users.json").unwrap();
    let csv = sample_csv();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let records = rt.block_on(parse(csv.clone(), &def));
    let packed: usize = codec::pack(&records[..500]).iter().map(Vec::len).sum();
    let raw: usize = records[..500].iter().map(codec::encoded_len).sum();
    println!(
        "a 500-record batch packs {raw} bytes into {packed} ({:.2} bytes a record)",
        packed as f64 / 500.0
    );

    let mut group = c.benchmark_group("records");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("parse csv", |b| {
        b.iter_batched(
            || csv.clone(),
            |csv| rt.block_on(parse(csv, &def)),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("validate", |b| {
        b.iter(|| records.iter().filter(|r| def.validate(r).is_ok()).count())
    });
    group.bench_function("pack batches of 500", |b| {
        b.iter(|| {
            records
                .chunks(500)
                .map(|c| codec::pack(c).len())
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(throughput, benches);
criterion_main!(throughput);
