//! The error report in S3: small reports are one PutObject, large ones
//! stream up as a multipart upload; both hold exactly what the store lists.
//! And what it is for: fixed by a user and uploaded again, it imports every
//! row it holds with the same definition.

use bulk_import::job::JobId;
use bulk_import::processor::{DynamoUpsert, ProcessContext, ProcessError, RecordProcessor};
use bulk_import::report::{write_csv, ReportSink, S3Reports};
use bulk_import::schema::ValidRecord;
use bulk_import::JobStatus;
use futures::TryStreamExt;
use integration_tests::Stack;
use std::sync::Arc;

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

    let definition = bulk_import::Definition::from_json(DEFINITION, "test").unwrap();
    let mut expected = Vec::new();
    write_csv(&job, &definition, &stack.watcher, &mut expected)
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
    let location = sink.write(&job, &definition, &stack.watcher).await.unwrap();
    assert_eq!(object(&stack, &location).await, expected);

    // One row per failed record: a row with a bad email and a bad age
    // names both.
    let rows: Vec<&str> = expected.lines().collect();
    assert_eq!(rows[0], "email,age,line,field,reason");
    assert_eq!(rows.len() as u64 - 1, job.failed);
    assert_eq!(
        rows[1],
        "bad-0,old,2,email; age,not a valid email address; not a valid integer"
    );
}

const USERS: &str = r#"{
  "fields": [
    {"name": "email", "type": "email", "required": true},
    {"name": "name", "type": "string", "required": true, "aliases": ["full name"]},
    {"name": "age", "type": "integer"},
    {"name": "plan", "type": "enum", "values": ["free", "pro"], "default": "free"}
  ],
  "keyField": "email",
  "batchSize": 4
}"#;

/// The built-in upsert, except that the target refuses (for good) anyone
/// whose name starts with "REJECT": a processing failure, not the file's.
struct Picky(DynamoUpsert);

#[async_trait::async_trait]
impl RecordProcessor for Picky {
    async fn process(
        &self,
        record: &ValidRecord,
        ctx: &ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        let name = record
            .get("name")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if name.starts_with("REJECT") {
            return Err(ProcessError::permanent("the target refused the name"));
        }
        self.0.process(record, ctx).await
    }
}

async fn rows(csv: &str) -> Vec<Vec<String>> {
    let mut reader = csv_async::AsyncReaderBuilder::new()
        .has_headers(false)
        .create_reader(csv.as_bytes());
    let records: Vec<csv_async::StringRecord> = reader.records().try_collect().await.unwrap();
    records
        .iter()
        .map(|r| r.iter().map(str::to_owned).collect())
        .collect()
}

async fn to_csv(rows: &[Vec<String>]) -> Vec<u8> {
    let mut w = csv_async::AsyncWriter::from_writer(Vec::new());
    for row in rows {
        w.write_record(row).await.unwrap();
    }
    w.into_inner().await.unwrap()
}

#[tokio::test]
async fn a_fixed_report_uploaded_again_imports_every_row_it_holds() {
    let mut stack = Stack::new(USERS).await;
    stack.deps.processors = Arc::new(bulk_import::processor::Processors::given(Arc::new(Picky(
        DynamoUpsert::new(
            stack.clients.dynamodb.clone(),
            &stack.resources.target_table,
        ),
    ))));
    // `notes` is read by no field; names carry commas, quotes and line breaks.
    let mut file = String::from("full name,notes,email,age,plan\n");
    let mut bad = 0;
    for i in 0..20 {
        let (name, email, age, plan) = match i {
            3 => ("Smith, \"Jo\"", "jo-at-example.com".into(), "", "pro"),
            7 => ("Two\nLines", format!("u{i}@example.com"), "forty", "gold"),
            11 => ("REJECT me", format!("u{i}@example.com"), "30", ""),
            15 => ("Ann", format!("u{i}@example.com"), "3.5", ""),
            _ => ("Fine", format!("u{i}@example.com"), "30", "free"),
        };
        bad += u64::from(matches!(i, 3 | 7 | 11 | 15));
        let name = format!("\"{}\"", name.replace('"', "\"\""));
        file.push_str(&format!("{name},note {i},{email},{age},{plan}\n"));
    }
    let event = stack.upload("uploads/users.csv", file).await;
    let first = JobId::new(&stack.orchestrate(event).await[0].job_id);
    stack.run_workers(2, &first).await;
    let job = stack.job(&first).await;
    assert_eq!((job.processed, job.failed), (20 - bad, bad));

    let report = object(&stack, job.report.as_deref().unwrap()).await;
    let mut table = rows(&report).await;
    assert_eq!(
        table[0],
        [
            "full name",
            "email",
            "age",
            "plan",
            "line",
            "field",
            "reason"
        ]
    );
    assert_eq!(
        table[1..].iter().map(|r| r[4].as_str()).collect::<Vec<_>>(),
        // The line break in row 7 moves the lines after it by one.
        ["5", "9", "14", "18"]
    );
    assert_eq!(
        table[1][..4],
        ["Smith, \"Jo\"", "jo-at-example.com", "", "pro"]
    );
    assert_eq!(table[2][5], "age; plan");
    assert_eq!(
        table[3][6],
        "processing failed: the target refused the name"
    );

    // The user fixes the cells the report points at and saves it as it is,
    // the three added columns included.
    for row in &mut table[1..] {
        let fields: Vec<String> = row[5].split("; ").map(str::to_owned).collect();
        for field in fields {
            match field.as_str() {
                "email" => row[1] = "jo@example.com".into(),
                "age" => row[2] = "40".into(),
                "plan" => row[3] = "pro".into(),
                "" => row[0] = "Accepted".into(),
                other => panic!("unexpected field {other}"),
            }
        }
    }
    let event = stack
        .upload("uploads/users-fixed.csv", to_csv(&table).await)
        .await;
    let second = JobId::new(&stack.orchestrate(event).await[0].job_id);
    stack.run_workers(2, &second).await;
    let fixed = stack.job(&second).await;
    assert_eq!(fixed.status, JobStatus::Completed, "{fixed:?}");
    assert_eq!((fixed.processed, fixed.failed), (bad, 0));

    // Every row of the file is now in the target, with the values it had
    // where nothing was wrong.
    let items = stack.target_items().await;
    assert_eq!(items.len(), 20);
    let item = |email: &str| {
        items
            .iter()
            .find(|i| i["email"].as_s().unwrap() == email)
            .unwrap_or_else(|| panic!("{email} imported"))
    };
    let jo = item("jo@example.com");
    assert_eq!(jo["name"].as_s().unwrap(), "Smith, \"Jo\"");
    assert_eq!(jo["plan"].as_s().unwrap(), "pro");
    assert!(!jo.contains_key("age"));
    let two = item("u7@example.com");
    assert_eq!(two["name"].as_s().unwrap(), "Two\nLines");
    assert_eq!(two["age"].as_n().unwrap(), "40");
    assert_eq!(two["plan"].as_s().unwrap(), "pro");
    assert_eq!(item("u11@example.com")["name"].as_s().unwrap(), "Accepted");
    assert_eq!(item("u15@example.com")["age"].as_n().unwrap(), "40");
    assert_eq!(item("u15@example.com")["plan"].as_s().unwrap(), "free");
}
