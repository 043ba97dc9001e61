//! The per-record validator: staged text values in, typed values out, with
//! every problem of a record reported at once.

use super::{email, Definition, FieldDef, FieldType, FieldValue, ValidRecord};
use crate::job::{FieldIssue, StagedRecord};
use chrono::{DateTime, NaiveDate, NaiveTime, SecondsFormat, Utc};
use regex::Regex;
use regex_automata::dfa::{dense, Automaton};
use regex_automata::Input;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashSet;
use std::num::IntErrorKind;

const MISSING: &str = "required value is missing";
const BAD_INTEGER: &str = "not a valid integer";
const INTEGER_RANGE: &str = "not a valid integer (out of range)";
const BAD_NUMBER: &str = "not a valid number";
const BAD_BOOLEAN: &str = "not a valid boolean (expected true/false, yes/no, y/n or 1/0)";
const BAD_DATE: &str = "not a valid date (expected YYYY-MM-DD)";
const BAD_DATETIME: &str = "not a valid date-time (expected RFC 3339, e.g. 2024-01-31T10:00:00Z)";
const BAD_EMAIL: &str = "not a valid email address";

/// Above this many values a hash lookup beats scanning the list.
const ENUM_SCAN_MAX: usize = 8;

/// Per-field state prepared at load time.
#[derive(Debug, Clone)]
pub(super) struct Rule {
    pattern: Option<Pattern>,
    pattern_message: String,
    enum_set: Option<HashSet<String>>,
    enum_message: String,
    /// The default in the form a parsed value takes.
    pub(super) default: Option<Parsed<'static>>,
}

impl Rule {
    pub(super) fn new(field: &FieldDef, pattern: Option<Regex>) -> Rule {
        Rule {
            pattern_message: field
                .pattern
                .as_ref()
                .map(|p| format!("does not match pattern {p}"))
                .unwrap_or_default(),
            pattern: pattern.map(Pattern::new),
            enum_set: (field.values.len() > ENUM_SCAN_MAX)
                .then(|| field.values.iter().cloned().collect()),
            enum_message: if field.kind == FieldType::Enum {
                format!("must be one of: {}", field.values.join(", "))
            } else {
                String::new()
            },
            default: None,
        }
    }
}

/// Largest DFA a field's pattern is compiled to; beyond it the pattern is
/// matched by its `Regex` alone.
const PATTERN_DFA_BYTES: usize = 256 * 1024;

/// A field's pattern. Most patterns (short codes, formats) compile to a small
/// DFA, which matches a value without the general engine's per-search set-up
/// (a large share of the time for a value of a few bytes); the `Regex`
/// decides whatever the DFA cannot.
#[derive(Debug, Clone)]
struct Pattern {
    regex: Regex,
    dfa: Option<dense::DFA<Vec<u32>>>,
}

impl Pattern {
    fn new(regex: Regex) -> Pattern {
        let config = dense::Config::new()
            .dfa_size_limit(Some(PATTERN_DFA_BYTES))
            .determinize_size_limit(Some(PATTERN_DFA_BYTES));
        let dfa = dense::Builder::new()
            .configure(config)
            .build(regex.as_str())
            .ok();
        Pattern { regex, dfa }
    }

    fn is_match(&self, text: &str) -> bool {
        if let Some(dfa) = &self.dfa {
            if let Ok(found) = dfa.try_search_fwd(&Input::new(text).earliest(true)) {
                return found.is_some();
            }
        }
        self.regex.is_match(text)
    }
}

/// A value that parsed, in its type: text borrowed from the input unless
/// parsing rewrote it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Parsed<'a> {
    Text(Cow<'a, str>),
    Integer(i64),
    Number(f64),
    Boolean(bool),
}

impl Parsed<'_> {
    fn value(&self) -> FieldValue<'_> {
        match self {
            Parsed::Text(s) => FieldValue::String(s),
            Parsed::Integer(n) => FieldValue::Integer(*n),
            Parsed::Number(x) => FieldValue::Number(*x),
            Parsed::Boolean(b) => FieldValue::Boolean(*b),
        }
    }

    fn borrowed(&self) -> Parsed<'_> {
        match self {
            Parsed::Text(s) => Parsed::Text(Cow::Borrowed(s)),
            Parsed::Integer(n) => Parsed::Integer(*n),
            Parsed::Number(x) => Parsed::Number(*x),
            Parsed::Boolean(b) => Parsed::Boolean(*b),
        }
    }

    fn into_owned(self) -> Parsed<'static> {
        match self {
            Parsed::Text(s) => Parsed::Text(Cow::Owned(s.into_owned())),
            Parsed::Integer(n) => Parsed::Integer(n),
            Parsed::Number(x) => Parsed::Number(x),
            Parsed::Boolean(b) => Parsed::Boolean(b),
        }
    }

    /// Bytes of text it adds to a record.
    pub(super) fn text_len(&self) -> usize {
        match self {
            Parsed::Text(s) => s.len(),
            _ => 0,
        }
    }
}

/// Checks a definition's default against its field and returns the value
/// records will receive, so a field has one type whether the input or the
/// default supplied it (`"42"` for an integer field becomes `42`).
pub(super) fn typed_default(
    field: &FieldDef,
    rule: &Rule,
    default: &Value,
) -> Result<Parsed<'static>, String> {
    let text = match default {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return Err("must be a string, number or boolean".to_owned()),
    };
    parse(field, rule, &text)
        .map(Parsed::into_owned)
        .map_err(|message| {
            let shown = serde_json::to_string(default).unwrap_or_default();
            match message.strip_prefix("not ") {
                Some(rest) => format!("{shown} is not {rest}"),
                None => format!("{shown} {message}"),
            }
        })
}

/// `s.trim()`, without its Unicode scan for the usual value that starts
/// and ends with visible ASCII (whitespace is either ASCII up to a space or
/// not ASCII at all).
fn trim(s: &str) -> &str {
    let visible = |b: Option<&u8>| b.is_some_and(|&b| b > b' ' && b.is_ascii());
    if visible(s.as_bytes().first()) && visible(s.as_bytes().last()) {
        s
    } else {
        s.trim()
    }
}

/// Parses one present value. Errors are the issue messages.
fn parse<'a, 'r>(field: &FieldDef, rule: &'r Rule, raw: &'a str) -> Result<Parsed<'a>, &'r str> {
    parse_trimmed(field, rule, raw, trim(raw))
}

/// `parse` of a value and its trimmed text.
fn parse_trimmed<'a, 'r>(
    field: &FieldDef,
    rule: &'r Rule,
    raw: &'a str,
    text: &'a str,
) -> Result<Parsed<'a>, &'r str> {
    let value = match field.kind {
        FieldType::String => Parsed::Text(Cow::Borrowed(if field.trim { text } else { raw })),
        FieldType::Integer => match text.parse::<i64>() {
            Ok(n) => Parsed::Integer(n),
            Err(e)
                if matches!(
                    e.kind(),
                    IntErrorKind::PosOverflow | IntErrorKind::NegOverflow
                ) =>
            {
                return Err(INTEGER_RANGE)
            }
            Err(_) => return Err(BAD_INTEGER),
        },
        FieldType::Number => match text.parse::<f64>() {
            // "nan" and "inf" parse; JSON has no such numbers.
            Ok(x) if x.is_finite() => Parsed::Number(x),
            _ => return Err(BAD_NUMBER),
        },
        FieldType::Boolean => Parsed::Boolean(parse_bool(text).ok_or(BAD_BOOLEAN)?),
        FieldType::Date => {
            parse_date(text).ok_or(BAD_DATE)?;
            // The strict shape means the input already is the canonical form.
            Parsed::Text(Cow::Borrowed(text))
        }
        FieldType::Datetime => {
            let at = parse_datetime(text).ok_or(BAD_DATETIME)?;
            Parsed::Text(Cow::Owned(at.to_rfc3339_opts(SecondsFormat::AutoSi, true)))
        }
        FieldType::Email => {
            // A bare address only: a display name ("Jane <jane@x.org>") would
            // end up stored as the address.
            if !email::is_valid(text) {
                return Err(BAD_EMAIL);
            }
            Parsed::Text(Cow::Borrowed(text))
        }
        FieldType::Enum => {
            let known = match &rule.enum_set {
                Some(set) => set.contains(text),
                None => field.values.iter().any(|v| v == text),
            };
            if !known {
                return Err(&rule.enum_message);
            }
            Parsed::Text(Cow::Borrowed(text))
        }
    };
    if let Some(pattern) = &rule.pattern {
        if !pattern.is_match(text) {
            return Err(&rule.pattern_message);
        }
    }
    Ok(value)
}

fn parse_bool(text: &str) -> Option<bool> {
    const TRUE: [&str; 4] = ["true", "yes", "y", "1"];
    const FALSE: [&str; 4] = ["false", "no", "n", "0"];
    if TRUE.iter().any(|t| t.eq_ignore_ascii_case(text)) {
        Some(true)
    } else if FALSE.iter().any(|f| f.eq_ignore_ascii_case(text)) {
        Some(false)
    } else {
        None
    }
}

/// Value of a run of ASCII digits; `None` if any byte is not a digit.
fn digits(bytes: &[u8]) -> Option<u32> {
    bytes.iter().try_fold(0u32, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
    })
}

/// Exactly `YYYY-MM-DD`: chrono's `%Y-%m-%d` would also take `2024-1-5`.
fn parse_date(text: &str) -> Option<NaiveDate> {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    NaiveDate::from_ymd_opt(
        digits(&b[..4])? as i32,
        digits(&b[5..7])?,
        digits(&b[8..10])?,
    )
}

/// `HH:MM:SS` with an optional fraction of up to nanosecond precision.
fn parse_time(text: &str) -> Option<NaiveTime> {
    let b = text.as_bytes();
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let nanos = match &b[8..] {
        [] => 0,
        [b'.', frac @ ..] if (1..=9).contains(&frac.len()) => {
            digits(frac)? * 10u32.pow(9 - frac.len() as u32)
        }
        _ => return None,
    };
    NaiveTime::from_hms_nano_opt(
        digits(&b[..2])?,
        digits(&b[3..5])?,
        digits(&b[6..8])?,
        nanos,
    )
}

/// RFC 3339, or a local date and time (`T` or space separated) taken as UTC.
fn parse_datetime(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    let b = text.as_bytes();
    if b.len() < 19 || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    // The byte checks above make both slice points char boundaries.
    let date = parse_date(&text[..10])?;
    let time = parse_time(&text[11..])?;
    Some(date.and_time(time).and_utc())
}

impl Definition {
    /// Turns a staged record into typed values keyed by field name, or lists
    /// every problem found, in field order. A blank value counts as missing:
    /// the default stands in, else a required field is an issue and an
    /// optional one is left out of the output.
    pub fn validate(&self, record: &StagedRecord) -> Result<ValidRecord, Vec<FieldIssue>> {
        if let Some(issue) = &record.issue {
            return Err(vec![FieldIssue::clone(issue)]);
        }
        let compiled = &self.compiled;
        let mut valid = ValidRecord::empty(
            record.line,
            &compiled.shape,
            record.values.text_len() + compiled.default_text,
        );
        let mut issues = Vec::new();
        for (i, (field, rule)) in self.fields.iter().zip(&compiled.rules).enumerate() {
            // Rows shorter than the definition are padded by the stager; be
            // lenient anyway rather than panic on a hand-made record.
            let raw = record.values.get(i);
            let outcome = match raw.map(|raw| (raw, trim(raw))) {
                Some((raw, text)) if !text.is_empty() => parse_trimmed(field, rule, raw, text),
                _ => match &rule.default {
                    Some(default) => Ok(default.borrowed()),
                    None if field.required => Err(MISSING),
                    None => continue,
                },
            };
            match outcome {
                // Once the record has failed its values are not needed.
                Ok(value) if issues.is_empty() => valid.set(i, value.value()),
                Ok(_) => {}
                Err(message) => issues.push(FieldIssue::new(Some(&field.name), raw, message)),
            }
        }
        if issues.is_empty() {
            Ok(valid)
        } else {
            Err(issues)
        }
    }

    /// The key partition of a staged record (`partitioning`), hashed from
    /// the values its `partitionBy` fields take once valid, so rows whose
    /// fields are equal as imported (`Ada@Example.com ` and
    /// `ada@example.com`) share one; a value that is not valid counts by
    /// its trimmed text. `None` without partitions.
    pub fn partition_of(&self, record: &StagedRecord) -> Option<u32> {
        let partitioning = self.compiled.partitioning.as_ref()?;
        let mut hash = xxhash_rust::xxh3::Xxh3::new();
        for &i in &partitioning.fields {
            let (field, rule) = (&self.fields[i], &self.compiled.rules[i]);
            let raw = record.values.get(i);
            match raw.map(|raw| (raw, trim(raw))) {
                Some((raw, text)) if !text.is_empty() => {
                    match parse_trimmed(field, rule, raw, text) {
                        Ok(value) => hash.update(value.value().to_string().as_bytes()),
                        Err(_) => hash.update(text.as_bytes()),
                    }
                }
                _ => {
                    if let Some(default) = &rule.default {
                        hash.update(default.borrowed().value().to_string().as_bytes());
                    }
                }
            }
            // Fields apart: ("ab", "c") is not ("a", "bc").
            hash.update(&[0xff]);
        }
        Some((hash.digest() % u64::from(partitioning.count)) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::Pattern;
    use proptest::prelude::*;
    use regex::Regex;

    const PATTERNS: [&str; 8] = [
        "^[A-Z]{2}$",
        "[0-9]+",
        r"^\w+@\w+$",
        r"\bcat\b",
        "(?i)^caf\u{e9}",
        "^$",
        "a|b|",
        r"^\p{Greek}{1,3}-\d{2}$",
    ];

    #[test]
    fn simple_patterns_get_a_dfa_and_unicode_word_boundaries_do_not() {
        assert!(Pattern::new(Regex::new("^[A-Z]{2}$").unwrap())
            .dfa
            .is_some());
        assert!(Pattern::new(Regex::new(r"\bcat\b").unwrap()).dfa.is_none());
    }

    proptest! {
        #[test]
        fn patterns_match_as_their_regex(
            i in 0..PATTERNS.len(),
            text in "[ A-Za-z0-9@\u{e9}\u{c9}\u{3b1}-\u{3b3}-]{0,8}",
        ) {
            let regex = Regex::new(PATTERNS[i]).unwrap();
            prop_assert_eq!(Pattern::new(regex.clone()).is_match(&text), regex.is_match(&text));
        }

        #[test]
        fn trim_is_str_trim(s in "[ \t\u{a0}\u{2003}\u{85}a-z\u{e9}]{0,6}") {
            prop_assert_eq!(super::trim(&s), s.trim());
        }
    }
}
