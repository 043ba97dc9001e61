//! SQS `{jobId}` messages -> worker runs, with partial batch failures: a
//! message fails only if its job's run failed, so SQS redelivers just that.

use super::Deps;
use crate::job::JobId;
use crate::metrics::Metric;
use crate::process::StopReason;
use crate::queue::WorkMessage;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::LambdaEvent;
use std::collections::BTreeMap;
use tracing::Instrument;

/// Runs one worker loop per distinct job in the event (duplicates of a job
/// share it). Returns the ids of messages to retry.
pub async fn handle(
    deps: &Deps,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    let deadline = super::deadline_of(&deps.clock, event.context.deadline);
    let mut failures = Vec::new();
    let mut jobs: BTreeMap<JobId, Vec<String>> = BTreeMap::new();
    for message in &event.payload.records {
        let id = message.message_id.clone().unwrap_or_default();
        match message
            .body
            .as_deref()
            .map(serde_json::from_str::<WorkMessage>)
        {
            Some(Ok(m)) => jobs.entry(m.job_id).or_default().push(id),
            _ => {
                // Retried until the queue's redrive policy moves it to the DLQ.
                tracing::error!(message_id = %id, "message body is not {{\"jobId\": ...}}");
                failures.push(id);
            }
        }
    }
    for (job, ids) in jobs {
        let worker_id = format!("{}:{}", event.context.request_id, job);
        let span = tracing::info_span!("work", job_id = %job);
        let result = async {
            let definition = deps
                .pinned
                .of(deps.store.as_ref(), &job, &deps.routes)
                .await?;
            let created = deps.pinned.created_at(deps.store.as_ref(), &job).await?;
            let processor = deps.processors.require(&definition)?;
            let worker = deps.worker(processor.as_ref(), &definition, created);
            let report = worker.run(&job, &worker_id, deadline).await?;
            tracing::info!(batches = report.batches, processed = report.processed, failed = report.failed, stop = ?report.stop, "worker run ended");
            deps.metrics.record(Metric::WorkerRun {
                job: job.clone(),
                claims: report.batches + report.lost_claims,
                lost: report.lost_claims,
            });
            if report.stop == StopReason::Deadline {
                // Hand the rest to a fresh invocation rather than time out.
                deps.queue.send(&[WorkMessage { job_id: job.clone(), continuation: true }]).await?;
            }
            Ok::<_, lambda_runtime::Error>(())
        }
        .instrument(span)
        .await;
        if let Err(e) = result {
            let error = crate::telemetry::error_chain(e.as_ref());
            tracing::error!(job_id = %job, %error, "worker run failed; messages will be retried");
            failures.extend(ids);
        }
    }
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failures
        .into_iter()
        .map(|id| {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id;
            f
        })
        .collect();
    Ok(response)
}
