use super::*;

#[tokio::test]
async fn ndjson_objects_map_keys_by_name_and_alias() {
    let input = b"{\"email\":\"a@x.io\",\"age\":31,\"other\":1}\r\n\n{\"MAIL\":\"b@x.io\",\"age\":\"7\",\"tags\":true}\n";
    let mut rdr = RecordReader::open(
        Cursor::new(input.to_vec()),
        OpenOptions::new("in"),
        &ndjson_def(),
    )
    .await
    .unwrap();
    assert_eq!(rdr.format(), InputFormat::NDJSON);
    assert_eq!(
        rdr.next_record().await.unwrap(),
        Some(rec(1, &[Some("a@x.io"), Some("31"), None]))
    );
    assert_eq!(
        rdr.next_record().await.unwrap(),
        Some(rec(3, &[Some("b@x.io"), Some("7"), Some("true")]))
    );
    assert_eq!(rdr.next_record().await.unwrap(), None);
}

#[tokio::test]
async fn ndjson_by_extension_also_under_gz() {
    let mut def = ndjson_def();
    def.format = None;
    let plain = b"{\"email\":\"a@x.io\"}\n";
    let expected = vec![rec(1, &[Some("a@x.io"), None, None])];
    assert_eq!(records("in.ndjson", plain, &def).await, expected);
    assert_eq!(
        records("in.JSONL.gz", &gzip(&[plain]), &def).await,
        expected
    );
}

#[tokio::test]
async fn ndjson_bad_line_is_a_record_issue() {
    let input = b"{\"email\":\"a@x.io\"}\n{oops\n[1,2]\n";
    let blank = [None, None, None];
    assert_eq!(
        records("in.ndjson", input, &ndjson_def()).await,
        vec![
            rec(1, &[Some("a@x.io"), None, None]),
            with_issue(
                rec(2, &blank),
                None,
                None,
                "not a JSON object: key must be a string at line 1 column 2"
            ),
            with_issue(
                rec(3, &blank),
                None,
                None,
                "not a JSON object: invalid type: sequence, expected a map at line 1 column 0"
            ),
        ]
    );
}

#[tokio::test]
async fn ndjson_nested_values_become_compact_json_and_null_is_absent() {
    let input = b"{\"email\": null, \"age\": 1.5e3, \"tags\": {\"a\": [1, \"x\"], \"b\": null}}\n";
    assert_eq!(
        records("in.ndjson", input, &ndjson_def()).await,
        vec![rec(
            1,
            &[None, Some("1500.0"), Some(r#"{"a":[1,"x"],"b":null}"#)]
        )]
    );
}

#[tokio::test]
async fn ndjson_key_spelled_like_the_field_beats_alias_and_case() {
    let input =
        b"{\"Email\":\"loose\",\"email\":\"exact\",\"mail\":\"alias\"}\n{\"MAIL\":\"alias\"}\n";
    assert_eq!(
        records("in.ndjson", input, &ndjson_def()).await,
        vec![
            rec(1, &[Some("exact"), None, None]),
            rec(2, &[Some("alias"), None, None]),
        ]
    );
}
