use super::{load, EXAMPLE};
use crate::schema::{ColumnMap, HeaderError};

fn header(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn columns_match_names_and_aliases_case_insensitively() {
    let def = load(EXAMPLE);
    let map = def
        .resolve_header(&header(&["FULL NAME", "Email", "plan", "AGE"]))
        .unwrap();
    assert_eq!(
        map,
        ColumnMap {
            columns: vec![Some(1), Some(0), Some(3), Some(2)],
            field_count: 4
        }
    );
}

#[test]
fn a_byte_order_mark_and_surrounding_whitespace_are_ignored() {
    let def = load(EXAMPLE);
    let map = def
        .resolve_header(&header(&["\u{feff}email", "  name\t"]))
        .unwrap();
    assert_eq!(map.columns, [Some(0), Some(1)]);
}

#[test]
fn columns_the_definition_does_not_know_are_ignored() {
    let def = load(EXAMPLE);
    let map = def
        .resolve_header(&header(&["id", "email", "name", "notes", ""]))
        .unwrap();
    assert_eq!(map.columns, [None, Some(0), Some(1), None, None]);
    assert_eq!(map.field_count, 4);
}

#[test]
fn every_missing_required_column_is_listed() {
    let def = load(EXAMPLE);
    let err = def.resolve_header(&header(&["age", "plan"])).unwrap_err();
    assert_eq!(
        err,
        HeaderError::MissingColumns(vec!["email".into(), "name".into()])
    );
    assert_eq!(err.to_string(), "missing required column(s): email, name");
}

#[test]
fn optional_and_defaulted_columns_may_be_missing() {
    let def = load(
        r#"{"fields": [{"name": "a", "type": "string", "required": true},
                       {"name": "b", "type": "string"},
                       {"name": "c", "type": "integer", "required": true, "default": 1}]}"#,
    );
    assert_eq!(
        def.resolve_header(&header(&["a"])).unwrap().columns,
        [Some(0)]
    );
}

#[test]
fn the_same_column_name_twice_is_a_duplicate() {
    let def = load(EXAMPLE);
    let err = def
        .resolve_header(&header(&["email", "name", "Email"]))
        .unwrap_err();
    assert_eq!(err, HeaderError::DuplicateColumn("Email".into()));
    // Even for a column that would be ignored: which one was meant is unclear.
    let err = def
        .resolve_header(&header(&["email", "name", "x", "X "]))
        .unwrap_err();
    assert_eq!(err, HeaderError::DuplicateColumn("X".into()));
}

#[test]
fn blank_column_names_may_repeat() {
    let def = load(EXAMPLE);
    let map = def
        .resolve_header(&header(&["email", "", "name", " "]))
        .unwrap();
    assert_eq!(map.columns, [Some(0), None, Some(1), None]);
}

#[test]
fn a_name_and_an_alias_of_one_field_are_duplicates() {
    let def = load(EXAMPLE);
    let err = def
        .resolve_header(&header(&["email", "name", "Full Name"]))
        .unwrap_err();
    assert_eq!(err, HeaderError::DuplicateColumn("Full Name".into()));
}

#[test]
fn headerless_input_uses_the_field_order_by_default() {
    let def = load(&EXAMPLE.replace(r#""hasHeader": true"#, r#""hasHeader": false"#));
    let map = def.column_map_without_header();
    assert_eq!(
        map,
        ColumnMap {
            columns: vec![Some(0), Some(1), Some(2), Some(3)],
            field_count: 4
        }
    );
}

#[test]
fn headerless_input_uses_the_declared_columns() {
    let def = load(&EXAMPLE.replace(
        r#""hasHeader": true"#,
        r#""hasHeader": false, "columns": ["id", "full name", "email"]"#,
    ));
    let map = def.column_map_without_header();
    assert_eq!(
        map,
        ColumnMap {
            columns: vec![None, Some(1), Some(0)],
            field_count: 4
        }
    );
}

#[test]
fn field_index_finds_names_and_aliases() {
    let def = load(EXAMPLE);
    assert_eq!(def.field_index("plan"), Some(3));
    assert_eq!(def.field_index("Full Name"), Some(1));
    assert_eq!(def.field_index(" EMAIL "), Some(0));
    assert_eq!(def.field_index("nope"), None);
}

#[test]
fn the_report_columns_are_line_field_and_reason() {
    let def = load(EXAMPLE);
    assert_eq!(def.report_columns(), &["line", "field", "reason"]);
}

#[test]
fn a_report_column_name_a_field_claims_gets_an_underscore() {
    let def = load(
        r#"{"fields": [{"name": "reason", "type": "string"},
                       {"name": "note", "type": "string", "aliases": ["Line", "_line"]}]}"#,
    );
    assert_eq!(def.report_columns(), &["__line", "field", "_reason"]);
    // A fixed report reads as the file did: its own columns feed nothing.
    let map = def
        .resolve_header(&header(&["reason", "Line", "__line", "field", "_reason"]))
        .unwrap();
    assert_eq!(map.columns, [Some(0), Some(1), None, None, None]);
}

#[test]
fn rejected_extra_columns_are_named_but_the_report_columns_pass() {
    let def = load(&EXAMPLE.replace(
        r#""hasHeader": true"#,
        r#""hasHeader": true, "extraColumns": "reject""#,
    ));
    let err = def
        .resolve_header(&header(&["email", "name", "emial", " Notes ", ""]))
        .unwrap_err();
    assert_eq!(
        err,
        HeaderError::UnexpectedColumns(vec!["emial".into(), "Notes".into()])
    );
    assert_eq!(
        err.to_string(),
        r#"column(s) no field reads: emial, Notes (extraColumns is "reject")"#
    );
    let map = def
        .resolve_header(&header(&["email", "name", "Line", "field", "REASON"]))
        .unwrap();
    assert_eq!(map.columns, [Some(0), Some(1), None, None, None]);
}
