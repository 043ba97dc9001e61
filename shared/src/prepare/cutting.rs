//! Cutting the file into batches and writing them: the reader cuts batches
//! deterministically (by record count and bytes), and a writer keeps a few
//! shared writes in flight within a memory budget.

use super::*;

impl Preparer<'_> {
    /// Streams the object into batches from where the last publication
    /// left off. Without a checkpoint the object is read from the start and
    /// the batches a previous owner published are cut again but not written
    /// (cutting is deterministic, so they are identical).
    ///
    /// Reading and writing overlap: the reader cuts batches while up to
    /// `writes_in_flight` (16) writes of earlier ones are out, each carrying
    /// the batches cut meanwhile, up to `batches_per_write` (8) (and at most
    /// `MAX_BYTES_IN_FLIGHT` of records held). Batches are published in
    /// order as the writes before them complete, so the protocol sees the
    /// same sequence as a one-at-a-time prepare.
    pub(super) async fn write_batches(
        &self,
        job: &Job,
        lease: &PrepareLease,
        deadline: Option<Instant>,
        progress: &mut Progress,
    ) -> Result<(u64, u64), Stop> {
        let start = self.open_reader(job, lease, deadline, progress).await?;
        // Room for a full group of batches to gather while writes are out.
        let (cuts, to_write) =
            futures::channel::mpsc::channel::<Cut>(self.settings.batches_per_write.max(1));
        let budget = Arc::new(Semaphore::new(BUDGET_UNITS));
        let mut renewed = progress.last_renewal;
        let mut records_read = 0;
        let read = async {
            if self.definition.partitioning().is_some() {
                let cut = self.cut_partitions(
                    job,
                    lease,
                    deadline,
                    start,
                    cuts,
                    budget,
                    &mut renewed,
                    &mut records_read,
                );
                cut.await
            } else {
                let cut = self.cut_batches(
                    job,
                    lease,
                    deadline,
                    start,
                    cuts,
                    budget,
                    &mut renewed,
                    &mut records_read,
                );
                cut.await
            }
        };
        let write = self.write_cuts(job, lease, to_write, progress);
        let (read, write) = futures::join!(read, write);
        progress.records_read += records_read;
        // A failed write stops the reader (its next send fails): the
        // write's error is the one to report.
        write?;
        read
    }

    /// The reading half: records into batches, each sent with where the
    /// next one starts (known once the next record is read).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn cut_batches(
        &self,
        job: &Job,
        lease: &PrepareLease,
        deadline: Option<Instant>,
        start: resume::Start,
        mut cuts: futures::channel::mpsc::Sender<Cut>,
        budget: Arc<Semaphore>,
        renewed: &mut Instant,
        records_read: &mut u64,
    ) -> Result<(u64, u64), Stop> {
        let resume_from = job.batches_ready;
        let mut reader = start.reader;
        let (mut index, mut total) = (start.index, start.records);
        let mut batch: Vec<StagedRecord> = Vec::with_capacity(self.definition.batch_size);
        let mut batch_bytes = 0usize;
        let mut cut_this_run = 0u64;
        // A full batch waits here for the next record's checkpoint.
        let mut full: Option<(u64, Vec<StagedRecord>, usize)> = None;
        while let Some(record) = reader.next_record().await.map_err(source_stop)? {
            if batch.is_empty() {
                // Where this batch starts: the checkpoint published with the
                // batches before it.
                let batch_start = reader.checkpoint();
                if let Some(previous) = full.take() {
                    if !send_cut(&mut cuts, &budget, previous, batch_start.clone(), None).await {
                        return Ok((total, index));
                    }
                }
                if index < resume_from {
                    self.keep_alive(job, lease, deadline, renewed).await?;
                } else if self.must_hand_off(deadline, cut_this_run) {
                    // Before reading the batch: what this run reads past
                    // the checkpoint, the next one reads again.
                    return Err(Stop::Handoff(batch_start));
                }
            }
            *records_read += 1;
            let (record, size) = storable(record);
            batch_bytes += size;
            batch.push(record);
            total += 1;
            if batch.len() >= self.definition.batch_size || batch_bytes >= MAX_BATCH_BYTES {
                let records =
                    std::mem::replace(&mut batch, Vec::with_capacity(self.definition.batch_size));
                if index >= resume_from {
                    full = Some((index, records, batch_bytes));
                    cut_this_run += 1;
                }
                index += 1;
                batch_bytes = 0;
            }
        }
        if let Some(previous) = full.take() {
            if !send_cut(&mut cuts, &budget, previous, None, None).await {
                return Ok((total, index));
            }
        }
        if !batch.is_empty() {
            if index >= resume_from
                && !send_cut(&mut cuts, &budget, (index, batch, batch_bytes), None, None).await
            {
                return Ok((total, index));
            }
            index += 1;
        }
        Ok((total, index))
    }

    /// The writing half: up to `writes_in_flight` writes at once, of up to
    /// `batches_per_write` batches each, taken up in order whatever order
    /// they complete in; publishes as they are taken up. Each batch is not claimable until published, with the
    /// checkpoint of the batch after it.
    pub(super) async fn write_cuts(
        &self,
        job: &Job,
        lease: &PrepareLease,
        cuts: futures::channel::mpsc::Receiver<Cut>,
        progress: &mut Progress,
    ) -> Result<(), Stop> {
        // Batches cut while writes are in flight go out together, sharing
        // requests.
        let in_flight = self.settings.writes_in_flight.max(1);
        let mut written = cuts
            .ready_chunks(self.settings.batches_per_write.max(1))
            .enumerate()
            .map(|(seq, group)| async move {
                let batches: Vec<NewBatch<'_>> = group
                    .iter()
                    .map(|cut| NewBatch {
                        index: cut.index,
                        records: &cut.records,
                        after: cut.after,
                    })
                    .collect();
                self.store
                    .write_batches(&job.id, &batches, self.clock.now_ms())
                    .await
                    .map(|()| {
                        let done = group
                            .into_iter()
                            .map(|cut| (cut.index, cut.next_start, cut.after))
                            .collect::<Vec<_>>();
                        (seq, done)
                    })
            })
            // Writes complete in any order, so one slow write (a throttled
            // request waiting out its backoff) does not hold back those
            // behind it; they are taken up in order below. What waits there
            // is a few numbers a batch, for as long as the slow write retries.
            .buffer_unordered(in_flight);
        let mut completed = std::collections::BTreeMap::new();
        let mut next_seq = 0usize;
        // One publication at a time, while the writes go on: the latest
        // publishable point waits for the one in flight.
        let mut publishing: Option<futures::future::BoxFuture<'_, Result<u64, StoreError>>> = None;
        let mut publishable: Option<(u64, Checkpoint)> = None;
        let mut writing = true;
        while writing || publishing.is_some() {
            tokio::select! {
                // A fixed order, so a run on a paused clock repeats (tokio
                // otherwise picks among ready branches at random). The
                // publication first: it is one at a time, so it cannot
                // starve the writes, while a stream of ready writes could
                // hold back the workers it wakes.
                biased;
                published = async { publishing.as_mut().expect("guarded").await }, if publishing.is_some() => {
                    publishing = None;
                    progress.published = published.map_err(|e| Stop::Error(e.into()))?;
                    progress.last_publish = self.clock.instant();
                    progress.last_renewal = progress.last_publish;
                    self.wake_for(job, progress.published, progress)
                        .await
                        .map_err(|e| Stop::Error(e.into()))?;
                }
                // `BufferUnordered::next` is cancel-safe: a write completing while
                // a publication does stays in the stream.
                done = written.next(), if writing => match done {
                    None => writing = false,
                    Some(done) => {
                        let (seq, done) = done.map_err(|e| Stop::Error(e.into()))?;
                        completed.insert(seq, done);
                        while let Some(done) = completed.remove(&next_seq) {
                            next_seq += 1;
                            // Taken in order: whatever a batch is chained
                            // after is written by now.
                            let links = done.iter().filter_map(|(index, _, after)| Some((after.as_ref()?, index)));
                            for (after, index) in links {
                                self.store
                                    .link_batch(&job.id, *after, *index)
                                    .await
                                    .map_err(|e| Stop::Error(e.into()))?;
                            }
                            for (index, next_start, _) in done {
                                progress.written = index + 1;
                                // The last batch is published by `finish_prepare`.
                                if let Some(next_start) = next_start {
                                    publishable = Some((index + 1, next_start));
                                }
                            }
                        }
                    }
                },
            }
            if publishing.is_none() && progress.publication_due(self.clock.instant()) {
                if let Some((ready, next_start)) = publishable.take() {
                    let checkpoint = next_start.encode();
                    let id = job.id.clone();
                    publishing = Some(Box::pin(async move {
                        self.store
                            .publish(&id, lease, ready, Some(&checkpoint), self.clock.now_ms())
                            .await
                            .map(|()| ready)
                    }));
                }
            }
        }
        Ok(())
    }
}

/// Writes in flight at once while the file is read on.
pub const MAX_WRITES_IN_FLIGHT: usize = 16;
/// Batches in one write at most. With `MAX_WRITES_IN_FLIGHT`, 128 batches in
/// flight: at 10 ms a request that is millions of records a second, past
/// what one vCPU parses, while the memory they hold (records, packed
/// chunks, request bodies) stays within `MAX_BYTES_IN_FLIGHT`.
pub const MAX_BATCHES_PER_WRITE: usize = 8;
/// Records held for writes in flight (and the batch waiting to be sent)
/// at most, whatever the batch size.
pub const MAX_BYTES_IN_FLIGHT: usize = 32 * 1024 * 1024;
pub(super) const BUDGET_UNIT: usize = 1024;
pub(super) const BUDGET_UNITS: usize = MAX_BYTES_IN_FLIGHT / BUDGET_UNIT;

/// A batch cut from the file, on its way to be written: its records, where
/// the batch after it starts (`None` for the last), and its share of the
/// in-flight budget, given back when it is dropped.
pub(super) struct Cut {
    pub(super) index: u64,
    pub(super) records: Vec<StagedRecord>,
    pub(super) next_start: Option<Checkpoint>,
    /// The batch before it in its key partition.
    pub(super) after: Option<u64>,
    pub(super) _held: OwnedSemaphorePermit,
}

/// Hands a full batch to the writer once the in-flight budget has room for
/// it. False when the writer stopped (on an error it reports itself).
pub(super) async fn send_cut(
    cuts: &mut futures::channel::mpsc::Sender<Cut>,
    budget: &Arc<Semaphore>,
    (index, records, bytes): (u64, Vec<StagedRecord>, usize),
    next_start: Option<Checkpoint>,
    after: Option<u64>,
) -> bool {
    use futures::SinkExt;
    let units = (bytes / BUDGET_UNIT + 1).min(BUDGET_UNITS) as u32;
    let permit = budget
        .clone()
        .acquire_many_owned(units)
        .await
        .expect("the budget is never closed");
    let cut = Cut {
        index,
        records,
        next_start,
        after,
        _held: permit,
    };
    cuts.send(cut).await.is_ok()
}

pub(super) enum Stop {
    /// The file is unusable: the job fails with this reason.
    Reject(String),
    /// Too close to the deadline to write another batch: publish what was
    /// written, with where the next batch starts (when known), and let go.
    Handoff(Option<Checkpoint>),
    Error(PrepareError),
}

pub(super) fn object_stop(e: ObjectError) -> Stop {
    if e.is_transient() {
        Stop::Error(PrepareError::Object(e))
    } else {
        Stop::Reject(e.to_string())
    }
}

pub(super) fn source_stop(e: SourceError) -> Stop {
    if e.is_transient() {
        Stop::Error(PrepareError::Read(e))
    } else {
        Stop::Reject(e.to_string())
    }
}

/// A record too large for one DynamoDB item is kept as a failed record
/// (its line and the reason) instead of breaking the batch write.
/// Returns the record as it will be stored, with its stored size.
pub(super) fn storable(record: StagedRecord) -> (StagedRecord, usize) {
    let size = codec::encoded_len(&record);
    if size <= codec::MAX_CHUNK_BYTES {
        return (record, size);
    }
    let kept = StagedRecord {
        line: record.line,
        values: crate::job::Values::absent(record.values.len()),
        issue: Some(Box::new(FieldIssue::new(
            None,
            None,
            format!(
                "record is {size} bytes when stored; the limit is {} bytes",
                codec::MAX_CHUNK_BYTES
            ),
        ))),
    };
    let size = codec::encoded_len(&kept);
    (kept, size)
}
