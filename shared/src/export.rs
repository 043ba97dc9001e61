//! Writing a job's imported records back out, in input order, as NDJSON,
//! CSV or a JSON array (`bulkimport export`, `run --export`): batch by
//! batch, so memory stays bounded whatever the job's size.

use crate::job::Job;
use crate::schema::Definition;
use crate::store::{JobStore, StoreError};
use std::collections::HashSet;
use tokio::io::{AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the export failed")]
    Write(#[from] std::io::Error),
}

/// Output formats of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object per line.
    Ndjson,
    /// A header of the definition's field names, then one row per record.
    Csv,
    /// One JSON array of objects.
    Json,
}

impl ExportFormat {
    /// The media type of the output.
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Ndjson => "application/x-ndjson",
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Json => "application/json",
        }
    }
}

impl std::str::FromStr for ExportFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ndjson" | "jsonl" => Ok(ExportFormat::Ndjson),
            "csv" => Ok(ExportFormat::Csv),
            "json" => Ok(ExportFormat::Json),
            other => Err(format!("unknown format {other:?}: ndjson, csv or json")),
        }
    }
}

/// Writes every record that was imported (valid and processed), one JSON
/// object per line, in input order. Returns how many were written.
pub async fn export_ndjson<W: AsyncWrite + Unpin>(
    store: &dyn JobStore,
    definition: &Definition,
    job: &Job,
    out: &mut W,
) -> Result<u64, ExportError> {
    export(store, definition, job, ExportFormat::Ndjson, out).await
}

/// Writes every record that was imported (valid and processed), in input
/// order, in `format`. Returns how many were written.
pub async fn export<W: AsyncWrite + Unpin>(
    store: &dyn JobStore,
    definition: &Definition,
    job: &Job,
    format: ExportFormat,
    out: &mut W,
) -> Result<u64, ExportError> {
    let names: Vec<&str> = definition.fields.iter().map(|f| f.name.as_str()).collect();
    let mut written = 0;
    let mut buf = Vec::new();
    match format {
        ExportFormat::Csv => write_csv_row(&mut buf, names.iter().copied()),
        ExportFormat::Json => buf.push(b'['),
        ExportFormat::Ndjson => {}
    }
    for index in 0..job.total_batches {
        let failed: HashSet<u64> = store
            .failed_records(&job.id, index)
            .await?
            .into_iter()
            .map(|f| f.line)
            .collect();
        for record in store.load_records(&job.id, index).await? {
            if failed.contains(&record.line) {
                continue;
            }
            // Validation is deterministic: a record that is not failed
            // validated when it was processed.
            let Ok(valid) = definition.validate(&record) else {
                continue;
            };
            match format {
                ExportFormat::Ndjson => {
                    serde_json::to_writer(&mut buf, &valid.values())
                        .expect("JSON values serialize");
                    buf.push(b'\n');
                }
                ExportFormat::Json => {
                    if written > 0 {
                        buf.push(b',');
                    }
                    buf.push(b'\n');
                    serde_json::to_writer(&mut buf, &valid.values())
                        .expect("JSON values serialize");
                }
                ExportFormat::Csv => {
                    let cells: Vec<String> = names
                        .iter()
                        .map(|n| valid.get(n).map(|v| v.to_string()).unwrap_or_default())
                        .collect();
                    write_csv_row(&mut buf, cells.iter().map(String::as_str));
                }
            }
            written += 1;
            if buf.len() >= 64 * 1024 {
                out.write_all(&buf).await?;
                buf.clear();
            }
        }
    }
    if format == ExportFormat::Json {
        buf.extend_from_slice(b"\n]\n");
    }
    out.write_all(&buf).await?;
    out.flush().await?;
    Ok(written)
}

/// One RFC 4180 row: cells quoted when they hold a delimiter, a quote or a
/// line break.
fn write_csv_row<'a>(buf: &mut Vec<u8>, cells: impl Iterator<Item = &'a str>) {
    for (i, cell) in cells.enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        if cell.contains([',', '"', '\n', '\r']) {
            buf.push(b'"');
            buf.extend_from_slice(cell.replace('"', "\"\"").as_bytes());
            buf.push(b'"');
        } else {
            buf.extend_from_slice(cell.as_bytes());
        }
    }
    buf.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_only_when_needed() {
        let mut buf = Vec::new();
        write_csv_row(
            &mut buf,
            ["plain", "a,b", "say \"hi\"", "two\nlines"].into_iter(),
        );
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\"\r\n"
        );
    }
}
