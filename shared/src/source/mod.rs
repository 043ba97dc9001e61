//! Reading an import's input file: the object's bytes, in whatever pieces they
//! arrive, are decompressed and sniffed (compression, text), then parsed by
//! their format (`format`: one file per format, such as `csv`) and mapped
//! onto the definition's fields as [`StagedRecord`]s. A reader can also
//! start part-way, at a [`Checkpoint`] (`resume`).

mod chunks;
mod csv;
mod detect;
mod format;
#[doc(hidden)]
pub mod fuzzing;
mod meter;
mod ndjson;
mod resume;
#[cfg(test)]
mod tests;

pub use self::format::{format_named, format_names};
pub use self::resume::{Advance, Checkpoint, PartitionMark, ResumeInput, Resuming};

use self::chunks::FixedChunks;
use self::detect::{Compression, BOM, SNIFF_BYTES};
use self::format::{AnyRecords, Content, FormatState, Sample};
use self::meter::RowOverflow;
use crate::job::StagedRecord;
use crate::schema::{Definition, HeaderError, InputFormat, Limits};
use async_compression::tokio::bufread::GzipDecoder;
use std::fmt;
use std::io::{self, Cursor};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

type BoxRead = Box<dyn AsyncRead + Unpin + Send>;

/// Compressed bytes handed to the gzip decoder at once.
const GZIP_INPUT_BYTES: usize = 64 * 1024;

/// Where a row starts: its offset in the content (the decompressed bytes,
/// a BOM included) and its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    offset: u64,
    line: u64,
}

impl Position {
    #[cfg(test)]
    const START: Position = Position { offset: 0, line: 1 };
}

/// What the reader is told about the input besides its bytes.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions<'a> {
    /// Object key or file path: drives format and compression detection by
    /// extension, and names the file in errors.
    pub name: &'a str,
    /// The object's `Content-Encoding`, if any.
    pub content_encoding: Option<&'a str>,
}

impl<'a> OpenOptions<'a> {
    pub fn new(name: &'a str) -> Self {
        OpenOptions {
            name,
            content_encoding: None,
        }
    }
}

/// Problems that stop the whole file. Problems of a single row travel in
/// [`StagedRecord::issue`] instead. Each message names the file and, where
/// there is one, the line, and includes the message of its source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{name}: reading failed: {source}")]
    Io {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{name}: the gzip data is corrupt or truncated: {source}")]
    Decompress {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{name}: {compression} compression is not supported; \
         upload the file uncompressed or gzip-compressed"
    )]
    UnsupportedCompression {
        name: String,
        compression: &'static str,
    },
    #[error("{name}: the file is empty")]
    Empty { name: String },
    #[error("{name}: not a text file: {reason}")]
    NotText { name: String, reason: &'static str },
    #[error("{name}: line {line}: bad header: {source}")]
    Header {
        name: String,
        line: u64,
        #[source]
        source: HeaderError,
    },
    #[error("{name}: line {line}: the row is longer than the limit of {limit} bytes")]
    RowTooLarge {
        name: String,
        line: u64,
        limit: usize,
    },
    #[error("{name}: line {line}: the row has {found} fields, more than the limit of {limit}")]
    TooManyFields {
        name: String,
        line: u64,
        found: usize,
        limit: usize,
    },
    #[error("{name}: line {line}: the file has more than the limit of {limit} records")]
    TooManyRecords { name: String, line: u64, limit: u64 },
    #[error("{name}: the file ends before byte {offset}, where reading was to resume")]
    EndsBeforeCheckpoint { name: String, offset: u64 },
}

impl SourceError {
    /// Whether trying again may succeed: only a failed read is; every other
    /// error is about the file's content.
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Io { .. })
    }

    /// The line the error is about, when it is about one.
    pub fn line(&self) -> Option<u64> {
        match self {
            SourceError::Header { line, .. }
            | SourceError::RowTooLarge { line, .. }
            | SourceError::TooManyFields { line, .. }
            | SourceError::TooManyRecords { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// Streams the records of one input file.
pub struct RecordReader {
    ctx: Ctx,
    format: InputFormat,
    /// The format's part of every checkpoint.
    state: FormatState,
    source: AnyRecords,
    records: u64,
    done: bool,
    /// Where the last record returned starts.
    last: Option<Position>,
}

impl RecordReader {
    /// Sniffs the input and opens it in its format, which reads what it
    /// must up front (a CSV header, read and resolved), so file-level
    /// problems surface here. A file with a header and no rows opens fine
    /// and yields no records.
    pub async fn open(
        reader: impl AsyncRead + Unpin + Send + 'static,
        opts: OpenOptions<'_>,
        def: &Definition,
    ) -> Result<RecordReader, SourceError> {
        let mut ctx = Ctx {
            name: opts.name.to_owned(),
            gzip: false,
            limits: def.limits.clone(),
        };
        let mut raw: BoxRead = Box::new(Upstream(reader));
        let (head, _) = sniff(&mut raw).await.map_err(|e| ctx.io_error(e))?;
        if head.is_empty() {
            return Err(SourceError::Empty { name: ctx.name });
        }
        let compression = detect::compression(opts.name, opts.content_encoding, &head);
        let raw: BoxRead = Box::new(Cursor::new(head).chain(raw));
        let mut stream: BoxRead = match compression {
            Compression::None => raw,
            Compression::Gzip => {
                ctx.gzip = true;
                gunzip(raw)
            }
            Compression::Unsupported(compression) => {
                return Err(SourceError::UnsupportedCompression {
                    name: ctx.name,
                    compression,
                });
            }
        };

        let (mut text, complete) = sniff(&mut stream).await.map_err(|e| ctx.io_error(e))?;
        let mut at = Position { offset: 0, line: 1 };
        if text.starts_with(BOM) {
            text.drain(..BOM.len());
            at.offset = BOM.len() as u64;
        }
        if complete && text.iter().all(u8::is_ascii_whitespace) {
            return Err(SourceError::Empty { name: ctx.name });
        }
        if let Some(reason) = detect::not_text_reason(&text) {
            return Err(SourceError::NotText {
                name: ctx.name,
                reason,
            });
        }
        let name = opts.name.to_ascii_lowercase();
        let sample = Sample {
            name: name.strip_suffix(".gz").unwrap_or(&name),
            text: &text,
            complete,
        };
        let format = format::choose(def.format, &sample);
        let content = Content {
            read: Box::new(Cursor::new(text.clone()).chain(stream)),
            at,
        };
        let (source, state) = format.open(content, &sample, def, &ctx).await?;
        Ok(RecordReader {
            ctx,
            format: InputFormat::registered(format.name()),
            state,
            source,
            records: 0,
            done: false,
            last: None,
        })
    }

    /// The next record, `None` at the end. After an error the reader is
    /// finished and returns `None`.
    pub async fn next_record(&mut self) -> Result<Option<StagedRecord>, SourceError> {
        if self.done {
            return Ok(None);
        }
        let (record, at) = match self.source.next().await {
            Ok(Some(next)) => next,
            Ok(None) => {
                self.done = true;
                return Ok(None);
            }
            Err(e) => {
                self.done = true;
                return Err(e);
            }
        };
        if self.records >= self.ctx.limits.max_records {
            self.done = true;
            return Err(SourceError::TooManyRecords {
                name: self.ctx.name.clone(),
                line: record.line,
                limit: self.ctx.limits.max_records,
            });
        }
        self.records += 1;
        self.last = Some(at);
        Ok(Some(record))
    }

    /// Records returned so far.
    pub fn records_read(&self) -> u64 {
        self.records
    }

    pub fn format(&self) -> InputFormat {
        self.format
    }

    /// The header as read, for a format that has one (CSV's, a trailing
    /// empty column from a trailing delimiter dropped); `None` without one.
    pub fn header(&self) -> Option<&[String]> {
        self.source.header()
    }
}

/// What the format readers need to report errors.
#[derive(Clone)]
struct Ctx {
    name: String,
    gzip: bool,
    limits: Limits,
}

impl Ctx {
    /// Sorts an I/O error from anywhere in the reader stack: the caller's
    /// reader, the gzip decoder or the row-size guard.
    fn io_error(&self, err: io::Error) -> SourceError {
        let name = self.name.clone();
        if let Some(overflow) = err.get_ref().and_then(|e| e.downcast_ref::<RowOverflow>()) {
            let (line, limit) = (overflow.line, self.limits.max_row_bytes);
            return SourceError::RowTooLarge { name, line, limit };
        }
        match unwrap_upstream(err) {
            Ok(source) => SourceError::Io { name, source },
            Err(source) if self.gzip => SourceError::Decompress { name, source },
            Err(source) => SourceError::Io { name, source },
        }
    }
}

/// The gzip decoder over compressed bytes (every member, in fixed pieces).
fn gunzip(raw: BoxRead) -> BoxRead {
    let mut decoder = GzipDecoder::new(FixedChunks::new(raw, GZIP_INPUT_BYTES));
    decoder.multiple_members(true);
    Box::new(decoder)
}

/// Reads the first [`SNIFF_BYTES`] (fewer at the end of the input); true
/// when the end of the input was reached.
async fn sniff(reader: &mut BoxRead) -> io::Result<(Vec<u8>, bool)> {
    let mut buf = vec![0; SNIFF_BYTES];
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]).await? {
            0 => {
                buf.truncate(filled);
                return Ok((buf, true));
            }
            n => filled += n,
        }
    }
    Ok((buf, false))
}

/// Tags errors of the caller's reader so that they stay distinguishable from
/// the gzip decoder's own after passing through it.
struct Upstream<R>(R);

#[derive(Debug)]
struct UpstreamError(io::Error);

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for UpstreamError {}

impl<R: AsyncRead + Unpin> AsyncRead for Upstream<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0)
            .poll_read(cx, buf)
            .map_err(|e| io::Error::new(e.kind(), UpstreamError(e)))
    }
}

/// The caller's original error, or `err` back when it did not come from there.
fn unwrap_upstream(err: io::Error) -> Result<io::Error, io::Error> {
    if !err.get_ref().is_some_and(|e| e.is::<UpstreamError>()) {
        return Err(err);
    }
    let kind = err.kind();
    match err.into_inner().map(|e| e.downcast::<UpstreamError>()) {
        Some(Ok(upstream)) => Ok(upstream.0),
        Some(Err(other)) => Err(io::Error::new(kind, other)),
        None => Err(kind.into()),
    }
}
