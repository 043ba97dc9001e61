//! Lambda handlers as plain async functions over `Deps`, so the function
//! binaries stay a few lines and tests call the handlers directly with
//! events from `events/`.

pub mod api;
pub mod orchestrator;
pub mod sweeper;
pub mod worker;

#[cfg(test)]
mod tests;

use crate::aws::Clients;
use crate::clock::{Clock, Instant};
use crate::config::{load_routes, ConfigError, Settings};
use crate::events::EventBridgeEvents;
use crate::metrics::{EmfMetrics, MetricsSink, NoMetrics};
use crate::objects::S3Objects;
use crate::prepare::PrepareSettings;
use crate::process::WorkerSettings;
use crate::processor::{Processors, RecordProcessor};
use crate::queue::{PrepareQueue, SqsQueue};
use crate::report::S3Reports;
use crate::rng::Rng;
use crate::store::dynamodb::DynamoStore;
use std::sync::Arc;

pub use crate::ports::Deps;

impl Deps {
    /// The standard wiring: DynamoDB store, S3 objects, SQS fan-out,
    /// EventBridge events, and the processor given, else the one the
    /// definition names, built by the processor registry (the built-in
    /// upsert needs `TARGET_TABLE`). For a Lambda function: metrics
    /// go out as EMF lines (stdout is the function's log).
    pub async fn from_env(
        processor: Option<Arc<dyn RecordProcessor>>,
    ) -> Result<Deps, ConfigError> {
        let settings = Settings::from_env()?;
        let clients = Clients::load().await;
        let metrics = Arc::new(EmfMetrics::for_lambda(&settings.metrics_namespace));
        Self::reporting_to(&settings, &clients, processor, metrics).await
    }

    /// The standard wiring reporting no metrics: the command line and the
    /// tests keep stdout for their own output.
    pub async fn new(
        settings: &Settings,
        clients: &Clients,
        processor: Option<Arc<dyn RecordProcessor>>,
    ) -> Result<Deps, ConfigError> {
        Self::reporting_to(settings, clients, processor, Arc::new(NoMetrics)).await
    }

    /// The standard wiring, reporting metrics to `metrics` (the store's
    /// conflicts too), on the system's clock and a source of randomness
    /// seeded from entropy.
    pub async fn reporting_to(
        settings: &Settings,
        clients: &Clients,
        processor: Option<Arc<dyn RecordProcessor>>,
        metrics: Arc<dyn MetricsSink>,
    ) -> Result<Deps, ConfigError> {
        let routes = load_routes(settings, &clients.s3).await?;
        // Where each definition meets the deployment's default cap: refuse,
        // at cold start, a cap under which a batch would never finish
        // (so no orchestrator pins such a definition to a job).
        for definition in routes.definitions() {
            let origin = settings.routes.as_deref().unwrap_or(&settings.definition);
            crate::throttle::check_cap(definition, settings.max_write_units_per_second, origin)?;
        }
        let (clock, rng) = (Clock::system(), Rng::from_entropy());
        // A processor given in code (a worker of your own) wins over the
        // ones the definitions name.
        let processors = match processor {
            Some(p) => Processors::given(p),
            None => Processors::built_from(settings, clients, clock, rng.clone()),
        };
        // A definition whose processor does not build fails every function
        // at cold start, not a job later.
        for definition in routes.definitions() {
            processors.of(definition)?;
        }
        let store = Arc::new(
            DynamoStore::new(
                clients.dynamodb.clone(),
                &settings.state_table,
                !clients.emulated,
            )
            .with_retention_days(settings.retention_days)
            .with_metrics(metrics.clone())
            .with_clock(clock)
            .with_rng(rng.clone()),
        );
        Ok(Deps {
            store: store.clone(),
            throttle: store,
            objects: Arc::new(S3Objects::new(clients.s3.clone())),
            versions: Arc::new(S3Objects::new(clients.s3.clone())),
            queue: Arc::new(SqsQueue::new(clients.sqs.clone(), &settings.queue_url)),
            prepare_queue: settings.prepare_queue_url.as_ref().map(|url| {
                Arc::new(SqsQueue::new(clients.sqs.clone(), url)) as Arc<dyn PrepareQueue>
            }),
            events: Arc::new(EventBridgeEvents {
                client: clients.eventbridge.clone(),
                bus: settings.event_bus_name.clone(),
            }),
            reports: Arc::new(S3Reports::new(
                clients.s3.clone(),
                settings.report_bucket.clone(),
                &settings.report_prefix,
            )),
            metrics,
            processors: Arc::new(processors),
            routes: Arc::new(routes),
            pinned: Arc::default(),
            prepare: PrepareSettings {
                max_workers: settings.max_workers,
                lease_ms: settings.prepare_lease.as_millis() as i64,
                ..PrepareSettings::default()
            },
            worker: WorkerSettings {
                lease: settings.lease,
                deadline_margin: settings.deadline_margin,
                max_write_units_per_second: settings.max_write_units_per_second,
                ..WorkerSettings::default()
            },
            clock,
            rng,
        })
    }
}

impl Deps {
    /// Workers need a processor for every route's definition: fail at cold
    /// start, not per message.
    pub fn require_processors(&self) -> Result<(), ConfigError> {
        for definition in self.routes.definitions() {
            self.processors.require(definition)?;
        }
        Ok(())
    }
}

/// A Lambda error report: a stable `error_type` and the message chain of
/// the error and its sources (never Debug internals).
pub(crate) fn diagnostic(
    error_type: &str,
    error: &dyn std::error::Error,
) -> lambda_runtime::Diagnostic {
    lambda_runtime::Diagnostic {
        error_type: error_type.into(),
        error_message: crate::telemetry::error_chain(error),
    }
}

/// The Lambda deadline as an `Instant` on `clock` (the context gives epoch
/// millis). A deadline already past when the invocation starts is not a
/// real one (local emulators send a fixed placeholder): run without a
/// deadline.
pub(crate) fn deadline_of(clock: &Clock, deadline_ms: u64) -> Option<Instant> {
    let at = clock.instant_at(i64::try_from(deadline_ms).unwrap_or(i64::MAX));
    if at.is_none() && deadline_ms != 0 {
        tracing::warn!(
            deadline_ms,
            "invocation deadline is in the past; ignoring it"
        );
    }
    at
}
