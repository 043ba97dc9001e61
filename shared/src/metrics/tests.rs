//! The lines' EMF documents, and what a job run in memory reports to the
//! sink its `Deps` carry.

use super::*;
use crate::job::Job;

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
    let swept = Metric::Swept {
        active_jobs: 2,
        recovered: 2,
    };
    let doc = Lines::default().line(&swept).unwrap().to_json("N", "f", 0);
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
    let doc = job_ended_line(&job.id, job.status)
        .unwrap()
        .to_json("N", "f", 0);
    assert_eq!(doc["JobsFailed"], 1.0);
    assert_eq!(doc["status"], "FAILED");
    assert!(doc.get("JobsCompleted").is_none());
}

#[test]
fn conflicts_and_processor_retries_go_out_with_the_next_batch_line() {
    let lines = Lines::default();
    assert!(
        lines.line(&Metric::Conflict).is_none(),
        "no line of its own"
    );
    lines.line(&Metric::Conflict);
    lines.line(&Metric::ProcessorRetries { records: 3 });
    let committed = Metric::BatchCommitted {
        job: JobId::new("j1"),
        batch: 0,
        processed: 2,
        failed: 0,
        took: Duration::from_millis(5),
    };
    let first = lines.line(&committed).unwrap();
    assert_eq!(first.value(names::CONFLICTS), Some(2.0));
    assert_eq!(first.value(names::PROCESSOR_RETRIES), Some(3.0));
    let second = lines.line(&committed).unwrap();
    assert_eq!(second.value(names::CONFLICTS), Some(0.0), "taken once");
    assert_eq!(second.value(names::PROCESSOR_RETRIES), Some(0.0));
}

mod pipeline {
    //! A job run end to end on in-memory backends through `Deps`, whose
    //! sink every phase reports to.

    use super::*;
    use crate::events::MemoryEvents;
    use crate::job::SourceRef;
    use crate::objects::MemoryObjects;
    use crate::ports::Deps;
    use crate::prepare::{PrepareOutcome, PrepareSettings};
    use crate::process::WorkerSettings;
    use crate::processor::{ProcessContext, ProcessError, RecordProcessor};
    use crate::queue::MemoryQueue;
    use crate::report::MemoryReports;
    use crate::retry::Backoff;
    use crate::schema::{Definition, ValidRecord};
    use crate::store::memory::MemoryStore;
    use crate::throttle::MemoryThrottle;
    use async_trait::async_trait;
    use std::sync::Arc;

    const DEFINITION: &str = r#"{"fields": [{"name": "email", "type": "email", "required": true}], "keyField": "email", "batchSize": 2}"#;
    const CSV: &str = "email\na@x.org\nb@x.org\nc@x.org\nd@x.org\ne@x.org\n";

    /// Turns `a@x.org` away once (retryable), then takes every record.
    #[derive(Default)]
    struct BusyOnce;

    #[async_trait]
    impl RecordProcessor for BusyOnce {
        async fn process(
            &self,
            record: &ValidRecord,
            ctx: &ProcessContext<'_>,
        ) -> Result<(), ProcessError> {
            let email = record.get("email").and_then(|v| v.as_str());
            if email == Some("a@x.org") && ctx.retry == 0 {
                return Err(ProcessError::retryable("busy"));
            }
            Ok(())
        }
    }

    fn deps(metrics: Arc<RecordingMetrics>) -> (Deps, SourceRef) {
        let objects = Arc::new(MemoryObjects::default());
        let head = objects.put("uploads", "users.csv", CSV);
        let source = SourceRef {
            bucket: "uploads".into(),
            key: "users.csv".into(),
            version: head.version(),
        };
        let deps = Deps {
            store: Arc::new(MemoryStore::new()),
            objects: objects.clone(),
            versions: objects,
            queue: Arc::new(MemoryQueue::default()),
            prepare_queue: None,
            events: Arc::new(MemoryEvents::default()),
            reports: Arc::new(MemoryReports::default()),
            metrics,
            processors: Arc::new(crate::processor::Processors::given(Arc::new(BusyOnce))),
            throttle: Arc::new(MemoryThrottle::default()),
            routes: Arc::new(crate::routes::Routes::single(
                Definition::from_json(DEFINITION, "test").unwrap(),
            )),
            pinned: Arc::default(),
            prepare: PrepareSettings::default(),
            worker: WorkerSettings {
                backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(2)),
                ..WorkerSettings::default()
            },
            clock: crate::clock::Clock::system(),
            rng: crate::rng::Rng::seeded(11),
        };
        (deps, source)
    }

    #[tokio::test]
    async fn a_job_reports_its_prepare_each_batch_and_its_end_once() {
        let metrics = Arc::new(RecordingMetrics::default());
        let (deps, source) = deps(metrics.clone());
        let definition = deps.routes.primary().clone();
        let PrepareOutcome::Prepared(job) = deps
            .preparer(&definition)
            .run(&source, "orchestrator")
            .await
            .unwrap()
        else {
            panic!("the file is prepared");
        };
        let processor = deps.processors.require(&definition).unwrap();
        let run = deps
            .worker(processor.as_ref(), &definition, 0)
            .run(&job.id, "worker", None)
            .await
            .unwrap();
        assert!(run.finalized, "the worker ends the job");

        assert_eq!(metrics.values(names::RECORDS_READ), vec![5.0]);
        assert_eq!(metrics.values(names::BATCHES_WRITTEN), vec![3.0]);
        // One line per batch, in the order the worker claimed them; the
        // retried record is counted with its batch's line.
        assert_eq!(
            metrics.values(names::RECORDS_PROCESSED),
            vec![2.0, 2.0, 1.0]
        );
        assert_eq!(metrics.values(names::RECORDS_FAILED), vec![0.0; 3]);
        assert_eq!(
            metrics.values(names::PROCESSOR_RETRIES),
            vec![1.0, 0.0, 0.0]
        );
        assert_eq!(metrics.values(names::JOBS_COMPLETED), vec![1.0]);
        let ended: Vec<Metric> = metrics
            .metrics()
            .into_iter()
            .filter(|m| matches!(m, Metric::JobEnded { .. }))
            .collect();
        assert_eq!(
            ended,
            vec![Metric::JobEnded {
                job: job.id.clone(),
                status: JobStatus::Completed,
            }]
        );

        // A sweep pass after the end finds nothing to do, and says so.
        let report = deps.sweeper().sweep("sweeper", None).await.unwrap();
        assert_eq!(report.active_jobs, 0);
        assert_eq!(metrics.values(names::ACTIVE_JOBS), vec![0.0]);
        assert_eq!(metrics.values(names::JOBS_RECOVERED), vec![0.0]);
        assert_eq!(metrics.values(names::JOBS_COMPLETED), vec![1.0], "once");

        // Settling again, as whoever finds an ending's event or report
        // still owed does, reports no second end.
        deps.finalizer(&definition).settle(&job.id).await.unwrap();
        assert_eq!(
            metrics.values(names::JOBS_COMPLETED),
            vec![1.0],
            "still once"
        );
    }
}
