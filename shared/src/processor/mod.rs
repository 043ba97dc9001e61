//! What happens to each valid record: the `RecordProcessor` trait users
//! implement, and the processor types a definition can name (`registry`),
//! one file each: `dynamodb`, the built-in idempotent upsert.

mod cost;
mod dynamodb;
pub mod embeddings;
mod lambda;
pub mod registry;
mod relationships;
pub mod s3;

pub use cost::{JsonSize, WriteCost};
pub use dynamodb::{DynamoUpsert, ORDER_ATTRIBUTE};
pub use registry::{ProcessorSettings, Processors};

use crate::job::JobId;
use crate::schema::{Definition, ValidRecord};
use async_trait::async_trait;
use std::sync::Arc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a record could not be processed. Retryable errors are retried with
/// jittered exponential backoff (up to `maxRetries`); permanent ones fail the
/// record at once. Either way the batch goes on.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{message}")]
    Retryable {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    #[error("{message}")]
    Permanent {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl ProcessError {
    pub fn retryable(message: impl Into<String>) -> Self {
        ProcessError::Retryable {
            message: message.into(),
            source: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        ProcessError::Permanent {
            message: message.into(),
            source: None,
        }
    }

    pub fn retryable_from(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        ProcessError::Retryable {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    pub fn permanent_from(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        ProcessError::Permanent {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, ProcessError::Retryable { .. })
    }

    /// This error as `count` errors of its kind and message that share its
    /// cause: for records that fail together, through one failed call.
    pub(crate) fn repeated(self, count: usize) -> Vec<ProcessError> {
        let (retryable, message, source) = match self {
            ProcessError::Retryable { message, source } => (true, message, source),
            ProcessError::Permanent { message, source } => (false, message, source),
        };
        let source: Option<Arc<dyn std::error::Error + Send + Sync>> = source.map(Arc::from);
        (0..count)
            .map(|_| {
                let message = message.clone();
                let source = source.clone().map(|s| Box::new(SharedCause(s)) as BoxError);
                if retryable {
                    ProcessError::Retryable { message, source }
                } else {
                    ProcessError::Permanent { message, source }
                }
            })
            .collect()
    }
}

/// Completes `results` of records some of which rode on another record's
/// write (`carrier[i]`: the record whose write carried record `i`, itself
/// for one that wrote): a rider gets its carrier's error, sharing its
/// cause. A rider whose own result is already an error keeps it.
pub(crate) fn share_results(results: &mut [Result<(), ProcessError>], carrier: &[Option<usize>]) {
    let mut riders: std::collections::HashMap<usize, Vec<usize>> = Default::default();
    for (i, c) in carrier.iter().enumerate() {
        if let Some(c) = *c {
            if c != i && results[c].is_err() && results[i].is_ok() {
                riders.entry(c).or_default().push(i);
            }
        }
    }
    for (c, riders) in riders {
        if let Err(e) = std::mem::replace(&mut results[c], Ok(())) {
            let copies = e.repeated(riders.len() + 1);
            for (i, e) in std::iter::once(c).chain(riders).zip(copies) {
                results[i] = Err(e);
            }
        }
    }
}

/// One cause behind several errors (a boxed error cannot be cloned).
#[derive(Debug)]
struct SharedCause(Arc<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for SharedCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Where a record comes from, for processors that need it.
#[derive(Debug, Clone, Copy)]
pub struct ProcessContext<'a> {
    pub job_id: &'a JobId,
    /// When the job was created: of two jobs that write one key, the later
    /// created wins (the built-in upsert's ordering).
    pub job_created_at_ms: i64,
    pub batch_index: u64,
    /// 0 on the first try, then 1.. on retries of a retryable error.
    pub retry: u32,
    pub definition: &'a Definition,
    /// Where a processor that tells repeated keys apart notes the rows it
    /// found to repeat a key of the job: the job's status counts them.
    pub duplicates: &'a Duplicates,
}

/// The lines of a batch's records found to repeat a key an earlier or later
/// row of the same job also has (each row but one of a key). A line noted
/// twice, as on a retry, counts once.
#[derive(Debug, Default)]
pub struct Duplicates(std::sync::Mutex<std::collections::BTreeSet<u64>>);

impl Duplicates {
    /// Notes the record at `line` as a repeat of its key.
    pub fn found(&self, line: u64) {
        self.0.lock().expect("duplicates poisoned").insert(line);
    }

    /// How many distinct lines were noted.
    pub fn count(&self) -> u64 {
        self.0.lock().expect("duplicates poisoned").len() as u64
    }
}

/// The batch whose records were processed, for `finish_batch`.
#[derive(Debug, Clone, Copy)]
pub struct BatchContext<'a> {
    pub job_id: &'a JobId,
    pub batch_index: u64,
    /// The job's round: 0 for its first run, n for its n-th retry, which
    /// processes only the batch's records that failed before.
    pub round: u32,
    pub definition: &'a Definition,
}

/// The job that ended, for `finish_job`.
#[derive(Debug, Clone, Copy)]
pub struct JobContext<'a> {
    pub job: &'a crate::job::Job,
    pub definition: &'a Definition,
}

/// Processes validated records. Must be idempotent: after a worker crash,
/// or when a worker ran out of time under a throughput cap and gave its
/// batch back, the batch is processed again from its first record.
#[async_trait]
pub trait RecordProcessor: Send + Sync {
    async fn process(
        &self,
        record: &ValidRecord,
        ctx: &ProcessContext<'_>,
    ) -> Result<(), ProcessError>;

    /// Processes several records at once (override to batch calls); one
    /// result per record, in order.
    async fn process_batch(
        &self,
        records: &[&ValidRecord],
        ctx: &ProcessContext<'_>,
    ) -> Vec<Result<(), ProcessError>> {
        let mut results = Vec::with_capacity(records.len());
        for record in records {
            results.push(self.process(record, ctx).await);
        }
        results
    }

    /// Called once a batch's records have all been through `process_batch`
    /// (retries included), before the batch's outcome is committed: for a
    /// processor that writes one object per batch from what it was given.
    /// Not called for a batch that is failed without processing (poison)
    /// or given back unfinished under the throughput cap. An error, of
    /// either kind, fails this attempt at the batch as a transient store
    /// error would: nothing is committed, the batch is handed back and the
    /// worker's run ends with the error; the next claim processes every
    /// record of the batch again (so this must be idempotent too), and
    /// after `maxAttempts` the batch is failed as poison. When an operator
    /// retries a job, only the records of the batch that failed are
    /// processed again before it.
    async fn finish_batch(&self, _batch: &BatchContext<'_>) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Called once a job has ended (completed, failed or aborted), before
    /// its report and its ending's event: for a processor that writes
    /// something about the whole job (the `s3` processor's manifest). Its
    /// type must say so (`ProcessorType::finishes_jobs`): the ending then
    /// stays owed until this succeeds, and whoever finds it owed (the
    /// finalizer, a worker, the sweeper) calls it, so it must be
    /// idempotent.
    async fn finish_job(&self, _job: &JobContext<'_>) -> Result<(), ProcessError> {
        Ok(())
    }

    /// What this processor's writes cost against the throughput cap
    /// (`maxWriteUnitsPerSecond`). `None`, the default, for a processor
    /// that does not write DynamoDB: its records cost 0 units, so the cap
    /// never holds it back. One that writes each record to DynamoDB in its
    /// own shape can return `Some(&JsonSize)`.
    fn write_cost(&self) -> Option<&dyn WriteCost> {
        None
    }
}

/// Keeps every record it is given, in memory (tests and dry runs). Its
/// records are billed by their JSON size as DynamoDB bills an item
/// (`JsonSize`), so tests of the throughput cap need no table.
#[derive(Debug, Default)]
pub struct MemoryProcessor {
    pub records: std::sync::Mutex<Vec<ValidRecord>>,
}

#[async_trait]
impl RecordProcessor for MemoryProcessor {
    async fn process(
        &self,
        record: &ValidRecord,
        _ctx: &ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        self.records
            .lock()
            .expect("processor poisoned")
            .push(record.clone());
        Ok(())
    }

    fn write_cost(&self) -> Option<&dyn WriteCost> {
        Some(&JsonSize)
    }
}
