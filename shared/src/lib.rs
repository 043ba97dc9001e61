//! Distributed bulk import for AWS serverless.
//!
//! An uploaded CSV / NDJSON object becomes a *job* of *batches* in DynamoDB
//! (`prepare`), which many workers claim, process and commit in parallel
//! (`process`); whoever commits the last batch finalizes the job exactly once.
//! Lambda entrypoints are thin wrappers over [`handlers`].

pub mod api;
pub mod aws;
pub mod check;
pub mod clock;
pub mod config;
pub mod dump;
pub mod events;
#[cfg(any(test, feature = "testing"))]
pub mod faults;
pub mod finalize;
pub mod handlers;
pub mod job;
#[cfg(any(test, feature = "testing"))]
pub mod local;
pub mod locate;
pub mod metrics;
pub mod objects;
pub mod pinned;
pub mod ports;
pub mod prepare;
pub mod process;
pub mod processor;
pub mod queue;
pub mod report;
pub mod retry;
pub mod rng;
pub mod routes;
pub mod schema;
#[cfg(feature = "testing")]
pub mod sim;
pub mod source;
pub mod status;
pub mod steer;
pub mod store;
pub mod sweep;
pub mod telemetry;
pub mod throttle;
pub mod upload;

pub use job::{JobId, JobStatus, JobSummary};
pub use processor::{BatchContext, ProcessContext, ProcessError, RecordProcessor, WriteCost};
pub use schema::{Definition, FieldValue, ValidRecord};
