//! Scheduled sweeper: makes sure no job stays PROCESSING forever when every
//! worker (or the orchestrator) died. See `sweep`.

use super::Deps;
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use lambda_runtime::LambdaEvent;

/// Runs one sweep over the active jobs.
pub async fn handle(
    deps: &Deps,
    event: LambdaEvent<EventBridgeEvent>,
) -> Result<crate::sweep::SweepReport, lambda_runtime::Error> {
    let _ = event;
    Ok(crate::sweep::sweep(deps).await?)
}
