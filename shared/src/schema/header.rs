//! Matching input column names (CSV header, `columns`, NDJSON keys) to
//! definition fields: by name or alias, case-insensitive, ignoring
//! surrounding whitespace; and what becomes of columns no field reads.

use super::{ColumnMap, Definition, ExtraColumns, FieldDef, HeaderError};
use std::collections::{HashMap, HashSet};

const BOM: char = '\u{feff}';

/// Name and alias lookup, built once at load time.
#[derive(Debug, Clone, Default)]
pub(super) struct Names {
    /// Names and aliases as written (trimmed): the common case needs no
    /// case folding, hence no allocation.
    exact: HashMap<String, usize>,
    folded: HashMap<String, usize>,
}

fn fold(name: &str) -> String {
    name.trim().to_lowercase()
}

impl Names {
    /// Fails with (path, message) when two fields claim the same name.
    pub(super) fn build(fields: &[FieldDef]) -> Result<Names, (String, String)> {
        let mut names = Names::default();
        // folded name -> (field index, path, name as written), to name both sides of a collision
        let mut claimed: HashMap<String, (usize, String, &str)> = HashMap::new();
        for (i, field) in fields.iter().enumerate() {
            let all = std::iter::once((format!("fields[{i}].name"), field.name.as_str())).chain(
                field
                    .aliases
                    .iter()
                    .enumerate()
                    .map(|(j, a)| (format!("fields[{i}].aliases[{j}]"), a.as_str())),
            );
            for (path, name) in all {
                let key = fold(name);
                match claimed.get(&key) {
                    // A field repeating its own name as an alias is harmless.
                    Some((owner, _, _)) if *owner == i => continue,
                    Some((_, other_path, other)) => {
                        return Err((
                            path,
                            format!("{name:?} collides with {other_path} {other:?} (names are case-insensitive)"),
                        ));
                    }
                    None => {}
                }
                names.exact.insert(name.trim().to_owned(), i);
                names.folded.insert(key.clone(), i);
                claimed.insert(key, (i, path, name));
            }
        }
        Ok(names)
    }

    /// The field a column named `name` feeds.
    pub(super) fn find(&self, name: &str) -> Option<usize> {
        let name = name.trim();
        self.exact
            .get(name)
            .or_else(|| self.folded.get(&fold(name)))
            .copied()
    }
}

/// The columns the error report adds after a row's own: `line`, `field`
/// and `reason`, each with an underscore in front for as long as a field
/// claims the name (as its name or an alias). So they never feed a field,
/// and a report re-imported with the same definition reads as the file did.
pub(super) fn report_columns(names: &Names) -> [String; 3] {
    ["line", "field", "reason"].map(|base| {
        let mut name = base.to_owned();
        while names.find(&name).is_some() {
            name.insert(0, '_');
        }
        name
    })
}

/// Shared by header resolution and the load-time check of `columns`.
pub(super) fn resolve<'a>(
    fields: &[FieldDef],
    names: &Names,
    header: impl IntoIterator<Item = &'a str>,
) -> Result<ColumnMap, HeaderError> {
    let mut columns = Vec::new();
    let mut fed = vec![false; fields.len()];
    let mut seen = HashSet::new();
    for (i, raw) in header.into_iter().enumerate() {
        let raw = if i == 0 {
            raw.strip_prefix(BOM).unwrap_or(raw)
        } else {
            raw
        };
        let name = raw.trim();
        // Blank names come from trailing delimiters; they feed nothing and
        // may repeat without harm.
        if name.is_empty() {
            columns.push(None);
            continue;
        }
        if !seen.insert(fold(name)) {
            return Err(HeaderError::DuplicateColumn(name.to_owned()));
        }
        let field = names.find(name);
        if let Some(f) = field {
            if std::mem::replace(&mut fed[f], true) {
                return Err(HeaderError::DuplicateColumn(name.to_owned()));
            }
        }
        columns.push(field);
    }
    let missing: Vec<String> = fields
        .iter()
        .zip(&fed)
        .filter(|(f, fed)| f.required && f.default.is_none() && !**fed)
        .map(|(f, _)| f.name.clone())
        .collect();
    if !missing.is_empty() {
        return Err(HeaderError::MissingColumns(missing));
    }
    Ok(ColumnMap {
        columns,
        field_count: fields.len(),
    })
}

impl Definition {
    /// Maps each header column to the field it feeds. Columns the definition
    /// does not know are ignored, or rejected with `extraColumns: "reject"`
    /// (except blank ones and the error report's own, `report_columns`); a
    /// required field without a default must have a column. A leading
    /// byte-order mark is ignored.
    pub fn resolve_header(&self, header: &[String]) -> Result<ColumnMap, HeaderError> {
        let map = resolve(
            &self.fields,
            &self.compiled.names,
            header.iter().map(String::as_str),
        )?;
        if self.extra_columns == ExtraColumns::Reject {
            let unexpected: Vec<String> = header
                .iter()
                .zip(&map.columns)
                .filter(|(_, field)| field.is_none())
                .map(|(name, _)| name.trim_start_matches(BOM).trim())
                .filter(|name| !name.is_empty() && !self.is_report_column(name))
                .map(str::to_owned)
                .collect();
            if !unexpected.is_empty() {
                return Err(HeaderError::UnexpectedColumns(unexpected));
            }
        }
        Ok(map)
    }

    /// The names of the columns the error report adds after each failed
    /// row: where it was (`line`), which fields are wrong (`field`) and why
    /// (`reason`). An underscore goes in front of a name a field claims.
    /// A header column of one of these names never feeds a field.
    pub fn report_columns(&self) -> &[String; 3] {
        &self.compiled.report_columns
    }

    fn is_report_column(&self, name: &str) -> bool {
        let name = fold(name);
        self.compiled.report_columns.iter().any(|c| fold(c) == name)
    }

    /// The column layout of headerless input: `columns` when given (checked
    /// at load time), else the fields in order.
    pub fn column_map_without_header(&self) -> ColumnMap {
        self.compiled.headerless.clone()
    }

    /// The field fed by a column or NDJSON key called `name`, with the same
    /// matching rules as a header.
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.compiled.names.find(name)
    }
}
