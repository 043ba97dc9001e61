//! Key partitions: with `partitionBy`, each key's rows reach the processor
//! in file order, whatever the number of workers, the faults and the
//! workers killed mid-batch, so a processor that cannot use a conditional
//! write still ends each key as a sequential import would. A killed
//! worker's batch is worked on again from its start, so a key's rows may
//! come twice, but never a row of a later batch before one of an earlier.
//! The same file without partitions, as a control, shows rows of a key
//! taken out of order.

use bulk_import::job::JobId;
use bulk_import::local::{Consumer, Poller};
use bulk_import::processor::{DynamoUpsert, ProcessContext, ProcessError, RecordProcessor};
use bulk_import::schema::ValidRecord;
use bulk_import::store::{ClaimStore, JobControl};
use integration_tests::keyed::{csv, definition_with, is_valid, rows};
use integration_tests::{Stack, StackOptions};
use rand::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WORKERS: usize = 8;

/// Writes through the built-in upsert, fails a share of calls with a
/// retryable error, and records the line of each row it wrote, by key, in
/// the order it wrote them.
struct Recorder {
    upsert: DynamoUpsert,
    seen: Mutex<HashMap<String, Vec<u64>>>,
}

#[async_trait::async_trait]
impl RecordProcessor for Recorder {
    async fn process(
        &self,
        record: &ValidRecord,
        ctx: &ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        self.process_batch(&[record], ctx).await.remove(0)
    }

    async fn process_batch(
        &self,
        records: &[&ValidRecord],
        ctx: &ProcessContext<'_>,
    ) -> Vec<Result<(), ProcessError>> {
        if rand::rng().random_bool(0.1) {
            let fault = || Err(ProcessError::retryable("injected fault"));
            return records.iter().map(|_| fault()).collect();
        }
        let results = self.upsert.process_batch(records, ctx).await;
        let mut seen = self.seen.lock().unwrap();
        for (record, result) in records.iter().zip(&results) {
            if result.is_ok() {
                let email = record.get("email").unwrap().to_string();
                seen.entry(email).or_default().push(record.line);
            }
        }
        results
    }
}

/// `WORKERS` pollers on the job until it is final, one of them aborted
/// (dropped at whatever it was awaiting, as a killed process stops) and
/// replaced now and then, `kills` times; the sweeper passes meanwhile.
async fn run_with_kills(stack: &Stack, job: &JobId, kills: u32) -> u32 {
    let spawn = || {
        let poller = Poller {
            sqs: stack.clients.sqs.clone(),
            queue_url: stack.queue_url.clone(),
            deps: stack.deps.clone(),
            consumer: Consumer::Worker,
            invocation_timeout: Duration::from_secs(60),
        };
        let (store, job) = (stack.deps.store.clone(), job.clone());
        tokio::spawn(async move {
            let ended = || async {
                let found = store.get_job(&job).await.expect("get job");
                found.is_some_and(|j| j.status.is_final() && !j.report_owed)
            };
            poller.run_until(ended).await.expect("poller")
        })
    };
    let mut pollers: Vec<_> = (0..WORKERS).map(|_| spawn()).collect();
    let mut killed = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    for round in 0u64.. {
        tick.tick().await;
        let state = stack.job(job).await;
        if state.status.is_final() && !state.report_owed {
            break;
        }
        if killed < kills && rand::rng().random_bool(0.5) {
            let victim = rand::rng().random_range(0..WORKERS);
            pollers[victim].abort();
            pollers[victim] = spawn();
            killed += 1;
        }
        if round % 10 == 9 {
            stack.sweep().await;
        }
    }
    for poller in pollers {
        poller.abort();
    }
    killed
}

/// Imports the keyed file with `WORKERS` workers, some killed; for each
/// key, the batches of the rows the processor wrote, in the order written.
async fn import(options: &str) -> (HashMap<String, Vec<u64>>, u64) {
    let rows = rows(2_000, 21);
    let opts = StackOptions {
        max_workers: WORKERS as u32,
        lease: Duration::from_secs(2),
        visibility_timeout: Duration::from_secs(5),
    };
    let definition =
        definition_with("last", options).replace("\"batchSize\": 100", "\"batchSize\": 25");
    let mut stack = Stack::with(&definition, opts).await;
    let recorder = Arc::new(Recorder {
        upsert: DynamoUpsert::new(
            stack.clients.dynamodb.clone(),
            &stack.resources.target_table,
        ),
        seen: Mutex::default(),
    });
    stack.deps.processors = Arc::new(bulk_import::processor::Processors::given(recorder.clone()));
    let event = stack.upload("uploads/keyed.csv", csv(&rows)).await;
    let job = JobId::new(&stack.orchestrate(event).await[0].job_id);
    let killed = run_with_kills(&stack, &job, 6).await;
    assert!(killed > 0);
    let state = stack.job(&job).await;
    let failures = stack.watcher.failed_records(&job, 0).await.unwrap();
    assert_eq!(
        state.processed,
        rows.iter().filter(|r| is_valid(r)).count() as u64,
        "{state:?} {failures:?}"
    );
    // Each row's batch.
    let mut batch_of = HashMap::new();
    for index in 0..state.total_batches {
        for record in stack.watcher.load_records(&job, index).await.unwrap() {
            batch_of.insert(record.line, index);
        }
    }
    let seen = recorder.seen.lock().unwrap();
    let batches = seen
        .iter()
        .map(|(key, lines)| (key.clone(), lines.iter().map(|l| batch_of[l]).collect()))
        .collect();
    (batches, state.total_batches)
}

/// Keys a row of which the processor wrote after a row of a later batch.
fn out_of_order(seen: &HashMap<String, Vec<u64>>) -> Vec<(&String, &Vec<u64>)> {
    seen.iter()
        .filter(|(_, lines)| lines.windows(2).any(|w| w[0] > w[1]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_key_partitions_each_keys_rows_are_processed_in_file_order() {
    let (seen, batches) =
        import(r#""partitionBy": ["email"], "partitions": 16, "maxRetries": 10,"#).await;
    let repeated = seen.values().filter(|lines| lines.len() > 1).count();
    assert!(repeated > 200, "{repeated} keys seen more than once");
    let wrong = out_of_order(&seen);
    assert!(
        wrong.is_empty(),
        "{} keys out of order over {batches} batches, e.g. {:?}",
        wrong.len(),
        wrong.first()
    );

    let (control, _) = import(r#""maxRetries": 10,"#).await;
    assert!(
        !out_of_order(&control).is_empty(),
        "without partitions, eight workers take some key's rows out of order"
    );
}
