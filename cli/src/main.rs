//! `bulkimport`: run the import pipeline locally against any endpoint
//! (`AWS_ENDPOINT_URL`, e.g. moto server), with the same handlers Lambda runs.

mod check;
mod generate;
mod jobs;
mod run;
mod worker;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "bulkimport", version, about)]
struct Cli {
    #[command(flatten)]
    names: Names,
    #[command(subcommand)]
    command: Command,
}

/// Resource names (the defaults match `make demo`).
#[derive(Args, Clone, Debug)]
pub struct Names {
    #[arg(
        long,
        env = "UPLOAD_BUCKET",
        default_value = "bulk-import-uploads",
        global = true
    )]
    pub bucket: String,
    #[arg(
        long,
        env = "QUEUE_NAME",
        default_value = "bulk-import-work",
        global = true
    )]
    pub queue: String,
    #[arg(
        long,
        env = "STATE_TABLE",
        default_value = "bulk-import-state",
        global = true
    )]
    pub state_table: String,
    #[arg(
        long,
        env = "TARGET_TABLE",
        default_value = "bulk-import-target",
        global = true
    )]
    pub target_table: String,
}

#[derive(Subcommand)]
enum Command {
    /// Upload FILE, run the orchestrator and N concurrent workers until the
    /// job finalizes; print the job summary as the last line (JSON).
    Run(run::RunArgs),
    /// Poll the work queue and run the worker handler on what arrives, like
    /// the Lambda event source mapping, until the job is final (or forever).
    Worker(worker::WorkerArgs),
    /// Jobs, newest first.
    Jobs {
        /// Only jobs in this status (PROCESSING, COMPLETED, COMPLETED_WITH_ERRORS, FAILED).
        #[arg(long)]
        status: Option<bulk_import::JobStatus>,
        /// Only jobs of this kind (the definition's or its route's `kind`).
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// A job's status, progress, rate and ETA (JSON). JOB is a job id or
    /// s3://bucket/key (the job of the object's current version).
    Status {
        job: String,
        /// Show a progress bar until the job is final; the exit code then
        /// says how it ended (0 completed, 2 with errors, 1 failed, 3 aborted).
        #[arg(long)]
        watch: bool,
    },
    /// Stop a job: nothing more is published or claimed; the batches in hand
    /// finish; the job ends ABORTED (exit code 1 if it had already ended).
    Abort {
        job: String,
        #[arg(long, default_value = "aborted by an operator")]
        reason: String,
        /// EventBridge bus for the job.aborted event (else only logged).
        #[arg(long, env = "EVENT_BUS_NAME")]
        event_bus: Option<String>,
    },
    /// Run again what failed in processing (the processor's errors, poison
    /// batches) and what an abort left unprocessed, once the cause is fixed;
    /// validation failures stay failed. The job ends again, once, with a
    /// new report (exit code 1 if there is nothing to retry).
    Retry {
        job: String,
        /// Workers woken at most.
        #[arg(long, env = "MAX_WORKERS", default_value_t = 10)]
        max_workers: u32,
        /// EventBridge bus, for an event the previous round still owes.
        #[arg(long, env = "EVENT_BUS_NAME")]
        event_bus: Option<String>,
        /// Follow the job until it ends, like `status --watch`.
        #[arg(long)]
        watch: bool,
    },
    /// Every imported record of a finished job, in input order (to standard
    /// output unless --out).
    Export {
        job: String,
        /// ndjson, csv or json.
        #[arg(long, default_value = "ndjson")]
        format: bulk_import::dump::DumpFormat,
        /// A file, or s3://bucket/key (streamed up as a multipart upload).
        #[arg(long)]
        out: Option<String>,
    },
    /// A job's failed records as CSV (line, field, value, message; one row
    /// per problem), in input order. JOB is a job id or s3://bucket/key.
    /// With --report, the error report instead: each failed row as it was in
    /// the file, then line, field and reason, to fix and upload again.
    Errors {
        job: String,
        #[arg(long, default_value_t = 100, conflicts_with = "report")]
        limit: usize,
        /// Write the whole error report (as the job's end writes it to S3).
        #[arg(long)]
        report: bool,
        /// Where --report writes (standard output unless given).
        #[arg(long, requires = "report")]
        out: Option<String>,
    },
    /// Create the bucket, work and prepare queues (with their DLQs) and
    /// tables unless they exist; print their names and URLs as JSON.
    Setup {
        /// Key attribute of the target table (the definition's keyField).
        #[arg(long, default_value = "email")]
        target_key: String,
    },
    /// Parse and validate a file against a definition on this machine (no
    /// AWS): rows, valid, failed by reason and the first failed rows. Exit
    /// code 0 all valid, 2 some rows failed, 1 a file-level problem.
    Check {
        file: PathBuf,
        #[arg(long, default_value = "examples/users.json")]
        definition: PathBuf,
        /// Failed rows to show (and rows repeating a key).
        #[arg(long, default_value_t = 10)]
        errors: usize,
        /// Rows whose keys are remembered while looking for repeated ones
        /// (16 to 32 bytes each); rows past it go unchecked.
        #[arg(long, default_value_t = bulk_import::check::MAX_KEYS)]
        max_keys: usize,
    },
    /// Write a sample users CSV (about 100 bytes a row) for `examples/users.json`.
    Generate {
        /// Output file.
        out: PathBuf,
        #[arg(long, default_value_t = 100_000)]
        rows: u64,
        /// Every Nth row is invalid (0: none).
        #[arg(long, default_value_t = 2_000)]
        invalid_every: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

/// Records are many small allocations, which mimalloc serves faster than
/// the system allocator (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bulk_import::telemetry::init_cli();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::run(&cli.names, args).await,
        Command::Worker(args) => worker::run(&cli.names, args).await,
        Command::Jobs {
            status,
            kind,
            limit,
        } => jobs::list(&cli.names, status, kind.as_deref(), limit).await,
        Command::Errors {
            job,
            report: true,
            out,
            ..
        } => jobs::report(&cli.names, &job, out).await,
        Command::Errors { job, limit, .. } => jobs::errors(&cli.names, &job, limit).await,
        Command::Export { job, format, out } => jobs::export(&cli.names, &job, format, out).await,
        Command::Abort {
            job,
            reason,
            event_bus,
        } => {
            let code = jobs::abort(&cli.names, &job, &reason, event_bus).await?;
            std::process::exit(code);
        }
        Command::Retry {
            job,
            max_workers,
            event_bus,
            watch,
        } => {
            let code = jobs::retry(&cli.names, &job, max_workers, event_bus, watch).await?;
            std::process::exit(code);
        }
        Command::Status { job, watch } => {
            let code = jobs::status(&cli.names, &job, watch).await?;
            std::process::exit(code);
        }
        Command::Setup { target_key } => {
            let clients = bulk_import::aws::Clients::load().await;
            let resources = bulk_import::local::Resources {
                bucket: cli.names.bucket.clone(),
                queue: cli.names.queue.clone(),
                state_table: cli.names.state_table.clone(),
                target_table: cli.names.target_table.clone(),
                target_key,
                visibility_timeout: std::time::Duration::from_secs(360),
                prepare_visibility_timeout: std::time::Duration::from_secs(960),
            };
            let created = bulk_import::local::ensure_resources(&clients, &resources)
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            let out = serde_json::json!({
                "bucket": resources.bucket,
                "queueUrl": created.queue_url,
                "dlqUrl": created.dlq_url,
                "prepareQueueUrl": created.prepare_queue_url,
                "prepareDlqUrl": created.prepare_dlq_url,
                "stateTable": resources.state_table,
                "targetTable": resources.target_table,
            });
            println!("{out}");
            Ok(())
        }
        Command::Check {
            file,
            definition,
            errors,
            max_keys,
        } => {
            let keep = bulk_import::check::Keep {
                errors,
                keys: max_keys,
            };
            let code = check::run(&file, &definition, keep).await?;
            std::process::exit(code);
        }
        Command::Generate {
            out,
            rows,
            invalid_every,
            seed,
        } => {
            let file = std::fs::File::create(&out)
                .with_context(|| format!("creating {}", out.display()))?;
            let mut w = std::io::BufWriter::new(file);
            let invalid = generate::users_csv(&mut w, rows, invalid_every, seed)?;
            std::io::Write::flush(&mut w)?;
            eprintln!("wrote {} ({rows} rows, {invalid} invalid)", out.display());
            Ok(())
        }
    }
}
