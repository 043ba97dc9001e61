//! A job's failed records, one row per problem (as `bulkimport errors`
//! prints them), in input order, in pages. The cursor is opaque to
//! clients: base64url of the job's round (`retries`), the batch to read
//! next and how many of its rows came before. Within a round a batch's
//! failures never change once it is committed, so pages are stable; the
//! list is complete once the job has ended. A retry reruns failures, so a
//! cursor of an earlier round is refused (410 `cursor_expired`) rather
//! than skipping or repeating rows.

use super::{Api, ApiError, Query};
use crate::job::{FailedRecord, FailureStage, JobId};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Serialize;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Batches one page reads at most (one Query each): a long run of batches
/// without failures ends a page early, with a cursor to go on from.
const MAX_BATCHES_PER_PAGE: u64 = 100;

/// Where the next page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The job's round (`retries`) when the page was read.
    pub round: u32,
    pub batch: u64,
    /// Rows of that batch already returned.
    pub offset: usize,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}.{}.{}", self.round, self.batch, self.offset))
    }

    /// A cursor this API returned; one without a round (`batch.offset`,
    /// from before rounds were recorded) is of round 0.
    pub fn decode(text: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        let text = std::str::from_utf8(&bytes).ok()?;
        let parts: Vec<&str> = text.split('.').collect();
        let (round, batch, offset) = match parts.as_slice() {
            [batch, offset] => ("0", batch, offset),
            [round, batch, offset] => (*round, batch, offset),
            _ => return None,
        };
        Some(Cursor {
            round: round.parse().ok()?,
            batch: batch.parse().ok()?,
            offset: offset.parse().ok()?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureRow {
    pub line: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub message: String,
    /// `validation` (the input's fault) or `processing` (retryable).
    pub stage: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailuresPage {
    pub job_id: JobId,
    pub errors: Vec<FailureRow>,
    /// Absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

fn rows(records: Vec<FailedRecord>) -> Vec<FailureRow> {
    records
        .into_iter()
        .flat_map(|record| {
            let stage = match record.stage {
                FailureStage::Validation => "validation",
                FailureStage::Processing => "processing",
            };
            record.issues.into_iter().map(move |issue| FailureRow {
                line: record.line,
                field: issue.field,
                value: issue.value,
                message: issue.message,
                stage,
            })
        })
        .collect()
}

impl Api {
    pub(super) async fn failures(
        &self,
        id: &JobId,
        query: &Query<'_>,
    ) -> Result<FailuresPage, ApiError> {
        let limit = query.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
        let given = query
            .get("cursor")
            .map(|text| {
                Cursor::decode(text).ok_or_else(|| {
                    ApiError::BadRequest("cursor is not one this API returned".into())
                })
            })
            .transpose()?;
        let job = self.job(id).await?;
        let start = match given {
            None => Cursor {
                round: job.retries,
                batch: 0,
                offset: 0,
            },
            Some(c) if c.round != job.retries => {
                return Err(ApiError::CursorExpired(format!(
                    "the cursor is of round {} of job {id}, which has been retried since \
                     (round {} now) and its failures rerun: start again without a cursor",
                    c.round, job.retries
                )))
            }
            Some(c) => c,
        };
        let end = job.total_batches.max(job.batches_ready);
        // Batches are never taken away, so a cursor this API returned
        // always points before the end.
        if start.batch >= end && given.is_some() {
            return Err(ApiError::BadRequest(
                "cursor is not one this API returned".into(),
            ));
        }
        let mut errors = Vec::new();
        let mut at = start;
        let mut read = 0;
        while at.batch < end && errors.len() < limit && read < MAX_BATCHES_PER_PAGE {
            let batch = rows(self.store.failed_records(id, at.batch).await?);
            read += 1;
            if at.offset > batch.len() {
                return Err(ApiError::BadRequest(
                    "cursor is not one this API returned".into(),
                ));
            }
            let take = (limit - errors.len()).min(batch.len() - at.offset);
            errors.extend_from_slice(&batch[at.offset..at.offset + take]);
            at.offset += take;
            if at.offset == batch.len() {
                at = Cursor {
                    batch: at.batch + 1,
                    offset: 0,
                    ..at
                };
            }
        }
        Ok(FailuresPage {
            job_id: id.clone(),
            errors,
            next_cursor: (at.batch < end).then(|| at.encode()),
        })
    }
}
