//! Processor type `s3`: a clean copy of the valid records in S3, for a data
//! lake or the next step of a pipeline. Each batch becomes one part,
//! `{prefix}{jobId}/part-{batch}.{ext}` (`-retry-{n}` added for the
//! records an operator's n-th retry ran again), in NDJSON, CSV or Parquet;
//! when the job ends, `{prefix}{jobId}/manifest.json` lists the parts.
//!
//! A part's name and bytes follow from the batch alone (its records in
//! line order), so writing it again, after a crash or a lost claim,
//! writes the same object.

use super::registry::{self, Built, Deployment, Fields, ProcessorSettings, ProcessorType};
use super::{BatchContext, JobContext, ProcessContext, ProcessError, RecordProcessor};
use crate::job::JobId;
use crate::schema::{Definition, FieldType, FieldValue, ValidRecord};
use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

pub(super) const TYPE: ProcessorType = ProcessorType {
    name: "s3",
    check,
    build,
    needs: "",
    finishes_jobs: true,
};

/// The settings: where the parts go and in what format.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    bucket: String,
    /// Ends with `/` unless empty.
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    format: PartFormat,
}

/// How a part is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartFormat {
    /// One JSON object per line, fields without a value left out.
    #[default]
    Ndjson,
    /// A header of the definition's field names, then a row per record.
    Csv,
    /// One row group of the definition's fields, each optional: integers
    /// as INT64, numbers as DOUBLE, booleans as BOOLEAN, anything else as
    /// UTF-8 strings (dates in their canonical text).
    Parquet,
}

impl PartFormat {
    fn extension(self) -> &'static str {
        match self {
            PartFormat::Ndjson => "ndjson",
            PartFormat::Csv => "csv",
            PartFormat::Parquet => "parquet",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            PartFormat::Ndjson => "application/x-ndjson",
            PartFormat::Csv => "text/csv; charset=utf-8",
            PartFormat::Parquet => "application/vnd.apache.parquet",
        }
    }
}

fn check(settings: &ProcessorSettings, _fields: &Fields<'_>) -> Result<(), (String, String)> {
    let parsed: Settings = registry::parse(settings)?;
    if parsed.bucket.trim().is_empty() || parsed.bucket.contains('/') {
        return Err(("bucket".into(), "must be a bucket name".into()));
    }
    if !parsed.prefix.is_empty() && !parsed.prefix.ends_with('/') {
        return Err((
            "prefix".into(),
            format!("must end with / (\"{}/\")", parsed.prefix),
        ));
    }
    Ok(())
}

fn build(settings: &ProcessorSettings, deployment: &Deployment<'_>) -> Built {
    let parsed: Settings = registry::settings_of(settings)?;
    Ok(Some(Arc::new(S3Parts::new(
        deployment.clients.s3.clone(),
        &parsed.bucket,
        &parsed.prefix,
        parsed.format,
    ))))
}

/// Batches whose records are kept at once in one process: a worker
/// processes one batch of a job at a time; a batch given back unfinished
/// and claimed elsewhere leaves its records here until pushed out.
const OPEN_BATCHES: usize = 16;

pub struct S3Parts {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    format: PartFormat,
    /// The records of batches being processed, by line.
    open: Mutex<OpenBatches>,
}

#[derive(Default)]
struct OpenBatches {
    batches: HashMap<(JobId, u64), BTreeMap<u64, ValidRecord>>,
    /// Oldest first.
    order: Vec<(JobId, u64)>,
}

/// `manifest.json`: the job's parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub job_id: JobId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub status: crate::job::JobStatus,
    pub format: PartFormat,
    /// Records imported: the sum of the parts' rows.
    pub records: u64,
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// `s3://bucket/key`.
    pub location: String,
    pub bytes: i64,
}

impl S3Parts {
    pub fn new(
        client: aws_sdk_s3::Client,
        bucket: &str,
        prefix: &str,
        format: PartFormat,
    ) -> S3Parts {
        S3Parts {
            client,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            format,
            open: Mutex::default(),
        }
    }

    /// Where a job's parts and manifest go.
    pub fn job_prefix(&self, job: &JobId) -> String {
        format!("{}{job}/", self.prefix)
    }

    fn part_key(&self, batch: &BatchContext<'_>) -> String {
        let retry = match batch.round {
            0 => String::new(),
            n => format!("-retry-{n}"),
        };
        format!(
            "{}part-{:06}{retry}.{}",
            self.job_prefix(batch.job_id),
            batch.batch_index,
            self.format.extension()
        )
    }

    async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<(), ProcessError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                ProcessError::retryable_from(
                    format!("writing s3://{}/{key} failed", self.bucket),
                    e,
                )
            })
    }
}

#[async_trait]
impl RecordProcessor for S3Parts {
    async fn process(
        &self,
        record: &ValidRecord,
        ctx: &ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        registry::one(self, record, ctx).await
    }

    /// Keeps the records until the batch is finished: its part is written
    /// whole, once.
    async fn process_batch(
        &self,
        records: &[&ValidRecord],
        ctx: &ProcessContext<'_>,
    ) -> Vec<Result<(), ProcessError>> {
        let key = (ctx.job_id.clone(), ctx.batch_index);
        let mut open = self.open.lock().expect("open batches poisoned");
        if !open.batches.contains_key(&key) {
            if open.order.len() >= OPEN_BATCHES {
                let oldest = open.order.remove(0);
                open.batches.remove(&oldest);
            }
            open.order.push(key.clone());
        }
        let batch = open.batches.entry(key).or_default();
        for record in records {
            batch.insert(record.line, (*record).clone());
        }
        records.iter().map(|_| Ok(())).collect()
    }

    async fn finish_batch(&self, batch: &BatchContext<'_>) -> Result<(), ProcessError> {
        let key = (batch.job_id.clone(), batch.batch_index);
        let records = {
            let mut open = self.open.lock().expect("open batches poisoned");
            open.order.retain(|k| *k != key);
            open.batches.remove(&key)
        };
        // A batch with no valid record has no part.
        let Some(records) = records.filter(|r| !r.is_empty()) else {
            return Ok(());
        };
        let records: Vec<&ValidRecord> = records.values().collect();
        let body = encode(self.format, batch.definition, &records)?;
        self.put(&self.part_key(batch), body, self.format.content_type())
            .await
    }

    /// Lists the job's parts (a request per thousand) into its manifest.
    async fn finish_job(&self, ended: &JobContext<'_>) -> Result<(), ProcessError> {
        let job = ended.job;
        let prefix = self.job_prefix(&job.id);
        let mut parts = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{prefix}part-"))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                ProcessError::retryable_from(
                    format!("listing s3://{}/{prefix} failed", self.bucket),
                    e,
                )
            })?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    parts.push(Part {
                        location: format!("s3://{}/{key}", self.bucket),
                        bytes: object.size().unwrap_or(0),
                    });
                }
            }
        }
        parts.sort_by(|a, b| a.location.cmp(&b.location));
        let manifest = Manifest {
            job_id: job.id.clone(),
            kind: job.kind.clone(),
            status: job.status,
            format: self.format,
            records: job.processed,
            parts,
        };
        let body = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
        self.put(&format!("{prefix}manifest.json"), body, "application/json")
            .await
    }
}

/// A part's bytes: `records` (in line order) in `format`.
fn encode(
    format: PartFormat,
    definition: &Definition,
    records: &[&ValidRecord],
) -> Result<Vec<u8>, ProcessError> {
    let names: Vec<&str> = definition.fields.iter().map(|f| f.name.as_str()).collect();
    let mut buf = Vec::new();
    match format {
        PartFormat::Ndjson => {
            for record in records {
                serde_json::to_writer(&mut buf, &record.values()).expect("JSON values serialize");
                buf.push(b'\n');
            }
        }
        PartFormat::Csv => {
            crate::dump::write_csv_row(&mut buf, names.iter().copied());
            for record in records {
                let cells: Vec<String> = names
                    .iter()
                    .map(|n| record.get(n).map(|v| v.to_string()).unwrap_or_default())
                    .collect();
                crate::dump::write_csv_row(&mut buf, cells.iter().map(String::as_str));
            }
        }
        PartFormat::Parquet => {
            buf = parquet_part(definition, records)
                .map_err(|e| ProcessError::permanent_from("writing the Parquet part failed", e))?;
        }
    }
    Ok(buf)
}

fn parquet_part(
    definition: &Definition,
    records: &[&ValidRecord],
) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    use parquet::basic::{LogicalType, Repetition, Type as Physical};
    use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::types::Type;

    let columns: Vec<Arc<Type>> = definition
        .fields
        .iter()
        .map(|f| {
            let physical = match f.kind {
                FieldType::Integer => Physical::INT64,
                FieldType::Number => Physical::DOUBLE,
                FieldType::Boolean => Physical::BOOLEAN,
                _ => Physical::BYTE_ARRAY,
            };
            let mut column = Type::primitive_type_builder(&f.name, physical)
                .with_repetition(Repetition::OPTIONAL);
            if physical == Physical::BYTE_ARRAY {
                column = column.with_logical_type(Some(LogicalType::String));
            }
            column.build().map(Arc::new)
        })
        .collect::<Result<_, _>>()?;
    let schema = Arc::new(
        Type::group_type_builder("record")
            .with_fields(columns)
            .build()?,
    );
    let properties = Arc::new(
        WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build(),
    );
    let mut writer = SerializedFileWriter::new(Vec::new(), schema, properties)?;
    let mut group = writer.next_row_group()?;
    let mut index = 0;
    while let Some(mut column) = group.next_column()? {
        let field = &definition.fields[index];
        let values: Vec<Option<FieldValue<'_>>> =
            records.iter().map(|r| r.get(&field.name)).collect();
        match field.kind {
            FieldType::Integer => {
                let (data, levels) = levels(&values, |v| v.as_i64());
                column
                    .typed::<Int64Type>()
                    .write_batch(&data, Some(&levels), None)?;
            }
            FieldType::Number => {
                let (data, levels) = levels(&values, |v| v.as_f64());
                column
                    .typed::<DoubleType>()
                    .write_batch(&data, Some(&levels), None)?;
            }
            FieldType::Boolean => {
                let (data, levels) = levels(&values, |v| v.as_bool());
                column
                    .typed::<BoolType>()
                    .write_batch(&data, Some(&levels), None)?;
            }
            _ => {
                let (data, levels) = levels(&values, |v| {
                    Some(ByteArray::from(v.to_string().into_bytes()))
                });
                column
                    .typed::<ByteArrayType>()
                    .write_batch(&data, Some(&levels), None)?;
            }
        }
        column.close()?;
        index += 1;
    }
    group.close()?;
    writer.into_inner()
}

/// A column's values and definition levels (1 present, 0 absent).
fn levels<T>(
    values: &[Option<FieldValue<'_>>],
    read: impl Fn(&FieldValue<'_>) -> Option<T>,
) -> (Vec<T>, Vec<i16>) {
    let mut data = Vec::with_capacity(values.len());
    let levels = values
        .iter()
        .map(|v| match v.as_ref().and_then(&read) {
            Some(x) => {
                data.push(x);
                1
            }
            None => 0,
        })
        .collect();
    (data, levels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition() -> Definition {
        Definition::from_json(
            r#"{"fields": [
                {"name": "user", "type": "string", "required": true},
                {"name": "ms", "type": "integer"},
                {"name": "score", "type": "number"},
                {"name": "ok", "type": "boolean"},
                {"name": "day", "type": "date"}]}"#,
            "test",
        )
        .unwrap()
    }

    fn records() -> Vec<ValidRecord> {
        [
            serde_json::json!({"user": "ada", "ms": 3, "score": 1.5, "ok": true, "day": "2026-12-05"}),
            serde_json::json!({"user": "bob, \"the\" builder"}),
        ]
        .iter()
        .enumerate()
        .map(|(i, v)| ValidRecord::from_json(i as u64 + 2, v.as_object().unwrap()).unwrap())
        .collect()
    }

    #[test]
    fn a_csv_part_has_the_fields_as_header_and_a_quoted_row_per_record() {
        let d = definition();
        let records = records();
        let refs: Vec<&ValidRecord> = records.iter().collect();
        let csv = String::from_utf8(encode(PartFormat::Csv, &d, &refs).unwrap()).unwrap();
        assert_eq!(
            csv,
            "user,ms,score,ok,day\r\nada,3,1.5,true,2026-12-05\r\n\"bob, \"\"the\"\" builder\",,,,\r\n"
        );
        let ndjson = String::from_utf8(encode(PartFormat::Ndjson, &d, &refs).unwrap()).unwrap();
        assert_eq!(
            ndjson,
            "{\"day\":\"2026-12-05\",\"ms\":3,\"ok\":true,\"score\":1.5,\"user\":\"ada\"}\n{\"user\":\"bob, \\\"the\\\" builder\"}\n"
        );
    }

    #[test]
    fn a_parquet_part_reads_back_with_typed_optional_columns() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        use parquet::record::Field;
        let d = definition();
        let records = records();
        let refs: Vec<&ValidRecord> = records.iter().collect();
        let bytes = encode(PartFormat::Parquet, &d, &refs).unwrap();
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
        let schema = reader.metadata().file_metadata().schema_descr();
        let types: Vec<String> = schema
            .columns()
            .iter()
            .map(|c| format!("{}:{}", c.name(), c.physical_type()))
            .collect();
        assert_eq!(
            types,
            [
                "user:BYTE_ARRAY",
                "ms:INT64",
                "score:DOUBLE",
                "ok:BOOLEAN",
                "day:BYTE_ARRAY"
            ]
        );
        let rows: Vec<Vec<Field>> = reader
            .get_row_iter(None)
            .unwrap()
            .map(|r| {
                r.unwrap()
                    .into_columns()
                    .into_iter()
                    .map(|(_, f)| f)
                    .collect()
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                vec![
                    Field::Str("ada".into()),
                    Field::Long(3),
                    Field::Double(1.5),
                    Field::Bool(true),
                    Field::Str("2026-12-05".into()),
                ],
                vec![
                    Field::Str("bob, \"the\" builder".into()),
                    Field::Null,
                    Field::Null,
                    Field::Null,
                    Field::Null,
                ],
            ]
        );
    }
}
