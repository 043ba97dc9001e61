//! S3 `ObjectCreated` events -> one job per object version (see `prepare`).

use super::Deps;
use crate::job::{JobSource, SourceRef};
use crate::objects::{etag_version, ObjectError, ObjectHead, ObjectVersions};
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
    #[error("looking up the uploaded object failed; the event is retried")]
    Lookup(#[source] ObjectError),
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error(transparent)]
    Definition(#[from] crate::pinned::PinError),
    #[error(transparent)]
    Continuation(#[from] crate::queue::QueueError),
    #[error("the requeue pass of a retry failed")]
    Requeue(#[source] crate::steer::SteerError),
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
            OrchestratorError::Lookup(_)
            | OrchestratorError::Prepare(_)
            | OrchestratorError::Definition(_)
            | OrchestratorError::Continuation(_) => "PrepareFailed",
            OrchestratorError::Requeue(_) => "RequeueFailed",
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

/// The object an upload event names, and the version its job is keyed by:
/// the event's version id; on an unversioned bucket, the ETag and the
/// object's Last-Modified time, which the event does not carry: a HEAD of
/// the object learns it (`upload_version`).
pub async fn source_of(
    versions: &dyn ObjectVersions,
    record: &S3EventRecord,
    position: usize,
) -> Result<SourceRef, OrchestratorError> {
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
    // "null" is the version of objects written unversioned (or while
    // versioning was suspended): every upload of the key overwrites it.
    let version_id = object
        .version_id
        .as_deref()
        .filter(|v| !v.is_empty() && *v != "null");
    let version = match (version_id, &object.e_tag) {
        (Some(v), _) => v.to_owned(),
        (None, Some(etag)) => {
            let head = match versions.head(&bucket, &key).await {
                Ok(head) => head,
                // Unreadable, or (without s3:ListBucket) deleted: the read
                // fails the job and says which.
                Err(ObjectError::AccessDenied(_)) => None,
                Err(e) => return Err(OrchestratorError::Lookup(e)),
            };
            upload_version(etag.trim_matches('"'), head.as_ref())
        }
        (None, None) => return Err(OrchestratorError::MalformedRecord(position)),
    };
    Ok(SourceRef {
        bucket,
        key,
        version,
    })
}

/// The version the job of an upload without a version id is keyed by,
/// from the event's ETag and the object's HEAD now.
///
/// When the object still holds that upload (the same ETag), its ETag and
/// Last-Modified: a re-delivered event finds the job again, and an upload
/// of the same bytes later (a new Last-Modified) is a new job, never one
/// whose id is reused over what is left of the old one. (Two uploads of the
/// same bytes within one second are one job: S3 cannot tell them apart.)
///
/// When it was replaced or deleted since (another ETag, or none), the event's
/// upload can no longer be named by its time: its ETag alone, as before the
/// time was part of the version. The read (`If-Match` on that ETag) then
/// finds the object gone and the job fails saying so, and a re-delivered
/// event finds that job.
pub fn upload_version(etag: &str, head: Option<&ObjectHead>) -> String {
    match head {
        Some(head) if head.version_id.is_none() && head.etag == etag => head.version(),
        _ => etag_version(etag, None),
    }
}

/// Prepares a job per record. An error makes Lambda retry the event, which
/// is safe: the job id is derived from the object version and prepare
/// resumes where it stopped.
pub async fn handle(
    deps: &Deps,
    event: LambdaEvent<S3Event>,
) -> Result<Vec<Prepared>, OrchestratorError> {
    let owner = event.context.request_id.clone();
    let deadline = super::deadline_of(&deps.clock, event.context.deadline);
    let mut results = Vec::new();
    for (i, record) in event.payload.records.iter().enumerate() {
        let source = source_of(deps.versions.as_ref(), record, i).await?;
        let Some(routed) = deps.routes.route(&source) else {
            // The uploader learns why nothing was imported: the upload's
            // job fails at once, saying where files of each kind go.
            let reason = deps.routes.unrouted(&source);
            let span = tracing::info_span!("unrouted", job_id = %source.job_id(), object = %source);
            let outcome = deps
                .preparer(deps.routes.primary())
                .refuse(&source, &owner, reason)
                .instrument(span)
                .await?;
            let job = match outcome {
                PrepareOutcome::Rejected(job) | PrepareOutcome::AlreadyPrepared(job) => job,
                other => unreachable!("a refused upload is rejected, not {other:?}"),
            };
            results.push(Prepared {
                job_id: job.id.to_string(),
                outcome: "unrouted",
                status: job.status.to_string(),
                total_records: 0,
                total_batches: 0,
            });
            continue;
        };
        let definition = deps
            .pinned
            .pin(deps.store.as_ref(), &source.job_id(), routed)
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
/// over near a deadline, and of retries' requeue passes), told apart by
/// their records' `eventSource`.
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

/// Continues the jobs named by prepare-queue messages (`{"jobId"}`): a
/// retry's requeue pass first, then an unfinished prepare; a job with
/// neither, or final, is left alone. A message fails alone.
pub async fn continue_prepares(
    deps: &Deps,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, OrchestratorError> {
    let owner = event.context.request_id.clone();
    let deadline = super::deadline_of(&deps.clock, event.context.deadline);
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
            let Some(mut job) = store
                .get_job(&continuation.job_id)
                .await
                .map_err(PrepareError::from)?
            else {
                return Ok(true);
            };
            if job.round.requeuing && !job.status.is_final() {
                let span = tracing::info_span!("requeue", job_id = %job.id);
                let outcome = deps
                    .steering()
                    .requeue(&job.id, deadline)
                    .instrument(span)
                    .await
                    .map_err(OrchestratorError::Requeue)?;
                if let crate::steer::RequeueOutcome::HandedOff { .. } = outcome {
                    deps.continue_prepare(&job.id).await?;
                    return Ok(true);
                }
                let Some(now) = store.get_job(&job.id).await.map_err(PrepareError::from)? else {
                    return Ok(true);
                };
                job = now;
            }
            if job.prepared || job.status.is_final() {
                return Ok(true);
            }
            let definition = deps.pinned.of(store, &job.id, &deps.routes).await?;
            let span = tracing::info_span!("continue", job_id = %job.id);
            let JobSource::Object(object) = &job.source;
            let outcome = deps
                .preparer(&definition)
                .run_until(object, &owner, deadline)
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
    use crate::job::JobId;
    use crate::objects::MemoryObjects;
    use async_trait::async_trait;

    const BUCKET: &str = "bulk-import-uploads";
    /// The fixture's key, as `decode_key` reads it.
    const KEY: &str = "uploads/users 2026-11(1).csv";
    const DAY: i64 = 86_400;
    /// 2026-11-24T09:30:00Z
    const T: i64 = 1_795_512_600;

    /// The fixture's upload event, for an object of `etag` (and version id).
    fn record(etag: &str, version_id: &str) -> S3EventRecord {
        let mut event: serde_json::Value =
            serde_json::from_str(include_str!("../../../events/s3-put.json")).unwrap();
        let object = &mut event["Records"][0]["s3"]["object"];
        object["eTag"] = etag.into();
        object["versionId"] = version_id.into();
        let event: S3Event = serde_json::from_value(event).unwrap();
        event.records.into_iter().next().unwrap()
    }

    async fn job_of(objects: &dyn ObjectVersions, record: &S3EventRecord) -> JobId {
        source_of(objects, record, 0).await.unwrap().job_id()
    }

    /// Where the CLI and the API look for the job of the object.
    async fn located(objects: &dyn ObjectVersions) -> JobId {
        crate::locate::job_id(objects, &format!("s3://{BUCKET}/{KEY}"))
            .await
            .unwrap()
    }

    /// Versions whose HEAD fails with `error` (or must not be asked).
    struct Heads(Option<fn() -> ObjectError>);

    #[async_trait]
    impl ObjectVersions for Heads {
        async fn head(&self, _: &str, _: &str) -> Result<Option<ObjectHead>, ObjectError> {
            match self.0 {
                Some(error) => Err(error()),
                None => panic!("an event with a version id needs no HEAD"),
            }
        }
    }

    #[tokio::test]
    async fn an_upload_is_keyed_by_its_etag_and_last_modified_and_found_again() {
        let objects = MemoryObjects::default();
        let head = objects.put_at(BUCKET, KEY, "a\n1\n", T);
        let event = record(&format!("\"{}\"", head.etag), "");
        let source = source_of(&objects, &event, 0).await.unwrap();
        assert_eq!(
            source.version,
            format!("etag:{}@2026-11-24T09:30:00Z", head.etag)
        );
        assert_eq!((source.bucket.as_str(), source.key.as_str()), (BUCKET, KEY));
        // The event delivered again; the object named by the CLI or the API.
        assert_eq!(job_of(&objects, &event).await, source.job_id());
        assert_eq!(located(&objects).await, source.job_id());
    }

    #[tokio::test]
    async fn the_same_bytes_uploaded_again_later_are_a_new_job() {
        let objects = MemoryObjects::default();
        let first = objects.put_at(BUCKET, KEY, "a\n1\n", T);
        let first_job = job_of(&objects, &record(&first.etag, "")).await;
        // After the retention period, when only part of the first job's
        // state has expired.
        let again = objects.put_at(BUCKET, KEY, "a\n1\n", T + 31 * DAY);
        assert_eq!(again.etag, first.etag);
        let second_job = job_of(&objects, &record(&again.etag, "")).await;
        assert_ne!(second_job, first_job);
        assert_eq!(located(&objects).await, second_job);
        // Within one second S3 cannot tell two uploads of the same bytes
        // apart: they are one job.
        objects.put_at(BUCKET, KEY, "a\n1\n", T + 31 * DAY);
        assert_eq!(job_of(&objects, &record(&again.etag, "")).await, second_job);
        // Other bytes are another job in any case.
        let other = objects.put_at(BUCKET, KEY, "a\n2\n", T + 31 * DAY);
        assert_ne!(job_of(&objects, &record(&other.etag, "")).await, second_job);
    }

    #[tokio::test]
    async fn an_upload_replaced_or_deleted_before_its_event_is_keyed_by_its_etag_alone() {
        let objects = MemoryObjects::default();
        let replaced = objects.put_at(BUCKET, KEY, "a\n1\n", T);
        objects.put_at(BUCKET, KEY, "a\n2\n", T + 5);
        let etag_alone = JobId::for_object(BUCKET, KEY, &format!("etag:{}", replaced.etag));
        let event = record(&replaced.etag, "");
        assert_eq!(job_of(&objects, &event).await, etag_alone);
        assert_eq!(job_of(&objects, &event).await, etag_alone, "found again");
        assert_ne!(located(&objects).await, etag_alone);
        let deleted = job_of(&MemoryObjects::default(), &event).await;
        assert_eq!(deleted, etag_alone);
        // Unreadable: the read fails the job and says why.
        let denied = Heads(Some(|| ObjectError::AccessDenied("s3://b/k".into())));
        assert_eq!(job_of(&denied, &event).await, etag_alone);
    }

    #[tokio::test]
    async fn a_version_id_names_the_job_without_a_head() {
        let source = source_of(&Heads(None), &record("e", "3HL4kqtJlcpXroDTDmJ"), 0)
            .await
            .unwrap();
        assert_eq!(source.version, "3HL4kqtJlcpXroDTDmJ");
        // "null" names no one upload: the ETag and Last-Modified do.
        let objects = MemoryObjects::default();
        let head = objects.put_at(BUCKET, KEY, "a\n1\n", T);
        let source = source_of(&objects, &record(&head.etag, "null"), 0)
            .await
            .unwrap();
        assert_eq!(source.version, head.version());
    }

    #[tokio::test]
    async fn a_head_that_fails_fails_the_event_for_a_retry() {
        let unreachable = Heads(Some(|| ObjectError::Transient {
            object: "s3://b/k".into(),
            source: "connection reset".into(),
        }));
        let error = source_of(&unreachable, &record("e", ""), 0)
            .await
            .unwrap_err();
        assert!(matches!(error, OrchestratorError::Lookup(_)), "{error:?}");
        assert_eq!(error.error_type(), "PrepareFailed");
    }

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
