//! CSV as RFC 4180 and common practice write it.

use super::*;

#[tokio::test]
async fn quoted_fields_keep_delimiters_doubled_quotes_and_newlines() {
    let file = "name,age,email\n\
        \"Lovelace, Ada\",36,ada@example.org\n\
        \"Grace \"\"Amazing\"\" Hopper\",85,grace@example.org\n\
        \"Alan\nMathison\nTuring\",41,alan@example.org\n\
        Ken,80,ken@example.org\n";
    assert_eq!(
        run_import("people.csv", file, PEOPLE).await,
        completed(vec![
            person(2, "Lovelace, Ada", 36, "ada@example.org"),
            person(3, "Grace \"Amazing\" Hopper", 85, "grace@example.org"),
            person(4, "Alan\nMathison\nTuring", 41, "alan@example.org"),
            // Line 4 spans three lines, so Ken is on line 7.
            person(7, "Ken", 80, "ken@example.org"),
        ])
    );
}

#[tokio::test]
async fn crlf_line_endings_also_inside_quoted_fields() {
    let file = "name,age,email\r\n\
        Ada,36,ada@example.org\r\n\
        \"Grace\r\nHopper\",85,grace@example.org\r\n\
        Alan,41,alan@example.org\r\n";
    assert_eq!(
        run_import("people.csv", file, PEOPLE).await,
        completed(vec![
            person(2, "Ada", 36, "ada@example.org"),
            person(3, "Grace\r\nHopper", 85, "grace@example.org"),
            person(5, "Alan", 41, "alan@example.org"),
        ])
    );
}

#[tokio::test]
async fn lf_line_endings_with_or_without_a_final_newline() {
    for file in [PEOPLE_CSV, PEOPLE_CSV.trim_end()] {
        assert_eq!(
            run_import("people.csv", file, PEOPLE).await,
            completed(three_people()),
            "{file:?}"
        );
    }
}

#[tokio::test]
async fn a_utf8_byte_order_mark_before_the_header_is_ignored() {
    let with_bom = format!("\u{feff}{PEOPLE_CSV}");
    assert_eq!(
        run_import("people.csv", with_bom.clone(), PEOPLE).await,
        completed(three_people())
    );
    // Nor does it get in the way of detecting the delimiter.
    assert_eq!(
        run_import("people.csv", with_bom.replace(',', ";"), PEOPLE).await,
        completed(three_people())
    );
}

#[tokio::test]
async fn each_delimiter_is_used_when_configured() {
    for delimiter in [",", ";", "\t", "|"] {
        let definition = people_with(&format!(r#""delimiter": {}"#, json!(delimiter)));
        let file = PEOPLE_CSV.replace(',', delimiter);
        assert_eq!(
            run_import("people.csv", file, &definition).await,
            completed(three_people()),
            "delimiter {delimiter:?}"
        );
    }
}

#[tokio::test]
async fn each_delimiter_is_detected_when_none_is_configured() {
    for delimiter in [",", ";", "\t", "|"] {
        let row = |cells: [&str; 3]| cells.join(delimiter) + "\n";
        // The other candidates appear too, but only inside quotes.
        let file = row(["name", "age", "email"])
            + &row(["\"Ada, Countess; of|Love\tlace\"", "36", "ada@example.org"])
            + &row(["Grace", "85", "grace@example.org"]);
        assert_eq!(
            run_import("people.csv", file, PEOPLE).await,
            completed(vec![
                person(2, "Ada, Countess; of|Love\tlace", 36, "ada@example.org"),
                person(3, "Grace", 85, "grace@example.org"),
            ]),
            "delimiter {delimiter:?}"
        );
    }
}

#[tokio::test]
async fn a_header_row_maps_columns_by_name_in_any_order_and_ignores_unknown_ones() {
    let file = "EMAIL, shoe size ,Name,age\n\
        ada@example.org,38,Ada,36\n";
    assert_eq!(
        run_import("people.csv", file, PEOPLE).await,
        completed(vec![person(2, "Ada", 36, "ada@example.org")])
    );
}

#[tokio::test]
async fn without_a_header_row_columns_name_the_fields_and_records_start_at_line_1() {
    let file = "ada@example.org,Ada,36\ngrace@example.org,Grace,85\n";
    let definition = people_with(r#""hasHeader": false, "columns": ["email", "name", "age"]"#);
    assert_eq!(
        run_import("people.csv", file, &definition).await,
        completed(vec![
            person(1, "Ada", 36, "ada@example.org"),
            person(2, "Grace", 85, "grace@example.org"),
        ])
    );
    // Without `columns`, the columns are the fields in order.
    let file = "Ada,36,ada@example.org\n";
    assert_eq!(
        run_import("people.csv", file, &people_with(r#""hasHeader": false"#)).await,
        completed(vec![person(1, "Ada", 36, "ada@example.org")])
    );
}

#[tokio::test]
async fn empty_and_blank_lines_are_skipped_but_still_counted() {
    let file = "\n\
        name,age,email\n\
        \n\
        Ada,36,ada@example.org\n\
        \n\
        \x20  \n\
        \t\n\
        Grace,85,grace@example.org\n\
        \n";
    assert_eq!(
        run_import("people.csv", file, PEOPLE).await,
        completed(vec![
            person(4, "Ada", 36, "ada@example.org"),
            person(8, "Grace", 85, "grace@example.org"),
        ])
    );
}

#[tokio::test]
async fn a_trailing_delimiter_on_every_line_is_not_an_extra_column() {
    let file = PEOPLE_CSV.replace('\n', ",\n");
    assert_eq!(
        run_import("people.csv", file, PEOPLE).await,
        completed(three_people())
    );
}

#[tokio::test]
async fn gzip_input_is_decompressed_when_the_name_ends_in_gz() {
    let file = gzip(PEOPLE_CSV.as_bytes());
    assert_eq!(
        run_import("people.csv.gz", file, PEOPLE).await,
        completed(three_people())
    );
}

#[tokio::test]
async fn the_outcome_does_not_depend_on_how_the_object_is_cut_into_reads() {
    // Every boundary a reader can trip over: a BOM, CRLF, a quoted CRLF,
    // a doubled quote, blank lines, a ragged row and no final newline.
    let file = "\u{feff}name;age;email\r\n\
        \"Lovelace;\r\nAda\";36;ada@example.org\r\n\
        \r\n\
        \"Grace \"\"G\"\"\";85;grace@example.org\r\n\
        Alan;41\r\n\
        Ken;80;ken@example.org";
    let expected = Outcome {
        status: JobStatus::CompletedWithErrors,
        reason: None,
        imported: vec![
            person(2, "Lovelace;\r\nAda", 36, "ada@example.org"),
            person(5, "Grace \"G\"", 85, "grace@example.org"),
            person(7, "Ken", 80, "ken@example.org"),
        ],
        errors: vec![error(6, None, "expected 3 fields, found 2")],
    };
    for (name, bytes) in [
        ("people.csv", file.as_bytes().to_vec()),
        ("people.csv.gz", gzip(file.as_bytes())),
    ] {
        for pieces in [&[1][..], &[2], &[3, 1, 4, 1, 5, 9, 2, 6]] {
            assert_eq!(
                run_import_in_pieces(name, &bytes, PEOPLE, pieces).await,
                expected,
                "{name} in pieces of {pieces:?}"
            );
        }
    }
}
