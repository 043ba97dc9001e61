//! Sweeper Lambda (scheduled): restarts jobs whose workers or orchestrator died.

use bulk_import::handlers::{sweeper, Deps};
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
    run(service_fn(|event: LambdaEvent<_>| {
        sweeper::handle(&deps, event)
    }))
    .await
}
