//! Publishing written batches (making them claimable, with the checkpoint
//! where the next one starts) in groups, and waking workers for them.

use super::*;

impl Preparer<'_> {
    /// Makes every written batch claimable and wakes workers for them: one
    /// per batch, up to MAX_WORKERS, so workers start while the file is
    /// still being read.
    /// `checkpoint` is where batch `progress.written` starts.
    pub(super) async fn publish(
        &self,
        job: &Job,
        lease: &PrepareLease,
        progress: &mut Progress,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), PrepareError> {
        if progress.written > progress.published {
            let checkpoint = checkpoint.map(Checkpoint::encode);
            self.store
                .publish(
                    &job.id,
                    lease,
                    progress.written,
                    checkpoint.as_deref(),
                    self.clock.now_ms(),
                )
                .await?;
            progress.published = progress.written;
            progress.last_publish = self.clock.instant();
            progress.last_renewal = progress.last_publish;
        }
        self.wake_for(job, progress.published, progress).await?;
        Ok(())
    }

    pub(super) async fn wake_for(
        &self,
        job: &Job,
        ready: u64,
        progress: &mut Progress,
    ) -> Result<(), QueueError> {
        let wanted = ready.min(u64::from(self.settings.max_workers));
        if wanted > progress.woken {
            self.wake(job, wanted - progress.woken).await?;
            progress.woken = wanted;
        }
        Ok(())
    }

    pub(super) async fn wake(&self, job: &Job, workers: u64) -> Result<(), QueueError> {
        let message = WorkMessage {
            job_id: job.id.clone(),
            continuation: false,
        };
        self.queue.send(&vec![message; workers as usize]).await
    }
}

/// How far this prepare got: batches written, published, workers woken.
pub(super) struct Progress {
    /// Batches published when this run began.
    pub(super) started: u64,
    pub(super) written: u64,
    pub(super) published: u64,
    pub(super) last_publish: Instant,
    /// Last extension of the prepare lease (a publication extends it too).
    pub(super) last_renewal: Instant,
    pub(super) woken: u64,
    /// Records this run read (those a resumed run reads again included).
    pub(super) records_read: u64,
}

impl Progress {
    /// Written batches wait to be published: the first at once, then in
    /// groups, or after a while on a slow file (`now` on the phase's clock).
    pub(super) fn publication_due(&self, now: Instant) -> bool {
        let waiting = self.written - self.published;
        waiting > 0
            && (self.published == 0
                || waiting >= PUBLISH_EVERY
                || now.saturating_duration_since(self.last_publish) >= PUBLISH_INTERVAL)
    }
}
