//! Cutting a file into key partitions (`partitionBy`): each row goes to
//! the open batch of its partition, a partition's batch is cut when full,
//! and each batch is chained after the one before it in its partition, so
//! workers take a partition's batches one after another, in file order.
//!
//! The file is read in segments. When a segment ends (after
//! `SEGMENT_BATCHES` batches' worth of rows, or when the open batches hold
//! `MAX_OPEN_BYTES`), every open batch is cut, in partition order, so the
//! rows before the next segment are all in cut batches. Every batch of a
//! segment is published with the segment's start as its checkpoint (the
//! last one with the next segment's), carrying the index of the segment's
//! first batch and each partition's last batch before it
//! (`PartitionMark`): a resumed prepare reads the segment again and cuts
//! exactly the batches an uninterrupted one would, writing only those
//! not yet published. It hands over only where a segment starts.

use super::cutting::{send_cut, source_stop, storable, Cut, Stop};
use super::resume::Start;
use super::*;
use crate::source::PartitionMark;

/// A segment holds this many batches' worth of rows for each partition.
const SEGMENT_BATCHES: usize = 4;
/// Records the open batches of all partitions hold at most.
pub const MAX_OPEN_BYTES: usize = 16 * 1024 * 1024;

/// A batch cut from its partition, on its way to the writer.
struct Cutting {
    index: u64,
    records: Vec<StagedRecord>,
    bytes: usize,
    after: Option<u64>,
}

/// The open batch of each partition, and the batches cut so far.
struct Partitions {
    open: Vec<(Vec<StagedRecord>, usize)>,
    /// Each partition's last cut batch.
    tails: Vec<Option<u64>>,
    /// The next batch's index.
    index: u64,
    open_bytes: usize,
    rows: usize,
}

impl Partitions {
    fn add(&mut self, part: usize, record: StagedRecord, size: usize) {
        self.open[part].0.push(record);
        self.open[part].1 += size;
        self.open_bytes += size;
        self.rows += 1;
    }

    /// Cuts a partition's open batch, chained after its last one.
    fn cut(&mut self, part: usize) -> Cutting {
        let (records, bytes) = std::mem::take(&mut self.open[part]);
        self.open_bytes -= bytes;
        let batch = Cutting {
            index: self.index,
            records,
            bytes,
            after: self.tails[part],
        };
        self.tails[part] = Some(self.index);
        self.index += 1;
        batch
    }

    /// Cuts every open batch, in partition order: the segment ends.
    fn cut_all(&mut self) -> Vec<Cutting> {
        self.rows = 0;
        (0..self.open.len())
            .filter(|&part| !self.open[part].0.is_empty())
            .collect::<Vec<_>>()
            .into_iter()
            .map(|part| self.cut(part))
            .collect()
    }
}

impl Preparer<'_> {
    /// The reading half for a partitioned definition: what `cut_batches`
    /// is for the others.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn cut_partitions(
        &self,
        job: &Job,
        lease: &PrepareLease,
        deadline: Option<Instant>,
        start: Start,
        mut cuts: futures::channel::mpsc::Sender<Cut>,
        budget: Arc<Semaphore>,
        renewed: &mut Instant,
        records_read: &mut u64,
    ) -> Result<(u64, u64), Stop> {
        let partitioning = self
            .definition
            .partitioning()
            .expect("only a partitioned definition is cut into partitions");
        let count = partitioning.count as usize;
        let batch_size = self.definition.batch_size;
        let segment_rows = SEGMENT_BATCHES * count * batch_size;
        let resume_from = job.batches_ready;
        let mut reader = start.reader;
        let mut total = start.records;
        let mut tails = start.tails.unwrap_or_default();
        tails.resize(count, None);
        let mut p = Partitions {
            open: vec![(Vec::new(), 0); count],
            tails,
            index: start.index,
            open_bytes: 0,
            rows: 0,
        };
        let mut cut_this_run = 0u64;
        // Where the current segment starts, once its first row is read.
        let mut segment: Option<Checkpoint> = None;
        // The last batch of the segment before, waiting for where the next
        // one starts.
        let mut last: Option<Cutting> = None;
        while let Some(record) = reader.next_record().await.map_err(source_stop)? {
            if segment.is_none() {
                let mut at = reader.checkpoint().expect("a record was just read");
                at.partitions = Some(PartitionMark {
                    batch: p.index,
                    tails: p.tails.clone(),
                });
                if let Some(previous) = last.take() {
                    if !send_new(&mut cuts, &budget, resume_from, previous, Some(at.clone())).await
                    {
                        return Ok((total, p.index));
                    }
                }
                if p.index < resume_from {
                    self.keep_alive(job, lease, deadline, renewed).await?;
                } else if self.must_hand_off(deadline, cut_this_run) {
                    // Before reading the segment: what this run reads past
                    // its start, the next one reads again.
                    return Err(Stop::Handoff(Some(at)));
                }
                segment = Some(at);
            }
            *records_read += 1;
            total += 1;
            let part = self.definition.partition_of(&record).unwrap_or(0) as usize;
            let (record, size) = storable(record);
            p.add(part, record, size);
            if p.open[part].0.len() >= batch_size || p.open[part].1 >= MAX_BATCH_BYTES {
                let batch = p.cut(part);
                cut_this_run += u64::from(batch.index >= resume_from);
                if !send_new(&mut cuts, &budget, resume_from, batch, segment.clone()).await {
                    return Ok((total, p.index));
                }
            }
            if p.rows >= segment_rows || p.open_bytes >= MAX_OPEN_BYTES {
                let mut flushed = p.cut_all();
                last = flushed.pop();
                cut_this_run += last.iter().filter(|b| b.index >= resume_from).count() as u64;
                for batch in flushed {
                    cut_this_run += u64::from(batch.index >= resume_from);
                    if !send_new(&mut cuts, &budget, resume_from, batch, segment.clone()).await {
                        return Ok((total, p.index));
                    }
                }
                segment = None;
            }
        }
        // The end of the file ends the segment; the very last batch is
        // published by `finish_prepare`.
        let mut flushed = p.cut_all();
        let final_batch = last.take().or_else(|| flushed.pop());
        for batch in flushed {
            if !send_new(&mut cuts, &budget, resume_from, batch, segment.clone()).await {
                return Ok((total, p.index));
            }
        }
        if let Some(batch) = final_batch {
            if !send_new(&mut cuts, &budget, resume_from, batch, None).await {
                return Ok((total, p.index));
            }
        }
        Ok((total, p.index))
    }
}

/// Hands a batch to the writer unless it was published already (a resumed
/// prepare cuts those again). False when the writer stopped.
async fn send_new(
    cuts: &mut futures::channel::mpsc::Sender<Cut>,
    budget: &Arc<Semaphore>,
    resume_from: u64,
    batch: Cutting,
    next_start: Option<Checkpoint>,
) -> bool {
    if batch.index < resume_from {
        return true;
    }
    let cut = (batch.index, batch.records, batch.bytes);
    send_cut(cuts, budget, cut, next_start, batch.after).await
}
