//! API Lambda behind an IAM-authenticated function URL: jobs, their
//! failures, abort, stats and health as JSON (docs/openapi.yaml).

use bulk_import::handlers::api;
use bulk_import::telemetry;
use lambda_http::{run, service_fn, Error, Request};

/// Records are many small allocations, which mimalloc serves faster than
/// the system allocator (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init_lambda();
    let api = api::from_env().await?;
    run(service_fn(|request: Request| api::handle(&api, request))).await
}
