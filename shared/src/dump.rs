//! Dumping a job's imported records back out, in input order, as NDJSON,
//! CSV or a JSON array (`bulkimport export`, `run --export`): batch by
//! batch, so memory stays bounded whatever the job's size. Only batches
//! that were processed count: what an abort left unprocessed, or never
//! read, is left out and said so in the returned `Dumped`. (The code says
//! "dump" so that "export" can name jobs that export a table.)

use crate::job::Job;
use crate::schema::Definition;
use crate::store::{BatchState, JobStore, StoreError};
use std::collections::HashSet;
use tokio::io::{AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the export failed")]
    Write(#[from] std::io::Error),
}

/// Output formats of a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpFormat {
    /// One JSON object per line.
    Ndjson,
    /// A header of the definition's field names, then one row per record.
    Csv,
    /// One JSON array of objects.
    Json,
}

impl DumpFormat {
    /// The media type of the output.
    pub fn content_type(self) -> &'static str {
        match self {
            DumpFormat::Ndjson => "application/x-ndjson",
            DumpFormat::Csv => "text/csv; charset=utf-8",
            DumpFormat::Json => "application/json",
        }
    }
}

impl std::str::FromStr for DumpFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ndjson" | "jsonl" => Ok(DumpFormat::Ndjson),
            "csv" => Ok(DumpFormat::Csv),
            "json" => Ok(DumpFormat::Json),
            other => Err(format!("unknown format {other:?}: ndjson, csv or json")),
        }
    }
}

/// What a dump wrote, and what it left out because it was never
/// imported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dumped {
    /// Records written: every record imported (valid and processed).
    pub written: u64,
    /// Batches written to the store but never processed (an abort stopped
    /// the job first), and their records.
    pub unprocessed_batches: u64,
    pub unprocessed_records: u64,
    /// The file was read to its end (false after an abort during prepare:
    /// rows past the last batch written were never read).
    pub file_read: bool,
}

impl std::fmt::Display for Dumped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exported {} records", self.written)?;
        if self.unprocessed_batches > 0 {
            write!(
                f,
                "; {} batches ({} records) were never processed and are not in the export",
                self.unprocessed_batches, self.unprocessed_records
            )?;
        }
        if !self.file_read {
            write!(
                f,
                "; the file was not read to its end, so rows after those are not in it either"
            )?;
        }
        Ok(())
    }
}

/// Writes every record that was imported (valid and processed), one JSON
/// object per line, in input order.
pub async fn dump_ndjson<W: AsyncWrite + Unpin>(
    store: &dyn JobStore,
    definition: &Definition,
    job: &Job,
    out: &mut W,
) -> Result<Dumped, DumpError> {
    dump(store, definition, job, DumpFormat::Ndjson, out).await
}

/// Writes every record that was imported (valid and processed), in input
/// order, in `format`. Batches nobody processed are skipped and counted.
pub async fn dump<W: AsyncWrite + Unpin>(
    store: &dyn JobStore,
    definition: &Definition,
    job: &Job,
    format: DumpFormat,
    out: &mut W,
) -> Result<Dumped, DumpError> {
    let names: Vec<&str> = definition.fields.iter().map(|f| f.name.as_str()).collect();
    let mut written = 0;
    let mut buf = Vec::new();
    match format {
        DumpFormat::Csv => write_csv_row(&mut buf, names.iter().copied()),
        DumpFormat::Json => buf.push(b'['),
        DumpFormat::Ndjson => {}
    }
    let mut dumped = Dumped {
        file_read: job.prepared,
        ..Dumped::default()
    };
    // `total_batches` is 0 until prepare finishes: a job aborted while its
    // file was read has the batches published so far.
    for index in 0..job.total_batches.max(job.batches_ready) {
        let info = match store.batch_info(&job.id, index).await? {
            Some(b) if matches!(b.state, BatchState::Done | BatchState::Failed) => b,
            other => {
                dumped.unprocessed_batches += 1;
                dumped.unprocessed_records += other.map_or(0, |b| b.record_count);
                continue;
            }
        };
        let failed: HashSet<u64> = match info.failed {
            0 => HashSet::new(),
            _ => store
                .failed_records(&job.id, index)
                .await?
                .into_iter()
                .map(|f| f.line)
                .collect(),
        };
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
                DumpFormat::Ndjson => {
                    serde_json::to_writer(&mut buf, &valid.values())
                        .expect("JSON values serialize");
                    buf.push(b'\n');
                }
                DumpFormat::Json => {
                    if written > 0 {
                        buf.push(b',');
                    }
                    buf.push(b'\n');
                    serde_json::to_writer(&mut buf, &valid.values())
                        .expect("JSON values serialize");
                }
                DumpFormat::Csv => {
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
    if format == DumpFormat::Json {
        buf.extend_from_slice(b"\n]\n");
    }
    out.write_all(&buf).await?;
    out.flush().await?;
    dumped.written = written;
    Ok(dumped)
}

/// One RFC 4180 row: cells quoted when they hold a delimiter, a quote or a
/// line break.
pub(crate) fn write_csv_row<'a>(buf: &mut Vec<u8>, cells: impl Iterator<Item = &'a str>) {
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
    use crate::job::{JobStatus, SourceRef, StagedRecord};
    use crate::store::memory::MemoryStore;
    use crate::store::{
        BatchOutcome, Claim, ClaimStore, CreateOutcome, Finalization, FinalizeWhen, JobControl,
        NewBatch, PrepareLease, PrepareStore,
    };

    const DEFINITION: &str = r#"{"fields": [{"name": "email", "type": "email"}]}"#;

    /// A job of `batches` published batches of 10 records, of which the
    /// first `processed` are committed, then aborted; prepared or not.
    async fn aborted(store: &MemoryStore, batches: u64, processed: u64, prepared: bool) -> Job {
        let source = SourceRef {
            bucket: "b".into(),
            key: "k.csv".into(),
            version: "v".into(),
        };
        let lease = PrepareLease {
            owner: "o".into(),
            lease_ms: 60_000,
        };
        let CreateOutcome::Created(job) = store.create_job(&source, &lease, 0).await.unwrap()
        else {
            panic!("new job");
        };
        for index in 0..batches {
            let records: Vec<StagedRecord> = (0..10)
                .map(|i| StagedRecord {
                    line: index * 10 + i + 2,
                    values: vec![Some(format!("u{index}-{i}@x.org"))].into(),
                    issue: None,
                })
                .collect();
            let batch = NewBatch {
                index,
                records: &records,
                after: None,
            };
            store.write_batch(&job.id, batch, 0).await.unwrap();
        }
        store
            .publish(&job.id, &lease, batches, None, 0)
            .await
            .unwrap();
        if prepared {
            store
                .finish_prepare(&job.id, &lease, batches * 10, batches)
                .await
                .unwrap();
        }
        for _ in 0..processed {
            let Claim::Batch(c) = store.claim_batch(&job.id, "w", 0, 60_000).await.unwrap() else {
                panic!("a batch to claim");
            };
            let outcome = BatchOutcome {
                state: BatchState::Done,
                processed: 10,
                failed: Vec::new(),
                error: None,
                duplicates: 0,
            };
            store.commit_batch(&c, &outcome, 0).await.unwrap();
        }
        let fin = Finalization {
            status: JobStatus::Aborted,
            reason: Some("stop".into()),
            report_owed: false,
            now_ms: 1,
        };
        assert!(store
            .finalize(&job.id, &fin, FinalizeWhen::Now)
            .await
            .unwrap());
        store.get_job(&job.id).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn an_aborted_job_dumps_what_was_processed_and_says_what_was_not() {
        let definition = Definition::from_json(DEFINITION, "test").unwrap();
        for prepared in [true, false] {
            let store = MemoryStore::new();
            let job = aborted(&store, 5, 2, prepared).await;
            let mut out = Vec::new();
            let dumped = dump_ndjson(&store, &definition, &job, &mut out)
                .await
                .unwrap();
            assert_eq!(
                dumped,
                Dumped {
                    written: 20,
                    unprocessed_batches: 3,
                    unprocessed_records: 30,
                    file_read: prepared,
                },
                "prepared: {prepared}"
            );
            let lines = String::from_utf8(out).unwrap();
            assert_eq!(lines.lines().count(), 20);
            assert!(lines
                .lines()
                .all(|l| l.contains("u0-") || l.contains("u1-")));
            let said = dumped.to_string();
            assert!(
                said.contains("3 batches (30 records) were never processed"),
                "{said}"
            );
            assert_eq!(said.contains("not read to its end"), !prepared, "{said}");
        }
    }

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
