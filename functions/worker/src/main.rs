//! Worker Lambda: SQS `{jobId}` messages -> claim, process and commit batches.

use bulk_import::handlers::{worker, Deps};
use bulk_import::telemetry;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

/// Records are many small allocations, which mimalloc serves faster than
/// the system allocator (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init_lambda();
    let deps = Deps::from_env(None).await?;
    // Workers need a processor for every route (the built-in one needs
    // TARGET_TABLE).
    deps.require_processors()?;
    run(service_fn(|event: LambdaEvent<_>| {
        worker::handle(&deps, event)
    }))
    .await
}
