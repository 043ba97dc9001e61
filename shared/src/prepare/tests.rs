//! Prepare end to end on the in-memory backends: hand-offs, rejections
//! and aborts.

use super::*;
use crate::events::MemoryEvents;
use crate::job::{now_ms, FailedRecord, JobStatus};
use crate::objects::MemoryObjects;
use crate::queue::MemoryQueue;
use crate::report::MemoryReports;
use crate::store::memory::MemoryStore;
use crate::store::{BatchOutcome, BatchState, Claim, ClaimStore, PrepareStore};

/// The preparers' clock: these cases run in real time.
static SYSTEM: Clock = Clock::system();

#[tokio::test]
async fn an_orchestrator_near_its_deadline_hands_over_and_the_next_one_resumes_at_once() {
    let def = Definition::from_json(
        r#"{"fields": [{"name": "n", "type": "integer"}], "batchSize": 2}"#,
        "t",
    )
    .unwrap();
    let objects = MemoryObjects::default();
    objects.put("b", "k.csv", "n\n1\n2\n3\n4\n5\n");
    let (store, queue, events, reports) = (
        MemoryStore::new(),
        MemoryQueue::default(),
        MemoryEvents::default(),
        MemoryReports::default(),
    );
    let settings = PrepareSettings::default();
    let preparer = Preparer {
        store: &store,
        objects: &objects,
        queue: &queue,
        events: &events,
        reports: &reports,
        metrics: &crate::metrics::NoMetrics,
        definition: &def,
        settings: &settings,
        clock: &SYSTEM,
        processors: None,
    };
    let source = SourceRef {
        bucket: "b".into(),
        key: "k.csv".into(),
        version: "v".into(),
    };
    let soon = Instant::now() + Duration::from_secs(1);
    let PrepareOutcome::HandedOff(job) = preparer
        .run_until(&source, "first", Some(soon))
        .await
        .unwrap()
    else {
        panic!("expected a handoff")
    };
    assert_eq!((job.prepared, job.prepare_lease_until_ms), (false, 0));
    let PrepareOutcome::Prepared(job) = preparer.run(&source, "second").await.unwrap() else {
        panic!("the released prepare is resumed without waiting for the lease")
    };
    assert_eq!((job.total_records, job.total_batches), (5, 3));
}

#[tokio::test]
async fn a_job_rejected_during_prepare_reports_the_records_that_failed_before() {
    let def = Definition::from_json(
        r#"{"fields": [{"name": "n", "type": "integer"}], "batchSize": 2, "limits": {"maxRecords": 2}}"#,
        "t",
    )
    .unwrap();
    let objects = MemoryObjects::default();
    objects.put("b", "k.csv", "n\n1\nx\n3\n");
    let (store, queue, events, reports) = (
        MemoryStore::new(),
        MemoryQueue::default(),
        MemoryEvents::default(),
        MemoryReports::default(),
    );
    let source = SourceRef {
        bucket: "b".into(),
        key: "k.csv".into(),
        version: "v".into(),
    };
    // An orchestrator wrote the first batch, and a worker committed it
    // with a failed record, before the rest of the file was read.
    let lease = PrepareLease {
        owner: "orchestrator".into(),
        lease_ms: 60_000,
    };
    let CreateOutcome::Created(job) = store.create_job(&source, &lease, now_ms()).await.unwrap()
    else {
        panic!("a new job")
    };
    let staged = |line: u64, n: &str| StagedRecord {
        line,
        values: vec![Some(n.into())].into(),
        issue: None,
    };
    let records = [staged(2, "1"), staged(3, "x")];
    let batch = NewBatch {
        index: 0,
        records: &records,
        after: None,
    };
    store.write_batch(&job.id, batch, now_ms()).await.unwrap();
    store
        .publish(&job.id, &lease, 1, None, now_ms())
        .await
        .unwrap();
    let Claim::Batch(claim) = store
        .claim_batch(&job.id, "w", now_ms(), 60_000)
        .await
        .unwrap()
    else {
        panic!("the written batch is claimable")
    };
    let outcome = BatchOutcome {
        state: BatchState::Done,
        processed: 1,
        failed: vec![FailedRecord::invalid(
            3,
            vec![FieldIssue::new(Some("n"), Some("x"), "not an integer")],
        )],
        error: None,
        duplicates: 0,
    };
    store
        .commit_batch(&claim, &outcome, now_ms())
        .await
        .unwrap();

    // The same orchestrator reads on and finds the file over the limit.
    let settings = PrepareSettings::default();
    let preparer = Preparer {
        store: &store,
        objects: &objects,
        queue: &queue,
        events: &events,
        reports: &reports,
        metrics: &crate::metrics::NoMetrics,
        definition: &def,
        settings: &settings,
        clock: &SYSTEM,
        processors: None,
    };
    let PrepareOutcome::Rejected(job) = preparer.run(&source, "orchestrator").await.unwrap() else {
        panic!("the file is over the record limit")
    };
    assert_eq!((job.status, job.prepared), (JobStatus::Failed, false));
    let reports = reports.reports.lock().unwrap().clone();
    assert_eq!(job.report.as_deref(), Some(reports[0].0.as_str()));
    assert_eq!(reports[0].1, "n,line,field,reason\nx,3,n,not an integer\n");
}

/// Serves the object a few bytes a read and runs `then` once, after the
/// first `after` bytes: something that happens while prepare reads.
struct Interrupting {
    body: std::io::Cursor<Vec<u8>>,
    after: u64,
    then: Option<Box<dyn FnOnce() + Send + Unpin>>,
}

impl tokio::io::AsyncRead for Interrupting {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.body.position() >= self.after {
            if let Some(then) = self.then.take() {
                then();
            }
        }
        let mut small = [0u8; 4];
        let n = std::io::Read::read(&mut self.body, &mut small)?;
        buf.put_slice(&small[..n]);
        std::task::Poll::Ready(Ok(()))
    }
}

struct AbortingObjects {
    body: Vec<u8>,
    store: std::sync::Arc<MemoryStore>,
    job: crate::job::JobId,
}

#[async_trait::async_trait]
impl crate::objects::ObjectSource for AbortingObjects {
    async fn open(
        &self,
        _source: &SourceRef,
    ) -> Result<crate::objects::ObjectBody, crate::objects::ObjectError> {
        let (store, job) = (self.store.clone(), self.job.clone());
        let abort = move || {
            let fin = crate::store::Finalization {
                status: JobStatus::Aborted,
                reason: Some("stopped by an operator".into()),
                report_owed: false,
                now_ms: now_ms(),
            };
            // The memory store never waits on anything.
            futures::executor::block_on(crate::store::JobControl::finalize(
                store.as_ref(),
                &job,
                &fin,
                crate::store::FinalizeWhen::Now,
            ))
            .unwrap();
        };
        Ok(crate::objects::ObjectBody {
            size: Some(self.body.len() as i64),
            content_encoding: None,
            reader: Box::new(Interrupting {
                body: std::io::Cursor::new(self.body.clone()),
                after: self.body.len() as u64 / 2,
                then: Some(Box::new(abort)),
            }),
        })
    }
}

#[tokio::test]
async fn an_abort_stops_prepare_at_its_next_publication_and_nothing_more_is_claimable() {
    let def = Definition::from_json(
        r#"{"fields": [{"name": "n", "type": "integer"}], "batchSize": 1}"#,
        "t",
    )
    .unwrap();
    let mut body = String::from("n\n");
    for i in 0..40 {
        body.push_str(&format!("{i}\n"));
    }
    let source = SourceRef {
        bucket: "b".into(),
        key: "k.csv".into(),
        version: "v".into(),
    };
    let store = std::sync::Arc::new(MemoryStore::new());
    let objects = AbortingObjects {
        body: body.into_bytes(),
        store: store.clone(),
        job: source.job_id(),
    };
    let (queue, events, reports) = (
        MemoryQueue::default(),
        MemoryEvents::default(),
        MemoryReports::default(),
    );
    let settings = PrepareSettings::default();
    let preparer = Preparer {
        store: store.as_ref(),
        objects: &objects,
        queue: &queue,
        events: &events,
        reports: &reports,
        metrics: &crate::metrics::NoMetrics,
        definition: &def,
        settings: &settings,
        clock: &SYSTEM,
        processors: None,
    };
    let PrepareOutcome::Stopped(job) = preparer.run(&source, "o").await.unwrap() else {
        panic!("prepare should stop at the abort")
    };
    assert_eq!(job.status, JobStatus::Aborted);
    assert!(!job.prepared);
    assert!(
        job.batches_ready < 40,
        "publication stopped: {} batches",
        job.batches_ready
    );
    assert_eq!(
        store
            .claim_batch(&job.id, "w", now_ms(), 60_000)
            .await
            .unwrap(),
        Claim::JobFinished(JobStatus::Aborted)
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_write_does_not_hold_back_the_writes_behind_it() {
    let def = Definition::from_json(
        r#"{"fields": [{"name": "n", "type": "integer"}], "batchSize": 1}"#,
        "t",
    )
    .unwrap();
    let objects = MemoryObjects::default();
    let rows: String = (0..40).map(|n| format!("{n}\n")).collect();
    objects.put("b", "k.csv", format!("n\n{rows}"));
    let (store, queue, events, reports) = (
        MemoryStore::new(),
        MemoryQueue::default(),
        MemoryEvents::default(),
        MemoryReports::default(),
    );
    // The first write is held until the writes behind it have gone well
    // past the number in flight, as a throttled request waiting out its
    // backoff would be.
    store.hold_write(0, 10);
    let settings = PrepareSettings {
        writes_in_flight: 2,
        batches_per_write: 1,
        ..PrepareSettings::default()
    };
    let clock = Clock::simulated(now_ms());
    let preparer = Preparer {
        store: &store,
        objects: &objects,
        queue: &queue,
        events: &events,
        reports: &reports,
        metrics: &crate::metrics::NoMetrics,
        definition: &def,
        settings: &settings,
        clock: &clock,
        processors: None,
    };
    let source = SourceRef {
        bucket: "b".into(),
        key: "k.csv".into(),
        version: "v".into(),
    };
    let run = tokio::time::timeout(Duration::from_secs(600), preparer.run(&source, "o"));
    let Ok(Ok(PrepareOutcome::Prepared(job))) = run.await else {
        panic!("the writes behind the slow one waited for it")
    };
    assert_eq!((job.total_records, job.total_batches), (40, 40));
}
