//! `bulkimport run`: the whole pipeline in one process, the way it runs on
//! AWS: the orchestrator handler gets an S3 event (and, when it hands a
//! prepare over near its deadline, the continuation from the prepare queue),
//! worker handlers get SQS messages; pollers stand in for the event source
//! mappings.

use crate::Names;
use anyhow::{bail, Context as _};
use bulk_import::aws::Clients;
use bulk_import::config::{load_definition, Settings};
use bulk_import::dump::dump_ndjson;
use bulk_import::handlers::{orchestrator, Deps};
use bulk_import::job::now_ms;
use bulk_import::local::{context, ensure_resources, s3_put_event, Consumer, Poller, Resources};
use bulk_import::prepare::HANDOFF_MARGIN;
use bulk_import::status::JobStatusView;
use bulk_import::store::dynamodb::DynamoStore;
use bulk_import::store::JobControl;
use clap::Args;
use lambda_runtime::LambdaEvent;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct RunArgs {
    /// CSV or NDJSON file (optionally .gz).
    file: PathBuf,
    /// Import definition (JSON).
    #[arg(long)]
    definition: PathBuf,
    /// Concurrent worker pollers.
    #[arg(long, default_value_t = 4)]
    workers: u32,
    /// Write the imported records, in input order, as NDJSON.
    #[arg(long)]
    export: Option<PathBuf>,
    /// Object key to upload to (default: uploads/<run id>/<file name>).
    #[arg(long)]
    key: Option<String>,
    /// Simulated worker function timeout, seconds.
    #[arg(long, default_value_t = 300)]
    invocation_timeout: u64,
    /// Simulated orchestrator function timeout, seconds (more than the 30 s
    /// hand-off margin). A prepare that takes longer hands over and continues
    /// from the prepare queue.
    #[arg(long, default_value_t = 900)]
    orchestrator_timeout: u64,
    /// Batch lease, seconds.
    #[arg(long, default_value_t = 60)]
    lease: u64,
    /// Give up if the job has not finished after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// EventBridge bus to put job events on (else they are only logged).
    #[arg(long, env = "EVENT_BUS_NAME")]
    event_bus: Option<String>,
}

pub async fn run(names: &Names, args: RunArgs) -> anyhow::Result<()> {
    let clients = Clients::load().await;
    let definition_path = args.definition.to_string_lossy().into_owned();
    let definition = load_definition(&definition_path, &clients.s3).await?;
    let invocation_timeout = Duration::from_secs(args.invocation_timeout);
    let orchestrator_timeout = Duration::from_secs(args.orchestrator_timeout);
    if orchestrator_timeout <= HANDOFF_MARGIN {
        // Every invocation would hand over before its first batch.
        bail!(
            "--orchestrator-timeout must exceed the hand-off margin ({} s)",
            HANDOFF_MARGIN.as_secs()
        );
    }
    let resources = Resources {
        bucket: names.bucket.clone(),
        queue: names.queue.clone(),
        state_table: names.state_table.clone(),
        target_table: names.target_table.clone(),
        target_key: definition.key_field.clone().unwrap_or_else(|| "id".into()),
        visibility_timeout: invocation_timeout + Duration::from_secs(30),
        prepare_visibility_timeout: orchestrator_timeout + Duration::from_secs(30),
    };
    let created = ensure_resources(&clients, &resources)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;

    let file_name = args
        .file
        .file_name()
        .context("FILE has no file name")?
        .to_string_lossy()
        .into_owned();
    let key = args
        .key
        .clone()
        .unwrap_or_else(|| format!("uploads/{}/{file_name}", now_ms()));
    let body = aws_sdk_s3::primitives::ByteStream::from_path(&args.file)
        .await
        .with_context(|| format!("reading {}", args.file.display()))?;
    let put = clients
        .s3
        .put_object()
        .bucket(&resources.bucket)
        .key(&key)
        .body(body)
        .send()
        .await?;
    let etag = put
        .e_tag()
        .context("PutObject returned no ETag")?
        .to_owned();
    let size = std::fs::metadata(&args.file)?.len() as i64;

    let settings = Settings {
        target_table: Some(resources.target_table.clone()),
        max_workers: args.workers,
        lease: Duration::from_secs(args.lease),
        deadline_margin: Duration::from_secs(20).min(invocation_timeout / 4),
        retention_days: 1,
        prepare_queue_url: Some(created.prepare_queue_url.clone()),
        event_bus_name: args.event_bus.clone(),
        ..Settings::new(&resources.state_table, &created.queue_url, &definition_path)
    };
    let deps = Deps::new(&settings, &clients, None).await?;
    // Status polling gets its own store so its reads are not billed to the job.
    let watcher = DynamoStore::new(
        clients.dynamodb.clone(),
        &resources.state_table,
        !clients.emulated,
    );

    let started = Instant::now();
    let event = s3_put_event(&resources.bucket, &key, &etag, put.version_id(), size);
    let job_id = orchestrator::source_of(deps.versions.as_ref(), &event.records[0], 0)
        .await?
        .job_id();
    // The orchestrator runs alongside the workers, as on AWS: batches are
    // claimable as soon as they are written.
    let orchestrator_failed = AtomicBool::new(false);
    // When prepare was first seen finished: by the orchestrator's return, or
    // by the pollers when a continuation finished it.
    let prepared_ms = AtomicU64::new(u64::MAX);
    let orchestrate = async {
        let prepared = orchestrator::handle(
            &deps,
            LambdaEvent::new(event, context(orchestrator_timeout)),
        )
        .await
        .inspect_err(|_| orchestrator_failed.store(true, Ordering::SeqCst))?;
        let first = prepared
            .into_iter()
            .next()
            .context("the orchestrator handled no record")?;
        let ms = started.elapsed().as_millis() as u64;
        if first.outcome == "handed-off" {
            eprintln!("job {job_id}: handed over after {ms} ms; continuing from the prepare queue");
        } else {
            prepared_ms.fetch_min(ms, Ordering::SeqCst);
            eprintln!(
                "job {job_id}: {} ({} records, {} batches) in {ms} ms",
                first.outcome, first.total_records, first.total_batches
            );
        }
        Ok::<_, anyhow::Error>(())
    };

    // The same bar as `status --watch`.
    let bar = crate::jobs::progress_bar();
    let deadline = started + Duration::from_secs(args.timeout);
    // The workers, and the orchestrator on the prepare queue (last).
    let consumers = (0..args.workers)
        .map(|_| Consumer::Worker)
        .chain([Consumer::Orchestrator]);
    let pollers = consumers.map(|consumer| {
        let (queue_url, invocation_timeout) = match consumer {
            Consumer::Worker => (&created.queue_url, invocation_timeout),
            Consumer::Orchestrator => (&created.prepare_queue_url, orchestrator_timeout),
        };
        let poller = Poller {
            sqs: clients.sqs.clone(),
            queue_url: queue_url.clone(),
            deps: deps.clone(),
            consumer,
            invocation_timeout,
        };
        let (watcher, job, bar, orchestrator_failed, prepared_ms) =
            (&watcher, &job_id, &bar, &orchestrator_failed, &prepared_ms);
        async move {
            poller
                .run_until(|| async move {
                    match watcher.get_job(job).await {
                        Ok(Some(j)) => {
                            if j.prepared || j.status.is_final() {
                                let ms = started.elapsed().as_millis() as u64;
                                prepared_ms.fetch_min(ms, Ordering::SeqCst);
                            }
                            crate::jobs::show(bar, &JobStatusView::of(&j, now_ms()));
                            j.status.is_final()
                                || Instant::now() > deadline
                                || orchestrator_failed.load(Ordering::SeqCst)
                        }
                        _ => Instant::now() > deadline,
                    }
                })
                .await
        }
    });
    let (orchestrated, polled) = tokio::join!(orchestrate, futures::future::join_all(pollers));
    orchestrated?;
    let stats = polled
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!(e))?;
    let continuations = stats
        .last()
        .map_or(0, |orchestrator| orchestrator.invocations);
    bar.finish_and_clear();

    let job = watcher.get_job(&job_id).await?.context("job vanished")?;
    if !job.status.is_final() {
        bail!("job {job_id} did not finish within {} s", args.timeout);
    }
    if let Some(path) = &args.export {
        let mut out = tokio::io::BufWriter::new(tokio::fs::File::create(path).await?);
        let dumped = dump_ndjson(&watcher, &definition, &job, &mut out).await?;
        eprintln!("{dumped} to {}", path.display());
    }
    let mut summary = serde_json::to_value(job.summary(now_ms()))?;
    let prepared_ms = prepared_ms.load(Ordering::SeqCst);
    summary["prepareMs"] = (prepared_ms != u64::MAX).then_some(prepared_ms).into();
    summary["prepareInvocations"] = (1 + continuations).into();
    summary["wallMs"] = (started.elapsed().as_millis() as u64).into();
    println!("{summary}");
    Ok(())
}
