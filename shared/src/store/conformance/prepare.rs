//! Conformance cases for prepare: one job per object version, the prepare
//! lease that fences batch writes and publication, checkpoints, and the
//! definition and columns pinned to a job.

use super::*;

pub async fn create_job_is_idempotent_per_object_version(store: &dyn JobStore) {
    let src = source("dup");
    let first = store.create_job(&src, &lease("a"), T0).await.unwrap();
    let second = store.create_job(&src, &lease("b"), T0 + 5).await.unwrap();
    let CreateOutcome::Created(job) = first else {
        panic!("first delivery creates the job")
    };
    let CreateOutcome::Exists(again) = second else {
        panic!("second delivery finds it")
    };
    assert_eq!(job.id, again.id);
    assert_eq!(again.created_at_ms, T0);
    let other = SourceRef {
        version: "v2".into(),
        ..src
    };
    assert!(matches!(
        store.create_job(&other, &lease("a"), T0).await.unwrap(),
        CreateOutcome::Created(_)
    ));
}

pub async fn prepare_lease_fences_a_second_orchestrator(store: &dyn JobStore) {
    let job = job_with(store, "prepare", 1, true).await;
    let second = lease("orchestrator-2");
    assert!(
        store
            .acquire_prepare(&job, &second, T0 + 1)
            .await
            .unwrap()
            .is_none(),
        "first lease is live"
    );
    let taken = store
        .acquire_prepare(&job, &second, T0 + LEASE + 1)
        .await
        .unwrap()
        .expect("expired lease");
    assert_eq!(
        taken.batches_ready, 1,
        "the new owner resumes after the written batch"
    );
    let recs = records(1, 3);
    let batch = NewBatch {
        index: 1,
        records: &recs,
        after: None,
    };
    // Writing a batch is idempotent and unfenced (its content is fixed by
    // the file); making it claimable is fenced.
    store
        .write_batch(&job, batch, T0 + LEASE + 2)
        .await
        .unwrap();
    let stale = store
        .publish(&job, &lease("orchestrator"), 2, None, T0 + LEASE + 2)
        .await;
    assert!(matches!(stale, Err(StoreError::PrepareLeaseLost(_))));
    let c = claim(store, &job, "w1", T0 + LEASE + 2).await;
    assert_eq!(c.index, 0, "an unpublished batch is not claimable");
    assert_eq!(
        store
            .claim_batch(&job, "w2", T0 + LEASE + 2, LEASE)
            .await
            .unwrap(),
        Claim::Wait
    );
    store
        .write_batch(&job, batch, T0 + LEASE + 3)
        .await
        .unwrap();
    store
        .publish(&job, &second, 2, None, T0 + LEASE + 3)
        .await
        .unwrap();
    let next = claim(store, &job, "w2", T0 + LEASE + 3).await;
    assert_eq!((next.index, next.record_count), (1, 3));
    assert_eq!(store.load_records(&job, 1).await.unwrap(), recs);
    assert!(
        matches!(
            store.publish(&job, &second, 1, None, T0 + LEASE + 4).await,
            Err(StoreError::PrepareLeaseLost(_))
        ),
        "publication never goes back"
    );
    let j = store.finish_prepare(&job, &second, 6, 2).await.unwrap();
    assert!(j.prepared);
    assert_eq!(
        (j.total_records, j.total_batches, j.batches_ready),
        (6, 2, 2)
    );
    assert!(
        store
            .acquire_prepare(&job, &second, T0 + 10 * LEASE)
            .await
            .unwrap()
            .is_none(),
        "prepare is over"
    );
}

pub async fn released_prepare_lease_is_taken_over_at_once(store: &dyn JobStore) {
    let job = job_with(store, "handoff", 1, true).await;
    let next = lease("orchestrator-2");
    assert!(store
        .acquire_prepare(&job, &next, T0 + 1)
        .await
        .unwrap()
        .is_none());
    // A stranger's release changes nothing.
    store
        .release_prepare(&job, &lease("stranger"))
        .await
        .unwrap();
    assert!(store
        .acquire_prepare(&job, &next, T0 + 2)
        .await
        .unwrap()
        .is_none());
    store
        .release_prepare(&job, &lease("orchestrator"))
        .await
        .unwrap();
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!(j.prepare_lease_until_ms, 0);
    let taken = store
        .acquire_prepare(&job, &next, T0 + 3)
        .await
        .unwrap()
        .expect("released lease");
    assert_eq!(taken.batches_ready, 1);
}

pub async fn the_checkpoint_travels_with_its_publication(store: &dyn JobStore) {
    let src = source("checkpoint");
    let owner = lease("orchestrator");
    let CreateOutcome::Created(job) = store.create_job(&src, &owner, T0).await.unwrap() else {
        panic!("job should be new");
    };
    assert_eq!(job.prepare_checkpoint, None);
    for index in 0..2 {
        let recs = records(index, 3);
        let batch = NewBatch {
            index,
            records: &recs,
            after: None,
        };
        store.write_batch(&job.id, batch, T0).await.unwrap();
    }
    let at_one = r#"{"o":120,"l":5,"r":3}"#;
    store
        .publish(&job.id, &owner, 1, Some(at_one), T0)
        .await
        .unwrap();
    store.release_prepare(&job.id, &owner).await.unwrap();
    let next = lease("next");
    let taken = store
        .acquire_prepare(&job.id, &next, T0 + 1)
        .await
        .unwrap()
        .expect("a released prepare");
    assert_eq!(
        (taken.batches_ready, taken.prepare_checkpoint.as_deref()),
        (1, Some(at_one))
    );
    // A publication without a checkpoint leaves none behind: a stale one
    // would send the next owner to the wrong batch.
    store
        .publish(&job.id, &next, 2, None, T0 + 2)
        .await
        .unwrap();
    let j = store.get_job(&job.id).await.unwrap().unwrap();
    assert_eq!((j.batches_ready, j.prepare_checkpoint), (2, None));
    store
        .publish(&job.id, &next, 2, Some(at_one), T0 + 3)
        .await
        .unwrap();
    let j = store.finish_prepare(&job.id, &next, 6, 2).await.unwrap();
    assert_eq!(
        j.prepare_checkpoint, None,
        "nothing to resume once prepared"
    );
}

pub async fn renewing_the_prepare_lease_is_fenced_and_publishes_nothing(store: &dyn JobStore) {
    let job = job_with(store, "renewed", 1, true).await;
    let owner = lease("orchestrator");
    store
        .renew_prepare(&job, &owner, T0 + LEASE / 2)
        .await
        .unwrap();
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!(
        (j.prepare_lease_until_ms, j.batches_ready),
        (T0 + LEASE / 2 + LEASE, 1)
    );
    // Renewed, the lease is not free at the time it would have expired.
    assert!(store
        .acquire_prepare(&job, &lease("sweeper"), T0 + LEASE + 1)
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        store.renew_prepare(&job, &lease("sweeper"), T0 + 1).await,
        Err(StoreError::PrepareLeaseLost(_))
    ));
    store.finish_prepare(&job, &owner, 3, 1).await.unwrap();
    assert!(matches!(
        store.renew_prepare(&job, &owner, T0 + 2).await,
        Err(StoreError::PrepareLeaseLost(_))
    ));
}

pub async fn the_first_definition_pinned_to_a_job_stays(store: &dyn JobStore) {
    let job = source("pinned").job_id();
    assert_eq!(store.pinned_definition(&job).await.unwrap(), None);
    let first = r#"{"fields": [{"name": "a"}]}"#;
    assert_eq!(store.pin_definition(&job, first).await.unwrap(), first);
    let later = r#"{"fields": [{"name": "b"}]}"#;
    assert_eq!(store.pin_definition(&job, later).await.unwrap(), first);
    assert_eq!(
        store.pinned_definition(&job).await.unwrap().as_deref(),
        Some(first)
    );
}

pub async fn the_first_columns_pinned_to_a_job_stay_beside_its_definition(store: &dyn JobStore) {
    let job = source("columns").job_id();
    assert_eq!(store.pinned_columns(&job).await.unwrap(), None);
    let definition = r#"{"fields": [{"name": "a"}]}"#;
    store.pin_definition(&job, definition).await.unwrap();
    let first = vec!["A".to_string(), "b, \"quoted\"".to_string()];
    store.pin_columns(&job, &first).await.unwrap();
    store.pin_columns(&job, &["other".into()]).await.unwrap();
    assert_eq!(store.pinned_columns(&job).await.unwrap(), Some(first));
    assert_eq!(
        store.pinned_definition(&job).await.unwrap().as_deref(),
        Some(definition)
    );
    // A header of which no column feeds a field pins an empty list.
    let none = source("no-columns").job_id();
    store.pin_definition(&none, definition).await.unwrap();
    store.pin_columns(&none, &[]).await.unwrap();
    assert_eq!(store.pinned_columns(&none).await.unwrap(), Some(vec![]));
}

/// Batches written together (more records items than one BatchWriteItem
/// takes) are each stored whole, and one already written and claimed is
/// left as it is.
pub async fn batches_written_together_are_stored_whole_and_claimed_ones_kept(store: &dyn JobStore) {
    let job = job_with(store, "together", 1, true).await;
    let owner = lease("orchestrator");
    let first = claim(store, &job, "w0", T0 + 1).await;
    assert_eq!(first.index, 0);
    let records: Vec<Vec<StagedRecord>> = (0..30).map(|i| records(i, 1 + i % 4)).collect();
    let batches: Vec<NewBatch<'_>> = records
        .iter()
        .zip(0..)
        .map(|(records, index)| NewBatch {
            index,
            records,
            after: None,
        })
        .collect();
    // Batch 0 as it was cut before, written again with the rest.
    let original = self::records(0, 3);
    let mut again = batches.clone();
    again[0].records = &original;
    store.write_batches(&job, &again, T0 + 2).await.unwrap();
    store.publish(&job, &owner, 30, None, T0 + 2).await.unwrap();
    let mut seen = Vec::new();
    for w in 1..30 {
        let c = claim(store, &job, &format!("w{w}"), T0 + 3).await;
        assert_eq!(c.record_count, records[c.index as usize].len() as u64);
        assert_eq!(
            store.load_records(&job, c.index).await.unwrap(),
            records[c.index as usize]
        );
        seen.push(c.index);
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..30).collect::<Vec<u64>>(), "batch 0 stays claimed");
    assert_eq!(
        store
            .claim_batch(&job, "late", T0 + 3, LEASE)
            .await
            .unwrap(),
        Claim::Wait
    );
    assert_eq!(store.load_records(&job, 0).await.unwrap(), original);
    let committed = store.commit_batch(&first, &done(3), T0 + 4).await;
    assert!(
        committed.is_ok(),
        "the first claim still holds: {committed:?}"
    );
}
