//! Problems of the whole file, and the limits that guard against hostile or
//! broken input: the job fails with a reason naming the file (and the line)
//! and nothing is imported.

use super::*;

#[tokio::test]
async fn a_missing_object_fails_the_job() {
    let outcome = run_import_from(&MemoryObjects::default(), "people.csv", PEOPLE).await;
    assert_eq!(
        outcome,
        rejected(
            "s3://uploads/people.csv does not exist (deleted or replaced since the upload event)"
        )
    );
}

#[tokio::test]
async fn an_empty_or_blank_file_fails_the_job() {
    for file in ["", "\n", " \r\n\t\n"] {
        assert_eq!(
            run_import("people.csv", file, PEOPLE).await,
            rejected("s3://uploads/people.csv: the file is empty"),
            "{file:?}"
        );
    }
}

#[tokio::test]
async fn a_header_without_records_fails_the_job() {
    assert_eq!(
        run_import("people.csv", "name,age,email\n", PEOPLE).await,
        rejected("s3://uploads/people.csv: the file holds no records")
    );
}

#[tokio::test]
async fn a_header_missing_a_required_column_fails_the_job() {
    assert_eq!(
        run_import("people.csv", "age,email\n36,ada@example.org\n", PEOPLE).await,
        rejected("s3://uploads/people.csv: line 1: bad header: missing required column(s): name")
    );
}

#[tokio::test]
async fn a_header_naming_a_column_twice_fails_the_job() {
    assert_eq!(
        run_import("people.csv", "name,age,Name\nAda,36,Ada\n", PEOPLE).await,
        rejected("s3://uploads/people.csv: line 1: bad header: duplicate column name \"Name\"")
    );
}

#[tokio::test]
async fn a_binary_file_fails_the_job() {
    let png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06";
    assert_eq!(
        run_import("people.csv", png.to_vec(), PEOPLE).await,
        rejected(
            "s3://uploads/people.csv: not a text file: \
             it contains NUL bytes (binary data or UTF-16 text)"
        )
    );
}

#[tokio::test]
async fn compression_other_than_gzip_fails_the_job() {
    let zstd = b"\x28\xb5\x2f\xfd\x24\x05\x29\x00\x00name,age\n".to_vec();
    assert_eq!(
        run_import("people.csv", zstd, PEOPLE).await,
        rejected(
            "s3://uploads/people.csv: zstd compression is not supported; \
             upload the file uncompressed or gzip-compressed"
        )
    );
    assert_eq!(
        run_import("people.zip", PEOPLE_CSV, PEOPLE).await,
        rejected(
            "s3://uploads/people.zip: zip compression is not supported; \
             upload the file uncompressed or gzip-compressed"
        )
    );
}

#[tokio::test]
async fn corrupt_gzip_fails_the_job() {
    let mut file = gzip(PEOPLE_CSV.repeat(50).as_bytes());
    file.truncate(file.len() / 2);
    let outcome = run_import("people.csv.gz", file, PEOPLE).await;
    let reason = outcome.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("s3://uploads/people.csv.gz: the gzip data is corrupt or truncated: "),
        "{reason}"
    );
    assert_eq!(outcome, rejected(&reason));
}

#[tokio::test]
async fn an_invalid_definition_is_refused_with_the_path_of_the_problem() {
    let unknown_type = r#"{"fields": [{"name": "age", "type": "integr"}]}"#;
    let err = Definition::from_json(unknown_type, "definition.json").unwrap_err();
    assert_eq!(err.path(), "fields[0].type");
    assert_eq!(
        err.to_string(),
        "import definition definition.json: fields[0].type: unknown variant `integr`, \
         expected one of `string`, `integer`, `number`, `boolean`, `date`, `datetime`, \
         `email`, `enum` at line 1 column 44"
    );

    let too_few_fields = people_with(r#""limits": {"maxFields": 2}"#);
    let err = Definition::from_json(&too_few_fields, "definition.json").unwrap_err();
    assert_eq!(
        err.to_string(),
        "import definition definition.json: limits.maxFields: 2 is fewer than the 3 fields defined"
    );
}

#[tokio::test]
async fn a_row_longer_than_max_row_bytes_fails_the_job() {
    let definition = people_with(r#""limits": {"maxRowBytes": 40}"#);
    let long = format!("{PEOPLE_CSV}Barbara Jane Huberman Liskov,84,barbara@example.org\n");
    assert_eq!(
        run_import("people.csv", long.clone(), &definition).await,
        rejected("s3://uploads/people.csv: line 5: the row is longer than the limit of 40 bytes")
    );
    let long = r#"{"name": "Ada"}
{"name": "Barbara Jane Huberman Liskov", "age": 84}
"#;
    assert_eq!(
        run_import("people.ndjson", long, &definition).await,
        rejected(
            "s3://uploads/people.ndjson: line 2: the row is longer than the limit of 40 bytes"
        )
    );
}

#[tokio::test]
async fn more_records_than_max_records_fails_the_job() {
    // One record per batch: batches are already written when the limit is
    // hit, and still none of them is processed.
    let definition = people_with(r#""limits": {"maxRecords": 2}, "batchSize": 1"#);
    assert_eq!(
        run_import("people.csv", PEOPLE_CSV, &definition).await,
        rejected("s3://uploads/people.csv: line 4: the file has more than the limit of 2 records")
    );
}

#[tokio::test]
async fn a_row_with_more_fields_than_max_fields_fails_the_job() {
    let definition = people_with(r#""limits": {"maxFields": 3}"#);
    let file = format!("{PEOPLE_CSV}Ken,80,ken@example.org,x,y\n");
    assert_eq!(
        run_import("people.csv", file, &definition).await,
        rejected("s3://uploads/people.csv: line 5: the row has 5 fields, more than the limit of 3")
    );
}

#[tokio::test]
async fn a_record_too_large_to_store_fails_alone() {
    // Within maxRowBytes, but larger than one stored item may be.
    let definition = people_with(r#""limits": {"maxRowBytes": 400000}"#);
    let huge_name = "x".repeat(350_000);
    let file = format!(
        "name,age,email\n\
         Ada,36,ada@example.org\n\
         {huge_name},85,grace@example.org\n\
         Alan,41,alan@example.org\n"
    );
    // The record as stored: its line, then each value's length and text.
    let stored = bulk_import::store::codec::encoded_len(&bulk_import::job::StagedRecord {
        line: 3,
        values: vec![
            Some(huge_name),
            Some("85".into()),
            Some("grace@example.org".into()),
        ]
        .into(),
        issue: None,
    });
    assert_eq!(stored, 2 + 350_003 + 3 + 18 + 1);
    assert_eq!(
        run_import("people.csv", file, &definition).await,
        Outcome {
            status: JobStatus::CompletedWithErrors,
            reason: None,
            imported: vec![
                person(2, "Ada", 36, "ada@example.org"),
                person(4, "Alan", 41, "alan@example.org"),
            ],
            errors: vec![error(
                3,
                None,
                &format!("record is {stored} bytes when stored; the limit is 307200 bytes")
            )],
        }
    );
}
