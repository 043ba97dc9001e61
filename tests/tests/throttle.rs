//! The throughput cap on the emulator: the window items in the state table
//! and a capped job run by several workers.

use bulk_import::job::JobId;
use bulk_import::throttle::{Reservation, Throttle};
use bulk_import::JobStatus;
use integration_tests::{fresh_store, Stack, StackOptions};
use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

#[tokio::test]
async fn a_window_grants_up_to_the_cap_and_each_second_is_its_own() {
    let store = fresh_store().await;
    let job = JobId::new("0123456789abcdef0123456789abcdef");
    let second = 1_800_000_000;
    let reserve = |second, units| store.reserve(&job, second, units, 100);
    assert_eq!(reserve(second, 60).await.unwrap(), Reservation::Granted);
    assert_eq!(reserve(second, 40).await.unwrap(), Reservation::Granted);
    assert_eq!(reserve(second, 1).await.unwrap(), Reservation::Full);
    assert_eq!(
        reserve(second + 1, 100).await.unwrap(),
        Reservation::Granted
    );
    assert_eq!(reserve(second + 2, 30).await.unwrap(), Reservation::Granted);
    assert_eq!(reserve(second + 2, 71).await.unwrap(), Reservation::Full);
    assert_eq!(reserve(second + 2, 70).await.unwrap(), Reservation::Granted);
    let other = JobId::new("fedcba9876543210fedcba9876543210");
    assert_eq!(
        store.reserve(&other, second, 100, 100).await.unwrap(),
        Reservation::Granted,
        "jobs do not share windows"
    );
}

const CAP: u64 = 300;

fn definition(cap: u64) -> String {
    format!(
        r#"{{"fields": [
            {{"name": "email", "type": "email", "required": true}},
            {{"name": "name", "type": "string"}}
          ], "keyField": "email", "batchSize": 100, "maxWriteUnitsPerSecond": {cap}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capped_job_completes_with_exact_counts_and_no_window_over_the_cap() {
    let rows = 1_500;
    let stack = Stack::with(
        &definition(CAP),
        StackOptions {
            max_workers: 4,
            ..StackOptions::default()
        },
    )
    .await;
    let mut csv = String::from("email,name\n");
    for i in 0..rows {
        csv.push_str(&format!("user{i}@example.com,User {i}\n"));
    }
    // Two invalid rows: they are validated, reported, and never reserved.
    csv.push_str("not-an-email,Nobody\nalso-not,Nobody\n");
    let event = stack.upload("uploads/capped.csv", csv).await;
    let prepared = stack.orchestrate(event).await;
    let job_id = JobId::new(&prepared[0].job_id);
    let started = Instant::now();
    stack.run_workers(4, &job_id).await;
    let elapsed = started.elapsed();

    let job = stack.job(&job_id).await;
    assert_eq!(job.status, JobStatus::CompletedWithErrors);
    assert_eq!(
        (job.total_records, job.processed, job.failed),
        (rows + 2, rows, 2)
    );
    let items = stack.target_items().await;
    let keys: HashSet<&String> = items.iter().map(|i| i["email"].as_s().unwrap()).collect();
    assert_eq!((items.len(), keys.len()), (rows as usize, rows as usize));

    // Each record is one write unit: 1,500 units at 300 a second take at
    // least five windows, none holding more than the cap.
    let prefix = format!("J#{job_id}#W#");
    let windows: BTreeMap<i64, u64> = stack
        .scan(&stack.resources.state_table)
        .await
        .iter()
        .filter_map(|item| {
            let second = item["pk"]
                .as_s()
                .ok()?
                .strip_prefix(&prefix)?
                .parse()
                .ok()?;
            Some((second, item["used"].as_n().ok()?.parse().ok()?))
        })
        .collect();
    assert_eq!(windows.values().sum::<u64>(), rows, "{windows:?}");
    assert!(windows.values().all(|&used| used <= CAP), "{windows:?}");
    assert!(windows.len() >= 5, "{windows:?}");
    assert!(elapsed.as_secs_f64() >= 4.0, "took {elapsed:?}");
}
