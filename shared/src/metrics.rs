//! Metrics as a port: the domain reports each unit of work (a worker's
//! batch and run, a prepare run, a job's end, a sweep) as a `Metric` to the
//! `MetricsSink` it is given. The Lambda functions' sink, `EmfMetrics`,
//! logs one JSON line on stdout per unit in CloudWatch's embedded metric
//! format (EMF), which CloudWatch Logs turns into metrics, no API call;
//! local runs and the command line report to `NoMetrics`, tests to
//! `RecordingMetrics`. The lines themselves are built by `MetricLine`.
//!
//! Dimensions stay few: the function name only. Job ids go in as plain
//! properties, searchable in the logs but not a metric dimension each.

use crate::job::{JobId, JobStatus};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The namespace when `METRICS_NAMESPACE` is not set.
pub const DEFAULT_NAMESPACE: &str = "BulkImport";
/// The one dimension every metric has.
pub const DIMENSION: &str = "FunctionName";

/// Metric names, as alarms and dashboards refer to them.
pub mod names {
    pub const RECORDS_PROCESSED: &str = "RecordsProcessed";
    pub const RECORDS_FAILED: &str = "RecordsFailed";
    pub const BATCH_DURATION: &str = "BatchDuration";
    pub const PROCESSOR_RETRIES: &str = "ProcessorRetries";
    pub const CONFLICTS: &str = "Conflicts";
    pub const CLAIMS: &str = "Claims";
    pub const CLAIMS_LOST: &str = "ClaimsLost";
    pub const RECORDS_READ: &str = "RecordsRead";
    pub const BATCHES_WRITTEN: &str = "BatchesWritten";
    pub const JOBS_COMPLETED: &str = "JobsCompleted";
    pub const JOBS_FAILED: &str = "JobsFailed";
    pub const JOBS_ABORTED: &str = "JobsAborted";
    pub const ACTIVE_JOBS: &str = "ActiveJobs";
    pub const JOBS_RECOVERED: &str = "JobsRecovered";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
        }
    }
}

/// One EMF document: metrics with their values, and properties.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricLine {
    metrics: Vec<(&'static str, Unit, f64)>,
    properties: Vec<(&'static str, Value)>,
}

impl MetricLine {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn count(mut self, name: &'static str, value: u64) -> Self {
        self.metrics.push((name, Unit::Count, value as f64));
        self
    }

    pub fn millis(mut self, name: &'static str, value: Duration) -> Self {
        self.metrics
            .push((name, Unit::Milliseconds, value.as_secs_f64() * 1000.0));
        self
    }

    /// A value logged with the metrics but not one itself (a job id).
    pub fn property(mut self, name: &'static str, value: impl Into<Value>) -> Self {
        self.properties.push((name, value.into()));
        self
    }

    /// The EMF document (specification: `_aws.CloudWatchMetrics` names the
    /// metrics, their values are top-level members, as is each dimension).
    pub fn to_json(&self, namespace: &str, function: &str, timestamp_ms: i64) -> Value {
        let mut doc = Map::new();
        doc.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": namespace,
                    "Dimensions": [[DIMENSION]],
                    "Metrics": self.metrics.iter()
                        .map(|(name, unit, _)| json!({"Name": name, "Unit": unit.as_str()}))
                        .collect::<Vec<_>>(),
                }],
            }),
        );
        doc.insert(DIMENSION.into(), function.into());
        for (name, value) in &self.properties {
            doc.insert((*name).into(), value.clone());
        }
        for (name, _, value) in &self.metrics {
            doc.insert((*name).into(), json!(value));
        }
        Value::Object(doc)
    }

    /// The value of metric `name` in this line, if it has one.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, value)| *value)
    }
}

/// What the domain reports: one unit of work done, or an event a later
/// line counts.
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    /// A worker committed a batch: the records this run settled in it.
    BatchCommitted {
        job: JobId,
        batch: u64,
        processed: u64,
        failed: u64,
        took: Duration,
    },
    /// Records a processor call is being retried for.
    ProcessorRetries { records: u64 },
    /// A write DynamoDB turned away because a transaction held the item.
    Conflict,
    /// A worker run ended: how many batches it claimed, and lost to reclaims.
    WorkerRun { job: JobId, claims: u64, lost: u64 },
    /// A prepare run ended (finished, handed over, or stopped).
    Prepared {
        job: JobId,
        records_read: u64,
        batches_written: u64,
    },
    /// A job ended (reported once, by the finalizer that ended it).
    JobEnded { job: JobId, status: JobStatus },
    /// A sweep pass ended: the jobs it found active (zero too, so alarms on
    /// stalled jobs see the metric every pass) and those it had to recover.
    Swept { active_jobs: u64, recovered: u64 },
}

/// Where the domain reports its metrics: given to each phase (through
/// `Deps`) like the store, so nothing reaches for a process-wide static.
pub trait MetricsSink: Send + Sync {
    fn record(&self, metric: Metric);
}

impl std::fmt::Debug for dyn MetricsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsSink")
    }
}

/// Turns metrics into EMF lines. Conflicts and processor retries happen
/// deep in the store and the processor loop, with no line of their own:
/// they are counted here and taken by the next batch line. (Lambda runs one
/// invocation at a time per process, so the counts belong to that batch; in
/// a process running several workers they still add up.)
#[derive(Debug, Default)]
pub struct Lines {
    conflicts: AtomicU64,
    processor_retries: AtomicU64,
}

impl Lines {
    /// The line `metric` makes now, if it makes one.
    pub fn line(&self, metric: &Metric) -> Option<MetricLine> {
        match metric {
            Metric::Conflict => {
                self.conflicts.fetch_add(1, Ordering::Relaxed);
                None
            }
            Metric::ProcessorRetries { records } => {
                self.processor_retries
                    .fetch_add(*records, Ordering::Relaxed);
                None
            }
            Metric::BatchCommitted {
                job,
                batch,
                processed,
                failed,
                took,
            } => Some(
                MetricLine::new()
                    .count(names::RECORDS_PROCESSED, *processed)
                    .count(names::RECORDS_FAILED, *failed)
                    .millis(names::BATCH_DURATION, *took)
                    .count(
                        names::PROCESSOR_RETRIES,
                        self.processor_retries.swap(0, Ordering::Relaxed),
                    )
                    .count(names::CONFLICTS, self.conflicts.swap(0, Ordering::Relaxed))
                    .property("jobId", job.as_str())
                    .property("batch", *batch),
            ),
            Metric::WorkerRun { job, claims, lost } => Some(
                MetricLine::new()
                    .count(names::CLAIMS, *claims)
                    .count(names::CLAIMS_LOST, *lost)
                    .property("jobId", job.as_str()),
            ),
            Metric::Prepared {
                job,
                records_read,
                batches_written,
            } => Some(
                MetricLine::new()
                    .count(names::RECORDS_READ, *records_read)
                    .count(names::BATCHES_WRITTEN, *batches_written)
                    .property("jobId", job.as_str()),
            ),
            Metric::JobEnded { job, status } => job_ended_line(job, *status),
            Metric::Swept {
                active_jobs,
                recovered,
            } => Some(
                MetricLine::new()
                    .count(names::ACTIVE_JOBS, *active_jobs)
                    .count(names::JOBS_RECOVERED, *recovered),
            ),
        }
    }
}

fn job_ended_line(job: &JobId, status: JobStatus) -> Option<MetricLine> {
    let name = match status {
        JobStatus::Completed | JobStatus::CompletedWithErrors => names::JOBS_COMPLETED,
        JobStatus::Failed => names::JOBS_FAILED,
        JobStatus::Aborted => names::JOBS_ABORTED,
        JobStatus::Processing => return None,
    };
    Some(
        MetricLine::new()
            .count(name, 1)
            .property("jobId", job.as_str())
            .property("status", status.as_str()),
    )
}

/// The Lambda functions' sink: each line on stdout (the function's log),
/// which CloudWatch Logs turns into metrics.
#[derive(Debug)]
pub struct EmfMetrics {
    namespace: String,
    function: String,
    lines: Lines,
    /// Timestamps the lines: the system's clock (the one `Deps` carries in
    /// production) unless `with_clock` says otherwise.
    clock: crate::clock::Clock,
}

impl EmfMetrics {
    pub fn new(namespace: &str, function: &str) -> Self {
        EmfMetrics {
            namespace: namespace.to_owned(),
            function: function.to_owned(),
            lines: Lines::default(),
            clock: crate::clock::Clock::system(),
        }
    }

    /// Timestamps lines on `clock` (`Deps::clock`).
    pub fn with_clock(mut self, clock: crate::clock::Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Named after the Lambda function running this process.
    pub fn for_lambda(namespace: &str) -> Self {
        let function =
            std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "local".to_owned());
        Self::new(namespace, &function)
    }
}

impl MetricsSink for EmfMetrics {
    fn record(&self, metric: Metric) {
        let Some(line) = self.lines.line(&metric) else {
            return;
        };
        let line = line.to_json(&self.namespace, &self.function, self.clock.now_ms());
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
    }
}

/// Reports nowhere: local runs and the command line keep stdout for their
/// own output.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMetrics;

impl MetricsSink for NoMetrics {
    fn record(&self, _: Metric) {}
}

/// Keeps what was reported, and the lines `EmfMetrics` would have logged
/// for it, for tests to read.
#[derive(Debug, Default)]
pub struct RecordingMetrics {
    recorded: Mutex<Vec<Metric>>,
    lines: Mutex<Vec<MetricLine>>,
    making: Lines,
}

impl RecordingMetrics {
    /// Every metric reported, in order.
    pub fn metrics(&self) -> Vec<Metric> {
        self.recorded.lock().expect("metrics poisoned").clone()
    }

    /// The lines the metrics made, in order.
    pub fn lines(&self) -> Vec<MetricLine> {
        self.lines.lock().expect("metrics poisoned").clone()
    }

    /// The values of metric `name`, one per line that has it.
    pub fn values(&self, name: &str) -> Vec<f64> {
        self.lines().iter().filter_map(|l| l.value(name)).collect()
    }
}

impl MetricsSink for RecordingMetrics {
    fn record(&self, metric: Metric) {
        if let Some(line) = self.making.line(&metric) {
            self.lines.lock().expect("metrics poisoned").push(line);
        }
        self.recorded.lock().expect("metrics poisoned").push(metric);
    }
}

#[cfg(test)]
mod tests;
