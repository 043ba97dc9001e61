//! The two queues of a job: fan-out (`WorkQueue`: `{jobId}` messages that
//! wake workers) and prepare continuations (`PrepareQueue`: `{jobId}`
//! messages that make the orchestrator resume a prepare handed over near its
//! deadline). Each has an SQS implementation and an in-memory one for tests.

use crate::job::JobId;
use async_trait::async_trait;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// The message body workers receive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkMessage {
    pub job_id: JobId,
    /// Sent by a worker that stopped at its deadline with work left.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continuation: bool,
}

/// The message body the orchestrator receives from the prepare queue. The
/// job item holds the source, so the job's id is all a continuation needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrepareMessage {
    pub job_id: JobId,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("sending to the work queue failed")]
    Send(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the work queue rejected {0} of the messages")]
    Rejected(usize),
    #[error("sending the continuation of job {job}'s prepare failed")]
    Continue {
        job: JobId,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

#[async_trait]
pub trait WorkQueue: Send + Sync {
    async fn send(&self, messages: &[WorkMessage]) -> Result<(), QueueError>;
}

/// Where a prepare handed over near a deadline asks to be continued.
#[async_trait]
pub trait PrepareQueue: Send + Sync {
    async fn continue_prepare(&self, job: &JobId) -> Result<(), QueueError>;
}

/// Asks for a handed-over prepare to be continued at once (through the
/// prepare queue); without one, the next sweep resumes it.
pub async fn continue_prepare(
    queue: Option<&dyn PrepareQueue>,
    job: &JobId,
) -> Result<(), QueueError> {
    match queue {
        Some(queue) => {
            tracing::info!(job_id = %job, "prepare handed over; continuing at once");
            queue.continue_prepare(job).await
        }
        None => {
            tracing::warn!(job_id = %job, "prepare handed over; no prepare queue, the next sweep resumes it");
            Ok(())
        }
    }
}

/// SQS limit on entries per SendMessageBatch.
const SEND_BATCH_MAX: usize = 10;

pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        SqsQueue {
            client,
            url: url.into(),
        }
    }
}

#[async_trait]
impl WorkQueue for SqsQueue {
    async fn send(&self, messages: &[WorkMessage]) -> Result<(), QueueError> {
        for group in messages.chunks(SEND_BATCH_MAX) {
            let mut entries: Vec<_> = group
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(serde_json::to_string(m).expect("message serializes"))
                        .build()
                        .expect("entry is complete")
                })
                .collect();
            // Failed entries are retried once; SQS reports them per entry
            // rather than failing the call.
            for attempt in 0..3 {
                let out = self
                    .client
                    .send_message_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries.clone()))
                    .send()
                    .await
                    .map_err(|e| QueueError::Send(e.into()))?;
                let failed: Vec<&str> = out.failed().iter().map(|f| f.id()).collect();
                if failed.is_empty() {
                    break;
                }
                if attempt == 2 {
                    return Err(QueueError::Rejected(failed.len()));
                }
                entries.retain(|e| failed.contains(&e.id()));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl PrepareQueue for SqsQueue {
    async fn continue_prepare(&self, job: &JobId) -> Result<(), QueueError> {
        let body = PrepareMessage {
            job_id: job.clone(),
        };
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(serde_json::to_string(&body).expect("message serializes"))
            .send()
            .await
            .map_err(|e| QueueError::Continue {
                job: job.clone(),
                source: e.into(),
            })?;
        Ok(())
    }
}

/// Collects messages in memory (unit tests, single-process runs).
#[derive(Debug, Default)]
pub struct MemoryQueue {
    pub sent: Mutex<Vec<WorkMessage>>,
}

#[async_trait]
impl WorkQueue for MemoryQueue {
    async fn send(&self, messages: &[WorkMessage]) -> Result<(), QueueError> {
        self.sent
            .lock()
            .expect("queue poisoned")
            .extend_from_slice(messages);
        Ok(())
    }
}

/// Collects prepare continuations in memory (unit tests).
#[derive(Debug, Default)]
pub struct MemoryPrepareQueue {
    pub sent: Mutex<Vec<PrepareMessage>>,
}

#[async_trait]
impl PrepareQueue for MemoryPrepareQueue {
    async fn continue_prepare(&self, job: &JobId) -> Result<(), QueueError> {
        self.sent
            .lock()
            .expect("queue poisoned")
            .push(PrepareMessage {
                job_id: job.clone(),
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_body_is_the_documented_json() {
        let m = WorkMessage {
            job_id: JobId::new("abc"),
            continuation: false,
        };
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"jobId":"abc"}"#);
        let c: WorkMessage =
            serde_json::from_str(r#"{"jobId":"abc","continuation":true}"#).unwrap();
        assert!(c.continuation);
    }

    #[test]
    fn prepare_message_body_is_the_documented_json() {
        let m = PrepareMessage {
            job_id: JobId::new("abc"),
        };
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"jobId":"abc"}"#);
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../events/sqs-prepare-continuation.json"))
                .unwrap();
        let body = fixture["Records"][0]["body"].as_str().unwrap();
        let parsed: PrepareMessage = serde_json::from_str(body).unwrap();
        assert_eq!(serde_json::to_string(&parsed).unwrap(), body);
    }
}
