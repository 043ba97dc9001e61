//! The `JobStore` conformance suite: plain async functions, one per protocol
//! rule, run against every backend by `conformance_tests!` (one test each, a
//! fresh store each, so one failure does not hide the rest). The cases live
//! in one file per topic; this module holds the fixtures they share.

pub mod claims;
pub mod commits;
pub mod events;
pub mod finalize;
pub mod partitions;
pub mod prepare;
pub mod retry;

use super::*;

const LEASE: i64 = 60_000;
const T0: i64 = 1_700_000_000_000;

fn source(name: &str) -> SourceRef {
    SourceRef {
        bucket: "uploads".into(),
        key: format!("{name}.csv"),
        version: "v1".into(),
    }
}

fn lease(owner: &str) -> PrepareLease {
    PrepareLease {
        owner: owner.into(),
        lease_ms: LEASE,
    }
}

fn records(batch: u64, n: u64) -> Vec<StagedRecord> {
    (0..n)
        .map(|i| StagedRecord {
            line: batch * 100 + i + 2,
            values: vec![
                Some(format!("user{i}@example.com")),
                Some(format!("User {i}")),
                None,
            ]
            .into(),
            issue: None,
        })
        .collect()
}

/// A job with `batches` batches of 3 records; prepared unless `open`.
async fn job_with(store: &dyn JobStore, name: &str, batches: u64, open: bool) -> JobId {
    let src = source(name);
    let owner = lease("orchestrator");
    let CreateOutcome::Created(job) = store.create_job(&src, &owner, T0).await.unwrap() else {
        panic!("job should be new");
    };
    for index in 0..batches {
        let recs = records(index, 3);
        store
            .write_batch(
                &job.id,
                NewBatch {
                    index,
                    records: &recs,
                    after: None,
                },
                T0,
            )
            .await
            .unwrap();
        store
            .publish(&job.id, &owner, index + 1, None, T0)
            .await
            .unwrap();
    }
    if !open {
        store
            .finish_prepare(&job.id, &owner, batches * 3, batches)
            .await
            .unwrap();
    }
    job.id
}

async fn claim(store: &dyn JobStore, job: &JobId, worker: &str, now: i64) -> ClaimedBatch {
    match store.claim_batch(job, worker, now, LEASE).await.unwrap() {
        Claim::Batch(c) => c,
        other => panic!("expected a batch for {worker}, got {other:?}"),
    }
}

fn done(processed: u64) -> BatchOutcome {
    BatchOutcome {
        state: BatchState::Done,
        processed,
        failed: vec![],
        error: None,
        duplicates: 0,
    }
}

fn fin(status: JobStatus) -> Finalization {
    Finalization {
        status,
        reason: None,
        report_owed: false,
        now_ms: T0 + 1,
    }
}

/// Acknowledges every event the job owes (as a delivery would).
async fn ack_all(store: &dyn JobStore, job: &JobId) {
    let j = store.get_job(job).await.unwrap().unwrap();
    let round = j.retries;
    for kind in j.owed_events {
        store.ack_event(job, kind, round).await.unwrap();
    }
}

/// Claims and commits every batch of a prepared job; `outcome(index)` says
/// how each ends.
async fn settle(store: &dyn JobStore, job: &JobId, outcome: impl Fn(u64) -> BatchOutcome) {
    loop {
        match store.claim_batch(job, "w", T0, LEASE).await.unwrap() {
            Claim::Batch(c) => store.commit_batch(&c, &outcome(c.index), T0).await.unwrap(),
            Claim::NoneAvailable => return,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Reopens a final job for round `seen + 1`.
fn reopening(seen: u32, requeue: bool, now_ms: i64) -> Reopening {
    Reopening {
        seen_retries: seen,
        requeue,
        base: 0,
        now_ms,
    }
}

/// Stamps out one `#[tokio::test]` per conformance case for a backend;
/// `$make` is an async block returning a fresh store. Cases are listed by
/// the module (file) that holds them.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            prepare: [
                create_job_is_idempotent_per_object_version,
                prepare_lease_fences_a_second_orchestrator,
                released_prepare_lease_is_taken_over_at_once,
                the_checkpoint_travels_with_its_publication,
                renewing_the_prepare_lease_is_fenced_and_publishes_nothing,
                batches_written_together_are_stored_whole_and_claimed_ones_kept,
                the_first_definition_pinned_to_a_job_stays,
                the_first_columns_pinned_to_a_job_stay_beside_its_definition,
            ],
            claims: [
                batches_are_claimable_as_soon_as_written,
                each_batch_goes_to_one_of_two_racing_workers,
                every_batch_is_handed_out_once_while_leases_are_live,
                expired_lease_is_reclaimed_with_a_higher_version,
                zombie_worker_cannot_extend_or_release_a_reclaimed_lease,
                released_batch_is_reclaimable_at_once_and_keeps_its_error,
                yielded_batch_is_reclaimable_at_once_without_an_attempt,
                lease_view_tells_live_workers_from_stalled_batches,
                a_live_lease_has_watchers_told_when_it_runs_out,
            ],
            commits: [
                zombie_worker_cannot_commit_reclaimed_batch,
                committing_twice_counts_once,
                counters_and_failures_move_with_the_batch,
                counters_add_up_over_many_batches_and_workers,
            ],
            finalize: [
                finalize_waits_for_prepare_and_every_batch,
                exactly_one_of_racing_finalizers_wins,
                abort_finalizes_before_all_batches_are_done,
                after_an_early_finalization_commits_count_and_prepare_is_fenced,
                active_jobs_are_those_still_processing,
                jobs_are_listed_newest_first_by_status,
                jobs_are_listed_by_kind,
                one_caller_at_a_time_writes_an_owed_report,
            ],
            events: [
                a_job_owes_each_lifecycle_event_until_acknowledged,
                each_ending_owes_the_event_that_announces_it,
                acknowledging_an_event_not_owed_changes_nothing,
                a_late_acknowledgement_leaves_the_next_rounds_event_owed,
            ],
            partitions: [
                a_partitions_next_batch_waits_for_the_one_before,
                a_batch_linked_after_its_predecessor_ended_is_claimable_at_once,
                a_link_made_while_the_predecessor_is_claimed_is_honoured_by_its_commit,
                an_aborted_job_hands_out_no_more_of_a_partition,
                a_retried_batch_of_a_partition_reruns_after_the_rest,
            ],
            retry: [
                racing_requeues_of_a_batch_move_it_once,
                a_retry_requeues_processing_failures_and_counts_move,
                a_rerun_replaces_the_earlier_failure_items,
                a_job_reopens_once_per_round_and_only_when_final,
            ],
        );
    };
    (@cases $make:expr; $($module:ident: [$($case:ident),* $(,)?]),* $(,)?) => {
        $($(
            #[tokio::test]
            async fn $case() {
                let store = $make.await;
                $crate::store::conformance::$module::$case(&store).await;
            }
        )*)*
    };
}
