//! CSV rows to staged records: csv-async does the RFC 4180 parsing, the
//! [`Meter`] underneath supplies line numbers, row start offsets and the
//! row-size guard.

use super::meter::Meter;
use super::{BoxRead, Ctx, Position, SourceError};
use crate::job::{FieldIssue, StagedRecord, Values};
use crate::schema::{ColumnMap, Definition};
use csv_async::{AsyncReader, AsyncReaderBuilder, ByteRecord};

/// The parser's read buffer; also the slack the row-size guard allows for.
const BUFFER_BYTES: usize = 64 * 1024;

pub(super) struct CsvSource {
    rdr: AsyncReader<Meter<BoxRead>>,
    record: ByteRecord,
    delimiter: u8,
    quote: u8,
    max_row_bytes: usize,
    map: ColumnMap,
    /// Name reported for each mapped column's problems (its field's name).
    field_names: Vec<String>,
    header: Option<Vec<String>>,
    /// Content offset where the header row ends, once read.
    header_end: Option<u64>,
    /// Where the last record returned starts.
    last: Option<Position>,
}

fn reader(
    stream: BoxRead,
    at: Position,
    delimiter: u8,
    quote: u8,
    max_row_bytes: usize,
) -> AsyncReader<Meter<BoxRead>> {
    let meter = Meter::new(stream, max_row_bytes, BUFFER_BYTES, at);
    // Headers are read as an ordinary first record so that they go
    // through the same line and size accounting as data rows.
    AsyncReaderBuilder::new()
        .delimiter(delimiter)
        .quote(quote)
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(BUFFER_BYTES)
        .create_reader(meter)
}

impl CsvSource {
    /// Rows from `at` on (the parser starts as at the beginning of a row),
    /// mapped onto the fields in column order until `read_header` says
    /// otherwise.
    pub fn new(stream: BoxRead, at: Position, delimiter: u8, quote: u8, def: &Definition) -> Self {
        let max_row_bytes = def.limits.max_row_bytes;
        CsvSource {
            rdr: reader(stream, at, delimiter, quote, max_row_bytes),
            record: ByteRecord::new(),
            delimiter,
            quote,
            max_row_bytes,
            map: def.column_map_without_header(),
            field_names: def.fields.iter().map(|f| f.name.clone()).collect(),
            header: None,
            header_end: None,
            last: None,
        }
    }

    /// Reads the next row as the header and maps the columns by it.
    pub async fn read_header(&mut self, def: &Definition, ctx: &Ctx) -> Result<(), SourceError> {
        let Some(start) = self.read_row(ctx).await? else {
            return Err(SourceError::Empty {
                name: ctx.name.clone(),
            });
        };
        let end = self.rdr.position().byte();
        self.header_end = Some(self.rdr.get_ref().content_offset(end));
        let mut names: Vec<String> = self
            .record
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        // "a,b," is a header with a trailing delimiter, not a column named "".
        if names.len() > 1 && names.last().is_some_and(|n| n.is_empty()) {
            names.pop();
        }
        self.map = def
            .resolve_header(&names)
            .map_err(|source| SourceError::Header {
                name: ctx.name.clone(),
                line: start.line,
                source,
            })?;
        self.header = Some(names);
        Ok(())
    }

    /// The same dialect and mapping over another stream, from `at` on: the
    /// rest of a file whose header was read separately.
    pub fn continue_at(self, stream: BoxRead, at: Position) -> Self {
        CsvSource {
            rdr: reader(stream, at, self.delimiter, self.quote, self.max_row_bytes),
            record: ByteRecord::new(),
            last: None,
            ..self
        }
    }

    pub fn header(&self) -> Option<&[String]> {
        self.header.as_deref()
    }

    pub fn header_end(&self) -> Option<u64> {
        self.header_end
    }

    pub fn last(&self) -> Option<Position> {
        self.last
    }

    pub async fn next(&mut self, ctx: &Ctx) -> Result<Option<StagedRecord>, SourceError> {
        loop {
            let Some(start) = self.read_row(ctx).await? else {
                return Ok(None);
            };
            if let Some(record) = self.stage(start.line) {
                self.last = Some(start);
                return Ok(Some(record));
            }
        }
    }

    /// Reads one raw row into `self.record`; returns where it starts.
    async fn read_row(&mut self, ctx: &Ctx) -> Result<Option<Position>, SourceError> {
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
        let (start, len) = self.rdr.get_mut().finish_row(end);
        let limits = &ctx.limits;
        if len > limits.max_row_bytes as u64 {
            return Err(SourceError::RowTooLarge {
                name: ctx.name.clone(),
                line: start.line,
                limit: limits.max_row_bytes,
            });
        }
        if self.record.len() > limits.max_fields {
            return Err(SourceError::TooManyFields {
                name: ctx.name.clone(),
                line: start.line,
                found: self.record.len(),
                limit: limits.max_fields,
            });
        }
        Ok(Some(start))
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
        let mut issue = None;
        let values = match self.point_into(record) {
            Some(values) => values,
            None => self.copy_out(record, &mut issue),
        };
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
            issue = Some(Box::new(FieldIssue::new(None, None, message)));
        }
        Some(StagedRecord {
            line,
            values,
            issue,
        })
    }

    /// The common case in one copy: the row's text is valid UTF-8 as a
    /// whole, and each value is a part of it. `None` when some value is
    /// not valid UTF-8 by itself.
    fn point_into(&self, record: &ByteRecord) -> Option<Values> {
        let text = simdutf8::basic::from_utf8(record.as_slice()).ok()?;
        let mut values = Values::over(text.to_owned(), self.map.field_count);
        for (i, column) in self.map.columns.iter().enumerate().take(record.len()) {
            let Some(field) = *column else { continue };
            if field >= values.len() {
                continue;
            }
            let span = record.range(i)?;
            if !values.point(field, span) {
                return None;
            }
        }
        Some(values)
    }

    /// Value by value, each invalid UTF-8 sequence replaced, the first such
    /// value noted in `issue`.
    fn copy_out(&self, record: &ByteRecord, issue: &mut Option<Box<FieldIssue>>) -> Values {
        let mut values = Values::with_capacity(self.map.field_count, record.as_slice().len());
        for (raw, column) in record.iter().zip(&self.map.columns) {
            let Some(field) = *column else { continue };
            if field >= values.len() {
                continue;
            }
            match std::str::from_utf8(raw) {
                Ok(text) => values.set(field, text),
                Err(_) => {
                    let text = String::from_utf8_lossy(raw);
                    if issue.is_none() {
                        let name = self.field_names.get(field).map(String::as_str);
                        *issue = Some(Box::new(FieldIssue::new(
                            name,
                            Some(&text),
                            "invalid UTF-8",
                        )));
                    }
                    values.set(field, &text);
                }
            }
        }
        values
    }
}
