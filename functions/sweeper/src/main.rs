//! Sweeper Lambda (scheduled): restarts jobs whose workers or orchestrator died.

use bulk_import::handlers::{sweeper, Deps};
use bulk_import::telemetry;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init_lambda();
    let deps = Deps::from_env(None).await?;
    run(service_fn(|event: LambdaEvent<_>| {
        sweeper::handle(&deps, event)
    }))
    .await
}
