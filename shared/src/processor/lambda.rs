//! Processor type `lambda`: a function of yours, in any language, does the
//! work. It is invoked synchronously with valid records as JSON (the schema
//! is `docs/schemas/lambda-processor-request.json`):
//!
//! ```json
//! {"jobId": "…", "kind": "orders", "batchIndex": 3, "retry": 0,
//!  "records": [{"line": 17, "values": {"sku": "A-1", "quantity": 2}}]}
//! ```
//!
//! and answers which records failed, in the shape of an SQS partial batch
//! response (`docs/schemas/lambda-processor-response.json`):
//! `{"batchItemFailures": [{"itemIdentifier": "17", "retryable": false,
//! "reason": "…"}]}`; records not listed succeeded, a failure is retryable
//! unless it says `"retryable": false`.
//!
//! A batch is split into calls whose payload stays under Lambda's 6 MB
//! limit. A call that fails as a whole (the function raised, timed out, or
//! Lambda throttled it past the SDK's own retries) fails its records
//! retryably: the worker calls again for them with backoff, up to the
//! definition's `maxRetries`, then counts them failed with the reason.
//! Other batches and calls go on.

use super::registry::{self, Built, Deployment, Fields, ProcessorSettings, ProcessorType};
use super::{ProcessContext, ProcessError, RecordProcessor};
use crate::schema::ValidRecord;
use async_trait::async_trait;
use aws_sdk_lambda::primitives::Blob;
use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

pub(super) const TYPE: ProcessorType = ProcessorType {
    name: "lambda",
    check,
    build,
    needs: "",
    finishes_jobs: false,
};

/// Lambda's limit on a synchronous request's payload.
pub const MAX_PAYLOAD_BYTES: usize = 6_291_456;
/// What a call carries at most unless told otherwise: under the limit by
/// a margin.
pub const DEFAULT_PAYLOAD_BYTES: usize = 6_000_000;
/// The longest reason kept from a function's answer or error.
const MAX_REASON: usize = 500;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Settings {
    /// The function's name or ARN (qualified or not).
    function: String,
    /// Records a call carries at most (all that fit, when not given).
    #[serde(default)]
    max_records_per_call: Option<usize>,
    /// Bytes a call's payload carries at most.
    #[serde(default = "default_payload")]
    max_payload_bytes: usize,
    /// Calls of one batch in flight at once.
    #[serde(default = "default_concurrency")]
    concurrency: usize,
}

fn default_payload() -> usize {
    DEFAULT_PAYLOAD_BYTES
}

fn default_concurrency() -> usize {
    4
}

fn check(settings: &ProcessorSettings, _fields: &Fields<'_>) -> Result<(), (String, String)> {
    let s: Settings = registry::parse(settings)?;
    if s.function.trim().is_empty() {
        return Err(("function".into(), "must name a function".into()));
    }
    if !(1024..=MAX_PAYLOAD_BYTES).contains(&s.max_payload_bytes) {
        return Err((
            "maxPayloadBytes".into(),
            format!("must be between 1024 and {MAX_PAYLOAD_BYTES} (Lambda's limit)"),
        ));
    }
    if !(1..=64).contains(&s.concurrency) {
        return Err(("concurrency".into(), "must be between 1 and 64".into()));
    }
    if s.max_records_per_call == Some(0) {
        return Err(("maxRecordsPerCall".into(), "must be at least 1".into()));
    }
    Ok(())
}

fn build(settings: &ProcessorSettings, deployment: &Deployment<'_>) -> Built {
    let settings: Settings = registry::settings_of(settings)?;
    Ok(Some(Arc::new(LambdaProcessor {
        client: deployment.clients.lambda.clone(),
        settings,
    })))
}

pub struct LambdaProcessor {
    client: aws_sdk_lambda::Client,
    settings: Settings,
}

/// The event a call sends, records already serialized.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    job_id: &'a str,
    kind: &'a str,
    batch_index: u64,
    retry: u32,
    records: Vec<&'a serde_json::value::RawValue>,
}

/// The function's answer.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    #[serde(default)]
    batch_item_failures: Option<Vec<ItemFailure>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ItemFailure {
    item_identifier: serde_json::Value,
    #[serde(default)]
    retryable: Option<bool>,
    #[serde(default)]
    reason: Option<String>,
}

/// What a function error's payload says.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FunctionError {
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error_message: Option<String>,
}

fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_REASON) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

impl LambdaProcessor {
    /// Calls the function with the records at `indexes` (of `records`,
    /// serialized in `bodies`); one result per index.
    async fn call(
        &self,
        indexes: &[usize],
        records: &[&ValidRecord],
        bodies: &[Box<serde_json::value::RawValue>],
        ctx: &ProcessContext<'_>,
    ) -> Vec<(usize, Result<(), ProcessError>)> {
        let envelope = Envelope {
            job_id: ctx.job_id.as_str(),
            kind: ctx.definition.kind_name(),
            batch_index: ctx.batch_index,
            retry: ctx.retry,
            records: indexes.iter().map(|&i| bodies[i].as_ref()).collect(),
        };
        let payload = serde_json::to_vec(&envelope).expect("the envelope serializes");
        let all = |error: ProcessError| -> Vec<(usize, Result<(), ProcessError>)> {
            indexes
                .iter()
                .copied()
                .zip(error.repeated(indexes.len()).into_iter().map(Err))
                .collect()
        };
        let sent = self
            .client
            .invoke()
            .function_name(&self.settings.function)
            .payload(Blob::new(payload))
            .send()
            .await;
        let out = match sent {
            Ok(out) => out,
            Err(e) => return all(classify(&self.settings.function, e)),
        };
        let body = out.payload().map(|b| b.as_ref()).unwrap_or_default();
        if let Some(kind) = out.function_error() {
            let error: FunctionError = serde_json::from_slice(body).unwrap_or_default();
            let message = format!(
                "the function failed ({kind}): {}{}",
                error
                    .error_type
                    .map(|t| format!("{t}: "))
                    .unwrap_or_default(),
                clip(error.error_message.as_deref().unwrap_or("no message")),
            );
            return all(ProcessError::retryable(message));
        }
        let answer: Answer = match body {
            b if b.iter().all(u8::is_ascii_whitespace) => Answer::default(),
            b => match serde_json::from_slice::<Option<Answer>>(b) {
                Ok(answer) => answer.unwrap_or_default(),
                Err(e) => {
                    return all(ProcessError::retryable_from(
                        "the function's answer is not {\"batchItemFailures\": [...]}",
                        e,
                    ))
                }
            },
        };
        let by_line: HashMap<u64, usize> = indexes.iter().map(|&i| (records[i].line, i)).collect();
        let mut failed: HashMap<usize, ProcessError> = HashMap::new();
        for failure in answer.batch_item_failures.unwrap_or_default() {
            let line = match &failure.item_identifier {
                serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
                serde_json::Value::Number(n) => n.as_u64(),
                _ => None,
            };
            let Some(&i) = line.and_then(|l| by_line.get(&l)) else {
                tracing::warn!(function = %self.settings.function, identifier = %failure.item_identifier, "the function named a record it was not sent; ignored");
                continue;
            };
            let reason = clip(
                failure
                    .reason
                    .as_deref()
                    .unwrap_or("the function failed the record"),
            );
            let error = if failure.retryable.unwrap_or(true) {
                ProcessError::retryable(reason)
            } else {
                ProcessError::permanent(reason)
            };
            failed.insert(i, error);
        }
        indexes
            .iter()
            .map(|&i| (i, failed.remove(&i).map_or(Ok(()), Err)))
            .collect()
    }
}

/// How a call that Lambda refused fails its records: throttling and
/// server errors retryably, a request Lambda will never take (no such
/// function, no permission) permanently, naming the function.
fn classify<E>(
    function: &str,
    e: aws_sdk_lambda::error::SdkError<
        E,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
) -> ProcessError
where
    E: aws_sdk_lambda::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e.as_service_error().and_then(|s| s.code()).unwrap_or("");
    let message = e
        .as_service_error()
        .and_then(|s| s.message())
        .unwrap_or("")
        .to_owned();
    let throttled = matches!(
        code,
        "TooManyRequestsException" | "ThrottlingException" | "EC2ThrottledException"
    ) || status == Some(429);
    let permanent = matches!(
        code,
        "ResourceNotFoundException"
            | "AccessDeniedException"
            | "InvalidParameterValueException"
            | "RequestTooLargeException"
            | "RequestEntityTooLargeException"
            | "InvalidRequestContentException"
            | "UnsupportedMediaTypeException"
    ) || status == Some(413);
    let text = format!("calling {function} failed: {code} {message}");
    if throttled {
        ProcessError::retryable_from(format!("calling {function} was throttled"), e)
    } else if permanent {
        ProcessError::permanent_from(clip(text.trim()), e)
    } else {
        ProcessError::retryable_from(clip(text.trim()), e)
    }
}

#[async_trait]
impl RecordProcessor for LambdaProcessor {
    async fn process(
        &self,
        record: &ValidRecord,
        ctx: &ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        registry::one(self, record, ctx).await
    }

    async fn process_batch(
        &self,
        records: &[&ValidRecord],
        ctx: &ProcessContext<'_>,
    ) -> Vec<Result<(), ProcessError>> {
        let mut results: Vec<Result<(), ProcessError>> =
            (0..records.len()).map(|_| Ok(())).collect();
        // Each record serialized once; calls are cut by their size.
        let bodies: Vec<Box<serde_json::value::RawValue>> = records
            .iter()
            .map(|r| serde_json::value::to_raw_value(r).expect("records serialize"))
            .collect();
        let overhead = 200 + ctx.job_id.as_str().len() + ctx.definition.kind_name().len();
        let limit = self.settings.max_payload_bytes;
        let per_call = self.settings.max_records_per_call.unwrap_or(usize::MAX);
        let mut calls: Vec<Vec<usize>> = Vec::new();
        let (mut current, mut size) = (Vec::new(), overhead);
        for (i, body) in bodies.iter().enumerate() {
            let bytes = body.get().len() + 1;
            if overhead + bytes > limit {
                results[i] = Err(ProcessError::permanent(format!(
                    "the record is {bytes} bytes as JSON: over the {limit} bytes a call to the function carries"
                )));
                continue;
            }
            if !current.is_empty() && (size + bytes > limit || current.len() >= per_call) {
                calls.push(std::mem::take(&mut current));
                size = overhead;
            }
            current.push(i);
            size += bytes;
        }
        if !current.is_empty() {
            calls.push(current);
        }
        let bodies = &bodies;
        let pending: Vec<_> = calls
            .into_iter()
            .map(|indexes| async move { self.call(&indexes, records, bodies, ctx).await })
            .collect();
        let answered: Vec<Vec<(usize, Result<(), ProcessError>)>> = stream::iter(pending)
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;
        for (i, result) in answered.into_iter().flatten() {
            results[i] = result;
        }
        results
    }
}
