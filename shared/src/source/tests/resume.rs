use super::*;

/// Records with the checkpoint of each, then the error that ended the
/// reading.
pub(super) async fn read_with_checkpoints(
    input: &[u8],
    name: &str,
    def: &Definition,
) -> (Vec<(StagedRecord, Checkpoint)>, Option<String>) {
    let opened = RecordReader::open(Cursor::new(input.to_vec()), OpenOptions::new(name), def).await;
    let mut rdr = match opened {
        Ok(rdr) => rdr,
        Err(e) => return (Vec::new(), Some(e.to_string())),
    };
    let mut out = Vec::new();
    loop {
        match rdr.next_record().await {
            Ok(Some(record)) => out.push((record, rdr.checkpoint().expect("a checkpoint"))),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e.to_string())),
        }
    }
}

/// What a reader resumed at `cp` over the stored bytes `input` produces:
/// uncompressed input through ranged reads, gzip from the start, skipping
/// `step` bytes at a time.
pub(super) async fn read_resumed(
    input: &[u8],
    cp: &Checkpoint,
    name: &str,
    def: &Definition,
    step: u64,
) -> (Vec<StagedRecord>, Option<String>) {
    let body = |bytes: &[u8]| -> Box<dyn AsyncRead + Send + Unpin> {
        Box::new(Cursor::new(bytes.to_vec()))
    };
    let input = if cp.gzip {
        ResumeInput::Whole(body(input))
    } else {
        ResumeInput::Ranged {
            head: body(&input[..cp.head_len() as usize]),
            rest: body(&input[cp.offset as usize..]),
        }
    };
    let mut resuming = match RecordReader::resume(input, cp, name, def).await {
        Ok(resuming) => resuming,
        Err(e) => return (Vec::new(), Some(e.to_string())),
    };
    let mut rdr = loop {
        match resuming.advance(step).await {
            Ok(Advance::Skipping(next)) => resuming = next,
            Ok(Advance::Arrived(rdr)) => break rdr,
            Err(e) => return (Vec::new(), Some(e.to_string())),
        }
    };
    let mut records = Vec::new();
    loop {
        match rdr.next_record().await {
            Ok(Some(record)) => records.push(record),
            Ok(None) => return (records, None),
            Err(e) => return (records, Some(e.to_string())),
        }
    }
}

/// Resumes at every record's checkpoint and compares with the rest of an
/// uninterrupted read: same records, same error.
pub(super) async fn assert_resumes_anywhere(input: &[u8], name: &str, def: &Definition) -> usize {
    let (read, error) = read_with_checkpoints(input, name, def).await;
    let records: Vec<StagedRecord> = read.iter().map(|(r, _)| r.clone()).collect();
    for (k, (_, cp)) in read.iter().enumerate() {
        for step in [1, 7, u64::MAX] {
            let resumed = read_resumed(input, cp, name, def, step).await;
            assert_eq!(
                resumed,
                (records[k..].to_vec(), error.clone()),
                "resumed at record {k} ({cp:?}) in steps of {step}"
            );
        }
    }
    read.len()
}

const QUOTED: &[u8] = b"email,age\r\n\
\"a@x.io\",\"1\"\r\n\
\r\n\
\"b\nstill b@x.io\",2\r\n\
c@x.io,\"3\r\n3\"\r\
d@x.io,4\n\
\x20\x20\x20\n\
e@x.io,5";

#[tokio::test]
async fn csv_with_quoted_line_breaks_resumes_at_any_record() {
    assert_eq!(assert_resumes_anywhere(QUOTED, "f.csv", &people()).await, 5);
}

#[tokio::test]
async fn csv_with_a_bom_resumes_at_any_record_and_offsets_count_the_bom() {
    let input = [BOM, QUOTED].concat();
    assert_eq!(assert_resumes_anywhere(&input, "f.csv", &people()).await, 5);
    let (read, _) = read_with_checkpoints(&input, "f.csv", &people()).await;
    let first = &read[0].1;
    assert_eq!((first.offset, first.line), (BOM.len() as u64 + 11, 2));
    let state: crate::source::csv::State = first.state.to().unwrap();
    assert_eq!(state.header_end, Some(BOM.len() as u64 + 10));
}

#[tokio::test]
async fn csv_without_header_and_a_detected_delimiter_resumes_at_any_record() {
    let mut def = people();
    def.has_header = false;
    def.delimiter = None;
    let input = b"a@x.io;1\n\nb@x.io;\"2\n\"\nc@x.io;3\n";
    assert_eq!(assert_resumes_anywhere(input, "f.txt", &def).await, 3);
}

#[tokio::test]
async fn gzip_csv_resumes_at_any_record_from_the_start_of_the_stream() {
    let input = gzip(&[&QUOTED[..30], &QUOTED[30..]]);
    assert_eq!(
        assert_resumes_anywhere(&input, "f.csv.gz", &people()).await,
        5
    );
    let (read, _) = read_with_checkpoints(&input, "f.csv.gz", &people()).await;
    assert!(read[4].1.gzip);
    // Offsets are in the decompressed content.
    assert_eq!(read[4].1.offset, QUOTED.len() as u64 - 8);
}

#[tokio::test]
async fn ndjson_resumes_at_any_record() {
    let input = b"{\"email\":\"a@x.io\"}\r\n\n  \n{\"mail\":\"b@x.io\",\"age\":2}\nnot json\n{\"email\":\"c@x.io\"}";
    assert_eq!(
        assert_resumes_anywhere(input, "f.ndjson", &ndjson_def()).await,
        4
    );
    let with_bom = [BOM, &input[..]].concat();
    assert_eq!(
        assert_resumes_anywhere(&with_bom, "f.ndjson", &ndjson_def()).await,
        4
    );
}

#[tokio::test]
async fn a_resumed_reader_fails_where_the_whole_file_fails() {
    let mut def = people();
    def.limits.max_records = 3;
    assert_eq!(assert_resumes_anywhere(QUOTED, "f.csv", &def).await, 3);

    let mut def = people();
    def.limits.max_row_bytes = 12;
    let input = b"email,age\na@x.io,1\nb@x.io,2\nlong@example.org,3\n";
    let (_, error) = read_with_checkpoints(input, "f.csv", &def).await;
    assert_eq!(
        error.as_deref(),
        Some("f.csv: line 4: the row is longer than the limit of 12 bytes")
    );
    assert_eq!(assert_resumes_anywhere(input, "f.csv", &def).await, 2);
}

#[tokio::test]
async fn a_checkpoint_is_a_few_dozen_bytes_of_json() {
    let (read, _) = read_with_checkpoints(QUOTED, "f.csv", &people()).await;
    let cp = &read[4].1;
    let text = cp.encode();
    assert_eq!(
        text,
        r#"{"o":74,"l":10,"r":4,"f":"csv","d":44,"q":34,"h":10}"#
    );
    assert_eq!(Checkpoint::decode(&text).unwrap(), *cp);
}

#[tokio::test]
async fn a_file_shorter_than_its_checkpoint_is_an_error_not_an_empty_rest() {
    let input = gzip(&[QUOTED]);
    let (read, _) = read_with_checkpoints(&input, "f.csv.gz", &people()).await;
    let cp = Checkpoint {
        offset: QUOTED.len() as u64 + 5,
        ..read[1].1.clone()
    };
    let (records, error) = read_resumed(&input, &cp, "f.csv.gz", &people(), 16).await;
    assert!(records.is_empty());
    assert_eq!(
        error.as_deref(),
        Some("f.csv.gz: the file ends before byte 87, where reading was to resume")
    );
}

const NDJSON: &[u8] = b"{\"email\":\"a@x.io\"}\r\n\n  \n{\"mail\":\"b@x.io\",\"age\":2}\nnot json\n{\"email\":\"c@x.io\"}";

/// Checkpoints stored by versions before formats kept their own state:
/// every format's carried a CSV dialect.
#[tokio::test]
async fn checkpoints_stored_before_formats_had_their_own_state_decode_and_resume() {
    let cases: [(&[u8], &str, Definition, &str, usize); 2] = [
        (
            QUOTED,
            "f.csv",
            people(),
            r#"{"o":74,"l":10,"r":4,"f":"csv","d":44,"q":34,"h":10}"#,
            4,
        ),
        (
            NDJSON,
            "f.ndjson",
            ndjson_def(),
            r#"{"o":24,"l":4,"r":1,"f":"ndjson","d":44,"q":34}"#,
            1,
        ),
    ];
    for (input, name, def, stored, k) in cases {
        let cp = Checkpoint::decode(stored).unwrap();
        let (read, error) = read_with_checkpoints(input, name, &def).await;
        assert_eq!(cp, read[k].1, "{stored}");
        // Written back the same, so that the older version reads it too.
        assert_eq!(cp.encode(), stored);
        let records: Vec<StagedRecord> = read[k..].iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(
            read_resumed(input, &cp, name, &def, 7).await,
            (records, error),
            "{stored}"
        );
    }
}

#[tokio::test]
async fn every_checkpoint_round_trips_through_its_json() {
    let cases: [(Vec<u8>, &str, Definition); 3] = [
        (QUOTED.to_vec(), "f.csv", people()),
        (gzip(&[QUOTED]), "f.csv.gz", people()),
        (NDJSON.to_vec(), "f.ndjson", ndjson_def()),
    ];
    for (input, name, def) in cases {
        let (read, _) = read_with_checkpoints(&input, name, &def).await;
        assert!(!read.is_empty());
        for (_, cp) in &read {
            let text = cp.encode();
            assert_eq!(Checkpoint::decode(&text).unwrap(), *cp, "{text}");
        }
    }
    let (read, _) = read_with_checkpoints(&gzip(&[QUOTED]), "f.csv.gz", &people()).await;
    assert_eq!(
        read[1].1.encode(),
        r#"{"o":27,"l":4,"r":1,"f":"csv","z":true,"d":44,"q":34,"h":10}"#
    );
}

#[test]
fn a_checkpoint_its_format_cannot_resume_from_does_not_decode() {
    for text in [
        r#"{"o":74,"l":10,"r":4,"f":"xml","d":44,"q":34}"#,
        r#"{"o":74,"l":10,"r":4,"f":"csv","q":34,"h":10}"#,
        r#"{"o":74,"l":10,"r":4,"f":"csv","d":"x","q":34}"#,
    ] {
        assert!(Checkpoint::decode(text).is_err(), "{text}");
    }
}
