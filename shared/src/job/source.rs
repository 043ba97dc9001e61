//! Where a job's input lives: what kind of source it reads (`JobSource`)
//! and, for the jobs of uploaded files, the object version (`SourceRef`).
//! A job that reads an object is stored and shown as that object's
//! reference alone, as it was before sources had kinds.

use super::JobId;
use serde::{Deserialize, Serialize};
use std::fmt;

/// An uploaded object version: the input of the job it keys (`job_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceRef {
    pub bucket: String,
    pub key: String,
    /// Version id; when the bucket is not versioned, ETag and Last-Modified
    /// time, which name one upload (`objects::etag_version`).
    pub version: String,
}

impl SourceRef {
    pub fn job_id(&self) -> JobId {
        JobId::for_object(&self.bucket, &self.key, &self.version)
    }
}

impl fmt::Display for SourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// What a job reads. Code that only makes sense for an uploaded object
/// (opening it, naming it in events and reports) destructures
/// `JobSource::Object`, which cannot fail while objects are the only
/// source: a new kind of source makes the compiler point at each such
/// place. Code that can do without an object asks `object()`.
///
/// Untagged: an object source serializes as its `SourceRef` alone (and
/// displays as `s3://bucket/key`), so jobs look the same as before sources
/// had kinds. Any other kind carries a field that tells it apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JobSource {
    /// An uploaded object version, read by prepare.
    Object(SourceRef),
}

impl JobSource {
    /// The uploaded object the job reads, if it reads one.
    pub fn object(&self) -> Option<&SourceRef> {
        match self {
            JobSource::Object(object) => Some(object),
        }
    }
}

impl From<SourceRef> for JobSource {
    fn from(object: SourceRef) -> Self {
        JobSource::Object(object)
    }
}

impl fmt::Display for JobSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobSource::Object(object) => object.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object() -> SourceRef {
        SourceRef {
            bucket: "b".into(),
            key: "dir/k.csv".into(),
            version: "v1".into(),
        }
    }

    #[test]
    fn an_object_source_reads_and_writes_as_the_object_alone() {
        let source = JobSource::from(object());
        let json = serde_json::to_string(&source).unwrap();
        assert_eq!(json, r#"{"bucket":"b","key":"dir/k.csv","version":"v1"}"#);
        assert_eq!(json, serde_json::to_string(&object()).unwrap());
        assert_eq!(serde_json::from_str::<JobSource>(&json).unwrap(), source);
        assert_eq!(source.to_string(), "s3://b/dir/k.csv");
        assert_eq!(source.object(), Some(&object()));
    }
}
