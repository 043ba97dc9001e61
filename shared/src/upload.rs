//! Streaming a large output (a dump of a job's records, an error report)
//! into S3 without holding it: the bytes are read in parts and sent as a
//! multipart upload, or as one PUT when they fit in a single part.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes per part (S3's minimum is 5 MiB for all but the last part).
pub const PART_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("reading the output to upload to s3://{bucket}/{key} failed")]
    Read {
        bucket: String,
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("uploading to s3://{bucket}/{key} failed")]
    S3 {
        bucket: String,
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Where an upload goes.
#[derive(Debug, Clone)]
pub struct Destination<'a> {
    pub client: &'a aws_sdk_s3::Client,
    pub bucket: &'a str,
    pub key: &'a str,
    pub content_type: &'a str,
}

impl Destination<'_> {
    fn s3_error(&self, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> UploadError {
        UploadError::S3 {
            bucket: self.bucket.into(),
            key: self.key.into(),
            source: e.into(),
        }
    }

    /// Uploads everything `reader` yields, `part_bytes` at a time; returns
    /// the bytes uploaded. Memory holds one part.
    pub async fn upload<R: AsyncRead + Unpin>(
        &self,
        mut reader: R,
        part_bytes: usize,
    ) -> Result<u64, UploadError> {
        let mut total = 0u64;
        let mut upload: Option<Multipart> = None;
        loop {
            let part = self.read_part(&mut reader, part_bytes).await?;
            let last = part.len() < part_bytes;
            total += part.len() as u64;
            match (&mut upload, last) {
                // Everything fits in one part: a plain PUT.
                (None, true) => {
                    self.client
                        .put_object()
                        .bucket(self.bucket)
                        .key(self.key)
                        .content_type(self.content_type)
                        .body(part.into())
                        .send()
                        .await
                        .map_err(|e| self.s3_error(e))?;
                    return Ok(total);
                }
                (None, false) => upload = Some(Multipart::start(self).await?),
                _ => {}
            }
            let m = upload.as_mut().expect("started above");
            if !part.is_empty() {
                if let Err(e) = m.part(self, part).await {
                    m.abort(self).await;
                    return Err(e);
                }
            }
            if last {
                let m = upload.take().expect("started above");
                return match m.complete(self).await {
                    Ok(()) => Ok(total),
                    Err((m, e)) => {
                        m.abort(self).await;
                        Err(e)
                    }
                };
            }
        }
    }

    /// Up to `len` bytes; fewer only at the end of the input.
    async fn read_part<R: AsyncRead + Unpin>(
        &self,
        reader: &mut R,
        len: usize,
    ) -> Result<Vec<u8>, UploadError> {
        let mut part = Vec::with_capacity(len);
        (&mut *reader)
            .take(len as u64)
            .read_to_end(&mut part)
            .await
            .map_err(|source| UploadError::Read {
                bucket: self.bucket.into(),
                key: self.key.into(),
                source,
            })?;
        Ok(part)
    }
}

/// An S3 multipart upload in progress.
struct Multipart {
    id: String,
    parts: Vec<aws_sdk_s3::types::CompletedPart>,
}

impl Multipart {
    async fn start(to: &Destination<'_>) -> Result<Self, UploadError> {
        let out = to
            .client
            .create_multipart_upload()
            .bucket(to.bucket)
            .key(to.key)
            .content_type(to.content_type)
            .send()
            .await
            .map_err(|e| to.s3_error(e))?;
        let id = out
            .upload_id
            .ok_or_else(|| to.s3_error("CreateMultipartUpload returned no upload id"))?;
        Ok(Multipart {
            id,
            parts: Vec::new(),
        })
    }

    async fn part(&mut self, to: &Destination<'_>, bytes: Vec<u8>) -> Result<(), UploadError> {
        let number = self.parts.len() as i32 + 1;
        let out = to
            .client
            .upload_part()
            .bucket(to.bucket)
            .key(to.key)
            .upload_id(&self.id)
            .part_number(number)
            .body(bytes.into())
            .send()
            .await
            .map_err(|e| to.s3_error(e))?;
        self.parts.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag)
                .build(),
        );
        Ok(())
    }

    async fn complete(self, to: &Destination<'_>) -> Result<(), (Self, UploadError)> {
        let parts = aws_sdk_s3::types::CompletedMultipartUpload::builder()
            .set_parts(Some(self.parts.clone()))
            .build();
        let result = to
            .client
            .complete_multipart_upload()
            .bucket(to.bucket)
            .key(to.key)
            .upload_id(&self.id)
            .multipart_upload(parts)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = to.s3_error(e);
                Err((self, e))
            }
        }
    }

    /// Best effort: an abandoned upload is also removed by the bucket's
    /// lifecycle rule for incomplete uploads.
    async fn abort(&self, to: &Destination<'_>) {
        let _ = to
            .client
            .abort_multipart_upload()
            .bucket(to.bucket)
            .key(to.key)
            .upload_id(&self.id)
            .send()
            .await;
    }
}
