//! Each job runs on the import definition it was created with: the
//! orchestrator pins the definition its object is routed to (`routes`) to
//! a new job, and every
//! later phase of that job (a resumed prepare, workers, the sweeper) uses
//! the pinned copy, whatever the deployment says by then. Otherwise a
//! change of `batchSize` or of the field order between a crash and the
//! resume would cut different batches or misread stored values.

use crate::job::JobId;
use crate::routes::Routes;
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
    #[error("job {job} has no pinned definition and no route takes its object")]
    Unrouted { job: JobId },
}

/// Pinned definitions, parsed once per process and job.
#[derive(Debug, Default)]
pub struct PinnedDefinitions {
    cache: Mutex<HashMap<JobId, Arc<Definition>>>,
    /// Jobs' creation times, which never change either.
    created: Mutex<HashMap<JobId, i64>>,
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

    /// The definition pinned to `job`; for a job that has none (created
    /// before definitions were pinned), the one its object is routed to now.
    pub async fn of(
        &self,
        store: &dyn JobStore,
        job: &JobId,
        routes: &Routes,
    ) -> Result<Arc<Definition>, PinError> {
        if let Some(d) = self.cached(job) {
            return Ok(d);
        }
        if let Some(pinned) = store.pinned_definition(job).await? {
            return self.load(job, &pinned);
        }
        tracing::warn!(job_id = %job, "job has no pinned definition; using the one its object is routed to");
        let routed = match store.get_job(job).await? {
            // An upload no route took ended at once, with no rows: any
            // definition lays out its (empty) report.
            Some(found) if found.kind.is_none() && found.status.is_final() => {
                return Ok(routes.primary().clone());
            }
            Some(found) => found.source.object().and_then(|o| routes.route(o)),
            // Gone already: whatever reads it next finds nothing either.
            None => Some(routes.primary()),
        };
        let routed = routed.ok_or_else(|| PinError::Unrouted { job: job.clone() })?;
        // Kept like a pinned copy, so the job's later messages read nothing.
        Ok(self.remember(job, routed.clone()))
    }

    /// When `job` was created (0 for a job that is gone), read once per
    /// process: what orders its writes against other jobs'.
    pub async fn created_at(&self, store: &dyn JobStore, job: &JobId) -> Result<i64, PinError> {
        if let Some(at) = self
            .created
            .lock()
            .expect("creation cache poisoned")
            .get(job)
        {
            return Ok(*at);
        }
        let at = store.get_job(job).await?.map_or(0, |j| j.created_at_ms);
        self.created
            .lock()
            .expect("creation cache poisoned")
            .insert(job.clone(), at);
        Ok(at)
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
        Ok(self.remember(job, Arc::new(definition)))
    }

    fn remember(&self, job: &JobId, definition: Arc<Definition>) -> Arc<Definition> {
        self.cache
            .lock()
            .expect("definition cache poisoned")
            .insert(job.clone(), definition.clone());
        definition
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::SourceRef;
    use crate::store::memory::MemoryStore;
    use crate::store::{CreateOutcome, PrepareLease, PrepareStore};

    fn definition(batch_size: usize) -> Definition {
        let json = format!(
            r#"{{"fields": [{{"name": "id", "type": "string"}}], "batchSize": {batch_size}}}"#
        );
        Definition::from_json(&json, "test").unwrap()
    }

    /// A job created without a pinned definition, as before pinning.
    async fn unpinned_job(store: &MemoryStore, key: &str) -> JobId {
        let source = SourceRef {
            bucket: "uploads".into(),
            key: key.into(),
            version: "v1".into(),
        };
        let lease = PrepareLease {
            owner: "orchestrator".into(),
            lease_ms: 60_000,
        };
        let CreateOutcome::Created(job) = store.create_job(&source, &lease, 0).await.unwrap()
        else {
            panic!("the job is new");
        };
        job.id
    }

    #[tokio::test]
    async fn a_pinned_copy_wins_over_the_routes() {
        let store = MemoryStore::new();
        let job = unpinned_job(&store, "users.csv").await;
        let pinned = PinnedDefinitions::default();
        let first = pinned.pin(&store, &job, &definition(7)).await.unwrap();
        assert_eq!(first.batch_size, 7);
        let routes = Routes::single(definition(9));
        let again = PinnedDefinitions::default();
        assert_eq!(again.of(&store, &job, &routes).await.unwrap().batch_size, 7);
    }

    #[tokio::test]
    async fn a_job_with_no_pinned_copy_runs_on_the_definition_its_object_is_routed_to() {
        let store = MemoryStore::new();
        let routed = unpinned_job(&store, "orders/1.csv").await;
        let unrouted = unpinned_job(&store, "users/1.csv").await;
        let routes = Routes::prefixed("orders/", definition(5));
        let pinned = PinnedDefinitions::default();
        let found = pinned.of(&store, &routed, &routes).await.unwrap();
        assert_eq!(found.batch_size, 5);
        // Kept: the job's next message reads neither the store nor the routes.
        let again = Routes::single(definition(9));
        assert_eq!(
            pinned.of(&store, &routed, &again).await.unwrap().batch_size,
            5
        );
        let err = pinned.of(&store, &unrouted, &routes).await.unwrap_err();
        assert!(
            matches!(&err, PinError::Unrouted { job } if *job == unrouted),
            "{err}"
        );
    }
}
