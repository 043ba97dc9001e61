//! The sweeper on in-memory backends: a job whose workers all died is fanned
//! out again or finalized once, stalled requeue passes and abandoned or
//! failing prepares are taken over, and unsent events go out.

use super::*;
use crate::job::{now_ms, SourceRef};
use crate::store::{BatchOutcome, BatchState, Claim, CreateOutcome, NewBatch, PrepareLease};

const MINUTE: i64 = 60_000;

fn source() -> SourceRef {
    SourceRef {
        bucket: "bulk-import-uploads".into(),
        key: "uploads/users 2026-11(1).csv".into(),
        version: "etag:d41d8cd98f00b204e9800998ecf8427e".into(),
    }
}

/// A prepared job of `batches` batches of two records, created long ago.
async fn old_job(f: &Fixture, batches: u64) -> crate::JobId {
    let long_ago = now_ms() - 30 * MINUTE;
    let lease = PrepareLease {
        owner: "orchestrator".into(),
        lease_ms: MINUTE,
    };
    let CreateOutcome::Created(job) = f
        .store
        .create_job(&source(), &lease, long_ago)
        .await
        .unwrap()
    else {
        panic!()
    };
    let mut all = Vec::new();
    let mut reader = crate::source::RecordReader::open(
        std::io::Cursor::new(CSV.as_bytes().to_vec()),
        crate::source::OpenOptions::new("users.csv"),
        f.deps.routes.primary(),
    )
    .await
    .unwrap();
    while let Some(r) = reader.next_record().await.unwrap() {
        all.push(r);
    }
    for index in 0..batches {
        let records = &all[(index as usize * 2)..(index as usize * 2 + 2)];
        f.store
            .write_batch(
                &job.id,
                NewBatch {
                    index,
                    records,
                    after: None,
                },
                long_ago,
            )
            .await
            .unwrap();
    }
    f.store
        .finish_prepare(&job.id, &lease, batches * 2, batches)
        .await
        .unwrap();
    job.id
}

async fn sweep(f: &Fixture) -> crate::sweep::SweepReport {
    let event: EventBridgeEvent = serde_json::from_str(SCHEDULE).unwrap();
    sweeper::handle(&f.deps, LambdaEvent::new(event, Context::default()))
        .await
        .unwrap()
}

#[tokio::test]
async fn job_whose_workers_all_died_is_fanned_out_again() {
    let f = fixture(CSV);
    let job = old_job(&f, 2).await;
    // A worker claimed a batch long ago and died.
    let Claim::Batch(_) = f
        .store
        .claim_batch(&job, "dead", now_ms() - 20 * MINUTE, MINUTE)
        .await
        .unwrap()
    else {
        panic!()
    };
    let report = sweep(&f).await;
    assert_eq!((report.active_jobs, report.refanned), (1, 1));
    let sent = f.queue.sent.lock().unwrap().clone();
    assert_eq!(
        sent.len(),
        2,
        "one message per waiting batch, up to max workers"
    );
    assert!(sent.iter().all(|m| m.job_id == job));
}

#[tokio::test]
async fn job_with_a_live_worker_is_left_alone() {
    let f = fixture(CSV);
    let job = old_job(&f, 2).await;
    let Claim::Batch(_) = f
        .store
        .claim_batch(&job, "alive", now_ms(), 10 * MINUTE)
        .await
        .unwrap()
    else {
        panic!()
    };
    let report = sweep(&f).await;
    assert_eq!((report.active_jobs, report.refanned), (1, 0));
    assert!(f.queue.sent.lock().unwrap().is_empty());
}

#[tokio::test]
async fn job_whose_last_worker_died_before_finalizing_is_finalized_once() {
    let f = fixture(CSV);
    let job = old_job(&f, 1).await;
    let Claim::Batch(c) = f
        .store
        .claim_batch(&job, "w", now_ms(), MINUTE)
        .await
        .unwrap()
    else {
        panic!()
    };
    let outcome = BatchOutcome {
        state: BatchState::Done,
        processed: 2,
        failed: vec![],
        error: None,
        duplicates: 0,
    };
    f.store.commit_batch(&c, &outcome, now_ms()).await.unwrap();
    assert_eq!(sweep(&f).await.finalized, 1);
    assert_eq!(sweep(&f).await.active_jobs, 0);
    let done = f.store.get_job(&job).await.unwrap().unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(f.events.endings().len(), 1);
}

/// Claims every batch and fails one record of each in processing.
async fn fail_every_batch(f: &Fixture, job: &crate::JobId) {
    while let Claim::Batch(c) = f
        .store
        .claim_batch(job, "w", now_ms(), MINUTE)
        .await
        .unwrap()
    {
        let outcome = BatchOutcome {
            state: BatchState::Done,
            processed: 1,
            failed: vec![crate::job::FailedRecord::unprocessed(
                c.index * 2 + 2,
                vec![crate::job::FieldIssue::new(None, None, "refused")],
            )],
            error: None,
            duplicates: 0,
        };
        f.store.commit_batch(&c, &outcome, now_ms()).await.unwrap();
    }
}

/// A retry's requeue pass whose orchestrator died (or whose message was
/// lost) is taken over once it has been silent for a minute, and not
/// before.
#[tokio::test]
async fn a_stalled_requeue_pass_is_taken_over_and_a_live_one_left_alone() {
    let f = fixture(CSV);
    let job = old_job(&f, 2).await;
    fail_every_batch(&f, &job).await;
    assert_eq!(sweep(&f).await.finalized, 1);
    let ended = f.store.get_job(&job).await.unwrap().unwrap();
    for kind in ended.owed_events {
        f.store.ack_event(&job, kind, 0).await.unwrap();
    }
    let reopening = |now_ms| crate::store::Reopening {
        seen_retries: 0,
        requeue: true,
        base: 4,
        now_ms,
    };
    f.store
        .reopen(&job, &reopening(now_ms()))
        .await
        .unwrap()
        .unwrap();
    let report = sweep(&f).await;
    assert_eq!(report.requeues_resumed, 0, "a pass that just started");
    assert!(
        f.store
            .get_job(&job)
            .await
            .unwrap()
            .unwrap()
            .round
            .requeuing
    );

    // Started two minutes ago and silent since.
    let f = fixture(CSV);
    let job = old_job(&f, 2).await;
    fail_every_batch(&f, &job).await;
    sweep(&f).await;
    let ended = f.store.get_job(&job).await.unwrap().unwrap();
    for kind in ended.owed_events {
        f.store.ack_event(&job, kind, 0).await.unwrap();
    }
    f.store
        .reopen(&job, &reopening(now_ms() - 2 * MINUTE))
        .await
        .unwrap()
        .unwrap();
    f.queue.sent.lock().unwrap().clear();
    let report = sweep(&f).await;
    assert_eq!(report.requeues_resumed, 1);
    let j = f.store.get_job(&job).await.unwrap().unwrap();
    assert!(!j.round.requeuing);
    assert_eq!((j.batches_done, j.failed, j.retryable), (0, 0, 0));
    assert!(
        !f.queue.sent.lock().unwrap().is_empty(),
        "workers are woken for the batches back"
    );
}

#[tokio::test]
async fn abandoned_prepare_is_resumed_after_its_lease() {
    let f = fixture(CSV);
    let long_ago = now_ms() - 30 * MINUTE;
    let lease = PrepareLease {
        owner: "crashed".into(),
        lease_ms: MINUTE,
    };
    let CreateOutcome::Created(job) = f
        .store
        .create_job(&source(), &lease, long_ago)
        .await
        .unwrap()
    else {
        panic!()
    };
    let report = sweep(&f).await;
    assert_eq!(report.prepares_resumed, 1);
    let job = f.store.get_job(&job.id).await.unwrap().unwrap();
    assert!(job.prepared);
    assert_eq!((job.total_records, job.total_batches), (5, 3));
    assert_eq!(f.queue.sent.lock().unwrap().len(), 3);
}

/// Objects that cannot be read for now (a transient error every time).
struct Unreadable {
    inner: Arc<dyn crate::objects::ObjectSource>,
    key: &'static str,
}

#[async_trait::async_trait]
impl crate::objects::ObjectSource for Unreadable {
    async fn open(
        &self,
        source: &SourceRef,
    ) -> Result<crate::objects::ObjectBody, crate::objects::ObjectError> {
        if source.key == self.key {
            return Err(crate::objects::ObjectError::Transient {
                object: source.to_string(),
                source: "connection reset".into(),
            });
        }
        self.inner.open(source).await
    }
}

#[tokio::test]
async fn a_prepare_that_keeps_failing_blocks_no_other_job_and_is_given_up() {
    let mut f = fixture(CSV);
    f.deps.objects = Arc::new(Unreadable {
        inner: f.deps.objects.clone(),
        key: "uploads/unreadable.csv",
    });
    let long_ago = now_ms() - 30 * MINUTE;
    let crashed = PrepareLease {
        owner: "crashed".into(),
        lease_ms: MINUTE,
    };
    let broken = SourceRef {
        key: "uploads/unreadable.csv".into(),
        ..source()
    };
    let mut ids = Vec::new();
    for src in [&broken, &source()] {
        let CreateOutcome::Created(job) =
            f.store.create_job(src, &crashed, long_ago).await.unwrap()
        else {
            panic!()
        };
        ids.push(job.id);
    }
    let (broken_id, good_id) = (&ids[0], &ids[1]);
    let report = sweep(&f).await;
    assert_eq!((report.failed, report.prepares_resumed), (1, 1));
    assert!(f.store.get_job(good_id).await.unwrap().unwrap().prepared);
    for _ in 1..crate::sweep::MAX_PREPARE_FAILURES {
        let j = f.store.get_job(broken_id).await.unwrap().unwrap();
        assert_eq!(j.status, JobStatus::Processing, "not given up yet");
        sweep(&f).await;
    }
    let j = f.store.get_job(broken_id).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Failed);
    let reason = j.failure_reason.unwrap();
    assert!(reason.contains("prepare failed 5 times"), "{reason}");
    assert!(reason.contains("connection reset"), "{reason}");
}

#[tokio::test]
async fn a_completion_event_the_finalizer_could_not_send_is_sent_by_the_sweeper() {
    let f = fixture(CSV);
    let job = old_job(&f, 1).await;
    f.events
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let Claim::Batch(c) = f
        .store
        .claim_batch(&job, "w", now_ms(), MINUTE)
        .await
        .unwrap()
    else {
        panic!()
    };
    let outcome = BatchOutcome {
        state: BatchState::Done,
        processed: 2,
        failed: vec![],
        error: None,
        duplicates: 0,
    };
    f.store.commit_batch(&c, &outcome, now_ms()).await.unwrap();
    assert_eq!(sweep(&f).await.finalized, 1);
    assert!(f.events.endings().is_empty());
    assert_eq!(f.store.pending_events().await.unwrap(), vec![job.clone()]);
    f.events
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    // Everything the job owes: its start and its prepare, which nobody
    // announced either, then its completion.
    assert_eq!(sweep(&f).await.events_sent, 3);
    assert_eq!(sweep(&f).await.events_sent, 0, "acknowledged");
    let kinds: Vec<EventKind> = f.events.all().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::Started,
            EventKind::Prepared,
            EventKind::Completed
        ]
    );
    let sent = f.events.endings();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].event_id, format!("{job}:completed"));
}
