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
use crate::config::{load_definition, ConfigError, Settings};
use crate::events::EventBridgeEvents;
use crate::metrics::{EmfMetrics, MetricsSink, NoMetrics};
use crate::objects::S3Objects;
use crate::prepare::PrepareSettings;
use crate::process::WorkerSettings;
use crate::processor::registry::{self, Deployment};
use crate::processor::RecordProcessor;
use crate::queue::{PrepareQueue, SqsQueue};
use crate::report::S3Reports;
use crate::rng::Rng;
use crate::routes::Routes;
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
        // One definition for every object, for now: the deployment's routes
        // are that one route.
        let definition = load_definition(&settings.definition, &clients.s3).await?;
        // Where the definition meets the deployment's default cap: refuse,
        // at cold start, a cap under which a batch would never finish
        // (so no orchestrator pins such a definition to a job).
        crate::throttle::check_cap(
            &definition,
            settings.max_write_units_per_second,
            &settings.definition,
        )?;
        let (clock, rng) = (Clock::system(), Rng::from_entropy());
        // A processor given in code (a worker of your own) wins over the
        // one the definition names.
        let processor = match processor {
            Some(p) => Some(p),
            None => registry::build(&Deployment {
                definition: &definition,
                settings,
                clients,
                clock: &clock,
                rng: &rng,
            })?,
        };
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
            processor,
            routes: Arc::new(Routes::single(definition)),
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
    /// Workers need a processor: fail at cold start, not per message.
    pub fn require_processor(&self) -> Result<Arc<dyn RecordProcessor>, ConfigError> {
        self.processor
            .clone()
            .ok_or(ConfigError::Missing("TARGET_TABLE"))
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
