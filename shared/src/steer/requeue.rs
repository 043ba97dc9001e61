//! A retry's requeue pass: puts back the batches whose processing failed,
//! page by page from the cursor recorded on the job, fenced by the round.
//! It grows with the job, so it never runs inside the request that started
//! the retry: the orchestrator runs it from the prepare queue, the sweeper
//! takes over one that stalled, the command-line tool runs its own.

use super::{SteerError, Steering};
use crate::clock::Instant;
use crate::job::JobId;
use futures::{StreamExt, TryStreamExt};
use std::time::Duration;

/// Batches requeued at once.
const PARALLEL_REQUEUES: usize = 16;

/// Failure items a requeue pass reads a page (each names one batch, or a
/// part of one): a page takes a few seconds at most, and records the pass's
/// progress when done.
pub const REQUEUE_PAGE: usize = 100;

/// A requeue pass hands over when less than this is left before its
/// deadline (a page takes far less).
const REQUEUE_MARGIN: Duration = Duration::from_secs(30);

/// How a requeue pass stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequeueOutcome {
    /// Every failed batch is back; the job may complete again.
    Finished { batches: u64, records: u64 },
    /// Near the deadline: the next pass goes on from the recorded cursor.
    HandedOff { batches: u64, records: u64 },
    /// The job has no requeue pass running (it ended, finished its pass
    /// elsewhere, or moved to another round): nothing to do.
    Over,
}

impl Steering<'_> {
    /// Runs the requeue pass of `id`'s current round from its recorded
    /// cursor until it ends or `deadline` is near, waking workers for the
    /// batches it puts back. Safe to run twice at once, or late.
    pub async fn requeue(
        &self,
        id: &JobId,
        deadline: Option<Instant>,
    ) -> Result<RequeueOutcome, SteerError> {
        let job = self.job(id).await?;
        if job.status.is_final() || !job.round.requeuing {
            return Ok(RequeueOutcome::Over);
        }
        let round = job.retries;
        let mut cursor = job.round.requeue_cursor.clone();
        let (mut batches, mut records) = (0, 0);
        let mut woken = 0;
        loop {
            let page = self
                .store
                .retryable_batches(id, cursor.as_deref(), REQUEUE_PAGE)
                .await?;
            let requeued: Vec<u64> = futures::stream::iter(page.batches)
                .map(|index| self.store.requeue_batch(id, index, round))
                .buffer_unordered(PARALLEL_REQUEUES)
                .try_filter_map(|n| async move { Ok(n) })
                .try_collect()
                .await?;
            // Workers start on the first batches back while the pass goes
            // on (they wait for more rather than leave), so a pass wakes at
            // most `max_workers` of them however many pages it reads.
            let wanted = (requeued.len() as u64).min(self.workers() - woken);
            self.wake(id, wanted).await?;
            woken += wanted;
            batches += requeued.len() as u64;
            records += requeued.iter().sum::<u64>();
            let Some(next) = page.next else {
                break;
            };
            if !self
                .store
                .note_requeue(id, round, &next, self.clock.now_ms())
                .await?
            {
                return Ok(RequeueOutcome::Over);
            }
            cursor = Some(next);
            if deadline.is_some_and(|d| self.clock.until(d) < REQUEUE_MARGIN) {
                tracing::info!(job_id = %id, round, batches, records, "requeue pass handed over near the deadline");
                return Ok(RequeueOutcome::HandedOff { batches, records });
            }
        }
        // The round counts from here, over what it settles from now on
        // (commits of reruns already under way count as settled before).
        let now = self.job(id).await?;
        let base = now.processed + now.failed;
        if !self
            .store
            .finish_requeue(id, round, base, self.clock.now_ms())
            .await?
        {
            return Ok(RequeueOutcome::Over);
        }
        tracing::info!(job_id = %id, round, batches, records, "requeue pass finished");
        // Someone must find the round finished, even if nothing came back.
        self.wake(id, 1).await?;
        Ok(RequeueOutcome::Finished { batches, records })
    }
}
