//! Keyed imports: whatever the interleaving of workers, kills, redelivered
//! messages and injected faults, the target table holds for each key the
//! row `onDuplicateKey` picks, as importing the file row by row would.
//!
//! Scale with KEYED_ROWS (default 3,000 rows a policy).

use bulk_import::job::JobId;
use bulk_import::processor::ORDER_ATTRIBUTE;
use bulk_import::store::JobControl;
use bulk_import::JobStatus;
use integration_tests::chaos::Chaos;
use integration_tests::keyed::{csv, definition, is_valid, rejected, rows, sequential};
use integration_tests::{Item, Stack, StackOptions};
use std::collections::HashMap;
use std::time::Duration;

const WORKERS: usize = 8;
const LEASE_SECONDS: u64 = 3;

fn table_of(items: &[Item]) -> HashMap<String, (String, String)> {
    items
        .iter()
        .map(|i| {
            let text = |name: &str| match &i[name] {
                aws_sdk_dynamodb::types::AttributeValue::S(s) => s.clone(),
                aws_sdk_dynamodb::types::AttributeValue::N(n) => n.clone(),
                other => panic!("{name}: {other:?}"),
            };
            assert!(i.contains_key(ORDER_ATTRIBUTE), "{i:?}");
            (text("email"), (text("name"), text("n")))
        })
        .collect()
}

async fn chaos_run(policy: &str, seed: u64) {
    let count = std::env::var("KEYED_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let rows = rows(count, seed);
    let opts = StackOptions {
        lease: Duration::from_secs(LEASE_SECONDS),
        max_workers: WORKERS as u32,
        visibility_timeout: Duration::from_secs(10),
    };
    let stack = Stack::with(&definition(policy), opts).await;
    let event = stack.upload("uploads/keyed.csv", csv(&rows)).await;
    let job_id = JobId::new(&stack.orchestrate(event).await[0].job_id);
    let chaos = Chaos {
        workers: WORKERS,
        kills: 8,
        lease_seconds: LEASE_SECONDS,
        fault_rate: "0.05",
        event_bus: None,
        timeout: Duration::from_secs(600),
    };
    let run = chaos.run(&stack, &job_id).await;
    let job = stack.job(&job_id).await;
    let expected = sequential(&rows, policy);
    let valid = rows.iter().filter(|r| is_valid(r)).count() as u64;
    println!(
        "keyed {policy}: rows={count} keys={} kills={} injected_faults={} duplicates={} (file: {}) elapsed_ms={}",
        expected.len(),
        run.kills,
        run.injected_faults,
        job.duplicates,
        valid - expected.len() as u64,
        run.elapsed.as_millis()
    );
    assert_eq!(job.status, JobStatus::CompletedWithErrors);
    let rejected = if policy == "reject" {
        rejected(&rows)
    } else {
        HashMap::new()
    };
    assert_eq!(job.processed, valid - rejected.len() as u64);
    assert_eq!(job.failed, count as u64 - valid + rejected.len() as u64);
    if policy == "reject" {
        // Exactly the later rows of each key, each naming the first.
        let mut failed = HashMap::new();
        for index in 0..job.total_batches {
            for f in stack.watcher.failed_records(&job_id, index).await.unwrap() {
                let message = f.issues[0].message.clone();
                if let Some(first) = message.strip_prefix("processing failed: duplicate of line ") {
                    failed.insert(f.line, first.parse::<u64>().unwrap());
                }
            }
        }
        assert_eq!(failed, rejected, "the rows rejected as duplicates");
        assert_eq!(job.duplicates, rejected.len() as u64);
    }
    assert!(run.kills > 0 && run.injected_faults > 0, "{run:?}");
    let table = table_of(&stack.target_items().await);
    assert_eq!(table.len(), expected.len());
    for (key, want) in &expected {
        assert_eq!(table.get(key), Some(want), "key {key} under {policy}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_last_every_key_holds_its_last_row_whatever_the_chaos() {
    chaos_run("last", 11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_first_every_key_holds_its_first_row_whatever_the_chaos() {
    chaos_run("first", 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_reject_the_later_rows_of_each_key_fail_naming_the_first_whatever_the_chaos() {
    chaos_run("reject", 14).await;
}

#[tokio::test]
async fn without_faults_the_job_counts_each_repeat_once() {
    let rows = rows(600, 13);
    let stack = Stack::new(&definition("last")).await;
    let event = stack.upload("uploads/keyed.csv", csv(&rows)).await;
    let job_id = JobId::new(&stack.orchestrate(event).await[0].job_id);
    stack.run_workers(4, &job_id).await;
    let job = stack.job(&job_id).await;
    let expected = sequential(&rows, "last");
    let valid = rows.iter().filter(|r| is_valid(r)).count() as u64;
    assert_eq!(job.duplicates, valid - expected.len() as u64);
    assert!(job.duplicates > 100, "{}", job.duplicates);
    assert_eq!(table_of(&stack.target_items().await), expected);
}

/// Runs one worker on `job` alone, as a message for it would.
async fn work(stack: &Stack, job: &JobId) {
    let deps = &stack.deps;
    let store = deps.store.as_ref();
    let definition = deps.pinned.of(store, job, &deps.routes).await.unwrap();
    let created = deps.pinned.created_at(store, job).await.unwrap();
    let processor = deps.processors.require(&definition).unwrap();
    let worker = deps.worker(processor.as_ref(), &definition, created);
    worker.run(job, "worker", None).await.unwrap();
}

#[tokio::test]
async fn a_later_job_wins_even_when_an_earlier_one_writes_after_it() {
    let stack = Stack::new(&definition("last")).await;
    let older = stack
        .upload(
            "uploads/monday.csv",
            "email,name,n\na@example.com,Monday,1\nb@example.com,Monday,2\n",
        )
        .await;
    let newer = stack
        .upload(
            "uploads/tuesday.csv",
            "email,name,n\na@example.com,Tuesday,1\n",
        )
        .await;
    let older = JobId::new(&stack.orchestrate(older).await[0].job_id);
    let newer = JobId::new(&stack.orchestrate(newer).await[0].job_id);
    assert!(stack.job(&older).await.created_at_ms < stack.job(&newer).await.created_at_ms);
    // The newer job runs first; the older one (say, a retry of it) after.
    work(&stack, &newer).await;
    work(&stack, &older).await;
    let table = table_of(&stack.target_items().await);
    assert_eq!(table["a@example.com"].0, "Tuesday");
    assert_eq!(table["b@example.com"].0, "Monday");
    assert_eq!(stack.job(&older).await.processed, 2);
}

/// The example of README's "Repeated keys", under each policy.
#[tokio::test]
async fn the_readme_example_ends_as_its_table_says() {
    const FILE: &str = "email,name,plan\nada@example.com,Ada,free\nbob@example.com,Bob,free\nada@example.com,Ada Lovelace,pro\n";
    let expected = [
        ("last", "Ada Lovelace", "pro", (3, 0)),
        ("first", "Ada", "free", (3, 0)),
        ("reject", "Ada", "free", (2, 1)),
    ];
    for (policy, name, plan, (processed, failed)) in expected {
        let definition = format!(
            r#"{{"fields": [{{"name": "email", "type": "email", "required": true}},
                {{"name": "name", "type": "string", "required": true}},
                {{"name": "plan", "type": "enum", "values": ["free", "pro"]}}],
                "keyField": "email", "onDuplicateKey": "{policy}"}}"#
        );
        let stack = Stack::new(&definition).await;
        let event = stack.upload("uploads/example.csv", FILE).await;
        let job_id = JobId::new(&stack.orchestrate(event).await[0].job_id);
        stack.run_workers(1, &job_id).await;
        let job = stack.job(&job_id).await;
        assert_eq!(
            (job.processed, job.failed, job.duplicates),
            (processed, failed, 1),
            "{policy}"
        );
        let items = stack.target_items().await;
        let ada = items
            .iter()
            .find(|i| i["email"].as_s().unwrap() == "ada@example.com")
            .unwrap();
        assert_eq!(ada["name"].as_s().unwrap(), name, "{policy}");
        assert_eq!(ada["plan"].as_s().unwrap(), plan, "{policy}");
        assert_eq!(items.len(), 2);
        if policy == "reject" {
            let failed = stack.watcher.failed_records(&job_id, 0).await.unwrap();
            assert_eq!(failed.len(), 1);
            assert_eq!(failed[0].line, 4);
            assert_eq!(
                failed[0].issues[0].message,
                "processing failed: duplicate of line 2"
            );
        }
    }
}
