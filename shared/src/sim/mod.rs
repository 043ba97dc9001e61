//! A simulated AWS, in process and in virtual time: DynamoDB and SQS behind
//! the real SDK clients (an HTTP client that never opens a socket), with
//! the service behaviour the protocol depends on (latency, partition
//! limits, throttling, transaction conflicts, unprocessed items, lagging
//! indexes, at-least-once delivery), and faults drawn from one seeded
//! generator. Run on a paused tokio runtime, a seed reproduces a run
//! exactly: the same requests in the same order, the same result.
//!
//! `fleet` runs the real handlers on it: orchestrators, workers and the
//! sweeper as Lambda would invoke them, crashes included.

pub mod dynamodb;
pub mod engine;
pub mod fleet;
mod http;
pub mod s3;
pub mod sqs;

use crate::aws::{Clients, MAX_ATTEMPTS};
use crate::clock::Clock;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Request latency: log-normal, by its median and 99th percentile.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
}

impl Latency {
    pub const NONE: Latency = Latency {
        p50: Duration::ZERO,
        p99: Duration::ZERO,
    };

    /// DynamoDB from Lambda in the same region, about.
    pub const DYNAMODB: Latency = Latency {
        p50: Duration::from_millis(5),
        p99: Duration::from_millis(25),
    };

    fn draw(&self, rng: &mut StdRng) -> Duration {
        if self.p50.is_zero() {
            return Duration::ZERO;
        }
        // The 99th percentile of a standard normal.
        const Z99: f64 = 2.326_347_874;
        let median = self.p50.as_secs_f64();
        let sigma = (self.p99.as_secs_f64() / median).max(1.0).ln() / Z99;
        // Box-Muller.
        let (u1, u2): (f64, f64) = (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        Duration::from_secs_f64((median * (sigma * z).exp()).min(60.0))
    }
}

/// The faults a world draws, each a share (0 to 1) unless named otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// DynamoDB requests refused with `ThrottlingException` beyond what
    /// capacity explains.
    pub throttle: f64,
    /// Items of batch requests returned unprocessed beyond capacity.
    pub unprocessed: f64,
    /// The most, in milliseconds, an index or eventually consistent read
    /// lags the table's writes.
    pub index_lag_ms: u64,
    /// SQS receives that leave the message visible to another receive too
    /// (a duplicate delivery).
    pub duplicate: f64,
    /// Lambda invocations that crash at a drawn moment of their run.
    pub crash: f64,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub latency: Latency,
    /// Partitions of every table and index.
    pub partitions: u32,
    /// DynamoDB's limits per partition, a second.
    pub partition_write_units: f64,
    pub partition_read_units: f64,
    pub faults: Faults,
}

impl SimConfig {
    /// DynamoDB as it is: latency, partition limits, lagging indexes; no
    /// faults beyond those.
    pub fn realistic(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            latency: Latency::DYNAMODB,
            partitions: 256,
            partition_write_units: 1_000.0,
            partition_read_units: 3_000.0,
            faults: Faults {
                index_lag_ms: 200,
                ..Faults::default()
            },
        }
    }

    /// No latency, no limits, no lag: the data engine alone (conformance).
    pub fn exact(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            latency: Latency::NONE,
            partitions: 1,
            partition_write_units: f64::INFINITY,
            partition_read_units: f64::INFINITY,
            faults: Faults::default(),
        }
    }
}

/// What every simulated service shares: the configuration, the one
/// generator faults and latencies are drawn from, and the trace of
/// requests a seed must reproduce.
pub struct World {
    pub config: SimConfig,
    /// When the world began, on tokio's clock.
    start: tokio::time::Instant,
    rng: Mutex<StdRng>,
    trace: Mutex<Trace>,
}

/// A digest of every request in arrival order, with its virtual time.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trace {
    pub requests: u64,
    pub digest: u64,
}

impl World {
    pub fn new(config: SimConfig) -> Arc<World> {
        Arc::new(World {
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
            start: tokio::time::Instant::now(),
            config,
            trace: Mutex::default(),
        })
    }

    fn draw<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        f(&mut self.rng.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// True with probability `share`.
    pub fn chance(&self, share: f64) -> bool {
        share > 0.0 && self.draw(|rng| rng.random_bool(share.min(1.0)))
    }

    /// Uniform in `0..n`.
    pub fn below(&self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        self.draw(|rng| rng.random_range(0..n))
    }

    /// A request's way out and back.
    pub fn round_trip(&self) -> (Duration, Duration) {
        let latency = self.config.latency;
        let total = self.draw(|rng| latency.draw(rng));
        let out = total / 2;
        (out, total - out)
    }

    /// Adds a request to the trace: its service, operation and body (with
    /// object keys in a canonical order, which the SDK's maps do not keep).
    pub fn trace(&self, service: &str, op: &str, body: &str) {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        service.hash(&mut h);
        op.hash(&mut h);
        match serde_json::from_str::<serde_json::Value>(body) {
            Ok(v) => canonical(&v, &mut h),
            Err(_) => body.hash(&mut h),
        }
        let at = self.start.elapsed().as_nanos();
        let mut trace = self.trace.lock().unwrap();
        trace.requests += 1;
        (trace.digest, at).hash(&mut h);
        trace.digest = h.finish();
    }

    pub fn traced(&self) -> Trace {
        *self.trace.lock().unwrap()
    }
}

fn canonical(v: &serde_json::Value, h: &mut impl std::hash::Hasher) {
    use std::hash::Hash;
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<_> = map.keys().collect();
            keys.sort();
            for k in keys {
                k.hash(h);
                canonical(&map[k], h);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| canonical(i, h)),
        other => other.to_string().hash(h),
    }
}

/// The simulated services of one world.
#[derive(Clone)]
pub struct SimAws {
    pub world: Arc<World>,
    pub dynamodb: Arc<dynamodb::SimDynamo>,
    pub sqs: Arc<sqs::SimSqs>,
    pub clock: Clock,
}

/// Where the simulated world's wall clock starts: 2026-01-01T00:00:00Z.
pub const ORIGIN_MS: i64 = 1_767_225_600_000;

impl SimAws {
    /// A world of `config`, its clock starting at `ORIGIN_MS` on tokio's
    /// (paused, for a simulation) clock.
    pub fn new(config: SimConfig) -> SimAws {
        let world = World::new(config);
        SimAws {
            dynamodb: Arc::new(dynamodb::SimDynamo::new(world.clone())),
            sqs: Arc::new(sqs::SimSqs::new(world.clone())),
            world,
            clock: Clock::simulated(ORIGIN_MS),
        }
    }

    /// SDK clients talking to this world, configured as `aws::Clients`
    /// is in production (standard retries, the same attempts and backoff),
    /// with the backoff's jitter off so that a seed repeats. Each
    /// simulated Lambda container gets its own, as each has its own.
    pub fn clients(&self) -> Clients {
        self.clients_through(http::SimHttp::shared(self.clone(), false, None))
    }

    /// `clients`, counting their DynamoDB requests into `counted`.
    pub fn counted_clients(&self, counted: Arc<std::sync::atomic::AtomicU64>) -> Clients {
        self.clients_through(http::SimHttp::shared(self.clone(), false, Some(counted)))
    }

    /// Clients whose DynamoDB requests go straight to the data, without
    /// latency, billing, limits or faults: for looking at a run.
    pub fn direct_clients(&self) -> Clients {
        self.clients_through(http::SimHttp::shared(self.clone(), true, None))
    }

    fn clients_through(
        &self,
        http: aws_smithy_runtime_api::client::http::SharedHttpClient,
    ) -> Clients {
        use aws_config::retry::RetryConfig;
        use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
        use aws_config::{BehaviorVersion, Region, SdkConfig};
        use aws_sdk_dynamodb::config::{Credentials, SharedCredentialsProvider};
        let config = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "SIMULATED",
                "SIMULATED",
                None,
                None,
                "simulation",
            )))
            .endpoint_url("http://aws.simulated")
            .http_client(http)
            .sleep_impl(aws_smithy_async::rt::sleep::SharedAsyncSleep::new(
                aws_smithy_async::rt::sleep::TokioSleep::new(),
            ))
            .time_source(aws_smithy_async::time::SharedTimeSource::new(
                http::SimTime(self.clock),
            ))
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_initial_backoff(Duration::from_millis(50))
                    .with_max_backoff(Duration::from_secs(5))
                    .with_use_static_exponential_base(true),
            )
            .build();
        Clients {
            s3: aws_sdk_s3::Client::new(&config),
            sqs: aws_sdk_sqs::Client::new(&config),
            dynamodb: aws_sdk_dynamodb::Client::new(&config),
            eventbridge: aws_sdk_eventbridge::Client::new(&config),
            lambda: aws_sdk_lambda::Client::new(&config),
            bedrock: aws_sdk_bedrockruntime::Client::new(&config),
            emulated: false,
        }
    }
}

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod indexes;
#[cfg(test)]
mod shards;
