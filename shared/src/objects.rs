//! Reading uploaded objects: the `ObjectSource` trait and its S3 backend.
//! The body is streamed; nothing holds a whole object.

use crate::job::SourceRef;
use async_trait::async_trait;
use tokio::io::AsyncRead;

/// Prefix of `SourceRef::version` when the bucket is unversioned and the
/// object is identified by its ETag instead.
pub const ETAG_PREFIX: &str = "etag:";

pub struct ObjectBody {
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
    pub content_encoding: Option<String>,
    pub size: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("{0} does not exist (deleted or replaced since the upload event)")]
    NotFound(String),
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
}

pub struct S3Objects {
    client: aws_sdk_s3::Client,
}

impl S3Objects {
    pub fn new(client: aws_sdk_s3::Client) -> Self {
        S3Objects { client }
    }
}

#[async_trait]
impl ObjectSource for S3Objects {
    async fn open(&self, source: &SourceRef) -> Result<ObjectBody, ObjectError> {
        let mut get = self
            .client
            .get_object()
            .bucket(&source.bucket)
            .key(&source.key);
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
                    _ => Err(ObjectError::Transient {
                        object: name,
                        source: e.into(),
                    }),
                }
            }
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
        let body = self
            .objects
            .lock()
            .expect("objects poisoned")
            .get(&(source.bucket.clone(), source.key.clone()))
            .cloned()
            .ok_or_else(|| ObjectError::NotFound(source.to_string()))?;
        Ok(ObjectBody {
            size: Some(body.len() as i64),
            content_encoding: None,
            reader: Box::new(std::io::Cursor::new(body)),
        })
    }
}
