//! The CSV format: rows to staged records, csv-async doing the RFC 4180
//! parsing and the [`Meter`] underneath supplying line numbers, row start
//! offsets and the row-size guard; the delimiter is sniffed when the
//! definition does not give one.

use super::format::{Content, Detection, Format, Records, Sample};
use super::meter::Meter;
use super::{BoxRead, Ctx, Position, SourceError};
use crate::job::{FieldIssue, StagedRecord, Values};
use crate::schema::{ColumnMap, Definition, InputFormat};
use csv_async::{AsyncReader, AsyncReaderBuilder, ByteRecord};
use serde::{Deserialize, Serialize};

/// The parser's read buffer; also the slack the row-size guard allows for.
const BUFFER_BYTES: usize = 64 * 1024;

/// Quoting is RFC 4180's; it is not detected.
const QUOTE: u8 = b'"';

/// Delimiters recognised by auto-detection, in order of preference on a tie.
const CANDIDATES: [u8; 4] = [b',', b';', b'\t', b'|'];

/// Records looked at when detecting the delimiter.
const SAMPLE_RECORDS: usize = 20;

impl InputFormat {
    /// `"csv"`: delimited text, RFC 4180 quoting.
    pub const CSV: InputFormat = InputFormat::registered(Csv::NAME);
}

pub(super) struct Csv;

/// The dialect a reader found, and where the header row ends (`None`
/// without a header): content offsets, like a checkpoint's. The keys are
/// those checkpoints have always had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct State {
    #[serde(rename = "d")]
    pub delimiter: u8,
    #[serde(rename = "q")]
    pub quote: u8,
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    pub header_end: Option<u64>,
}

impl Format for Csv {
    const NAME: &'static str = "csv";
    type State = State;
    type Records = CsvSource;

    /// By extension only: CSV is what input no format recognises is read as.
    fn detect(&self, sample: &Sample<'_>) -> Detection {
        if sample.has_extension(&[".csv", ".tsv", ".txt"]) {
            Detection::ByName
        } else {
            Detection::No
        }
    }

    /// Reads and resolves the header, when the definition says there is one.
    async fn open(
        &self,
        text: Content,
        sample: &Sample<'_>,
        def: &Definition,
        ctx: &Ctx,
    ) -> Result<(CsvSource, State), SourceError> {
        let delimiter = def
            .delimiter
            .unwrap_or_else(|| sniff_delimiter(sample.text, sample.complete));
        let mut source = CsvSource::new(text.read, text.at, delimiter, QUOTE, def);
        if def.has_header {
            source.read_header(def, ctx).await?;
        }
        let state = State {
            delimiter,
            quote: QUOTE,
            header_end: source.header_end,
        };
        Ok((source, state))
    }

    fn head_len(&self, state: &State) -> u64 {
        state.header_end.unwrap_or(0)
    }

    /// Reads the header again from the head, as the first reader did, so
    /// that the columns map as they did for it.
    async fn resume(
        &self,
        head: Content,
        rest: Content,
        state: State,
        def: &Definition,
        ctx: &Ctx,
    ) -> Result<CsvSource, SourceError> {
        let State {
            delimiter, quote, ..
        } = state;
        if self.head_len(&state) == 0 {
            return Ok(CsvSource::new(rest.read, rest.at, delimiter, quote, def));
        }
        let mut source = CsvSource::new(head.read, head.at, delimiter, quote, def);
        source.read_header(def, ctx).await?;
        Ok(source.continue_at(rest.read, rest.at))
    }
}

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

impl Records for CsvSource {
    async fn next(&mut self, ctx: &Ctx) -> Result<Option<(StagedRecord, Position)>, SourceError> {
        loop {
            let Some(start) = self.read_row(ctx).await? else {
                return Ok(None);
            };
            if let Some(record) = self.stage(start.line) {
                return Ok(Some((record, start)));
            }
        }
    }

    fn header(&self) -> Option<&[String]> {
        self.header.as_deref()
    }
}

impl CsvSource {
    /// Rows from `at` on (the parser starts as at the beginning of a row),
    /// mapped onto the fields in column order until `read_header` says
    /// otherwise.
    fn new(stream: BoxRead, at: Position, delimiter: u8, quote: u8, def: &Definition) -> Self {
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
        }
    }

    /// Reads the next row as the header and maps the columns by it.
    async fn read_header(&mut self, def: &Definition, ctx: &Ctx) -> Result<(), SourceError> {
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
    fn continue_at(self, stream: BoxRead, at: Position) -> Self {
        CsvSource {
            rdr: reader(stream, at, self.delimiter, self.quote, self.max_row_bytes),
            record: ByteRecord::new(),
            ..self
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

/// Picks the candidate whose count (outside quotes) agrees across the most
/// sampled records, then the most frequent in the first record. `complete`
/// says the sample is the whole file, so its last record is not cut short.
fn sniff_delimiter(text: &[u8], complete: bool) -> u8 {
    let mut records: Vec<[usize; 4]> = Vec::new();
    let mut counts = [0; 4];
    let mut seen_content = false;
    let mut in_quotes = false;
    for &b in text {
        if b == b'"' {
            in_quotes = !in_quotes;
            seen_content = true;
        } else if in_quotes {
        } else if b == b'\n' || b == b'\r' {
            if seen_content {
                records.push(std::mem::take(&mut counts));
                seen_content = false;
                if records.len() == SAMPLE_RECORDS {
                    break;
                }
            }
        } else {
            seen_content = true;
            if let Some(i) = CANDIDATES.iter().position(|&c| c == b) {
                counts[i] += 1;
            }
        }
    }
    if seen_content && (complete || records.is_empty()) {
        records.push(counts);
    }
    let Some(first) = records.first() else {
        return CANDIDATES[0];
    };
    (0..CANDIDATES.len())
        .filter(|&i| first[i] > 0)
        .max_by_key(|&i| {
            let agreeing = records.iter().filter(|r| r[i] == first[i]).count();
            (agreeing, first[i], std::cmp::Reverse(i))
        })
        .map_or(CANDIDATES[0], |i| CANDIDATES[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delimiter_counts_outside_quotes_and_prefers_consistency() {
        assert_eq!(sniff_delimiter(b"a;b;c\n1;2;3\n", true), b';');
        assert_eq!(sniff_delimiter(b"a\tb\n\"x,y,z\"\t2\n", true), b'\t');
        assert_eq!(sniff_delimiter(b"a|b\n1|2", true), b'|');
        assert_eq!(
            sniff_delimiter(b"name;price\nfoo;1,5\nbar;2,50\n", true),
            b';'
        );
        // Commas are more frequent in the header but only semicolons agree.
        assert_eq!(sniff_delimiter(b"a,b,c;d\n1;2\n3;4\n", true), b';');
        assert_eq!(sniff_delimiter(b"single\n1\n", true), b',');
        assert_eq!(sniff_delimiter(b"", true), b',');
        // A cut-off last record does not count against a candidate.
        assert_eq!(sniff_delimiter(b"a;b;c\n1;2;3\n4;5", false), b';');
    }
}
