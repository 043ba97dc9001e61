//! CloudWatch metrics in the embedded metric format (EMF): one JSON line on
//! stdout per unit of work (a worker's batch and run, a prepare run, a job's
//! end, a sweep), which CloudWatch Logs turns into metrics, no API call.
//! Off until `enable` (the Lambda entry points), so local runs and tests
//! keep stdout for their own output; the lines themselves are built by
//! `MetricLine`, which tests read.
//!
//! Dimensions stay few: the function name only. Job ids go in as plain
//! properties, searchable in the logs but not a metric dimension each.

use crate::job::{Job, JobId, JobStatus};
use crate::sweep::SweepReport;
use serde_json::{json, Map, Value};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
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

    /// Writes the line to stdout when metrics are enabled.
    pub fn emit(self) {
        let Some(sink) = SINK.get() else {
            return;
        };
        let line = self.to_json(&sink.namespace, &sink.function, crate::job::now_ms());
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
    }
}

struct Sink {
    namespace: String,
    function: String,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Turns metric lines on for this process (once; later calls change
/// nothing), named after the Lambda function running it.
pub fn enable(namespace: &str) {
    let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "local".to_owned());
    let _ = SINK.set(Sink {
        namespace: namespace.to_owned(),
        function,
    });
}

/// Conflicts and processor retries happen deep in the store and the
/// processor loop; they are counted here and taken by the next batch line.
/// (Lambda runs one invocation at a time per process, so the counts belong
/// to that batch; in a process running several workers they still add up.)
static CONFLICTS: AtomicU64 = AtomicU64::new(0);
static PROCESSOR_RETRIES: AtomicU64 = AtomicU64::new(0);

/// A write DynamoDB turned away because a transaction held the item.
pub fn conflict() {
    CONFLICTS.fetch_add(1, Ordering::Relaxed);
}

/// Records a processor call is being retried for.
pub fn processor_retries(records: u64) {
    PROCESSOR_RETRIES.fetch_add(records, Ordering::Relaxed);
}

/// A worker committed a batch.
pub fn batch_committed(job: &JobId, index: u64, processed: u64, failed: u64, took: Duration) {
    MetricLine::new()
        .count(names::RECORDS_PROCESSED, processed)
        .count(names::RECORDS_FAILED, failed)
        .millis(names::BATCH_DURATION, took)
        .count(
            names::PROCESSOR_RETRIES,
            PROCESSOR_RETRIES.swap(0, Ordering::Relaxed),
        )
        .count(names::CONFLICTS, CONFLICTS.swap(0, Ordering::Relaxed))
        .property("jobId", job.as_str())
        .property("batch", index)
        .emit();
}

/// A worker run ended: how many batches it claimed, and lost to reclaims.
pub fn worker_run(job: &JobId, claims: u64, lost: u64) {
    MetricLine::new()
        .count(names::CLAIMS, claims)
        .count(names::CLAIMS_LOST, lost)
        .property("jobId", job.as_str())
        .emit();
}

/// A prepare run ended (finished, handed over, or stopped).
pub fn prepared(job: &JobId, records_read: u64, batches_written: u64) {
    MetricLine::new()
        .count(names::RECORDS_READ, records_read)
        .count(names::BATCHES_WRITTEN, batches_written)
        .property("jobId", job.as_str())
        .emit();
}

/// A job ended (emitted once, by the finalizer that ended it).
pub fn job_ended(job: &Job) {
    job_ended_line(job).emit();
}

fn job_ended_line(job: &Job) -> MetricLine {
    let name = match job.status {
        JobStatus::Completed | JobStatus::CompletedWithErrors => names::JOBS_COMPLETED,
        JobStatus::Failed => names::JOBS_FAILED,
        JobStatus::Aborted => names::JOBS_ABORTED,
        JobStatus::Processing => return MetricLine::new(),
    };
    MetricLine::new()
        .count(name, 1)
        .property("jobId", job.id.as_str())
        .property("status", job.status.as_str())
}

/// A sweep pass ended: the jobs it found active (zero too, so alarms on
/// stalled jobs see the metric every pass) and those it had to recover.
pub fn swept(report: &SweepReport) {
    sweep_line(report).emit();
}

fn sweep_line(report: &SweepReport) -> MetricLine {
    MetricLine::new()
        .count(names::ACTIVE_JOBS, report.active_jobs)
        .count(
            names::JOBS_RECOVERED,
            report.refanned + report.prepares_resumed + report.finalized,
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_declares_its_metrics_under_the_namespace_with_one_dimension() {
        let line = MetricLine::new()
            .count(names::RECORDS_PROCESSED, 498)
            .millis(names::BATCH_DURATION, Duration::from_millis(1250))
            .property("jobId", "6afe");
        let doc = line.to_json("BulkImport", "stack-worker", 1_700_000_000_000);
        let cw = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(doc["_aws"]["Timestamp"], 1_700_000_000_000i64);
        assert_eq!(cw["Namespace"], "BulkImport");
        assert_eq!(cw["Dimensions"], json!([["FunctionName"]]));
        assert_eq!(
            cw["Metrics"],
            json!([
                {"Name": "RecordsProcessed", "Unit": "Count"},
                {"Name": "BatchDuration", "Unit": "Milliseconds"},
            ])
        );
        assert_eq!(doc["FunctionName"], "stack-worker");
        assert_eq!(doc["RecordsProcessed"], 498.0);
        assert_eq!(doc["BatchDuration"], 1250.0);
        // A property, not a dimension: no metric per job.
        assert_eq!(doc["jobId"], "6afe");
        let text = doc.to_string();
        assert!(!text.contains('\n'), "one line: {text}");
    }

    #[test]
    fn every_declared_metric_has_a_value_and_every_dimension_a_member() {
        let doc = sweep_line(&SweepReport {
            active_jobs: 2,
            refanned: 1,
            finalized: 1,
            ..SweepReport::default()
        })
        .to_json("N", "f", 0);
        let cw = &doc["_aws"]["CloudWatchMetrics"][0];
        for metric in cw["Metrics"].as_array().unwrap() {
            let name = metric["Name"].as_str().unwrap();
            assert!(doc[name].is_number(), "{name} has no value");
        }
        for dimension in cw["Dimensions"][0].as_array().unwrap() {
            assert!(doc[dimension.as_str().unwrap()].is_string());
        }
        assert_eq!(doc["ActiveJobs"], 2.0);
        assert_eq!(doc["JobsRecovered"], 2.0);
    }

    #[test]
    fn an_ending_counts_under_its_status() {
        let job: Job = serde_json::from_value(json!({
            "id": "j1", "status": "FAILED",
            "source": {"bucket": "b", "key": "k", "version": "v"},
            "prepared": true, "totalRecords": 1, "totalBatches": 1, "batchesReady": 1,
            "batchesHandedOut": 1, "batchesDone": 1, "processed": 0, "failed": 1,
            "prepareLeaseUntilMs": 0, "createdAtMs": 0, "finishedAtMs": 1,
            "failureReason": "all 1 records failed", "report": null,
            "cost": {"requests": 0, "writeUnits": 0.0, "readUnits": 0.0}
        }))
        .unwrap();
        let doc = job_ended_line(&job).to_json("N", "f", 0);
        assert_eq!(doc["JobsFailed"], 1.0);
        assert_eq!(doc["status"], "FAILED");
        assert!(doc.get("JobsCompleted").is_none());
    }
}
