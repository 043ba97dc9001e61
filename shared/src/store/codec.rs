//! Packing many records into one stored item. Every DynamoDB item write costs
//! at least one write unit, so records travel compressed, many to an item of
//! up to `MAX_CHUNK_BYTES` (uncompressed), well under the 400 KB item limit.
//!
//! A chunk's content starts with a format byte: staged records in a compact
//! binary layout ([`STAGED_RECORDS`]), or JSON lines ([`JSON_LINES`]). A
//! chunk is [`LZ4_BLOCK`], the content's length (LEB128) and the content as
//! an LZ4 block. Chunks written by earlier versions still read: the same
//! content in a zstd frame, and before that raw deflate of JSON lines.

use crate::job::{FieldIssue, StagedRecord, Values};
use flate2::read::DeflateDecoder;
use serde::{de::DeserializeOwned, Serialize};
use std::io::Read;

/// Uncompressed bytes per packed item. LZ4 never grows input by more than
/// one byte in 255 (and a few), so a chunk always fits in a 400 KB item.
pub const MAX_CHUNK_BYTES: usize = 300 * 1024;

/// Format byte: one JSON document a line.
pub const JSON_LINES: u8 = 0x01;
/// Format byte: staged records, each as LEB128 integers and length-prefixed
/// text: the line; the number of values, then each value's length plus
/// one (0 for an absent value) and its bytes; then 0, or 1 and the issue's
/// field, value (each an optional text as above) and message.
pub const STAGED_RECORDS: u8 = 0x02;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("packed item does not inflate")]
    Inflate(#[source] std::io::Error),
    #[error("packed item does not decompress")]
    Decompress(#[source] lz4_flex::block::DecompressError),
    #[error("packed item holds an invalid entry")]
    Json(#[source] serde_json::Error),
    #[error("packed item holds a truncated or invalid entry")]
    Malformed,
    #[error("packed item has format {0:#04x}, which this kind of entry is never stored in")]
    Format(u8),
}

/// What a chunk can hold: JSON lines unless the type has a layout of its own.
pub trait Entry: Serialize + DeserializeOwned {
    /// The format byte of chunks of this type.
    const FORMAT: u8 = JSON_LINES;

    /// Appends the entry in the type's format.
    fn encode(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(&mut *out, self).expect("entry types always serialize");
        out.push(b'\n');
    }

    /// Reads one entry from the front of `input` (which is not empty).
    fn decode(input: &mut &[u8]) -> Result<Self, CodecError> {
        json_line(input)
    }

    /// Bytes the entry takes in a chunk before compression.
    fn encoded_len(&self) -> usize {
        serde_json::to_vec(self)
            .map(|v| v.len() + 1)
            .unwrap_or(usize::MAX)
    }
}

impl Entry for crate::job::FailedRecord {}

impl Entry for StagedRecord {
    const FORMAT: u8 = STAGED_RECORDS;

    fn encode(&self, out: &mut Vec<u8>) {
        // Lengths under 128 take a byte: room for all but a long issue.
        out.reserve(self.values.text_len() + self.values.len() + 24);
        put_varint(out, self.line);
        put_varint(out, self.values.len() as u64);
        for value in self.values.iter_bytes() {
            put_text(out, value);
        }
        match &self.issue {
            None => out.push(0),
            Some(issue) => {
                out.push(1);
                put_text(out, issue.field.as_deref().map(str::as_bytes));
                put_text(out, issue.value.as_deref().map(str::as_bytes));
                put_text(out, Some(issue.message.as_bytes()));
            }
        }
    }

    fn decode(input: &mut &[u8]) -> Result<Self, CodecError> {
        let line = varint(input)?;
        let count = usize::try_from(varint(input)?).map_err(|_| CodecError::Malformed)?;
        // Each value takes a byte at least: a count past the input is bad.
        if count > input.len() {
            return Err(CodecError::Malformed);
        }
        let mut values = Values::with_capacity(count, input.len().min(count * 16));
        for i in 0..count {
            if let Some(text) = text(input)? {
                values.set(i, text);
            }
        }
        let issue = match take(input, 1)? {
            [0] => None,
            [1] => {
                let field = text(input)?.map(str::to_owned);
                let value = text(input)?.map(str::to_owned);
                let message = text(input)?.ok_or(CodecError::Malformed)?.to_owned();
                Some(Box::new(FieldIssue {
                    field,
                    value,
                    message,
                }))
            }
            _ => return Err(CodecError::Malformed),
        };
        Ok(StagedRecord {
            line,
            values,
            issue,
        })
    }

    fn encoded_len(&self) -> usize {
        let text = |len: Option<usize>| len.map_or(1, |n| varint_len(n as u64 + 1) + n);
        let issue = self.issue.as_ref().map_or(1, |i| {
            1 + text(i.field.as_ref().map(String::len))
                + text(i.value.as_ref().map(String::len))
                + text(Some(i.message.len()))
        });
        varint_len(self.line)
            + varint_len(self.values.len() as u64)
            + self
                .values
                .iter_bytes()
                .map(|v| text(v.map(<[u8]>::len)))
                .sum::<usize>()
            + issue
    }
}

/// Bytes `value` takes in a chunk before compression.
pub fn encoded_len<T: Entry>(value: &T) -> usize {
    value.encoded_len()
}

/// Packs values into as few chunks as the size limit allows, in order. A
/// value larger than the limit gets a chunk of its own (callers reject such
/// values before they get here when the item limit matters).
pub fn pack<T: Entry>(values: &[T]) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut current = Vec::with_capacity(MAX_CHUNK_BYTES.min(values.len() * 256 + 1));
    current.push(T::FORMAT);
    for value in values {
        // Written in place; an entry that overflows a non-empty chunk moves
        // to the next one.
        let start = current.len();
        value.encode(&mut current);
        if start > 1 && current.len() > MAX_CHUNK_BYTES {
            chunks.push(compress(&current[..start]));
            current.drain(1..start);
        }
    }
    if current.len() > 1 {
        chunks.push(compress(&current));
    }
    chunks
}

/// The first byte of a chunk of LZ4. A deflate stream cannot begin with it
/// (its first block would be of type 3, which deflate reserves), nor can a
/// zstd frame, so a chunk says by itself which of the three it is.
pub const LZ4_BLOCK: u8 = 0x06;

/// The first bytes of every zstd frame. Raw deflate from any encoder of
/// ours cannot begin with them (a deflate stream whose first block is
/// stored pads its header byte with zeros, and 0x28 is not such a byte).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Upper bound on a chunk's inflated size: `MAX_CHUNK_BYTES`, or one entry
/// that outgrew it, which the 400 KB item limit keeps far below this.
const MAX_INFLATED_BYTES: u64 = 64 * 1024 * 1024;

pub fn unpack<T: Entry>(chunk: &[u8]) -> Result<Vec<T>, CodecError> {
    let content = match chunk {
        [LZ4_BLOCK, rest @ ..] => {
            let mut rest = rest;
            let len = varint(&mut rest)?;
            if len > MAX_INFLATED_BYTES {
                return Err(CodecError::Malformed);
            }
            let len = usize::try_from(len).map_err(|_| CodecError::Malformed)?;
            let content = lz4_flex::block::decompress(rest, len).map_err(CodecError::Decompress)?;
            if content.len() != len {
                return Err(CodecError::Malformed);
            }
            content
        }
        _ if chunk.starts_with(&ZSTD_MAGIC) => {
            let mut content = Vec::with_capacity(chunk.len() * 4);
            zstd::stream::read::Decoder::with_buffer(chunk)
                .map_err(CodecError::Inflate)?
                .take(MAX_INFLATED_BYTES)
                .read_to_end(&mut content)
                .map_err(CodecError::Inflate)?;
            content
        }
        _ => {
            let mut content = Vec::with_capacity(chunk.len() * 4);
            DeflateDecoder::new(chunk)
                .read_to_end(&mut content)
                .map_err(CodecError::Inflate)?;
            return json_lines(&content);
        }
    };
    let Some((&format, mut input)) = content.split_first() else {
        return Err(CodecError::Malformed);
    };
    if format == JSON_LINES {
        return json_lines(input);
    }
    if format != T::FORMAT {
        return Err(CodecError::Format(format));
    }
    let mut entries = Vec::new();
    while !input.is_empty() {
        entries.push(T::decode(&mut input)?);
    }
    Ok(entries)
}

fn json_lines<T: DeserializeOwned>(text: &[u8]) -> Result<Vec<T>, CodecError> {
    text.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).map_err(CodecError::Json))
        .collect()
}

fn json_line<T: DeserializeOwned>(input: &mut &[u8]) -> Result<T, CodecError> {
    let end = input
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or(input.len());
    let line = take(input, end)?;
    *input = input.get(1..).unwrap_or_default();
    serde_json::from_slice(line).map_err(CodecError::Json)
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn varint_len(n: u64) -> usize {
    (64 - (n | 1).leading_zeros() as usize).div_ceil(7)
}

fn varint(input: &mut &[u8]) -> Result<u64, CodecError> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let [byte, rest @ ..] = *input else {
            return Err(CodecError::Malformed);
        };
        *input = rest;
        n |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err(CodecError::Malformed)
}

/// An optional text (given as its bytes): 0 when absent, else its length
/// plus one and the bytes.
fn put_text(out: &mut Vec<u8>, text: Option<&[u8]>) {
    match text {
        None => out.push(0),
        Some(text) => {
            put_varint(out, text.len() as u64 + 1);
            out.extend_from_slice(text);
        }
    }
}

fn text<'a>(input: &mut &'a [u8]) -> Result<Option<&'a str>, CodecError> {
    let Some(len) = varint(input)?.checked_sub(1) else {
        return Ok(None);
    };
    let len = usize::try_from(len).map_err(|_| CodecError::Malformed)?;
    let bytes = take(input, len)?;
    std::str::from_utf8(bytes)
        .map(Some)
        .map_err(|_| CodecError::Malformed)
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], CodecError> {
    if n > input.len() {
        return Err(CodecError::Malformed);
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

/// LZ4 rather than zstd: on the demo's records zstd at its fastest levels
/// packs to 27 bytes a record against LZ4's 34, but takes over half as long
/// again, and packing is most of what prepare spends on a record besides
/// parsing it. The difference is a few write units a batch against the 500
/// its rows cost in the target table (BENCHMARKS.md).
fn compress(bytes: &[u8]) -> Vec<u8> {
    let bound = lz4_flex::block::get_maximum_output_size(bytes.len());
    let mut chunk = Vec::with_capacity(1 + 10 + bound);
    chunk.push(LZ4_BLOCK);
    put_varint(&mut chunk, bytes.len() as u64);
    let header = chunk.len();
    chunk.resize(header + bound, 0);
    let written = lz4_flex::block::compress_into(bytes, &mut chunk[header..])
        .expect("compressing into a buffer of the bound");
    chunk.truncate(header + written);
    chunk.shrink_to_fit();
    chunk
}

#[cfg(test)]
mod tests;
