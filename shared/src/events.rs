//! Job lifecycle notifications. `job.completed` is recorded on the job when
//! it finalizes and delivered at least once (the finalizer sends it, the
//! sweeper resends what was never acknowledged), with a stable event id
//! subscribers deduplicate on.

use crate::job::JobSummary;
use async_trait::async_trait;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
#[error("publishing the job-completed event failed")]
pub struct EventError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

#[async_trait]
pub trait JobEvents: Send + Sync {
    async fn job_completed(&self, summary: &JobSummary) -> Result<(), EventError>;
}

/// Logs the event (always on, so CloudWatch subscriptions and metric filters
/// can use it) and, when configured, sends it to an SQS queue.
pub struct SqsEvents {
    pub client: aws_sdk_sqs::Client,
    pub queue_url: Option<String>,
}

#[async_trait]
impl JobEvents for SqsEvents {
    async fn job_completed(&self, summary: &JobSummary) -> Result<(), EventError> {
        tracing::info!(
            event = "job.completed",
            job_id = %summary.job_id,
            status = %summary.status,
            total_records = summary.total_records,
            processed = summary.processed,
            failed = summary.failed,
            write_units = summary.write_units,
            "job completed"
        );
        if let Some(url) = &self.queue_url {
            let body = serde_json::json!({
                "id": summary.event_id,
                "type": "job.completed",
                "job": summary,
            });
            self.client
                .send_message()
                .queue_url(url)
                .message_body(body.to_string())
                .send()
                .await
                .map_err(|e| EventError(e.into()))?;
        }
        Ok(())
    }
}

/// Keeps events in memory (tests); `failing` makes every send fail.
#[derive(Debug, Default)]
pub struct MemoryEvents {
    pub completed: Mutex<Vec<JobSummary>>,
    pub failing: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl JobEvents for MemoryEvents {
    async fn job_completed(&self, summary: &JobSummary) -> Result<(), EventError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(EventError("events are unavailable".into()));
        }
        self.completed
            .lock()
            .expect("events poisoned")
            .push(summary.clone());
        Ok(())
    }
}
