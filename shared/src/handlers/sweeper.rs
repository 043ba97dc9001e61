//! Scheduled sweeper: restarts jobs whose workers or orchestrator died
//! (see `sweep`).

use super::Deps;
use crate::sweep::{SweepError, SweepReport};
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use lambda_runtime::LambdaEvent;

pub async fn handle(
    deps: &Deps,
    event: LambdaEvent<EventBridgeEvent>,
) -> Result<SweepReport, SweepError> {
    let deadline = super::deadline_of(&deps.clock, event.context.deadline);
    let report = deps
        .sweeper()
        .sweep(&format!("sweeper:{}", event.context.request_id), deadline)
        .await?;
    tracing::info!(
        active = report.active_jobs,
        refanned = report.refanned,
        resumed = report.prepares_resumed,
        finalized = report.finalized,
        events_sent = report.events_sent,
        failed = report.failed,
        "sweep done"
    );
    Ok(report)
}

impl From<SweepError> for lambda_runtime::Diagnostic {
    fn from(e: SweepError) -> Self {
        super::diagnostic("SweepFailed", &e)
    }
}
