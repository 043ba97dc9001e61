//! S3 `ObjectCreated` events -> one job per object version (see `prepare`).

use super::Deps;
use crate::job::SourceRef;
use crate::objects::ETAG_PREFIX;
use crate::prepare::{PrepareError, PrepareOutcome};
use crate::queue::PrepareMessage;
use aws_lambda_events::event::s3::{S3Event, S3EventRecord};
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::LambdaEvent;
use percent_encoding::percent_decode_str;
use serde::Serialize;
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error("S3 event record {0} has no bucket or key")]
    MalformedRecord(usize),
    #[error("object key {0:?} is not valid URL-encoded UTF-8")]
    BadKey(String),
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error(transparent)]
    Definition(#[from] crate::pinned::PinError),
    #[error(transparent)]
    Continuation(#[from] crate::queue::QueueError),
    #[error("the event is neither an S3 notification nor an SQS batch")]
    UnknownEvent(#[source] serde_json::Error),
}

impl OrchestratorError {
    /// Lambda's `errorType`, for dashboards and alarms.
    pub fn error_type(&self) -> &'static str {
        match self {
            OrchestratorError::MalformedRecord(_)
            | OrchestratorError::BadKey(_)
            | OrchestratorError::UnknownEvent(_) => "InvalidEvent",
            OrchestratorError::Prepare(_)
            | OrchestratorError::Definition(_)
            | OrchestratorError::Continuation(_) => "PrepareFailed",
        }
    }
}

impl From<OrchestratorError> for lambda_runtime::Diagnostic {
    fn from(e: OrchestratorError) -> Self {
        // The message chain, without Debug internals.
        super::diagnostic(e.error_type(), &e)
    }
}

/// One line per object in the handler's response (and logs).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Prepared {
    pub job_id: String,
    pub outcome: &'static str,
    pub status: String,
    pub total_records: u64,
    pub total_batches: u64,
}

/// S3 event keys are URL-encoded with `+` for spaces.
pub fn decode_key(key: &str) -> Result<String, OrchestratorError> {
    let spaced = key.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|_| OrchestratorError::BadKey(key.to_owned()))
}

pub fn source_of(record: &S3EventRecord, position: usize) -> Result<SourceRef, OrchestratorError> {
    let bucket = record
        .s3
        .bucket
        .name
        .clone()
        .ok_or(OrchestratorError::MalformedRecord(position))?;
    let key = decode_key(
        record
            .s3
            .object
            .key
            .as_deref()
            .ok_or(OrchestratorError::MalformedRecord(position))?,
    )?;
    let object = &record.s3.object;
    let version = match (&object.version_id, &object.e_tag) {
        (Some(v), _) if !v.is_empty() => v.clone(),
        (_, Some(etag)) => format!("{ETAG_PREFIX}{}", etag.trim_matches('"')),
        _ => return Err(OrchestratorError::MalformedRecord(position)),
    };
    Ok(SourceRef {
        bucket,
        key,
        version,
    })
}

/// Prepares a job per record. An error makes Lambda retry the event, which
/// is safe: the job id is derived from the object version and prepare
/// resumes where it stopped.
pub async fn handle(
    deps: &Deps,
    event: LambdaEvent<S3Event>,
) -> Result<Vec<Prepared>, OrchestratorError> {
    let owner = event.context.request_id.clone();
    let deadline = super::deadline_of(event.context.deadline);
    let mut results = Vec::new();
    for (i, record) in event.payload.records.iter().enumerate() {
        let source = source_of(record, i)?;
        let definition = deps
            .pinned
            .pin(deps.store.as_ref(), &source.job_id(), &deps.definition)
            .await?;
        let preparer = deps.preparer(&definition);
        let span = tracing::info_span!("prepare", job_id = %source.job_id(), object = %source);
        let (outcome, job) = match preparer
            .run_until(&source, &owner, deadline)
            .instrument(span)
            .await?
        {
            PrepareOutcome::Prepared(job) => ("prepared", job),
            PrepareOutcome::AlreadyPrepared(job) => ("duplicate", job),
            PrepareOutcome::InProgress(job) => ("in-progress", job),
            PrepareOutcome::Rejected(job) => ("rejected", job),
            PrepareOutcome::Stopped(job) => ("stopped", job),
            PrepareOutcome::HandedOff(job) => {
                deps.continue_prepare(&job.id).await?;
                ("handed-off", job)
            }
        };
        tracing::info!(outcome, status = %job.status, total_records = job.total_records, "object handled");
        results.push(Prepared {
            job_id: job.id.to_string(),
            outcome,
            status: job.status.to_string(),
            total_records: job.total_records,
            total_batches: job.total_batches,
        });
    }
    Ok(results)
}

/// The orchestrator's two kinds of event: S3 notifications (new uploads)
/// and SQS batches from the prepare queue (continuations of prepares handed
/// over near a deadline), told apart by their records' `eventSource`.
pub async fn handle_any(
    deps: &Deps,
    event: LambdaEvent<serde_json::Value>,
) -> Result<serde_json::Value, OrchestratorError> {
    let (payload, context) = event.into_parts();
    let from_sqs = payload["Records"][0]["eventSource"] == "aws:sqs";
    let output = if from_sqs {
        let batch: SqsEvent =
            serde_json::from_value(payload).map_err(OrchestratorError::UnknownEvent)?;
        serde_json::to_value(continue_prepares(deps, LambdaEvent::new(batch, context)).await?)
    } else {
        let s3: S3Event =
            serde_json::from_value(payload).map_err(OrchestratorError::UnknownEvent)?;
        serde_json::to_value(handle(deps, LambdaEvent::new(s3, context)).await?)
    };
    Ok(output.expect("responses serialize"))
}

/// Continues the prepares named by prepare-queue messages (`{"jobId"}`);
/// a job already prepared or final is left alone. A message fails alone.
pub async fn continue_prepares(
    deps: &Deps,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, OrchestratorError> {
    let owner = event.context.request_id.clone();
    let deadline = super::deadline_of(event.context.deadline);
    let mut response = SqsBatchResponse::default();
    for message in &event.payload.records {
        let id = message.message_id.clone().unwrap_or_default();
        let result = async {
            let body = message.body.as_deref().unwrap_or_default();
            let continuation: PrepareMessage = match serde_json::from_str(body) {
                Ok(c) => c,
                Err(_) => {
                    tracing::error!(message_id = %id, "message body is not {{\"jobId\": ...}}");
                    return Ok(false);
                }
            };
            let store = deps.store.as_ref();
            let Some(job) = store
                .get_job(&continuation.job_id)
                .await
                .map_err(PrepareError::from)?
            else {
                return Ok(true);
            };
            if job.prepared || job.status.is_final() {
                return Ok(true);
            }
            let definition = deps.pinned.of(store, &job.id, &deps.definition).await?;
            let span = tracing::info_span!("continue", job_id = %job.id);
            let outcome = deps
                .preparer(&definition)
                .run_until(&job.source, &owner, deadline)
                .instrument(span)
                .await?;
            if let PrepareOutcome::HandedOff(job) = outcome {
                deps.continue_prepare(&job.id).await?;
            }
            Ok::<_, OrchestratorError>(true)
        }
        .await;
        let ok = match result {
            Ok(ok) => ok,
            Err(e) => {
                let error = crate::telemetry::error_chain(&e);
                tracing::error!(message_id = %id, %error, "continuing a prepare failed; the message will be retried");
                false
            }
        };
        if !ok {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_url_decoded_with_plus_as_space() {
        assert_eq!(
            decode_key("uploads/my+file%281%29.csv").unwrap(),
            "uploads/my file(1).csv"
        );
        assert_eq!(decode_key("caf%C3%A9.csv").unwrap(), "café.csv");
        assert!(decode_key("bad%FF.csv").is_err());
    }
}
