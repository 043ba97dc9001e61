//! The error report: every failed record of a job (line, field, value,
//! message) as CSV, written when the job finalizes with failures. Streams
//! batch by batch through a temporary file, so memory stays bounded.

use crate::job::Job;
use crate::store::{JobStore, StoreError};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use std::sync::Mutex;
use tokio::io::AsyncWrite;

/// Batches whose failures are fetched at once while the report is written.
const PARALLEL_READS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the error report failed")]
    Write(#[source] Box<dyn std::error::Error + Send + Sync>),
}

fn write_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ReportError {
    ReportError::Write(e.into())
}

/// Where error reports go.
#[async_trait]
pub trait ReportSink: Send + Sync {
    /// Writes the report of `job` and returns its location.
    async fn write(&self, job: &Job, store: &dyn JobStore) -> Result<String, ReportError>;
}

/// Writes the report as CSV (`line,field,value,message`, one row per issue,
/// in input order). Returns the number of rows.
pub async fn write_csv<W: AsyncWrite + Unpin + Send>(
    job: &Job,
    store: &dyn JobStore,
    out: W,
) -> Result<u64, ReportError> {
    let mut csv = csv_async::AsyncWriter::from_writer(out);
    csv.write_record(["line", "field", "value", "message"])
        .await
        .map_err(write_error)?;
    let mut rows = 0;
    let mut batches = futures::stream::iter(0..job.total_batches)
        .map(|index| store.failed_records(&job.id, index))
        .buffered(PARALLEL_READS);
    while let Some(failed) = batches.try_next().await? {
        for record in failed {
            let line = record.line.to_string();
            for issue in &record.issues {
                let row = [
                    line.as_str(),
                    issue.field.as_deref().unwrap_or(""),
                    issue.value.as_deref().unwrap_or(""),
                    issue.message.as_str(),
                ];
                csv.write_record(row).await.map_err(write_error)?;
                rows += 1;
            }
        }
    }
    csv.flush().await.map_err(write_error)?;
    Ok(rows)
}

/// Reports in S3, under `prefix` in `bucket` (the upload bucket when None):
/// `s3://bucket/<prefix><jobId>.csv`.
pub struct S3Reports {
    pub client: aws_sdk_s3::Client,
    pub bucket: Option<String>,
    pub prefix: String,
}

#[async_trait]
impl ReportSink for S3Reports {
    async fn write(&self, job: &Job, store: &dyn JobStore) -> Result<String, ReportError> {
        let bucket = self
            .bucket
            .clone()
            .unwrap_or_else(|| job.source.bucket.clone());
        let key = format!("{}{}.csv", self.prefix, job.id);
        let path = std::env::temp_dir().join(format!(
            "bulk-import-report-{}-{}.csv",
            job.id,
            std::process::id()
        ));
        let result = async {
            let file = tokio::fs::File::create(&path).await.map_err(write_error)?;
            let rows = write_csv(job, store, tokio::io::BufWriter::new(file)).await?;
            let body = aws_sdk_s3::primitives::ByteStream::from_path(&path).await.map_err(write_error)?;
            self.client
                .put_object()
                .bucket(&bucket)
                .key(&key)
                .content_type("text/csv; charset=utf-8")
                .body(body)
                .send()
                .await
                .map_err(write_error)?;
            tracing::info!(job_id = %job.id, rows, report = %format!("s3://{bucket}/{key}"), "error report written");
            Ok(format!("s3://{bucket}/{key}"))
        }
        .await;
        let _ = tokio::fs::remove_file(&path).await;
        result
    }
}

/// Keeps reports in memory (tests), keyed by location.
#[derive(Debug, Default)]
pub struct MemoryReports {
    pub reports: Mutex<Vec<(String, String)>>,
}

#[async_trait]
impl ReportSink for MemoryReports {
    async fn write(&self, job: &Job, store: &dyn JobStore) -> Result<String, ReportError> {
        let mut out = Vec::new();
        write_csv(job, store, &mut out).await?;
        let location = format!("memory://reports/{}.csv", job.id);
        let text = String::from_utf8(out).map_err(write_error)?;
        self.reports
            .lock()
            .expect("reports poisoned")
            .push((location.clone(), text));
        Ok(location)
    }
}
