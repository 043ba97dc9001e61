//! The error report: every failed record of a job (line, field, value,
//! message) as CSV, written when the job finalizes with failures. Produced
//! batch by batch and streamed out, so memory stays bounded.

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

/// The report as CSV pieces, one per batch, in input order (the first
/// starts with the header row `line,field,value,message`; one row per issue).
pub fn csv_pieces<'a>(
    job: &'a Job,
    store: &'a dyn JobStore,
) -> impl futures::Stream<Item = Result<Vec<u8>, ReportError>> + 'a {
    let header =
        futures::stream::once(async { encode(&[["line", "field", "value", "message"]]).await });
    // `total_batches` is 0 until prepare finishes, but a job can fail before
    // that (continueOnError off, a late file-level error) with failures in
    // the batches written so far.
    let written = job.total_batches.max(job.batches_ready);
    let batches = futures::stream::iter(0..written)
        .map(move |index| store.failed_records(&job.id, index))
        .buffered(PARALLEL_READS)
        .map_err(ReportError::from)
        .and_then(|failed| async move {
            let mut rows = Vec::new();
            for record in &failed {
                let line = record.line.to_string();
                for issue in &record.issues {
                    rows.push([
                        line.clone(),
                        issue.field.clone().unwrap_or_default(),
                        issue.value.clone().unwrap_or_default(),
                        issue.message.clone(),
                    ]);
                }
            }
            encode(&rows).await
        })
        .try_filter(|piece| futures::future::ready(!piece.is_empty()));
    header.chain(batches)
}

async fn encode<R: AsRef<[u8]>, const N: usize>(rows: &[[R; N]]) -> Result<Vec<u8>, ReportError> {
    let mut csv = csv_async::AsyncWriterBuilder::new()
        .has_headers(false)
        .create_writer(Vec::new());
    for row in rows {
        csv.write_record(row.iter().map(AsRef::as_ref))
            .await
            .map_err(write_error)?;
    }
    csv.into_inner().await.map_err(write_error)
}

/// Writes the whole report to `out`.
pub async fn write_csv<W: AsyncWrite + Unpin + Send>(
    job: &Job,
    store: &dyn JobStore,
    mut out: W,
) -> Result<(), ReportError> {
    use tokio::io::AsyncWriteExt;
    let mut pieces = std::pin::pin!(csv_pieces(job, store));
    while let Some(piece) = pieces.try_next().await? {
        out.write_all(&piece).await.map_err(write_error)?;
    }
    out.flush().await.map_err(write_error)
}

/// Reports in S3, under `prefix` in `bucket` (the upload bucket when None):
/// `s3://bucket/<prefix><jobId>.csv`. Large reports stream up as a
/// multipart upload, so neither memory nor local disk holds the whole report.
pub struct S3Reports {
    pub client: aws_sdk_s3::Client,
    pub bucket: Option<String>,
    pub prefix: String,
    /// Reports larger than this go up in parts of this size (S3's minimum
    /// is 5 MiB for all but the last part).
    pub part_bytes: usize,
}

impl S3Reports {
    pub fn new(
        client: aws_sdk_s3::Client,
        bucket: Option<String>,
        prefix: impl Into<String>,
    ) -> Self {
        S3Reports {
            client,
            bucket,
            prefix: prefix.into(),
            part_bytes: 8 * 1024 * 1024,
        }
    }

    async fn upload(
        &self,
        bucket: &str,
        key: &str,
        job: &Job,
        store: &dyn JobStore,
    ) -> Result<(), ReportError> {
        let mut pieces = std::pin::pin!(csv_pieces(job, store));
        let mut buffer = Vec::new();
        let mut upload: Option<Multipart> = None;
        while let Some(piece) = pieces.try_next().await? {
            buffer.extend_from_slice(&piece);
            if buffer.len() >= self.part_bytes {
                let part = std::mem::take(&mut buffer);
                match &mut upload {
                    Some(m) => m.part(&self.client, part).await?,
                    None => upload = Some(Multipart::start(&self.client, bucket, key, part).await?),
                }
            }
        }
        match upload {
            None => {
                self.client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .content_type(CONTENT_TYPE)
                    .body(buffer.into())
                    .send()
                    .await
                    .map_err(write_error)?;
                Ok(())
            }
            Some(mut m) => {
                if !buffer.is_empty() {
                    m.part(&self.client, buffer).await?;
                }
                m.complete(&self.client).await
            }
        }
    }
}

const CONTENT_TYPE: &str = "text/csv; charset=utf-8";

/// An S3 multipart upload in progress.
struct Multipart {
    bucket: String,
    key: String,
    id: String,
    parts: Vec<aws_sdk_s3::types::CompletedPart>,
}

impl Multipart {
    async fn start(
        client: &aws_sdk_s3::Client,
        bucket: &str,
        key: &str,
        first: Vec<u8>,
    ) -> Result<Self, ReportError> {
        let out = client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .content_type(CONTENT_TYPE)
            .send()
            .await
            .map_err(write_error)?;
        let id = out
            .upload_id
            .ok_or_else(|| write_error("CreateMultipartUpload returned no upload id"))?;
        let mut m = Multipart {
            bucket: bucket.into(),
            key: key.into(),
            id,
            parts: Vec::new(),
        };
        m.part(client, first).await?;
        Ok(m)
    }

    async fn part(
        &mut self,
        client: &aws_sdk_s3::Client,
        bytes: Vec<u8>,
    ) -> Result<(), ReportError> {
        let number = self.parts.len() as i32 + 1;
        let out = client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.id)
            .part_number(number)
            .body(bytes.into())
            .send()
            .await;
        match out {
            Ok(out) => {
                self.parts.push(
                    aws_sdk_s3::types::CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag)
                        .build(),
                );
                Ok(())
            }
            Err(e) => {
                self.abort(client).await;
                Err(write_error(e))
            }
        }
    }

    async fn complete(self, client: &aws_sdk_s3::Client) -> Result<(), ReportError> {
        let parts = aws_sdk_s3::types::CompletedMultipartUpload::builder()
            .set_parts(Some(self.parts.clone()))
            .build();
        let result = client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.id)
            .multipart_upload(parts)
            .send()
            .await;
        if let Err(e) = result {
            self.abort(client).await;
            return Err(write_error(e));
        }
        Ok(())
    }

    /// Best effort: an abandoned upload is also removed by the bucket's
    /// lifecycle rule for incomplete uploads.
    async fn abort(&self, client: &aws_sdk_s3::Client) {
        let _ = client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.id)
            .send()
            .await;
    }
}

#[async_trait]
impl ReportSink for S3Reports {
    async fn write(&self, job: &Job, store: &dyn JobStore) -> Result<String, ReportError> {
        let bucket = self
            .bucket
            .clone()
            .unwrap_or_else(|| job.source.bucket.clone());
        let key = format!("{}{}.csv", self.prefix, job.id);
        self.upload(&bucket, &key, job, store).await?;
        let location = format!("s3://{bucket}/{key}");
        tracing::info!(job_id = %job.id, report = %location, "error report written");
        Ok(location)
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
