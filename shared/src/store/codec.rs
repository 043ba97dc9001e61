//! Packing many records into one stored item. Every DynamoDB item write costs
//! at least one write unit, so records travel as deflated NDJSON in items of
//! up to `MAX_CHUNK_BYTES` (uncompressed), well under the 400 KB item limit.

use flate2::{read::DeflateDecoder, write::DeflateEncoder, Compression};
use serde::{de::DeserializeOwned, Serialize};
use std::io::{Read, Write};

/// Uncompressed bytes per packed item. Deflate never grows input by more
/// than a few bytes per 32 KB, so a chunk always fits in a 400 KB item.
pub const MAX_CHUNK_BYTES: usize = 300 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("packed item does not inflate")]
    Inflate(#[source] std::io::Error),
    #[error("packed item holds an invalid entry")]
    Json(#[source] serde_json::Error),
}

/// Bytes `value` takes in a chunk before compression.
pub fn encoded_len<T: Serialize>(value: &T) -> usize {
    serde_json::to_vec(value)
        .map(|v| v.len() + 1)
        .unwrap_or(usize::MAX)
}

/// Packs values into as few chunks as the size limit allows, in order. A
/// value larger than the limit gets a chunk of its own (callers reject such
/// values before they get here when the item limit matters).
pub fn pack<T: Serialize>(values: &[T]) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    for value in values {
        let mut line = serde_json::to_vec(value).expect("record types always serialize");
        line.push(b'\n');
        if !current.is_empty() && current.len() + line.len() > MAX_CHUNK_BYTES {
            chunks.push(deflate(&current));
            current.clear();
        }
        current.extend_from_slice(&line);
    }
    if !current.is_empty() {
        chunks.push(deflate(&current));
    }
    chunks
}

pub fn unpack<T: DeserializeOwned>(chunk: &[u8]) -> Result<Vec<T>, CodecError> {
    let mut text = Vec::with_capacity(chunk.len() * 4);
    DeflateDecoder::new(chunk)
        .read_to_end(&mut text)
        .map_err(CodecError::Inflate)?;
    text.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).map_err(CodecError::Json))
        .collect()
}

fn deflate(bytes: &[u8]) -> Vec<u8> {
    // Fast level: prepare is CPU-bound on one core; level 1 keeps most of
    // the size win at a fraction of the time.
    let mut enc = DeflateEncoder::new(Vec::with_capacity(bytes.len() / 3), Compression::fast());
    enc.write_all(bytes).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{FieldIssue, StagedRecord};

    fn record(line: u64, text: &str) -> StagedRecord {
        StagedRecord {
            line,
            values: vec![Some(text.into()), None],
            issue: None,
        }
    }

    #[test]
    fn records_round_trip_through_chunks_in_order() {
        let mut records: Vec<_> = (1..=2000)
            .map(|i| record(i, &format!("value {i} é")))
            .collect();
        records[7].issue = Some(FieldIssue::new(None, None, "expected 2 fields, found 3"));
        let chunks = pack(&records);
        let back: Vec<StagedRecord> = chunks
            .iter()
            .flat_map(|c| unpack::<StagedRecord>(c).unwrap())
            .collect();
        assert_eq!(back, records);
    }

    #[test]
    fn large_inputs_split_into_chunks_that_fit_an_item() {
        let big = "x".repeat(10_000);
        let records: Vec<_> = (1..=100).map(|i| record(i, &big)).collect();
        let chunks = pack(&records);
        assert!(chunks.len() >= 4, "{} chunks", chunks.len());
        let back: usize = chunks
            .iter()
            .map(|c| unpack::<StagedRecord>(c).unwrap().len())
            .sum();
        assert_eq!(back, 100);
    }

    #[test]
    fn corrupt_chunk_is_an_error_not_a_panic() {
        assert!(unpack::<StagedRecord>(b"not deflate").is_err());
    }
}
