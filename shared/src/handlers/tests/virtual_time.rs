//! A whole job on a paused runtime, its `Deps` on a simulated clock and a
//! seeded source of randomness: a worker dies holding a claim, and the
//! batch is reclaimed once its lease has run out, minutes later in
//! simulated time and at once in real time.

use super::*;
use crate::clock::Clock;
use crate::processor::{ProcessContext, ProcessError, RecordProcessor};
use crate::schema::ValidRecord;
use async_trait::async_trait;
use std::time::Duration;

/// 2026-01-01T00:00:00Z: where the simulated wall clock starts.
const ORIGIN_MS: i64 = 1_767_225_600_000;

const LEASE: Duration = Duration::from_secs(5 * 60);

/// Takes a batch and never answers: the worker holding it is as good as
/// dead (and is then killed), so its lease is never renewed again.
#[derive(Default)]
struct Hangs {
    claimed: tokio::sync::Notify,
    batch: std::sync::Mutex<Option<u64>>,
}

#[async_trait]
impl RecordProcessor for Hangs {
    async fn process(&self, _: &ValidRecord, ctx: &ProcessContext<'_>) -> Result<(), ProcessError> {
        *self.batch.lock().unwrap() = Some(ctx.batch_index);
        self.claimed.notify_one();
        std::future::pending().await
    }
}

fn work(job: &JobId) -> LambdaEvent<SqsEvent> {
    LambdaEvent::new(work_event(job.as_str(), SQS_WORK), Context::default())
}

#[tokio::test(start_paused = true)]
async fn a_dead_workers_batch_is_reclaimed_once_its_lease_runs_out_in_simulated_time() {
    let mut f = fixture(CSV);
    f.deps.clock = Clock::simulated(ORIGIN_MS);
    f.deps.worker.lease = LEASE;
    let clock = f.deps.clock;
    let event: S3Event = serde_json::from_str(S3_PUT).unwrap();
    let prepared = orchestrator::handle(&f.deps, LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    let id = JobId::new(&prepared[0].job_id);
    assert_eq!(prepared[0].total_batches, 3);

    // A worker claims a batch, and dies with it in hand.
    let hangs = Arc::new(Hangs::default());
    let dying = tokio::spawn({
        let (deps, hangs, id) = (f.deps.clone(), hangs.clone(), id.clone());
        async move {
            let definition = deps.routes.primary().clone();
            let _ = deps
                .worker(hangs.as_ref(), &definition, 0)
                .run(&id, "dying", None)
                .await;
        }
    });
    hangs.claimed.notified().await;
    dying.abort();
    assert!(dying.await.unwrap_err().is_cancelled());
    let held = hangs.batch.lock().unwrap().expect("a batch was claimed");
    let claimed_at = clock.now_ms();
    let info = f.store.batch_info(&id, held).await.unwrap().unwrap();
    assert_eq!(info.worker.as_deref(), Some("dying"));
    assert_eq!(info.lease_until_ms, claimed_at + LEASE.as_millis() as i64);

    // Another worker does the rest, then waits for the batch under a live
    // lease: minutes pass, on the simulated clock only, until the lease has
    // run out; then the batch is its, and the job ends.
    let response = worker::handle(&f.deps, work(&id)).await.unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert!(clock.now_ms() > info.lease_until_ms);
    let job = f.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::CompletedWithErrors);
    assert_eq!((job.total_records, job.processed, job.failed), (5, 3, 2));
    let info = f.store.batch_info(&id, held).await.unwrap().unwrap();
    assert_eq!(
        (info.state, info.version),
        (BatchState::Done, 2),
        "claimed again"
    );
    assert_ne!(info.worker.as_deref(), Some("dying"));
    assert_eq!(f.events.endings().len(), 1);

    // Every reading came from the simulated clock: the job began at its
    // origin and ended no sooner than a lease later.
    assert_eq!(job.created_at_ms, ORIGIN_MS);
    let finished = job.finished_at_ms.expect("an ended job has an end");
    assert!(
        finished - job.created_at_ms >= LEASE.as_millis() as i64,
        "finished {} ms after it was created",
        finished - job.created_at_ms
    );
    assert!(clock.now_ms() - ORIGIN_MS >= LEASE.as_millis() as i64);
}
