//! Behaviour of the reader, one test per case; the chunking properties live
//! in `proptests`.

mod csv;
mod file;
mod ndjson;
mod proptests;
mod resume;

use super::*;
use crate::job::FieldIssue;
use flate2::write::GzEncoder;
use std::collections::VecDeque;
use std::io::Write;

const PEOPLE: &str = r#"{"fields":[
    {"name":"email","type":"email","required":true},
    {"name":"age","type":"integer"}
], "hasHeader":true, "delimiter":","}"#;

fn people() -> Definition {
    Definition::from_json(PEOPLE, "test").unwrap()
}

/// Yields the given pieces one per read, returning `Pending` before each so
/// that every reader above must cope with being resumed mid-way.
struct Pieces {
    pieces: VecDeque<Vec<u8>>,
    ready: bool,
}

impl Pieces {
    pub fn new(pieces: impl IntoIterator<Item = Vec<u8>>) -> Self {
        Pieces {
            pieces: pieces.into_iter().filter(|p| !p.is_empty()).collect(),
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
        if !std::mem::replace(&mut self.ready, false) {
            self.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Some(piece) = self.pieces.front_mut() {
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..n]);
            piece.drain(..n);
            if piece.is_empty() {
                self.pieces.pop_front();
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Everything a reader produced: the records, then the error that ended it.
async fn read_all(
    reader: impl AsyncRead + Unpin + Send + 'static,
    name: &str,
    def: &Definition,
) -> (Vec<StagedRecord>, Option<SourceError>) {
    let mut rdr = match RecordReader::open(reader, OpenOptions::new(name), def).await {
        Ok(rdr) => rdr,
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut records = Vec::new();
    loop {
        match rdr.next_record().await {
            Ok(Some(record)) => records.push(record),
            Ok(None) => return (records, None),
            Err(e) => return (records, Some(e)),
        }
    }
}

async fn records(name: &str, input: &[u8], def: &Definition) -> Vec<StagedRecord> {
    let (records, err) = read_all(Cursor::new(input.to_vec()), name, def).await;
    assert!(err.is_none(), "unexpected error: {}", err.unwrap());
    records
}

async fn error(name: &str, input: &[u8], def: &Definition) -> SourceError {
    let (_, err) = read_all(Cursor::new(input.to_vec()), name, def).await;
    err.expect("an error")
}

fn rec(line: u64, values: &[Option<&str>]) -> StagedRecord {
    StagedRecord {
        line,
        values: values.iter().map(|v| v.map(str::to_owned)).collect(),
        issue: None,
    }
}

fn with_issue(
    mut record: StagedRecord,
    field: Option<&str>,
    value: Option<&str>,
    msg: &str,
) -> StagedRecord {
    record.issue = Some(Box::new(FieldIssue::new(field, value, msg)));
    record
}

fn gzip(members: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for member in members {
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(member).unwrap();
        out.extend(enc.finish().unwrap());
    }
    out
}

#[test]
fn reader_is_send_and_static() {
    fn check<T: Send + 'static>() {}
    check::<RecordReader>();
}

fn ndjson_def() -> Definition {
    let mut def = Definition::from_json(
        r#"{"fields":[
            {"name":"email","type":"email","required":true,"aliases":["mail"]},
            {"name":"age","type":"integer"},
            {"name":"tags","type":"string"}
        ]}"#,
        "test",
    )
    .unwrap();
    def.format = Some(InputFormat::NDJSON);
    def
}
