//! Key partitions: with `partitionBy`, each key's rows reach the processor
//! in file order, whatever the number of workers and the faults, so a
//! processor that cannot use a conditional write still ends each key as a
//! sequential import would. The same file without partitions, as a control,
//! shows rows of a key taken out of order.

use bulk_import::job::JobId;
use bulk_import::processor::{DynamoUpsert, ProcessContext, ProcessError, RecordProcessor};
use bulk_import::schema::ValidRecord;
use bulk_import::store::JobControl;
use integration_tests::keyed::{csv, definition_with, is_valid, rows};
use integration_tests::{Stack, StackOptions};
use rand::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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

/// Imports the keyed file with `WORKERS` workers; each key's lines in the
/// order the processor wrote them.
async fn import(options: &str) -> (HashMap<String, Vec<u64>>, u64) {
    let rows = rows(3_000, 21);
    let opts = StackOptions {
        max_workers: WORKERS as u32,
        ..StackOptions::default()
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
    stack.deps.processor = Some(recorder.clone());
    let event = stack.upload("uploads/keyed.csv", csv(&rows)).await;
    let job = JobId::new(&stack.orchestrate(event).await[0].job_id);
    stack.run_workers(WORKERS, &job).await;
    let state = stack.job(&job).await;
    let failures = stack.watcher.failed_records(&job, 0).await.unwrap();
    assert_eq!(
        state.processed,
        rows.iter().filter(|r| is_valid(r)).count() as u64,
        "{state:?} {failures:?}"
    );
    let seen = recorder.seen.lock().unwrap().clone();
    (seen, state.total_batches)
}

/// Keys some of whose rows the processor wrote out of file order.
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
    assert!(repeated > 300, "{repeated} keys seen more than once");
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
