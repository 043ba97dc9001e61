//! Chunks round trip in order and fit an item; chunks written by other
//! encoders or earlier formats still read; corrupt, truncated or random
//! chunks are errors, never panics.

use super::*;
use crate::job::FailedRecord;
use proptest::prelude::*;

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
    records[7].issue = Some(Box::new(FieldIssue::new(
        None,
        None,
        "expected 2 fields, found 3",
    )));
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
        236, 10, 31, 252, 194, 205, 199, 34, 60, 111, 57, 130, 82, 21, 113, 99, 234, 95, 50, 127,
        106, 32, 60, 112, 4, 134, 237, 136, 176, 224, 86, 120, 187, 56, 40, 173, 246, 131, 37, 156,
        164, 246, 92, 83, 80, 6, 99, 76, 47,
    ];
    let mut bad = record(3, "x");
    bad.values.set(1, "y");
    bad.issue = Some(Box::new(FieldIssue::new(
        None,
        None,
        "expected 2 fields, found 3",
    )));
    let expected = vec![record(2, "ada@example.com"), bad];
    assert_eq!(unpack::<StagedRecord>(&CHUNK).unwrap(), expected);
}

#[test]
fn chunks_of_zstd_unpack() {
    let records = vec![record(2, "ada@example.com"), record(3, "x")];
    let mut content = vec![STAGED_RECORDS];
    records.iter().for_each(|r| r.encode(&mut content));
    let chunk = zstd::bulk::compress(&content, -1).unwrap();
    assert!(chunk.starts_with(&ZSTD_MAGIC));
    assert_eq!(unpack::<StagedRecord>(&chunk).unwrap(), records);
}

#[test]
fn corrupt_chunk_is_an_error_not_a_panic() {
    assert!(unpack::<StagedRecord>(b"not deflate").is_err());
    let mut chunk = compress(&[STAGED_RECORDS, 2, 1, 0, 0]);
    // A length past what the block holds, and one past the bound.
    chunk[1] += 1;
    assert!(unpack::<StagedRecord>(&chunk).is_err());
    let mut huge = vec![LZ4_BLOCK];
    put_varint(&mut huge, MAX_INFLATED_BYTES + 1);
    assert!(matches!(
        unpack::<StagedRecord>(&huge),
        Err(CodecError::Malformed)
    ));
}

#[test]
fn every_truncation_of_a_chunk_is_an_error_not_a_panic() {
    let mut records: Vec<_> = (1..=3).map(|i| record(i, "value")).collect();
    records[1].issue = Some(Box::new(FieldIssue::new(Some("a"), Some("b"), "bad")));
    let mut content = vec![STAGED_RECORDS];
    let mut ends = vec![];
    for r in &records {
        r.encode(&mut content);
        ends.push(content.len());
    }
    for end in (2..content.len()).filter(|end| !ends.contains(end)) {
        let mut chunk = compress(&content[..end]);
        let back = unpack::<StagedRecord>(&chunk);
        assert!(
            back.as_ref()
                .is_err_and(|e| matches!(e, CodecError::Malformed)),
            "{end}: {back:?}"
        );
        chunk.truncate(chunk.len() - 1);
        assert!(unpack::<StagedRecord>(&chunk).is_err());
    }
}

#[test]
fn failures_travel_as_json_lines_and_are_not_read_as_records() {
    let failed = vec![FailedRecord::invalid(
        7,
        vec![FieldIssue::new(
            Some("age"),
            Some("x"),
            "not a valid integer",
        )],
    )];
    let chunks = pack(&failed);
    assert_eq!(unpack::<FailedRecord>(&chunks[0]).unwrap(), failed);
    let records = pack(&[record(2, "a")]);
    assert!(matches!(
        unpack::<FailedRecord>(&records[0]),
        Err(CodecError::Format(STAGED_RECORDS))
    ));
}

fn staged() -> impl Strategy<Value = StagedRecord> {
    let text = || prop::option::of("\\PC{0,12}");
    (
        any::<u64>(),
        prop::collection::vec(text(), 0..10),
        prop::option::of((text(), text(), "\\PC{0,12}")),
    )
        .prop_map(|(line, values, issue)| StagedRecord {
            line,
            values: values.into(),
            issue: issue.map(|(field, value, message)| {
                Box::new(FieldIssue {
                    field,
                    value,
                    message,
                })
            }),
        })
}

proptest! {
    #[test]
    fn any_bytes_after_the_lz4_tag_unpack_or_fail_without_a_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..64)
    ) {
        let mut chunk = vec![LZ4_BLOCK];
        chunk.extend(bytes);
        let _ = unpack::<StagedRecord>(&chunk);
        let _ = unpack::<FailedRecord>(&chunk);
    }

    #[test]
    fn staged_records_round_trip_and_know_their_size(
        records in prop::collection::vec(staged(), 0..20)
    ) {
        let chunks = pack(&records);
        let back: Vec<StagedRecord> = chunks
            .iter()
            .flat_map(|c| unpack::<StagedRecord>(c).unwrap())
            .collect();
        prop_assert_eq!(&back, &records);
        for r in &records {
            let mut out = Vec::new();
            r.encode(&mut out);
            prop_assert_eq!(out.len(), r.encoded_len());
        }
    }
}
