//! NDJSON: one JSON object per line, keys matched like header names.

use super::*;

const PEOPLE_NDJSON: &str = r#"{"name": "Ada", "age": 36, "email": "ada@example.org"}
{"email": "grace@example.org", "NAME": "Grace", "age": "85", "shoeSize": 38}

{"name": "Alan", "age": 41, "email": "alan@example.org"}
"#;

fn people_from_ndjson() -> Vec<(u64, Value)> {
    vec![
        person(1, "Ada", 36, "ada@example.org"),
        person(2, "Grace", 85, "grace@example.org"),
        person(4, "Alan", 41, "alan@example.org"),
    ]
}

#[tokio::test]
async fn ndjson_is_read_when_the_name_ends_in_ndjson() {
    assert_eq!(
        run_import("people.ndjson", PEOPLE_NDJSON, PEOPLE).await,
        completed(people_from_ndjson())
    );
}

#[tokio::test]
async fn ndjson_is_read_when_the_definition_declares_it_whatever_the_name() {
    let definition = people_with(r#""format": "ndjson""#);
    assert_eq!(
        run_import("people.csv", PEOPLE_NDJSON, &definition).await,
        completed(people_from_ndjson())
    );
}

#[tokio::test]
async fn gzip_ndjson_is_decompressed_when_the_name_ends_in_gz() {
    assert_eq!(
        run_import("people.ndjson.gz", gzip(PEOPLE_NDJSON.as_bytes()), PEOPLE).await,
        completed(people_from_ndjson())
    );
}

#[tokio::test]
async fn ndjson_with_crlf_line_endings() {
    let file = PEOPLE_NDJSON.replace('\n', "\r\n");
    assert_eq!(
        run_import("people.ndjson", file, PEOPLE).await,
        completed(people_from_ndjson())
    );
}

#[tokio::test]
async fn an_ndjson_line_that_is_not_an_object_fails_alone() {
    let file = "{\"name\": \"Ada\"}\n\
        not json\n\
        [\"Grace\", 85]\n\
        {\"name\": \"Alan\",\n\
        {\"name\": \"Ken\"}";
    assert_eq!(
        run_import("people.ndjson", file, PEOPLE).await,
        Outcome {
            status: JobStatus::CompletedWithErrors,
            reason: None,
            imported: vec![(1, json!({"name": "Ada"})), (5, json!({"name": "Ken"})),],
            errors: vec![
                error(
                    2,
                    None,
                    "not a JSON object: expected ident at line 1 column 2"
                ),
                error(
                    3,
                    None,
                    "not a JSON object: invalid type: sequence, expected a map at line 1 column 0"
                ),
                error(
                    4,
                    None,
                    "not a JSON object: EOF while parsing a value at line 1 column 16"
                ),
            ],
        }
    );
}

#[tokio::test]
async fn ndjson_values_are_validated_as_their_text() {
    let file = r#"{"name": "Ada", "age": 36.5}
{"name": 7, "age": "42"}
{"name": null, "age": true}
{"name": {"first": "Ken"}, "email": ["ken@example.org"]}
"#;
    assert_eq!(
        run_import("people.ndjson", file, PEOPLE).await,
        Outcome {
            status: JobStatus::CompletedWithErrors,
            reason: None,
            imported: vec![(2, json!({"name": "7", "age": 42}))],
            errors: vec![
                error(1, Some("age"), "not a valid integer"),
                error(3, Some("name"), "required value is missing"),
                error(3, Some("age"), "not a valid integer"),
                error(4, Some("email"), "not a valid email address"),
            ],
        }
    );
}
