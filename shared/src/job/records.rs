//! Records on their way through a job: a row as prepare stages it
//! (`StagedRecord`), what is wrong with a value (`FieldIssue`), and a record
//! that did not make it (`FailedRecord`) with where it failed. Serialized
//! under one-letter names: batches and failure lists hold many of them.

use super::Values;
use serde::{Deserialize, Serialize};

/// One input row as prepare stores it: raw text values in the definition's
/// field order (`None` when the column is absent or the NDJSON key missing),
/// plus a row-level problem found while parsing (ragged row, bad UTF-8...).
/// Type validation happens in the worker. Few records have an issue, so it
/// is boxed: records move through the reader and into batches by value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedRecord {
    /// 1-based line number in the (decompressed) file where the row starts.
    #[serde(rename = "l")]
    pub line: u64,
    #[serde(rename = "v")]
    pub values: Values,
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub issue: Option<Box<FieldIssue>>,
}

/// What is wrong with one value (or with the whole row when `field` is None).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldIssue {
    #[serde(rename = "f", default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The offending value, truncated for the report.
    #[serde(rename = "v", default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(rename = "m")]
    pub message: String,
}

/// Longest value kept in a failure report.
pub const MAX_REPORTED_VALUE_CHARS: usize = 200;

impl FieldIssue {
    pub fn new(field: Option<&str>, value: Option<&str>, message: impl Into<String>) -> Self {
        FieldIssue {
            field: field.map(str::to_owned),
            value: value.map(truncate_value),
            message: message.into(),
        }
    }
}

/// Truncates on a char boundary and marks the cut.
pub fn truncate_value(value: &str) -> String {
    match value.char_indices().nth(MAX_REPORTED_VALUE_CHARS) {
        None => value.to_owned(),
        Some((cut, _)) => format!("{}…", &value[..cut]),
    }
}

/// A record that did not make it: its line and every problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRecord {
    #[serde(rename = "l")]
    pub line: u64,
    #[serde(rename = "i")]
    pub issues: Vec<FieldIssue>,
    /// Where it failed: a retry reruns processing failures only.
    #[serde(
        rename = "s",
        default,
        skip_serializing_if = "FailureStage::is_validation"
    )]
    pub stage: FailureStage,
}

impl FailedRecord {
    /// A record the definition rejected: fixing it means fixing the file.
    pub fn invalid(line: u64, issues: Vec<FieldIssue>) -> Self {
        FailedRecord {
            line,
            issues,
            stage: FailureStage::Validation,
        }
    }

    /// A valid record that the processor (or a crashing batch) failed: a
    /// retry runs it again.
    pub fn unprocessed(line: u64, issues: Vec<FieldIssue>) -> Self {
        FailedRecord {
            line,
            issues,
            stage: FailureStage::Processing,
        }
    }
}

/// Whether a failure is the input's fault or the processing's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureStage {
    /// Parsing or validation: stays failed until the file is fixed.
    #[default]
    #[serde(rename = "v")]
    Validation,
    /// The processor, or a batch that crashed every worker: retryable.
    #[serde(rename = "p")]
    Processing,
}

impl FailureStage {
    pub fn is_validation(&self) -> bool {
        *self == FailureStage::Validation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries() {
        let long = "é".repeat(300);
        let t = truncate_value(&long);
        assert_eq!(t.chars().count(), MAX_REPORTED_VALUE_CHARS + 1);
        assert_eq!(truncate_value("short"), "short");
    }
}
