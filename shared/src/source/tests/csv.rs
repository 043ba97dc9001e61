use super::*;

#[tokio::test]
async fn quoted_fields_keep_delimiters_quotes_and_newlines() {
    let input =
        b"email,age\n\"a,b@x.io\",\"say \"\"hi\"\"\"\n\"multi\nline\",\"7\r\n8\"\nc@x.io,9\n";
    assert_eq!(
        records("f.csv", input, &people()).await,
        vec![
            rec(2, &[Some("a,b@x.io"), Some("say \"hi\"")]),
            rec(3, &[Some("multi\nline"), Some("7\r\n8")]),
            rec(6, &[Some("c@x.io"), Some("9")]),
        ]
    );
}

#[tokio::test]
async fn crlf_line_endings() {
    let input = b"email,age\r\na@x.io,1\r\n\r\nb@x.io,2\r\n";
    let expected = vec![
        rec(2, &[Some("a@x.io"), Some("1")]),
        rec(4, &[Some("b@x.io"), Some("2")]),
    ];
    assert_eq!(records("f.csv", input, &people()).await, expected);
}

#[tokio::test]
async fn lf_line_endings_with_and_without_final_newline() {
    let expected = vec![
        rec(2, &[Some("a@x.io"), Some("1")]),
        rec(3, &[Some("b@x.io"), Some("2")]),
    ];
    let def = people();
    assert_eq!(
        records("f.csv", b"email,age\na@x.io,1\nb@x.io,2\n", &def).await,
        expected
    );
    assert_eq!(
        records("f.csv", b"email,age\na@x.io,1\nb@x.io,2", &def).await,
        expected
    );
}

#[tokio::test]
async fn lone_cr_line_endings_count_as_lines() {
    let input = b"email,age\ra@x.io,1\rb@x.io,2";
    let expected = vec![
        rec(2, &[Some("a@x.io"), Some("1")]),
        rec(3, &[Some("b@x.io"), Some("2")]),
    ];
    assert_eq!(records("f.csv", input, &people()).await, expected);
}

#[tokio::test]
async fn utf8_bom_is_stripped_before_the_header() {
    let input = b"\xEF\xBB\xBFemail,age\na@x.io,1\n";
    let mut def = people();
    def.delimiter = None;
    let mut rdr = RecordReader::open(Cursor::new(input.to_vec()), OpenOptions::new("f.csv"), &def)
        .await
        .unwrap();
    assert_eq!(
        rdr.header(),
        Some(&["email".to_owned(), "age".to_owned()][..])
    );
    assert_eq!(
        rdr.next_record().await.unwrap(),
        Some(rec(2, &[Some("a@x.io"), Some("1")]))
    );
}

const DELIMITERS: [u8; 4] = [b',', b';', b'\t', b'|'];

fn delimited(d: u8) -> Vec<u8> {
    let d = d as char;
    format!("age{d}email{d}note\n1{d}a@x.io{d}\"x{d}y\"\n").into_bytes()
}

#[tokio::test]
async fn each_delimiter_explicit() {
    for d in DELIMITERS {
        let mut def = people();
        def.delimiter = Some(d);
        let expected = vec![rec(2, &[Some("a@x.io"), Some("1")])];
        assert_eq!(
            records("f.txt", &delimited(d), &def).await,
            expected,
            "delimiter {d}"
        );
    }
}

#[tokio::test]
async fn each_delimiter_auto_detected() {
    for d in DELIMITERS {
        let mut def = people();
        def.delimiter = None;
        let expected = vec![rec(2, &[Some("a@x.io"), Some("1")])];
        assert_eq!(
            records("f.txt", &delimited(d), &def).await,
            expected,
            "delimiter {d}"
        );
    }
}

#[tokio::test]
async fn header_maps_columns_by_name_and_ignores_others() {
    let input = b"extra,age,email\nzzz,42,a@x.io\n";
    let mut rdr = RecordReader::open(
        Cursor::new(input.to_vec()),
        OpenOptions::new("f.csv"),
        &people(),
    )
    .await
    .unwrap();
    assert_eq!(rdr.format(), InputFormat::CSV);
    assert_eq!(rdr.header().map(<[String]>::len), Some(3));
    assert_eq!(
        rdr.next_record().await.unwrap(),
        Some(rec(2, &[Some("a@x.io"), Some("42")]))
    );
    assert_eq!(rdr.next_record().await.unwrap(), None);
    assert_eq!(rdr.records_read(), 1);
}

#[tokio::test]
async fn without_header_columns_map_in_order_from_line_1() {
    let mut def = people();
    def.has_header = false;
    let input = b"a@x.io,1\nb@x.io,2\n";
    let mut rdr = RecordReader::open(Cursor::new(input.to_vec()), OpenOptions::new("f.csv"), &def)
        .await
        .unwrap();
    assert_eq!(rdr.header(), None);
    assert_eq!(
        rdr.next_record().await.unwrap(),
        Some(rec(1, &[Some("a@x.io"), Some("1")]))
    );
    assert_eq!(
        rdr.next_record().await.unwrap(),
        Some(rec(2, &[Some("b@x.io"), Some("2")]))
    );
}

#[tokio::test]
async fn empty_and_blank_lines_are_skipped_without_shifting_lines() {
    let input = b"\nemail,age\n\n\na@x.io,1\n  \n\t\nb@x.io,2\n\n";
    let expected = vec![
        rec(5, &[Some("a@x.io"), Some("1")]),
        rec(8, &[Some("b@x.io"), Some("2")]),
    ];
    assert_eq!(records("f.csv", input, &people()).await, expected);
}

#[tokio::test]
async fn trailing_delimiter_is_tolerated() {
    let input = b"email,age,\na@x.io,1,\nb@x.io,2\n";
    let expected = vec![
        rec(2, &[Some("a@x.io"), Some("1")]),
        rec(3, &[Some("b@x.io"), Some("2")]),
    ];
    assert_eq!(records("f.csv", input, &people()).await, expected);
}

#[tokio::test]
async fn ragged_rows_too_many_and_too_few_fields() {
    let input = b"email,age\na@x.io,1,x\nb@x.io\nc@x.io,3,\n";
    assert_eq!(
        records("f.csv", input, &people()).await,
        vec![
            with_issue(
                rec(2, &[Some("a@x.io"), Some("1")]),
                None,
                None,
                "expected 2 fields, found 3"
            ),
            with_issue(
                rec(3, &[Some("b@x.io"), None]),
                None,
                None,
                "expected 2 fields, found 1"
            ),
            rec(4, &[Some("c@x.io"), Some("3")]),
        ]
    );
}

#[tokio::test]
async fn an_unclosed_quote_is_reported_with_the_lines_it_swallowed_in_mind() {
    let input = b"email,age\n\"a@x.io,1\nb@x.io,2\nc@x.io,3\n";
    let got = records("f.csv", input, &people()).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].line, 2);
    assert_eq!(
        got[0].issue.as_ref().unwrap().message,
        "expected 2 fields, found 1 (a quoted value runs across lines: is a quote left open?)"
    );
}

#[tokio::test]
async fn invalid_utf8_in_a_field_is_a_record_issue() {
    let input = b"email,age,ignored\na@x.io,4\xff2,\xfe\nb@x.io,1,ok\n";
    assert_eq!(
        records("f.csv", input, &people()).await,
        vec![
            with_issue(
                rec(2, &[Some("a@x.io"), Some("4\u{fffd}2")]),
                Some("age"),
                Some("4\u{fffd}2"),
                "invalid UTF-8"
            ),
            rec(3, &[Some("b@x.io"), Some("1")]),
        ]
    );
}

#[tokio::test]
async fn a_character_split_by_a_delimiter_is_invalid_in_both_values() {
    // "é" is C3 A9: the row reads as valid UTF-8 only across the comma.
    let input = b"email,age\na@x.io\xc3,\xa91\nb@x.io,\xc3\xa9\n";
    let got = records("f.csv", input, &people()).await;
    assert_eq!(
        got[0],
        with_issue(
            rec(2, &[Some("a@x.io\u{fffd}"), Some("\u{fffd}1")]),
            Some("email"),
            Some("a@x.io\u{fffd}"),
            "invalid UTF-8"
        )
    );
    assert_eq!(got[1], rec(3, &[Some("b@x.io"), Some("é")]));
}

#[tokio::test]
async fn header_only_yields_zero_records() {
    assert_eq!(records("f.csv", b"email,age\n", &people()).await, vec![]);
    assert_eq!(records("f.csv", b"email,age", &people()).await, vec![]);
}

#[tokio::test]
async fn missing_required_column_fails_at_open() {
    let err = error("f.csv", b"age,name\n1,x\n", &people()).await;
    assert!(
        matches!(&err, SourceError::Header { line: 1, source: HeaderError::MissingColumns(c), .. } if c == &["email"]),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("f.csv: line 1: bad header: "),
        "{err}"
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[tokio::test]
async fn duplicate_column_fails_at_open() {
    let err = error("f.csv", b"email,age,email\n", &people()).await;
    assert!(
        matches!(
            &err,
            SourceError::Header {
                line: 1,
                source: HeaderError::DuplicateColumn(_),
                ..
            }
        ),
        "{err:?}"
    );
}
