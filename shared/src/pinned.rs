//! Each job runs on the import definition it was created with: the
//! orchestrator pins the deployment's definition to a new job, and every
//! later phase of that job (a resumed prepare, workers, the sweeper) uses
//! the pinned copy, whatever the deployment says by then. Otherwise a
//! change of `batchSize` or of the field order between a crash and the
//! resume would cut different batches or misread stored values.

use crate::job::JobId;
use crate::schema::{Definition, DefinitionError};
use crate::store::{JobStore, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the definition pinned to job {job} does not load")]
    Invalid {
        job: JobId,
        #[source]
        source: DefinitionError,
    },
}

/// Pinned definitions, parsed once per process and job.
#[derive(Debug, Default)]
pub struct PinnedDefinitions {
    cache: Mutex<HashMap<JobId, Arc<Definition>>>,
}

impl PinnedDefinitions {
    /// Pins `current` to `job` unless a definition is pinned already;
    /// returns the one the job runs on.
    pub async fn pin(
        &self,
        store: &dyn JobStore,
        job: &JobId,
        current: &Definition,
    ) -> Result<Arc<Definition>, PinError> {
        if let Some(d) = self.cached(job) {
            return Ok(d);
        }
        let pinned = store.pin_definition(job, &current.to_json()).await?;
        self.load(job, &pinned)
    }

    /// The definition pinned to `job`; `current` for a job that has none
    /// (created before definitions were pinned).
    pub async fn of(
        &self,
        store: &dyn JobStore,
        job: &JobId,
        current: &Definition,
    ) -> Result<Arc<Definition>, PinError> {
        if let Some(d) = self.cached(job) {
            return Ok(d);
        }
        match store.pinned_definition(job).await? {
            Some(pinned) => self.load(job, &pinned),
            None => {
                tracing::warn!(job_id = %job, "job has no pinned definition; using the deployment's");
                Ok(Arc::new(current.clone()))
            }
        }
    }

    fn cached(&self, job: &JobId) -> Option<Arc<Definition>> {
        self.cache
            .lock()
            .expect("definition cache poisoned")
            .get(job)
            .cloned()
    }

    fn load(&self, job: &JobId, json: &str) -> Result<Arc<Definition>, PinError> {
        let definition =
            Definition::from_json(json, &format!("pinned to job {job}")).map_err(|source| {
                PinError::Invalid {
                    job: job.clone(),
                    source,
                }
            })?;
        let definition = Arc::new(definition);
        self.cache
            .lock()
            .expect("definition cache poisoned")
            .insert(job.clone(), definition.clone());
        Ok(definition)
    }
}
