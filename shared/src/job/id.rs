//! Job identity: a job's id is derived from what it reads, so the same
//! input always maps to the same job and a re-delivered event finds the job
//! it already created instead of starting another.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// Deterministic job identifier: the same object version always maps to the
/// same job, so a re-delivered S3 event finds the job it already created.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// Derives the id from the object's identity: bucket, key and version
    /// (`SourceRef::version`).
    pub fn for_object(bucket: &str, key: &str, version: &str) -> Self {
        let mut h = Sha256::new();
        for part in [bucket, key, version] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        JobId(hex::encode(&h.finalize()[..16]))
    }

    pub fn new(id: impl Into<String>) -> Self {
        JobId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_is_deterministic_and_separates_parts() {
        let a = JobId::for_object("b", "k", "v1");
        assert_eq!(a, JobId::for_object("b", "k", "v1"));
        assert_ne!(a, JobId::for_object("b", "k", "v2"));
        assert_ne!(
            JobId::for_object("ab", "c", "v"),
            JobId::for_object("a", "bc", "v")
        );
        assert_eq!(a.as_str().len(), 32);
    }
}
