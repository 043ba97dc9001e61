//! `bulkimport jobs` and `bulkimport status`: find a job and see how far it
//! is, against the emulator or AWS alike (the same store the functions use).

use crate::Names;
use anyhow::{bail, Context as _};
use bulk_import::aws::Clients;
use bulk_import::clock::Clock;
use bulk_import::job::{now_ms, JobId, JobStatus};
use bulk_import::status::JobStatusView;
use bulk_import::store::dynamodb::DynamoStore;
use bulk_import::store::JobControl;
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// The command line's clock: the system's (it runs no simulation).
static SYSTEM: Clock = Clock::system();

/// The deployment's state table; what a retry writes expires after
/// `RETENTION_DAYS` (30 by default), as the functions' writes do.
fn store(names: &Names, clients: &Clients) -> DynamoStore {
    let retention = std::env::var("RETENTION_DAYS")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(30);
    DynamoStore::new(
        clients.dynamodb.clone(),
        &names.state_table,
        !clients.emulated,
    )
    .with_retention_days(retention)
}

async fn job_of(store: &DynamoStore, id: &JobId) -> anyhow::Result<bulk_import::job::Job> {
    store
        .get_job(id)
        .await?
        .with_context(|| format!("no job {id}"))
}

/// The definition the job runs on (pinned to it when it was created).
async fn definition_of(store: &DynamoStore, id: &JobId) -> anyhow::Result<bulk_import::Definition> {
    let pinned = store
        .pinned_definition(id)
        .await?
        .with_context(|| format!("job {id} has no pinned definition"))?;
    Ok(bulk_import::Definition::from_json(
        &pinned,
        &format!("pinned to job {id}"),
    )?)
}

/// A job id, or `s3://bucket/key`: the job of the object's current version
/// (its version id, or on an unversioned bucket its ETag and Last-Modified
/// time).
pub async fn resolve(clients: &Clients, job: &str) -> anyhow::Result<JobId> {
    let objects = bulk_import::objects::S3Objects::new(clients.s3.clone());
    Ok(bulk_import::locate::job_id(&objects, job).await?)
}

/// One line per job, newest first.
pub async fn list(
    names: &Names,
    status: Option<JobStatus>,
    kind: Option<&str>,
    limit: usize,
) -> anyhow::Result<()> {
    let clients = Clients::load().await;
    let store = store(names, &clients);
    let now = now_ms();
    println!(
        "{:<32}  {:<16}  {:<21}  {:>4}  {:>10}  {:>8}  SOURCE",
        "JOB", "KIND", "STATUS", "%", "PROCESSED", "FAILED"
    );
    for id in store.list_jobs(status, kind, limit).await? {
        let Some(job) = store.get_job(&id).await? else {
            continue;
        };
        let v = JobStatusView::of(&job, now);
        println!(
            "{:<32}  {:<16}  {:<21}  {:>4}  {:>10}  {:>8}  {}",
            v.job_id,
            v.kind.as_deref().unwrap_or("-"),
            v.status,
            v.progress,
            v.processed,
            v.failed,
            v.source
        );
    }
    Ok(())
}

/// The first `limit` failed records of a job, in input order, as CSV
/// (line, field, value, message; one row per problem).
pub async fn errors(names: &Names, job: &str, limit: usize) -> anyhow::Result<()> {
    let clients = Clients::load().await;
    let store = store(names, &clients);
    let id = resolve(&clients, job).await?;
    let job = job_of(&store, &id).await?;
    let mut out = csv_async::AsyncWriter::from_writer(tokio::io::stdout());
    out.write_record(["line", "field", "value", "message"])
        .await?;
    let mut rows = 0;
    'batches: for batch in 0..job.total_batches.max(job.batches_ready) {
        for record in store.failed_records(&id, batch).await? {
            for issue in &record.issues {
                if rows == limit {
                    break 'batches;
                }
                out.write_record([
                    record.line.to_string().as_str(),
                    issue.field.as_deref().unwrap_or_default(),
                    issue.value.as_deref().unwrap_or_default(),
                    &issue.message,
                ])
                .await?;
                rows += 1;
            }
        }
    }
    out.flush().await?;
    Ok(())
}

/// The error report of a job, as its end writes it to S3: each failed row as
/// it was in the file, then line, field and reason (to `out`, or standard
/// output). A fixed copy imports as a new file with the same definition.
pub async fn report(names: &Names, job: &str, out: Option<String>) -> anyhow::Result<()> {
    let clients = Clients::load().await;
    let store = store(names, &clients);
    let id = resolve(&clients, job).await?;
    let job = job_of(&store, &id).await?;
    let definition = definition_of(&store, &id).await?;
    match out {
        Some(path) => {
            let file = tokio::fs::File::create(&path)
                .await
                .with_context(|| format!("creating {path}"))?;
            let mut w = tokio::io::BufWriter::new(file);
            bulk_import::report::write_csv(&job, &definition, &store, &mut w).await?;
        }
        None => {
            let mut w = tokio::io::BufWriter::new(tokio::io::stdout());
            bulk_import::report::write_csv(&job, &definition, &store, &mut w).await?;
        }
    }
    Ok(())
}

/// Stops a job: prepare publishes nothing more, workers claim nothing more
/// (each finishes the batch in hand), and the job ends ABORTED once, with
/// its error report and `job.aborted` event.
pub async fn abort(
    names: &Names,
    job: &str,
    reason: &str,
    event_bus: Option<String>,
) -> anyhow::Result<i32> {
    let clients = Clients::load().await;
    let store = store(names, &clients);
    let id = resolve(&clients, job).await?;
    let definition = definition_of(&store, &id).await?;
    let events = bulk_import::events::EventBridgeEvents {
        client: clients.eventbridge.clone(),
        bus: event_bus,
    };
    let reports = bulk_import::report::S3Reports::new(
        clients.s3.clone(),
        Some(names.bucket.clone()),
        "reports/",
    );
    // The command line keeps stdout for its own output: no metrics.
    let finalizer = bulk_import::finalize::Finalizer::new(
        &store,
        &events,
        &reports,
        &bulk_import::metrics::NoMetrics,
        &definition,
        &SYSTEM,
    );
    // No time limit here: the report and the event follow at once.
    let aborted = finalizer.abort_and_settle(&id, reason.to_owned()).await?;
    let job = job_of(&store, &id).await?;
    let view = JobStatusView::of(&job, now_ms());
    println!("{}", serde_json::to_string_pretty(&view)?);
    if !aborted {
        eprintln!("job {id} was already {}", job.status);
        return Ok(1);
    }
    Ok(0)
}

/// The URL of a queue by name, if it exists.
async fn queue_url(clients: &Clients, name: &str) -> anyhow::Result<Option<String>> {
    match clients.sqs.get_queue_url().queue_name(name).send().await {
        Ok(out) => Ok(out.queue_url),
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_queue_does_not_exist()) =>
        {
            Ok(None)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("looking up queue {name}"))),
    }
}

/// Starts a retry round of an ended job: its processing failures and what
/// an abort left unprocessed run again (validation failures stay failed).
/// Prints the reopened job; with `watch`, follows it like `status --watch`.
pub async fn retry(
    names: &Names,
    job: &str,
    max_workers: u32,
    event_bus: Option<String>,
    watch: bool,
) -> anyhow::Result<i32> {
    let clients = Clients::load().await;
    let store = store(names, &clients);
    let id = resolve(&clients, job).await?;
    let work_url = queue_url(&clients, &names.queue)
        .await?
        .with_context(|| format!("no work queue named {}", names.queue))?;
    let work = bulk_import::queue::SqsQueue::new(clients.sqs.clone(), work_url);
    let prepare = match queue_url(&clients, &format!("{}-prepare", names.queue)).await? {
        Some(url) => Some(bulk_import::queue::SqsQueue::new(clients.sqs.clone(), url)),
        None => None,
    };
    let events = bulk_import::events::EventBridgeEvents {
        client: clients.eventbridge.clone(),
        bus: event_bus,
    };
    let steering = bulk_import::steer::Steering {
        store: &store,
        queue: &work,
        prepare_queue: prepare
            .as_ref()
            .map(|q| q as &dyn bulk_import::queue::PrepareQueue),
        events: &events,
        max_workers,
        inline_requeue: true,
        clock: &SYSTEM,
    };
    let started = match steering.retry(&id).await {
        Ok(started) => started,
        Err(
            e @ (bulk_import::steer::SteerError::NotFinal(_)
            | bulk_import::steer::SteerError::NothingToRetry { .. }
            | bulk_import::steer::SteerError::Busy(_)),
        ) => {
            eprintln!("{e}");
            return Ok(1);
        }
        Err(e) => return Err(e.into()),
    };
    // The failed batches go back from here, page by page, however many.
    let mut started = started;
    if started.requeuing {
        eprintln!("putting the failed batches back…");
        steering.requeue(&id, None).await?;
        started.job = JobControl::get_job(&store, &id)
            .await?
            .context("the job vanished during its retry")?;
    }
    eprintln!(
        "retry {} of job {id}: {} failed records run again, {} batches never processed{}",
        started.job.retries,
        started.records,
        started.unprocessed,
        if started.resumes_prepare {
            "; reading the file resumes where it stopped"
        } else {
            ""
        }
    );
    if watch {
        return status(names, id.as_str(), true).await;
    }
    let view = JobStatusView::of(&started.job, now_ms());
    println!("{}", serde_json::to_string_pretty(&view)?);
    Ok(0)
}

/// Every imported record of a finished job, in input order, to `out` (or
/// standard output).
pub async fn export(
    names: &Names,
    job: &str,
    format: bulk_import::dump::DumpFormat,
    out: Option<String>,
) -> anyhow::Result<()> {
    let clients = Clients::load().await;
    let store = store(names, &clients);
    let id = resolve(&clients, job).await?;
    let job = job_of(&store, &id).await?;
    if !job.status.is_final() {
        bail!(
            "job {id} is still {}: export it once it has ended",
            job.status
        );
    }
    let definition = definition_of(&store, &id).await?;
    let written = match out.as_deref() {
        Some(url) if url.starts_with("s3://") => {
            let (bucket, key) = url["s3://".len()..]
                .split_once('/')
                .filter(|(b, k)| !b.is_empty() && !k.is_empty())
                .with_context(|| format!("{url}: expected s3://bucket/key"))?;
            let to = bulk_import::upload::Destination {
                client: &clients.s3,
                bucket,
                key,
                content_type: format.content_type(),
            };
            // The export streams through a pipe into the upload: memory
            // holds one part, whatever the job's size.
            let (writer, reader) = tokio::io::duplex(1 << 16);
            let export = async {
                let mut w = tokio::io::BufWriter::new(writer);
                let n = bulk_import::dump::dump(&store, &definition, &job, format, &mut w).await?;
                w.shutdown().await?;
                anyhow::Ok(n)
            };
            let upload = async {
                to.upload(reader, bulk_import::upload::PART_BYTES)
                    .await
                    .map_err(anyhow::Error::from)
            };
            let (written, _) = tokio::try_join!(export, upload)?;
            written
        }
        Some(path) => {
            let file = tokio::fs::File::create(path)
                .await
                .with_context(|| format!("creating {path}"))?;
            let mut w = tokio::io::BufWriter::new(file);
            bulk_import::dump::dump(&store, &definition, &job, format, &mut w).await?
        }
        None => {
            let mut w = tokio::io::BufWriter::new(tokio::io::stdout());
            bulk_import::dump::dump(&store, &definition, &job, format, &mut w).await?
        }
    };
    eprintln!("{written}");
    Ok(())
}

/// Exit code for a final status: 0 completed, 2 completed with errors,
/// 1 failed.
pub fn exit_code(status: JobStatus) -> i32 {
    match status {
        JobStatus::Completed | JobStatus::Processing => 0,
        JobStatus::CompletedWithErrors => 2,
        JobStatus::Failed => 1,
        JobStatus::Aborted => 3,
    }
}

/// Prints the job's status as JSON; with `watch`, a progress bar until the
/// job is final, then the JSON. Returns the exit code.
pub async fn status(names: &Names, job: &str, watch: bool) -> anyhow::Result<i32> {
    let clients = Clients::load().await;
    let store = store(names, &clients);
    let id = resolve(&clients, job).await?;
    let read = || async {
        store
            .get_job(&id)
            .await?
            .with_context(|| format!("no job {id}"))
    };
    let mut job = read().await?;
    if watch {
        let bar = progress_bar();
        while !job.status.is_final() {
            show(&bar, &JobStatusView::of(&job, now_ms()));
            tokio::time::sleep(Duration::from_secs(1)).await;
            job = read().await?;
        }
        show(&bar, &JobStatusView::of(&job, now_ms()));
        bar.finish();
    }
    let view = JobStatusView::of(&job, now_ms());
    println!("{}", serde_json::to_string_pretty(&view)?);
    Ok(if watch { exit_code(job.status) } else { 0 })
}

/// The bar `status --watch` and `run` show: percent by the phases'
/// convention, then phase, counts, rate and ETA.
pub fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(100);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos:>3}% {msg}").expect("valid template"),
    );
    bar
}

/// The progress bar's state: the same figures `status` prints.
pub fn show(bar: &ProgressBar, v: &JobStatusView) {
    bar.set_position(u64::from(v.progress));
    let eta = v
        .eta_seconds
        .map(|s| format!(", ETA {s}s"))
        .unwrap_or_default();
    let read = match v.total_records {
        Some(_) => String::new(),
        None => format!("{} read, ", v.records_read),
    };
    bar.set_message(format!(
        "{:?}: {read}{} processed, {} failed, {}/s{eta}",
        v.phase, v.processed, v.failed, v.records_per_second
    ));
}
