//! Reading a file from part-way: the [`Checkpoint`] a reader gives for each
//! record, and a reader that starts at one and produces exactly what an
//! uninterrupted reader would produce from there (same lines, same errors).
//!
//! Offsets are in the content: the bytes after decompression, a BOM
//! included. Uncompressed input is entered at the offset (a ranged read);
//! gzip cannot be entered mid-stream, so it is decompressed from the start
//! and the bytes before the offset are discarded unparsed, in steps the
//! caller controls ([`Resuming::advance`]).

use super::csv::CsvSource;
use super::detect::BOM;
use super::ndjson::NdjsonSource;
use super::{gunzip, BoxRead, Ctx, Inner, Position, RecordReader, SourceError, Upstream};
use crate::schema::{Definition, InputFormat};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Where a record starts and what is needed to parse from there without
/// reading what comes before it. Small: the header is not in it, only
/// where it ends, so that it can be read again with a bounded read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Content offset of the record's first byte.
    #[serde(rename = "o")]
    pub offset: u64,
    /// The record's line.
    #[serde(rename = "l")]
    pub line: u64,
    /// Records before it (the record limit counts them).
    #[serde(rename = "r")]
    pub records: u64,
    #[serde(flatten)]
    pub dialect: Dialect,
}

/// What the first reader detected about the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dialect {
    #[serde(rename = "f")]
    pub format: InputFormat,
    #[serde(rename = "z", default, skip_serializing_if = "std::ops::Not::not")]
    pub gzip: bool,
    /// CSV only, like `quote`.
    #[serde(rename = "d")]
    pub delimiter: u8,
    #[serde(rename = "q")]
    pub quote: u8,
    /// Content offset where a CSV header row ends; `None` without a header.
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    pub header_end: Option<u64>,
}

impl Checkpoint {
    /// The compact JSON stored with the job.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a checkpoint always serializes")
    }

    pub fn decode(text: &str) -> Result<Checkpoint, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Bytes at the start of the content a resumed reader needs besides
    /// those from the offset on: the header row (and what precedes it).
    pub fn head_len(&self) -> u64 {
        match self.dialect.format {
            InputFormat::Csv => self.dialect.header_end.unwrap_or(0),
            InputFormat::Ndjson => 0,
        }
    }
}

type Body = Box<dyn AsyncRead + Send + Unpin>;

/// The bytes a resumed reader is given.
pub enum ResumeInput {
    /// Uncompressed input: its first [`Checkpoint::head_len`] bytes and the
    /// rest from the checkpoint's offset on.
    Ranged { head: Body, rest: Body },
    /// The whole object from its first byte: what compressed input needs.
    Whole(Body),
}

/// A reader on its way to a checkpoint.
pub struct Resuming {
    ctx: Ctx,
    checkpoint: Checkpoint,
    stream: BoxRead,
    /// Content offset of the next byte of `stream`.
    position: u64,
    /// The header, read and resolved (CSV with a header).
    header: Option<Box<CsvSource>>,
    def: Definition,
}

pub enum Advance {
    /// More to discard before the checkpoint.
    Skipping(Box<Resuming>),
    /// At the checkpoint: the next record is the checkpoint's.
    Arrived(RecordReader),
}

impl RecordReader {
    /// Where the last record returned starts, with the dialect needed to
    /// continue from there; `None` before the first record.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        let at = self.last?;
        Some(Checkpoint {
            offset: at.offset,
            line: at.line,
            records: self.records - 1,
            dialect: self.dialect.clone(),
        })
    }

    /// Starts reading `name` at `checkpoint`, which a reader of the same
    /// object and definition gave. A CSV header is read and resolved here,
    /// so that a resumed reader maps columns as the first one did.
    pub async fn resume(
        input: ResumeInput,
        checkpoint: &Checkpoint,
        name: &str,
        def: &Definition,
    ) -> Result<Box<Resuming>, SourceError> {
        let ctx = Ctx {
            name: name.to_owned(),
            gzip: checkpoint.dialect.gzip,
            limits: def.limits.clone(),
        };
        let head_len = checkpoint.head_len();
        let (head, stream, position) = match input {
            ResumeInput::Ranged { head, rest } => {
                let mut head: BoxRead = Box::new(Upstream(head));
                let head = read_prefix(&mut head, head_len, &ctx).await?;
                let rest: BoxRead = Box::new(Upstream(rest));
                (head, rest, checkpoint.offset)
            }
            ResumeInput::Whole(raw) => {
                let raw: BoxRead = Box::new(Upstream(raw));
                let mut stream = if checkpoint.dialect.gzip {
                    gunzip(raw)
                } else {
                    raw
                };
                let head = read_prefix(&mut stream, head_len, &ctx).await?;
                let position = head.len() as u64;
                (head, stream, position)
            }
        };
        if (head.len() as u64) < head_len {
            return Err(ends_before(&ctx, head_len));
        }
        let header = match head_len {
            0 => None,
            _ => Some(Box::new(read_header(head, checkpoint, def, &ctx).await?)),
        };
        Ok(Box::new(Resuming {
            ctx,
            checkpoint: checkpoint.clone(),
            stream,
            position,
            header,
            def: def.clone(),
        }))
    }
}

impl Resuming {
    /// Discards up to `max` bytes before the checkpoint (decompressing, not
    /// parsing them), so that the caller can keep its lease and watch its
    /// deadline between steps.
    pub async fn advance(mut self: Box<Self>, max: u64) -> Result<Advance, SourceError> {
        let want = self
            .checkpoint
            .offset
            .saturating_sub(self.position)
            .min(max);
        if want > 0 {
            let mut part = (&mut self.stream).take(want);
            let skipped = tokio::io::copy(&mut part, &mut tokio::io::sink())
                .await
                .map_err(|e| self.ctx.io_error(e))?;
            self.position += skipped;
            if skipped < want {
                return Err(ends_before(&self.ctx, self.checkpoint.offset));
            }
        }
        if self.position < self.checkpoint.offset {
            return Ok(Advance::Skipping(self));
        }
        Ok(Advance::Arrived((*self).into_reader()))
    }

    /// Content bytes still to discard.
    pub fn remaining(&self) -> u64 {
        self.checkpoint.offset.saturating_sub(self.position)
    }

    fn into_reader(self) -> RecordReader {
        let cp = self.checkpoint;
        let at = Position {
            offset: cp.offset,
            line: cp.line,
        };
        let dialect = &cp.dialect;
        let inner = match dialect.format {
            InputFormat::Csv => Inner::Csv(Box::new(match self.header {
                Some(header) => header.continue_at(self.stream, at),
                None => {
                    CsvSource::new(self.stream, at, dialect.delimiter, dialect.quote, &self.def)
                }
            })),
            InputFormat::Ndjson => {
                Inner::Ndjson(Box::new(NdjsonSource::new(self.stream, &self.def, at)))
            }
        };
        RecordReader {
            ctx: self.ctx,
            format: dialect.format,
            inner,
            records: cp.records,
            done: false,
            dialect: cp.dialect,
            last: None,
        }
    }
}

/// Up to `len` bytes from the start of `stream`.
async fn read_prefix(stream: &mut BoxRead, len: u64, ctx: &Ctx) -> Result<Vec<u8>, SourceError> {
    let mut bytes = Vec::new();
    stream
        .take(len)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| ctx.io_error(e))?;
    Ok(bytes)
}

/// Reads the header row from the content's first bytes as the first reader
/// did: past a BOM, from line 1, with the stored dialect.
async fn read_header(
    mut head: Vec<u8>,
    checkpoint: &Checkpoint,
    def: &Definition,
    ctx: &Ctx,
) -> Result<CsvSource, SourceError> {
    let mut at = Position { offset: 0, line: 1 };
    if head.starts_with(BOM) {
        head.drain(..BOM.len());
        at.offset = BOM.len() as u64;
    }
    let dialect = &checkpoint.dialect;
    let stream: BoxRead = Box::new(Cursor::new(head));
    let mut source = CsvSource::new(stream, at, dialect.delimiter, dialect.quote, def);
    source.read_header(def, ctx).await?;
    Ok(source)
}

fn ends_before(ctx: &Ctx, offset: u64) -> SourceError {
    SourceError::EndsBeforeCheckpoint {
        name: ctx.name.clone(),
        offset,
    }
}
