//! The processor's end-of-batch hook: called once a batch's records are all
//! processed and before its commit; a failure there hands the batch back
//! uncommitted, and the next claim processes it again.

use super::*;
use crate::processor::BatchContext;
use crate::store::BatchInfo;

/// Logs what it is given and, at the end of each batch, what the store
/// says of the batch then. Fails "flaky" records once (retryable), and the
/// first `failing_finishes` ends of batches.
struct Recording<'s> {
    store: &'s MemoryStore,
    log: Mutex<Vec<String>>,
    /// The batch as the store had it when each `finish_batch` ran.
    seen: Mutex<Vec<BatchInfo>>,
    failing_finishes: AtomicU32,
}

impl<'s> Recording<'s> {
    fn new(store: &'s MemoryStore, failing_finishes: u32) -> Self {
        Recording {
            store,
            log: Mutex::default(),
            seen: Mutex::default(),
            failing_finishes: AtomicU32::new(failing_finishes),
        }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

#[async_trait]
impl RecordProcessor for Recording<'_> {
    async fn process(
        &self,
        record: &ValidRecord,
        ctx: &ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        let email = record.get("email").and_then(|v| v.as_str()).unwrap();
        self.log
            .lock()
            .unwrap()
            .push(format!("batch {} {email}", ctx.batch_index));
        if email.starts_with("flaky") && ctx.retry == 0 {
            return Err(ProcessError::retryable("timeout"));
        }
        Ok(())
    }

    async fn finish_batch(&self, batch: &BatchContext<'_>) -> Result<(), ProcessError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("finish batch {}", batch.batch_index));
        let info = self
            .store
            .batch_info(batch.job_id, batch.batch_index)
            .await
            .unwrap()
            .unwrap();
        self.seen.lock().unwrap().push(info);
        let failing = self.failing_finishes.load(Ordering::SeqCst);
        if failing > 0 {
            self.failing_finishes.store(failing - 1, Ordering::SeqCst);
            return Err(ProcessError::retryable(
                "the batch's object could not be written",
            ));
        }
        Ok(())
    }
}

#[tokio::test]
async fn finish_batch_runs_once_per_batch_after_its_records_and_retries_and_before_the_commit() {
    let f = Fixture::new("");
    let id = job(
        &f.store,
        &[
            vec![record(2, "flaky@x.org"), record(3, "a@x.org")],
            vec![record(4, "b@x.org")],
        ],
    )
    .await;
    let processor = Recording::new(&f.store, 0);
    let report = f.worker(&processor).run(&id, "w", None).await.unwrap();
    assert_eq!((report.batches, report.processed, report.failed), (2, 3, 0));
    assert_eq!(
        processor.log(),
        [
            "batch 0 flaky@x.org",
            "batch 0 a@x.org",
            "batch 0 flaky@x.org",
            "finish batch 0",
            "batch 1 b@x.org",
            "finish batch 1",
        ]
    );
    for info in processor.seen.lock().unwrap().iter() {
        assert_eq!(
            (info.state, info.processed),
            (BatchState::Processing, 0),
            "batch {} was not committed yet",
            info.index
        );
    }
}

#[tokio::test]
async fn a_failed_finish_batch_hands_the_batch_back_uncommitted_and_the_next_claim_runs_it_again() {
    let f = Fixture::new("");
    let id = job(
        &f.store,
        &[vec![record(2, "a@x.org"), record(3, "b@x.org")]],
    )
    .await;
    let processor = Recording::new(&f.store, 1);
    let worker = f.worker(&processor);

    let Err(WorkError::FinishBatch { batch, source, .. }) = worker.run(&id, "w", None).await else {
        panic!("the run fails with the hook's error")
    };
    assert_eq!(batch, 0);
    assert_eq!(
        source.to_string(),
        "the batch's object could not be written"
    );
    let info = f.store.batch_info(&id, 0).await.unwrap().unwrap();
    assert_eq!(
        (info.state, info.processed, info.lease_until_ms),
        (BatchState::Processing, 0, 0),
        "nothing committed, the lease given up"
    );
    assert!(info
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("could not be written")));

    let report = worker.run(&id, "w", None).await.unwrap();
    assert_eq!(
        (report.batches, report.processed, report.finalized),
        (1, 2, true)
    );
    assert_eq!(
        processor.log(),
        [
            "batch 0 a@x.org",
            "batch 0 b@x.org",
            "finish batch 0",
            "batch 0 a@x.org",
            "batch 0 b@x.org",
            "finish batch 0",
        ]
    );
    let j = f.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(
        (j.status, j.processed, j.failed),
        (crate::job::JobStatus::Completed, 2, 0)
    );
}
