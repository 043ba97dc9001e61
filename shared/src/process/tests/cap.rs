//! The write-capacity cap: capped workers share it window by window, the
//! definition may lift the deployment's, and a worker short of time gives
//! its batch back without spending an attempt.

use super::*;
use crate::job::JobStatus;

/// Wall-clock time that follows tokio's paused clock, from half past a
/// second: the cap's windows advance only as the workers wait for them.
fn paused_clock() -> Clock {
    Clock::simulated(1_800_000_000_500)
}

#[tokio::test(start_paused = true)]
async fn capped_workers_share_the_cap_and_a_batch_larger_than_it_spans_windows() {
    let mut f = Fixture::new(r#""maxWriteUnitsPerSecond": 5"#);
    f.clock = paused_clock();
    let batches: Vec<Vec<StagedRecord>> = (0..3)
        .map(|b| {
            (0..8)
                .map(|i| record(2 + b * 8 + i, &format!("u{b}-{i}@x.org")))
                .collect()
        })
        .collect();
    let id = job(&f.store, &batches).await;
    let processor = crate::processor::MemoryProcessor::default();
    let (a, b) = (f.worker(&processor), f.worker(&processor));
    let (ra, rb) = tokio::time::timeout(Duration::from_secs(3600), async {
        tokio::join!(a.run(&id, "a", None), b.run(&id, "b", None))
    })
    .await
    .expect("capped workers finish");
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.processed + rb.processed, 24);
    assert!(
        ra.batches > 0 && rb.batches > 0,
        "both workers took batches"
    );
    // Each record is one write unit: 24 units at 5 a second, every window
    // used to the cap and none beyond it.
    let used: Vec<u64> = f.throttle.windows(&id).iter().map(|w| w.1).collect();
    assert_eq!(used, vec![5, 5, 5, 5, 4]);
    let j = f.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(
        (j.status, j.processed, j.failed),
        (JobStatus::Completed, 24, 0)
    );
    assert_eq!(processor.records.lock().unwrap().len(), 24);
}

#[tokio::test(start_paused = true)]
async fn the_deployment_cap_applies_unless_the_definition_lifts_it() {
    let batch = || vec![vec![record(2, "a@x.org"), record(3, "b@x.org")]];
    for (options, capped) in [("", true), (r#""maxWriteUnitsPerSecond": 0"#, false)] {
        let mut f = Fixture::new(options);
        f.clock = paused_clock();
        f.settings.max_write_units_per_second = 1;
        let id = job(&f.store, &batch()).await;
        let processor = crate::processor::MemoryProcessor::default();
        f.worker(&processor).run(&id, "w", None).await.unwrap();
        let used: Vec<u64> = f.throttle.windows(&id).iter().map(|w| w.1).collect();
        let expected = if capped { vec![1, 1] } else { vec![] };
        assert_eq!(used, expected, "options {options:?}");
        assert_eq!(processor.records.lock().unwrap().len(), 2);
    }
}

/// A deadline `after` from now on the fixture's (paused) clock.
fn deadline_in(f: &Fixture, after: Duration) -> Instant {
    f.clock.instant() + after
}

#[tokio::test(start_paused = true)]
async fn a_capped_worker_gives_its_batch_back_before_the_deadline_without_an_attempt() {
    // 1 write unit a second: the batch's 30 records take 30 s, more than
    // an invocation with 25 s left (20 s of margin) can give them.
    let mut f = Fixture::new(r#""maxWriteUnitsPerSecond": 1"#);
    f.clock = paused_clock();
    let records: Vec<StagedRecord> = (0..30)
        .map(|i| record(2 + i, &format!("u{i}@x.org")))
        .collect();
    let id = job(&f.store, &[records]).await;
    let processor = Scripted::default();
    let worker = f.worker(&processor);
    // More invocations than maxAttempts (3) run out of time on the batch.
    for run in 1..=5u64 {
        let before = processor.done.lock().unwrap().len();
        let deadline = deadline_in(&f, Duration::from_secs(25));
        let report = worker.run(&id, "w", Some(deadline)).await.unwrap();
        assert_eq!(
            (report.stop, report.batches, report.processed, report.failed),
            (StopReason::Deadline, 0, 0, 0),
            "run {run}"
        );
        let stopped = f.clock.instant();
        assert!(stopped < deadline, "run {run} stopped before its deadline");
        let written = processor.done.lock().unwrap().len() - before;
        assert!(
            (1..30).contains(&written),
            "run {run} wrote part of the batch: {written}"
        );
        let info = f.store.batch_info(&id, 0).await.unwrap().unwrap();
        assert_eq!(
            (info.state, info.version, info.lease_until_ms, info.failed),
            (BatchState::Processing, run, 0, 0),
            "run {run} gave the batch back, uncommitted"
        );
    }
    // None of those claims counted as an attempt.
    let Claim::Batch(claim) = f
        .store
        .claim_batch(&id, "probe", f.clock.now_ms(), 60_000)
        .await
        .unwrap()
    else {
        panic!("the batch is claimable at once")
    };
    assert_eq!((claim.version, claim.attempt), (6, 1));
    f.store.yield_batch(&claim).await.unwrap();

    // An invocation with time enough finishes the job: no record failed as
    // poison, and every one was written (some more than once).
    let report = worker
        .run(&id, "w", Some(deadline_in(&f, Duration::from_secs(300))))
        .await
        .unwrap();
    assert_eq!(
        (
            report.batches,
            report.processed,
            report.failed,
            report.finalized
        ),
        (1, 30, 0, true)
    );
    let info = f.store.batch_info(&id, 0).await.unwrap().unwrap();
    assert_eq!(
        (info.state, info.processed, info.failed),
        (BatchState::Done, 30, 0)
    );
    let j = f.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(
        (j.status, j.processed, j.failed),
        (JobStatus::Completed, 30, 0)
    );
    let mut written = processor.done.lock().unwrap().clone();
    written.sort_unstable();
    written.dedup();
    assert_eq!(written, (2..32).collect::<Vec<u64>>());
}

/// Takes every record, and writes nothing DynamoDB bills.
struct Unmetered;

#[async_trait]
impl RecordProcessor for Unmetered {
    async fn process(
        &self,
        _record: &ValidRecord,
        _ctx: &ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_processor_without_a_write_cost_is_not_held_back_by_the_cap() {
    // 30 records under a cap of 1 would take 30 s if each cost a unit.
    let f = Fixture::new(r#""maxWriteUnitsPerSecond": 1"#);
    let records: Vec<StagedRecord> = (0..30)
        .map(|i| record(2 + i, &format!("u{i}@x.org")))
        .collect();
    let id = job(&f.store, &[records]).await;
    let report = tokio::time::timeout(
        Duration::from_secs(10),
        f.worker(&Unmetered).run(&id, "w", None),
    )
    .await
    .expect("nothing waits for the cap")
    .unwrap();
    assert_eq!((report.processed, report.failed), (30, 0));
    assert!(f.throttle.windows(&id).is_empty(), "nothing was reserved");
}
