//! `bulkimport worker`: a long-running worker process fed from the SQS
//! queue, the way the event source mapping feeds the worker Lambda. Used to
//! run many workers as separate processes (and to kill them, in chaos runs).

use crate::Names;
use bulk_import::aws::Clients;
use bulk_import::config::Settings;
use bulk_import::handlers::Deps;
use bulk_import::job::JobId;
use bulk_import::local::{Consumer, Poller};
use bulk_import::store::dynamodb::DynamoStore;
use bulk_import::store::JobControl;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct WorkerArgs {
    /// Import definition (JSON).
    #[arg(long)]
    definition: PathBuf,
    /// Exit once this job is final (default: run until killed).
    #[arg(long)]
    job: Option<String>,
    /// Batch lease, seconds.
    #[arg(long, default_value_t = 60)]
    lease: u64,
    /// Simulated function timeout of each invocation, seconds.
    #[arg(long, default_value_t = 300)]
    invocation_timeout: u64,
    /// EventBridge bus for job events (else only logged).
    #[arg(long, env = "EVENT_BUS_NAME")]
    event_bus: Option<String>,
}

pub async fn run(names: &Names, args: WorkerArgs) -> anyhow::Result<()> {
    let clients = Clients::load().await;
    let queue_url = clients
        .sqs
        .get_queue_url()
        .queue_name(&names.queue)
        .send()
        .await?
        .queue_url
        .unwrap_or_default();
    let timeout = Duration::from_secs(args.invocation_timeout);
    let settings = Settings {
        target_table: Some(names.target_table.clone()),
        event_bus_name: args.event_bus.clone(),
        lease: Duration::from_secs(args.lease),
        deadline_margin: Duration::from_secs(20).min(timeout / 4),
        retention_days: 1,
        ..Settings::new(
            &names.state_table,
            &queue_url,
            args.definition.to_string_lossy(),
        )
    };
    let deps = Deps::new(&settings, &clients, None).await?;
    let watcher = DynamoStore::new(
        clients.dynamodb.clone(),
        &names.state_table,
        !clients.emulated,
    );
    let job = args.job.map(JobId::new);
    let poller = Poller {
        sqs: clients.sqs.clone(),
        queue_url,
        deps,
        consumer: Consumer::Worker,
        invocation_timeout: timeout,
    };
    let stats = poller
        .run_until(|| async {
            match &job {
                Some(job) => {
                    matches!(watcher.get_job(job).await, Ok(Some(j)) if j.status.is_final())
                }
                None => false,
            }
        })
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    eprintln!(
        "worker done: {} invocations, {} messages",
        stats.invocations, stats.messages
    );
    Ok(())
}
