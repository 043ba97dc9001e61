//! Resuming a prepare through S3: a resumed run reads the object's pinned
//! version from its checkpoint with a ranged GET, and cuts exactly the
//! batches of an uninterrupted run.

use async_trait::async_trait;
use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
use bulk_import::aws::Clients;
use bulk_import::events::MemoryEvents;
use bulk_import::job::{SourceRef, StagedRecord};
use bulk_import::objects::{
    ByteRange, ObjectBody, ObjectError, ObjectSource, ObjectVersions, S3Objects,
};
use bulk_import::prepare::{PrepareOutcome, PrepareSettings, Preparer};
use bulk_import::queue::MemoryQueue;
use bulk_import::report::MemoryReports;
use bulk_import::store::dynamodb::DynamoStore;
use bulk_import::store::ClaimStore;
use bulk_import::Definition;
use integration_tests::{clients, fresh_store, unique};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

async fn bucket(clients: &Clients, versioned: bool) -> String {
    let bucket = unique("resume");
    clients
        .s3
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    if versioned {
        let enabled = VersioningConfiguration::builder()
            .status(BucketVersioningStatus::Enabled)
            .build();
        clients
            .s3
            .put_bucket_versioning()
            .bucket(&bucket)
            .versioning_configuration(enabled)
            .send()
            .await
            .expect("enable versioning");
    }
    bucket
}

/// Uploads `body` and names the version written (its id, or its ETag and
/// Last-Modified in an unversioned bucket), as the orchestrator does.
async fn upload(clients: &Clients, bucket: &str, key: &str, body: &[u8]) -> SourceRef {
    let out = clients
        .s3
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(body.to_vec().into())
        .send()
        .await
        .expect("put object");
    let version = match out.version_id() {
        Some(id) => id.to_owned(),
        None => S3Objects::new(clients.s3.clone())
            .current_version(bucket, key)
            .await
            .expect("head object")
            .expect("the object just written"),
    };
    SourceRef {
        bucket: bucket.into(),
        key: key.into(),
        version,
    }
}

async fn read(
    objects: &dyn ObjectSource,
    source: &SourceRef,
    range: ByteRange,
) -> Result<String, ObjectError> {
    let mut text = String::new();
    let mut reader = objects.open_range(source, range).await?.reader;
    reader.read_to_string(&mut text).await.expect("read body");
    Ok(text)
}

#[tokio::test]
async fn a_range_of_an_s3_object_is_read_from_the_version_the_job_names() {
    let clients = clients().await;
    let objects = S3Objects::new(clients.s3.clone());

    let versioned = bucket(&clients, true).await;
    let v1 = upload(&clients, &versioned, "k.csv", b"0123456789").await;
    let v2 = upload(&clients, &versioned, "k.csv", b"abcdefghij").await;
    assert_eq!(
        read(&objects, &v1, ByteRange::from(4)).await.unwrap(),
        "456789"
    );
    assert_eq!(
        read(&objects, &v1, ByteRange::first(3)).await.unwrap(),
        "012"
    );
    assert_eq!(
        read(&objects, &v2, ByteRange::from(7)).await.unwrap(),
        "hij"
    );
    assert!(matches!(
        read(&objects, &v1, ByteRange::from(11)).await,
        Err(ObjectError::RangeNotSatisfiable(_))
    ));

    let plain = bucket(&clients, false).await;
    let first = upload(&clients, &plain, "k.csv", b"0123456789").await;
    assert_eq!(
        read(&objects, &first, ByteRange::from(8)).await.unwrap(),
        "89"
    );
    upload(&clients, &plain, "k.csv", b"replaced!!").await;
    assert!(
        matches!(
            read(&objects, &first, ByteRange::from(8)).await,
            Err(ObjectError::NotFound(_))
        ),
        "a replaced object is not read under the old ETag"
    );
    // The same bytes uploaded again: a read pins the bytes (If-Match), so
    // the first upload's version reads them as well as the new one's.
    let again = upload(&clients, &plain, "k.csv", b"0123456789").await;
    assert_eq!(
        read(&objects, &first, ByteRange::from(8)).await.unwrap(),
        "89"
    );
    assert_eq!(
        read(&objects, &again, ByteRange::from(8)).await.unwrap(),
        "89"
    );
}

/// S3 objects that count the bytes their bodies deliver.
struct Counted {
    inner: S3Objects,
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
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let n = (buf.filled().len() - before) as u64;
        self.served.fetch_add(n, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl Counted {
    fn metered(&self, body: ObjectBody) -> ObjectBody {
        ObjectBody {
            reader: Box::new(Metered {
                inner: body.reader,
                served: self.served.clone(),
            }),
            ..body
        }
    }
}

#[async_trait]
impl ObjectSource for Counted {
    async fn open(&self, source: &SourceRef) -> Result<ObjectBody, ObjectError> {
        Ok(self.metered(self.inner.open(source).await?))
    }

    async fn open_range(
        &self,
        source: &SourceRef,
        range: ByteRange,
    ) -> Result<ObjectBody, ObjectError> {
        Ok(self.metered(self.inner.open_range(source, range).await?))
    }
}

const DEFINITION: &str = r#"{
  "fields": [
    {"name": "email", "type": "string"},
    {"name": "note", "type": "string"}
  ],
  "batchSize": 1000
}"#;

/// A resumed run's reader asks the body for up to its parser's buffer (64
/// KiB) ahead of the record it stops at; a little more for slack.
const READ_AHEAD: u64 = 96 * 1024;

/// 40,000 rows in 40 batches, every fifth note quoted across two lines.
fn csv() -> Vec<u8> {
    let mut text = String::from("\u{feff}email,note\r\n");
    for i in 0..40_000 {
        let note = if i % 5 == 0 {
            format!("\"first line {i},\nsecond line\"")
        } else {
            format!("note {i}")
        };
        text.push_str(&format!("user{i}@example.com,{note}\r\n"));
    }
    text.into_bytes()
}

/// Prepares `source` into a fresh table, run after run until prepared;
/// returns the batches, the hand-offs and the bytes read from S3.
async fn prepare(
    clients: &Clients,
    source: &SourceRef,
    settings: &PrepareSettings,
) -> (Vec<Vec<StagedRecord>>, usize, u64) {
    let definition = Definition::from_json(DEFINITION, "test").expect("definition");
    let store: DynamoStore = fresh_store().await;
    let objects = Counted {
        inner: S3Objects::new(clients.s3.clone()),
        served: Arc::default(),
    };
    let (queue, events, reports) = (
        MemoryQueue::default(),
        MemoryEvents::default(),
        MemoryReports::default(),
    );
    let preparer = Preparer {
        store: &store,
        objects: &objects,
        queue: &queue,
        events: &events,
        reports: &reports,
        metrics: &bulk_import::metrics::NoMetrics,
        definition: &definition,
        settings,
        clock: &bulk_import::clock::Clock::system(),
        processors: None,
    };
    let mut handoffs = 0;
    let job = loop {
        let owner = format!("orchestrator {handoffs}");
        match preparer.run(source, &owner).await.expect("prepare") {
            PrepareOutcome::HandedOff(_) => handoffs += 1,
            PrepareOutcome::Prepared(job) => break job,
            other => panic!("expected a hand-off or the end, got {other:?}"),
        }
        assert!(handoffs < 100, "the prepare never finishes");
    };
    let mut batches = Vec::new();
    for index in 0..job.total_batches {
        batches.push(store.load_records(&job.id, index).await.expect("load"));
    }
    (batches, handoffs, objects.served.load(Ordering::Relaxed))
}

#[tokio::test]
async fn a_prepare_resumed_with_ranged_gets_cuts_the_batches_of_one_run() {
    let clients = clients().await;
    let bytes = csv();
    let bucket = bucket(&clients, true).await;
    let source = upload(&clients, &bucket, "users.csv", &bytes).await;

    let (whole, handoffs, _) = prepare(&clients, &source, &PrepareSettings::default()).await;
    assert_eq!((whole.len(), handoffs), (40, 0));
    let settings = PrepareSettings {
        handoff_after_batches: Some(7),
        ..PrepareSettings::default()
    };
    let (resumed, handoffs, served) = prepare(&clients, &source, &settings).await;
    assert_eq!(handoffs, 5);
    assert!(resumed == whole, "the batches differ");
    // Each run reads on from where the last one stopped, give or take its
    // read-ahead; read from the start each time, it would be about 3.5
    // times the file.
    let size = bytes.len() as u64;
    println!(
        "{served} of {size} bytes read: {:.3}",
        served as f64 / size as f64
    );
    let runs = handoffs as u64 + 1;
    assert!(served <= size + runs * READ_AHEAD, "read {served} bytes");
}
