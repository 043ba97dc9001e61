//! Finding and restarting stalled jobs.

use crate::handlers::Deps;
use serde::Serialize;

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    pub active_jobs: u64,
    pub refanned: u64,
    pub prepares_resumed: u64,
    pub finalized: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

pub async fn sweep(deps: &Deps) -> Result<SweepReport, SweepError> {
    let _ = deps;
    Ok(SweepReport::default())
}
