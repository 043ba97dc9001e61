//! Loading the definition: JSON shape first (with the path of any error),
//! then the semantic checks and the compiled state the validator needs.

use super::header::{self, Names};
use super::record::RecordShape;
use super::validate::{self, Rule};
use super::{
    ColumnMap, Definition, DefinitionError, ExtraColumns, FieldDef, FieldType, InputFormat, Limits,
    OnDuplicateKey,
};
use crate::processor::{registry, ProcessorSettings, ORDER_ATTRIBUTE};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

const MAX_BATCH_SIZE: usize = 10_000;

/// State derived from the definition once, so validating a record only does
/// lookups.
#[derive(Debug, Clone)]
pub(super) struct Compiled {
    pub(super) rules: Vec<Rule>,
    /// The field names every valid record shares.
    pub(super) shape: Arc<RecordShape>,
    /// Bytes of text the defaults can add to a record.
    pub(super) default_text: usize,
    pub(super) names: Names,
    pub(super) key_index: Option<usize>,
    pub(super) headerless: ColumnMap,
    pub(super) report_columns: [String; 3],
    pub(super) partitioning: Option<Partitioning>,
}

/// Key partitions (`partitionBy`, `partitions`): rows are hashed on the
/// values of `fields` into `count` partitions, each cut into batches of its
/// own that are processed one after another, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitioning {
    /// Indexes of the fields, in the order given.
    pub fields: Vec<usize>,
    pub count: u32,
}

/// Partitions when `partitionBy` gives none.
pub const DEFAULT_PARTITIONS: u32 = 16;
/// Partitions at most: prepare keeps a batch open for each, and its
/// checkpoint names each one's last batch.
pub const MAX_PARTITIONS: u32 = 256;

/// The document as written; `Definition` is this plus checks and compiled state.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawDefinition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    fields: Vec<FieldDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_duplicate_key: Option<OnDuplicateKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partition_by: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partitions: Option<u32>,
    #[serde(default = "default_batch_size")]
    batch_size: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delimiter: Option<String>,
    #[serde(default = "default_true")]
    has_header: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    columns: Option<Vec<String>>,
    #[serde(default = "default_true")]
    continue_on_error: bool,
    #[serde(default = "default_max_retries")]
    max_retries: u32,
    #[serde(default = "default_max_attempts")]
    max_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    format: Option<InputFormat>,
    #[serde(default)]
    limits: Limits,
    #[serde(default, skip_serializing_if = "is_default")]
    extra_columns: ExtraColumns,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_write_units_per_second: Option<u32>,
    #[serde(default, skip_serializing_if = "ProcessorSettings::is_default")]
    processor: ProcessorSettings,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn default_batch_size() -> usize {
    500
}
fn default_true() -> bool {
    true
}
fn default_max_retries() -> u32 {
    3
}
fn default_max_attempts() -> u32 {
    5
}

impl Definition {
    /// Parses and checks a definition. `origin` (file path or S3 URI) only
    /// appears in error messages, which also name the offending path such as
    /// `fields[2].type`.
    pub fn from_json(text: &str, origin: &str) -> Result<Definition, DefinitionError> {
        let raw = parse(text, origin)?;
        build(raw, origin)
    }

    /// The definition as JSON; loading it back yields an equivalent definition.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a definition always serializes")
    }

    /// This definition as the kind `kind` (a route's name for it), unless
    /// it names its own.
    pub fn of_kind(mut self, kind: &str) -> Result<Definition, String> {
        if self.kind.is_none() {
            check_kind(kind)?;
            self.kind = Some(kind.to_owned());
        }
        Ok(self)
    }

    /// The kind, or `""` for a definition assembled in code.
    pub fn kind_name(&self) -> &str {
        self.kind.as_deref().unwrap_or_default()
    }

    /// Which row of a repeated key wins (the last when not given).
    pub fn duplicate_policy(&self) -> OnDuplicateKey {
        self.on_duplicate_key.unwrap_or_default()
    }

    /// Key partitions, when `partitionBy` asks for them.
    pub fn partitioning(&self) -> Option<&Partitioning> {
        self.compiled.partitioning.as_ref()
    }

    /// Index of the key field, when the definition has one.
    pub fn key_field_index(&self) -> Option<usize> {
        self.compiled.key_index
    }
}

impl Serialize for Definition {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        RawDefinition {
            kind: self.kind.clone(),
            fields: self.fields.clone(),
            key_field: self.key_field.clone(),
            on_duplicate_key: self.on_duplicate_key,
            partition_by: self.partition_by.clone(),
            partitions: self.partitions,
            batch_size: self.batch_size,
            delimiter: self.delimiter.map(|d| char::from(d).to_string()),
            has_header: self.has_header,
            columns: self.columns.clone(),
            continue_on_error: self.continue_on_error,
            max_retries: self.max_retries,
            max_attempts: self.max_attempts,
            format: self.format,
            limits: self.limits.clone(),
            extra_columns: self.extra_columns,
            max_write_units_per_second: self.max_write_units_per_second,
            processor: self.processor.clone(),
        }
        .serialize(serializer)
    }
}

fn parse(text: &str, origin: &str) -> Result<RawDefinition, DefinitionError> {
    let parse_error = |path: String, source| DefinitionError::Parse {
        origin: origin.to_owned(),
        path,
        source,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let raw: RawDefinition = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        // The root path renders as "."; an empty path reads better in messages.
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        parse_error(path, e.into_inner())
    })?;
    de.end().map_err(|e| parse_error(String::new(), e))?;
    Ok(raw)
}

fn invalid(origin: &str, path: impl Into<String>, message: impl Into<String>) -> DefinitionError {
    DefinitionError::Invalid {
        origin: origin.to_owned(),
        path: path.into(),
        message: message.into(),
    }
}

fn build(raw: RawDefinition, origin: &str) -> Result<Definition, DefinitionError> {
    if raw.fields.is_empty() {
        return Err(invalid(origin, "fields", "must list at least one field"));
    }
    let mut rules = Vec::with_capacity(raw.fields.len());
    for (i, field) in raw.fields.iter().enumerate() {
        rules.push(compile_field(field, i, origin)?);
    }
    let names =
        Names::build(&raw.fields).map_err(|(path, message)| invalid(origin, path, message))?;
    let key_index = check_key_field(&raw, &names, origin)?;
    if raw.processor.kind == crate::processor::ProcessorSettings::default().kind {
        if let Some(i) = raw.fields.iter().position(|f| f.name == ORDER_ATTRIBUTE) {
            return Err(invalid(
                origin,
                format!("fields[{i}].name"),
                format!("{ORDER_ATTRIBUTE} is where the dynamodb processor keeps the rank of each item's row: rename the field"),
            ));
        }
    }
    let partitioning = check_partitions(&raw, &names, origin)?;
    if raw.on_duplicate_key.is_some() && raw.key_field.is_none() {
        return Err(invalid(
            origin,
            "onDuplicateKey",
            "needs a keyField: duplicates are rows that repeat its value",
        ));
    }
    let shape = Arc::new(RecordShape::new(
        raw.fields.iter().map(|f| f.name.clone()).collect(),
    ));
    let default_text = rules
        .iter()
        .filter_map(|r| r.default.as_ref())
        .map(|d| d.text_len())
        .sum();
    let report_columns = header::report_columns(&names);

    if !(1..=MAX_BATCH_SIZE).contains(&raw.batch_size) {
        return Err(invalid(
            origin,
            "batchSize",
            format!(
                "must be between 1 and {MAX_BATCH_SIZE}, got {}",
                raw.batch_size
            ),
        ));
    }
    let delimiter = match &raw.delimiter {
        None => None,
        Some(d) => Some(parse_delimiter(d).map_err(|m| invalid(origin, "delimiter", m))?),
    };
    if raw.max_attempts == 0 {
        return Err(invalid(origin, "maxAttempts", "must be at least 1"));
    }
    check_limits(&raw.limits, raw.fields.len(), origin)?;
    // An unknown processor type is refused here, before any job runs on it.
    let fields = registry::Fields {
        fields: &raw.fields,
        key_field: raw.key_field.as_deref(),
    };
    registry::check(&raw.processor, &fields)
        .map_err(|(path, message)| invalid(origin, path, message))?;

    let headerless = match &raw.columns {
        None => ColumnMap {
            columns: (0..raw.fields.len()).map(Some).collect(),
            field_count: raw.fields.len(),
        },
        Some(_) if raw.has_header => {
            return Err(invalid(
                origin,
                "columns",
                "only used when hasHeader is false (the header names the columns otherwise)",
            ));
        }
        Some(columns) if columns.is_empty() => {
            return Err(invalid(origin, "columns", "must list at least one column"));
        }
        Some(columns) => header::resolve(&raw.fields, &names, columns.iter().map(String::as_str))
            .map_err(|e| invalid(origin, "columns", e.to_string()))?,
    };

    if let Some(kind) = &raw.kind {
        check_kind(kind).map_err(|m| invalid(origin, "kind", m))?;
    }

    Ok(Definition {
        kind: raw.kind,
        fields: raw.fields,
        key_field: raw.key_field,
        on_duplicate_key: raw.on_duplicate_key,
        partition_by: raw.partition_by,
        partitions: raw.partitions,
        batch_size: raw.batch_size,
        delimiter,
        has_header: raw.has_header,
        columns: raw.columns,
        continue_on_error: raw.continue_on_error,
        max_retries: raw.max_retries,
        max_attempts: raw.max_attempts,
        format: raw.format,
        limits: raw.limits,
        extra_columns: raw.extra_columns,
        max_write_units_per_second: raw.max_write_units_per_second,
        processor: raw.processor,
        compiled: Compiled {
            rules,
            shape,
            default_text,
            names,
            key_index,
            headerless,
            report_columns,
            partitioning,
        },
    })
}

/// Longest kind name: it is stored on every job and shown in listings.
pub const MAX_KIND_LEN: usize = 64;

/// A kind is a short name: letters, digits, `-`, `_` and `.`, starting
/// with a letter or digit.
pub fn check_kind(kind: &str) -> Result<(), String> {
    let ok = !kind.is_empty()
        && kind.len() <= MAX_KIND_LEN
        && kind.starts_with(|c: char| c.is_ascii_alphanumeric())
        && kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{kind:?} is not a kind: 1 to {MAX_KIND_LEN} letters, digits, '-', '_' or '.', starting with a letter or digit"
        ))
    }
}

fn compile_field(field: &FieldDef, i: usize, origin: &str) -> Result<Rule, DefinitionError> {
    let at = |key: &str| format!("fields[{i}].{key}");
    if field.name.trim().is_empty() {
        return Err(invalid(origin, at("name"), "must not be empty"));
    }
    if let Some(j) = field.aliases.iter().position(|a| a.trim().is_empty()) {
        return Err(invalid(
            origin,
            at(&format!("aliases[{j}]")),
            "must not be empty",
        ));
    }
    if field.kind == FieldType::Enum {
        if field.values.is_empty() {
            return Err(invalid(
                origin,
                at("values"),
                "an enum field needs at least one value",
            ));
        }
        // Input is trimmed before the comparison, so such a value could never match.
        if let Some(j) = field
            .values
            .iter()
            .position(|v| v.is_empty() || v.trim() != v)
        {
            return Err(invalid(
                origin,
                at(&format!("values[{j}]")),
                format!(
                    "{:?} can never match: values are compared after trimming",
                    field.values[j]
                ),
            ));
        }
    } else if !field.values.is_empty() {
        return Err(invalid(
            origin,
            at("values"),
            "only enum fields take values",
        ));
    }
    let pattern = match &field.pattern {
        None => None,
        Some(p) => Some(Regex::new(p).map_err(|source| DefinitionError::Pattern {
            origin: origin.to_owned(),
            path: at("pattern"),
            source,
        })?),
    };
    let mut rule = Rule::new(field, pattern);
    if let Some(default) = &field.default {
        let typed = validate::typed_default(field, &rule, default)
            .map_err(|message| invalid(origin, at("default"), message))?;
        rule.default = Some(typed);
    }
    Ok(rule)
}

fn check_key_field(
    raw: &RawDefinition,
    names: &Names,
    origin: &str,
) -> Result<Option<usize>, DefinitionError> {
    let Some(key) = &raw.key_field else {
        return Ok(None);
    };
    let Some(index) = raw.fields.iter().position(|f| f.name == *key) else {
        let hint = match names.find(key) {
            Some(i) => format!(" (did you mean {:?}?)", raw.fields[i].name),
            None => String::new(),
        };
        return Err(invalid(
            origin,
            "keyField",
            format!("{key:?} is not a field{hint}"),
        ));
    };
    let field = &raw.fields[index];
    if !field.required && field.default.is_none() {
        return Err(invalid(
            origin,
            "keyField",
            format!("{key:?} must be required or have a default, since every record needs a key"),
        ));
    }
    Ok(Some(index))
}

fn check_partitions(
    raw: &RawDefinition,
    names: &Names,
    origin: &str,
) -> Result<Option<Partitioning>, DefinitionError> {
    let rejects = raw.on_duplicate_key == Some(OnDuplicateKey::Reject);
    if let (true, Some(key)) = (rejects, &raw.key_field) {
        let mut fields = Vec::new();
        if let Some(index) = raw.fields.iter().position(|f| f.name == *key) {
            fields.push(index);
        }
        match &raw.partition_by {
            None => {
                let count = raw.partitions.unwrap_or(DEFAULT_PARTITIONS);
                return check_count(Some(Partitioning { fields, count }), origin);
            }
            Some(by) if by.len() == 1 && by[0] == *key => {}
            Some(_) => {
                return Err(invalid(
                    origin,
                    "partitionBy",
                    format!(
                        "onDuplicateKey reject needs each key's rows in file order: partitionBy must be [{key:?}] or absent"
                    ),
                ));
            }
        }
    }
    let Some(by) = &raw.partition_by else {
        return match raw.partitions {
            Some(_) => Err(invalid(
                origin,
                "partitions",
                "needs partitionBy: the fields whose values decide a row's partition",
            )),
            None => Ok(None),
        };
    };
    if by.is_empty() {
        return Err(invalid(
            origin,
            "partitionBy",
            "must list at least one field",
        ));
    }
    let mut fields = Vec::with_capacity(by.len());
    for (i, name) in by.iter().enumerate() {
        let Some(index) = raw.fields.iter().position(|f| f.name == *name) else {
            let hint = match names.find(name) {
                Some(j) => format!(" (did you mean {:?}?)", raw.fields[j].name),
                None => String::new(),
            };
            return Err(invalid(
                origin,
                format!("partitionBy[{i}]"),
                format!("{name:?} is not a field{hint}"),
            ));
        };
        fields.push(index);
    }
    let count = raw.partitions.unwrap_or(DEFAULT_PARTITIONS);
    check_count(Some(Partitioning { fields, count }), origin)
}

fn check_count(
    partitioning: Option<Partitioning>,
    origin: &str,
) -> Result<Option<Partitioning>, DefinitionError> {
    match &partitioning {
        Some(p) if !(1..=MAX_PARTITIONS).contains(&p.count) => Err(invalid(
            origin,
            "partitions",
            format!("must be between 1 and {MAX_PARTITIONS}, got {}", p.count),
        )),
        _ => Ok(partitioning),
    }
}

fn parse_delimiter(d: &str) -> Result<u8, String> {
    let mut chars = d.chars();
    let (Some(c), None) = (chars.next(), chars.next()) else {
        return Err(format!("must be a single character, got {d:?}"));
    };
    match c {
        '"' | '\r' | '\n' => Err(format!(
            "{c:?} cannot be used: quote, CR and LF are reserved"
        )),
        c if c.is_ascii() => Ok(c as u8),
        c => Err(format!("{c:?} is not an ASCII character")),
    }
}

fn check_limits(limits: &Limits, field_count: usize, origin: &str) -> Result<(), DefinitionError> {
    if limits.max_row_bytes == 0 {
        return Err(invalid(origin, "limits.maxRowBytes", "must be at least 1"));
    }
    if limits.max_fields < field_count {
        return Err(invalid(
            origin,
            "limits.maxFields",
            format!(
                "{} is fewer than the {field_count} fields defined",
                limits.max_fields
            ),
        ));
    }
    if limits.max_records == 0 {
        return Err(invalid(origin, "limits.maxRecords", "must be at least 1"));
    }
    Ok(())
}
