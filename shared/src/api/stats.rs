//! Figures across jobs at a bounded cost (no Scan): jobs per status from
//! the `jobs` index, counted up to a cap, and records over a window of the
//! most recent jobs. And the health check: one small Query.

use super::{Api, ApiError};
use crate::job::JobStatus;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use std::collections::BTreeMap;

/// Jobs counted per status at most (one Query of the index each).
pub const COUNT_CAP: usize = 1000;
/// The most recent jobs whose records are summed (one read each).
pub const WINDOW: usize = 50;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Jobs per status; a count of `COUNT_CAP` means at least that many.
    pub jobs_by_status: BTreeMap<&'static str, u64>,
    pub count_cap: u64,
    pub recent: RecentStats,
}

/// Records of the most recent jobs (whatever their status).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecentStats {
    /// The window: this many most recent jobs at most.
    pub window: u64,
    /// Jobs in it.
    pub jobs: u64,
    pub processed: u64,
    pub failed: u64,
    /// processed / (processed + failed); null before any record.
    pub success_rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub version: String,
}

impl Api {
    pub(super) async fn stats(&self) -> Result<Stats, ApiError> {
        let mut jobs_by_status = BTreeMap::new();
        for status in JobStatus::ALL {
            let ids = self.store.list_jobs(Some(status), None, COUNT_CAP).await?;
            jobs_by_status.insert(status.as_str(), ids.len() as u64);
        }
        let recent = self.store.list_jobs(None, None, WINDOW).await?;
        let store = self.store.as_ref();
        // Owned ids: a closure over borrowed ones makes the future not Send.
        let jobs: Vec<_> = futures::stream::iter(recent)
            .map(|id| async move { store.get_job(&id).await })
            .buffered(8)
            .try_collect()
            .await?;
        let jobs: Vec<_> = jobs.into_iter().flatten().collect();
        let processed: u64 = jobs.iter().map(|j| j.processed).sum();
        let failed: u64 = jobs.iter().map(|j| j.failed).sum();
        let handled = processed + failed;
        Ok(Stats {
            jobs_by_status,
            count_cap: COUNT_CAP as u64,
            recent: RecentStats {
                window: WINDOW as u64,
                jobs: jobs.len() as u64,
                processed,
                failed,
                success_rate: (handled > 0)
                    .then(|| (processed as f64 / handled as f64 * 10_000.0).round() / 10_000.0),
            },
        })
    }

    /// The state table answers a read (the cheapest the API makes: one
    /// item of the `jobs` index).
    pub(super) async fn health(&self) -> Result<Health, ApiError> {
        match self
            .store
            .list_jobs(Some(JobStatus::Processing), None, 1)
            .await
        {
            Ok(_) => Ok(Health {
                status: "ok",
                version: self.version.clone(),
            }),
            Err(e) => {
                let error = crate::telemetry::error_chain(&e);
                tracing::error!(%error, "health check: the state table did not answer");
                Err(ApiError::Unavailable(
                    "the state table is not reachable".into(),
                ))
            }
        }
    }
}
