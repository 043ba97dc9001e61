//! Packing many records into one stored item. Every DynamoDB item write costs
//! at least one write unit, so records travel as deflated NDJSON in items of
//! up to `MAX_CHUNK_BYTES` (uncompressed), well under the 400 KB item limit.

use flate2::read::DeflateDecoder;
use serde::{de::DeserializeOwned, Serialize};
use std::io::Read;
use zlib_rs::{DeflateConfig, ReturnCode};

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
    let mut current = Vec::with_capacity(MAX_CHUNK_BYTES.min(values.len() * 256));
    for value in values {
        // Written in place; a line that overflows a non-empty chunk moves
        // to the next one.
        let start = current.len();
        serde_json::to_writer(&mut current, value).expect("record types always serialize");
        current.push(b'\n');
        if start > 0 && current.len() > MAX_CHUNK_BYTES {
            chunks.push(deflate(&current[..start]));
            current.drain(..start);
        }
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
    // Prepare is CPU-bound on one core. zlib-rs at level 2 packs the demo's
    // records smaller than flate2's miniz_oxide at level 1 did (about 27
    // bytes a record instead of 31) in half its time; level 1 is faster
    // again but about 36 bytes a record, and stored bytes are billed write
    // units. Raw deflate, as before: `unpack` reads old and new chunks alike.
    let config = DeflateConfig {
        level: 2,
        window_bits: -15,
        ..DeflateConfig::default()
    };
    let mut out = vec![0; zlib_rs::compress_bound(bytes.len())];
    let (packed, rc) = zlib_rs::compress_slice(&mut out, bytes, config);
    assert_eq!(rc, ReturnCode::Ok, "deflating into a buffer of the bound");
    let len = packed.len();
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{FieldIssue, StagedRecord};

    fn record(line: u64, text: &str) -> StagedRecord {
        StagedRecord {
            line,
            values: vec![Some(text.into()), None].into(),
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
    fn chunks_deflated_by_another_encoder_unpack() {
        // Raw deflate at level 1 from another zlib (stored chunks come from
        // whichever encoder was current when they were written).
        const CHUNK: [u8; 88] = [
            45, 202, 189, 10, 128, 32, 20, 6, 208, 189, 167, 144, 111, 190, 52, 232, 230, 212, 123,
            132, 131, 228, 13, 130, 235, 15, 148, 97, 136, 239, 30, 65, 103, 62, 29, 2, 171, 9, 55,
            236, 10, 31, 252, 194, 205, 199, 34, 60, 111, 57, 130, 82, 21, 113, 99, 234, 95, 50,
            127, 106, 32, 60, 112, 4, 134, 237, 136, 176, 224, 86, 120, 187, 56, 40, 173, 246, 131,
            37, 156, 164, 246, 92, 83, 80, 6, 99, 76, 47,
        ];
        let mut bad = record(3, "x");
        bad.values.set(1, "y");
        bad.issue = Some(FieldIssue::new(None, None, "expected 2 fields, found 3"));
        let expected = vec![record(2, "ada@example.com"), bad];
        assert_eq!(unpack::<StagedRecord>(&CHUNK).unwrap(), expected);
    }

    #[test]
    fn corrupt_chunk_is_an_error_not_a_panic() {
        assert!(unpack::<StagedRecord>(b"not deflate").is_err());
    }
}
