use super::{load, with_fields, EXAMPLE};
use crate::schema::{
    Definition, DefinitionError, ExtraColumns, InputFormat, Limits, OnDuplicateKey,
    DEFAULT_PARTITIONS, MAX_PARTITIONS,
};
use std::error::Error as _;

fn error(json: &str) -> DefinitionError {
    match Definition::from_json(json, "defs/users.json") {
        Ok(_) => panic!("definition should have been rejected: {json}"),
        Err(e) => e,
    }
}

fn error_with_fields(fields: &str) -> String {
    error(&format!(r#"{{"fields": [{fields}]}}"#)).to_string()
}

#[test]
fn documented_example_loads_with_its_options() {
    let def = load(EXAMPLE);
    assert_eq!(def.fields.len(), 4);
    assert_eq!(def.fields[1].aliases, ["full name"]);
    assert!(def.fields[1].trim);
    assert_eq!(def.fields[3].values, ["free", "pro"]);
    assert_eq!(def.key_field.as_deref(), Some("email"));
    assert_eq!(def.key_field_index(), Some(0));
    assert_eq!(def.delimiter, Some(b','));
    assert_eq!(def.batch_size, 500);
    assert_eq!(def.max_retries, 3);
}

#[test]
fn omitted_options_take_their_defaults() {
    let def = with_fields(r#"{"name": "id", "type": "string"}"#);
    assert!(!def.fields[0].required);
    assert_eq!(def.fields[0].default, None);
    assert_eq!(def.key_field, None);
    assert_eq!(def.key_field_index(), None);
    assert_eq!(def.batch_size, 500);
    assert_eq!(def.delimiter, None);
    assert!(def.has_header);
    assert_eq!(def.columns, None);
    assert!(def.continue_on_error);
    assert_eq!(def.max_retries, 3);
    assert_eq!(def.max_attempts, 5);
    assert_eq!(def.format, None);
    assert_eq!(def.limits, Limits::default());
    assert_eq!(def.extra_columns, ExtraColumns::Ignore);
    assert_eq!(def.max_write_units_per_second, None);
}

#[test]
fn extra_columns_are_ignored_or_rejected() {
    let def = load(r#"{"fields": [{"name": "a", "type": "string"}], "extraColumns": "reject"}"#);
    assert_eq!(def.extra_columns, ExtraColumns::Reject);
    assert!(def.to_json().contains(r#""extraColumns": "reject""#));
    let err = error(r#"{"fields": [{"name": "a", "type": "string"}], "extraColumns": "keep"}"#);
    assert_eq!(err.path(), "extraColumns");
}

#[test]
fn a_write_cap_is_read_kept_through_pinning_and_checked_for_its_type() {
    let text = r#"{"fields": [{"name": "a", "type": "string"}], "maxWriteUnitsPerSecond": 500}"#;
    let def = load(text);
    assert_eq!(def.max_write_units_per_second, Some(500));
    // Jobs run on the pinned copy, written with to_json.
    let pinned = load(&def.to_json());
    assert_eq!(pinned.max_write_units_per_second, Some(500));
    let lifted =
        load(r#"{"fields": [{"name": "a", "type": "string"}], "maxWriteUnitsPerSecond": 0}"#);
    assert_eq!(lifted.max_write_units_per_second, Some(0));
    let e = error(r#"{"fields": [{"name": "a", "type": "string"}], "maxWriteUnitsPerSecond": -5}"#);
    assert_eq!(e.path(), "maxWriteUnitsPerSecond");
    let e =
        error(r#"{"fields": [{"name": "a", "type": "string"}], "maxWriteUnitsPerSecond": "fast"}"#);
    assert_eq!(e.path(), "maxWriteUnitsPerSecond");
}

#[test]
fn the_processor_is_the_dynamodb_upsert_unless_named_and_kept_through_pinning() {
    let plain = load(r#"{"fields": [{"name": "a", "type": "string"}]}"#);
    assert_eq!(plain.processor.kind, "dynamodb");
    // The default is not written out: a pinned copy reads as it was written.
    assert!(!plain.to_json().contains("processor"));
    let named =
        load(r#"{"fields": [{"name": "a", "type": "string"}], "processor": {"type": "dynamodb"}}"#);
    assert_eq!(named.processor, plain.processor);
    assert_eq!(load(&named.to_json()).processor, plain.processor);
}

#[test]
fn an_unknown_processor_type_is_refused_at_load_naming_it_and_the_known_ones() {
    let e = error(r#"{"fields": [{"name": "a", "type": "string"}], "processor": {"type": "fax"}}"#);
    assert_eq!(e.path(), "processor.type");
    assert_eq!(
        e.to_string(),
        "import definition defs/users.json: processor.type: \
         unknown processor type \"fax\" (known types: dynamodb, embeddings, lambda, relationships, s3)"
    );
    let e = error(
        r#"{"fields": [{"name": "a", "type": "string"}], "processor": {"type": "dynamodb", "tabel": "t"}}"#,
    );
    assert_eq!(e.path(), "processor.tabel");
    assert!(
        e.to_string()
            .ends_with("unknown field `tabel`, expected `table`"),
        "{e}"
    );
    let e = error(r#"{"fields": [{"name": "a", "type": "string"}], "processor": {}}"#);
    assert_eq!(e.path(), "processor");
}

#[test]
fn limits_given_in_part_keep_the_other_defaults() {
    let def = load(r#"{"fields": [{"name": "a", "type": "string"}], "limits": {"maxFields": 50}}"#);
    assert_eq!(
        def.limits,
        Limits {
            max_fields: 50,
            ..Limits::default()
        }
    );
}

#[test]
fn unknown_keys_are_rejected_at_every_level() {
    let top =
        error(r#"{"fields": [{"name": "a", "type": "string"}], "batchsize": 10}"#).to_string();
    assert!(
        top.starts_with("import definition defs/users.json: "),
        "{top}"
    );
    assert!(top.contains("unknown field `batchsize`"), "{top}");

    let field = error_with_fields(
        r#"{"name": "a", "type": "string"}, {"name": "b", "type": "string", "requird": true}"#,
    );
    assert!(
        field.contains("fields[1].requird: unknown field `requird`"),
        "{field}"
    );

    let limits =
        error(r#"{"fields": [{"name": "a", "type": "string"}], "limits": {"maxRows": 1}}"#)
            .to_string();
    assert!(
        limits.contains("limits.maxRows: unknown field `maxRows`"),
        "{limits}"
    );
}

#[test]
fn unknown_type_names_the_field_path_and_keeps_the_json_error() {
    let e = error(
        r#"{"fields": [{"name": "a", "type": "string"}, {"name": "b", "type": "string"}, {"name": "c", "type": "strng"}]}"#,
    );
    let message = e.to_string();
    assert!(
        message.starts_with("import definition defs/users.json: fields[2].type: unknown variant `strng`, expected one of"),
        "{message}"
    );
    assert_eq!(e.path(), "fields[2].type");
    assert!(e.source().is_some_and(|s| s.is::<serde_json::Error>()));
}

#[test]
fn document_level_errors_have_no_path() {
    let missing = error("{}");
    assert_eq!(missing.path(), "");
    assert!(
        missing
            .to_string()
            .starts_with("import definition defs/users.json: missing field `fields`"),
        "{missing}"
    );
    assert!(error("{not json")
        .to_string()
        .contains("key must be a string"));
    assert!(matches!(
        error(r#"{"fields": [{"name": "a", "type": "string"}]} trailing"#),
        DefinitionError::Parse { .. }
    ));
}

#[test]
fn an_empty_field_list_is_rejected() {
    assert!(error(r#"{"fields": []}"#)
        .to_string()
        .ends_with("fields: must list at least one field"));
}

#[test]
fn an_empty_name_or_alias_is_rejected() {
    assert!(error_with_fields(r#"{"name": " ", "type": "string"}"#)
        .contains("fields[0].name: must not be empty"));
    let alias = error_with_fields(r#"{"name": "a", "type": "string", "aliases": ["x", ""]}"#);
    assert!(
        alias.contains("fields[0].aliases[1]: must not be empty"),
        "{alias}"
    );
}

#[test]
fn an_enum_field_without_values_is_rejected() {
    let e = error_with_fields(
        r#"{"name": "a", "type": "string"}, {"name": "b", "type": "string"}, {"name": "c", "type": "string"}, {"name": "d", "type": "enum"}"#,
    );
    assert!(
        e.ends_with("fields[3].values: an enum field needs at least one value"),
        "{e}"
    );
}

#[test]
fn enum_values_may_be_given_under_the_enum_key() {
    let def = with_fields(r#"{"name": "plan", "type": "enum", "enum": ["free", "pro"]}"#);
    assert_eq!(def.fields[0].values, ["free", "pro"]);
}

#[test]
fn enum_values_that_could_never_match_are_rejected() {
    let e = error_with_fields(r#"{"name": "plan", "type": "enum", "values": ["free", " pro"]}"#);
    assert!(
        e.contains("fields[0].values[1]: \" pro\" can never match"),
        "{e}"
    );
}

#[test]
fn values_on_a_non_enum_field_are_rejected() {
    let e = error_with_fields(r#"{"name": "plan", "type": "string", "values": ["free"]}"#);
    assert!(
        e.ends_with("fields[0].values: only enum fields take values"),
        "{e}"
    );
}

#[test]
fn an_invalid_pattern_names_the_field_and_keeps_the_regex_error() {
    let e = error(
        r#"{"fields": [{"name": "a", "type": "string"}, {"name": "b", "type": "string", "pattern": "[a-"}]}"#,
    );
    assert!(
        e.to_string()
            .starts_with("import definition defs/users.json: fields[1].pattern: invalid regex: "),
        "{e}"
    );
    assert!(e.source().is_some_and(|s| s.is::<regex::Error>()));
}

#[test]
fn a_default_of_the_wrong_type_is_rejected() {
    let e = error_with_fields(r#"{"name": "age", "type": "integer", "default": "abc"}"#);
    assert!(
        e.ends_with(r#"fields[0].default: "abc" is not a valid integer"#),
        "{e}"
    );
    let e = error_with_fields(r#"{"name": "age", "type": "integer", "default": 1.5}"#);
    assert!(
        e.ends_with("fields[0].default: 1.5 is not a valid integer"),
        "{e}"
    );
    let e = error_with_fields(r#"{"name": "tags", "type": "string", "default": ["a"]}"#);
    assert!(
        e.ends_with("fields[0].default: must be a string, number or boolean"),
        "{e}"
    );
}

#[test]
fn a_default_outside_the_enum_or_pattern_is_rejected() {
    let e = error_with_fields(
        r#"{"name": "plan", "type": "enum", "values": ["free", "pro"], "default": "gold"}"#,
    );
    assert!(
        e.ends_with(r#"fields[0].default: "gold" must be one of: free, pro"#),
        "{e}"
    );
    let e = error_with_fields(
        r#"{"name": "cc", "type": "string", "pattern": "^[A-Z]{2}$", "default": "usa"}"#,
    );
    assert!(
        e.ends_with(r#"fields[0].default: "usa" does not match pattern ^[A-Z]{2}$"#),
        "{e}"
    );
}

#[test]
fn duplicate_field_names_are_rejected_naming_both() {
    let e = error_with_fields(
        r#"{"name": "email", "type": "email"}, {"name": "Email", "type": "string"}"#,
    );
    assert!(
        e.contains(r#"fields[1].name: "Email" collides with fields[0].name "email""#),
        "{e}"
    );
}

#[test]
fn an_alias_colliding_with_another_field_is_rejected_naming_both() {
    let e = error_with_fields(
        r#"{"name": "name", "type": "string", "aliases": ["Full Name"]}, {"name": "other", "type": "string", "aliases": ["x", "full name "]}"#,
    );
    assert!(
        e.contains(
            r#"fields[1].aliases[1]: "full name " collides with fields[0].aliases[0] "Full Name""#
        ),
        "{e}"
    );
}

#[test]
fn a_field_may_repeat_its_own_name_as_an_alias() {
    with_fields(r#"{"name": "email", "type": "email", "aliases": ["EMAIL"]}"#);
}

#[test]
fn the_key_field_must_be_a_field() {
    let e = error(
        r#"{"fields": [{"name": "email", "type": "email", "required": true}], "keyField": "id"}"#,
    );
    assert!(
        e.to_string().ends_with(r#"keyField: "id" is not a field"#),
        "{e}"
    );
    assert_eq!(e.path(), "keyField");
    let e = error(
        r#"{"fields": [{"name": "email", "type": "email", "required": true}], "keyField": "Email"}"#,
    );
    assert!(
        e.to_string()
            .ends_with(r#"keyField: "Email" is not a field (did you mean "email"?)"#),
        "{e}"
    );
}

#[test]
fn the_key_field_must_be_required_or_have_a_default() {
    let e = error(
        r#"{"fields": [{"name": "a", "type": "string"}, {"name": "id", "type": "integer"}], "keyField": "id"}"#,
    );
    assert!(
        e.to_string()
            .contains(r#"keyField: "id" must be required or have a default"#),
        "{e}"
    );
    let def = load(
        r#"{"fields": [{"name": "a", "type": "string"}, {"name": "id", "type": "integer", "default": 0}], "keyField": "id"}"#,
    );
    assert_eq!(def.key_field_index(), Some(1));
}

#[test]
fn a_duplicate_policy_needs_a_key_field_and_defaults_to_last() {
    let e = error(
        r#"{"fields": [{"name": "email", "type": "email", "required": true}], "onDuplicateKey": "first"}"#,
    );
    assert_eq!(e.path(), "onDuplicateKey");
    assert!(e.to_string().contains("needs a keyField"), "{e}");
    let e = error(
        r#"{"fields": [{"name": "email", "type": "email", "required": true}], "keyField": "email", "onDuplicateKey": "newest"}"#,
    );
    assert!(e.to_string().contains("onDuplicateKey"), "{e}");
    assert!(
        e.to_string()
            .contains("expected one of `last`, `first`, `reject`"),
        "{e}"
    );
    let keyed = r#"{"fields": [{"name": "email", "type": "email", "required": true}], "keyField": "email"}"#;
    assert_eq!(load(keyed).duplicate_policy(), OnDuplicateKey::Last);
    let first = load(
        r#"{"fields": [{"name": "email", "type": "email", "required": true}], "keyField": "email", "onDuplicateKey": "first"}"#,
    );
    assert_eq!(first.duplicate_policy(), OnDuplicateKey::First);
    let again = Definition::from_json(&first.to_json(), "round trip").unwrap();
    assert_eq!(again.duplicate_policy(), OnDuplicateKey::First);
}

#[test]
fn partitions_name_fields_of_the_definition_and_a_count_within_bounds() {
    let with = |options: &str| {
        format!(
            r#"{{"fields": [{{"name": "email", "type": "email", "required": true}},
                {{"name": "country", "type": "string"}}], "keyField": "email"{options}}}"#
        )
    };
    let e = error(&with(r#", "partitionBy": ["email", "Country "]"#));
    assert_eq!(e.path(), "partitionBy[1]");
    assert!(
        e.to_string()
            .contains(r#""Country " is not a field (did you mean "country"?)"#),
        "{e}"
    );
    let e = error(&with(r#", "partitionBy": []"#));
    assert_eq!(e.path(), "partitionBy");
    for bad in [0, MAX_PARTITIONS + 1] {
        let e = error(&with(&format!(
            r#", "partitionBy": ["email"], "partitions": {bad}"#
        )));
        assert_eq!(e.path(), "partitions");
        assert!(
            e.to_string().contains(&format!(
                "must be between 1 and {MAX_PARTITIONS}, got {bad}"
            )),
            "{e}"
        );
    }
    let e = error(&with(r#", "partitions": 4"#));
    assert_eq!(e.path(), "partitions");
    assert!(e.to_string().contains("needs partitionBy"), "{e}");
    let d = load(&with(r#", "partitionBy": ["country", "email"]"#));
    let p = d.partitioning().unwrap();
    assert_eq!(
        (p.fields.clone(), p.count),
        (vec![1, 0], DEFAULT_PARTITIONS)
    );
    let again = Definition::from_json(&d.to_json(), "round trip").unwrap();
    assert_eq!(again.partitioning(), d.partitioning());
    assert!(load(&with("")).partitioning().is_none());
}

#[test]
fn reject_partitions_by_the_key_and_refuses_other_partitions() {
    let with = |options: &str| {
        format!(
            r#"{{"fields": [{{"name": "email", "type": "email", "required": true}},
                {{"name": "country", "type": "string"}}], "onDuplicateKey": "reject"{options}}}"#
        )
    };
    let e = error(&with(""));
    assert_eq!(e.path(), "onDuplicateKey");
    let d = load(&with(r#", "keyField": "email""#));
    assert_eq!(d.duplicate_policy(), OnDuplicateKey::Reject);
    let p = d.partitioning().unwrap();
    assert_eq!((p.fields.clone(), p.count), (vec![0], DEFAULT_PARTITIONS));
    let d = load(&with(
        r#", "keyField": "email", "partitionBy": ["email"], "partitions": 4"#,
    ));
    assert_eq!(d.partitioning().unwrap().count, 4);
    let e = error(&with(
        r#", "keyField": "email", "partitionBy": ["country"]"#,
    ));
    assert_eq!(e.path(), "partitionBy");
    assert!(
        e.to_string()
            .contains(r#"partitionBy must be ["email"] or absent"#),
        "{e}"
    );
}

#[test]
fn rows_equal_once_valid_share_a_partition() {
    let d = load(
        r#"{"fields": [{"name": "email", "type": "email", "required": true},
            {"name": "n", "type": "integer"}], "partitionBy": ["email"], "partitions": 64}"#,
    );
    let row = |email: &str, n: &str| crate::job::StagedRecord {
        line: 2,
        values: vec![Some(email.to_owned()), Some(n.to_owned())].into(),
        issue: None,
    };
    let a = d.partition_of(&row("ada@example.com", "1")).unwrap();
    assert_eq!(d.partition_of(&row("  ada@example.com ", "2")), Some(a));
    assert!(a < 64);
    let spread: std::collections::HashSet<u32> = (0..400)
        .filter_map(|i| d.partition_of(&row(&format!("user{i}@example.com"), "1")))
        .collect();
    assert!(
        spread.len() > 48,
        "keys spread over the partitions: {}",
        spread.len()
    );
}

#[test]
fn no_field_of_the_upsert_may_be_named_as_its_rank_attribute() {
    let e = error(
        r#"{"fields": [{"name": "id", "type": "string", "required": true}, {"name": "_importOrder", "type": "string"}], "keyField": "id"}"#,
    );
    assert_eq!(e.path(), "fields[1].name");
    assert!(e.to_string().contains("rename the field"), "{e}");
}

#[test]
fn batch_size_must_be_between_1_and_10000() {
    for bad in [0, 10_001] {
        let e = error(&format!(
            r#"{{"fields": [{{"name": "a", "type": "string"}}], "batchSize": {bad}}}"#
        ));
        assert!(
            e.to_string()
                .contains("batchSize: must be between 1 and 10000"),
            "{e}"
        );
    }
    for good in [1, 10_000] {
        let def = load(&format!(
            r#"{{"fields": [{{"name": "a", "type": "string"}}], "batchSize": {good}}}"#
        ));
        assert_eq!(def.batch_size, good);
    }
    let negative = error(r#"{"fields": [{"name": "a", "type": "string"}], "batchSize": -1}"#);
    assert_eq!(negative.path(), "batchSize");
}

fn delimiter(d: &str) -> Result<Option<u8>, String> {
    let json = format!(r#"{{"fields": [{{"name": "a", "type": "string"}}], "delimiter": {d}}}"#);
    Definition::from_json(&json, "d.json")
        .map(|def| def.delimiter)
        .map_err(|e| e.to_string())
}

#[test]
fn delimiter_is_one_ascii_character_other_than_quote_or_line_breaks() {
    assert_eq!(delimiter(r#"",""#), Ok(Some(b',')));
    assert_eq!(delimiter(r#"";""#), Ok(Some(b';')));
    assert_eq!(delimiter(r#""\t""#), Ok(Some(b'\t')));
    assert_eq!(delimiter(r#""|""#), Ok(Some(b'|')));
    assert_eq!(delimiter(r##""#""##), Ok(Some(b'#')));
    assert_eq!(delimiter("null"), Ok(None));
    for bad in [
        r#""""#, r#"",,""#, r#""\"""#, r#""\n""#, r#""\r""#, r#""é""#,
    ] {
        let e = delimiter(bad).unwrap_err();
        assert!(e.contains(": delimiter: "), "{bad}: {e}");
    }
}

#[test]
fn max_attempts_must_be_at_least_one() {
    let e = error(r#"{"fields": [{"name": "a", "type": "string"}], "maxAttempts": 0}"#);
    assert!(
        e.to_string().ends_with("maxAttempts: must be at least 1"),
        "{e}"
    );
}

#[test]
fn limits_must_leave_room_for_the_fields() {
    let e = error(
        r#"{"fields": [{"name": "a", "type": "string"}, {"name": "b", "type": "string"}], "limits": {"maxFields": 1}}"#,
    );
    assert!(
        e.to_string()
            .contains("limits.maxFields: 1 is fewer than the 2 fields defined"),
        "{e}"
    );
    let e = error(r#"{"fields": [{"name": "a", "type": "string"}], "limits": {"maxRowBytes": 0}}"#);
    assert_eq!(e.path(), "limits.maxRowBytes");
}

#[test]
fn format_is_csv_or_ndjson() {
    let def = load(r#"{"fields": [{"name": "a", "type": "string"}], "format": "ndjson"}"#);
    assert_eq!(def.format, Some(InputFormat::NDJSON));
    assert_eq!(
        error(r#"{"fields": [{"name": "a", "type": "string"}], "format": "xml"}"#).path(),
        "format"
    );
}

#[test]
fn an_unknown_format_is_refused_at_load_naming_it_and_the_known_ones() {
    let e = error(r#"{"fields": [{"name": "a", "type": "string"}], "format": "xml"}"#);
    assert_eq!(
        e.to_string(),
        "import definition defs/users.json: format: \
         unknown format \"xml\" (known formats: csv, ndjson) at line 1 column 62"
    );
    assert_eq!(e.path(), "format");
}

#[test]
fn columns_are_only_accepted_without_a_header_and_are_checked_at_load() {
    let e = error(r#"{"fields": [{"name": "a", "type": "string"}], "columns": ["a"]}"#);
    assert!(
        e.to_string()
            .contains("columns: only used when hasHeader is false"),
        "{e}"
    );
    let e = error(
        r#"{"fields": [{"name": "a", "type": "string", "required": true}], "hasHeader": false, "columns": ["b"]}"#,
    );
    assert!(
        e.to_string()
            .ends_with("columns: missing required column(s): a"),
        "{e}"
    );
    let e = error(
        r#"{"fields": [{"name": "a", "type": "string"}], "hasHeader": false, "columns": []}"#,
    );
    assert!(
        e.to_string()
            .ends_with("columns: must list at least one column"),
        "{e}"
    );
}

#[test]
fn to_json_round_trips() {
    let def = load(EXAMPLE);
    let again = load(&def.to_json());
    assert_eq!(again.fields, def.fields);
    assert_eq!(again.key_field, def.key_field);
    assert_eq!(again.delimiter, def.delimiter);
    assert_eq!(again.to_json(), def.to_json());

    let tab = load(
        r#"{"fields": [{"name": "a", "type": "string"}], "delimiter": "\t", "hasHeader": false, "columns": ["x", "a"], "format": "csv"}"#,
    );
    let again = load(&tab.to_json());
    assert_eq!(again.delimiter, Some(b'\t'));
    assert_eq!(again.columns, tab.columns);
    assert_eq!(again.format, Some(InputFormat::CSV));
}
