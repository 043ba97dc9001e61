//! A batch writes each key once and its superseded records share the
//! write's result; values become the attributes serde_dynamo would make,
//! with the key as a string; numbers DynamoDB cannot store fail their
//! record alone.

use super::*;

fn item(key: &str, n: i64) -> Result<Item, ProcessError> {
    Ok(Item::from([
        ("id".to_string(), AttributeValue::S(key.into())),
        ("n".to_string(), AttributeValue::N(n.to_string())),
    ]))
}

fn written(plan: &WritePlan) -> Vec<usize> {
    plan.writes.iter().map(|(i, _)| *i).collect()
}

/// Each record's outcome as (ok, retryable, message).
fn outcomes(results: &[Result<(), ProcessError>]) -> Vec<(bool, bool, String)> {
    results
        .iter()
        .map(|r| match r {
            Ok(()) => (true, false, String::new()),
            Err(e) => (false, e.is_retryable(), e.to_string()),
        })
        .collect()
}

#[test]
fn only_the_last_record_of_a_key_is_written() {
    let items = vec![item("a", 1), item("b", 2), item("a", 3)];
    let (plan, results) = WritePlan::new(items, "id", OnDuplicateKey::Last);
    assert_eq!(written(&plan), vec![1, 2]);
    assert!(results.iter().all(Result::is_ok));
}

#[test]
fn under_first_only_the_first_record_of_a_key_is_written() {
    let items = vec![
        Err(ProcessError::permanent("field n cannot be stored")),
        item("a", 1),
        item("b", 2),
        item("a", 3),
    ];
    let (plan, results) = WritePlan::new(items, "id", OnDuplicateKey::First);
    assert_eq!(written(&plan), vec![1, 2]);
    assert_eq!(plan.carrier, vec![None, Some(1), Some(2), Some(1)]);
    assert!(results[1..].iter().all(Result::is_ok));
}

#[test]
fn ranks_order_jobs_by_creation_then_lines_by_policy() {
    let definition = |policy: &str| {
        crate::schema::Definition::from_json(
            &format!(
                r#"{{"fields": [{{"name": "id", "type": "string", "required": true}}],
                    "keyField": "id", "onDuplicateKey": "{policy}"}}"#
            ),
            "test",
        )
        .unwrap()
    };
    let (last, first) = (definition("last"), definition("first"));
    let duplicates = super::super::Duplicates::default();
    let job = crate::job::JobId::new("job-a");
    let ctx = |definition, created| ProcessContext {
        job_id: &job,
        job_created_at_ms: created,
        batch_index: 0,
        retry: 0,
        definition,
        duplicates: &duplicates,
    };
    let early = Rank::of(&ctx(&last, 1_000));
    let late = Rank::of(&ctx(&first, 2_000));
    assert!(
        early.of_line(2) < early.of_line(10),
        "last: later lines rank higher"
    );
    assert!(
        late.of_line(10) < late.of_line(2),
        "first: earlier lines rank higher"
    );
    assert!(
        early.of_line(u64::MAX) < late.of_line(u64::MAX),
        "a later job outranks"
    );
    assert_eq!(early.of_line(7).len(), 44);
    assert!(early.is_other_row(&early.of_line(3), 4));
    assert_eq!(early.line_of(&early.of_line(1234)), Some(1234));
    assert_eq!(late.line_of(&late.of_line(1234)), Some(1234));
    assert_eq!(
        late.line_of(&early.of_line(1234)),
        None,
        "another job's row"
    );
    assert!(!early.is_other_row(&early.of_line(4), 4));
    assert!(!early.is_other_row(&late.of_line(3), 4));
}

#[test]
fn records_superseded_by_a_failed_write_fail_with_its_error() {
    let items = vec![
        item("a", 1),
        item("b", 2),
        item("a", 3),
        Err(ProcessError::permanent("field n cannot be stored")),
        item("b", 4),
        item("c", 5),
    ];
    let (plan, mut results) = WritePlan::new(items, "id", OnDuplicateKey::Last);
    assert_eq!(written(&plan), vec![2, 4, 5]);
    let cause = std::io::Error::other("ValidationException");
    results[2] = Err(ProcessError::permanent_from("rejected", cause));
    results[4] = Err(ProcessError::retryable("throttled"));
    plan.settle(&mut results);
    let no = |retryable, message: &str| (false, retryable, message.to_string());
    assert_eq!(
        outcomes(&results),
        vec![
            no(false, "rejected"),
            no(true, "throttled"),
            no(false, "rejected"),
            no(false, "field n cannot be stored"),
            no(true, "throttled"),
            (true, false, String::new()),
        ]
    );
    for i in [0, 2] {
        let Err(e) = &results[i] else { panic!() };
        let source = std::error::Error::source(e).expect("the cause is kept");
        assert_eq!(source.to_string(), "ValidationException");
    }
}

fn record(line: u64, id: &str, n: serde_json::Value) -> ValidRecord {
    let values = serde_json::json!({"id": id, "n": n});
    ValidRecord::from_json(line, values.as_object().unwrap()).unwrap()
}

#[test]
fn a_number_dynamodb_cannot_store_fails_its_record_alone_naming_the_field() {
    let records = [
        record(2, "a", serde_json::json!(1)),
        record(3, "a", serde_json::json!(1e200)),
    ];
    let items = records
        .iter()
        .map(|r| DynamoUpsert::item(r, "id"))
        .collect();
    let (plan, results) = WritePlan::new(items, "id", OnDuplicateKey::Last);
    assert_eq!(
        written(&plan),
        vec![0],
        "the earlier record of the key is written instead"
    );
    let Err(e) = &results[1] else {
        panic!("1e200 is beyond DynamoDB's numbers")
    };
    assert!(!e.is_retryable());
    assert_eq!(
        e.to_string(),
        "field n: 1E+200 is larger than DynamoDB numbers can be \
         (at most 9.9999999999999999999999999999999999999E+125)"
    );
}

#[test]
fn attributes_are_those_serde_dynamo_made_of_the_json_values() {
    use serde_dynamo::aws_sdk_dynamodb_1::to_attribute_value;
    let values = [
        FieldValue::String("a \"b\""),
        FieldValue::String(""),
        FieldValue::Integer(0),
        FieldValue::Integer(-7),
        FieldValue::Integer(i64::MAX),
        FieldValue::Integer(i64::MIN),
        FieldValue::Number(7.0),
        FieldValue::Number(-0.0),
        FieldValue::Number(0.1),
        FieldValue::Number(-1.5e-7),
        FieldValue::Number(1e21),
        FieldValue::Number(123456.789),
        FieldValue::Boolean(true),
        FieldValue::Boolean(false),
    ];
    for value in values {
        let before: AttributeValue = to_attribute_value(value.to_json()).unwrap();
        assert_eq!(attribute(value), Ok(before), "{value:?}");
    }
}

#[test]
fn the_key_attribute_is_the_json_text_of_a_value_that_is_not_a_string() {
    for (key, text) in [
        (serde_json::json!("a@b.org"), "a@b.org"),
        (serde_json::json!(42), "42"),
        (serde_json::json!(2.0), "2.0"),
        (serde_json::json!(true), "true"),
    ] {
        let item = DynamoUpsert::item(&record(1, "x", key), "n").unwrap();
        assert_eq!(item["n"], AttributeValue::S(text.into()));
        assert_eq!(item["id"], AttributeValue::S("x".into()));
    }
    let e = DynamoUpsert::item(&record(1, "x", serde_json::json!(1)), "other").unwrap_err();
    assert_eq!(e.to_string(), "key field other has no value");
}

#[test]
fn numbers_are_checked_against_dynamodb_limits() {
    let fine = [
        "0",
        "-0.000",
        "1E-130",
        "-1e-130",
        "9.9999999999999999999999999999999999999E+125",
        "12345678901234567890123456789012345678000",
        &(1.7976e125f64).to_string(),
        &i64::MIN.to_string(),
        &u64::MAX.to_string(),
    ];
    for n in fine {
        assert_eq!(number_problem(n), None, "{n}");
    }
    let refused = [
        "1E+126",
        "-1e126",
        "1E-131",
        "0.1e-130",
        "123456789012345678901234567890123456789",
        &(1e200f64).to_string(),
        &(1e-200f64).to_string(),
        &f64::MAX.to_string(),
        &f64::MIN_POSITIVE.to_string(),
    ];
    for n in refused {
        assert!(number_problem(n).is_some(), "{n}");
    }
}
