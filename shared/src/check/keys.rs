//! Repeated keys, found on one machine: rows whose `keyField` value an
//! earlier valid row had. The target table keeps one item per key, so a
//! file that repeats keys imports fewer items than it has valid rows.
//!
//! Each valid row's key is kept as a 64-bit hash (xxh3) of its text, the
//! text the DynamoDB processor stores, beside the row's line: 16 bytes a
//! row, appended to one of 256 lists by the hash's first byte (writes in
//! order, no table to probe), and sorted list by list at the end, where
//! rows with equal hashes are the repeats. The lists' spare capacity makes
//! it 16 to 32 bytes a row. Two distinct keys share a hash with odds of
//! about n² / 2⁶⁵ for n keys (3 in a million at 10 million keys), and would
//! then be counted as one repeated key. Past `max_keys` rows no key is kept
//! (memory stops growing), and the report says from which line on.

use crate::schema::FieldValue;
use std::fmt::{self, Write as _};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// How many rows' keys a check keeps by default: 0.8 to 1.6 GB.
pub const MAX_KEYS: usize = 50_000_000;

/// Lists the keys are spread over, by their hash's first byte.
const LISTS: usize = 256;

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
    /// The line of the first valid row whose key could not be kept
    /// (`max_keys` reached): rows from there on are not checked.
    pub untracked_from: Option<u64>,
}

/// One row repeating an earlier row's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Repeat {
    pub line: u64,
    /// The line the key was first seen on.
    pub first_line: u64,
}

/// Keeps the keys seen so far.
pub(super) struct KeyTracker {
    /// `(hash, line)` of every row kept, by the hash's first byte.
    lists: Vec<Vec<(u64, u64)>>,
    kept: usize,
    max_keys: usize,
    keep: usize,
    field: String,
    untracked_from: Option<u64>,
}

impl KeyTracker {
    /// Keeps the keys of up to `max_keys` rows, and reports the first
    /// `keep` repeats.
    pub fn new(field: &str, max_keys: usize, keep: usize) -> KeyTracker {
        KeyTracker {
            lists: vec![Vec::new(); LISTS],
            kept: 0,
            max_keys,
            keep,
            field: field.to_owned(),
            untracked_from: None,
        }
    }

    /// Notes the key of the valid row on `line` (lines come in order).
    pub fn note(&mut self, key: FieldValue<'_>, line: u64) {
        if self.kept >= self.max_keys {
            self.untracked_from.get_or_insert(line);
            return;
        }
        let hash = match key {
            FieldValue::String(text) => xxh3_64(text.as_bytes()),
            other => {
                let mut hasher = HashWriter(Xxh3::new());
                write!(hasher, "{other}").expect("hashing does not fail");
                hasher.0.digest()
            }
        };
        self.lists[(hash >> 56) as usize].push((hash, line));
        self.kept += 1;
    }

    /// Sorts each list and counts the runs of equal hashes.
    pub fn finish(self) -> RepeatedKeys {
        let mut found = RepeatedKeys {
            field: self.field,
            untracked_from: self.untracked_from,
            ..RepeatedKeys::default()
        };
        // The `keep` repeats with the smallest lines, largest on top.
        let mut first = std::collections::BinaryHeap::with_capacity(self.keep + 1);
        for mut list in self.lists {
            // Lines are unique, so equal hashes sort by line: a run's first
            // entry is the key's first row.
            list.sort_unstable();
            for run in list.chunk_by(|a, b| a.0 == b.0) {
                let Some(((_, first_line), later)) = run.split_first() else {
                    continue;
                };
                if later.is_empty() {
                    continue;
                }
                found.keys += 1;
                found.rows += later.len() as u64;
                for &(_, line) in later {
                    first.push(Repeat {
                        line,
                        first_line: *first_line,
                    });
                    if first.len() > self.keep {
                        first.pop();
                    }
                }
            }
        }
        found.first = first.into_sorted_vec();
        found
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
                    first_line: 2
                },
                Repeat {
                    line: 6,
                    first_line: 2
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
    fn past_the_limit_no_key_is_kept_and_the_report_says_where() {
        let found = track(&["a", "b", "a", "c", "a", "b"], 3, 10);
        assert_eq!((found.keys, found.rows), (1, 1), "only rows 2 to 4 kept");
        assert_eq!(found.untracked_from, Some(5));
    }

    #[test]
    fn the_first_repeats_are_the_earliest_lines_whatever_their_hash() {
        let keys: Vec<String> = (0..500).map(|i| format!("k{}", i % 100)).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let found = track(&keys, 1_000, 3);
        assert_eq!((found.keys, found.rows), (100, 400));
        let lines: Vec<(u64, u64)> = found.first.iter().map(|r| (r.line, r.first_line)).collect();
        assert_eq!(lines, vec![(102, 2), (103, 3), (104, 4)]);
    }
}
