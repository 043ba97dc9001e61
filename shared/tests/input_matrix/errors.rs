//! Problems of single records: reported with line, field and message, while
//! the rest of the file is imported.

use super::*;

/// The outcome of a file whose records mostly fail.
fn with_errors(imported: Vec<(u64, Value)>, errors: Vec<(u64, Option<String>, String)>) -> Outcome {
    Outcome {
        status: JobStatus::CompletedWithErrors,
        reason: None,
        imported,
        errors,
    }
}

/// Imports one value per row into a field defined as `field` (a JSON
/// object without its name), next to a required `id` so that every row
/// has something valid. Rows are on lines 2, 3, ...
async fn one_field(field: &str, values: &[&str]) -> Outcome {
    let definition = format!(
        r#"{{"fields": [
            {{"name": "id", "type": "integer", "required": true}},
            {{"name": "value", {field}}}
        ]}}"#
    );
    let mut file = String::from("id,value\n");
    for (i, value) in values.iter().enumerate() {
        file += &format!("{},{value}\n", i + 1);
    }
    run_import("values.csv", file, &definition).await
}

fn value(line: u64, value: Value) -> (u64, Value) {
    (line, json!({"id": line - 1, "value": value}))
}

fn bad_value(line: u64, message: &str) -> (u64, Option<String>, String) {
    error(line, Some("value"), message)
}

#[tokio::test]
async fn a_row_with_too_many_fields_fails_alone() {
    let file = "name,age,email\n\
        Ada,36,ada@example.org\n\
        Grace,85,grace@example.org,extra\n\
        Alan,41,alan@example.org\n";
    assert_eq!(
        run_import("people.csv", file, PEOPLE).await,
        with_errors(
            vec![
                person(2, "Ada", 36, "ada@example.org"),
                person(4, "Alan", 41, "alan@example.org"),
            ],
            vec![error(3, None, "expected 3 fields, found 4")],
        )
    );
}

#[tokio::test]
async fn a_row_with_too_few_fields_fails_alone() {
    let file = "name,age,email\n\
        Ada,36,ada@example.org\n\
        Grace,85\n\
        Alan,41,alan@example.org\n";
    assert_eq!(
        run_import("people.csv", file, PEOPLE).await,
        with_errors(
            vec![
                person(2, "Ada", 36, "ada@example.org"),
                person(4, "Alan", 41, "alan@example.org"),
            ],
            vec![error(3, None, "expected 3 fields, found 2")],
        )
    );
}

#[tokio::test]
async fn invalid_utf8_in_a_field_fails_that_record_alone() {
    let mut file = b"name,age,email\nAda,36,ada@example.org\n".to_vec();
    file.extend_from_slice(b"Caf\xe9,85,grace@example.org\n");
    file.extend_from_slice(b"Alan,41,alan@example.org\n");
    assert_eq!(
        run_import("people.csv", file, PEOPLE).await,
        with_errors(
            vec![
                person(2, "Ada", 36, "ada@example.org"),
                person(4, "Alan", 41, "alan@example.org"),
            ],
            vec![error(3, Some("name"), "invalid UTF-8")],
        )
    );
}

#[tokio::test]
async fn integers_are_whole_numbers_within_64_bits() {
    let outcome = one_field(
        r#""type": "integer""#,
        &["42", " -7 ", "4.5", "abc", "99999999999999999999"],
    )
    .await;
    assert_eq!(
        outcome,
        with_errors(
            vec![value(2, json!(42)), value(3, json!(-7))],
            vec![
                bad_value(4, "not a valid integer"),
                bad_value(5, "not a valid integer"),
                bad_value(6, "not a valid integer (out of range)"),
            ],
        )
    );
}

#[tokio::test]
async fn numbers_are_finite_decimals() {
    let outcome = one_field(
        r#""type": "number""#,
        &["9.5", "1e3", "-0.25", "\"1,5\"", "nan", "abc"],
    )
    .await;
    assert_eq!(
        outcome,
        with_errors(
            vec![
                value(2, json!(9.5)),
                value(3, json!(1000.0)),
                value(4, json!(-0.25))
            ],
            vec![
                bad_value(5, "not a valid number"),
                bad_value(6, "not a valid number"),
                bad_value(7, "not a valid number"),
            ],
        )
    );
}

#[tokio::test]
async fn booleans_are_true_false_yes_no_y_n_1_0_in_any_case() {
    let outcome = one_field(r#""type": "boolean""#, &["true", "Yes", "n", "0", "maybe"]).await;
    assert_eq!(
        outcome,
        with_errors(
            vec![
                value(2, json!(true)),
                value(3, json!(true)),
                value(4, json!(false)),
                value(5, json!(false)),
            ],
            vec![bad_value(
                6,
                "not a valid boolean (expected true/false, yes/no, y/n or 1/0)"
            )],
        )
    );
}

#[tokio::test]
async fn dates_are_real_calendar_days_written_yyyy_mm_dd() {
    let outcome = one_field(
        r#""type": "date""#,
        &["2024-02-29", "2023-02-29", "2024-1-5", "31/01/2024"],
    )
    .await;
    let bad = "not a valid date (expected YYYY-MM-DD)";
    assert_eq!(
        outcome,
        with_errors(
            vec![value(2, json!("2024-02-29"))],
            vec![bad_value(3, bad), bad_value(4, bad), bad_value(5, bad)],
        )
    );
}

#[tokio::test]
async fn datetimes_are_rfc_3339_and_stored_in_utc() {
    let outcome = one_field(
        r#""type": "datetime""#,
        &[
            "2024-01-31T10:00:00Z",
            "2024-01-31T10:00:00+02:00",
            "2024-01-31 10:00:00",
            "yesterday",
            "2024-01-31T25:00:00Z",
        ],
    )
    .await;
    let bad = "not a valid date-time (expected RFC 3339, e.g. 2024-01-31T10:00:00Z)";
    assert_eq!(
        outcome,
        with_errors(
            vec![
                value(2, json!("2024-01-31T10:00:00Z")),
                value(3, json!("2024-01-31T08:00:00Z")),
                // A local time without an offset is taken as UTC.
                value(4, json!("2024-01-31T10:00:00Z")),
            ],
            vec![bad_value(5, bad), bad_value(6, bad)],
        )
    );
}

#[tokio::test]
async fn emails_are_bare_addresses_with_a_top_level_domain() {
    let outcome = one_field(
        r#""type": "email""#,
        &[
            "ada@example.org",
            "not-an-email",
            "Ada <ada@example.org>",
            "ada@localhost",
        ],
    )
    .await;
    let bad = "not a valid email address";
    assert_eq!(
        outcome,
        with_errors(
            vec![value(2, json!("ada@example.org"))],
            vec![bad_value(3, bad), bad_value(4, bad), bad_value(5, bad)],
        )
    );
}

#[tokio::test]
async fn a_value_not_matching_the_pattern_fails() {
    let outcome = one_field(
        r#""type": "string", "pattern": "^[A-Z]{3}$""#,
        &["ABC", "abcd"],
    )
    .await;
    assert_eq!(
        outcome,
        with_errors(
            vec![value(2, json!("ABC"))],
            vec![bad_value(3, "does not match pattern ^[A-Z]{3}$")],
        )
    );
}

#[tokio::test]
async fn an_enum_value_must_be_listed_exactly() {
    let outcome = one_field(
        r#""type": "enum", "values": ["free", "pro"]"#,
        &["pro", " free ", "gold", "PRO"],
    )
    .await;
    let bad = "must be one of: free, pro";
    assert_eq!(
        outcome,
        with_errors(
            vec![value(2, json!("pro")), value(3, json!("free"))],
            vec![bad_value(4, bad), bad_value(5, bad)],
        )
    );
}

#[tokio::test]
async fn a_missing_or_blank_required_value_fails() {
    let file = "name,age,email\n\
        Ada,36,ada@example.org\n\
        ,85,grace@example.org\n\
        \"   \",41,alan@example.org\n";
    assert_eq!(
        run_import("people.csv", file, PEOPLE).await,
        with_errors(
            vec![person(2, "Ada", 36, "ada@example.org")],
            vec![
                error(3, Some("name"), "required value is missing"),
                error(4, Some("name"), "required value is missing"),
            ],
        )
    );
}

#[tokio::test]
async fn every_problem_of_a_record_is_reported_at_once() {
    let file = "name,age,email\n\
        Ada,36,ada@example.org\n\
        ,old,grace@\n";
    assert_eq!(
        run_import("people.csv", file, PEOPLE).await,
        with_errors(
            vec![person(2, "Ada", 36, "ada@example.org")],
            vec![
                error(3, Some("name"), "required value is missing"),
                error(3, Some("age"), "not a valid integer"),
                error(3, Some("email"), "not a valid email address"),
            ],
        )
    );
}

#[tokio::test]
async fn without_continue_on_error_the_job_fails_at_the_first_failed_record() {
    let file = "name,age,email\n\
        Ada,36,ada@example.org\n\
        Grace,old,grace@example.org\n\
        Alan,41,alan@example.org\n";
    // One record per batch, so that nothing after the failure is processed.
    let definition = people_with(r#""continueOnError": false, "batchSize": 1"#);
    assert_eq!(
        run_import("people.csv", file, &definition).await,
        Outcome {
            status: JobStatus::Failed,
            reason: Some("line 3: not a valid integer (continueOnError is false)".into()),
            imported: vec![person(2, "Ada", 36, "ada@example.org")],
            errors: vec![error(3, Some("age"), "not a valid integer")],
        }
    );
}

#[tokio::test]
async fn every_record_failing_fails_the_job() {
    let file = "name,age,email\nAda,old,ada@example.org\nGrace,older,grace@example.org\n";
    assert_eq!(
        run_import("people.csv", file, PEOPLE).await,
        Outcome {
            status: JobStatus::Failed,
            reason: Some("all 2 records failed".into()),
            imported: vec![],
            errors: vec![
                error(2, Some("age"), "not a valid integer"),
                error(3, Some("age"), "not a valid integer"),
            ],
        }
    );
}
