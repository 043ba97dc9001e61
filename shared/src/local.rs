//! Running the pipeline outside Lambda, against any endpoint (an emulator
//! such as moto server, or AWS): creating the resources template.yaml
//! declares, building the events Lambda would deliver, and a poller that
//! stands in for the SQS event source mapping.

use crate::aws::Clients;
use crate::handlers::{orchestrator, worker, Deps};
use crate::store::dynamodb::table::{create_keyed_table, create_state_table};
use aws_lambda_events::event::s3::S3Event;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, QueueAttributeName};
use lambda_runtime::{Context, LambdaEvent};
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Names of the resources a local run uses.
#[derive(Debug, Clone)]
pub struct Resources {
    pub bucket: String,
    /// The work queue; the prepare queue is named after it (`<queue>-prepare`).
    pub queue: String,
    pub state_table: String,
    pub target_table: String,
    /// Key attribute of the target table (the definition's `keyField`).
    pub target_key: String,
    /// Must exceed the worker invocation timeout, as in template.yaml.
    pub visibility_timeout: Duration,
    /// The prepare queue's: must exceed the orchestrator invocation timeout.
    pub prepare_visibility_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Created {
    pub queue_url: String,
    pub dlq_url: String,
    pub prepare_queue_url: String,
    pub prepare_dlq_url: String,
}

/// Creates bucket, work and prepare queues with their dead-letter queues,
/// and both tables, unless they exist.
pub async fn ensure_resources(clients: &Clients, r: &Resources) -> Result<Created, BoxError> {
    match clients.s3.create_bucket().bucket(&r.bucket).send().await {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_bucket_already_owned_by_you()) => {}
        Err(e) => return Err(e.into()),
    }
    // Receive counts as in template.yaml.
    let (queue_url, dlq_url) =
        queue_with_dlq(&clients.sqs, &r.queue, r.visibility_timeout, 5).await?;
    let (prepare_queue_url, prepare_dlq_url) = queue_with_dlq(
        &clients.sqs,
        &format!("{}-prepare", r.queue),
        r.prepare_visibility_timeout,
        3,
    )
    .await?;
    create_state_table(&clients.dynamodb, &r.state_table).await?;
    create_keyed_table(&clients.dynamodb, &r.target_table, &r.target_key).await?;
    Ok(Created {
        queue_url,
        dlq_url,
        prepare_queue_url,
        prepare_dlq_url,
    })
}

/// Queue `name` and its dead-letter queue `<name>-dlq`: their URLs.
async fn queue_with_dlq(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    visibility_timeout: Duration,
    max_receive_count: u32,
) -> Result<(String, String), BoxError> {
    let dlq_url = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await?
        .queue_url
        .ok_or("CreateQueue returned no URL")?;
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .ok_or("GetQueueAttributes returned no ARN")?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": max_receive_count,
    })
    .to_string();
    let attributes = std::collections::HashMap::from([
        (QueueAttributeName::RedrivePolicy, redrive),
        (
            QueueAttributeName::VisibilityTimeout,
            visibility_timeout.as_secs().to_string(),
        ),
    ]);
    let created = sqs
        .create_queue()
        .queue_name(name)
        .set_attributes(Some(attributes.clone()))
        .send()
        .await;
    let queue_url = match created {
        Ok(out) => out.queue_url.ok_or("CreateQueue returned no URL")?,
        // Created before with other settings (`bulkimport setup`, another
        // run's timeouts): take it over with these.
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_queue_name_exists()) =>
        {
            let url = sqs
                .get_queue_url()
                .queue_name(name)
                .send()
                .await?
                .queue_url
                .ok_or("GetQueueUrl returned no URL")?;
            sqs.set_queue_attributes()
                .queue_url(&url)
                .set_attributes(Some(attributes))
                .send()
                .await?;
            url
        }
        Err(e) => return Err(e.into()),
    };
    Ok((queue_url, dlq_url))
}

/// The S3 event for an uploaded object, shaped like `events/s3-put.json`.
pub fn s3_put_event(
    bucket: &str,
    key: &str,
    etag: &str,
    version_id: Option<&str>,
    size: i64,
) -> S3Event {
    let mut event: serde_json::Value =
        serde_json::from_str(include_str!("../../events/s3-put.json")).expect("fixture is JSON");
    let record = &mut event["Records"][0];
    record["eventTime"] = chrono::Utc::now().to_rfc3339().into();
    record["s3"]["bucket"]["name"] = bucket.into();
    record["s3"]["bucket"]["arn"] = format!("arn:aws:s3:::{bucket}").into();
    // S3 encodes keys in events like a form: `+` for a space.
    let encoded: String = key
        .split('/')
        .map(|part| {
            part.split(' ')
                .map(|w| {
                    percent_encoding::utf8_percent_encode(w, percent_encoding::NON_ALPHANUMERIC)
                        .to_string()
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect::<Vec<_>>()
        .join("/");
    record["s3"]["object"]["key"] = encoded.into();
    record["s3"]["object"]["eTag"] = etag.trim_matches('"').into();
    record["s3"]["object"]["versionId"] = version_id.unwrap_or("").into();
    record["s3"]["object"]["size"] = size.into();
    serde_json::from_value(event).expect("fixture matches S3Event")
}

/// A Lambda context with a request id and a deadline `timeout` from now.
pub fn context(timeout: Duration) -> Context {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut ctx = Context::default();
    ctx.request_id = uuid_like();
    ctx.deadline = (now + timeout).as_millis() as u64;
    ctx
}

fn uuid_like() -> String {
    use rand::Rng;
    let n: u128 = rand::rng().random();
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The function whose SQS event source a poller stands in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    /// The worker, on the work queue.
    Worker,
    /// The orchestrator, on the prepare queue (through its Lambda entry
    /// point, which also takes S3 events).
    Orchestrator,
}

/// Stands in for Lambda's SQS event source mapping: receives up to 10
/// messages, invokes the consumer's handler with them, deletes the ones that
/// did not fail, until `done` says stop.
pub struct Poller {
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    pub deps: Deps,
    pub consumer: Consumer,
    /// The simulated function timeout (deadline of each invocation).
    pub invocation_timeout: Duration,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct PollStats {
    pub invocations: u64,
    pub messages: u64,
    pub failed_messages: u64,
}

impl Poller {
    pub async fn run_until<F, Fut>(&self, mut done: F) -> Result<PollStats, BoxError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let mut stats = PollStats::default();
        while !done().await {
            let out = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
                .send()
                .await?;
            let messages = out.messages.unwrap_or_default();
            if messages.is_empty() {
                continue;
            }
            let records: Vec<serde_json::Value> = messages
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "messageId": m.message_id(),
                        "receiptHandle": m.receipt_handle(),
                        "body": m.body(),
                        "attributes": {},
                        "messageAttributes": {},
                        "eventSource": "aws:sqs",
                        "awsRegion": "us-east-1"
                    })
                })
                .collect();
            let event = serde_json::json!({ "Records": records });
            stats.invocations += 1;
            stats.messages += messages.len() as u64;
            let context = context(self.invocation_timeout);
            let response: SqsBatchResponse = match self.consumer {
                Consumer::Worker => {
                    let event: SqsEvent = serde_json::from_value(event)?;
                    worker::handle(&self.deps, LambdaEvent::new(event, context)).await?
                }
                Consumer::Orchestrator => serde_json::from_value(
                    orchestrator::handle_any(&self.deps, LambdaEvent::new(event, context)).await?,
                )?,
            };
            let failed: Vec<&str> = response
                .batch_item_failures
                .iter()
                .map(|f| f.item_identifier.as_str())
                .collect();
            stats.failed_messages += failed.len() as u64;
            // Failed messages stay invisible until the visibility timeout,
            // then come back: the same redelivery Lambda relies on.
            let entries: Vec<_> = messages
                .iter()
                .filter(|m| !failed.contains(&m.message_id().unwrap_or_default()))
                .enumerate()
                .map(|(i, m)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle().unwrap_or_default())
                        .build()
                        .expect("entry is complete")
                })
                .collect();
            if !entries.is_empty() {
                self.sqs
                    .delete_message_batch()
                    .queue_url(&self.queue_url)
                    .set_entries(Some(entries))
                    .send()
                    .await?;
            }
        }
        Ok(stats)
    }
}
