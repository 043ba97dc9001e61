//! Retry rounds on the in-memory store at the size where putting failed
//! batches back inside one request would not fit in it: the request does a
//! bounded amount of work, the requeue pass hands over and resumes, runs
//! twice at once, and stops when an abort ends its round, leaving the job
//! consistent at every step.

use super::*;
use crate::clock::{Clock, Instant};
use crate::events::MemoryEvents;
use crate::job::{now_ms, EventKind, FailedRecord, FieldIssue, SourceRef, StagedRecord};
use crate::queue::{MemoryPrepareQueue, MemoryQueue};
use crate::store::memory::MemoryStore;
use crate::store::{
    BatchOutcome, BatchState, Claim, ClaimStore, CreateOutcome, Finalization, FinalizeWhen,
    JobControl, NewBatch, PrepareLease, PrepareStore,
};

/// The steering's clock: these cases wait for nothing.
static SYSTEM: Clock = Clock::system();

const BATCHES: u64 = 20_000;
const LEASE_MS: i64 = 60_000;

fn lease() -> PrepareLease {
    PrepareLease {
        owner: "o".into(),
        lease_ms: LEASE_MS,
    }
}

fn fin(status: JobStatus) -> Finalization {
    Finalization {
        status,
        reason: None,
        report_owed: false,
        now_ms: now_ms(),
    }
}

/// Claims and commits what is claimable; `fails` says whether a batch's
/// one record fails in processing. Returns the batches committed.
async fn work(store: &MemoryStore, id: &JobId, fails: bool) -> u64 {
    let mut committed = 0;
    while let Claim::Batch(claim) = store
        .claim_batch(id, "w", now_ms(), LEASE_MS)
        .await
        .unwrap()
    {
        let line = claim.index + 2;
        let outcome = if fails {
            BatchOutcome {
                state: BatchState::Done,
                processed: 0,
                failed: vec![FailedRecord::unprocessed(
                    line,
                    vec![FieldIssue::new(None, None, "the target refused it")],
                )],
                error: None,
                duplicates: 0,
            }
        } else {
            BatchOutcome {
                state: BatchState::Done,
                processed: 1,
                failed: Vec::new(),
                error: None,
                duplicates: 0,
            }
        };
        store
            .commit_batch(&claim, &outcome, now_ms())
            .await
            .unwrap();
        committed += 1;
    }
    committed
}

async fn ack_all(store: &MemoryStore, id: &JobId) {
    let job = store.get_job(id).await.unwrap().unwrap();
    for kind in job.owed_events {
        store.ack_event(id, kind, job.retries).await.unwrap();
    }
}

/// A job of `BATCHES` one-record batches, every record failed in
/// processing, ended and its events delivered.
async fn failed_job(store: &MemoryStore) -> JobId {
    let source = SourceRef {
        bucket: "b".into(),
        key: "big.csv".into(),
        version: "v".into(),
    };
    let CreateOutcome::Created(job) = store.create_job(&source, &lease(), now_ms()).await.unwrap()
    else {
        panic!("a new job")
    };
    let id = job.id;
    for index in 0..BATCHES {
        let records = [StagedRecord {
            line: index + 2,
            values: vec![Some(format!("user{index}@example.com"))].into(),
            issue: None,
        }];
        let batch = NewBatch {
            index,
            records: &records,
            after: None,
        };
        store.write_batch(&id, batch, now_ms()).await.unwrap();
    }
    store
        .finish_prepare(&id, &lease(), BATCHES, BATCHES)
        .await
        .unwrap();
    assert_eq!(work(store, &id, true).await, BATCHES);
    let ended = fin(JobStatus::CompletedWithErrors);
    assert!(store
        .finalize(&id, &ended, FinalizeWhen::AllBatchesDone)
        .await
        .unwrap());
    ack_all(store, &id).await;
    id
}

struct Channels {
    queue: MemoryQueue,
    prepare: MemoryPrepareQueue,
    events: MemoryEvents,
}

impl Channels {
    fn new() -> Self {
        Channels {
            queue: MemoryQueue::default(),
            prepare: MemoryPrepareQueue::default(),
            events: MemoryEvents::default(),
        }
    }

    fn steering<'a>(&'a self, store: &'a MemoryStore) -> Steering<'a> {
        Steering {
            store,
            queue: &self.queue,
            prepare_queue: Some(&self.prepare),
            events: &self.events,
            max_workers: 8,
            inline_requeue: false,
            clock: &SYSTEM,
        }
    }

    fn woken(&self) -> usize {
        self.queue.sent.lock().unwrap().len()
    }
}

/// The job's counters agree with its batches: what is done is what was
/// not put back, and a job in its pass cannot complete.
async fn assert_consistent(store: &MemoryStore, id: &JobId, requeued: u64) {
    let job = store.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Processing);
    assert_eq!(
        (job.batches_done, job.failed, job.retryable),
        (BATCHES - requeued, BATCHES - requeued, BATCHES - requeued)
    );
    assert!(job.round.requeuing);
    assert!(!store
        .finalize(id, &fin(JobStatus::Completed), FinalizeWhen::AllBatchesDone)
        .await
        .unwrap());
}

#[tokio::test]
async fn a_retry_of_twenty_thousand_failed_batches_starts_at_once_and_its_pass_hands_over() {
    let store = MemoryStore::new();
    let id = failed_job(&store).await;
    let channels = Channels::new();
    let steering = channels.steering(&store);

    let started = steering.retry(&id).await.unwrap();
    assert!(started.requeuing);
    assert_eq!((started.records, started.unprocessed), (BATCHES, 0));
    // The request put nothing back: it reopened the job and handed the
    // pass to the orchestrator.
    assert_consistent(&store, &id, 0).await;
    assert_eq!(channels.prepare.sent.lock().unwrap().len(), 1);
    assert_eq!(channels.woken(), 0, "no batch is back yet");
    let again = steering.retry(&id).await;
    assert!(matches!(again, Err(SteerError::NotFinal(_))), "{again:?}");

    // An orchestrator out of time after each page hands over each time,
    // its cursor recorded; the job stays consistent in between, and the
    // batches back are claimable at once.
    let mut requeued = 0;
    for _ in 0..3 {
        let outcome = steering.requeue(&id, Some(Instant::now())).await.unwrap();
        let RequeueOutcome::HandedOff { batches, records } = outcome else {
            panic!("handed over: {outcome:?}")
        };
        assert_eq!(
            (batches, records),
            (REQUEUE_PAGE as u64, REQUEUE_PAGE as u64)
        );
        requeued += batches;
        assert_consistent(&store, &id, requeued).await;
    }
    assert!(
        channels.woken() <= 8 * 3,
        "each pass wakes at most max_workers"
    );
    assert_eq!(
        work(&store, &id, false).await,
        requeued,
        "reruns run during the pass"
    );
    requeued = 0;
    let job = store.get_job(&id).await.unwrap().unwrap();
    assert_eq!((job.processed, job.batches_done), (300, BATCHES));

    // Two passes at once (a stalled one taken over by the sweeper while it
    // resumes): each batch goes back once between them.
    let (a, b) = futures::join!(steering.requeue(&id, None), steering.requeue(&id, None));
    for outcome in [a.unwrap(), b.unwrap()] {
        match outcome {
            RequeueOutcome::Finished { batches, .. } => requeued += batches,
            RequeueOutcome::Over => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(requeued, BATCHES - 300);
    let job = store.get_job(&id).await.unwrap().unwrap();
    assert!(!job.round.requeuing);
    assert_eq!(
        (job.batches_done, job.processed, job.failed, job.retryable),
        (300, 300, 0, 0)
    );
    assert_eq!(job.round.base, 300, "the round's rate counts from here");
    assert_eq!(work(&store, &id, false).await, BATCHES - 300);
    assert!(store
        .finalize(
            &id,
            &fin(JobStatus::Completed),
            FinalizeWhen::AllBatchesDone
        )
        .await
        .unwrap());
    let job = store.get_job(&id).await.unwrap().unwrap();
    assert_eq!((job.processed, job.failed, job.retries), (BATCHES, 0, 1));
}

#[tokio::test]
async fn an_abort_during_the_pass_ends_it_and_the_next_retry_puts_back_the_rest() {
    let store = MemoryStore::new();
    let id = failed_job(&store).await;
    let channels = Channels::new();
    let steering = channels.steering(&store);
    steering.retry(&id).await.unwrap();
    let outcome = steering.requeue(&id, Some(Instant::now())).await.unwrap();
    assert!(matches!(outcome, RequeueOutcome::HandedOff { .. }));

    let aborted = Finalization {
        reason: Some("wrong file".into()),
        ..fin(JobStatus::Aborted)
    };
    assert!(store
        .finalize(&id, &aborted, FinalizeWhen::Now)
        .await
        .unwrap());
    assert_eq!(
        steering.requeue(&id, None).await.unwrap(),
        RequeueOutcome::Over,
        "the pass of an ended round stops"
    );
    // What the aborted round put back waits unprocessed; the rest still
    // holds its failures. The counters say both.
    let job = store.get_job(&id).await.unwrap().unwrap();
    let page = REQUEUE_PAGE as u64;
    assert_eq!(
        (job.batches_done, job.failed, job.retryable),
        (BATCHES - page, BATCHES - page, BATCHES - page)
    );
    assert_eq!(job.owed_events, vec![EventKind::Aborted]);

    // The next retry sends the abort's event first, then puts the rest
    // back; the batches the abort left are claimed as usual.
    let started = steering.retry(&id).await.unwrap();
    assert_eq!(
        (started.records, started.unprocessed),
        (BATCHES - page, page)
    );
    assert_eq!(started.job.retries, 2);
    assert!(
        channels.woken() > 0,
        "workers woken for what the abort left"
    );
    let ids: Vec<String> = channels
        .events
        .endings()
        .iter()
        .map(|e| e.event_id.clone())
        .collect();
    assert_eq!(ids, vec![format!("{id}:aborted:retry-1")]);
    let outcome = steering.requeue(&id, None).await.unwrap();
    assert_eq!(
        outcome,
        RequeueOutcome::Finished {
            batches: BATCHES - page,
            records: BATCHES - page
        }
    );
    assert_eq!(work(&store, &id, false).await, BATCHES);
    assert!(store
        .finalize(
            &id,
            &fin(JobStatus::Completed),
            FinalizeWhen::AllBatchesDone
        )
        .await
        .unwrap());
    let job = store.get_job(&id).await.unwrap().unwrap();
    assert_eq!((job.processed, job.failed), (BATCHES, 0));
}
