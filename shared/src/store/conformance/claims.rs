//! Conformance cases for claims: each batch goes to one worker, leases
//! expire, are released or yielded, and a claim's version fences its writes.

use super::*;

pub async fn batches_are_claimable_as_soon_as_written(store: &dyn JobStore) {
    let job = job_with(store, "early", 1, true).await;
    let c = claim(store, &job, "w1", T0).await;
    assert_eq!((c.index, c.version, c.record_count), (0, 1, 3));
    assert_eq!(
        store.load_records(&job, c.index).await.unwrap(),
        records(0, 3)
    );
    let next = store.claim_batch(&job, "w2", T0, LEASE).await.unwrap();
    assert_eq!(next, Claim::Wait, "more batches are coming");
    store
        .finish_prepare(&job, &lease("orchestrator"), 3, 1)
        .await
        .unwrap();
    let next = store.claim_batch(&job, "w2", T0, LEASE).await.unwrap();
    assert_eq!(next, Claim::NoneAvailable);
}

pub async fn each_batch_goes_to_one_of_two_racing_workers(store: &dyn JobStore) {
    let job = job_with(store, "race", 1, false).await;
    let (a, b) = tokio::join!(
        store.claim_batch(&job, "w1", T0, LEASE),
        store.claim_batch(&job, "w2", T0, LEASE)
    );
    let won = [a.unwrap(), b.unwrap()]
        .into_iter()
        .filter(|c| matches!(c, Claim::Batch(_)))
        .count();
    assert_eq!(won, 1, "exactly one worker gets the batch");
}

pub async fn every_batch_is_handed_out_once_while_leases_are_live(store: &dyn JobStore) {
    let job = job_with(store, "many", 5, false).await;
    let mut seen = Vec::new();
    for w in 0..7 {
        match store
            .claim_batch(&job, &format!("w{w}"), T0, LEASE)
            .await
            .unwrap()
        {
            Claim::Batch(c) => seen.push(c.index),
            Claim::NoneAvailable => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    seen.sort();
    assert_eq!(seen, vec![0, 1, 2, 3, 4]);
}

pub async fn expired_lease_is_reclaimed_with_a_higher_version(store: &dyn JobStore) {
    let job = job_with(store, "stale", 1, false).await;
    let first = claim(store, &job, "w1", T0).await;
    assert!(matches!(
        store
            .claim_batch(&job, "w2", T0 + LEASE - 1, LEASE)
            .await
            .unwrap(),
        Claim::NoneAvailable
    ));
    let second = claim(store, &job, "w2", T0 + LEASE + 1).await;
    assert_eq!(second.index, first.index);
    assert!(second.version > first.version);
}

pub async fn zombie_worker_cannot_extend_or_release_a_reclaimed_lease(store: &dyn JobStore) {
    let job = job_with(store, "zombie-lease", 1, false).await;
    let zombie = claim(store, &job, "w1", T0).await;
    store.extend_lease(&zombie, T0 + 2 * LEASE).await.unwrap();
    // The extension holds: the batch is not reclaimable at the old expiry.
    assert!(matches!(
        store
            .claim_batch(&job, "w2", T0 + LEASE + 1, LEASE)
            .await
            .unwrap(),
        Claim::NoneAvailable
    ));
    let _fresh = claim(store, &job, "w2", T0 + 2 * LEASE + 1).await;
    assert!(matches!(
        store.extend_lease(&zombie, T0 + 5 * LEASE).await,
        Err(StoreError::ClaimLost { .. })
    ));
    assert!(matches!(
        store.release_batch(&zombie, "boom").await,
        Err(StoreError::ClaimLost { .. })
    ));
}

pub async fn released_batch_is_reclaimable_at_once_and_keeps_its_error(store: &dyn JobStore) {
    let job = job_with(store, "release", 1, false).await;
    let c = claim(store, &job, "w1", T0).await;
    store
        .release_batch(&c, "target table unavailable")
        .await
        .unwrap();
    let again = claim(store, &job, "w2", T0 + 1).await;
    assert_eq!(again.index, c.index);
    assert_eq!(again.version, c.version + 1);
    assert_eq!(
        again.last_error.as_deref(),
        Some("target table unavailable")
    );
}

/// A batch given back because its worker ran out of time is claimable at
/// once, and that claim does not count as an attempt; a release does.
pub async fn yielded_batch_is_reclaimable_at_once_without_an_attempt(store: &dyn JobStore) {
    let job = job_with(store, "yield", 1, false).await;
    let first = claim(store, &job, "w1", T0).await;
    assert_eq!(first.attempt, 1);
    store
        .release_batch(&first, "target table unavailable")
        .await
        .unwrap();
    let second = claim(store, &job, "w2", T0 + 1).await;
    assert_eq!(second.attempt, 2, "a released claim counts");
    store.yield_batch(&second).await.unwrap();
    let third = claim(store, &job, "w3", T0 + 2).await;
    assert_eq!(
        (third.index, third.version, third.attempt),
        (second.index, second.version + 1, 2),
        "a yielded claim does not count"
    );
    assert_eq!(
        third.last_error.as_deref(),
        Some("target table unavailable"),
        "the last error is kept"
    );
    store.yield_batch(&third).await.unwrap();
    let fourth = claim(store, &job, "w4", T0 + 3).await;
    assert_eq!((fourth.version, fourth.attempt), (third.version + 1, 2));
    // Fenced by the claim: a stale one gives nothing back.
    assert!(matches!(
        store.yield_batch(&third).await,
        Err(StoreError::ClaimLost { .. })
    ));
    let info = store.batch_info(&job, 0).await.unwrap().unwrap();
    assert_eq!(info.worker.as_deref(), Some("w4"));
    store.commit_batch(&fourth, &done(3), T0 + 4).await.unwrap();
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!((j.batches_done, j.processed, j.failed), (1, 3, 0));
}

pub async fn lease_view_tells_live_workers_from_stalled_batches(store: &dyn JobStore) {
    let job = job_with(store, "view", 3, false).await;
    let view = store.lease_view(&job, T0).await.unwrap();
    assert_eq!(
        view,
        LeaseView {
            live: false,
            reclaimable: 0
        },
        "batches not handed out yet are not stalled"
    );
    let _dead = claim(store, &job, "dead", T0 - 2 * LEASE).await;
    let _alive = claim(store, &job, "alive", T0).await;
    let view = store.lease_view(&job, T0).await.unwrap();
    assert_eq!(
        view,
        LeaseView {
            live: true,
            reclaimable: 0
        },
        "a live worker takes the stalled batch itself"
    );
    let view = store.lease_view(&job, T0 + 2 * LEASE).await.unwrap();
    assert_eq!(
        view,
        LeaseView {
            live: false,
            reclaimable: 2
        },
        "once every lease has run out, both are stalled"
    );
    let j = store.get_job(&job).await.unwrap().unwrap();
    assert_eq!(j.batches_handed_out, 2);
}

/// A worker with nothing to claim can watch the live leases for one that
/// runs out: each live lease has a watcher, told when it runs out.
pub async fn a_live_lease_has_watchers_told_when_it_runs_out(store: &dyn JobStore) {
    let job = job_with(store, "watched", 3, false).await;
    let watchers: Vec<String> = (0..256).map(|w| format!("watcher-{w}")).collect();
    for w in &watchers {
        assert_eq!(store.next_expiry(&job, w, T0).await.unwrap(), None);
    }
    let held = claim(store, &job, "holder", T0).await;
    let told: Vec<Option<i64>> = {
        let mut told = Vec::new();
        for w in &watchers {
            told.push(store.next_expiry(&job, w, T0).await.unwrap());
        }
        told
    };
    assert!(told.contains(&Some(T0 + LEASE)), "nobody watches the lease");
    assert!(told.iter().all(|t| t.is_none() || *t == Some(T0 + LEASE)));
    // Run out, or committed: nothing left to watch.
    for w in &watchers {
        assert_eq!(
            store.next_expiry(&job, w, T0 + LEASE + 1).await.unwrap(),
            None
        );
    }
    store.commit_batch(&held, &done(3), T0).await.unwrap();
    for w in &watchers {
        assert_eq!(store.next_expiry(&job, w, T0).await.unwrap(), None);
    }
}
