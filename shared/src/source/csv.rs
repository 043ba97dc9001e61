//! CSV rows to staged records: csv-async does the RFC 4180 parsing, the
//! [`Meter`] underneath supplies line numbers and the row-size guard.

use super::meter::Meter;
use super::{BoxRead, Ctx, SourceError};
use crate::job::{FieldIssue, StagedRecord};
use crate::schema::{ColumnMap, Definition};
use csv_async::{AsyncReader, AsyncReaderBuilder, ByteRecord};

/// The parser's read buffer; also the slack the row-size guard allows for.
const BUFFER_BYTES: usize = 64 * 1024;

pub(super) struct CsvSource {
    rdr: AsyncReader<Meter<BoxRead>>,
    record: ByteRecord,
    map: ColumnMap,
    /// Name reported for each mapped column's problems (its field's name).
    field_names: Vec<String>,
    header: Option<Vec<String>>,
}

impl CsvSource {
    pub async fn open(
        stream: BoxRead,
        delimiter: u8,
        def: &Definition,
        ctx: &Ctx,
    ) -> Result<Self, SourceError> {
        let meter = Meter::new(stream, def.limits.max_row_bytes, BUFFER_BYTES);
        // Headers are read as an ordinary first record so that they go
        // through the same line and size accounting as data rows.
        let rdr = AsyncReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(BUFFER_BYTES)
            .create_reader(meter);
        let mut source = CsvSource {
            rdr,
            record: ByteRecord::new(),
            map: ColumnMap {
                columns: Vec::new(),
                field_count: def.fields.len(),
            },
            field_names: def.fields.iter().map(|f| f.name.clone()).collect(),
            header: None,
        };
        if !def.has_header {
            source.map = def.column_map_without_header();
            return Ok(source);
        }
        let Some(line) = source.read_row(ctx).await? else {
            return Err(SourceError::Empty {
                name: ctx.name.clone(),
            });
        };
        let mut names: Vec<String> = source
            .record
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        // "a,b," is a header with a trailing delimiter, not a column named "".
        if names.len() > 1 && names.last().is_some_and(|n| n.is_empty()) {
            names.pop();
        }
        source.map = def
            .resolve_header(&names)
            .map_err(|source| SourceError::Header {
                name: ctx.name.clone(),
                line,
                source,
            })?;
        source.header = Some(names);
        Ok(source)
    }

    pub fn header(&self) -> Option<&[String]> {
        self.header.as_deref()
    }

    pub async fn next(&mut self, ctx: &Ctx) -> Result<Option<StagedRecord>, SourceError> {
        loop {
            let Some(line) = self.read_row(ctx).await? else {
                return Ok(None);
            };
            if let Some(record) = self.stage(line) {
                return Ok(Some(record));
            }
        }
    }

    /// Reads one raw row into `self.record`; returns its start line.
    async fn read_row(&mut self, ctx: &Ctx) -> Result<Option<u64>, SourceError> {
        let more = self
            .rdr
            .read_byte_record(&mut self.record)
            .await
            .map_err(|e| match e.into_kind() {
                csv_async::ErrorKind::Io(err) => ctx.io_error(err),
                other => ctx.io_error(std::io::Error::other(format!("{other:?}"))),
            })?;
        if !more {
            return Ok(None);
        }
        let end = self.rdr.position().byte();
        let (line, len) = self.rdr.get_mut().finish_row(end);
        let limits = &ctx.limits;
        if len > limits.max_row_bytes as u64 {
            return Err(SourceError::RowTooLarge {
                name: ctx.name.clone(),
                line,
                limit: limits.max_row_bytes,
            });
        }
        if self.record.len() > limits.max_fields {
            return Err(SourceError::TooManyFields {
                name: ctx.name.clone(),
                line,
                found: self.record.len(),
                limit: limits.max_fields,
            });
        }
        Ok(Some(line))
    }

    /// Maps the raw row onto the definition's fields; `None` for a line that
    /// holds only spaces, which counts as blank when more than one column is
    /// expected.
    fn stage(&self, line: u64) -> Option<StagedRecord> {
        let expected = self.map.columns.len();
        let record = &self.record;
        if expected > 1 && record.len() == 1 && record[0].iter().all(|b| matches!(b, b' ' | b'\t'))
        {
            return None;
        }
        // One extra, empty, last field is a trailing delimiter.
        let found = if record.len() == expected + 1 && record[expected].is_empty() {
            expected
        } else {
            record.len()
        };
        let mut values = vec![None; self.map.field_count];
        let mut issue = None;
        for (raw, column) in record.iter().zip(&self.map.columns) {
            let Some(field) = *column else { continue };
            let value = match std::str::from_utf8(raw) {
                Ok(text) => text.to_owned(),
                Err(_) => {
                    let text = String::from_utf8_lossy(raw).into_owned();
                    if issue.is_none() {
                        let name = self.field_names.get(field).map(String::as_str);
                        issue = Some(FieldIssue::new(name, Some(&text), "invalid UTF-8"));
                    }
                    text
                }
            };
            if let Some(slot) = values.get_mut(field) {
                *slot = Some(value);
            }
        }
        if found != expected {
            let mut message = format!("expected {expected} fields, found {found}");
            // An unclosed quote swallows the following lines into this
            // record: say so, or those rows would vanish without a word.
            if record
                .iter()
                .any(|f| f.contains(&b'\n') || f.contains(&b'\r'))
            {
                message.push_str(" (a quoted value runs across lines: is a quote left open?)");
            }
            issue = Some(FieldIssue::new(None, None, message));
        }
        Some(StagedRecord {
            line,
            values,
            issue,
        })
    }
}
