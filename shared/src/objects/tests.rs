//! Byte ranges read just their bytes, in every backend and through the
//! trait's default; versions named by ETag and Last-Modified; the memory
//! backend's heads.

use super::*;

/// Objects that can only be read whole: the trait's default ranges.
struct WholeOnly(MemoryObjects);

#[async_trait]
impl ObjectSource for WholeOnly {
    async fn open(&self, source: &SourceRef) -> Result<ObjectBody, ObjectError> {
        self.0.open(source).await
    }
}

fn source() -> SourceRef {
    SourceRef {
        bucket: "b".into(),
        key: "k".into(),
        version: "v".into(),
    }
}

async fn read(objects: &dyn ObjectSource, range: ByteRange) -> Result<String, ObjectError> {
    let mut text = String::new();
    let body = objects.open_range(&source(), range).await?;
    let mut reader = body.reader;
    reader.read_to_string(&mut text).await.unwrap();
    Ok(text)
}

#[tokio::test]
async fn a_range_reads_just_its_bytes_in_every_backend() {
    let memory = MemoryObjects::default();
    memory.put("b", "k", "0123456789");
    let whole_only = WholeOnly(MemoryObjects::default());
    whole_only.0.put("b", "k", "0123456789");
    for objects in [&memory as &dyn ObjectSource, &whole_only] {
        assert_eq!(read(objects, ByteRange::from(4)).await.unwrap(), "456789");
        assert_eq!(read(objects, ByteRange::first(3)).await.unwrap(), "012");
        assert_eq!(read(objects, ByteRange::from(10)).await.unwrap(), "");
        let past = ByteRange {
            start: 8,
            end: Some(20),
        };
        assert_eq!(read(objects, past).await.unwrap(), "89");
        assert!(matches!(
            read(objects, ByteRange::from(11)).await,
            Err(ObjectError::RangeNotSatisfiable(_))
        ));
    }
}

#[test]
fn range_headers_name_inclusive_ends() {
    assert_eq!(ByteRange::from(5).header(), "bytes=5-");
    assert_eq!(ByteRange::first(10).header(), "bytes=0-9");
}

#[test]
fn an_etag_version_names_the_upload_and_reads_by_its_etag() {
    // 2026-11-24T09:30:00Z
    let at = 1_795_512_600;
    let version = etag_version("\"9b2c-2\"", Some(at));
    assert_eq!(version, "etag:9b2c-2@2026-11-24T09:30:00Z");
    assert_eq!(etag_of(&version), Some("9b2c-2"));
    assert_ne!(version, etag_version("9b2c-2", Some(at + 1)));
    // Without a time: the ETag alone.
    assert_eq!(etag_version("9b2c-2", None), "etag:9b2c-2");
    assert_eq!(etag_of("etag:9b2c-2"), Some("9b2c-2"));
    assert_eq!(etag_of("3HL4kqtJlcpXroDTDmJ"), None);
}

#[test]
fn a_head_names_the_version_id_else_etag_and_last_modified() {
    let head = ObjectHead {
        version_id: None,
        etag: "9b2c".into(),
        last_modified: 1_795_512_600,
    };
    assert_eq!(head.version(), "etag:9b2c@2026-11-24T09:30:00Z");
    let versioned = ObjectHead {
        version_id: Some("3HL4kqtJlcpXroDTDmJ".into()),
        ..head
    };
    assert_eq!(versioned.version(), "3HL4kqtJlcpXroDTDmJ");
}

#[tokio::test]
async fn memory_objects_carry_etag_and_last_modified() {
    let objects = MemoryObjects::default();
    let first = objects.put_at("b", "k", "a\n1\n", 100);
    assert_eq!(objects.head("b", "k").await.unwrap(), Some(first.clone()));
    // The same bytes again, later: same ETag, a new Last-Modified.
    let again = objects.put_at("b", "k", "a\n1\n", 160);
    assert_eq!(
        (again.etag.as_str(), again.last_modified),
        (first.etag.as_str(), 160)
    );
    assert_ne!(
        objects.current_version("b", "k").await.unwrap(),
        Some(first.version())
    );
    assert_eq!(objects.head("b", "missing").await.unwrap(), None);
}
