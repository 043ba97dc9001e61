//! Jobs: the list (newest first, through the `jobs` index), one job's
//! status view, and the operator's abort and retry.

use super::{Api, ApiError, Query};
use crate::finalize::Finalizer;
use crate::job::{Job, JobId, JobStatus};
use crate::locate::{JobRef, LocateError};
use crate::queue::WorkMessage;
use crate::schema::Definition;
use crate::status::JobStatusView;
use crate::steer::{SteerError, Steering};
use serde::{Deserialize, Serialize};

/// Jobs listed when `limit` is not given, and the most a page holds.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

#[derive(Debug, Serialize)]
pub struct JobList {
    pub jobs: Vec<JobStatusView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AbortBody {
    reason: Option<String>,
}

impl Api {
    pub(super) async fn list_jobs(&self, query: &Query<'_>) -> Result<JobList, ApiError> {
        let status = query
            .get("status")
            .map(|s| s.parse::<JobStatus>().map_err(ApiError::BadRequest))
            .transpose()?;
        let kind = query.get("kind");
        if let Some(kind) = kind {
            crate::schema::check_kind(kind).map_err(ApiError::BadRequest)?;
        }
        let limit = query.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
        let ids = match query.get("source") {
            Some(source) => self.job_of_object(source).await?.into_iter().collect(),
            None => self.store.list_jobs(status, kind, limit).await?,
        };
        let now = self.clock.now_ms();
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            match self.store.get_job(&id).await? {
                Some(job)
                    if status.is_none_or(|s| s == job.status)
                        && kind.is_none_or(|k| job.kind.as_deref() == Some(k)) =>
                {
                    jobs.push(JobStatusView::of(&job, now))
                }
                // Gone (expired) between the index read and this one.
                _ => {}
            }
        }
        Ok(JobList { jobs })
    }

    /// The job of an object's current version: `None` when the object is
    /// missing (the list is then empty, as for a version with no job).
    async fn job_of_object(&self, source: &str) -> Result<Option<JobId>, ApiError> {
        let object = match JobRef::parse(source) {
            Ok(object @ JobRef::Object { .. }) => object,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "source must be s3://bucket/key, not {source:?}"
                )))
            }
        };
        match object.resolve(self.objects.as_ref()).await {
            Ok(id) => Ok(Some(id)),
            Err(LocateError::NoSuchObject(_)) => Ok(None),
            Err(e) => Err(ApiError::internal(e)),
        }
    }

    pub(super) async fn job(&self, id: &JobId) -> Result<Job, ApiError> {
        self.store
            .get_job(id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))
    }

    pub(super) async fn job_view(&self, id: &JobId) -> Result<JobStatusView, ApiError> {
        Ok(JobStatusView::of(&self.job(id).await?, self.clock.now_ms()))
    }

    /// Ends the job ABORTED now, as `bulkimport abort` does: prepare stops
    /// at its next publication, workers claim nothing more, and the report
    /// and completion event follow. Conflict when it had already ended.
    pub(super) async fn abort(&self, id: &JobId, body: &[u8]) -> Result<JobStatusView, ApiError> {
        let body: AbortBody = if body.iter().all(u8::is_ascii_whitespace) {
            AbortBody::default()
        } else {
            serde_json::from_slice(body).map_err(|e| {
                ApiError::BadRequest(format!(
                    "the body must be empty or {{\"reason\": \"...\"}}: {e}"
                ))
            })?
        };
        let job = self.job(id).await?;
        if job.status.is_final() {
            return Err(already_ended(&job));
        }
        // The finalizer takes the job's definition; an abort does not use
        // it, but the job has one pinned since it was created.
        let pinned = self
            .store
            .pinned_definition(id)
            .await?
            .ok_or_else(|| ApiError::internal(format!("job {id} has no pinned definition")))?;
        let definition = Definition::from_json(&pinned, &format!("pinned to job {id}"))
            .map_err(ApiError::internal)?;
        // An abort writes only the ending: whoever settles it reports it.
        let finalizer = Finalizer::new(
            self.store.as_ref(),
            self.events.as_ref(),
            self.reports.as_ref(),
            &crate::metrics::NoMetrics,
            &definition,
            &self.clock,
        );
        let reason = body
            .reason
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| "aborted through the API".into());
        let aborted = finalizer
            .abort(id, reason)
            .await
            .map_err(ApiError::internal)?;
        let job = self.job(id).await?;
        if !aborted {
            // It ended on its own meanwhile.
            return Err(already_ended(&job));
        }
        tracing::info!(job_id = %id, "job aborted through the API");
        // The report grows with the job's failures: a worker writes it and
        // sends the event (the sweeper would too, on its next pass).
        let wake = WorkMessage {
            job_id: id.clone(),
            continuation: false,
        };
        if let Err(e) = self.queue.send(&[wake]).await {
            let error = crate::telemetry::error_chain(&e);
            tracing::warn!(job_id = %id, %error, "no worker woken for the abort's report; the sweeper writes it");
        }
        Ok(JobStatusView::of(&job, self.clock.now_ms()))
    }

    /// Starts a retry round of an ended job, as `bulkimport retry` does
    /// (`steer`): its processing failures and what an abort left run
    /// again. Conflict when it is still running or has nothing to retry.
    pub(super) async fn retry(&self, id: &JobId) -> Result<JobStatusView, ApiError> {
        let steering = Steering {
            store: self.store.as_ref(),
            queue: self.queue.as_ref(),
            prepare_queue: self.prepare_queue.as_deref(),
            events: self.events.as_ref(),
            max_workers: self.max_workers,
            inline_requeue: false,
            clock: &self.clock,
        };
        let started = steering.retry(id).await.map_err(|e| match e {
            SteerError::NotFound(_) => ApiError::NotFound(e.to_string()),
            SteerError::NotFinal(_)
            | SteerError::NothingToRetry { .. }
            | SteerError::Busy(_)
            | SteerError::Settling(_) => ApiError::Conflict(e.to_string()),
            other => ApiError::internal(other),
        })?;
        tracing::info!(job_id = %id, retries = started.job.retries, records = started.records, unprocessed = started.unprocessed, "retry started through the API");
        Ok(JobStatusView::of(&started.job, self.clock.now_ms()))
    }
}

fn already_ended(job: &Job) -> ApiError {
    ApiError::Conflict(format!("job {} has already ended: {}", job.id, job.status))
}
