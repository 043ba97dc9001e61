//! Repeated keys, found on one machine: rows whose `keyField` value an
//! earlier valid row had. The target table keeps one item per key, so a
//! file that repeats keys imports fewer items than it has valid rows.
//!
//! Each key is kept as a 64-bit hash (xxh3) of its text, the text the
//! DynamoDB processor stores, with the line it was first seen on: 16 bytes a
//! distinct key in a hash table at most 7/8 full, so 18 to 36 MB a million
//! distinct keys whatever their length. Two distinct keys share a hash with
//! odds of about n² / 2⁶⁵ for n keys (3 in a million at 10 million keys), and
//! would then be counted as one repeated key. Past `max_keys` distinct keys
//! no new key is kept (memory stops growing); rows keep being checked
//! against the keys kept, and the report says from which line on new keys
//! went unchecked.

use crate::schema::FieldValue;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::hash::{BuildHasherDefault, Hasher};
use xxhash_rust::xxh3::Xxh3;

/// How many distinct keys a check keeps by default: about 0.9 to 1.8 GB.
pub const MAX_KEYS: usize = 50_000_000;

/// Set on a kept key's first line once the key has been seen again.
const REPEATED: u64 = 1 << 63;

/// What a check found about repeated keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepeatedKeys {
    /// The key field.
    pub field: String,
    /// Distinct keys seen on more than one valid row.
    pub keys: u64,
    /// Valid rows whose key an earlier valid row had.
    pub rows: u64,
    /// The first repeats, in input order.
    pub first: Vec<Repeat>,
    /// The line of the first row whose key was new but could not be kept
    /// (`max_keys` reached): repeats of keys first seen from there on are
    /// not counted.
    pub untracked_from: Option<u64>,
}

/// One row repeating an earlier row's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repeat {
    pub line: u64,
    /// The line the key was first seen on.
    pub first_line: u64,
    pub key: String,
}

/// Keeps the keys seen so far.
pub(super) struct KeyTracker {
    seen: HashMap<u64, u64, BuildHasherDefault<Prehashed>>,
    max_keys: usize,
    keep: usize,
    found: RepeatedKeys,
}

impl KeyTracker {
    /// Keeps up to `max_keys` distinct keys and the first `keep` repeats.
    pub fn new(field: &str, max_keys: usize, keep: usize) -> KeyTracker {
        KeyTracker {
            seen: HashMap::default(),
            max_keys,
            keep,
            found: RepeatedKeys {
                field: field.to_owned(),
                ..RepeatedKeys::default()
            },
        }
    }

    /// Notes the key of the valid row on `line`.
    pub fn note(&mut self, key: FieldValue<'_>, line: u64) {
        let mut hasher = HashWriter(Xxh3::new());
        write!(hasher, "{key}").expect("hashing does not fail");
        let hash = hasher.0.digest();
        if let Some(first) = self.seen.get_mut(&hash) {
            if *first & REPEATED == 0 {
                self.found.keys += 1;
                *first |= REPEATED;
            }
            self.found.rows += 1;
            if self.found.first.len() < self.keep {
                self.found.first.push(Repeat {
                    line,
                    first_line: *first & !REPEATED,
                    key: key.to_string(),
                });
            }
        } else if self.seen.len() < self.max_keys {
            self.seen.insert(hash, line);
        } else if self.found.untracked_from.is_none() {
            self.found.untracked_from = Some(line);
        }
    }

    pub fn finish(self) -> RepeatedKeys {
        self.found
    }
}

/// Feeds formatted text to the hash without building a string.
struct HashWriter(Xxh3);

impl fmt::Write for HashWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

/// The table's own hasher over keys that are hashes already.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; anything else is folded in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(keys: &[&str], max_keys: usize, keep: usize) -> RepeatedKeys {
        let mut tracker = KeyTracker::new("id", max_keys, keep);
        for (i, key) in keys.iter().enumerate() {
            tracker.note(FieldValue::String(key), i as u64 + 2);
        }
        tracker.finish()
    }

    #[test]
    fn counts_keys_seen_again_and_the_rows_that_repeat_them() {
        let found = track(&["a", "b", "a", "c", "a", "b", "d"], 100, 2);
        assert_eq!((found.keys, found.rows), (2, 3));
        assert_eq!(
            found.first,
            vec![
                Repeat {
                    line: 4,
                    first_line: 2,
                    key: "a".into()
                },
                Repeat {
                    line: 6,
                    first_line: 2,
                    key: "a".into()
                },
            ]
        );
        assert_eq!(found.untracked_from, None);
    }

    #[test]
    fn values_compare_as_the_text_the_target_table_stores() {
        let mut tracker = KeyTracker::new("id", 100, 10);
        tracker.note(FieldValue::Integer(7), 2);
        tracker.note(FieldValue::String("7"), 3);
        tracker.note(FieldValue::Integer(8), 4);
        let found = tracker.finish();
        assert_eq!((found.keys, found.rows), (1, 1));
        assert_eq!(found.first[0].first_line, 2);
    }

    #[test]
    fn past_the_limit_new_keys_are_not_kept_and_the_report_says_where() {
        let found = track(&["a", "b", "c", "a", "c", "d", "c"], 2, 10);
        assert_eq!((found.keys, found.rows), (1, 1), "c was never kept");
        assert_eq!(found.untracked_from, Some(4));
    }
}
