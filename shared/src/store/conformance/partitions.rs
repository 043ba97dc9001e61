//! Conformance cases for key partitions: a batch chained after another in
//! its partition is not claimable before that one is final, whichever of
//! the link and the commit comes first.

use super::*;

/// A prepared job of `chain.len()` batches, batch `i` chained after
/// `chain[i]` (when some), each linked as prepare links it after writing.
async fn chained_job(store: &dyn JobStore, name: &str, chain: &[Option<u64>]) -> JobId {
    let owner = lease("orchestrator");
    let CreateOutcome::Created(job) = store.create_job(&source(name), &owner, T0).await.unwrap()
    else {
        panic!("job should be new");
    };
    for (index, after) in chain.iter().enumerate() {
        let index = index as u64;
        let recs = records(index, 3);
        let batch = NewBatch {
            index,
            records: &recs,
            after: *after,
        };
        store.write_batch(&job.id, batch, T0).await.unwrap();
        if let Some(after) = after {
            store.link_batch(&job.id, *after, index).await.unwrap();
        }
    }
    let batches = chain.len() as u64;
    store
        .publish(&job.id, &owner, batches, None, T0)
        .await
        .unwrap();
    store
        .finish_prepare(&job.id, &owner, batches * 3, batches)
        .await
        .unwrap();
    job.id
}

/// Ends a job whose batches are all done, and reopens it for a retry.
async fn end_and_reopen(store: &dyn JobStore, job: &JobId) {
    let ended = fin(JobStatus::CompletedWithErrors);
    let when = FinalizeWhen::AllBatchesDone;
    assert!(store.finalize(job, &ended, when).await.unwrap());
    ack_all(store, job).await;
    let reopened = store.reopen(job, &reopening(0, true, T0 + 1)).await;
    assert!(reopened.unwrap().is_some(), "the job reopens");
}

/// A job being prepared, its batch 0 written and published.
async fn head_published(store: &dyn JobStore, name: &str) -> (JobId, PrepareLease) {
    let owner = lease("orchestrator");
    let CreateOutcome::Created(job) = store.create_job(&source(name), &owner, T0).await.unwrap()
    else {
        panic!("job should be new");
    };
    let recs = records(0, 3);
    let head = NewBatch {
        index: 0,
        records: &recs,
        after: None,
    };
    store.write_batch(&job.id, head, T0).await.unwrap();
    store.publish(&job.id, &owner, 1, None, T0).await.unwrap();
    (job.id, owner)
}

/// Writes batch 1 after batch 0 in its partition, links and publishes it,
/// as prepare does.
async fn chain_tail(store: &dyn JobStore, job: &JobId, owner: &PrepareLease) {
    let recs = records(1, 3);
    let tail = NewBatch {
        index: 1,
        records: &recs,
        after: Some(0),
    };
    store.write_batch(job, tail, T0).await.unwrap();
    store.link_batch(job, 0, 1).await.unwrap();
    store.publish(job, owner, 2, None, T0).await.unwrap();
}

/// Claims until nothing is claimable; the indexes claimed.
async fn claim_all(store: &dyn JobStore, job: &JobId, worker: &str) -> Vec<(u64, ClaimedBatch)> {
    let mut claimed = Vec::new();
    while let Claim::Batch(c) = store.claim_batch(job, worker, T0, LEASE).await.unwrap() {
        claimed.push((c.index, c));
    }
    claimed
}

pub async fn a_partitions_next_batch_waits_for_the_one_before(store: &dyn JobStore) {
    // Partition A: 0 -> 2 -> 3; partition B: 1.
    let job = chained_job(store, "chained", &[None, None, Some(0), Some(2)]).await;
    let first = claim_all(store, &job, "w1").await;
    let indexes: Vec<u64> = first.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, vec![0, 1], "only the heads of the partitions");
    let zero = &first[0].1;
    assert_eq!(zero.next, Some(2));
    let early = store.claim_index(&job, 2, "w2", T0, LEASE).await.unwrap();
    assert!(early.is_none(), "batch 2 waits for batch 0");
    assert_eq!(
        store.batch_info(&job, 2).await.unwrap().unwrap().state,
        BatchState::Waiting
    );
    // Batch 1 ends: it releases nothing.
    store.commit_batch(&first[1].1, &done(3), T0).await.unwrap();
    assert!(claim_all(store, &job, "w2").await.is_empty());
    // Batch 0 ends: batch 2 is claimable, by the worker that committed
    // or by anyone looking; batch 3 still waits for it.
    store.commit_batch(zero, &done(3), T0).await.unwrap();
    let two = store
        .claim_index(&job, 2, "w1", T0, LEASE)
        .await
        .unwrap()
        .expect("batch 2 is claimable once batch 0 is done");
    assert_eq!(two.next, Some(3));
    assert!(store
        .claim_index(&job, 3, "w1", T0, LEASE)
        .await
        .unwrap()
        .is_none());
    let failed = BatchOutcome {
        state: BatchState::Failed,
        ..done(0)
    };
    store.commit_batch(&two, &failed, T0).await.unwrap();
    let rest = claim_all(store, &job, "w2").await;
    assert_eq!(
        rest.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![3],
        "a failed batch releases the next one too"
    );
    store.commit_batch(&rest[0].1, &done(3), T0).await.unwrap();
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!(j.batches_done, 4);
}

pub async fn a_batch_linked_after_its_predecessor_ended_is_claimable_at_once(store: &dyn JobStore) {
    let (job, owner) = head_published(store, "late").await;
    let zero = claim(store, &job, "w1", T0).await;
    assert_eq!(zero.next, None);
    store.commit_batch(&zero, &done(3), T0).await.unwrap();
    // Prepare is behind: batch 1 of the partition comes after 0 ended.
    chain_tail(store, &job, &owner).await;
    let one = claim(store, &job, "w2", T0).await;
    assert_eq!(one.index, 1);
}

pub async fn a_link_made_while_the_predecessor_is_claimed_is_honoured_by_its_commit(
    store: &dyn JobStore,
) {
    let (job, owner) = head_published(store, "racing").await;
    let zero = claim(store, &job, "w1", T0).await;
    assert_eq!(zero.next, None, "claimed before the link");
    chain_tail(store, &job, &owner).await;
    assert!(store
        .claim_index(&job, 1, "w2", T0, LEASE)
        .await
        .unwrap()
        .is_none());
    // The commit of a claim that did not see the link still releases it.
    store.commit_batch(&zero, &done(3), T0).await.unwrap();
    let one = store
        .claim_index(&job, 1, "w1", T0, LEASE)
        .await
        .unwrap()
        .expect("released by the commit");
    assert_eq!(one.index, 1);
    assert_eq!(
        store.batch_info(&job, 0).await.unwrap().unwrap().state,
        BatchState::Done
    );
}

/// An aborted job hands out no more of a partition: the batch in hand
/// still commits, and the one after it is not claimed.
pub async fn an_aborted_job_hands_out_no_more_of_a_partition(store: &dyn JobStore) {
    let job = chained_job(store, "aborted", &[None, Some(0)]).await;
    let zero = claim(store, &job, "w1", T0).await;
    assert!(store
        .finalize(&job, &fin(JobStatus::Aborted), FinalizeWhen::Now)
        .await
        .unwrap());
    store.commit_batch(&zero, &done(3), T0).await.unwrap();
    assert!(store
        .claim_index(&job, 1, "w1", T0, LEASE)
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        store.claim_batch(&job, "w2", T0, LEASE).await.unwrap(),
        Claim::JobFinished(JobStatus::Aborted)
    ));
}

/// A retry reruns a failed batch of a partition after the rest, as a
/// sequential import retried afterwards would: its commit releases nothing
/// again, and the job ends.
pub async fn a_retried_batch_of_a_partition_reruns_after_the_rest(store: &dyn JobStore) {
    let job = chained_job(store, "retried", &[None, Some(0)]).await;
    let zero = claim(store, &job, "w1", T0).await;
    let refused = BatchOutcome {
        state: BatchState::Done,
        processed: 2,
        failed: vec![FailedRecord::unprocessed(
            2,
            vec![crate::job::FieldIssue::new(
                None,
                None,
                "the target refused it",
            )],
        )],
        error: None,
        duplicates: 0,
    };
    store.commit_batch(&zero, &refused, T0).await.unwrap();
    let one = claim(store, &job, "w1", T0).await;
    assert_eq!(one.index, 1);
    store.commit_batch(&one, &done(3), T0).await.unwrap();
    end_and_reopen(store, &job).await;
    assert!(store.requeue_batch(&job, 0, 1).await.unwrap().is_some());
    assert!(store.finish_requeue(&job, 1, 0, T0 + 2).await.unwrap());
    let rerun = claim(store, &job, "w2", T0 + 3).await;
    assert_eq!((rerun.index, rerun.rerun.is_some()), (0, true));
    store.commit_batch(&rerun, &done(3), T0 + 3).await.unwrap();
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!((j.batches_done, j.processed, j.failed), (2, 6, 0));
}
