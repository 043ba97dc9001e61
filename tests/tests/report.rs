//! The error report in S3: small reports are one PutObject, large ones
//! stream up as a multipart upload; both hold exactly what the store lists.

use bulk_import::job::JobId;
use bulk_import::report::{write_csv, ReportSink, S3Reports};
use integration_tests::Stack;

const DEFINITION: &str = r#"{
  "fields": [
    {"name": "email", "type": "email", "required": true},
    {"name": "age", "type": "integer"}
  ],
  "keyField": "email",
  "batchSize": 50
}"#;

async fn failed_job(stack: &Stack, rows: u64) -> JobId {
    let mut csv = String::from("email,age\n");
    for i in 0..rows {
        // Every third row has a bad email, every fifth a bad age.
        let email = if i % 3 == 0 {
            format!("bad-{i}")
        } else {
            format!("u{i}@example.com")
        };
        let age = if i % 5 == 0 {
            "old".to_string()
        } else {
            (20 + i % 50).to_string()
        };
        csv.push_str(&format!("{email},{age}\n"));
    }
    let event = stack.upload("uploads/report.csv", csv).await;
    let prepared = stack.orchestrate(event).await;
    let job = JobId::new(&prepared[0].job_id);
    stack.run_workers(2, &job).await;
    job
}

async fn object(stack: &Stack, location: &str) -> String {
    let key = location
        .strip_prefix(&format!("s3://{}/", stack.resources.bucket))
        .expect("in the upload bucket");
    let out = stack
        .clients
        .s3
        .get_object()
        .bucket(&stack.resources.bucket)
        .key(key)
        .send()
        .await
        .expect("report");
    String::from_utf8(out.body.collect().await.unwrap().into_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn a_large_report_streams_up_in_parts_and_matches_the_store() {
    let stack = Stack::new(DEFINITION).await;
    let job_id = failed_job(&stack, 600).await;
    let job = stack.job(&job_id).await;
    assert!(job.failed > 200);

    let mut expected = Vec::new();
    write_csv(&job, &stack.watcher, &mut expected)
        .await
        .unwrap();
    let expected = String::from_utf8(expected).unwrap();
    assert!(expected.len() > 8 * 1024, "{} bytes", expected.len());

    // The finalizer's report (one PutObject at the default part size).
    assert_eq!(
        object(&stack, job.report.as_deref().unwrap()).await,
        expected
    );

    // The same report in 2 KiB parts.
    let mut sink = S3Reports::new(stack.clients.s3.clone(), None, "reports/multipart/");
    sink.part_bytes = 2048;
    let location = sink.write(&job, &stack.watcher).await.unwrap();
    assert_eq!(object(&stack, &location).await, expected);

    // One row per issue: a row with a bad email and a bad age has two.
    let rows = expected.lines().count() - 1;
    let both = (0..600u64).filter(|i| i % 3 == 0 && i % 5 == 0).count();
    assert_eq!(rows as u64, job.failed + both as u64);
}
