//! Harness for the integration tests: every test gets its own bucket, queue
//! and tables on the emulator (named with a random prefix), and talks to it
//! through the real SDK clients. The emulator is required: without
//! `AWS_ENDPOINT_URL` the tests fail loudly instead of skipping.

pub mod chaos;
pub mod keyed;
pub mod ledger;
pub mod standin;

use aws_sdk_dynamodb::types::AttributeValue;
use bulk_import::aws::Clients;
use bulk_import::config::Settings;
use bulk_import::events::MemoryEvents;
use bulk_import::handlers::orchestrator::{self, Prepared};
use bulk_import::handlers::Deps;
use bulk_import::job::{Job, JobId};
use bulk_import::local::{
    context, ensure_resources, s3_put_event, Consumer, PollStats, Poller, Resources,
};
use bulk_import::store::dynamodb::table::create_state_table;
use bulk_import::store::dynamodb::DynamoStore;
use bulk_import::store::JobControl;
use lambda_runtime::LambdaEvent;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub type Item = HashMap<String, AttributeValue>;

/// Clients for the emulator; panics when it is not configured.
pub async fn clients() -> Clients {
    if std::env::var_os("AWS_ENDPOINT_URL").is_none() {
        panic!(
            "AWS_ENDPOINT_URL is not set. The integration tests need the AWS emulator: \
             run them with `make test`, which starts moto server."
        );
    }
    Clients::load().await
}

/// Clients for the emulator whose every request goes through `ledger`.
pub async fn ledger_clients(ledger: &ledger::Ledger) -> Clients {
    use aws_smithy_http_client::{
        tls::{self, rustls_provider::CryptoMode},
        Builder,
    };
    clients().await;
    let http = Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(ledger.wrap(http))
        .load()
        .await;
    Clients::from_config(&config)
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A `DynamoStore` on a fresh state table.
pub async fn fresh_store() -> DynamoStore {
    let clients = clients().await;
    let table = unique("state");
    create_state_table(&clients.dynamodb, &table)
        .await
        .expect("create state table");
    DynamoStore::new(clients.dynamodb.clone(), table, false)
}

/// A complete deployment on the emulator: bucket, work and prepare queues
/// with their DLQs, state and target tables, and the handlers' dependencies.
pub struct Stack {
    pub clients: Clients,
    /// Path of the definition file the handlers loaded.
    pub definition_path: std::path::PathBuf,
    pub resources: Resources,
    pub queue_url: String,
    /// Where the orchestrator asks for a handed-over prepare to continue.
    pub prepare_queue_url: String,
    pub deps: Deps,
    pub events: Arc<MemoryEvents>,
    /// Separate store for inspection, so test reads are not billed to jobs.
    pub watcher: DynamoStore,
}

pub struct StackOptions {
    pub lease: Duration,
    pub max_workers: u32,
    /// The work queue's visibility timeout (how soon a message whose worker
    /// died comes back).
    pub visibility_timeout: Duration,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            lease: Duration::from_secs(60),
            max_workers: 4,
            visibility_timeout: Duration::from_secs(60),
        }
    }
}

impl Stack {
    pub async fn new(definition_json: &str) -> Stack {
        Self::with(definition_json, StackOptions::default()).await
    }

    pub async fn with(definition_json: &str, opts: StackOptions) -> Stack {
        Self::with_clients(definition_json, opts, clients().await).await
    }

    /// A stack whose handlers use `clients` (for example wrapped in a
    /// `ledger::Ledger`).
    pub async fn with_clients(
        definition_json: &str,
        opts: StackOptions,
        clients: Clients,
    ) -> Stack {
        let name = unique("t");
        let definition =
            bulk_import::Definition::from_json(definition_json, "test").expect("test definition");
        let key = definition.key_field.clone().unwrap_or_else(|| "id".into());
        let path = std::env::temp_dir().join(format!("{name}.json"));
        std::fs::write(&path, definition_json).expect("write definition");
        let location = path.to_string_lossy().into_owned();
        Self::assemble(name, key, opts, clients, path, |s| s.definition = location).await
    }

    /// A deployment configured with a routes file: `files` (the routes
    /// file `routes.json` among them) are written to a folder of their own,
    /// and the handlers load the routes from there.
    pub async fn with_routes(
        files: &[(&str, &str)],
        opts: StackOptions,
        clients: Clients,
    ) -> Stack {
        let name = unique("t");
        let folder = std::env::temp_dir().join(&name);
        for (file, text) in files {
            let path = folder.join(file);
            std::fs::create_dir_all(path.parent().expect("a folder")).expect("make folder");
            std::fs::write(&path, text).expect("write file");
        }
        let routes = folder.join("routes.json");
        let location = routes.to_string_lossy().into_owned();
        Self::assemble(name, "id".into(), opts, clients, routes, |s| {
            s.routes = Some(location)
        })
        .await
    }

    /// The resources of a stack named `name` (its target table keyed by
    /// `key`) and its handlers, configured by `configure` (the definition
    /// or the routes they load, found at `path`).
    async fn assemble(
        name: String,
        key: String,
        opts: StackOptions,
        clients: Clients,
        path: std::path::PathBuf,
        configure: impl FnOnce(&mut Settings),
    ) -> Stack {
        let resources = Resources {
            bucket: name.clone(),
            queue: name.clone(),
            state_table: format!("{name}-state"),
            target_table: format!("{name}-target"),
            target_key: key,
            visibility_timeout: opts.visibility_timeout,
            prepare_visibility_timeout: Duration::from_secs(960),
        };
        let created = ensure_resources(&clients, &resources)
            .await
            .expect("create resources");
        let mut settings = Settings {
            target_table: Some(resources.target_table.clone()),
            max_workers: opts.max_workers,
            lease: opts.lease,
            deadline_margin: Duration::from_secs(5),
            retention_days: 1,
            prepare_queue_url: Some(created.prepare_queue_url.clone()),
            ..Settings::new(&resources.state_table, &created.queue_url, "")
        };
        configure(&mut settings);
        let mut deps = Deps::new(&settings, &clients, None).await.expect("deps");
        let events = Arc::new(MemoryEvents::default());
        deps.events = events.clone();
        let watcher = DynamoStore::new(clients.dynamodb.clone(), &resources.state_table, false);
        Stack {
            clients,
            definition_path: path,
            resources,
            queue_url: created.queue_url,
            prepare_queue_url: created.prepare_queue_url,
            deps,
            events,
            watcher,
        }
    }

    /// Creates a DynamoDB table `name` (on-demand) keyed by `keys` (a
    /// partition key, and a sort key when two), all strings.
    pub async fn create_table(&self, name: &str, keys: &[&str]) {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        };
        let mut create = self
            .clients
            .dynamodb
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest);
        for (i, key) in keys.iter().enumerate() {
            let kind = if i == 0 {
                KeyType::Hash
            } else {
                KeyType::Range
            };
            create = create
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name(*key)
                        .key_type(kind)
                        .build()
                        .expect("key schema"),
                )
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(*key)
                        .attribute_type(ScalarAttributeType::S)
                        .build()
                        .expect("attribute"),
                );
        }
        create.send().await.expect("create table");
    }

    /// Uploads an object and returns the S3 event Lambda would deliver.
    pub async fn upload(
        &self,
        key: &str,
        body: impl Into<Vec<u8>>,
    ) -> aws_lambda_events::event::s3::S3Event {
        let body: Vec<u8> = body.into();
        let size = body.len() as i64;
        let out = self
            .clients
            .s3
            .put_object()
            .bucket(&self.resources.bucket)
            .key(key)
            .body(body.into())
            .send()
            .await
            .expect("put object");
        s3_put_event(
            &self.resources.bucket,
            key,
            out.e_tag().expect("etag"),
            out.version_id(),
            size,
        )
    }

    pub async fn orchestrate(&self, event: aws_lambda_events::event::s3::S3Event) -> Vec<Prepared> {
        orchestrator::handle(
            &self.deps,
            LambdaEvent::new(event, context(Duration::from_secs(900))),
        )
        .await
        .expect("orchestrator handler")
    }

    /// Runs `n` concurrent pollers (stand-ins for Lambda's SQS event source
    /// mapping) until the job is final and its report written; pollers
    /// started beside the orchestrator wait for it to create the job. A
    /// report the finalizer had no time for (it needs a margin before the
    /// invocation's deadline) is written by the sweeper, as in a deployment.
    pub async fn run_workers(&self, n: usize, job: &JobId) -> PollStats {
        self.run_workers_for(n, std::slice::from_ref(job)).await
    }

    /// `run_workers` until every one of `jobs` is final (and has its report).
    pub async fn run_workers_for(&self, n: usize, jobs: &[JobId]) -> PollStats {
        let pollers = (0..n).map(|_| {
            let poller = Poller {
                sqs: self.clients.sqs.clone(),
                queue_url: self.queue_url.clone(),
                deps: self.deps.clone(),
                consumer: Consumer::Worker,
                invocation_timeout: Duration::from_secs(120),
            };
            async move {
                poller
                    .run_until(|| async {
                        for job in jobs {
                            let done = self
                                .watcher
                                .get_job(job)
                                .await
                                .expect("get job")
                                .is_some_and(|job| job.status.is_final());
                            if !done {
                                return false;
                            }
                        }
                        true
                    })
                    .await
                    .expect("poller")
            }
        });
        let mut total = PollStats::default();
        for s in futures::future::join_all(pollers).await {
            total.invocations += s.invocations;
            total.messages += s.messages;
            total.failed_messages += s.failed_messages;
        }
        for job in jobs {
            if self.job(job).await.report_owed {
                self.sweep().await;
            }
        }
        total
    }

    /// Runs the orchestrator on the prepare queue (a stand-in for its SQS
    /// event source mapping) until the job is prepared (and a retry's
    /// requeue pass over) or final.
    pub async fn continue_prepares(&self, job: &JobId) -> PollStats {
        let poller = Poller {
            sqs: self.clients.sqs.clone(),
            queue_url: self.prepare_queue_url.clone(),
            deps: self.deps.clone(),
            consumer: Consumer::Orchestrator,
            invocation_timeout: Duration::from_secs(900),
        };
        poller
            .run_until(|| async {
                let job = self.job(job).await;
                (job.prepared && !job.round.requeuing) || job.status.is_final()
            })
            .await
            .expect("prepare poller")
    }

    /// One pass of the sweeper, as its schedule runs it.
    pub async fn sweep(&self) {
        self.deps
            .sweeper()
            .sweep("test-sweeper", None)
            .await
            .expect("sweep");
    }

    pub async fn job(&self, id: &JobId) -> Job {
        self.watcher
            .get_job(id)
            .await
            .expect("get job")
            .expect("job exists")
    }

    /// Every item of a table (paginated scan).
    pub async fn scan(&self, table: &str) -> Vec<Item> {
        let mut items = Vec::new();
        let mut pages = self
            .clients
            .dynamodb
            .scan()
            .table_name(table)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            items.extend(page.expect("scan").items.unwrap_or_default());
        }
        items
    }

    pub async fn target_items(&self) -> Vec<Item> {
        self.scan(&self.resources.target_table).await
    }

    /// Messages waiting on a queue (approximate on AWS, exact on moto).
    pub async fn queue_depth(&self, queue_url: &str) -> u64 {
        use aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages;
        self.clients
            .sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(ApproximateNumberOfMessages)
            .send()
            .await
            .expect("get queue attributes")
            .attributes
            .and_then(|mut a| a.remove(&ApproximateNumberOfMessages))
            .expect("ApproximateNumberOfMessages")
            .parse()
            .expect("a count")
    }

    /// Job items in the state table.
    pub async fn jobs_in_state_table(&self) -> usize {
        self.scan(&self.resources.state_table)
            .await
            .iter()
            .filter(|i| i.get("sk").and_then(|v| v.as_s().ok()).map(String::as_str) == Some("JOB"))
            .count()
    }
}

/// The `bulkimport` binary next to this test's executable.
pub fn bulkimport() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("BULKIMPORT_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let bin = dir.join("bulkimport");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace first (make test does)",
        bin.display()
    );
    bin
}

/// What a subscriber to job events sets up: an EventBridge bus with a rule
/// that forwards every `bulk-import` event to an SQS queue, which the test
/// then reads.
pub struct EventTap {
    pub bus: String,
    pub queue_url: String,
}

impl EventTap {
    pub async fn new(clients: &Clients, name: &str) -> EventTap {
        let bus = format!("{name}-bus");
        clients
            .eventbridge
            .create_event_bus()
            .name(&bus)
            .send()
            .await
            .expect("create event bus");
        let queue_url = clients
            .sqs
            .create_queue()
            .queue_name(format!("{name}-events"))
            .send()
            .await
            .expect("create events queue")
            .queue_url
            .expect("queue url");
        let queue_arn = clients
            .sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("queue attributes")
            .attributes
            .and_then(|mut a| a.remove(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
            .expect("queue arn");
        let pattern = serde_json::json!({ "source": [bulk_import::events::SOURCE] });
        clients
            .eventbridge
            .put_rule()
            .name(format!("{name}-jobs"))
            .event_bus_name(&bus)
            .event_pattern(pattern.to_string())
            .send()
            .await
            .expect("put rule");
        clients
            .eventbridge
            .put_targets()
            .rule(format!("{name}-jobs"))
            .event_bus_name(&bus)
            .targets(
                aws_sdk_eventbridge::types::Target::builder()
                    .id("queue")
                    .arn(queue_arn)
                    .build()
                    .expect("target"),
            )
            .send()
            .await
            .expect("put targets");
        EventTap { bus, queue_url }
    }

    /// Every event that arrived so far (the EventBridge envelopes: `source`,
    /// `detail-type`, `detail`, ...), in arrival order; each is read once.
    pub async fn drain(&self, sqs: &aws_sdk_sqs::Client) -> Vec<serde_json::Value> {
        let mut events = Vec::new();
        loop {
            let out = sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .send()
                .await
                .expect("receive events");
            let messages = out.messages.unwrap_or_default();
            if messages.is_empty() {
                return events;
            }
            for m in messages {
                let body = m.body.unwrap_or_default();
                events.push(serde_json::from_str(&body).expect("event is JSON"));
                sqs.delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(m.receipt_handle.unwrap_or_default())
                    .send()
                    .await
                    .expect("delete event");
            }
        }
    }
}
