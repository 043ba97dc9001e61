//! S3 `ObjectCreated` events -> one job per object version (see `prepare`).

use super::Deps;
use crate::job::SourceRef;
use crate::objects::ETAG_PREFIX;
use crate::prepare::{PrepareError, PrepareOutcome};
use aws_lambda_events::event::s3::{S3Event, S3EventRecord};
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
}

impl OrchestratorError {
    /// Lambda's `errorType`, for dashboards and alarms.
    pub fn error_type(&self) -> &'static str {
        match self {
            OrchestratorError::MalformedRecord(_) | OrchestratorError::BadKey(_) => "InvalidEvent",
            OrchestratorError::Prepare(_) | OrchestratorError::Definition(_) => "PrepareFailed",
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
            PrepareOutcome::HandedOff(job) => ("handed-off", job),
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
