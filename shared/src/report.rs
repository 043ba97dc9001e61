//! The error report: every failed row of a job as it was in the file (the
//! columns the definition reads, under the file's header names), followed
//! by where it was and what is wrong (`line`, `field`, `reason`), as CSV.
//! A user fixes the cells and uploads it as a new import with the same
//! definition, which ignores the three added columns. Written when the job
//! finalizes with failures, batch by batch, so memory stays bounded.

use crate::job::{FailedRecord, Job, JobSource, StagedRecord};
use crate::schema::Definition;
use crate::store::{JobStore, StoreError};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWrite;

/// Batches whose failures are fetched at once while the report is written.
const PARALLEL_READS: usize = 16;
/// Batches with failures whose records are loaded at once (each may hold
/// up to 16 MiB of records).
const PARALLEL_LOADS: usize = 4;

/// Separates the fields and the reasons of a record with several issues.
const JOIN: &str = "; ";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the error report failed")]
    Write(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the error report could not be written before the deadline; it stays owed")]
    Unfinished,
}

/// The report's file name: one per round of a job (`<jobId>.csv`, then
/// `<jobId>.retry-<n>.csv`), so the report of one ending never overwrites
/// another's.
pub fn report_name(job: &Job) -> String {
    match job.retries {
        0 => format!("{}.csv", job.id),
        n => format!("{}.retry-{n}.csv", job.id),
    }
}

fn write_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ReportError {
    ReportError::Write(e.into())
}

/// Where error reports go.
#[async_trait]
pub trait ReportSink: Send + Sync {
    /// Writes the report of `job`, which runs on `definition` (its pinned
    /// one), and returns its location.
    async fn write(
        &self,
        job: &Job,
        definition: &Definition,
        store: &dyn JobStore,
    ) -> Result<String, ReportError>;
}

/// The names of the file's columns that feed a field, in file order: what
/// prepare pins from a header row (`JobStore::pin_columns`) for the report.
/// Columns no field reads are not staged, so the report leaves them out.
pub fn file_columns(definition: &Definition, header: &[String]) -> Vec<String> {
    header
        .iter()
        .enumerate()
        .map(|(i, name)| match i {
            0 => name.trim_start_matches('\u{feff}'),
            _ => name.as_str(),
        })
        .filter(|name| definition.field_index(name).is_some())
        .map(str::to_owned)
        .collect()
}

/// How the report lays a failed row out: the file's columns that feed a
/// field (header name, field index), in file order, then `line`, `field`
/// and `reason` (`Definition::report_columns`), separated by the
/// definition's delimiter (a comma when it detects one), so the report
/// reads back as the file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    columns: Vec<(String, usize)>,
    extra: [String; 3],
    delimiter: u8,
}

impl Layout {
    /// `pinned`: the column names prepare pinned from the file's header.
    /// Without them (headerless CSV, NDJSON, a file rejected before its
    /// header was read) the columns are `columns` or the fields, in order.
    pub fn new(definition: &Definition, pinned: Option<Vec<String>>) -> Layout {
        let columns = match (pinned, &definition.columns) {
            (Some(names), _) => names
                .into_iter()
                .filter_map(|name| definition.field_index(&name).map(|field| (name, field)))
                .collect(),
            (None, Some(names)) if !definition.has_header => names
                .iter()
                .zip(definition.column_map_without_header().columns)
                .filter_map(|(name, field)| Some((name.clone(), field?)))
                .collect(),
            (None, _) => definition
                .fields
                .iter()
                .enumerate()
                .map(|(i, f)| (f.name.clone(), i))
                .collect(),
        };
        Layout {
            columns,
            extra: definition.report_columns().clone(),
            delimiter: definition.delimiter.unwrap_or(b','),
        }
    }

    /// The layout of `job`'s report, from the columns pinned to it.
    pub async fn of(
        job: &Job,
        definition: &Definition,
        store: &dyn JobStore,
    ) -> Result<Layout, StoreError> {
        let pinned = store.pinned_columns(&job.id).await?;
        Ok(Layout::new(definition, pinned))
    }

    /// The header row.
    pub fn header(&self) -> Vec<&str> {
        self.columns
            .iter()
            .map(|(name, _)| name.as_str())
            .chain(self.extra.iter().map(String::as_str))
            .collect()
    }

    /// The row of a failed record: its values as staged (`values`, in field
    /// order; empty cells when they could not be loaded), its line, the
    /// fields at fault and the reasons, each joined with `; `.
    pub fn row(&self, failed: &FailedRecord, values: Option<&[Option<String>]>) -> Vec<String> {
        let mut row: Vec<String> = self
            .columns
            .iter()
            .map(|(_, field)| {
                values
                    .and_then(|v| v.get(*field))
                    .and_then(Option::as_deref)
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        let fields: Vec<&str> = failed
            .issues
            .iter()
            .filter_map(|i| i.field.as_deref())
            .collect();
        let reasons: Vec<&str> = failed.issues.iter().map(|i| i.message.as_str()).collect();
        row.push(failed.line.to_string());
        row.push(fields.join(JOIN));
        row.push(reasons.join(JOIN));
        row
    }

    /// Rows as CSV (RFC 4180: cells quoted when they hold the delimiter, a
    /// quote or a line break).
    pub async fn encode<R: AsRef<[u8]>>(&self, rows: &[Vec<R>]) -> Result<Vec<u8>, ReportError> {
        let mut csv = csv_async::AsyncWriterBuilder::new()
            .has_headers(false)
            .delimiter(self.delimiter)
            .create_writer(Vec::new());
        for row in rows {
            csv.write_record(row.iter().map(AsRef::as_ref))
                .await
                .map_err(write_error)?;
        }
        csv.into_inner().await.map_err(write_error)
    }

    /// The rows of one batch's failures, values joined from its records on
    /// the line number.
    async fn batch(
        &self,
        job: &Job,
        store: &dyn JobStore,
        index: u64,
        failed: Vec<FailedRecord>,
    ) -> Result<Vec<u8>, ReportError> {
        let mut values = staged_values(job, store, index, &failed).await?;
        let rows: Vec<Vec<String>> = failed
            .iter()
            .map(|f| self.row(f, values.remove(&f.line).as_deref()))
            .collect();
        self.encode(&rows).await
    }
}

/// The staged values of the failed records of a batch, by line. Failures on
/// line 0 come from a batch whose records could not be loaded: they get
/// none, and so does every record of a batch whose records are corrupt.
async fn staged_values(
    job: &Job,
    store: &dyn JobStore,
    index: u64,
    failed: &[FailedRecord],
) -> Result<HashMap<u64, Vec<Option<String>>>, StoreError> {
    let mut wanted: HashMap<u64, Vec<Option<String>>> = failed
        .iter()
        .filter(|f| f.line > 0)
        .map(|f| (f.line, Vec::new()))
        .collect();
    if wanted.is_empty() {
        return Ok(wanted);
    }
    let records: Vec<StagedRecord> = match store.load_records(&job.id, index).await {
        Ok(records) => records,
        Err(e @ StoreError::Corrupt { .. }) => {
            let error = crate::telemetry::error_chain(&e);
            tracing::warn!(job_id = %job.id, batch = index, %error, "failed rows reported without their values");
            return Ok(HashMap::new());
        }
        Err(e) => return Err(e),
    };
    for record in records {
        if let Some(slot) = wanted.get_mut(&record.line) {
            *slot = record.values.to_vec();
        }
    }
    Ok(wanted)
}

/// The report as CSV pieces in input order: the header row, then one piece
/// per batch with failures (one row per failed record).
pub fn csv_pieces<'a>(
    job: &'a Job,
    definition: &'a Definition,
    store: &'a dyn JobStore,
) -> impl futures::Stream<Item = Result<Vec<u8>, ReportError>> + Send + 'a {
    futures::stream::once(async move {
        let layout = Arc::new(Layout::of(job, definition, store).await?);
        let header = layout.encode(&[layout.header()]).await?;
        // `total_batches` is 0 until prepare finishes, but a job can fail
        // before that (continueOnError off, a late file-level error) with
        // failures in the batches written so far.
        let written = job.total_batches.max(job.batches_ready);
        let rows = futures::stream::iter(0..written)
            .map(move |index| async move {
                let failed = store.failed_records(&job.id, index).await?;
                Ok::<_, ReportError>((index, failed))
            })
            .buffered(PARALLEL_READS)
            .try_filter(|(_, failed)| futures::future::ready(!failed.is_empty()))
            .map_ok(move |(index, failed)| {
                let layout = layout.clone();
                async move { layout.batch(job, store, index, failed).await }
            })
            .try_buffered(PARALLEL_LOADS);
        Ok::<_, ReportError>(futures::stream::once(async { Ok(header) }).chain(rows))
    })
    .try_flatten()
}

/// Writes the whole report to `out`.
pub async fn write_csv<W: AsyncWrite + Unpin + Send>(
    job: &Job,
    definition: &Definition,
    store: &dyn JobStore,
    mut out: W,
) -> Result<(), ReportError> {
    use tokio::io::AsyncWriteExt;
    let mut pieces = std::pin::pin!(csv_pieces(job, definition, store));
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
        definition: &Definition,
        store: &dyn JobStore,
    ) -> Result<(), ReportError> {
        use tokio::io::AsyncWriteExt;
        // The pieces go through a pipe into a streamed upload: memory holds
        // one part, whatever the report's size.
        let (mut writer, reader) = tokio::io::duplex(1 << 16);
        let produce = async move {
            let mut pieces = std::pin::pin!(csv_pieces(job, definition, store));
            while let Some(piece) = pieces.try_next().await? {
                writer.write_all(&piece).await.map_err(write_error)?;
            }
            writer.shutdown().await.map_err(write_error)
        };
        let to = crate::upload::Destination {
            client: &self.client,
            bucket,
            key,
            content_type: CONTENT_TYPE,
        };
        let upload = async {
            to.upload(reader, self.part_bytes)
                .await
                .map(|_| ())
                .map_err(write_error)
        };
        tokio::try_join!(produce, upload)?;
        Ok(())
    }
}

const CONTENT_TYPE: &str = "text/csv; charset=utf-8";

#[async_trait]
impl ReportSink for S3Reports {
    async fn write(
        &self,
        job: &Job,
        definition: &Definition,
        store: &dyn JobStore,
    ) -> Result<String, ReportError> {
        let JobSource::Object(object) = &job.source;
        let bucket = self.bucket.clone().unwrap_or_else(|| object.bucket.clone());
        let key = format!("{}{}", self.prefix, report_name(job));
        self.upload(&bucket, &key, job, definition, store).await?;
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
    async fn write(
        &self,
        job: &Job,
        definition: &Definition,
        store: &dyn JobStore,
    ) -> Result<String, ReportError> {
        let mut out = Vec::new();
        write_csv(job, definition, store, &mut out).await?;
        let location = format!("memory://reports/{}", report_name(job));
        let text = String::from_utf8(out).map_err(write_error)?;
        self.reports
            .lock()
            .expect("reports poisoned")
            .push((location.clone(), text));
        Ok(location)
    }
}

#[cfg(test)]
mod tests;
