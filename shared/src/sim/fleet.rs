//! A fleet on the simulated AWS: the real orchestrator, worker and sweeper
//! handlers, invoked as Lambda invokes them (S3 events delivered at least
//! once and retried, SQS event source mappings up to a concurrency limit,
//! a schedule for the sweeper), each invocation in a container with its
//! own SDK clients, under a deadline, and crashing at a drawn moment when
//! the fault mix says so. One run: `jobs` uploads of `records` rows each,
//! until every job has ended or the time limit passes; then the invariants
//! are checked and the figures taken.

use super::s3::{Generated, SimS3};
use super::{SimAws, SimConfig, Trace};
use crate::clock::Clock;
use crate::events::MemoryEvents;
use crate::handlers::{orchestrator, sweeper, worker, Deps};
use crate::job::{JobId, JobStatus};
use crate::metrics::{Metric, MetricsSink};
use crate::prepare::PrepareSettings;
use crate::process::WorkerSettings;
use crate::processor::{ProcessContext, ProcessError, Processors, RecordProcessor};
use crate::queue::SqsQueue;
use crate::report::MemoryReports;
use crate::rng::Rng;
use crate::routes::Routes;
use crate::schema::{Definition, ValidRecord};
use crate::store::dynamodb::table::create_state_table;
use crate::store::dynamodb::DynamoStore;
use crate::store::JobControl;
use async_trait::async_trait;
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{Context, LambdaEvent};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const DEFINITION: &str = include_str!("../../../examples/users.json");
const STATE_TABLE: &str = "bulk-import-state";
const BUCKET: &str = "bulk-import-uploads";

#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub sim: SimConfig,
    /// The worker function's concurrency (its event source mapping's
    /// `MaximumConcurrency`, and `MAX_WORKERS` messages a job).
    pub workers: u32,
    pub jobs: u32,
    /// Rows of each job's file.
    pub records: u64,
    /// Every n-th row fails validation (0: none).
    pub invalid_every: u64,
    pub batch_size: u32,
    /// How fast one orchestrator reads, parses and validates a file.
    pub read_bytes_per_sec: f64,
    /// What a worker spends on a record (the processor's CPU).
    pub record_cost: Duration,
    pub lease: Duration,
    pub worker_timeout: Duration,
    pub orchestrator_timeout: Duration,
    pub sweep_every: Duration,
    /// A run still going this long after the first upload has failed.
    pub time_limit: Duration,
    /// A crashing invocation dies at a moment drawn from this window.
    pub crash_window: Duration,
    /// Uploads are spread over this long.
    pub upload_window: Duration,
}

impl FleetConfig {
    /// A small world with every fault on: a seed-sweep case.
    pub fn small(seed: u64) -> FleetConfig {
        let mut sim = SimConfig::realistic(seed);
        sim.partitions = 4;
        sim.partition_write_units = 300.0;
        sim.faults.throttle = 0.05;
        sim.faults.unprocessed = 0.05;
        sim.faults.duplicate = 0.05;
        sim.faults.crash = 0.05;
        sim.faults.index_lag_ms = 500;
        FleetConfig {
            sim,
            workers: 6,
            jobs: 2,
            records: 1_000 + seed % 500,
            invalid_every: 37,
            batch_size: 100,
            read_bytes_per_sec: 50e6,
            record_cost: Duration::from_micros(20),
            lease: Duration::from_secs(20),
            worker_timeout: Duration::from_secs(120),
            orchestrator_timeout: Duration::from_secs(300),
            sweep_every: Duration::from_secs(60),
            time_limit: Duration::from_secs(3 * 3600),
            crash_window: Duration::from_secs(10),
            upload_window: Duration::from_secs(5),
        }
    }

    /// A fleet as deployed: realistic latency and partition limits, the
    /// template's timeouts; no faults unless asked.
    pub fn deployed(seed: u64, workers: u32, jobs: u32, records: u64) -> FleetConfig {
        FleetConfig {
            sim: SimConfig::realistic(seed),
            workers,
            jobs,
            records,
            invalid_every: 1_000,
            batch_size: 500,
            read_bytes_per_sec: 100e6,
            record_cost: Duration::from_micros(2),
            lease: Duration::from_secs(60),
            worker_timeout: Duration::from_secs(300),
            orchestrator_timeout: Duration::from_secs(900),
            sweep_every: Duration::from_secs(60),
            time_limit: Duration::from_secs(6 * 3600),
            crash_window: Duration::from_secs(5),
            upload_window: Duration::from_secs(1),
        }
    }
}

/// One job's run.
#[derive(Debug, Clone)]
pub struct JobRun {
    pub id: JobId,
    pub status: Option<JobStatus>,
    pub records: u64,
    pub batches: u64,
    pub uploaded: Duration,
    /// When its last prepare run ended.
    pub prepared: Option<Duration>,
    pub ended: Option<Duration>,
    /// When its report was written and its events sent (seen within a
    /// second).
    pub settled: Option<Duration>,
}

impl JobRun {
    /// From upload to its end.
    pub fn took(&self) -> Option<Duration> {
        Some(self.ended? - self.uploaded)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Invocations {
    pub orchestrator: u64,
    pub worker: u64,
    pub sweeper: u64,
    pub crashed: u64,
    pub timed_out: u64,
    pub failed: u64,
    pub cold_starts: u64,
}

/// What a run did, and what it broke.
#[derive(Debug, Clone)]
pub struct FleetReport {
    pub config: FleetConfig,
    pub jobs: Vec<JobRun>,
    /// Simulated time from the first upload until the last job ended (or
    /// the time limit).
    pub elapsed: Duration,
    pub cpu: Duration,
    pub dynamodb: super::dynamodb::DynamoStats,
    pub sqs: super::sqs::SqsStats,
    pub invocations: Invocations,
    /// Time a worker took to get each batch (from the start of its run or
    /// its previous commit to the batch's first record).
    pub claim_waits: Vec<Duration>,
    /// Records processed more than once (by a worker that then lost its
    /// claim, or crashed before committing).
    pub reprocessed: u64,
    pub sweeps: u64,
    /// DynamoDB requests the sweeper's invocations sent.
    pub sweeper_requests: u64,
    /// Each pass that found jobs active (and wrote no error report): how
    /// many, and the DynamoDB requests it sent (passes do not overlap at
    /// the intervals run).
    pub active_sweeps: Vec<(u64, u64)>,
    /// Error reports written (a report rewritten by a caller that took
    /// over from one that died counts again).
    pub reports_written: usize,
    pub trace: Trace,
    /// Invariants that did not hold.
    pub violations: Vec<String>,
}

impl FleetReport {
    pub fn records(&self) -> u64 {
        self.jobs.iter().map(|j| j.records).sum()
    }

    pub fn batches(&self) -> u64 {
        self.jobs.iter().map(|j| j.batches).sum()
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut waits = self.claim_waits.clone();
        waits.sort();
        if waits.is_empty() {
            return Duration::ZERO;
        }
        waits[((waits.len() - 1) as f64 * p).round() as usize]
    }

    pub fn claim_p50(&self) -> Duration {
        self.percentile(0.5)
    }

    pub fn claim_p99(&self) -> Duration {
        self.percentile(0.99)
    }

    /// The figures, as `make simulate` prints them.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let batches = self.batches().max(1) as f64;
        let d = &self.dynamodb;
        let mut out = String::new();
        let c = &self.config;
        let _ = writeln!(
            out,
            "seed {} | {} workers, {} job(s) x {} records, batches of {} | faults: throttle {}, unprocessed {}, duplicate {}, crash {}, index lag {} ms",
            c.sim.seed, c.workers, c.jobs, c.records, c.batch_size, c.sim.faults.throttle, c.sim.faults.unprocessed, c.sim.faults.duplicate, c.sim.faults.crash, c.sim.faults.index_lag_ms
        );
        let _ = writeln!(
            out,
            "simulated {:.1} s: {:.0} records/s, {:.1} batches/s in total; CPU {:.1} s ({:.3} s a simulated second)",
            secs,
            self.records() as f64 / secs,
            self.batches() as f64 / secs,
            self.cpu.as_secs_f64(),
            self.cpu.as_secs_f64() / secs
        );
        for job in self.jobs.iter().take(5) {
            let took = job.took().map_or(f64::NAN, |t| t.as_secs_f64());
            let _ = writeln!(
                out,
                "  job {}: {:?}, {} records in {:.1} s from upload to end, prepared after {:.1} s ({:.0} records/s, {:.1} batches/s)",
                &job.id.as_str()[..12.min(job.id.as_str().len())],
                job.status,
                job.records,
                took,
                job.prepared.map_or(f64::NAN, |p| (p - job.uploaded).as_secs_f64()),
                job.records as f64 / took,
                job.batches as f64 / took
            );
        }
        if self.jobs.len() > 5 {
            let _ = writeln!(out, "  ... and {} more jobs", self.jobs.len() - 5);
            // Each job's own rate, from its upload to its end, summed: what
            // the fleet gives jobs at once, beside the total above (first
            // upload to last end).
            let mut took: Vec<f64> = self
                .jobs
                .iter()
                .filter_map(|j| Some(j.took()?.as_secs_f64()))
                .collect();
            took.sort_by(f64::total_cmp);
            let rates: f64 = self
                .jobs
                .iter()
                .filter_map(|j| Some(j.records as f64 / j.took()?.as_secs_f64()))
                .sum();
            let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
            if !took.is_empty() {
                let _ = writeln!(
                    out,
                    "  jobs: {:.0} records/s summed over jobs; upload to end {:.1} s at least, {:.1} s median, {:.1} s at most",
                    rates,
                    at(0.0),
                    at(0.5),
                    at(1.0)
                );
            }
        }
        let _ = writeln!(
            out,
            "DynamoDB: {:.2} requests and {:.2} write units a batch ({} requests, {:.0} WU, {:.0} RU); throttled {}, injected {}, conflicts {}, unprocessed items {}",
            d.total_requests() as f64 / batches,
            d.write_units / batches,
            d.total_requests(),
            d.write_units,
            d.read_units,
            d.throttled,
            d.injected,
            d.conflicts,
            d.unprocessed
        );
        let ops: Vec<String> = d
            .requests
            .iter()
            .map(|(op, n)| format!("{op} {:.2}", *n as f64 / batches))
            .collect();
        let _ = writeln!(out, "  a batch: {}", ops.join(", "));
        let mut shapes: Vec<(&String, &u64)> = d.shapes.iter().collect();
        shapes.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        for (shape, n) in shapes.into_iter().take(8) {
            let _ = writeln!(out, "    {:.2} a batch: {shape}", *n as f64 / batches);
        }
        let mut refused: Vec<(&String, &u64)> = d.refused.iter().collect();
        refused.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        for (shape, n) in refused.into_iter().take(6) {
            let _ = writeln!(out, "  refused: {n} {shape}");
        }
        for (partition, units) in super::dynamodb::DynamoStats::top(&d.partition_writes, 3) {
            let _ = writeln!(
                out,
                "  hot partition {partition}: {:.0} WU ({:.0} WU/s)",
                units,
                units / secs
            );
        }
        for (partition, units) in super::dynamodb::DynamoStats::top(&d.partition_reads, 2) {
            let _ = writeln!(
                out,
                "  hot partition for reads {partition}: {:.0} RU ({:.0} RU/s)",
                units,
                units / secs
            );
        }
        for (item, units) in super::dynamodb::DynamoStats::top(&d.item_reads, 2) {
            let _ = writeln!(
                out,
                "  hot item for reads {item}: {:.0} RU ({:.0} RU/s)",
                units,
                units / secs
            );
        }
        for (item, units) in super::dynamodb::DynamoStats::top(&d.item_writes, 3) {
            let _ = writeln!(
                out,
                "  hot item {item}: {:.0} WU ({:.0} WU/s)",
                units,
                units / secs
            );
        }
        let _ = writeln!(
            out,
            "time to get a batch: p50 {:.1} ms, p99 {:.1} ms; invocations: {} worker, {} orchestrator, {} sweeper ({} crashed, {} timed out, {} failed); SQS: {} sent, {} duplicates, {} redelivered; {} records processed again; {} reports written",
            self.claim_p50().as_secs_f64() * 1e3,
            self.claim_p99().as_secs_f64() * 1e3,
            self.invocations.worker,
            self.invocations.orchestrator,
            self.invocations.sweeper,
            self.invocations.crashed,
            self.invocations.timed_out,
            self.invocations.failed,
            self.sqs.sent,
            self.sqs.duplicates,
            self.sqs.redelivered,
            self.reprocessed,
            self.reports_written
        );
        let _ = writeln!(
            out,
            "sweeper: {} passes, {} DynamoDB requests ({:.1} a pass)",
            self.sweeps,
            self.sweeper_requests,
            self.sweeper_requests as f64 / self.sweeps.max(1) as f64
        );
        if !self.active_sweeps.is_empty() {
            let passes = self.active_sweeps.len() as f64;
            let jobs: u64 = self.active_sweeps.iter().map(|p| p.0).sum();
            let requests: u64 = self.active_sweeps.iter().map(|p| p.1).sum();
            let most = self.active_sweeps.iter().max_by_key(|p| (p.1, p.0));
            let (most_jobs, most_requests) = most.copied().unwrap_or_default();
            let _ = writeln!(
                out,
                "  {} passes over active jobs: {:.1} jobs and {:.1} requests a pass ({:.2} a job); the costliest {} requests over {} jobs",
                self.active_sweeps.len(),
                jobs as f64 / passes,
                requests as f64 / passes,
                requests as f64 / jobs.max(1) as f64,
                most_requests,
                most_jobs
            );
        }
        let _ = writeln!(
            out,
            "trace: {} requests, digest {:016x}",
            self.trace.requests, self.trace.digest
        );
        if self.violations.is_empty() {
            let _ = writeln!(out, "invariants: all held");
        } else {
            for v in &self.violations {
                let _ = writeln!(out, "VIOLATED: {v}");
            }
        }
        out
    }
}

/// The target of the cheap processor: how often each row of each job was
/// processed. Spends `record_cost` of virtual time a record.
struct Target {
    rows: Mutex<HashMap<JobId, Vec<u8>>>,
    record_cost: Duration,
}

#[async_trait]
impl RecordProcessor for Target {
    async fn process(
        &self,
        record: &ValidRecord,
        ctx: &ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        let results = self.process_batch(&[record], ctx).await;
        results.into_iter().next().expect("one result")
    }

    async fn process_batch(
        &self,
        records: &[&ValidRecord],
        ctx: &ProcessContext<'_>,
    ) -> Vec<Result<(), ProcessError>> {
        tokio::time::sleep(self.record_cost * records.len() as u32).await;
        let mut rows = self.rows.lock().unwrap();
        let seen = rows.entry(ctx.job_id.clone()).or_default();
        records
            .iter()
            .map(|record| {
                let row = record
                    .get("email")
                    .and_then(|v| v.as_str())
                    .and_then(Generated::row_of)
                    .ok_or_else(|| ProcessError::permanent("a record without a generated email"))?;
                let row = row as usize;
                if seen.len() <= row {
                    seen.resize(row + 1, 0);
                }
                seen[row] = seen[row].saturating_add(1);
                Ok(())
            })
            .collect()
    }
}

/// What the fleet learns from every container's metrics: job endings
/// (exactly one each) and the time workers take to get a batch.
#[derive(Default)]
struct Probe {
    waits: Mutex<Vec<Duration>>,
    ended: Mutex<Vec<(JobId, JobStatus, Instant)>>,
    /// When each prepare run ended.
    prepared: Mutex<Vec<(JobId, Instant)>>,
}

/// One container's metrics: it runs one invocation at a time, so the time
/// from its run's start, or its last commit, to the next commit, less the
/// batch's own work, is the time it took to get that batch.
struct ContainerProbe {
    fleet: Arc<Probe>,
    mark: Mutex<Option<Instant>>,
}

impl ContainerProbe {
    fn start(&self) {
        *self.mark.lock().unwrap() = Some(Instant::now());
    }
}

impl MetricsSink for ContainerProbe {
    fn record(&self, metric: Metric) {
        match metric {
            Metric::BatchCommitted { took, .. } => {
                let now = Instant::now();
                let mut mark = self.mark.lock().unwrap();
                if let Some(start) = *mark {
                    let waited = now.saturating_duration_since(start).saturating_sub(took);
                    self.fleet.waits.lock().unwrap().push(waited);
                }
                *mark = Some(now);
            }
            Metric::JobEnded { job, status } => {
                self.fleet
                    .ended
                    .lock()
                    .unwrap()
                    .push((job, status, Instant::now()))
            }
            Metric::Prepared { job, .. } => self
                .fleet
                .prepared
                .lock()
                .unwrap()
                .push((job, Instant::now())),
            _ => {}
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Function {
    Orchestrator,
    Worker,
    Sweeper,
}

struct Container {
    deps: Deps,
    probe: Arc<ContainerProbe>,
}

struct Fleet {
    config: FleetConfig,
    aws: SimAws,
    s3: Arc<SimS3>,
    events: Arc<MemoryEvents>,
    reports: Arc<MemoryReports>,
    target: Arc<Target>,
    probe: Arc<Probe>,
    definition: Definition,
    work_url: String,
    prepare_url: String,
    idle: Mutex<HashMap<&'static str, Vec<Container>>>,
    containers: AtomicU64,
    /// DynamoDB requests of the sweeper's containers.
    sweeper_requests: Arc<AtomicU64>,
    /// Passes that found jobs active: how many, and the requests sent.
    active_sweeps: Mutex<Vec<(u64, u64)>>,
    invocations: Mutex<Invocations>,
    finished: tokio::sync::Notify,
    start: Instant,
}

fn key_of(function: Function) -> &'static str {
    match function {
        Function::Orchestrator => "orchestrator",
        Function::Worker => "worker",
        Function::Sweeper => "sweeper",
    }
}

impl Fleet {
    fn container(&self, function: Function) -> Container {
        let n = self.containers.fetch_add(1, Ordering::Relaxed);
        let clients = match function {
            Function::Sweeper => self.aws.counted_clients(self.sweeper_requests.clone()),
            _ => self.aws.clients(),
        };
        let clock: Clock = self.aws.clock;
        let rng = Rng::seeded(
            self.config
                .sim
                .seed
                .wrapping_mul(0x9E37_79B9)
                .wrapping_add(n),
        );
        let probe = Arc::new(ContainerProbe {
            fleet: self.probe.clone(),
            mark: Mutex::default(),
        });
        let metrics: Arc<dyn MetricsSink> = probe.clone();
        let store = Arc::new(
            DynamoStore::new(clients.dynamodb.clone(), STATE_TABLE, true)
                .with_retention_days(30)
                .with_metrics(metrics.clone())
                .with_clock(clock)
                .with_rng(rng.clone()),
        );
        let deps = Deps {
            store: store.clone(),
            throttle: store,
            objects: self.s3.clone(),
            versions: self.s3.clone(),
            queue: Arc::new(SqsQueue::new(clients.sqs.clone(), &self.work_url)),
            prepare_queue: Some(Arc::new(SqsQueue::new(
                clients.sqs.clone(),
                &self.prepare_url,
            ))),
            events: self.events.clone(),
            reports: self.reports.clone(),
            metrics,
            processors: Arc::new(Processors::given(self.target.clone())),
            routes: Arc::new(Routes::single(self.definition.clone())),
            pinned: Arc::default(),
            prepare: PrepareSettings {
                max_workers: self.config.workers,
                lease_ms: 60_000,
                ..PrepareSettings::default()
            },
            worker: WorkerSettings {
                lease: self.config.lease,
                ..WorkerSettings::default()
            },
            clock,
            rng,
        };
        Container { deps, probe }
    }
}

/// Invocations of the orchestrator a prepare queue's mapping runs at once.
const ORCHESTRATOR_CONCURRENCY: u64 = 10;
/// A new container's start, before its handler runs.
const COLD_START: Duration = Duration::from_millis(250);
/// How often an idle event source mapping looks at its queue.
const POLL: Duration = Duration::from_millis(200);

impl Fleet {
    fn take(&self, function: Function) -> (Container, bool) {
        let reused = self
            .idle
            .lock()
            .unwrap()
            .entry(key_of(function))
            .or_default()
            .pop();
        match reused {
            Some(c) => (c, false),
            None => (self.container(function), true),
        }
    }

    fn context(&self, function: Function, timeout: Duration) -> Context {
        let n = {
            let mut inv = self.invocations.lock().unwrap();
            let counter = match function {
                Function::Orchestrator => &mut inv.orchestrator,
                Function::Worker => &mut inv.worker,
                Function::Sweeper => &mut inv.sweeper,
            };
            *counter += 1;
            *counter
        };
        let mut ctx = Context::default();
        ctx.request_id = format!("{}-{n:08}", key_of(function));
        ctx.deadline = (self.aws.clock.now_ms() + timeout.as_millis() as i64) as u64;
        ctx
    }

    /// One invocation of `function`: `None` when it crashed or ran out of
    /// time (its container is then gone, as Lambda's would be).
    async fn invoke<T, F, Fut>(&self, function: Function, timeout: Duration, run: F) -> Option<T>
    where
        F: FnOnce(Deps, Context) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let (container, cold) = self.take(function);
        if cold {
            self.invocations.lock().unwrap().cold_starts += 1;
            tokio::time::sleep(COLD_START).await;
        }
        let ctx = self.context(function, timeout);
        container.probe.start();
        let world = &self.aws.world;
        let crash = world.chance(self.config.sim.faults.crash).then(|| {
            Duration::from_millis(world.below(self.config.crash_window.as_millis() as u64 + 1))
        });
        let limit = crash.map_or(timeout, |c| c.min(timeout));
        match tokio::time::timeout(limit, run(container.deps.clone(), ctx)).await {
            Ok(value) => {
                self.idle
                    .lock()
                    .unwrap()
                    .entry(key_of(function))
                    .or_default()
                    .push(container);
                Some(value)
            }
            Err(_) => {
                let mut inv = self.invocations.lock().unwrap();
                if crash.is_some_and(|c| c < timeout) {
                    inv.crashed += 1;
                } else {
                    inv.timed_out += 1;
                }
                None
            }
        }
    }

    fn failed(&self) {
        self.invocations.lock().unwrap().failed += 1;
    }

    /// Lambda's SQS event source mapping for `function` on `url`: up to
    /// `concurrency` invocations of one message each; a message is deleted
    /// once its invocation succeeds and did not report it failed.
    async fn mapping(
        self: Arc<Self>,
        function: Function,
        url: String,
        concurrency: u64,
        done: Arc<std::sync::atomic::AtomicBool>,
    ) {
        let running = Arc::new(AtomicU64::new(0));
        let woken = self.aws.sqs.woken(&url);
        while !done.load(Ordering::Relaxed) {
            while running.load(Ordering::Relaxed) < concurrency {
                let Some(message) = self.aws.sqs.receive(&url, 1).pop() else {
                    break;
                };
                running.fetch_add(1, Ordering::Relaxed);
                let (fleet, url, running) = (self.clone(), url.clone(), running.clone());
                tokio::spawn(async move {
                    fleet.deliver(function, &url, message).await;
                    running.fetch_sub(1, Ordering::Relaxed);
                    fleet.finished.notify_waiters();
                });
            }
            tokio::select! {
                biased;
                _ = woken.notified() => {}
                _ = self.finished.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    async fn deliver(&self, function: Function, url: &str, message: super::sqs::Message) {
        let record = serde_json::json!({
            "messageId": message.id,
            "receiptHandle": message.receipt,
            "body": message.body,
            "attributes": { "ApproximateReceiveCount": message.receives.to_string() },
            "messageAttributes": {},
            "eventSource": "aws:sqs",
            "eventSourceARN": format!("arn:aws:sqs:us-east-1:000000000000:{}", url.rsplit('/').next().unwrap_or_default()),
            "awsRegion": "us-east-1"
        });
        let event = serde_json::json!({ "Records": [record] });
        let failed: Option<Vec<String>> = match function {
            Function::Worker => {
                let event: SqsEvent = serde_json::from_value(event).expect("an SQS event");
                let timeout = self.config.worker_timeout;
                self.invoke(function, timeout, |deps, ctx| async move {
                    worker::handle(&deps, LambdaEvent::new(event, ctx))
                        .await
                        .map(|r| {
                            r.batch_item_failures
                                .into_iter()
                                .map(|f| f.item_identifier)
                                .collect()
                        })
                        .map_err(|e| e.to_string())
                })
                .await
                .and_then(|r| r.map_err(|_| self.failed()).ok())
            }
            _ => {
                let timeout = self.config.orchestrator_timeout;
                self.invoke(function, timeout, |deps, ctx| async move {
                    orchestrator::handle_any(&deps, LambdaEvent::new(event, ctx))
                        .await
                        .map_err(|e| e.to_string())
                        .map(|v| {
                            v["batchItemFailures"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_owned))
                                .collect()
                        })
                })
                .await
                .and_then(|r| r.map_err(|_| self.failed()).ok())
            }
        };
        if let Some(failed) = failed {
            if !failed.contains(&message.id) {
                self.aws.sqs.delete(url, &message.receipt);
            }
        }
    }

    /// An upload's S3 event: delivered once or (drawn) twice, each delivery
    /// an asynchronous invocation Lambda retries twice, a minute and then
    /// two apart, when it fails.
    async fn upload(self: Arc<Self>, index: u32) -> (JobId, Duration) {
        let key = format!("uploads/sim-{index:04}.csv");
        let file = Generated {
            rows: self.config.records,
            invalid_every: self.config.invalid_every,
        };
        let head = self
            .s3
            .put(BUCKET, &key, file, self.aws.clock.now_ms() / 1000);
        let id = JobId::for_object(BUCKET, &key, &head.version());
        let mut event = crate::local::s3_put_event(
            BUCKET,
            &key,
            &head.etag,
            head.version_id.as_deref(),
            file.len() as i64,
        );
        if let Some(t) = chrono::DateTime::from_timestamp_millis(self.aws.clock.now_ms()) {
            event.records[0].event_time = t;
        }
        let copies = 1 + u32::from(self.aws.world.chance(self.config.sim.faults.duplicate));
        for copy in 0..copies {
            let (fleet, event) = (self.clone(), event.clone());
            tokio::spawn(async move {
                if copy > 0 {
                    tokio::time::sleep(Duration::from_millis(fleet.aws.world.below(5_000))).await;
                }
                for attempt in 0..3u32 {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_secs(60 * u64::from(attempt))).await;
                    }
                    let event = event.clone();
                    let ok = fleet
                        .invoke(
                            Function::Orchestrator,
                            fleet.config.orchestrator_timeout,
                            |deps, ctx| async move {
                                orchestrator::handle(&deps, LambdaEvent::new(event, ctx))
                                    .await
                                    .is_ok()
                            },
                        )
                        .await;
                    match ok {
                        Some(true) => break,
                        Some(false) => fleet.failed(),
                        None => {}
                    }
                }
            });
        }
        (id, self.aws.clock.instant().duration_since(self.started()))
    }

    fn started(&self) -> Instant {
        self.start
    }

    async fn sweeps(self: Arc<Self>, done: Arc<std::sync::atomic::AtomicBool>) -> u64 {
        let schedule: EventBridgeEvent =
            serde_json::from_str(include_str!("../../../events/sweeper-schedule.json"))
                .expect("the schedule event");
        let mut sweeps = 0;
        while !done.load(Ordering::Relaxed) {
            tokio::time::sleep(self.config.sweep_every).await;
            let event = schedule.clone();
            let fleet = self.clone();
            sweeps += 1;
            tokio::spawn(async move {
                let before = fleet.sweeper_requests.load(Ordering::Relaxed);
                let swept = fleet
                    .invoke(
                        Function::Sweeper,
                        Duration::from_secs(900),
                        |deps, ctx| async move {
                            sweeper::handle(&deps, LambdaEvent::new(event, ctx))
                                .await
                                .ok()
                        },
                    )
                    .await;
                match swept {
                    Some(None) => fleet.failed(),
                    // A report a pass writes costs a read of the job's
                    // failures and records, once a job: not a pass's cost.
                    Some(Some(report)) if report.active_jobs > 0 && report.reports_written == 0 => {
                        let sent = fleet.sweeper_requests.load(Ordering::Relaxed) - before;
                        let mut passes = fleet.active_sweeps.lock().unwrap();
                        passes.push((report.active_jobs, sent));
                    }
                    _ => {}
                }
            });
        }
        sweeps
    }
}

/// Runs a fleet on its own paused runtime: as fast as the CPU allows,
/// whatever the simulated time.
pub fn run(config: FleetConfig) -> FleetReport {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(run_on(config))
}

/// Runs a fleet on the current (paused) runtime.
pub async fn run_on(config: FleetConfig) -> FleetReport {
    let cpu_started = std::time::Instant::now();
    let aws = SimAws::new(config.sim.clone());
    let setup = aws.clients();
    create_state_table(&setup.dynamodb, STATE_TABLE)
        .await
        .expect("the state table is created");
    let work_url = aws
        .sqs
        .create("bulk-import-work", Duration::from_secs(1800), 5);
    let prepare_url = aws
        .sqs
        .create("bulk-import-work-prepare", Duration::from_secs(5400), 3);
    let mut definition =
        Definition::from_json(DEFINITION, "examples/users.json").expect("the example definition");
    definition.batch_size = config.batch_size as usize;
    let fleet = Arc::new(Fleet {
        s3: Arc::new(SimS3::new(aws.world.clone(), config.read_bytes_per_sec)),
        events: Arc::default(),
        reports: Arc::default(),
        target: Arc::new(Target {
            rows: Mutex::default(),
            record_cost: config.record_cost,
        }),
        probe: Arc::default(),
        definition,
        work_url: work_url.clone(),
        prepare_url: prepare_url.clone(),
        idle: Mutex::default(),
        containers: AtomicU64::new(0),
        sweeper_requests: Arc::default(),
        active_sweeps: Mutex::default(),
        invocations: Mutex::default(),
        finished: tokio::sync::Notify::new(),
        start: Instant::now(),
        aws: aws.clone(),
        config: config.clone(),
    });
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mappings = [
        tokio::spawn(fleet.clone().mapping(
            Function::Worker,
            work_url,
            u64::from(config.workers),
            done.clone(),
        )),
        tokio::spawn(fleet.clone().mapping(
            Function::Orchestrator,
            prepare_url,
            ORCHESTRATOR_CONCURRENCY,
            done.clone(),
        )),
    ];
    let sweeps = tokio::spawn(fleet.clone().sweeps(done.clone()));
    let mut jobs = Vec::new();
    for index in 0..config.jobs {
        let at =
            Duration::from_millis(aws.world.below(config.upload_window.as_millis() as u64 + 1));
        jobs.push((index, at));
    }
    jobs.sort_by_key(|(_, at)| *at);
    let mut runs: Vec<JobRun> = Vec::new();
    for (index, at) in jobs {
        tokio::time::sleep_until(fleet.start + at).await;
        let (id, uploaded) = fleet.clone().upload(index).await;
        runs.push(JobRun {
            id,
            status: None,
            records: 0,
            batches: 0,
            uploaded,
            prepared: None,
            ended: None,
            settled: None,
        });
    }

    // Until every job has ended, looked at once a simulated second
    // through a store that bypasses the simulated service (unbilled).
    let watcher = DynamoStore::new(aws.direct_clients().dynamodb, STATE_TABLE, true);
    let deadline = fleet.start + config.time_limit;
    loop {
        let now = Instant::now();
        for run in runs.iter_mut().filter(|r| r.settled.is_none()) {
            if let Ok(Some(job)) = watcher.get_job(&run.id).await {
                // Ended, its report written and its events sent.
                if job.status.is_final() && !job.report_owed && job.owed_events.is_empty() {
                    run.status = Some(job.status);
                    run.records = job.total_records;
                    run.batches = job.total_batches;
                    run.ended = Some(now.duration_since(fleet.start));
                    run.settled = run.ended;
                }
            }
        }
        if runs.iter().all(|r| r.settled.is_some()) || now >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let elapsed = Instant::now().duration_since(fleet.start);
    for (job, at) in fleet.probe.prepared.lock().unwrap().iter() {
        if let Some(run) = runs.iter_mut().find(|r| &r.id == job) {
            run.prepared = Some(at.duration_since(fleet.start));
        }
    }
    // The end is when the update that ended the job was made (the loop
    // above sees it within a second).
    for (job, _, at) in fleet.probe.ended.lock().unwrap().iter() {
        if let Some(run) = runs.iter_mut().find(|r| &r.id == job) {
            run.ended = Some(at.duration_since(fleet.start));
        }
    }
    let elapsed = runs
        .iter()
        .filter_map(|r| r.ended)
        .max()
        .filter(|_| runs.iter().all(|r| r.ended.is_some()))
        .unwrap_or(elapsed);
    done.store(true, Ordering::Relaxed);
    // What is still running (a worker finishing a batch a fenced claim
    // held, a sweep) gets a while to settle before the checks.
    tokio::time::sleep(config.lease * 3).await;
    for mapping in mappings {
        mapping.abort();
    }
    let sweeps = sweeps.await.unwrap_or(0);
    let violations = check(&fleet, &watcher, &runs).await;
    let reprocessed = fleet
        .target
        .rows
        .lock()
        .unwrap()
        .values()
        .flat_map(|rows| rows.iter())
        .map(|&n| u64::from(n.saturating_sub(1)))
        .sum();
    let invocations = fleet.invocations.lock().unwrap().clone();
    let claim_waits = fleet.probe.waits.lock().unwrap().clone();
    let reports_written = fleet.reports.reports.lock().unwrap().len();
    let active_sweeps = fleet.active_sweeps.lock().unwrap().clone();
    FleetReport {
        jobs: runs,
        elapsed,
        cpu: cpu_started.elapsed(),
        dynamodb: aws.dynamodb.stats(),
        sqs: aws.sqs.stats(),
        invocations,
        claim_waits,
        reprocessed,
        sweeps,
        sweeper_requests: fleet.sweeper_requests.load(Ordering::Relaxed),
        active_sweeps,
        reports_written,
        trace: aws.world.traced(),
        violations,
        config,
    }
}

/// How many of a job's batches are in each state, and the first few not
/// final: what a job that did not end waits for.
fn batch_states(fleet: &Fleet, job: &JobId) -> String {
    let prefix = format!("J#{job}#B#");
    let mut states: BTreeMap<String, u64> = BTreeMap::new();
    let mut open = Vec::new();
    for item in fleet.aws.dynamodb.scan(STATE_TABLE) {
        let pk = item["pk"]["S"].as_str().unwrap_or_default();
        if !pk.starts_with(&prefix) || item["sk"]["S"] != "BATCH" {
            continue;
        }
        let state = item["state"]["S"].as_str().unwrap_or("?").to_owned();
        if !matches!(state.as_str(), "DONE" | "FAILED") && open.len() < 5 {
            open.push(item.to_string());
        }
        *states.entry(state).or_default() += 1;
    }
    format!("{states:?}; not final: {}", open.join(" "))
}

/// The invariants of a run.
async fn check(fleet: &Fleet, watcher: &DynamoStore, runs: &[JobRun]) -> Vec<String> {
    let mut violations = Vec::new();
    let file = Generated {
        rows: fleet.config.records,
        invalid_every: fleet.config.invalid_every,
    };
    let valid = file.valid_rows();
    let rows = fleet.target.rows.lock().unwrap().clone();
    let ended: Vec<(JobId, JobStatus, Instant)> = fleet.probe.ended.lock().unwrap().clone();
    let endings = fleet.events.endings();
    let reports = fleet.reports.reports.lock().unwrap().clone();
    for run in runs {
        let id = run.id.as_str();
        let Some(status) = run.status else {
            let at = match watcher.get_job(&run.id).await {
                Ok(Some(j)) => format!(
                    "{:?}, prepared {}, {} of {} batches done, {} ready, {} handed out, {} records processed and {} failed of {}",
                    j.status, j.prepared, j.batches_done, j.total_batches, j.batches_ready,
                    j.batches_handed_out, j.processed, j.failed, j.total_records
                ),
                other => format!("unreadable: {other:?}"),
            };
            violations.push(format!(
                "job {id} did not end within {:?}: {at}; batches by state: {}",
                fleet.config.time_limit,
                batch_states(fleet, &run.id)
            ));
            continue;
        };
        let job = match watcher.get_job(&run.id).await {
            Ok(Some(job)) => job,
            other => {
                violations.push(format!("job {id} cannot be read: {other:?}"));
                continue;
            }
        };
        if status != JobStatus::CompletedWithErrors && file.rows != valid
            || status != JobStatus::Completed && file.rows == valid
        {
            violations.push(format!("job {id} ended {status:?}"));
        }
        if (job.total_records, job.processed, job.failed) != (file.rows, valid, file.rows - valid) {
            violations.push(format!(
                "job {id}: {} records, {} processed, {} failed; the file has {} rows, {} valid",
                job.total_records, job.processed, job.failed, file.rows, valid
            ));
        }
        let seen = rows.get(&run.id).cloned().unwrap_or_default();
        let missing = (0..file.rows)
            .filter(|&r| !file.is_invalid(r) && seen.get(r as usize).copied().unwrap_or(0) == 0)
            .count();
        let wrong = (0..file.rows)
            .filter(|&r| file.is_invalid(r) && seen.get(r as usize).copied().unwrap_or(0) > 0)
            .count();
        if missing > 0 || wrong > 0 {
            violations.push(format!(
                "job {id}: {missing} valid rows never reached the target, {wrong} invalid rows did"
            ));
        }
        if let (Some(ended), Some(settled)) = (run.ended, run.settled) {
            // A report lease and a sweep interval, and a second to see it.
            let bound = Duration::from_secs(60) + fleet.config.sweep_every + Duration::from_secs(1);
            if settled.saturating_sub(ended) > bound {
                violations.push(format!(
                    "job {id} ended at {ended:?} but its report and events were done only at {settled:?}"
                ));
            }
        }
        let finalized = ended.iter().filter(|(j, _, _)| j == &run.id).count();
        if finalized != 1 {
            violations.push(format!("job {id} was ended {finalized} times"));
        }
        let announced: Vec<_> = endings.iter().filter(|e| e.job_id == run.id).collect();
        if announced.is_empty() || announced.iter().any(|e| e.status != status) {
            violations.push(format!(
                "job {id} ended {status:?} but announced {:?}",
                announced.iter().map(|e| e.status).collect::<Vec<_>>()
            ));
        }
        if file.rows != valid {
            let report = reports
                .iter()
                .filter(|(key, _)| key.contains(id))
                .map(|(_, body)| body.lines().count().saturating_sub(1) as u64)
                .max();
            if report != Some(file.rows - valid) {
                violations.push(format!(
                    "job {id}: the error report lists {report:?} rows, {} failed",
                    file.rows - valid
                ));
            }
        }
        let mut states: BTreeMap<String, u64> = BTreeMap::new();
        for index in 0..job.total_batches {
            match watcher.batch_info(&run.id, index).await {
                Ok(Some(info)) => *states.entry(format!("{:?}", info.state)).or_default() += 1,
                other => violations.push(format!("job {id} batch {index}: {other:?}")),
            }
        }
        if states.keys().any(|s| s != "Done") {
            violations.push(format!("job {id}: batches {states:?}"));
        }
    }
    violations
}

/// A seed sweep's outcome.
#[derive(Debug, Default)]
pub struct Sweep {
    pub seeds: u64,
    /// Seeds whose run broke an invariant, with the report's figures.
    pub failures: Vec<(u64, String)>,
    pub wall: Duration,
    /// Simulated time, over every run.
    pub simulated: Duration,
}

impl Sweep {
    pub fn seeds_per_minute(&self) -> f64 {
        self.seeds as f64 * 60.0 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Runs the world `config` makes of each seed of `seeds`, on `threads`
/// threads (each run on a runtime of its own: the runs share nothing).
pub fn sweep(
    seeds: std::ops::Range<u64>,
    threads: usize,
    config: impl Fn(u64) -> FleetConfig + Sync,
) -> Sweep {
    let started = std::time::Instant::now();
    let next = AtomicU64::new(seeds.start);
    let outcome = Mutex::new(Sweep::default());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= seeds.end {
                    return;
                }
                let report = run(config(seed));
                let mut outcome = outcome.lock().unwrap();
                outcome.seeds += 1;
                outcome.simulated += report.elapsed;
                if !report.violations.is_empty() {
                    outcome.failures.push((seed, report.summary()));
                }
            });
        }
    });
    let mut outcome = outcome.into_inner().unwrap();
    outcome.failures.sort_by_key(|(seed, _)| *seed);
    outcome.wall = started.elapsed();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_world_without_faults_ends_every_job_exactly() {
        let mut config = FleetConfig::small(1);
        config.sim.faults = super::super::Faults::default();
        let report = run(config);
        println!("{}", report.summary());
        assert!(report.violations.is_empty(), "{}", report.summary());
    }

    #[test]
    fn small_worlds_with_every_fault_keep_every_invariant() {
        for seed in 1..=8 {
            let report = run(FleetConfig::small(seed));
            println!("{}", report.summary());
            assert!(report.violations.is_empty(), "{}", report.summary());
        }
    }

    /// Seeds the sweep found failing: a report writer that died holding
    /// the report's lease until its deadline left the report and the
    /// ending's event owed for up to fifteen minutes.
    #[test]
    fn a_report_writer_that_dies_delays_the_report_by_a_lease_at_most() {
        for seed in [16, 60] {
            let report = run(FleetConfig::small(seed));
            assert!(report.violations.is_empty(), "{}", report.summary());
        }
    }

    #[test]
    fn a_seed_replays_the_same_run() {
        let first = run(FleetConfig::small(11));
        let again = run(FleetConfig::small(11));
        assert_eq!(
            first.trace, again.trace,
            "the same requests in the same order"
        );
        assert_eq!(first.elapsed, again.elapsed);
        assert_eq!(first.dynamodb.requests, again.dynamodb.requests);
        let other = run(FleetConfig::small(12));
        assert_ne!(first.trace, other.trace, "another seed, another run");
    }
}
