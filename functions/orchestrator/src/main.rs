//! Orchestrator Lambda: S3 ObjectCreated -> job of batches -> worker fan-out;
//! prepare-queue messages -> continued prepares.

use bulk_import::handlers::{orchestrator, Deps};
use bulk_import::telemetry;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

/// Records are many small allocations, which mimalloc serves faster than
/// the system allocator (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init_lambda();
    // Configuration and the import definition are checked once, here: a bad
    // one fails the cold start with a message naming the setting.
    let deps = Deps::from_env(None).await?;
    run(service_fn(|event: LambdaEvent<_>| {
        orchestrator::handle_any(&deps, event)
    }))
    .await
}
