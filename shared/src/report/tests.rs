//! The report's format: each failed row as it was in the file, under the
//! file's header, then line, field and reason; and that it reads back as
//! the file did.

use super::*;
use crate::job::{FieldIssue, SourceRef};
use crate::source::{OpenOptions, RecordReader};
use crate::store::memory::MemoryStore;
use crate::store::{
    BatchOutcome, BatchState, Claim, ClaimStore, CreateOutcome, JobControl, NewBatch, PrepareLease,
    PrepareStore,
};

const T0: i64 = 1_700_000_000_000;

const USERS: &str = r#"{
  "fields": [
    {"name": "email", "type": "email", "required": true},
    {"name": "name", "type": "string", "required": true, "aliases": ["full name"]},
    {"name": "age", "type": "integer"}
  ],
  "batchSize": 2
}"#;

fn definition(json: &str) -> Definition {
    Definition::from_json(json, "test").unwrap()
}

/// The file's records as prepare stages them, and the header it pins.
async fn stage(
    def: &Definition,
    name: &str,
    text: &str,
) -> (Vec<StagedRecord>, Option<Vec<String>>) {
    let opts = OpenOptions {
        name,
        content_encoding: None,
    };
    let bytes = std::io::Cursor::new(text.as_bytes().to_vec());
    let mut reader = RecordReader::open(bytes, opts, def).await.unwrap();
    let pinned = reader.header().map(|h| file_columns(def, h));
    let mut records = Vec::new();
    while let Some(record) = reader.next_record().await.unwrap() {
        records.push(record);
    }
    (records, pinned)
}

/// A finished job of `text` in a memory store: batches of `batchSize`, each
/// committed with its validation failures plus `extra` failures by batch.
async fn run(
    store: &MemoryStore,
    def: &Definition,
    name: &str,
    text: &str,
    extra: &[(u64, FailedRecord)],
) -> Job {
    let (records, pinned) = stage(def, name, text).await;
    let source = SourceRef {
        bucket: "b".into(),
        key: name.into(),
        version: "v".into(),
    };
    let lease = PrepareLease {
        owner: "o".into(),
        lease_ms: 60_000,
    };
    let CreateOutcome::Created(job) = store.create_job(&source, &lease, T0).await.unwrap() else {
        panic!("a new job")
    };
    if let Some(columns) = pinned {
        store.pin_columns(&job.id, &columns).await.unwrap();
    }
    let batches: Vec<&[StagedRecord]> = records.chunks(def.batch_size).collect();
    for (index, batch) in batches.iter().enumerate() {
        let index = index as u64;
        let batch = NewBatch {
            index,
            records: batch,
            after: None,
        };
        store.write_batch(&job.id, batch, T0).await.unwrap();
        store
            .publish(&job.id, &lease, index + 1, None, T0)
            .await
            .unwrap();
    }
    store
        .finish_prepare(&job.id, &lease, records.len() as u64, batches.len() as u64)
        .await
        .unwrap();
    for _ in 0..batches.len() {
        let Claim::Batch(claim) = store.claim_batch(&job.id, "w", T0, 60_000).await.unwrap() else {
            panic!("a batch to claim")
        };
        let mut failed: Vec<FailedRecord> = batches[claim.index as usize]
            .iter()
            .filter_map(|r| {
                def.validate(r)
                    .err()
                    .map(|i| FailedRecord::invalid(r.line, i))
            })
            .collect();
        failed.extend(
            extra
                .iter()
                .filter(|(b, _)| *b == claim.index)
                .map(|(_, f)| f.clone()),
        );
        let outcome = BatchOutcome {
            state: BatchState::Done,
            processed: claim.record_count.saturating_sub(failed.len() as u64),
            failed,
            error: None,
            duplicates: 0,
        };
        store.commit_batch(&claim, &outcome, T0).await.unwrap();
    }
    store.get_job(&job.id).await.unwrap().unwrap()
}

async fn report(store: &MemoryStore, def: &Definition, job: &Job) -> String {
    let mut out = Vec::new();
    write_csv(job, def, store, &mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn a_failed_row_is_reported_as_it_was_in_the_file_under_its_header() {
    let def = definition(USERS);
    let store = MemoryStore::new();
    let file = "Full Name,notes,email,AGE\n\
                Ada,x,ada@example.com,36\n\
                Bob,y,bob-at-example.com,forty\n\
                Cy,z,cy@example.com,\n";
    let job = run(&store, &def, "users.csv", file, &[]).await;
    // The columns the definition reads, in the file's order, under the
    // file's names; `notes` is read by no field, so it is not staged.
    assert_eq!(
        report(&store, &def, &job).await,
        "Full Name,email,AGE,line,field,reason\n\
         Bob,bob-at-example.com,forty,3,email; age,not a valid email address; not a valid integer\n"
    );
}

#[tokio::test]
async fn commas_quotes_and_line_breaks_are_escaped_and_read_back_unchanged() {
    let def = definition(USERS);
    let store = MemoryStore::new();
    let file = "email,name,age\n\
                \"a,b@example.com\",\"Smith, \"\"Jo\"\"\",1\n\
                c@example.com,\"two\nlines\",x\n\
                d@example.com, spaced ,\r\n";
    let job = run(&store, &def, "users.csv", file, &[]).await;
    let text = report(&store, &def, &job).await;
    assert_eq!(
        text,
        "email,name,age,line,field,reason\n\
         \"a,b@example.com\",\"Smith, \"\"Jo\"\"\",1,2,email,not a valid email address\n\
         c@example.com,\"two\nlines\",x,3,age,not a valid integer\n"
    );
    // Imported again, the report's rows hold the values the file held.
    let (original, _) = stage(&def, "users.csv", file).await;
    let (again, pinned) = stage(&def, "report.csv", &text).await;
    assert_eq!(pinned.unwrap(), ["email", "name", "age"]);
    let values = |records: &[StagedRecord]| -> Vec<Vec<Option<String>>> {
        records.iter().map(|r| r.values.to_vec()).collect()
    };
    assert_eq!(values(&again), values(&original[..2]));
}

#[tokio::test]
async fn records_that_failed_in_processing_or_without_a_line_are_reported_too() {
    let def = definition(USERS);
    let store = MemoryStore::new();
    let file = "email,name\na@example.com,Ann\nb@example.com,Ben\nc@example.com,Cat\n";
    let refused = FieldIssue::new(None, None, "the target refused it");
    let lost = FieldIssue::new(None, None, "batch 1: records could not be loaded");
    let extra = [
        (0, FailedRecord::unprocessed(3, vec![refused])),
        (1, FailedRecord::unprocessed(0, vec![lost])),
    ];
    let job = run(&store, &def, "users.csv", file, &extra).await;
    assert_eq!(
        report(&store, &def, &job).await,
        "email,name,line,field,reason\n\
         b@example.com,Ben,3,,the target refused it\n\
         ,,0,,batch 1: records could not be loaded\n"
    );
}

#[tokio::test]
async fn without_a_header_the_columns_or_the_fields_name_the_columns() {
    let store = MemoryStore::new();
    let headerless = definition(
        r#"{"fields": [{"name": "n", "type": "integer"}, {"name": "s", "type": "string"}],
            "hasHeader": false, "columns": ["id", "s", "n"], "delimiter": ";"}"#,
    );
    let job = run(&store, &headerless, "a.csv", "1;x;2\n2;y;z\n", &[]).await;
    assert_eq!(
        report(&store, &headerless, &job).await,
        "s;n;line;field;reason\ny;z;2;n;not a valid integer\n"
    );

    let ndjson = definition(
        r#"{"fields": [{"name": "n", "type": "integer"}, {"name": "line", "type": "string"}]}"#,
    );
    let text = "{\"line\": \"a, b\", \"n\": 1}\n{\"n\": 1.5, \"line\": \"c\", \"other\": 1}\n";
    let job = run(&store, &ndjson, "a.ndjson", text, &[]).await;
    assert_eq!(
        report(&store, &ndjson, &job).await,
        "n,line,_line,field,reason\n1.5,c,2,n,not a valid integer\n"
    );
}

#[tokio::test]
async fn a_job_without_failures_in_a_batch_writes_only_the_rows_that_failed() {
    let def = definition(USERS);
    let store = MemoryStore::new();
    let mut file = String::from("email,name\n");
    for i in 0..9 {
        let email = if i == 7 {
            "nope".to_string()
        } else {
            format!("u{i}@example.com")
        };
        file.push_str(&format!("{email},U{i}\n"));
    }
    let job = run(&store, &def, "users.csv", &file, &[]).await;
    assert_eq!(job.total_batches, 5);
    assert_eq!(
        report(&store, &def, &job).await,
        "email,name,line,field,reason\nnope,U7,9,email,not a valid email address\n"
    );
}

#[test]
fn the_layout_of_a_job_without_pinned_columns_is_the_field_order() {
    let def = definition(USERS);
    let layout = Layout::new(&def, None);
    assert_eq!(
        layout.header(),
        ["email", "name", "age", "line", "field", "reason"]
    );
    let pinned = Layout::new(
        &def,
        Some(vec!["AGE".into(), "gone".into(), "Email".into()]),
    );
    assert_eq!(pinned.header(), ["AGE", "Email", "line", "field", "reason"]);
    let failed = FailedRecord::invalid(
        7,
        vec![FieldIssue::new(
            Some("age"),
            Some("x"),
            "not a valid integer",
        )],
    );
    let values = [Some("e@x.io".to_string()), None, Some("x".to_string())];
    assert_eq!(
        pinned.row(&failed, Some(&values)),
        ["x", "e@x.io", "7", "age", "not a valid integer"]
    );
    assert_eq!(
        pinned.row(&failed, None),
        ["", "", "7", "age", "not a valid integer"]
    );
}
