//! The reader's output must not depend on how the bytes are cut into pieces.

use super::resume::assert_resumes_anywhere;
use super::*;
use proptest::prelude::*;

/// Records plus the message of the error that ended the reading, if any.
type Outcome = (Vec<StagedRecord>, Option<String>);

fn run(input: &[u8], cuts: &[usize], name: &str, def: &Definition) -> Outcome {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(input.len());
    let mut pieces = Vec::new();
    let mut at = 0;
    for cut in cuts {
        pieces.push(input[at..cut].to_vec());
        at = cut;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (records, err) = rt.block_on(read_all(Pieces::new(pieces), name, def));
    (records, err.map(|e| e.to_string()))
}

fn resumes_anywhere(input: &[u8], name: &str, def: &Definition) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(assert_resumes_anywhere(input, name, def));
}

/// The stored bytes of a CSV case: compressed and split into members when
/// the case says so.
fn stored(case: &CsvCase, plain: Vec<u8>) -> Vec<u8> {
    match case.gzip {
        None => plain,
        Some(split) => {
            let split = split % (plain.len() + 1);
            gzip(&[&plain[..split], &plain[split..]])
        }
    }
}

fn field() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "a", "Z", "1", " ", "\"", ",", ";", "\t", "|", "\r", "\n", "\r\n", "é", "日本", "😀",
    ]);
    prop::collection::vec(atoms, 0..6).prop_map(|atoms| atoms.concat())
}

#[derive(Debug, Clone)]
struct CsvCase {
    rows: Vec<Vec<String>>,
    delimiter: u8,
    explicit_delimiter: bool,
    has_header: bool,
    crlf: bool,
    bom: bool,
    quote_all: bool,
    /// Compress, and where to split the members.
    gzip: Option<usize>,
    max_row_bytes: Option<usize>,
}

fn csv_case() -> impl Strategy<Value = CsvCase> {
    (2usize..5).prop_flat_map(|columns| {
        (
            prop::collection::vec(prop::collection::vec(field(), columns), 0..10),
            prop::sample::select(vec![b',', b';', b'\t', b'|']),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            prop::option::of(any::<usize>()),
            prop::option::weighted(0.2, 8usize..60),
        )
            .prop_map(
                |(rows, delimiter, explicit, header, crlf, bom, quote_all, gzip, max)| CsvCase {
                    rows,
                    delimiter,
                    explicit_delimiter: explicit,
                    has_header: header,
                    crlf,
                    bom,
                    quote_all,
                    gzip,
                    max_row_bytes: max,
                },
            )
    })
}

fn columns(case: &CsvCase) -> usize {
    case.rows.first().map_or(2, Vec::len)
}

fn encode_field(field: &str, case: &CsvCase) -> String {
    // Quoting every candidate delimiter keeps auto-detection unambiguous.
    let special = |c: char| matches!(c, '"' | '\r' | '\n' | ',' | ';' | '\t' | '|');
    if case.quote_all || field.contains(special) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

/// The file's bytes (before compression) and the expected outcome.
fn encode(case: &CsvCase) -> (Vec<u8>, Outcome) {
    let n = columns(case);
    let names: Vec<String> = (0..n).map(|i| format!("f{i}")).collect();
    let terminator = if case.crlf { "\r\n" } else { "\n" };
    let delimiter = (case.delimiter as char).to_string();
    let mut text = String::new();
    let mut lines = 1;
    let mut records = Vec::new();
    let mut error = None;
    let too_long = |row: &str| case.max_row_bytes.is_some_and(|max| row.len() > max);
    let name = "in.csv";
    let rows = case
        .has_header
        .then_some(&names)
        .into_iter()
        .chain(&case.rows);
    for (i, row) in rows.enumerate() {
        let encoded: Vec<String> = row.iter().map(|f| encode_field(f, case)).collect();
        let encoded = encoded.join(&delimiter);
        if error.is_none() && too_long(&encoded) {
            let limit = case.max_row_bytes.unwrap();
            error = Some(format!(
                "{name}: line {lines}: the row is longer than the limit of {limit} bytes"
            ));
        }
        if error.is_none() && !(case.has_header && i == 0) {
            let values = row.iter().cloned().map(Some).collect();
            records.push(StagedRecord {
                line: lines,
                values,
                issue: None,
            });
        }
        lines += encoded.matches('\n').count() as u64 + encoded.matches('\r').count() as u64
            - encoded.matches("\r\n").count() as u64
            + 1;
        text.push_str(&encoded);
        text.push_str(terminator);
    }
    if text.bytes().all(|b| b.is_ascii_whitespace()) {
        // Rejected as a whole: not even the blank-looking rows are read.
        records.clear();
        error = Some(format!("{name}: the file is empty"));
    }
    let mut bytes = text.into_bytes();
    if case.bom {
        bytes.splice(0..0, BOM.iter().copied());
    }
    (bytes, (records, error))
}

fn csv_definition(case: &CsvCase) -> Definition {
    let fields: Vec<String> = (0..columns(case))
        .map(|i| format!(r#"{{"name":"f{i}","type":"string"}}"#))
        .collect();
    let json = format!(
        r#"{{"fields":[{}],"hasHeader":{}}}"#,
        fields.join(","),
        case.has_header
    );
    let mut def = Definition::from_json(&json, "test").unwrap();
    def.delimiter = case.explicit_delimiter.then_some(case.delimiter);
    if let Some(max) = case.max_row_bytes {
        def.limits.max_row_bytes = max;
    }
    def
}

fn ndjson_line() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec!["email", "Email", "MAIL", "age", "tags", "other"]);
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        field().prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{1,3}", inner, 0..3)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![
        6 => prop::collection::btree_map(key, value, 0..5).prop_map(|m| {
            serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()).to_string()
        }),
        1 => Just(String::new()),
        1 => Just("  \t".to_owned()),
        1 => Just("{\"email\": \"cut".to_owned()),
        1 => Just("[1, \"日本\"]".to_owned()),
    ]
}

fn ndjson_definition() -> Definition {
    let mut def = Definition::from_json(
        r#"{"fields":[
            {"name":"email","type":"email","aliases":["mail"]},
            {"name":"age","type":"integer"},
            {"name":"tags","type":"string"}
        ]}"#,
        "test",
    )
    .unwrap();
    def.format = Some(InputFormat::NDJSON);
    def
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn csv_is_independent_of_how_the_stream_is_cut(
        case in csv_case(),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let (plain, expected) = encode(&case);
        let bytes = stored(&case, plain);
        let def = csv_definition(&case);
        let whole = run(&bytes, &[], "in.csv", &def);
        prop_assert_eq!(&whole, &expected);
        let cut = run(&bytes, &cuts, "in.csv", &def);
        prop_assert_eq!(cut, whole);
    }

    #[test]
    fn ndjson_is_independent_of_how_the_stream_is_cut(
        lines in prop::collection::vec(ndjson_line(), 0..12),
        crlf in any::<bool>(),
        final_newline in any::<bool>(),
        compress in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let mut text = lines.join(if crlf { "\r\n" } else { "\n" });
        if final_newline {
            text.push('\n');
        }
        let bytes = if compress { gzip(&[text.as_bytes()]) } else { text.into_bytes() };
        let def = ndjson_definition();
        let whole = run(&bytes, &[], "in.ndjson", &def);
        if lines.iter().all(|l| l.trim().is_empty()) {
            prop_assert_eq!(&whole.1, &Some("in.ndjson: the file is empty".to_owned()));
        } else {
            prop_assert_eq!(&whole.1, &None);
            let expected_lines: Vec<u64> = (1..)
                .zip(&lines)
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(n, _)| n)
                .collect();
            let lines: Vec<u64> = whole.0.iter().map(|r| r.line).collect();
            prop_assert_eq!(lines, expected_lines);
        }
        let cut = run(&bytes, &cuts, "in.ndjson", &def);
        prop_assert_eq!(cut, whole);
    }

    #[test]
    fn csv_resumed_at_any_record_reads_on_as_if_never_stopped(case in csv_case()) {
        let (plain, _) = encode(&case);
        resumes_anywhere(&stored(&case, plain), "in.csv", &csv_definition(&case));
    }

    #[test]
    fn ndjson_resumed_at_any_record_reads_on_as_if_never_stopped(
        lines in prop::collection::vec(ndjson_line(), 0..12),
        crlf in any::<bool>(),
        bom in any::<bool>(),
        compress in any::<bool>(),
    ) {
        let mut text = lines.join(if crlf { "\r\n" } else { "\n" }).into_bytes();
        if bom {
            text.splice(0..0, BOM.iter().copied());
        }
        let bytes = if compress { gzip(&[&text]) } else { text };
        resumes_anywhere(&bytes, "in.ndjson", &ndjson_definition());
    }
}
