//! Where a prepare starts reading: at the job's checkpoint when it has one
//! (a ranged read of uncompressed input; gzip decompressed from the start
//! and skipped unparsed), else at the start of the object. Work that
//! publishes nothing keeps the lease alive and watches the deadline.

use super::{object_stop, source_stop, Preparer, Progress, Stop};
use crate::clock::Instant;
use crate::job::{Job, JobSource};
use crate::objects::ByteRange;
use crate::source::{Advance, Checkpoint, OpenOptions, RecordReader, ResumeInput};
use crate::store::PrepareLease;
use std::time::Duration;
use tokio::io::AsyncRead;

/// Decompressed bytes skipped between looks at the lease and the deadline:
/// about a millisecond of gzip decoding.
pub const FAST_FORWARD_STEP: u64 = 256 * 1024;

/// A reader and the batch its next record starts.
pub(super) struct Start {
    pub reader: RecordReader,
    pub index: u64,
    /// Records before that batch.
    pub records: u64,
    /// With key partitions, each one's last batch before it.
    pub tails: Option<Vec<Option<u64>>>,
}

impl Preparer<'_> {
    pub(super) async fn open_reader(
        &self,
        job: &Job,
        lease: &PrepareLease,
        deadline: Option<Instant>,
        progress: &mut Progress,
    ) -> Result<Start, Stop> {
        let JobSource::Object(object) = &job.source;
        let name = object.to_string();
        let Some(checkpoint) = checkpoint(job) else {
            let body = self.objects.open(object).await.map_err(object_stop)?;
            let opts = OpenOptions {
                name: &name,
                content_encoding: body.content_encoding.as_deref(),
            };
            let reader = RecordReader::open(body.reader, opts, self.definition)
                .await
                .map_err(source_stop)?;
            if let Some(header) = reader.header() {
                let columns = crate::report::file_columns(self.definition, header);
                self.store
                    .pin_columns(&job.id, &columns)
                    .await
                    .map_err(|e| Stop::Error(e.into()))?;
            }
            return Ok(Start {
                reader,
                index: 0,
                records: 0,
                tails: None,
            });
        };
        tracing::info!(
            job_id = %job.id,
            batch = job.batches_ready,
            offset = checkpoint.offset,
            line = checkpoint.line,
            gzip = checkpoint.gzip,
            "resuming prepare at its checkpoint"
        );
        let input = if checkpoint.gzip {
            let body = self.objects.open(object).await.map_err(object_stop)?;
            ResumeInput::Whole(body.reader)
        } else {
            let head: Box<dyn AsyncRead + Send + Unpin> = match checkpoint.head_len() {
                0 => Box::new(tokio::io::empty()),
                len => {
                    let range = ByteRange::first(len);
                    let head = self.objects.open_range(object, range).await;
                    head.map_err(object_stop)?.reader
                }
            };
            let range = ByteRange::from(checkpoint.offset);
            let rest = self.objects.open_range(object, range).await;
            let rest = rest.map_err(object_stop)?.reader;
            ResumeInput::Ranged { head, rest }
        };
        let mut resuming = RecordReader::resume(input, &checkpoint, &name, self.definition)
            .await
            .map_err(source_stop)?;
        let reader = loop {
            match resuming
                .advance(FAST_FORWARD_STEP)
                .await
                .map_err(source_stop)?
            {
                Advance::Arrived(reader) => break reader,
                Advance::Skipping(next) => {
                    self.keep_alive(job, lease, deadline, &mut progress.last_renewal)
                        .await?;
                    resuming = next;
                }
            }
        };
        let (index, tails) = match checkpoint.partitions {
            Some(mark) => (mark.batch, Some(mark.tails)),
            None => (job.batches_ready, None),
        };
        Ok(Start {
            reader,
            index,
            records: checkpoint.records,
            tails,
        })
    }

    /// Between steps that publish nothing (getting back to where the last
    /// owner stopped): hands over when the deadline nears, and renews the
    /// lease every third of it so that no sweep takes the prepare over
    /// while it is making its way back.
    pub(super) async fn keep_alive(
        &self,
        job: &Job,
        lease: &PrepareLease,
        deadline: Option<Instant>,
        last_renewal: &mut Instant,
    ) -> Result<(), Stop> {
        if self.near(deadline) {
            return Err(Stop::Handoff(None));
        }
        let every = Duration::from_millis(u64::try_from(lease.lease_ms / 3).unwrap_or(0));
        if self
            .clock
            .instant()
            .saturating_duration_since(*last_renewal)
            >= every
        {
            self.store
                .renew_prepare(&job.id, lease, self.clock.now_ms())
                .await
                .map_err(|e| Stop::Error(e.into()))?;
            *last_renewal = self.clock.instant();
        }
        Ok(())
    }
}

/// The job's checkpoint, if it has a usable one. One that does not parse
/// (written by another version) only costs reading from the start.
fn checkpoint(job: &Job) -> Option<Checkpoint> {
    let text = job.prepare_checkpoint.as_deref()?;
    if job.batches_ready == 0 {
        return None;
    }
    match Checkpoint::decode(text) {
        Ok(checkpoint) => Some(checkpoint),
        Err(e) => {
            tracing::warn!(job_id = %job.id, error = %e, "unreadable prepare checkpoint; reading from the start");
            None
        }
    }
}
