//! A staged record's raw values in two allocations (their text back to back,
//! and where each value lies in it) rather than one string per value: prepare
//! stages every row of a file, and per-value allocations were most of what a
//! row cost it. Stored the same as `Vec<Option<String>>`: a JSON array of
//! strings and nulls.

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::ops::Range;

/// `span.start` of a value that is absent.
const ABSENT: usize = usize::MAX;

/// Values by field index; each present (possibly empty) or absent. Equal
/// when they read the same, however the text is laid out.
#[derive(Clone, Default)]
pub struct Values {
    text: String,
    spans: Vec<Range<usize>>,
}

impl Values {
    /// `n` absent values.
    pub fn absent(n: usize) -> Values {
        Values {
            text: String::new(),
            spans: vec![ABSENT..ABSENT; n],
        }
    }

    /// `n` absent values, with room for `text_bytes` of text.
    pub fn with_capacity(n: usize, text_bytes: usize) -> Values {
        Values {
            text: String::with_capacity(text_bytes),
            spans: vec![ABSENT..ABSENT; n],
        }
    }

    /// `n` absent values over `text`, which `point` then picks them from.
    pub fn over(text: String, n: usize) -> Values {
        Values {
            text,
            spans: vec![ABSENT..ABSENT; n],
        }
    }

    /// Makes value `i` the part `span` of the text given to `over`; false
    /// (and nothing changed) unless `span` lies on its character boundaries.
    ///
    /// # Panics
    /// If `i` is out of range.
    pub fn point(&mut self, i: usize, span: Range<usize>) -> bool {
        if span.start > span.end
            || !self.text.is_char_boundary(span.start)
            || !self.text.is_char_boundary(span.end)
        {
            return false;
        }
        self.spans[i] = span;
        true
    }

    /// Sets value `i` (the text of a replaced value stays, unused).
    ///
    /// # Panics
    /// If `i` is out of range.
    pub fn set(&mut self, i: usize, value: &str) {
        let start = self.text.len();
        self.text.push_str(value);
        self.spans[i] = start..self.text.len();
    }

    /// Value `i`; `None` when it is absent or out of range.
    pub fn get(&self, i: usize) -> Option<&str> {
        let span = self.spans.get(i)?;
        (span.start != ABSENT).then(|| &self.text[span.clone()])
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Option<&str>> + '_ {
        self.spans
            .iter()
            .map(|span| (span.start != ABSENT).then(|| &self.text[span.clone()]))
    }

    /// The values' bytes, without the checks that slicing the text as a
    /// `str` makes: for writing them out.
    pub(crate) fn iter_bytes(&self) -> impl ExactSizeIterator<Item = Option<&[u8]>> + '_ {
        let text = self.text.as_bytes();
        self.spans
            .iter()
            .map(move |span| (span.start != ABSENT).then(|| &text[span.clone()]))
    }

    /// The values as owned strings.
    pub fn to_vec(&self) -> Vec<Option<String>> {
        self.iter().map(|v| v.map(str::to_owned)).collect()
    }

    /// Bytes of text held, absent values counting none.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    fn push(&mut self, value: Option<&str>) {
        self.spans.push(ABSENT..ABSENT);
        if let Some(value) = value {
            self.set(self.spans.len() - 1, value);
        }
    }
}

impl<S: AsRef<str>> FromIterator<Option<S>> for Values {
    fn from_iter<I: IntoIterator<Item = Option<S>>>(iter: I) -> Values {
        let mut values = Values::default();
        for value in iter {
            values.push(value.as_ref().map(AsRef::as_ref));
        }
        values
    }
}

impl From<Vec<Option<String>>> for Values {
    fn from(values: Vec<Option<String>>) -> Values {
        values.into_iter().collect()
    }
}

impl PartialEq for Values {
    fn eq(&self, other: &Values) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Values {}

impl fmt::Debug for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Values {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for span in &self.spans {
            match self.text.get(span.clone()) {
                Some(text) => seq.serialize_element(text)?,
                None => seq.serialize_element(&())?,
            }
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Values, D::Error> {
        deserializer.deserialize_seq(ValuesVisitor)
    }
}

struct ValuesVisitor;

impl<'de> Visitor<'de> for ValuesVisitor {
    type Value = Values;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of strings and nulls")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Values, A::Error> {
        let mut values = Values::default();
        values.spans.reserve(seq.size_hint().unwrap_or(0));
        while seq.next_element_seed(Element(&mut values))?.is_some() {}
        Ok(values)
    }
}

/// One element, appended straight into the text (no string of its own).
struct Element<'a>(&'a mut Values);

impl<'de> DeserializeSeed<'de> for Element<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for Element<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.0.push(None);
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.visit_none()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        self.0.push(Some(value));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn values_are_stored_as_an_array_of_strings_and_nulls() {
        let values = Values::from(vec![Some("a\"é".to_owned()), None, Some(String::new())]);
        let json = serde_json::to_string(&values).unwrap();
        assert_eq!(json, r#"["a\"é",null,""]"#);
        assert_eq!(serde_json::from_str::<Values>(&json).unwrap(), values);
        assert_eq!(values.get(0), Some("a\"é"));
        assert_eq!(values.get(1), None);
        assert_eq!(values.get(2), Some(""));
        assert_eq!(values.get(3), None);
    }

    #[test]
    fn values_set_out_of_order_read_back_by_index() {
        let mut values = Values::with_capacity(3, 8);
        values.set(2, "c");
        values.set(0, "a");
        assert_eq!(
            values.iter().collect::<Vec<_>>(),
            [Some("a"), None, Some("c")]
        );
        assert_eq!(format!("{values:?}"), r#"[Some("a"), None, Some("c")]"#);
    }

    #[test]
    fn values_point_into_a_text_only_on_character_boundaries() {
        let mut values = Values::over("aé,b".to_owned(), 3);
        assert!(values.point(2, 0..3));
        assert!(!values.point(0, 0..2), "inside é");
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = 4..3;
        assert!(!values.point(0, backwards));
        assert!(values.point(0, 4..5));
        assert_eq!(
            values.iter().collect::<Vec<_>>(),
            [Some("b"), None, Some("aé")]
        );
    }

    #[test]
    fn other_json_is_an_error() {
        assert!(serde_json::from_str::<Values>(r#"["a", 1]"#).is_err());
        assert!(serde_json::from_str::<Values>(r#"{"a": "b"}"#).is_err());
    }

    proptest! {
        #[test]
        fn values_read_and_store_as_the_vector_they_were_built_from(
            v in prop::collection::vec(prop::option::of(".{0,8}"), 0..12)
        ) {
            let values = Values::from(v.clone());
            prop_assert_eq!(values.iter().map(|x| x.map(str::to_owned)).collect::<Vec<_>>(), v.clone());
            let json = serde_json::to_string(&values).unwrap();
            prop_assert_eq!(&json, &serde_json::to_string(&v).unwrap());
            prop_assert_eq!(serde_json::from_str::<Values>(&json).unwrap(), values);
        }
    }
}
