//! A worker and its lease: one whose lease was taken stops and drops its
//! result, and one that catches up with prepare waits for the next batch.

use super::*;

/// Holds every record until released, so a test can act mid-batch.
struct Gate(tokio::sync::Notify);

#[async_trait]
impl RecordProcessor for Gate {
    async fn process(
        &self,
        _record: &ValidRecord,
        _ctx: &ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        self.0.notified().await;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn worker_whose_lease_was_taken_stops_and_drops_its_result() {
    let mut f = Fixture::new("");
    f.settings.lease = Duration::from_secs(3);
    let id = job(&f.store, &[vec![record(2, "a@x.org")]]).await;
    let gate = Gate(tokio::sync::Notify::new());
    let worker = f.worker(&gate);
    let run = worker.run(&id, "slow", None);
    tokio::pin!(run);
    // Let the slow worker claim the batch and block in the processor.
    tokio::select! { _ = &mut run => panic!("the gate holds the worker"), _ = tokio::task::yield_now() => {} }
    let held = f.store.batch_info(&id, 0).await.unwrap().unwrap();
    assert_eq!(held.worker.as_deref(), Some("slow"));
    // Another worker reclaims it as if the lease had expired.
    let Claim::Batch(fresh) = f
        .store
        .claim_batch(&id, "fresh", held.lease_until_ms + 1, 60_000)
        .await
        .unwrap()
    else {
        panic!()
    };
    // The slow worker's next heartbeat finds the claim gone and stops
    // working on it; it watches the new holder's lease until that one
    // commits.
    let commit = async {
        tokio::time::sleep(f.settings.lease).await;
        f.store
            .commit_batch(
                &fresh,
                &BatchOutcome {
                    state: BatchState::Done,
                    processed: 1,
                    failed: vec![],
                    error: None,
                    duplicates: 0,
                },
                now_ms(),
            )
            .await
            .unwrap();
    };
    let (report, ()) = tokio::join!(&mut run, commit);
    let report = report.unwrap();
    assert_eq!((report.lost_claims, report.batches), (1, 0));
    assert_eq!(f.store.get_job(&id).await.unwrap().unwrap().processed, 1);
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_catches_up_with_prepare_waits_for_the_next_batch() {
    let f = Fixture::new("");
    let id = open_job(&f.store, &[vec![record(2, "a@x.org")]]).await;
    let processor = Scripted::default();
    let worker = f.worker(&processor);
    // The orchestrator writes the second batch while the worker waits.
    let orchestrator = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let second = vec![record(3, "b@x.org")];
        let batch = NewBatch {
            index: 1,
            records: &second,
            after: None,
        };
        f.store.write_batch(&id, batch, now_ms()).await.unwrap();
        f.store.finish_prepare(&id, &lease(), 2, 2).await.unwrap();
    };
    let (report, ()) = tokio::join!(worker.run(&id, "w", None), orchestrator);
    let report = report.unwrap();
    assert_eq!(
        (report.batches, report.processed, report.finalized),
        (2, 2, true)
    );
    assert_eq!(*processor.done.lock().unwrap(), vec![2, 3]);
}
