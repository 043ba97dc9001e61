//! Conformance cases for ending a job: finalization waits for prepare and
//! every batch unless aborted, one of racing finalizers wins, and the job
//! lists (active, by status) follow.

use super::*;

pub async fn finalize_waits_for_prepare_and_every_batch(store: &dyn JobStore) {
    let job = job_with(store, "final", 2, true).await;
    let a = claim(store, &job, "w1", T0).await;
    let b = claim(store, &job, "w2", T0).await;
    store.commit_batch(&a, &done(3), T0).await.unwrap();
    assert!(
        !store
            .finalize(
                &job,
                &fin(JobStatus::Completed),
                FinalizeWhen::AllBatchesDone
            )
            .await
            .unwrap(),
        "a batch is still open"
    );
    store.commit_batch(&b, &done(3), T0).await.unwrap();
    assert!(
        !store
            .finalize(
                &job,
                &fin(JobStatus::Completed),
                FinalizeWhen::AllBatchesDone
            )
            .await
            .unwrap(),
        "prepare has not finished"
    );
    store
        .finish_prepare(&job, &lease("orchestrator"), 6, 2)
        .await
        .unwrap();
    assert!(store
        .finalize(
            &job,
            &fin(JobStatus::Completed),
            FinalizeWhen::AllBatchesDone
        )
        .await
        .unwrap());
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Completed);
    assert_eq!(j.finished_at_ms, Some(T0 + 1));
    assert!(matches!(
        store.claim_batch(&job, "w3", T0, LEASE).await.unwrap(),
        Claim::JobFinished(JobStatus::Completed)
    ));
}

pub async fn exactly_one_of_racing_finalizers_wins(store: &dyn JobStore) {
    let job = job_with(store, "finalizers", 1, false).await;
    let c = claim(store, &job, "w1", T0).await;
    store.commit_batch(&c, &done(3), T0).await.unwrap();
    let f = fin(JobStatus::Completed);
    let results = futures::future::join_all(
        (0..6).map(|_| store.finalize(&job, &f, FinalizeWhen::AllBatchesDone)),
    )
    .await;
    let wins = results
        .into_iter()
        .map(Result::unwrap)
        .filter(|won| *won)
        .count();
    assert_eq!(wins, 1);
}

pub async fn abort_finalizes_before_all_batches_are_done(store: &dyn JobStore) {
    let job = job_with(store, "abort", 3, false).await;
    let mut f = fin(JobStatus::Failed);
    f.reason = Some("2 records failed and continueOnError is false".into());
    assert!(store.finalize(&job, &f, FinalizeWhen::Now).await.unwrap());
    assert!(
        !store
            .finalize(&job, &fin(JobStatus::Completed), FinalizeWhen::Now)
            .await
            .unwrap(),
        "final is final"
    );
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(j.failure_reason, f.reason);
}

pub async fn active_jobs_are_those_still_processing(store: &dyn JobStore) {
    let a = job_with(store, "active-a", 1, false).await;
    let b = job_with(store, "active-b", 1, true).await;
    let mut active = store.active_jobs().await.unwrap();
    active.sort();
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(active, both);
    assert!(store
        .finalize(&a, &fin(JobStatus::Failed), FinalizeWhen::Now)
        .await
        .unwrap());
    assert_eq!(store.active_jobs().await.unwrap(), vec![b]);
}

pub async fn after_an_early_finalization_commits_count_and_prepare_is_fenced(store: &dyn JobStore) {
    let owner = lease("orchestrator");
    let job = job_with(store, "aborted", 2, true).await;
    let in_flight = claim(store, &job, "w1", T0).await;
    assert!(store
        .finalize(&job, &fin(JobStatus::Failed), FinalizeWhen::Now)
        .await
        .unwrap());
    // The batch in flight was processed: its commit still counts.
    store
        .commit_batch(&in_flight, &done(3), T0 + 1)
        .await
        .unwrap();
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!(
        (j.status, j.batches_done, j.processed),
        (JobStatus::Failed, 1, 3)
    );
    // Nothing more is published or claimed.
    let recs = records(2, 3);
    store
        .write_batch(
            &job,
            NewBatch {
                index: 2,
                records: &recs,
                after: None,
            },
            T0 + 2,
        )
        .await
        .unwrap();
    assert!(matches!(
        store.publish(&job, &owner, 3, None, T0 + 2).await,
        Err(StoreError::PrepareLeaseLost(_))
    ));
    assert!(matches!(
        store.finish_prepare(&job, &owner, 9, 3).await,
        Err(StoreError::PrepareLeaseLost(_))
    ));
    assert_eq!(
        store.claim_batch(&job, "w2", T0 + 3, LEASE).await.unwrap(),
        Claim::JobFinished(JobStatus::Failed)
    );
}

pub async fn jobs_are_listed_newest_first_by_status(store: &dyn JobStore) {
    let mut ids = Vec::new();
    for (i, name) in ["list-a", "list-b", "list-c"].iter().enumerate() {
        let CreateOutcome::Created(job) = store
            .create_job(&source(name), &lease("o"), T0 + i as i64)
            .await
            .unwrap()
        else {
            panic!("new job")
        };
        ids.push(job.id);
    }
    assert!(store
        .finalize(&ids[1], &fin(JobStatus::Failed), FinalizeWhen::Now)
        .await
        .unwrap());
    let newest_first: Vec<JobId> = ids.iter().rev().cloned().collect();
    assert_eq!(store.list_jobs(None, None, 10).await.unwrap(), newest_first);
    assert_eq!(
        store.list_jobs(None, None, 2).await.unwrap(),
        newest_first[..2]
    );
    assert_eq!(
        store
            .list_jobs(Some(JobStatus::Failed), None, 10)
            .await
            .unwrap(),
        vec![ids[1].clone()]
    );
    assert_eq!(
        store
            .list_jobs(Some(JobStatus::Processing), None, 10)
            .await
            .unwrap(),
        vec![ids[2].clone(), ids[0].clone()]
    );
}

pub async fn jobs_are_listed_by_kind(store: &dyn JobStore) {
    let mut ids = Vec::new();
    for (i, (name, kind)) in [
        ("kind-a", "users"),
        ("kind-b", "orders"),
        ("kind-c", "users"),
        ("kind-d", ""),
    ]
    .iter()
    .enumerate()
    {
        let CreateOutcome::Created(job) = store
            .create_job_of(&source(name), kind, &lease("o"), T0 + i as i64)
            .await
            .unwrap()
        else {
            panic!("new job")
        };
        assert_eq!(job.kind.as_deref(), Some(*kind).filter(|k| !k.is_empty()));
        ids.push(job.id);
    }
    let stored = store.get_job(&ids[1]).await.unwrap().unwrap();
    assert_eq!(stored.kind.as_deref(), Some("orders"));
    assert_eq!(store.get_job(&ids[3]).await.unwrap().unwrap().kind, None);
    assert!(store
        .finalize(&ids[2], &fin(JobStatus::Failed), FinalizeWhen::Now)
        .await
        .unwrap());
    assert_eq!(
        store.list_jobs(None, Some("users"), 10).await.unwrap(),
        vec![ids[2].clone(), ids[0].clone()]
    );
    assert_eq!(
        store.list_jobs(None, Some("users"), 1).await.unwrap(),
        vec![ids[2].clone()]
    );
    assert_eq!(
        store
            .list_jobs(Some(JobStatus::Processing), Some("users"), 10)
            .await
            .unwrap(),
        vec![ids[0].clone()]
    );
    assert_eq!(
        store.list_jobs(None, Some("orders"), 10).await.unwrap(),
        vec![ids[1].clone()]
    );
    assert!(store
        .list_jobs(None, Some("prices"), 10)
        .await
        .unwrap()
        .is_empty());
}

pub async fn one_caller_at_a_time_writes_an_owed_report(store: &dyn JobStore) {
    let job = job_with(store, "report-lease", 1, false).await;
    assert!(
        !store.lease_report(&job, 0, T0, T0 + LEASE).await.unwrap(),
        "a running job owes no report"
    );
    let mut f = fin(JobStatus::Aborted);
    f.report_owed = true;
    assert!(store.finalize(&job, &f, FinalizeWhen::Now).await.unwrap());
    assert!(store.lease_report(&job, 0, T0, T0 + LEASE).await.unwrap());
    assert!(
        !store
            .lease_report(&job, 0, T0 + 1, T0 + 1 + LEASE)
            .await
            .unwrap(),
        "held by the first"
    );
    assert!(
        !store
            .lease_report(&job, 1, T0 + 1, T0 + 1 + LEASE)
            .await
            .unwrap(),
        "another round owes nothing"
    );
    // The holder died: once its lease runs out, the next caller writes it.
    assert!(store
        .lease_report(&job, 0, T0 + LEASE, T0 + 2 * LEASE)
        .await
        .unwrap());
    assert!(store.record_report(&job, 0, None).await.unwrap());
    assert!(
        !store
            .lease_report(&job, 0, T0 + 3 * LEASE, T0 + 4 * LEASE)
            .await
            .unwrap(),
        "recorded: nothing more to write"
    );
}
