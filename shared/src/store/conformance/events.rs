//! Conformance cases for lifecycle events: a job owes each event until it is
//! acknowledged, and an acknowledgement counts for its own round only.

use super::*;

async fn owed(store: &dyn JobStore, job: &JobId) -> Vec<EventKind> {
    store.get_job(job).await.unwrap().unwrap().owed_events
}

pub async fn a_job_owes_each_lifecycle_event_until_acknowledged(store: &dyn JobStore) {
    use EventKind::*;
    let job = job_with(store, "owed", 1, true).await;
    assert_eq!(owed(store, &job).await, vec![Started]);
    store.ack_event(&job, Started, 0).await.unwrap();
    assert_eq!(owed(store, &job).await, vec![]);
    store
        .finish_prepare(&job, &lease("orchestrator"), 3, 1)
        .await
        .unwrap();
    assert_eq!(owed(store, &job).await, vec![Prepared]);
    // An active job's owed events are on the job, not listed.
    assert!(store.pending_events().await.unwrap().is_empty());
    assert!(store
        .finalize(&job, &fin(JobStatus::Failed), FinalizeWhen::Now)
        .await
        .unwrap());
    assert_eq!(owed(store, &job).await, vec![Prepared, Failed]);
    assert_eq!(store.pending_events().await.unwrap(), vec![job.clone()]);
    assert!(store.active_jobs().await.unwrap().is_empty());
    store.ack_event(&job, Failed, 0).await.unwrap();
    assert_eq!(owed(store, &job).await, vec![Prepared]);
    assert_eq!(store.pending_events().await.unwrap(), vec![job.clone()]);
    store.ack_event(&job, Prepared, 0).await.unwrap();
    store.ack_event(&job, Prepared, 0).await.unwrap();
    assert_eq!(owed(store, &job).await, vec![]);
    assert!(store.pending_events().await.unwrap().is_empty());
}

pub async fn each_ending_owes_the_event_that_announces_it(store: &dyn JobStore) {
    let endings = [
        ("end-ok", JobStatus::Completed, EventKind::Completed),
        (
            "end-errors",
            JobStatus::CompletedWithErrors,
            EventKind::Completed,
        ),
        ("end-failed", JobStatus::Failed, EventKind::Failed),
        ("end-aborted", JobStatus::Aborted, EventKind::Aborted),
    ];
    for (name, status, kind) in endings {
        let job = job_with(store, name, 1, false).await;
        store.ack_event(&job, EventKind::Started, 0).await.unwrap();
        store.ack_event(&job, EventKind::Prepared, 0).await.unwrap();
        assert!(store
            .finalize(&job, &fin(status), FinalizeWhen::Now)
            .await
            .unwrap());
        assert_eq!(owed(store, &job).await, vec![kind], "{status}");
    }
}

pub async fn acknowledging_an_event_not_owed_changes_nothing(store: &dyn JobStore) {
    let job = job_with(store, "not-owed", 1, true).await;
    store
        .ack_event(&job, EventKind::Completed, 0)
        .await
        .unwrap();
    assert_eq!(owed(store, &job).await, vec![EventKind::Started]);
    // Still listed as active: the acknowledgement leaves the index alone.
    assert_eq!(store.active_jobs().await.unwrap(), vec![job.clone()]);
    store.ack_event(&job, EventKind::Started, 0).await.unwrap();
    assert_eq!(store.active_jobs().await.unwrap(), vec![job.clone()]);
    assert!(store.pending_events().await.unwrap().is_empty());
}

/// A sweeper that stalled after sending round 0's ending event and then
/// acknowledges it must not erase round 1's event of the same kind.
pub async fn a_late_acknowledgement_leaves_the_next_rounds_event_owed(store: &dyn JobStore) {
    let job = job_with(store, "late-ack", 1, false).await;
    settle(store, &job, |_| done(3)).await;
    let f = fin(JobStatus::Completed);
    assert!(store
        .finalize(&job, &f, FinalizeWhen::AllBatchesDone)
        .await
        .unwrap());
    ack_all(store, &job).await;
    store
        .reopen(&job, &reopening(0, false, T0 + 1))
        .await
        .unwrap()
        .unwrap();
    assert!(store
        .finalize(&job, &f, FinalizeWhen::AllBatchesDone)
        .await
        .unwrap());
    assert_eq!(owed(store, &job).await, vec![EventKind::Completed]);
    store
        .ack_event(&job, EventKind::Completed, 0)
        .await
        .unwrap();
    assert_eq!(
        owed(store, &job).await,
        vec![EventKind::Completed],
        "round 0's acknowledgement is not round 1's"
    );
    assert_eq!(store.pending_events().await.unwrap(), vec![job.clone()]);
    store
        .ack_event(&job, EventKind::Completed, 1)
        .await
        .unwrap();
    assert_eq!(owed(store, &job).await, vec![]);
    assert!(store.pending_events().await.unwrap().is_empty());
}
