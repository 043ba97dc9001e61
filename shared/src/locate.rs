//! Naming a job the way a user does: by its id, or by the object they
//! uploaded (`s3://bucket/key`), which names the job of the object's
//! current version: its version id, or on an unversioned bucket its ETag
//! and Last-Modified time, from a HEAD, as the orchestrator keys the job
//! of the upload event.

use crate::job::{JobId, SourceRef};
use crate::objects::{ObjectError, ObjectVersions};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobRef {
    Id(JobId),
    Object { bucket: String, key: String },
}

#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("{0}: expected s3://bucket/key")]
    BadObjectUri(String),
    #[error("{0} does not exist")]
    NoSuchObject(String),
    #[error(transparent)]
    Object(#[from] ObjectError),
}

impl JobRef {
    /// `s3://bucket/key` names an object; anything else is a job id.
    pub fn parse(text: &str) -> Result<JobRef, LocateError> {
        match text.strip_prefix("s3://") {
            None => Ok(JobRef::Id(JobId::new(text))),
            Some(path) => match path.split_once('/') {
                Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => {
                    Ok(JobRef::Object {
                        bucket: bucket.into(),
                        key: key.into(),
                    })
                }
                _ => Err(LocateError::BadObjectUri(text.into())),
            },
        }
    }

    /// The job id this names. For an object, the id a job of its current
    /// version has (or will have): the job itself may not exist.
    pub async fn resolve(&self, objects: &dyn ObjectVersions) -> Result<JobId, LocateError> {
        match self {
            JobRef::Id(id) => Ok(id.clone()),
            JobRef::Object { bucket, key } => {
                let version = objects
                    .current_version(bucket, key)
                    .await?
                    .ok_or_else(|| LocateError::NoSuchObject(format!("s3://{bucket}/{key}")))?;
                Ok(SourceRef {
                    bucket: bucket.clone(),
                    key: key.clone(),
                    version,
                }
                .job_id())
            }
        }
    }
}

/// A job id, or the id of the job of `s3://bucket/key`'s current version.
pub async fn job_id(objects: &dyn ObjectVersions, text: &str) -> Result<JobId, LocateError> {
    JobRef::parse(text)?.resolve(objects).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::MemoryObjects;

    #[test]
    fn an_s3_uri_names_an_object_and_anything_else_a_job() {
        assert_eq!(
            JobRef::parse("s3://b/dir/k.csv").unwrap(),
            JobRef::Object {
                bucket: "b".into(),
                key: "dir/k.csv".into()
            }
        );
        assert_eq!(
            JobRef::parse("6afe").unwrap(),
            JobRef::Id(JobId::new("6afe"))
        );
        for bad in ["s3://b", "s3://b/", "s3:///k"] {
            assert!(
                matches!(JobRef::parse(bad), Err(LocateError::BadObjectUri(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn an_object_names_the_job_of_its_latest_upload() {
        let objects = MemoryObjects::default();
        let first = objects.put_at("b", "k.csv", "a\n1\n", 1_000);
        let first_job = job_id(&objects, "s3://b/k.csv").await.unwrap();
        assert_eq!(
            first_job,
            SourceRef {
                bucket: "b".into(),
                key: "k.csv".into(),
                version: first.version(),
            }
            .job_id()
        );
        // The same bytes uploaded again later: the new upload's job.
        objects.put_at("b", "k.csv", "a\n1\n", 1_000 + 86_400);
        let again = job_id(&objects, "s3://b/k.csv").await.unwrap();
        assert_ne!(again, first_job);
        // On a versioned bucket, the version id alone.
        objects.put_with(
            "b",
            "k.csv",
            "a\n1\n",
            crate::objects::ObjectHead {
                version_id: Some("3HL4kqtJlcpXroDTDmJ".into()),
                ..first
            },
        );
        assert_eq!(
            job_id(&objects, "s3://b/k.csv").await.unwrap(),
            JobId::for_object("b", "k.csv", "3HL4kqtJlcpXroDTDmJ")
        );
    }

    #[tokio::test]
    async fn an_object_names_the_job_of_its_current_content() {
        let objects = MemoryObjects::default();
        objects.put("b", "k.csv", "a\n1\n");
        let first = job_id(&objects, "s3://b/k.csv").await.unwrap();
        assert_eq!(first, job_id(&objects, "s3://b/k.csv").await.unwrap());
        objects.put("b", "k.csv", "a\n2\n");
        assert_ne!(first, job_id(&objects, "s3://b/k.csv").await.unwrap());
        assert!(matches!(
            job_id(&objects, "s3://b/missing.csv").await,
            Err(LocateError::NoSuchObject(_))
        ));
    }
}
