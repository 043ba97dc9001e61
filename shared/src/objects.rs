//! Reading uploaded objects: the `ObjectSource` trait and its S3 backend.
//! The body is streamed; nothing holds a whole object. A resumed prepare
//! reads just the part it needs (`open_range`).

use crate::job::SourceRef;
use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Prefix of `SourceRef::version` when the bucket is unversioned and the
/// object is identified by its ETag (and Last-Modified time) instead.
pub const ETAG_PREFIX: &str = "etag:";

/// Separates the ETag from the Last-Modified time in an `etag:` version.
/// S3 ETags are hex digests (`-<parts>` after a multipart upload's): they
/// hold no `@`.
const LAST_MODIFIED_SEPARATOR: char = '@';

/// The version of an object of an unversioned bucket, as `SourceRef::version`
/// spells it: `etag:<ETag>@<Last-Modified>`, the time in RFC 3339 to the
/// second (`etag:9b2cf535f27731c974343645a3985328@2026-11-24T09:30:00Z`).
///
/// The ETag names the bytes, which an upload of the same file weeks later
/// has too; with the time it names the upload. A job's state expires item
/// by item (DynamoDB TTL), so an id derived from the ETag alone could be
/// reused over what is left of an earlier job of the same bytes.
///
/// Without a time (`etag:<ETag>`, as before the time was part of it): an
/// upload whose object was replaced or deleted before the orchestrator
/// could look at it (`handlers::orchestrator::upload_version`).
pub fn etag_version(etag: &str, last_modified: Option<i64>) -> String {
    let etag = etag.trim_matches('"');
    match last_modified {
        None => format!("{ETAG_PREFIX}{etag}"),
        Some(secs) => {
            let time = chrono::DateTime::from_timestamp(secs, 0)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                // Out of chrono's range: no S3 date is; still one per second.
                .unwrap_or_else(|| secs.to_string());
            format!("{ETAG_PREFIX}{etag}{LAST_MODIFIED_SEPARATOR}{time}")
        }
    }
}

/// The ETag an `etag:` version names (with or without its time): what a
/// read sends as `If-Match`. `None` for a version id.
pub fn etag_of(version: &str) -> Option<&str> {
    let rest = version.strip_prefix(ETAG_PREFIX)?;
    Some(match rest.split_once(LAST_MODIFIED_SEPARATOR) {
        Some((etag, _)) => etag,
        None => rest,
    })
}

/// What HEAD says of an object: which write of it is current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHead {
    /// `None` on an unversioned bucket, and for the `null` version (objects
    /// written while versioning was off or suspended, which every upload of
    /// the key overwrites: it names no one upload).
    pub version_id: Option<String>,
    /// Without quotes.
    pub etag: String,
    /// Last-Modified in seconds since the epoch (an HTTP date has no finer
    /// resolution): when this write of the object was made.
    pub last_modified: i64,
}

impl ObjectHead {
    /// What the job of this write is keyed by (`SourceRef::version`): the
    /// version id, else ETag and Last-Modified (`etag_version`).
    pub fn version(&self) -> String {
        match &self.version_id {
            Some(id) => id.clone(),
            None => etag_version(&self.etag, Some(self.last_modified)),
        }
    }
}

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
    /// S3 always sends these; a response without one is not S3's.
    #[error("the HEAD of {object} has no {missing}")]
    Incomplete {
        object: String,
        missing: &'static str,
    },
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

/// Which write of an object is current: what a job created for it now
/// would be keyed by (`SourceRef::version`).
#[async_trait]
pub trait ObjectVersions: Send + Sync {
    /// The HEAD of the object; `None` when it does not exist.
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectHead>, ObjectError>;

    /// The object's version id, or `etag:<ETag>@<Last-Modified>` on an
    /// unversioned bucket (`ObjectHead::version`); `None` when the object
    /// does not exist.
    async fn current_version(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<String>, ObjectError> {
        Ok(self.head(bucket, key).await?.map(|head| head.version()))
    }
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
        // object is a different job. The ETag pins the bytes; the time in
        // an `etag:` version only tells uploads of the same bytes apart, so
        // a later upload of them leaves these readable.
        get = match etag_of(&source.version) {
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
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectHead>, ObjectError> {
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
        let incomplete = |missing| ObjectError::Incomplete {
            object: name.clone(),
            missing,
        };
        let etag = head.e_tag().ok_or_else(|| incomplete("ETag"))?;
        let last_modified = head
            .last_modified()
            .ok_or_else(|| incomplete("Last-Modified"))?;
        Ok(Some(ObjectHead {
            // "null" is the version of objects written unversioned.
            version_id: head
                .version_id()
                .filter(|v| !v.is_empty() && *v != "null")
                .map(str::to_owned),
            etag: etag.trim_matches('"').to_owned(),
            last_modified: last_modified.secs(),
        }))
    }
}

/// Objects held in memory (unit tests), keyed by bucket and key, each with
/// what HEAD says of it. Reads return the current bytes, whatever version
/// the source names.
#[derive(Debug, Default)]
pub struct MemoryObjects {
    objects: std::sync::Mutex<std::collections::HashMap<(String, String), MemoryObject>>,
}

#[derive(Debug)]
struct MemoryObject {
    body: Vec<u8>,
    head: ObjectHead,
}

impl MemoryObjects {
    /// Uploads `body` as to an unversioned bucket, now: its ETag a digest of
    /// the bytes, Last-Modified this second. Returns the object's HEAD.
    pub fn put(&self, bucket: &str, key: &str, body: impl Into<Vec<u8>>) -> ObjectHead {
        self.put_at(bucket, key, body, chrono::Utc::now().timestamp())
    }

    /// `put`, at `last_modified` (seconds since the epoch).
    pub fn put_at(
        &self,
        bucket: &str,
        key: &str,
        body: impl Into<Vec<u8>>,
        last_modified: i64,
    ) -> ObjectHead {
        use sha2::Digest;
        let body = body.into();
        let digest = hex::encode(sha2::Sha256::digest(&body));
        let head = ObjectHead {
            version_id: None,
            etag: digest[..32].to_owned(),
            last_modified,
        };
        self.put_with(bucket, key, body, head.clone());
        head
    }

    /// Stores `body` with the HEAD given (a version id, the ETag an event
    /// fixture names).
    pub fn put_with(&self, bucket: &str, key: &str, body: impl Into<Vec<u8>>, head: ObjectHead) {
        self.objects.lock().expect("objects poisoned").insert(
            (bucket.into(), key.into()),
            MemoryObject {
                body: body.into(),
                head,
            },
        );
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
        let body = &objects
            .get(&(source.bucket.clone(), source.key.clone()))
            .ok_or_else(|| ObjectError::NotFound(source.to_string()))?
            .body;
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

#[async_trait]
impl ObjectVersions for MemoryObjects {
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectHead>, ObjectError> {
        let objects = self.objects.lock().expect("objects poisoned");
        Ok(objects
            .get(&(bucket.into(), key.into()))
            .map(|object| object.head.clone()))
    }
}

#[cfg(test)]
mod tests;
