//! Specifications of the schema module, one file per concern.

mod definition;
mod header;
mod validate;

use super::Definition;

/// The definition from the documentation.
const EXAMPLE: &str = r#"{
  "fields": [
    {"name": "email", "type": "email", "required": true},
    {"name": "name", "type": "string", "required": true, "trim": true, "aliases": ["full name"]},
    {"name": "age", "type": "integer"},
    {"name": "plan", "type": "enum", "values": ["free", "pro"], "default": "free"}
  ],
  "keyField": "email",
  "batchSize": 500,
  "delimiter": ",",
  "hasHeader": true,
  "continueOnError": true,
  "maxRetries": 3
}"#;

fn load(json: &str) -> Definition {
    Definition::from_json(json, "test.json").unwrap_or_else(|e| panic!("{e}"))
}

/// A definition with the given fields (JSON objects) and default options.
fn with_fields(fields: &str) -> Definition {
    load(&format!(r#"{{"fields": [{fields}]}}"#))
}
