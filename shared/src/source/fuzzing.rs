//! The fuzz harness, in the library so that the cargo-fuzz target and the
//! corpus replay test run the same code.
//!
//! The first input byte picks the options, the rest is the file:
//!
//! | bits | option                                                          |
//! |------|-----------------------------------------------------------------|
//! | 0–1  | format: declared CSV, declared NDJSON, by name, by content       |
//! | 2–4  | delimiter: auto, `,` `;` tab `|`, auto (5–7)                     |
//! | 5    | no header row (columns in field order)                           |
//! | 6    | gzip-compress the file before reading it                         |
//! | 7    | tight limits, so that the limit paths are reached by small files |
//!
//! Besides "no panic", the harness checks what must hold for any input: line
//! numbers increase, each record has one value slot per field, a record that
//! validates keeps its line, and reading the same bytes cut into other pieces
//! gives the same records and the same error.

use super::{OpenOptions, RecordReader, SourceError};
use crate::job::StagedRecord;
use crate::schema::{Definition, InputFormat};
use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// Every field type, with the options that change how a value is checked:
/// trimming, a pattern, defaults, small and large enums, aliases.
const DEFINITION: &str = r#"{
  "fields": [
    {"name": "id", "type": "integer", "required": true, "aliases": ["ID", "key"]},
    {"name": "name", "type": "string", "trim": true, "pattern": "^[^0-9]"},
    {"name": "price", "type": "number", "default": 0},
    {"name": "active", "type": "boolean", "default": "yes"},
    {"name": "born", "type": "date"},
    {"name": "seen", "type": "datetime"},
    {"name": "email", "type": "email", "aliases": ["mail"]},
    {"name": "plan", "type": "enum", "values": ["free", "pro", "team"]},
    {"name": "country", "type": "enum",
     "values": ["DE", "FR", "GB", "IT", "NL", "PL", "PT", "SE", "US"]},
    {"name": "note", "type": "string"}
  ],
  "keyField": "id"
}"#;

/// Runs one fuzz input; panics on a bug.
pub fn parse_and_validate(data: &[u8]) {
    let Some((&options, file)) = data.split_first() else {
        return;
    };
    let case = Case::new(options, file);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime builds");
    let whole = runtime.block_on(read(&case, Pieces::whole(case.bytes.clone())));
    check(&case.definition, &whole);
    let cut = runtime.block_on(read(&case, Pieces::cut(case.bytes.clone(), file)));
    assert_eq!(
        whole, cut,
        "the outcome depends on how the input is cut into reads"
    );
}

struct Case {
    definition: Definition,
    name: &'static str,
    bytes: Vec<u8>,
}

impl Case {
    fn new(options: u8, file: &[u8]) -> Case {
        let mut definition = Definition::from_json(DEFINITION, "fuzz").expect("valid definition");
        let name = match options & 0b11 {
            0 => {
                definition.format = Some(InputFormat::CSV);
                "upload"
            }
            1 => {
                definition.format = Some(InputFormat::NDJSON);
                "upload"
            }
            2 => "upload.ndjson",
            _ => "upload",
        };
        definition.delimiter = match (options >> 2) & 0b111 {
            1 => Some(b','),
            2 => Some(b';'),
            3 => Some(b'\t'),
            4 => Some(b'|'),
            _ => None,
        };
        definition.has_header = options & 0x20 == 0;
        if options & 0x80 != 0 {
            definition.limits.max_row_bytes = 64;
            definition.limits.max_fields = definition.fields.len() + 2;
            definition.limits.max_records = 5;
        }
        let bytes = if options & 0x40 != 0 {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(file).expect("writing to a Vec");
            enc.finish().expect("writing to a Vec")
        } else {
            file.to_vec()
        };
        Case {
            definition,
            name,
            bytes,
        }
    }
}

/// What reading produced, comparable across runs.
#[derive(Debug, PartialEq)]
struct Outcome {
    records: Vec<StagedRecord>,
    /// The error that ended the read (its message: errors are not `PartialEq`).
    error: Option<String>,
}

async fn read(case: &Case, input: Pieces) -> Outcome {
    let opts = OpenOptions::new(case.name);
    let mut reader = match RecordReader::open(input, opts, &case.definition).await {
        Ok(reader) => reader,
        Err(e) => return failed(Vec::new(), e),
    };
    let mut records = Vec::new();
    loop {
        match reader.next_record().await {
            Ok(Some(record)) => records.push(record),
            Ok(None) => break,
            Err(e) => return failed(records, e),
        }
    }
    assert_eq!(reader.records_read(), records.len() as u64);
    assert_eq!(
        reader.next_record().await.ok(),
        Some(None),
        "a finished reader stays finished"
    );
    Outcome {
        records,
        error: None,
    }
}

fn failed(records: Vec<StagedRecord>, error: SourceError) -> Outcome {
    assert!(
        !error.is_transient(),
        "an in-memory read cannot fail transiently: {error}"
    );
    Outcome {
        records,
        error: Some(error.to_string()),
    }
}

fn check(definition: &Definition, outcome: &Outcome) {
    let mut last_line = 0;
    for record in &outcome.records {
        assert!(
            record.line > last_line,
            "line numbers increase: {} after {last_line}",
            record.line
        );
        last_line = record.line;
        assert_eq!(record.values.len(), definition.fields.len());
        match definition.validate(record) {
            Ok(valid) => {
                assert_eq!(valid.line, record.line);
                assert!(valid.len() <= definition.fields.len());
            }
            Err(issues) => assert!(!issues.is_empty(), "a failed record says why"),
        }
    }
    if let Some(error) = &outcome.error {
        assert!(error.starts_with("upload"), "errors name the file: {error}");
    }
}

/// The input handed out in pieces: all at once, or cut at sizes derived from
/// the input itself (1 to 16 bytes), returning `Pending` before every piece
/// so that each layer of the reader is resumed mid-way.
struct Pieces {
    bytes: Vec<u8>,
    at: usize,
    sizes: Vec<usize>,
    next: usize,
    ready: bool,
}

impl Pieces {
    fn whole(bytes: Vec<u8>) -> Pieces {
        Pieces {
            sizes: vec![bytes.len().max(1)],
            bytes,
            at: 0,
            next: 0,
            ready: true,
        }
    }

    fn cut(bytes: Vec<u8>, seed: &[u8]) -> Pieces {
        let mut sizes: Vec<usize> = seed
            .iter()
            .take(64)
            .map(|b| usize::from(b % 16) + 1)
            .collect();
        if sizes.is_empty() {
            sizes.push(1);
        }
        Pieces {
            bytes,
            at: 0,
            sizes,
            next: 0,
            ready: false,
        }
    }
}

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.sizes.len() > 1 && !std::mem::replace(&mut this.ready, false) {
            this.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let size = this.sizes[this.next % this.sizes.len()];
        this.next += 1;
        let end = this.bytes.len().min(this.at + size.min(buf.remaining()));
        buf.put_slice(&this.bytes[this.at..end]);
        this.at = end;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_combination_runs_on_a_small_file() {
        let file = b"id,name,price,email\n1,Ada,2.5,ada@x.org\n2,,x,\"a\nb\"\n";
        for options in 0..=255u8 {
            let mut data = vec![options];
            data.extend_from_slice(file);
            parse_and_validate(&data);
        }
        parse_and_validate(b"");
        parse_and_validate(b"\x00");
    }
}
