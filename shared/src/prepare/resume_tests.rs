//! A prepare handed over again and again ends with exactly the batches of
//! one uninterrupted run, and (uncompressed input) reads the file about
//! once in all.

use super::resume::FAST_FORWARD_STEP;
use super::*;
use crate::events::MemoryEvents;
use crate::job::now_ms;
use crate::objects::{ByteRange, MemoryObjects, ObjectBody};
use crate::queue::MemoryQueue;
use crate::report::MemoryReports;
use crate::store::memory::MemoryStore;
use crate::store::{ClaimStore, PrepareStore};
use async_trait::async_trait;
use flate2::write::GzEncoder;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

const ROWS: usize = 40_000;
const BATCH: usize = 500;
/// 80 batches: six hand-offs.
const HANDOFF_AFTER: u64 = 13;

/// At most this much per read, as a network stream delivers it: what a
/// reader dropped at a hand-off has then not been fetched in full.
const PIECE: usize = 8 * 1024;

/// Memory objects that count the bytes they serve.
#[derive(Default)]
struct Counted {
    objects: MemoryObjects,
    served: Arc<AtomicU64>,
}

struct Metered {
    inner: Box<dyn AsyncRead + Send + Unpin>,
    served: Arc<AtomicU64>,
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut piece = [0; PIECE];
        let max = buf.remaining().min(PIECE);
        let mut part = ReadBuf::new(&mut piece[..max]);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut part))?;
        buf.put_slice(part.filled());
        let n = part.filled().len() as u64;
        self.served.fetch_add(n, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl ObjectSource for Counted {
    async fn open(&self, source: &SourceRef) -> Result<ObjectBody, ObjectError> {
        self.open_range(source, ByteRange::from(0)).await
    }

    async fn open_range(
        &self,
        source: &SourceRef,
        range: ByteRange,
    ) -> Result<ObjectBody, ObjectError> {
        let body = self.objects.open_range(source, range).await?;
        Ok(ObjectBody {
            reader: Box::new(Metered {
                inner: body.reader,
                served: self.served.clone(),
            }),
            ..body
        })
    }
}

/// What preparing a file took and left.
struct Prepared {
    handoffs: usize,
    batches: Vec<Vec<StagedRecord>>,
    /// Each batch's next in its key partition, and whether it waits.
    chains: Vec<(Option<u64>, bool)>,
    total_records: u64,
    bytes_served: u64,
    renewals: u64,
}

fn definition(format: &str) -> Definition {
    let json = format!(
        r#"{{"fields": [{{"name": "email", "type": "string"}}, {{"name": "name", "type": "string"}},
            {{"name": "note", "type": "string"}}], "batchSize": {BATCH}, "format": "{format}"}}"#
    );
    Definition::from_json(&json, "t").unwrap()
}

/// One object in memory and the ports a prepare of it uses.
struct Fixture {
    objects: Counted,
    store: MemoryStore,
    queue: MemoryQueue,
    events: MemoryEvents,
    reports: MemoryReports,
    source: SourceRef,
}

impl Fixture {
    fn new(key: &str, bytes: &[u8]) -> Self {
        let objects = Counted::default();
        objects.objects.put("b", key, bytes.to_vec());
        Fixture {
            objects,
            store: MemoryStore::new(),
            queue: MemoryQueue::default(),
            events: MemoryEvents::default(),
            reports: MemoryReports::default(),
            source: source(key),
        }
    }

    async fn run(
        &self,
        def: &Definition,
        settings: &PrepareSettings,
        owner: &str,
        deadline: Option<Instant>,
    ) -> PrepareOutcome {
        let preparer = Preparer {
            store: &self.store,
            objects: &self.objects,
            queue: &self.queue,
            events: &self.events,
            reports: &self.reports,
            metrics: &crate::metrics::NoMetrics,
            definition: def,
            settings,
            clock: &Clock::system(),
            processors: None,
        };
        preparer
            .run_until(&self.source, owner, deadline)
            .await
            .unwrap()
    }

    /// Runs prepare, one run after another (each a new owner), until the
    /// job is prepared.
    async fn run_to_the_end(&self, def: &Definition, settings: &PrepareSettings) -> Prepared {
        let mut handoffs = 0;
        let job = loop {
            let owner = format!("run {handoffs}");
            match self.run(def, settings, &owner, None).await {
                PrepareOutcome::HandedOff(_) => handoffs += 1,
                PrepareOutcome::Prepared(job) => break job,
                other => panic!("expected a hand-off or the end, got {other:?}"),
            }
            assert!(handoffs < 1000, "the prepare never finishes");
        };
        let mut batches = Vec::new();
        for index in 0..job.total_batches {
            batches.push(self.store.load_records(&job.id, index).await.unwrap());
        }
        let chains = (0..job.total_batches)
            .map(|index| self.store.chain_of(&job.id, index))
            .collect();
        Prepared {
            handoffs,
            batches,
            chains,
            total_records: job.total_records,
            bytes_served: self.objects.served.load(Ordering::Relaxed),
            renewals: self.store.prepare_renewals(&job.id),
        }
    }
}

async fn prepare(key: &str, bytes: &[u8], def: &Definition, settings: PrepareSettings) -> Prepared {
    Fixture::new(key, bytes)
        .run_to_the_end(def, &settings)
        .await
}

fn source(key: &str) -> SourceRef {
    SourceRef {
        bucket: "b".into(),
        key: key.into(),
        version: "v".into(),
    }
}

fn handing_off() -> PrepareSettings {
    PrepareSettings {
        handoff_after_batches: Some(HANDOFF_AFTER),
        ..PrepareSettings::default()
    }
}

/// Prepares the file uninterrupted and over hand-offs, and checks that the
/// batches are the same, record for record. Returns the interrupted run.
async fn same_batches_over_handoffs(key: &str, bytes: &[u8], def: &Definition) -> Prepared {
    let whole = prepare(key, bytes, def, PrepareSettings::default()).await;
    assert_eq!(whole.handoffs, 0);
    let resumed = prepare(key, bytes, def, handing_off()).await;
    assert!(resumed.handoffs >= 5, "{} hand-offs", resumed.handoffs);
    assert_eq!(resumed.batches.len(), whole.batches.len());
    for (index, (a, b)) in resumed.batches.iter().zip(&whole.batches).enumerate() {
        assert!(a == b, "batch {index} differs");
    }
    assert_eq!(resumed.chains, whole.chains, "chained as in one run");
    assert_eq!(resumed.total_records, whole.total_records);
    resumed
}

fn note(i: usize) -> String {
    match i % 7 {
        0 => "\"two lines,\nthe second \"\"quoted\"\"\"".to_owned(),
        3 => String::new(),
        _ => format!("plain {i}"),
    }
}

fn csv(rows: usize, terminator: &str) -> Vec<u8> {
    let mut text = format!("Email,Name,Note{terminator}");
    for i in 0..rows {
        let row = format!("user{i}@example.com,Name {i},{}", note(i));
        text.push_str(&row);
        text.push_str(terminator);
        if i % 1000 == 999 {
            text.push_str(terminator);
        }
    }
    text.into_bytes()
}

fn assert_read_about_once(prepared: &Prepared, size: usize) {
    let ratio = prepared.bytes_served as f64 / size as f64;
    println!(
        "{} hand-offs, {} of {size} bytes served: {ratio:.4}",
        prepared.handoffs, prepared.bytes_served
    );
    assert!(ratio <= 1.05, "read {ratio:.3} times the file");
}

#[tokio::test]
async fn a_csv_with_quoted_line_breaks_prepared_over_hand_offs_is_cut_as_in_one_run_reading_it_about_once(
) {
    let bytes = csv(ROWS, "\n");
    let prepared = same_batches_over_handoffs("k.csv", &bytes, &definition("csv")).await;
    assert_read_about_once(&prepared, bytes.len());
}

#[tokio::test]
async fn a_file_cut_into_key_partitions_over_hand_offs_is_cut_and_chained_as_in_one_run() {
    let bytes = csv(ROWS, "\n");
    // Segments of 3,200 rows: a hand-off at most every segment.
    let json = r#"{"fields": [{"name": "email", "type": "email"}, {"name": "name", "type": "string"},
            {"name": "note", "type": "string"}], "batchSize": 100, "partitionBy": ["email"],
            "partitions": 8}"#;
    let def = Definition::from_json(json, "t").unwrap();
    let prepared = same_batches_over_handoffs("k.csv", &bytes, &def).await;
    println!(
        "{} hand-offs, {} batches, {:.2} times the file read",
        prepared.handoffs,
        prepared.batches.len(),
        prepared.bytes_served as f64 / bytes.len() as f64
    );
    // Every row once, each batch of one partition, each partition a chain
    // of batches in file order that only its head does not wait on.
    let rows: usize = prepared.batches.iter().map(Vec::len).sum();
    assert_eq!(rows, ROWS);
    let partition = |batch: &[StagedRecord]| {
        let parts: std::collections::HashSet<u32> =
            batch.iter().filter_map(|r| def.partition_of(r)).collect();
        assert_eq!(parts.len(), 1, "a batch holds one partition");
        parts.into_iter().next().unwrap()
    };
    let mut heads = std::collections::HashSet::new();
    for (index, batch) in prepared.batches.iter().enumerate() {
        let (next, waits) = prepared.chains[index];
        let part = partition(batch);
        if !waits {
            assert!(heads.insert(part), "one head per partition");
        }
        if let Some(next) = next {
            let following = &prepared.batches[next as usize];
            assert!(next as usize > index);
            assert_eq!(partition(following), part);
            assert!(prepared.chains[next as usize].1, "batch {next} waits");
            assert!(batch.last().unwrap().line < following[0].line, "file order");
        }
    }
    assert_eq!(heads.len(), 8);
    let linked = prepared
        .chains
        .iter()
        .filter(|(next, _)| next.is_some())
        .count();
    assert_eq!(
        linked,
        prepared.batches.len() - 8,
        "every batch but the heads is linked"
    );
}

/// Rows of 20 KB over 64 partitions, 1,000 to a batch: no partition fills
/// a batch, and the file (40 MB) is smaller than a segment's rows, so only
/// the cap on open bytes (16 MiB) cuts batches before the end.
#[tokio::test]
async fn open_partition_batches_are_cut_early_when_they_hold_too_many_bytes() {
    let note = "x".repeat(20_000);
    let mut text = String::from("Email,Name,Note\n");
    for i in 0..2_000 {
        text.push_str(&format!("user{i}@example.com,Name {i},{note}\n"));
    }
    let json = r#"{"fields": [{"name": "email", "type": "email"}, {"name": "name", "type": "string"},
            {"name": "note", "type": "string"}], "batchSize": 1000, "partitionBy": ["email"],
            "partitions": 64}"#;
    let def = Definition::from_json(json, "t").unwrap();
    let prepared = prepare("big.csv", text.as_bytes(), &def, PrepareSettings::default()).await;
    let rows: usize = prepared.batches.iter().map(Vec::len).sum();
    assert_eq!(rows, 2_000);
    assert!(
        prepared.batches.len() > 2 * 64,
        "cut at least twice a partition before the end: {} batches",
        prepared.batches.len()
    );
    let biggest = prepared.batches.iter().map(Vec::len).max().unwrap();
    assert!(
        biggest < 2_000 / 64,
        "no batch holds a partition's whole share: {biggest}"
    );
}

#[tokio::test]
async fn a_csv_with_a_bom_and_crlf_prepared_over_hand_offs_is_cut_as_in_one_run_reading_it_about_once(
) {
    let bytes = [&b"\xEF\xBB\xBF"[..], &csv(ROWS, "\r\n")].concat();
    let prepared = same_batches_over_handoffs("k.csv", &bytes, &definition("csv")).await;
    assert_read_about_once(&prepared, bytes.len());
}

#[tokio::test]
async fn ndjson_prepared_over_hand_offs_is_cut_as_in_one_run_reading_it_about_once() {
    let mut text = String::new();
    for i in 0..ROWS {
        let object = serde_json::json!({"email": format!("user{i}@example.com"), "name": i, "note": note(i)});
        text.push_str(&object.to_string());
        text.push_str(if i % 5 == 0 { "\r\n\n" } else { "\n" });
        if i % 2000 == 1 {
            text.push_str("not an object\n");
        }
    }
    let bytes = text.into_bytes();
    let prepared = same_batches_over_handoffs("k.ndjson", &bytes, &definition("ndjson")).await;
    assert_read_about_once(&prepared, bytes.len());
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    // Two members: the seam must not matter either.
    for part in [&bytes[..bytes.len() / 3], &bytes[bytes.len() / 3..]] {
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(part).unwrap();
        out.extend(enc.finish().unwrap());
    }
    out
}

#[tokio::test]
async fn gzip_prepared_over_hand_offs_is_cut_as_in_one_run_and_keeps_its_lease_while_skipping() {
    let plain = csv(ROWS, "\n");
    let first = HANDOFF_AFTER as usize * BATCH * plain.len() / ROWS;
    assert!(
        first as u64 > FAST_FORWARD_STEP,
        "every resumed run skips in steps"
    );
    let def = definition("csv");
    let whole = prepare("k.csv.gz", &gzip(&plain), &def, PrepareSettings::default()).await;
    // A lease of zero makes every step between skips renew it.
    let settings = PrepareSettings {
        lease_ms: 0,
        ..handing_off()
    };
    let resumed = prepare("k.csv.gz", &gzip(&plain), &def, settings).await;
    assert!(resumed.handoffs >= 5, "{} hand-offs", resumed.handoffs);
    assert!(resumed.batches == whole.batches, "the batches differ");
    assert!(
        resumed.renewals >= resumed.handoffs as u64,
        "{} renewals over {} resumed runs",
        resumed.renewals,
        resumed.handoffs
    );
    assert_eq!(whole.renewals, 0);
}

#[tokio::test]
async fn a_gzip_prepare_whose_deadline_nears_while_skipping_hands_over_where_it_was_given_the_job()
{
    let bytes = gzip(&csv(ROWS, "\n"));
    let def = definition("csv");
    let fixture = Fixture::new("k.csv.gz", &bytes);
    let first = fixture.run(&def, &handing_off(), "first", None).await;
    let PrepareOutcome::HandedOff(before) = first else {
        panic!("expected a hand-off, got {first:?}")
    };
    assert!(before.prepare_checkpoint.is_some());
    let late = fixture
        .run(&def, &handing_off(), "late", Some(Instant::now()))
        .await;
    let PrepareOutcome::HandedOff(after) = late else {
        panic!("expected a hand-off, got {late:?}")
    };
    assert_eq!(
        (after.batches_ready, &after.prepare_checkpoint),
        (before.batches_ready, &before.prepare_checkpoint)
    );
    assert_eq!(
        after.prepare_lease_until_ms, 0,
        "released for the next owner"
    );
    let rest = fixture
        .run_to_the_end(&def, &PrepareSettings::default())
        .await;
    let whole = prepare("k.csv.gz", &bytes, &def, PrepareSettings::default()).await;
    assert!(rest.batches == whole.batches, "the batches differ");
}

#[tokio::test]
async fn a_prepare_without_a_readable_checkpoint_rereads_from_the_start_keeping_its_lease() {
    let bytes = csv(ROWS, "\n");
    let def = definition("csv");
    let fixture = Fixture::new("k.csv", &bytes);
    let first = fixture.run(&def, &handing_off(), "first", None).await;
    let PrepareOutcome::HandedOff(job) = first else {
        panic!("expected a hand-off, got {first:?}")
    };
    // As a job published by a version that wrote another checkpoint.
    let other = PrepareLease {
        owner: "other version".into(),
        lease_ms: 60_000,
    };
    let store = &fixture.store;
    store
        .acquire_prepare(&job.id, &other, now_ms())
        .await
        .unwrap();
    let ready = job.batches_ready;
    store
        .publish(&job.id, &other, ready, Some("{\"v\":9}"), now_ms())
        .await
        .unwrap();
    store.release_prepare(&job.id, &other).await.unwrap();

    let settings = PrepareSettings {
        lease_ms: 0,
        ..PrepareSettings::default()
    };
    let rest = fixture.run_to_the_end(&def, &settings).await;
    let whole = prepare("k.csv", &bytes, &def, PrepareSettings::default()).await;
    assert!(rest.batches == whole.batches, "the batches differ");
    assert!(
        rest.bytes_served > bytes.len() as u64,
        "read again from the start"
    );
    assert!(
        rest.renewals >= ready,
        "renewed while skipping published batches"
    );
}
