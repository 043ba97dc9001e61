//! The import definition: the schema and options of an import, loaded and
//! checked once at cold start, plus header resolution and the per-record
//! validator that turns staged text values into typed records.

mod definition;
mod email;
mod header;
mod record;
mod validate;

pub use definition::{check_kind, Partitioning, DEFAULT_PARTITIONS, MAX_KIND_LEN, MAX_PARTITIONS};
pub use record::{FieldValue, RecordValues, ValidRecord, ValueError};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An input format, by the name the definition's `format` gives it: one of
/// the formats registered in `source` ([`crate::source::format_named`]),
/// so that a new format needs no change here. Each format's file adds its
/// constant, such as `InputFormat::CSV`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputFormat(&'static str);

impl InputFormat {
    /// The registered format called `name`.
    pub fn named(name: &str) -> Option<InputFormat> {
        crate::source::format_named(name)
    }

    pub fn name(self) -> &'static str {
        self.0
    }

    /// For the format registry and the formats' constants: `name` must be
    /// a registered format's.
    pub(crate) const fn registered(name: &'static str) -> InputFormat {
        InputFormat(name)
    }
}

impl Serialize for InputFormat {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for InputFormat {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        InputFormat::named(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown format {name:?} (known formats: {})",
                crate::source::format_names().join(", ")
            ))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    Integer,
    Number,
    Boolean,
    Date,
    Datetime,
    Email,
    Enum,
}

/// What to do with header columns that no field reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtraColumns {
    /// Skip them (a file may carry columns the import does not need).
    #[default]
    Ignore,
    /// Fail the file, naming them: a misspelled optional column would
    /// otherwise be dropped without a word. The error report's own columns
    /// ([`Definition::report_columns`]) are ignored all the same, so a fixed
    /// report imports with the same definition.
    Reject,
}

/// Which row of a key the target table keeps when the file repeats the key
/// (`onDuplicateKey`; needs `keyField`). Holds across batches and workers:
/// the result is what importing the file row by row would give.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDuplicateKey {
    /// The last row of the key in the file wins.
    #[default]
    Last,
    /// The first row of the key in the file wins; later ones are skipped.
    First,
    /// The first row of the key is imported; each later one fails with
    /// `duplicate of line N`. Needs the key's rows in file order, so the
    /// rows are partitioned by the key (`partitionBy` defaults to it).
    Reject,
}

/// One field of the definition, as written in the JSON file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldDef {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FieldType,
    #[serde(default, skip_serializing_if = "is_false")]
    pub required: bool,
    /// Used when the value is missing or blank. Checked against the type at
    /// load time; records receive its typed form (see [`Definition::validate`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    /// Unanchored regex, applied to the trimmed text once the type parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default, alias = "enum", skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Other header names (or NDJSON keys) that feed this field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Trim string values; values of every other type are always trimmed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub trim: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Guards against hostile or broken input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Limits {
    pub max_row_bytes: usize,
    pub max_fields: usize,
    pub max_records: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_row_bytes: 1 << 20,
            max_fields: 1000,
            max_records: 1_000_000_000,
        }
    }
}

/// A loaded, checked import definition.
///
/// Only [`Definition::from_json`] builds one, because it also compiles the
/// patterns, defaults and name lookups the hot path relies on. The public
/// fields are for reading; changing `fields`, `columns` or `key_field` after
/// loading does not update that compiled state.
#[derive(Debug, Clone)]
pub struct Definition {
    /// What kind of import this is (`users`, `orders`): what jobs run on
    /// it are listed and filtered by. Set by the definition, else by the
    /// route or the file that names it (`routes`); `None` only for a
    /// definition assembled in code.
    pub kind: Option<String>,
    pub fields: Vec<FieldDef>,
    pub key_field: Option<String>,
    /// As written; `duplicate_policy` gives the one in force.
    pub on_duplicate_key: Option<OnDuplicateKey>,
    /// Fields whose values decide a row's key partition (`partitioning`).
    pub partition_by: Option<Vec<String>>,
    /// As written; `partitioning` gives the count in force.
    pub partitions: Option<u32>,
    pub batch_size: usize,
    /// `None` means detect it from the data.
    pub delimiter: Option<u8>,
    pub has_header: bool,
    pub columns: Option<Vec<String>>,
    pub continue_on_error: bool,
    pub max_retries: u32,
    /// How many times a batch may be claimed before it is declared poison.
    pub max_attempts: u32,
    pub format: Option<InputFormat>,
    pub limits: Limits,
    pub extra_columns: ExtraColumns,
    /// Write units a second all workers of a job may spend in the target
    /// together (`throttle`); `Some(0)` lifts the deployment's default.
    pub max_write_units_per_second: Option<u32>,
    /// What workers do with valid records: a type from the processor
    /// registry and its settings (the DynamoDB upsert when absent).
    pub processor: crate::processor::ProcessorSettings,
    compiled: definition::Compiled,
}

#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// The JSON does not have the expected shape (syntax, unknown key, wrong type...).
    #[error("import definition {origin}: {}{source}", path_prefix(.path))]
    Parse {
        origin: String,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("import definition {origin}: {path}: invalid regex: {source}")]
    Pattern {
        origin: String,
        path: String,
        #[source]
        source: regex::Error,
    },
    /// Well-formed JSON that does not make a usable definition.
    #[error("import definition {origin}: {path}: {message}")]
    Invalid {
        origin: String,
        path: String,
        message: String,
    },
}

pub(crate) fn path_prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

impl DefinitionError {
    /// Where in the definition the problem is, e.g. `fields[2].type`
    /// (empty when it concerns the document as a whole).
    pub fn path(&self) -> &str {
        match self {
            DefinitionError::Parse { path, .. }
            | DefinitionError::Pattern { path, .. }
            | DefinitionError::Invalid { path, .. } => path,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("missing required column(s): {}", .0.join(", "))]
    MissingColumns(Vec<String>),
    #[error("duplicate column name {0:?}")]
    DuplicateColumn(String),
    #[error("column(s) no field reads: {} (extraColumns is \"reject\")", .0.join(", "))]
    UnexpectedColumns(Vec<String>),
}

/// Which definition field each input column feeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnMap {
    /// `columns[i]` is the field index fed by input column `i`, `None` for
    /// columns the definition does not know (they are ignored).
    pub columns: Vec<Option<usize>>,
    pub field_count: usize,
}

#[cfg(test)]
mod tests;
