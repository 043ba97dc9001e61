//! Configuration from the environment, read and checked once at cold start:
//! a missing or malformed setting fails the function at init with a message
//! naming the variable.

use crate::schema::{Definition, DefinitionError};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {var}={value:?}: {message}")]
    Invalid {
        var: &'static str,
        value: String,
        message: String,
    },
    #[error("{what} {location}: cannot be read")]
    Unreadable {
        /// "import definition" or "routes file".
        what: &'static str,
        location: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("set one of IMPORT_DEFINITION and ROUTES, not both")]
    DefinitionAndRoutes,
    #[error(transparent)]
    Routes(#[from] crate::routes::RoutesError),
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    /// The definition's throughput cap, or the deployment's default for
    /// it, leaves too little time to write a batch.
    #[error(transparent)]
    Cap(#[from] crate::throttle::CapError),
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// `STATE_TABLE`: jobs, batches and staged records.
    pub state_table: String,
    /// `QUEUE_URL`: the worker fan-out queue.
    pub queue_url: String,
    /// `TARGET_TABLE`: where the built-in processor upserts records.
    pub target_table: Option<String>,
    /// `EVENT_BUS_NAME`: the EventBridge bus (name or ARN) job events go
    /// to; without it they are only logged.
    pub event_bus_name: Option<String>,
    /// `METRICS_NAMESPACE` (`BulkImport`): CloudWatch namespace of the
    /// metrics the functions log (embedded metric format).
    pub metrics_namespace: String,
    /// `PREPARE_QUEUE_URL`: where a prepare handed over near the deadline
    /// is continued from (the orchestrator consumes it); without it, the
    /// next sweep resumes such a prepare.
    pub prepare_queue_url: Option<String>,
    /// `REPORT_BUCKET`: where error reports go (default: the upload bucket).
    pub report_bucket: Option<String>,
    /// `REPORT_PREFIX` (`reports/`): key prefix of error reports.
    pub report_prefix: String,
    /// `IMPORT_DEFINITION`: a file path or `s3://bucket/key`; empty when
    /// `routes` is given.
    pub definition: String,
    /// `ROUTES`: a routes file (path or `s3://bucket/key`) mapping upload
    /// prefixes to definitions, instead of one `IMPORT_DEFINITION`.
    pub routes: Option<String>,
    /// `MAX_WORKERS` (10): worker messages per job.
    pub max_workers: u32,
    /// `LEASE_SECONDS` (60): batch claim lease, renewed while working.
    pub lease: Duration,
    /// `PREPARE_LEASE_SECONDS` (60): how long a silent orchestrator keeps a job.
    pub prepare_lease: Duration,
    /// `DEADLINE_MARGIN_SECONDS` (20): stop claiming this long before the
    /// Lambda deadline.
    pub deadline_margin: Duration,
    /// `RETENTION_DAYS` (30): state items expire (TTL) this long after the job
    /// started.
    pub retention_days: u32,
    /// `MAX_WRITE_UNITS_PER_SECOND` (0: none): the throughput cap of jobs
    /// whose definition sets no `maxWriteUnitsPerSecond`.
    pub max_write_units_per_second: u32,
}

fn var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn required(name: &'static str) -> Result<String, ConfigError> {
    var(name).ok_or(ConfigError::Missing(name))
}

fn number<T: std::str::FromStr>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
            var: name,
            value: v,
            message: e.to_string(),
        }),
    }
}

impl Settings {
    /// Settings with every default, for local runs and tests.
    pub fn new(
        state_table: impl Into<String>,
        queue_url: impl Into<String>,
        definition: impl Into<String>,
    ) -> Settings {
        Settings {
            state_table: state_table.into(),
            queue_url: queue_url.into(),
            target_table: None,
            event_bus_name: None,
            metrics_namespace: crate::metrics::DEFAULT_NAMESPACE.into(),
            prepare_queue_url: None,
            report_bucket: None,
            report_prefix: "reports/".into(),
            definition: definition.into(),
            routes: None,
            max_workers: 10,
            lease: Duration::from_secs(60),
            prepare_lease: Duration::from_secs(60),
            deadline_margin: Duration::from_secs(20),
            retention_days: 30,
            max_write_units_per_second: 0,
        }
    }

    pub fn from_env() -> Result<Settings, ConfigError> {
        let settings = Settings {
            state_table: required("STATE_TABLE")?,
            queue_url: required("QUEUE_URL")?,
            target_table: var("TARGET_TABLE"),
            event_bus_name: var("EVENT_BUS_NAME"),
            metrics_namespace: var("METRICS_NAMESPACE")
                .unwrap_or_else(|| crate::metrics::DEFAULT_NAMESPACE.into()),
            prepare_queue_url: var("PREPARE_QUEUE_URL"),
            report_bucket: var("REPORT_BUCKET"),
            report_prefix: var("REPORT_PREFIX").unwrap_or_else(|| "reports/".into()),
            definition: match var("ROUTES") {
                None => required("IMPORT_DEFINITION")?,
                Some(_) if var("IMPORT_DEFINITION").is_some() => {
                    return Err(ConfigError::DefinitionAndRoutes)
                }
                Some(_) => String::new(),
            },
            routes: var("ROUTES"),
            max_workers: number("MAX_WORKERS", 10)?,
            lease: Duration::from_secs(number("LEASE_SECONDS", 60)?),
            prepare_lease: Duration::from_secs(number("PREPARE_LEASE_SECONDS", 60)?),
            deadline_margin: Duration::from_secs(number("DEADLINE_MARGIN_SECONDS", 20)?),
            retention_days: number("RETENTION_DAYS", 30)?,
            max_write_units_per_second: number("MAX_WRITE_UNITS_PER_SECOND", 0)?,
        };
        if settings.max_workers == 0 {
            return Err(ConfigError::Invalid {
                var: "MAX_WORKERS",
                value: "0".into(),
                message: "must be at least 1".into(),
            });
        }
        if settings.lease < Duration::from_secs(3) {
            return Err(ConfigError::Invalid {
                var: "LEASE_SECONDS",
                value: settings.lease.as_secs().to_string(),
                message: "must be at least 3".into(),
            });
        }
        Ok(settings)
    }
}

/// The deployment's routes: those of the routes file (`ROUTES`), else one
/// route to the one definition (`IMPORT_DEFINITION`).
pub async fn load_routes(
    settings: &Settings,
    s3: &aws_sdk_s3::Client,
) -> Result<crate::routes::Routes, ConfigError> {
    match &settings.routes {
        Some(location) => crate::routes::Routes::load(location, s3).await,
        None => Ok(crate::routes::Routes::single(
            load_definition(&settings.definition, s3).await?,
        )),
    }
}

/// Reads a configuration file from a path or an `s3://bucket/key` URI;
/// `var` names the setting in errors.
pub(crate) async fn read_text(
    location: &str,
    var: &'static str,
    s3: &aws_sdk_s3::Client,
) -> Result<String, ConfigError> {
    let what = if var == "ROUTES" {
        "routes file"
    } else {
        "import definition"
    };
    let unreadable = |e: Box<dyn std::error::Error + Send + Sync>| ConfigError::Unreadable {
        what,
        location: location.to_owned(),
        source: e,
    };
    if let Some(rest) = location.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').ok_or_else(|| ConfigError::Invalid {
            var,
            value: location.to_owned(),
            message: "expected s3://bucket/key".into(),
        })?;
        let out = s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| unreadable(e.into()))?;
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| unreadable(e.into()))?
            .into_bytes();
        String::from_utf8(bytes.to_vec()).map_err(|e| unreadable(e.into()))
    } else {
        let path = location.strip_prefix("file://").unwrap_or(location);
        tokio::fs::read_to_string(path)
            .await
            .map_err(|e| unreadable(e.into()))
    }
}

/// Loads the import definition from a path or an `s3://bucket/key` URI.
/// Its kind, unless it names one, is its file's name without the
/// extension (`users` for `users.json`).
pub async fn load_definition(
    location: &str,
    s3: &aws_sdk_s3::Client,
) -> Result<Definition, ConfigError> {
    let text = read_text(location, "IMPORT_DEFINITION", s3).await?;
    let mut definition = Definition::from_json(&text, location)?;
    if definition.kind.is_none() {
        definition.kind = crate::routes::file_stem(location);
    }
    Ok(definition)
}
