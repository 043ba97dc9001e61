//! Reading a file from part-way: the [`Checkpoint`] a reader gives for each
//! record, and a reader that starts at one and produces exactly what an
//! uninterrupted reader would produce from there (same lines, same errors).
//!
//! Offsets are in the content: the bytes after decompression, a BOM
//! included. Uncompressed input is entered at the offset (a ranged read);
//! gzip cannot be entered mid-stream, so it is decompressed from the start
//! and the bytes before the offset are discarded unparsed, in steps the
//! caller controls ([`Resuming::advance`]).

use super::detect::BOM;
use super::format::{self, Content, FormatState};
use super::{gunzip, BoxRead, Ctx, Position, RecordReader, SourceError, Upstream};
use crate::schema::{Definition, InputFormat};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Where a record starts and what is needed to parse from there without
/// reading what comes before it: the same for every format, plus the
/// format's own state (CSV: its dialect and where its header ends). Small:
/// a header is not in it, only where it ends, so that it can be read again
/// with a bounded read.
///
/// Stored with the job as compact JSON, e.g.
/// `{"o":120,"l":5,"r":3,"f":"csv","d":44,"q":34,"h":20}`: the format's
/// keys sit beside the common ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Unchecked")]
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
    #[serde(rename = "f")]
    pub format: InputFormat,
    /// Whether the object is gzip-compressed: it is then read from its
    /// start, the content before the offset decompressed and discarded.
    #[serde(rename = "z", default, skip_serializing_if = "std::ops::Not::not")]
    pub gzip: bool,
    /// Where a prepare cutting key partitions stands at this point;
    /// absent otherwise.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<PartitionMark>,
    /// The format's own keys, checked by the format when read.
    #[serde(flatten)]
    pub(super) state: FormatState,
}

/// A partitioned prepare's place: the batches cut before a checkpoint
/// depend on rows before it in every partition, so a resumed prepare needs
/// the index of the first batch cut from the checkpoint on and, for each
/// partition, the last batch cut before it (what its next batch is
/// chained after).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMark {
    #[serde(rename = "b")]
    pub batch: u64,
    #[serde(rename = "t")]
    pub tails: Vec<Option<u64>>,
}

/// A checkpoint as read, before its format checked its state.
#[derive(Deserialize)]
struct Unchecked {
    #[serde(rename = "o")]
    offset: u64,
    #[serde(rename = "l")]
    line: u64,
    #[serde(rename = "r")]
    records: u64,
    #[serde(rename = "f")]
    format: InputFormat,
    #[serde(rename = "z", default)]
    gzip: bool,
    #[serde(rename = "p", default)]
    partitions: Option<PartitionMark>,
    #[serde(flatten)]
    state: FormatState,
}

impl TryFrom<Unchecked> for Checkpoint {
    type Error = serde_json::Error;

    fn try_from(c: Unchecked) -> Result<Checkpoint, serde_json::Error> {
        format::of(c.format).check(&c.state)?;
        Ok(Checkpoint {
            offset: c.offset,
            line: c.line,
            records: c.records,
            format: c.format,
            gzip: c.gzip,
            partitions: c.partitions,
            state: c.state,
        })
    }
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
    /// those from the offset on (CSV: the header row and what precedes it).
    pub fn head_len(&self) -> u64 {
        format::of(self.format).head_len(&self.state)
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
    /// The content's first [`Checkpoint::head_len`] bytes.
    head: Vec<u8>,
    stream: BoxRead,
    /// Content offset of the next byte of `stream`.
    position: u64,
    def: Definition,
}

pub enum Advance {
    /// More to discard before the checkpoint.
    Skipping(Box<Resuming>),
    /// At the checkpoint: the next record is the checkpoint's.
    Arrived(RecordReader),
}

impl RecordReader {
    /// Where the last record returned starts, with what the format needs to
    /// continue from there; `None` before the first record.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        let at = self.last?;
        Some(Checkpoint {
            offset: at.offset,
            line: at.line,
            records: self.records - 1,
            format: self.format,
            gzip: self.ctx.gzip,
            partitions: None,
            state: self.state.clone(),
        })
    }

    /// Starts reading `name` at `checkpoint`, which a reader of the same
    /// object and definition gave. The bytes the format needs from the
    /// start of the content (a CSV header, which it reads and resolves
    /// again so that columns map as they did) are read here; the format
    /// takes over at the checkpoint.
    pub async fn resume(
        input: ResumeInput,
        checkpoint: &Checkpoint,
        name: &str,
        def: &Definition,
    ) -> Result<Box<Resuming>, SourceError> {
        let ctx = Ctx {
            name: name.to_owned(),
            gzip: checkpoint.gzip,
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
                let mut stream = if checkpoint.gzip { gunzip(raw) } else { raw };
                let head = read_prefix(&mut stream, head_len, &ctx).await?;
                let position = head.len() as u64;
                (head, stream, position)
            }
        };
        if (head.len() as u64) < head_len {
            return Err(ends_before(&ctx, head_len));
        }
        Ok(Box::new(Resuming {
            ctx,
            checkpoint: checkpoint.clone(),
            head,
            stream,
            position,
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
        Ok(Advance::Arrived((*self).into_reader().await?))
    }

    /// Content bytes still to discard.
    pub fn remaining(&self) -> u64 {
        self.checkpoint.offset.saturating_sub(self.position)
    }

    /// The format's reader from the checkpoint on, over the head (past a
    /// BOM, from line 1, as the first reader saw it) and the rest.
    async fn into_reader(self) -> Result<RecordReader, SourceError> {
        let cp = self.checkpoint;
        let mut head = self.head;
        let mut head_at = Position { offset: 0, line: 1 };
        if head.starts_with(BOM) {
            head.drain(..BOM.len());
            head_at.offset = BOM.len() as u64;
        }
        let head = Content {
            read: Box::new(Cursor::new(head)),
            at: head_at,
        };
        let rest = Content {
            read: self.stream,
            at: Position {
                offset: cp.offset,
                line: cp.line,
            },
        };
        let format = format::of(cp.format);
        let source = format
            .resume(head, rest, &cp.state, &self.def, &self.ctx)
            .await?;
        Ok(RecordReader {
            ctx: self.ctx,
            format: cp.format,
            state: cp.state,
            source,
            records: cp.records,
            done: false,
            last: None,
        })
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

fn ends_before(ctx: &Ctx, offset: u64) -> SourceError {
    SourceError::EndsBeforeCheckpoint {
        name: ctx.name.clone(),
        offset,
    }
}
