//! In-memory `JobStore` with the same protocol as the DynamoDB one: batches
//! are written, then published; a cursor hands out published batch indexes,
//! expired or orphaned batches are reclaimed after the cursor runs out,
//! every write after a claim is fenced by its version.

mod claims;
mod jobs;
mod prepare;

use super::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
struct StoredBatch {
    info: BatchInfo,
    records: Vec<StagedRecord>,
    failures: Vec<FailedRecord>,
    /// The claim version when the batch was last queued.
    base_version: u64,
    rerun: Option<Rerun>,
    /// The round that last ran or requeued it.
    round: u32,
    content: BatchContent,
    /// The batch after it in its key partition, once linked.
    next: Option<u64>,
}

#[derive(Debug)]
struct JobState {
    job: Job,
    prepare: Option<(String, i64)>,
    /// Written batches, published or not (`job.batches_ready` says).
    batches: BTreeMap<u64, StoredBatch>,
    /// Handed-out batches not yet terminal (what the DynamoDB store's
    /// lease index holds): a claim past the cursor looks only at these.
    open: std::collections::BTreeSet<u64>,
    /// Prepare lease renewals without publication.
    renewals: u64,
    /// Until when a caller holds the right to write the owed report.
    report_lease_until_ms: i64,
}

impl JobState {
    /// Whether `lease` may still write this job's batches.
    fn preparing(&self, lease: &PrepareLease) -> bool {
        matches!(&self.prepare, Some((owner, _)) if owner == &lease.owner)
            && !self.job.prepared
            && !self.job.status.is_final()
    }
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    jobs: Mutex<HashMap<JobId, JobState>>,
    definitions: Mutex<HashMap<JobId, String>>,
    columns: Mutex<HashMap<JobId, Vec<String>>>,
    /// Writes held back: the write carrying a batch waits until another
    /// batch is written (see `hold_write`).
    held_writes: Mutex<Vec<(u64, u64, Arc<tokio::sync::Notify>)>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times the prepare lease of `job` was renewed without a
    /// publication (a timing-free view for tests).
    pub fn prepare_renewals(&self, job: &JobId) -> u64 {
        let jobs = self.jobs.lock().expect("memory store poisoned");
        jobs.get(job).map_or(0, |s| s.renewals)
    }

    /// Holds the write carrying batch `held` (of any job) until a write
    /// carrying batch `until` comes: a slow write, for tests of what the
    /// writes behind it do meanwhile.
    pub fn hold_write(&self, held: u64, until: u64) {
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut holds = self.held_writes.lock().expect("memory store poisoned");
        holds.push((held, until, gate));
    }

    /// Waits out a hold on any of `indexes`, and releases the holds that
    /// wait for one of them.
    async fn pass_holds(&self, indexes: &[u64]) {
        let gates: Vec<_> = {
            let holds = self.held_writes.lock().expect("memory store poisoned");
            for (_, until, gate) in holds.iter() {
                if indexes.contains(until) {
                    // A permit is kept if the held write is not waiting yet.
                    gate.notify_one();
                }
            }
            holds
                .iter()
                .filter(|(held, _, _)| indexes.contains(held))
                .map(|(_, _, gate)| gate.clone())
                .collect()
        };
        for gate in gates {
            gate.notified().await;
        }
    }

    /// The batch chained after batch `index` of `job` in its key
    /// partition, and whether `index` waits for the one before it.
    pub fn chain_of(&self, job: &JobId, index: u64) -> (Option<u64>, bool) {
        let jobs = self.jobs.lock().expect("memory store poisoned");
        jobs.get(job)
            .and_then(|s| s.batches.get(&index))
            .map_or((None, false), |b| {
                (b.next, b.info.state == BatchState::Waiting)
            })
    }

    fn with_job<T>(
        &self,
        job: &JobId,
        f: impl FnOnce(&mut JobState) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut jobs = self.jobs.lock().expect("memory store poisoned");
        let state = jobs
            .get_mut(job)
            .ok_or_else(|| StoreError::JobNotFound(job.clone()))?;
        f(state)
    }
}

/// Records that `job` owes its `kind` event (once, in lifecycle order).
fn owe(job: &mut Job, kind: EventKind) {
    if let Err(at) = job.owed_events.binary_search(&kind) {
        job.owed_events.insert(at, kind);
    }
}

#[cfg(test)]
impl MemoryStore {
    /// Forgets the stored records of a batch, as a lost chunk item would;
    /// the batch still says how many it had.
    pub(crate) fn lose_records(&self, job: &JobId, index: u64) {
        let mut jobs = self.jobs.lock().expect("memory store poisoned");
        let state = jobs.get_mut(job).expect("job exists");
        let batch = state.batches.get_mut(&index).expect("batch exists");
        batch.records.clear();
    }
}

#[cfg(test)]
mod tests {
    crate::conformance_tests!(async { super::MemoryStore::new() });
}
