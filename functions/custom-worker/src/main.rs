//! A worker Lambda with its own processor: every valid record is handed to
//! `deliver` instead of the processor its definition names. `make build`
//! packages it as target/lambda/custom-worker/; template.yaml deploys it
//! in place of the built-in worker with `WorkerCode=custom`.

use bulk_import::handlers::{worker, Deps};
use bulk_import::{ProcessContext, ProcessError, RecordProcessor, ValidRecord};
use lambda_runtime::{run, service_fn, Error};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::sync::Arc;

struct Welcome;

#[async_trait::async_trait]
impl RecordProcessor for Welcome {
    async fn process(
        &self,
        record: &ValidRecord,
        _ctx: &ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        let email = record
            .get("email")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ProcessError::permanent("no email"))?;
        deliver(email)
            .await
            .map_err(|e| ProcessError::retryable_from("mail service unavailable", e))
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    bulk_import::telemetry::init_lambda();
    let deps = Deps::from_env(Some(Arc::new(Welcome))).await?;
    run(service_fn(|event| worker::handle(&deps, event))).await
}

/// Stands in for a call to your own service.
async fn deliver(_email: &str) -> Result<(), std::io::Error> {
    Ok(())
}
