//! A record that passed validation, in a compact typed form: the field names
//! are shared by every record of a definition, the string values lie back to
//! back in one buffer, and each field has a fixed-size slot. A valid record
//! costs two allocations however many fields it has.

use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};
use serde_json::{Map, Number, Value};
use std::fmt;
use std::sync::Arc;

/// The field names of a definition's records, built once when it loads.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct RecordShape {
    /// In the definition's order.
    names: Box<[String]>,
    /// Indices into `names`, sorted by name: the order values serialize in
    /// (a JSON object's, as serde_json's `Map` keeps its keys) and the order
    /// lookups search.
    sorted: Box<[usize]>,
}

impl RecordShape {
    /// `names` are distinct (loading checks it).
    pub(super) fn new(names: Vec<String>) -> RecordShape {
        let mut sorted: Vec<usize> = (0..names.len()).collect();
        sorted.sort_unstable_by(|&a, &b| names[a].cmp(&names[b]));
        RecordShape {
            names: names.into(),
            sorted: sorted.into(),
        }
    }

    fn len(&self) -> usize {
        self.names.len()
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.sorted
            .binary_search_by(|&i| self.names[i].as_str().cmp(name))
            .ok()
            .map(|k| self.sorted[k])
    }
}

/// One field's value in a record.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    Absent,
    /// `text[start..end]`.
    String {
        start: usize,
        end: usize,
    },
    Integer(i64),
    Number(f64),
    Boolean(bool),
}

/// A field's value, borrowed from its record.
///
/// Serializes as its JSON value; `Display` writes a string as it is and
/// anything else as its JSON text (`42`, `1.5`, `2.0`, `true`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue<'a> {
    /// `string`, `email`, `enum`, `date` and `datetime` fields (the last two
    /// in their canonical text: `2024-01-31`, `2024-01-31T10:00:00Z`).
    String(&'a str),
    /// `integer` fields.
    Integer(i64),
    /// `number` fields: always finite.
    Number(f64),
    /// `boolean` fields.
    Boolean(bool),
}

impl<'a> FieldValue<'a> {
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            FieldValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            FieldValue::Integer(n) => Some(n),
            _ => None,
        }
    }

    /// The value of a number or an integer field.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            FieldValue::Integer(n) => Some(n as f64),
            FieldValue::Number(x) => Some(x),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            FieldValue::Boolean(b) => Some(b),
            _ => None,
        }
    }

    /// The value as JSON.
    pub fn to_json(&self) -> Value {
        match *self {
            FieldValue::String(s) => Value::String(s.to_owned()),
            FieldValue::Integer(n) => Value::from(n),
            // Records only hold finite numbers, which JSON can hold.
            FieldValue::Number(x) => Number::from_f64(x).map_or(Value::Null, Value::Number),
            FieldValue::Boolean(b) => Value::Bool(b),
        }
    }
}

impl fmt::Display for FieldValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FieldValue::String(s) => f.write_str(s),
            FieldValue::Integer(n) => fmt::Display::fmt(&n, f),
            FieldValue::Number(x) => match Number::from_f64(x) {
                Some(n) => fmt::Display::fmt(&n, f),
                None => fmt::Display::fmt(&x, f),
            },
            FieldValue::Boolean(b) => fmt::Display::fmt(&b, f),
        }
    }
}

impl Serialize for FieldValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            FieldValue::String(s) => serializer.serialize_str(s),
            FieldValue::Integer(n) => serializer.serialize_i64(n),
            FieldValue::Number(x) => serializer.serialize_f64(x),
            FieldValue::Boolean(b) => serializer.serialize_bool(b),
        }
    }
}

/// A record that passed validation: a typed value for each field that has
/// one. Missing optional fields without a default are absent, not null.
///
/// Serializes as `{"line": 7, "values": {...}}`, the values an object keyed
/// by field name with the names in sorted order.
#[derive(Clone)]
pub struct ValidRecord {
    pub line: u64,
    shape: Arc<RecordShape>,
    /// The string values, back to back.
    text: String,
    /// One for each name of `shape`, in its order.
    slots: Vec<Slot>,
}

impl ValidRecord {
    /// A record of `shape` with every field absent and room for
    /// `text_bytes` of string values.
    pub(super) fn empty(line: u64, shape: &Arc<RecordShape>, text_bytes: usize) -> ValidRecord {
        ValidRecord {
            line,
            shape: Arc::clone(shape),
            text: String::with_capacity(text_bytes),
            slots: vec![Slot::Absent; shape.len()],
        }
    }

    /// Sets field `i` of the shape (the text of a replaced string stays,
    /// unused).
    ///
    /// # Panics
    /// If `i` is out of range.
    pub(super) fn set(&mut self, i: usize, value: FieldValue<'_>) {
        self.slots[i] = match value {
            FieldValue::String(s) => {
                let start = self.text.len();
                self.text.push_str(s);
                Slot::String {
                    start,
                    end: self.text.len(),
                }
            }
            FieldValue::Integer(n) => Slot::Integer(n),
            FieldValue::Number(x) => Slot::Number(x),
            FieldValue::Boolean(b) => Slot::Boolean(b),
        };
    }

    /// A record holding `values`, for tests and tools that make records
    /// without a definition: strings, booleans and numbers that fit an
    /// `i64` (integers) or are floats (numbers). Anything else, null
    /// included, is refused: a record leaves a field without a value out.
    pub fn from_json(line: u64, values: &Map<String, Value>) -> Result<ValidRecord, ValueError> {
        let shape = Arc::new(RecordShape::new(values.keys().cloned().collect()));
        let text_bytes = values
            .values()
            .filter_map(Value::as_str)
            .map(str::len)
            .sum();
        let mut record = ValidRecord::empty(line, &shape, text_bytes);
        for (i, (name, value)) in values.iter().enumerate() {
            let refused = |kind: &'static str| ValueError {
                field: name.clone(),
                kind,
            };
            let value = match value {
                Value::String(s) => FieldValue::String(s),
                Value::Bool(b) => FieldValue::Boolean(*b),
                Value::Number(n) => match n.as_i64() {
                    Some(n) => FieldValue::Integer(n),
                    None if n.is_u64() => return Err(refused("an integer beyond i64")),
                    None => FieldValue::Number(n.as_f64().ok_or_else(|| refused("a number"))?),
                },
                Value::Null => return Err(refused("null")),
                Value::Array(_) => return Err(refused("an array")),
                Value::Object(_) => return Err(refused("an object")),
            };
            record.set(i, value);
        }
        Ok(record)
    }

    /// The value of field `name`; `None` when the record has none (or the
    /// definition no such field).
    pub fn get(&self, name: &str) -> Option<FieldValue<'_>> {
        self.value(self.shape.index_of(name)?)
    }

    /// The fields that have a value, with it, in the definition's order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, FieldValue<'_>)> + '_ {
        (0..self.slots.len()).filter_map(|i| Some((self.shape.names[i].as_str(), self.value(i)?)))
    }

    /// How many fields have a value.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| **s != Slot::Absent).count()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(|s| *s == Slot::Absent)
    }

    /// The values, to serialize as a JSON object (see [`RecordValues`]).
    pub fn values(&self) -> RecordValues<'_> {
        RecordValues(self)
    }

    /// The values as a JSON object keyed by field name.
    pub fn to_json(&self) -> Map<String, Value> {
        self.iter()
            .map(|(name, value)| (name.to_owned(), value.to_json()))
            .collect()
    }

    fn value(&self, i: usize) -> Option<FieldValue<'_>> {
        Some(match *self.slots.get(i)? {
            Slot::Absent => return None,
            Slot::String { start, end } => FieldValue::String(&self.text[start..end]),
            Slot::Integer(n) => FieldValue::Integer(n),
            Slot::Number(x) => FieldValue::Number(x),
            Slot::Boolean(b) => FieldValue::Boolean(b),
        })
    }

    /// The fields that have a value, sorted by name.
    fn sorted(&self) -> impl Iterator<Item = (&str, FieldValue<'_>)> + '_ {
        self.shape
            .sorted
            .iter()
            .filter_map(|&i| Some((self.shape.names[i].as_str(), self.value(i)?)))
    }
}

/// Equal when they have the same line and the same values by name, however
/// they are laid out.
impl PartialEq for ValidRecord {
    fn eq(&self, other: &ValidRecord) -> bool {
        self.line == other.line && self.sorted().eq(other.sorted())
    }
}

impl fmt::Debug for ValidRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidRecord")
            .field("line", &self.line)
            .field("values", &self.values())
            .finish()
    }
}

impl Serialize for ValidRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut record = serializer.serialize_struct("ValidRecord", 2)?;
        record.serialize_field("line", &self.line)?;
        record.serialize_field("values", &self.values())?;
        record.end()
    }
}

/// A record's values, which serialize as a JSON object keyed by field name,
/// the names sorted (as serde_json's `Map` orders them) and fields without
/// a value left out; what [`ValidRecord::to_json`] returns, without building
/// it.
#[derive(Clone, Copy)]
pub struct RecordValues<'a>(&'a ValidRecord);

impl Serialize for RecordValues<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0.sorted() {
            map.serialize_entry(name, &value)?;
        }
        map.end()
    }
}

impl fmt::Debug for RecordValues<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.sorted()).finish()
    }
}

/// A JSON value a [`ValidRecord`] cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {field:?} holds {kind}: a record holds strings, integers within i64, numbers and booleans")]
pub struct ValueError {
    pub field: String,
    pub kind: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(values: Value) -> ValidRecord {
        ValidRecord::from_json(3, values.as_object().unwrap()).unwrap()
    }

    #[test]
    fn values_read_back_by_name_and_in_field_order() {
        let shape = Arc::new(RecordShape::new(vec!["z".into(), "a".into(), "m".into()]));
        let mut r = ValidRecord::empty(1, &shape, 0);
        r.set(2, FieldValue::Integer(-4));
        r.set(0, FieldValue::String("zed"));
        assert_eq!(r.get("z"), Some(FieldValue::String("zed")));
        assert_eq!(r.get("a"), None);
        assert_eq!(r.get("m"), Some(FieldValue::Integer(-4)));
        assert_eq!(r.get("nope"), None);
        assert_eq!(
            r.iter().collect::<Vec<_>>(),
            [
                ("z", FieldValue::String("zed")),
                ("m", FieldValue::Integer(-4))
            ]
        );
        assert_eq!((r.len(), r.is_empty()), (2, false));
        assert!(ValidRecord::empty(1, &shape, 0).is_empty());
    }

    #[test]
    fn serializes_as_the_json_map_did_names_sorted() {
        let shape = Arc::new(RecordShape::new(vec![
            "name".into(),
            "age".into(),
            "score".into(),
            "active".into(),
            "city".into(),
        ]));
        let mut r = ValidRecord::empty(9, &shape, 0);
        r.set(0, FieldValue::String("Ann \"A\" é"));
        r.set(1, FieldValue::Integer(42));
        r.set(2, FieldValue::Number(7.0));
        r.set(3, FieldValue::Boolean(true));
        let map = r.to_json();
        let before = json!({"line": 9, "values": map});
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            serde_json::to_string(&before).unwrap()
        );
        assert_eq!(
            serde_json::to_string(&r.values()).unwrap(),
            r#"{"active":true,"age":42,"name":"Ann \"A\" é","score":7.0}"#
        );
        assert_eq!(
            format!("{r:?}"),
            r#"ValidRecord { line: 9, values: {"active": Boolean(true), "age": Integer(42), "name": String("Ann \"A\" é"), "score": Number(7.0)} }"#
        );
    }

    #[test]
    fn from_json_keeps_every_value_with_its_json_type() {
        let values = json!({"s": "x", "i": -3, "u": 7, "f": 2.0, "big": 1e200, "b": false});
        let r = record(values.clone());
        assert_eq!(Value::Object(r.to_json()), values);
        assert_eq!(r.get("f"), Some(FieldValue::Number(2.0)));
        assert_eq!(r.get("u"), Some(FieldValue::Integer(7)));
        assert_eq!(r.line, 3);
    }

    #[test]
    fn from_json_refuses_what_a_record_cannot_hold() {
        for (value, kind) in [
            (json!(null), "null"),
            (json!([1]), "an array"),
            (json!({"a": 1}), "an object"),
            (json!(u64::MAX), "an integer beyond i64"),
        ] {
            let map = json!({"ok": 1, "v": value});
            let e = ValidRecord::from_json(1, map.as_object().unwrap()).unwrap_err();
            assert_eq!(
                e,
                ValueError {
                    field: "v".into(),
                    kind
                }
            );
        }
    }

    #[test]
    fn records_are_equal_when_their_values_are() {
        let shape = Arc::new(RecordShape::new(vec!["b".into(), "a".into()]));
        let mut laid_out = ValidRecord::empty(3, &shape, 0);
        laid_out.set(0, FieldValue::String("old"));
        laid_out.set(1, FieldValue::String("x"));
        laid_out.set(0, FieldValue::String("y"));
        assert_eq!(laid_out, record(json!({"a": "x", "b": "y"})));
        assert_ne!(laid_out, record(json!({"a": "x", "b": "z"})));
        assert_ne!(laid_out, record(json!({"a": "x"})));
        assert_ne!(record(json!({"n": 1})), record(json!({"n": 1.0})));
    }

    #[test]
    fn field_values_display_strings_as_they_are_and_the_rest_as_json() {
        let shown: Vec<String> = [
            FieldValue::String("a b"),
            FieldValue::Integer(-12),
            FieldValue::Number(2.0),
            FieldValue::Number(1e200),
            FieldValue::Number(0.1),
            FieldValue::Boolean(false),
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        let json: Vec<String> = [
            json!(-12),
            json!(2.0),
            json!(1e200),
            json!(0.1),
            json!(false),
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(shown[0], "a b");
        assert_eq!(shown[1..], json[..]);
    }
}
