use super::{load, with_fields, EXAMPLE};
use crate::job::{FieldIssue, StagedRecord};
use crate::schema::FieldValue;
use proptest::prelude::*;
use serde_json::{json, Value};

fn record(values: &[Option<&str>]) -> StagedRecord {
    StagedRecord {
        line: 7,
        values: values.iter().map(|v| v.map(str::to_owned)).collect(),
        issue: None,
    }
}

/// Validates a single-field definition against one value.
fn one(field: &str, value: &str) -> Result<Value, Vec<FieldIssue>> {
    let def = with_fields(field);
    let name = def.fields[0].name.clone();
    def.validate(&record(&[Some(value)]))
        .map(|r| r.get(&name).expect("value present").to_json())
}

fn message(field: &str, value: &str) -> String {
    let issues = one(field, value).expect_err("value should be rejected");
    assert_eq!(issues.len(), 1);
    issues[0].message.clone()
}

const INTEGER: &str = r#"{"name": "n", "type": "integer"}"#;
const NUMBER: &str = r#"{"name": "n", "type": "number"}"#;
const BOOLEAN: &str = r#"{"name": "b", "type": "boolean"}"#;
const DATE: &str = r#"{"name": "d", "type": "date"}"#;
const DATETIME: &str = r#"{"name": "t", "type": "datetime"}"#;
const EMAIL: &str = r#"{"name": "e", "type": "email"}"#;
const PLAN: &str = r#"{"name": "plan", "type": "enum", "values": ["free", "pro"]}"#;

#[test]
fn a_good_record_becomes_typed_values_keyed_by_field_name() {
    let def = load(EXAMPLE);
    let valid = def
        .validate(&record(&[
            Some("a@example.com"),
            Some("  Ann  "),
            Some("42"),
            Some("pro"),
        ]))
        .unwrap();
    assert_eq!(valid.line, 7);
    assert_eq!(
        Value::Object(valid.to_json()),
        json!({"email": "a@example.com", "name": "Ann", "age": 42, "plan": "pro"})
    );
}

#[test]
fn a_valid_record_serializes_with_its_values_keyed_by_sorted_name() {
    let def = with_fields(
        r#"{"name": "z", "type": "string"}, {"name": "n", "type": "number"},
           {"name": "a", "type": "integer"}, {"name": "m", "type": "boolean", "default": "no"},
           {"name": "t", "type": "datetime"}, {"name": "o", "type": "string"}"#,
    );
    let valid = def
        .validate(&record(&[
            Some("é \"q\""),
            Some("3"),
            Some("-1"),
            None,
            Some("2024-01-31 10:00:00.5"),
        ]))
        .unwrap();
    assert_eq!(
        serde_json::to_string(&valid).unwrap(),
        r#"{"line":7,"values":{"a":-1,"m":false,"n":3.0,"t":"2024-01-31T10:00:00.500Z","z":"é \"q\""}}"#
    );
    assert_eq!(valid.len(), 5);
    assert_eq!(
        valid.iter().map(|(name, _)| name).collect::<Vec<_>>(),
        ["z", "n", "a", "m", "t"],
        "in field order"
    );
    assert_eq!(valid.get("n"), Some(FieldValue::Number(3.0)));
    assert_eq!(valid.get("o"), None);
}

#[test]
fn strings_keep_their_whitespace_unless_trim_is_set() {
    assert_eq!(
        one(r#"{"name": "s", "type": "string"}"#, "  a b "),
        Ok(json!("  a b "))
    );
    assert_eq!(
        one(r#"{"name": "s", "type": "string", "trim": true}"#, "  a b "),
        Ok(json!("a b"))
    );
}

#[test]
fn integers_accept_signs_and_surrounding_whitespace() {
    assert_eq!(one(INTEGER, "+12"), Ok(json!(12)));
    assert_eq!(one(INTEGER, " -3 "), Ok(json!(-3)));
    assert_eq!(one(INTEGER, "9223372036854775807"), Ok(json!(i64::MAX)));
}

#[test]
fn integers_reject_fractions_exponents_and_overflow() {
    for bad in ["1.0", "1e3", "12abc", "0x10", "1 000", "--1"] {
        assert_eq!(message(INTEGER, bad), "not a valid integer", "{bad}");
    }
    assert_eq!(
        message(INTEGER, "9223372036854775808"),
        "not a valid integer (out of range)"
    );
}

#[test]
fn numbers_are_finite_floats() {
    assert_eq!(one(NUMBER, "1.5"), Ok(json!(1.5)));
    assert_eq!(one(NUMBER, "-2e3"), Ok(json!(-2000.0)));
    assert_eq!(one(NUMBER, " 7 "), Ok(json!(7.0)));
    for bad in ["NaN", "inf", "-infinity", "1e400", "1,5", "abc"] {
        assert_eq!(message(NUMBER, bad), "not a valid number", "{bad}");
    }
}

#[test]
fn booleans_accept_the_usual_spellings_in_any_case() {
    for yes in ["true", "TRUE", "Yes", "y", "1", " Y "] {
        assert_eq!(one(BOOLEAN, yes), Ok(json!(true)), "{yes}");
    }
    for no in ["false", "False", "NO", "n", "0"] {
        assert_eq!(one(BOOLEAN, no), Ok(json!(false)), "{no}");
    }
    for bad in ["2", "t", "on", "yess"] {
        assert!(
            message(BOOLEAN, bad).starts_with("not a valid boolean"),
            "{bad}"
        );
    }
}

#[test]
fn dates_must_be_real_calendar_days_in_yyyy_mm_dd() {
    assert_eq!(one(DATE, " 2024-02-29 "), Ok(json!("2024-02-29")));
    for bad in [
        "2023-02-29",
        "2024-13-01",
        "2024-1-5",
        "31/01/2024",
        "2024-01-31T00:00:00",
        "20240131",
    ] {
        assert_eq!(
            message(DATE, bad),
            "not a valid date (expected YYYY-MM-DD)",
            "{bad}"
        );
    }
}

#[test]
fn datetimes_are_normalized_to_utc() {
    assert_eq!(
        one(DATETIME, "2024-01-31T10:00:00Z"),
        Ok(json!("2024-01-31T10:00:00Z"))
    );
    assert_eq!(
        one(DATETIME, "2024-01-31T12:00:00+02:00"),
        Ok(json!("2024-01-31T10:00:00Z"))
    );
    assert_eq!(
        one(DATETIME, "2024-01-31T10:00:00.250-01:00"),
        Ok(json!("2024-01-31T11:00:00.250Z"))
    );
}

#[test]
fn datetimes_without_offset_are_taken_as_utc() {
    assert_eq!(
        one(DATETIME, "2024-01-31T10:00:00"),
        Ok(json!("2024-01-31T10:00:00Z"))
    );
    assert_eq!(
        one(DATETIME, "2024-01-31 10:00:00"),
        Ok(json!("2024-01-31T10:00:00Z"))
    );
    assert_eq!(
        one(DATETIME, "2024-01-31 10:00:00.5"),
        Ok(json!("2024-01-31T10:00:00.500Z"))
    );
}

#[test]
fn malformed_datetimes_are_rejected() {
    for bad in [
        "2024-01-31",
        "2024-01-31T25:00:00",
        "2024-01-31T10:00",
        "2024-02-30T10:00:00Z",
        "2024-01-31T10:00:00.",
        "yesterday",
    ] {
        assert!(
            message(DATETIME, bad).starts_with("not a valid date-time"),
            "{bad}"
        );
    }
}

#[test]
fn emails_are_trimmed_and_checked() {
    assert_eq!(
        one(EMAIL, " jane.doe+tag@example.co.uk "),
        Ok(json!("jane.doe+tag@example.co.uk"))
    );
    for bad in [
        "jane",
        "jane@",
        "@example.com",
        "jane@@example.com",
        "Jane <jane@example.com>",
        "jane@localhost",
    ] {
        assert_eq!(message(EMAIL, bad), "not a valid email address", "{bad}");
    }
}

#[test]
fn enum_value_inside_the_list_is_accepted_after_trimming() {
    assert_eq!(one(PLAN, " pro "), Ok(json!("pro")));
}

#[test]
fn enum_value_outside_list_is_rejected_with_the_allowed_values() {
    assert_eq!(message(PLAN, "Pro"), "must be one of: free, pro");
    assert_eq!(message(PLAN, "gold"), "must be one of: free, pro");
}

#[test]
fn long_enums_match_the_same_way() {
    let values: Vec<String> = (0..20).map(|i| format!("v{i}")).collect();
    let field = format!(
        r#"{{"name": "e", "type": "enum", "values": {}}}"#,
        json!(values)
    );
    assert_eq!(one(&field, "v17"), Ok(json!("v17")));
    assert!(message(&field, "v20").starts_with("must be one of: v0, v1,"));
}

#[test]
fn pattern_applies_to_the_trimmed_text_after_the_type_check() {
    let code = r#"{"name": "cc", "type": "string", "pattern": "^[A-Z]{2}$"}"#;
    assert_eq!(one(code, " FR "), Ok(json!(" FR ")));
    assert_eq!(message(code, "FRA"), "does not match pattern ^[A-Z]{2}$");
    let even = r#"{"name": "n", "type": "integer", "pattern": "[02468]$"}"#;
    assert_eq!(one(even, "12"), Ok(json!(12)));
    assert_eq!(message(even, "13"), "does not match pattern [02468]$");
    assert_eq!(message(even, "x2"), "not a valid integer");
}

#[test]
fn pattern_is_unanchored() {
    assert_eq!(
        one(r#"{"name": "s", "type": "string", "pattern": "b"}"#, "abc"),
        Ok(json!("abc"))
    );
}

#[test]
fn missing_required_value_is_an_issue() {
    let def = with_fields(r#"{"name": "a", "type": "string", "required": true}"#);
    for values in [vec![None], vec![Some("")], vec![Some("  \t")], vec![]] {
        let issues = def.validate(&record(&values)).unwrap_err();
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].field.as_deref(), Some("a"));
        assert_eq!(issues[0].message, "required value is missing");
    }
}

#[test]
fn missing_optional_value_is_left_out_not_null() {
    let def = with_fields(r#"{"name": "a", "type": "string"}, {"name": "b", "type": "integer"}"#);
    let valid = def.validate(&record(&[Some("x"), Some(" ")])).unwrap();
    assert_eq!(Value::Object(valid.to_json()), json!({"a": "x"}));
}

#[test]
fn missing_value_takes_the_default_in_its_typed_form() {
    let def = with_fields(
        r#"{"name": "plan", "type": "enum", "values": ["free", "pro"], "default": "free", "required": true},
           {"name": "n", "type": "integer", "default": "42"},
           {"name": "ok", "type": "boolean", "default": true},
           {"name": "x", "type": "number", "default": 2}"#,
    );
    let valid = def.validate(&record(&[None, Some(""), None])).unwrap();
    assert_eq!(
        Value::Object(valid.to_json()),
        json!({"plan": "free", "n": 42, "ok": true, "x": 2.0})
    );
}

#[test]
fn every_issue_of_a_record_is_reported() {
    let def = load(EXAMPLE);
    let issues = def
        .validate(&record(&[
            Some("not-an-email"),
            None,
            Some("4.5"),
            Some("gold"),
        ]))
        .unwrap_err();
    let found: Vec<_> = issues
        .iter()
        .map(|i| {
            (
                i.field.as_deref().unwrap(),
                i.value.as_deref(),
                i.message.as_str(),
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            ("email", Some("not-an-email"), "not a valid email address"),
            ("name", None, "required value is missing"),
            ("age", Some("4.5"), "not a valid integer"),
            ("plan", Some("gold"), "must be one of: free, pro"),
        ]
    );
}

#[test]
fn reported_values_are_truncated() {
    let long = "x".repeat(1000);
    let issues = with_fields(INTEGER)
        .validate(&record(&[Some(&long)]))
        .unwrap_err();
    assert_eq!(
        issues[0].value.as_deref(),
        Some(crate::job::truncate_value(&long).as_str())
    );
}

#[test]
fn a_row_level_issue_fails_the_record_alone() {
    let def = load(EXAMPLE);
    let issue = FieldIssue::new(None, Some("a,b,c,d,e"), "row has 5 columns, expected 4");
    let staged = StagedRecord {
        line: 3,
        values: vec![None; 4].into(),
        issue: Some(Box::new(issue.clone())),
    };
    assert_eq!(def.validate(&staged), Err(vec![issue]));
}

#[test]
fn extra_values_beyond_the_fields_are_ignored() {
    let def = with_fields(INTEGER);
    let valid = def
        .validate(&record(&[Some("1"), Some("surplus")]))
        .unwrap();
    assert_eq!(Value::Object(valid.to_json()), json!({"n": 1}));
}

const EVERY_TYPE: &str = r#"
    {"name": "s", "type": "string", "trim": true, "pattern": "^a"},
    {"name": "i", "type": "integer", "required": true},
    {"name": "n", "type": "number"},
    {"name": "b", "type": "boolean"},
    {"name": "d", "type": "date"},
    {"name": "t", "type": "datetime"},
    {"name": "e", "type": "email"},
    {"name": "k", "type": "enum", "values": ["a", "b"], "default": "a"}"#;

proptest! {
    #[test]
    fn any_i64_as_text_validates_as_that_integer(n in any::<i64>(), plus in any::<bool>()) {
        let text = if plus && n >= 0 { format!("+{n}") } else { n.to_string() };
        prop_assert_eq!(one(INTEGER, &text), Ok(json!(n)));
    }

    #[test]
    fn arbitrary_text_never_panics_the_validator(
        values in proptest::collection::vec(proptest::option::of(any::<String>()), 0..10),
        text in "\\PC{0,40}",
    ) {
        let def = with_fields(EVERY_TYPE);
        let staged = StagedRecord { line: 1, values: values.into(), issue: None };
        let _ = def.validate(&staged);
        let same = StagedRecord { line: 1, values: vec![Some(text); 8].into(), issue: None };
        let _ = def.validate(&same);
    }

    #[test]
    fn datetime_like_text_never_panics(text in "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9:.+Zz-]{0,20}\\PC{0,2}") {
        let _ = one(DATETIME, &text);
        let _ = one(DATE, &text[..10]);
    }
}
