use super::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[tokio::test]
async fn gzip_single_member() {
    let input = gzip(&[b"email,age\na@x.io,1\n"]);
    let expected = vec![rec(2, &[Some("a@x.io"), Some("1")])];
    assert_eq!(records("f.csv.gz", &input, &people()).await, expected);
    // Recognised by its magic bytes whatever the name says.
    assert_eq!(records("f.csv", &input, &people()).await, expected);
}

#[tokio::test]
async fn gzip_multi_member() {
    let input = gzip(&[b"email,age\na@x.io,1\nb@x.i", b"o,2\n", b"c@x.io,3\n"]);
    assert_eq!(
        records("f.csv.gz", &input, &people()).await,
        vec![
            rec(2, &[Some("a@x.io"), Some("1")]),
            rec(3, &[Some("b@x.io"), Some("2")]),
            rec(4, &[Some("c@x.io"), Some("3")]),
        ]
    );
}

#[tokio::test]
async fn gzip_content_encoding_without_magic_is_read_as_plain_text() {
    let opts = OpenOptions {
        name: "f.csv",
        content_encoding: Some("gzip"),
    };
    let input = b"email,age\na@x.io,1\n".to_vec();
    let mut rdr = RecordReader::open(Cursor::new(input), opts, &people())
        .await
        .unwrap();
    assert_eq!(
        rdr.next_record().await.unwrap(),
        Some(rec(2, &[Some("a@x.io"), Some("1")]))
    );
}

#[tokio::test]
async fn malformed_gzip_is_a_decompress_error() {
    let mut truncated = gzip(&[&b"email,age\na@x.io,1\n".repeat(1000)]);
    truncated.truncate(truncated.len() / 2);
    let err = error("f.csv.gz", &truncated, &people()).await;
    assert!(matches!(err, SourceError::Decompress { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("f.csv.gz: the gzip data is corrupt or truncated"),
        "{err}"
    );

    let err = error("f.csv.gz", b"email,age\n", &people()).await;
    assert!(matches!(err, SourceError::Decompress { .. }), "{err:?}");
}

/// A gzip member whose deflate data lies past the sniffed first bytes (behind
/// a long file name), decodes to NUL bytes and then turns corrupt.
fn gzip_corrupt_after_binary_output() -> Vec<u8> {
    let mut member = vec![0x1f, 0x8b, 8, 0x08, 0, 0, 0, 0, 0, 0xff];
    member.extend(std::iter::repeat_n(b'n', SNIFF_BYTES));
    member.push(0);
    let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    deflate.write_all(&[0; 2 * SNIFF_BYTES]).unwrap();
    deflate.flush().unwrap();
    member.extend(deflate.get_ref());
    // A final block of the reserved type 3.
    member.push(0b111);
    member
}

#[tokio::test]
async fn corrupt_gzip_fails_the_same_way_however_the_body_is_cut() {
    let input = gzip_corrupt_after_binary_output();
    let whole = read_all(Cursor::new(input.clone()), "f.csv.gz", &people()).await;
    let whole = whole.1.expect("an error").to_string();
    assert!(
        whole.starts_with("f.csv.gz: the gzip data is corrupt or truncated"),
        "{whole}"
    );
    for size in [1, 7, 500] {
        let pieces = Pieces::new(input.chunks(size).map(<[u8]>::to_vec));
        let (_, err) = read_all(pieces, "f.csv.gz", &people()).await;
        assert_eq!(
            err.expect("an error").to_string(),
            whole,
            "pieces of {size}"
        );
    }
}

#[tokio::test]
async fn unsupported_compression_by_magic_or_suffix() {
    for (name, input, kind) in [
        ("f.csv", &b"\x28\xb5\x2f\xfd\x00\x00"[..], "zstd"),
        ("f.csv", b"BZh91AY&SY", "bzip2"),
        ("f.csv", b"\xfd\x37\x7a\x58\x5a\x00\x00", "xz"),
        ("f.xlsx", b"PK\x03\x04\x14\x00", "zip"),
        ("f.csv.bz2", b"email,age\n", "bzip2"),
        ("f.csv.zst", b"email,age\n", "zstd"),
    ] {
        let err = error(name, input, &people()).await;
        assert!(
            matches!(err, SourceError::UnsupportedCompression { compression, .. } if compression == kind),
            "{name}: {err:?}"
        );
    }
}

#[tokio::test]
async fn binary_file_is_not_text() {
    let err = error("f.csv", b"email,age\n\x00\x01\x02\x03", &people()).await;
    assert!(matches!(err, SourceError::NotText { .. }), "{err:?}");
    let utf16: Vec<u8> = "email,age\n"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let err = error("f.csv", &utf16, &people()).await;
    assert_eq!(
        err.to_string(),
        "f.csv: not a text file: it contains NUL bytes (binary data or UTF-16 text)"
    );
}

#[tokio::test]
async fn empty_file() {
    for input in [&b""[..], b" \r\n\t\n", b"\xEF\xBB\xBF", b"\xEF\xBB\xBF\n"] {
        let err = error("f.csv", input, &people()).await;
        assert_eq!(err.to_string(), "f.csv: the file is empty", "{input:?}");
    }
    let err = error("f.csv.gz", &gzip(&[b""]), &people()).await;
    assert!(matches!(err, SourceError::Empty { .. }), "{err:?}");
}

/// Produces a header and then a single row of `total` bytes, counting what
/// was actually handed out.
struct EndlessRow {
    produced: Arc<AtomicU64>,
    total: u64,
    header: &'static [u8],
}

impl AsyncRead for EndlessRow {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let at = self.produced.load(Ordering::Relaxed);
        let h = self.header.len() as u64;
        if at < h {
            buf.put_slice(&self.header[at as usize..]);
            self.produced.store(h, Ordering::Relaxed);
        } else if at < self.total {
            let n = (buf.remaining() as u64).min(self.total - at).min(4096);
            buf.put_slice(&vec![b'x'; n as usize]);
            self.produced.store(at + n, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn row_too_large_fails_without_reading_the_whole_row() {
    for (name, header, line) in [("f.csv", &b"email,age\n"[..], 2), ("f.ndjson", b"\n\n", 3)] {
        let produced = Arc::new(AtomicU64::new(0));
        let rdr = EndlessRow {
            produced: produced.clone(),
            total: 50 << 20,
            header,
        };
        let def = if name == "f.csv" {
            people()
        } else {
            ndjson_def()
        };
        let (records, err) = read_all(rdr, name, &def).await;
        assert_eq!(records, vec![]);
        let err = err.expect("an error");
        assert!(
            matches!(err, SourceError::RowTooLarge { line: l, limit: 1_048_576, .. } if l == line),
            "{name}: {err:?}"
        );
        let read = produced.load(Ordering::Relaxed);
        assert!(read < 2 << 20, "{name}: read {read} bytes before failing");
    }
}

#[tokio::test]
async fn row_too_large_is_exact_at_the_limit() {
    let mut def = people();
    def.limits.max_row_bytes = 12;
    let input = b"email,age\r\nabcdef@x.io,\r\nabcdefg@x.io,\r\n";
    let (records, err) = read_all(Cursor::new(input.to_vec()), "f.csv", &def).await;
    assert_eq!(records, vec![rec(2, &[Some("abcdef@x.io"), Some("")])]);
    assert_eq!(
        err.unwrap().to_string(),
        "f.csv: line 3: the row is longer than the limit of 12 bytes"
    );
}

#[tokio::test]
async fn too_many_fields() {
    let mut def = people();
    def.limits.max_fields = 3;
    let input = b"email,age\na@x.io,1,2\nb@x.io,1,2,3\n";
    let (records, err) = read_all(Cursor::new(input.to_vec()), "f.csv", &def).await;
    assert_eq!(records.len(), 1);
    assert!(
        matches!(
            err,
            Some(SourceError::TooManyFields {
                line: 3,
                found: 4,
                limit: 3,
                ..
            })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn too_many_records() {
    let mut def = people();
    def.limits.max_records = 2;
    let input = b"email,age\na@x.io,1\nb@x.io,2\nc@x.io,3\n";
    let (records, err) = read_all(Cursor::new(input.to_vec()), "f.csv", &def).await;
    assert_eq!(records.len(), 2);
    let err = err.unwrap();
    assert!(
        matches!(
            err,
            SourceError::TooManyRecords {
                line: 4,
                limit: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "f.csv: line 4: the file has more than the limit of 2 records"
    );
}

/// Hands out `data`, then fails.
struct Failing(Vec<u8>);

impl AsyncRead for Failing {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.0.is_empty() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "peer went away",
            )));
        }
        let n = self.0.len().min(buf.remaining());
        buf.put_slice(&self.0[..n]);
        self.0.drain(..n);
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn read_errors_keep_their_source_also_through_gzip() {
    let rows: String = (0..20_000)
        .map(|i| format!("u{i}@x.io,{}\n", i * 7919 % 100))
        .collect();
    let plain = format!("email,age\n{rows}").into_bytes();
    let compressed = gzip(&[&plain]);
    for (name, data) in [
        ("f.csv", plain.clone()),
        ("f.csv.gz", compressed[..compressed.len() - 20].to_vec()),
    ] {
        let (records, err) = read_all(Failing(data), name, &people()).await;
        assert!(!records.is_empty());
        match err {
            Some(SourceError::Io { source, .. }) => {
                assert_eq!(source.kind(), io::ErrorKind::ConnectionReset);
                assert_eq!(source.to_string(), "peer went away");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn reader_is_finished_after_an_error() {
    let mut def = people();
    def.limits.max_records = 0;
    let mut rdr = RecordReader::open(
        Cursor::new(b"email,age\na@x.io,1\n".to_vec()),
        OpenOptions::new("f.csv"),
        &def,
    )
    .await
    .unwrap();
    assert!(rdr.next_record().await.is_err());
    assert_eq!(rdr.next_record().await.unwrap(), None);
}
