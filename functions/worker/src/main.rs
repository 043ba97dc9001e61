//! Worker Lambda: SQS `{jobId}` messages -> claim, process and commit batches.

use bulk_import::handlers::{worker, Deps};
use bulk_import::telemetry;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init_lambda();
    let deps = Deps::from_env(None).await?;
    // Workers need a processor (the built-in one needs TARGET_TABLE).
    deps.require_processor()?;
    run(service_fn(|event: LambdaEvent<_>| {
        worker::handle(&deps, event)
    }))
    .await
}
