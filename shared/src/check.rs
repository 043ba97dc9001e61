//! A dry run on the local machine: the whole parse and validation of a file
//! against a definition, with no AWS, the way prepare and the workers would
//! see it. What a user runs before uploading.

mod keys;

pub use self::keys::{Repeat, RepeatedKeys, MAX_KEYS};

use crate::job::FailedRecord;
use crate::schema::Definition;
use crate::source::{OpenOptions, RecordReader, SourceError};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// What a check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub rows: u64,
    pub valid: u64,
    pub failed: u64,
    /// Failed rows by reason (`field: message`, or the row-level message),
    /// one count per issue.
    pub by_reason: BTreeMap<String, u64>,
    /// The first failed rows, in input order.
    pub first_errors: Vec<FailedRecord>,
    /// Bytes of the file read (compressed bytes for a gzip file).
    pub bytes: u64,
    /// Valid rows repeating an earlier one's key; `None` without a
    /// `keyField`.
    pub repeated: Option<RepeatedKeys>,
}

/// How much a check keeps besides its counts.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    /// Failed rows to show, and repeated keys.
    pub errors: usize,
    /// Distinct keys to remember while looking for repeats ([`MAX_KEYS`]).
    pub keys: usize,
}

/// Bytes read so far, shared with whoever draws progress.
#[derive(Debug, Clone, Default)]
pub struct BytesRead(Arc<AtomicU64>);

impl BytesRead {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Parses and validates everything `reader` holds. A file-level problem
/// (not text, a bad header, a limit) is the error, naming the file and,
/// where there is one, the line; row-level problems are counted, and so are
/// valid rows whose key an earlier valid row had.
pub async fn check(
    reader: impl AsyncRead + Unpin + Send + 'static,
    name: &str,
    definition: &Definition,
    keep: Keep,
    progress: &BytesRead,
) -> Result<CheckReport, SourceError> {
    let keep_errors = keep.errors;
    let mut keys = definition
        .key_field
        .as_deref()
        .map(|field| keys::KeyTracker::new(field, keep.keys, keep.errors));
    let counted = Counted {
        inner: reader,
        read: progress.clone(),
    };
    let mut records = RecordReader::open(counted, OpenOptions::new(name), definition).await?;
    let mut report = CheckReport::default();
    while let Some(record) = records.next_record().await? {
        report.rows += 1;
        match definition.validate(&record) {
            Ok(valid) => {
                report.valid += 1;
                let key = (keys.as_mut(), definition.key_field.as_deref());
                if let (Some(keys), Some(field)) = key {
                    if let Some(value) = valid.get(field) {
                        keys.note(value, record.line);
                    }
                }
            }
            Err(issues) => {
                report.failed += 1;
                for issue in &issues {
                    let reason = match &issue.field {
                        Some(field) => format!("{field}: {}", issue.message),
                        None => issue.message.clone(),
                    };
                    *report.by_reason.entry(reason).or_default() += 1;
                }
                if report.first_errors.len() < keep_errors {
                    report
                        .first_errors
                        .push(FailedRecord::invalid(record.line, issues));
                }
            }
        }
    }
    report.bytes = progress.get();
    report.repeated = keys.map(keys::KeyTracker::finish);
    Ok(report)
}

/// Counts the bytes that pass through.
struct Counted<R> {
    inner: R,
    read: BytesRead,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.read.0.fetch_add(n, Ordering::Relaxed);
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition() -> Definition {
        Definition::from_json(
            r#"{"fields": [
                {"name": "email", "type": "email", "required": true},
                {"name": "age", "type": "integer"}
            ]}"#,
            "test",
        )
        .unwrap()
    }

    async fn run(text: &str, keep: usize) -> Result<CheckReport, SourceError> {
        let bytes = std::io::Cursor::new(text.as_bytes().to_vec());
        check(
            bytes,
            "people.csv",
            &definition(),
            Keep {
                errors: keep,
                keys: MAX_KEYS,
            },
            &BytesRead::default(),
        )
        .await
    }

    #[tokio::test]
    async fn counts_rows_and_groups_failures_by_reason() {
        let text = "email,age\na@x.org,3\nnope,4\nb@x.org,old\nc@x.org,5,extra\nalso-nope,x\n";
        let report = run(text, 2).await.unwrap();
        assert_eq!((report.rows, report.valid, report.failed), (5, 1, 4));
        assert_eq!(report.by_reason.values().sum::<u64>(), 5, "{report:?}");
        assert_eq!(
            report.by_reason.get("email: not a valid email address"),
            Some(&2)
        );
        let lines: Vec<u64> = report.first_errors.iter().map(|f| f.line).collect();
        assert_eq!(lines, vec![3, 4], "the first two, in input order");
        assert_eq!(report.bytes, text.len() as u64);
    }

    #[tokio::test]
    async fn valid_rows_repeating_an_earlier_key_are_counted() {
        let keyed = Definition::from_json(
            r#"{"fields": [
                {"name": "email", "type": "email", "required": true},
                {"name": "age", "type": "integer"}
            ], "keyField": "email"}"#,
            "test",
        )
        .unwrap();
        // Line 5 repeats line 2's key but is invalid: it imports nothing.
        let text = "email,age\na@x.org,1\nb@x.org,2\na@x.org,3\na@x.org,x\nb@x.org,5\na@x.org,6\n";
        let report = check(
            std::io::Cursor::new(text.as_bytes().to_vec()),
            "people.csv",
            &keyed,
            Keep {
                errors: 2,
                keys: MAX_KEYS,
            },
            &BytesRead::default(),
        )
        .await
        .unwrap();
        let repeated = report.repeated.unwrap();
        assert_eq!(repeated.field, "email");
        assert_eq!((repeated.keys, repeated.rows), (2, 3));
        let first: Vec<(u64, u64)> = repeated
            .first
            .iter()
            .map(|r| (r.line, r.first_line))
            .collect();
        assert_eq!(first, vec![(4, 2), (6, 3)]);

        let unkeyed = run("email,age\na@x.org,1\na@x.org,2\n", 2).await.unwrap();
        assert_eq!(unkeyed.repeated, None);
    }

    #[tokio::test]
    async fn a_file_level_problem_is_the_error_and_names_the_file() {
        let e = run("name,age\nx,1\n", 5).await.unwrap_err();
        let message = e.to_string();
        assert!(message.starts_with("people.csv"), "{message}");
        assert!(message.contains("email"), "{message}");
    }
}
