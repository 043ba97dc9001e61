//! Reading uploaded objects: the `ObjectSource` trait and its S3 backend.
//! The body is streamed; nothing holds a whole object. A resumed prepare
//! reads just the part it needs (`open_range`).

use crate::job::SourceRef;
use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Prefix of `SourceRef::version` when the bucket is unversioned and the
/// object is identified by its ETag instead.
pub const ETAG_PREFIX: &str = "etag:";

pub struct ObjectBody {
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
    pub content_encoding: Option<String>,
    pub size: Option<i64>,
}

/// Bytes `start..end` of an object (`end` exclusive; `None`: to its end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: Option<u64>,
}

impl ByteRange {
    /// From `start` to the end of the object.
    pub fn from(start: u64) -> Self {
        ByteRange { start, end: None }
    }

    /// The first `len` bytes.
    pub fn first(len: u64) -> Self {
        ByteRange {
            start: 0,
            end: Some(len),
        }
    }

    fn is_empty(&self) -> bool {
        self.end.is_some_and(|end| end <= self.start)
    }

    /// The HTTP `Range` value (inclusive end); the range must not be empty.
    fn header(&self) -> String {
        match self.end {
            Some(end) => format!("bytes={}-{}", self.start, end - 1),
            None => format!("bytes={}-", self.start),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("{0} does not exist (deleted or replaced since the upload event)")]
    NotFound(String),
    #[error("{0} is shorter than the part read from it (replaced since the job started?)")]
    RangeNotSatisfiable(String),
    #[error("{0} is not readable: access denied")]
    AccessDenied(String),
    #[error("reading {object} failed")]
    Transient {
        object: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ObjectError {
    pub fn is_transient(&self) -> bool {
        matches!(self, ObjectError::Transient { .. })
    }
}

#[async_trait]
pub trait ObjectSource: Send + Sync {
    async fn open(&self, source: &SourceRef) -> Result<ObjectBody, ObjectError>;

    /// Bytes `range` of the object. This default reads the object from its
    /// start and discards what comes before; backends that can read a part
    /// alone (S3, memory) do.
    async fn open_range(
        &self,
        source: &SourceRef,
        range: ByteRange,
    ) -> Result<ObjectBody, ObjectError> {
        let body = self.open(source).await?;
        let mut reader = body.reader;
        let skipped = tokio::io::copy(&mut (&mut reader).take(range.start), &mut tokio::io::sink())
            .await
            .map_err(|e| ObjectError::Transient {
                object: source.to_string(),
                source: e.into(),
            })?;
        if skipped < range.start {
            return Err(ObjectError::RangeNotSatisfiable(source.to_string()));
        }
        let len = range
            .end
            .map_or(u64::MAX, |end| end.saturating_sub(range.start));
        Ok(ObjectBody {
            reader: Box::new(reader.take(len)),
            content_encoding: body.content_encoding,
            size: body.size,
        })
    }
}

/// Which content of an object is current: what a job created for it now
/// would be keyed by (`SourceRef::version`).
#[async_trait]
pub trait ObjectVersions: Send + Sync {
    /// The object's version id, or `etag:<ETag>` on an unversioned bucket;
    /// `None` when the object does not exist.
    async fn current_version(&self, bucket: &str, key: &str)
        -> Result<Option<String>, ObjectError>;
}

pub struct S3Objects {
    client: aws_sdk_s3::Client,
}

impl S3Objects {
    pub fn new(client: aws_sdk_s3::Client) -> Self {
        S3Objects { client }
    }

    async fn get(
        &self,
        source: &SourceRef,
        range: Option<ByteRange>,
    ) -> Result<ObjectBody, ObjectError> {
        let mut get = self
            .client
            .get_object()
            .bucket(&source.bucket)
            .key(&source.key)
            .set_range(range.map(|r| r.header()));
        // Read exactly the version the job was created for: a replaced
        // object is a different job.
        get = match source.version.strip_prefix(ETAG_PREFIX) {
            Some(etag) => get.if_match(etag),
            None => get.version_id(&source.version),
        };
        let name = source.to_string();
        match get.send().await {
            Ok(out) => Ok(ObjectBody {
                content_encoding: out.content_encoding.clone(),
                size: out.content_length,
                reader: Box::new(out.body.into_async_read()),
            }),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                match status {
                    Some(404) | Some(412) => Err(ObjectError::NotFound(name)),
                    Some(403) => Err(ObjectError::AccessDenied(name)),
                    Some(416) => Err(ObjectError::RangeNotSatisfiable(name)),
                    _ => Err(ObjectError::Transient {
                        object: name,
                        source: e.into(),
                    }),
                }
            }
        }
    }
}

#[async_trait]
impl ObjectSource for S3Objects {
    async fn open(&self, source: &SourceRef) -> Result<ObjectBody, ObjectError> {
        self.get(source, None).await
    }

    async fn open_range(
        &self,
        source: &SourceRef,
        range: ByteRange,
    ) -> Result<ObjectBody, ObjectError> {
        if range.is_empty() {
            // Not expressible as a Range header, and nothing to read.
            return Ok(ObjectBody {
                reader: Box::new(tokio::io::empty()),
                content_encoding: None,
                size: Some(0),
            });
        }
        self.get(source, Some(range)).await
    }
}

#[async_trait]
impl ObjectVersions for S3Objects {
    async fn current_version(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<String>, ObjectError> {
        let name = format!("s3://{bucket}/{key}");
        let head = match self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(head) => head,
            Err(e) => {
                return match e.raw_response().map(|r| r.status().as_u16()) {
                    Some(404) => Ok(None),
                    Some(403) => Err(ObjectError::AccessDenied(name)),
                    _ => Err(ObjectError::Transient {
                        object: name,
                        source: e.into(),
                    }),
                }
            }
        };
        // The same choice as the upload event's: a real version id, else
        // the ETag ("null" is the version of objects written unversioned).
        match (head.version_id(), head.e_tag()) {
            (Some(v), _) if !v.is_empty() && v != "null" => Ok(Some(v.to_owned())),
            (_, Some(etag)) => Ok(Some(format!("{ETAG_PREFIX}{}", etag.trim_matches('"')))),
            _ => Err(ObjectError::Transient {
                object: name,
                source: "the object has neither a version id nor an ETag".into(),
            }),
        }
    }
}

/// Objects held in memory (unit tests), keyed by bucket and key.
#[derive(Debug, Default)]
pub struct MemoryObjects {
    objects: std::sync::Mutex<std::collections::HashMap<(String, String), Vec<u8>>>,
}

impl MemoryObjects {
    pub fn put(&self, bucket: &str, key: &str, body: impl Into<Vec<u8>>) {
        self.objects
            .lock()
            .expect("objects poisoned")
            .insert((bucket.into(), key.into()), body.into());
    }
}

#[async_trait]
impl ObjectSource for MemoryObjects {
    async fn open(&self, source: &SourceRef) -> Result<ObjectBody, ObjectError> {
        self.open_range(source, ByteRange::from(0)).await
    }

    async fn open_range(
        &self,
        source: &SourceRef,
        range: ByteRange,
    ) -> Result<ObjectBody, ObjectError> {
        let objects = self.objects.lock().expect("objects poisoned");
        let body = objects
            .get(&(source.bucket.clone(), source.key.clone()))
            .ok_or_else(|| ObjectError::NotFound(source.to_string()))?;
        let len = body.len() as u64;
        if range.start > len {
            return Err(ObjectError::RangeNotSatisfiable(source.to_string()));
        }
        let end = range.end.map_or(len, |end| end.clamp(range.start, len));
        let part = body[range.start as usize..end as usize].to_vec();
        Ok(ObjectBody {
            size: Some(part.len() as i64),
            content_encoding: None,
            reader: Box::new(std::io::Cursor::new(part)),
        })
    }
}

/// Memory objects are unversioned; their "ETag" is a digest of the content.
#[async_trait]
impl ObjectVersions for MemoryObjects {
    async fn current_version(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<String>, ObjectError> {
        use sha2::Digest;
        let objects = self.objects.lock().expect("objects poisoned");
        Ok(objects.get(&(bucket.into(), key.into())).map(|body| {
            let digest = hex::encode(sha2::Sha256::digest(body));
            format!("{ETAG_PREFIX}{}", &digest[..32])
        }))
    }
}

#[cfg(test)]
mod tests {
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
}
