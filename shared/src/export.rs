//! Writing a job's imported records back out, in input order, as NDJSON
//! (the CLI's `--export`): batch by batch, so memory stays bounded.

use crate::job::Job;
use crate::schema::Definition;
use crate::store::{JobStore, StoreError};
use std::collections::HashSet;
use tokio::io::{AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the export failed")]
    Write(#[from] std::io::Error),
}

/// Writes every record that was imported (valid and processed), one JSON
/// object per line, in input order. Returns how many were written.
pub async fn export_ndjson<W: AsyncWrite + Unpin>(
    store: &dyn JobStore,
    definition: &Definition,
    job: &Job,
    out: &mut W,
) -> Result<u64, ExportError> {
    let mut written = 0;
    let mut line = Vec::new();
    for index in 0..job.total_batches {
        let failed: HashSet<u64> = store
            .failed_records(&job.id, index)
            .await?
            .into_iter()
            .map(|f| f.line)
            .collect();
        for record in store.load_records(&job.id, index).await? {
            if failed.contains(&record.line) {
                continue;
            }
            // Validation is deterministic: a record that is not failed
            // validated when it was processed.
            if let Ok(valid) = definition.validate(&record) {
                line.clear();
                serde_json::to_writer(&mut line, &valid.values).expect("JSON values serialize");
                line.push(b'\n');
                out.write_all(&line).await?;
                written += 1;
            }
        }
    }
    out.flush().await?;
    Ok(written)
}
