//! Files with repeated keys, and the table a sequential import of one
//! gives under each `onDuplicateKey` policy: what keyed imports are
//! checked and measured against.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

/// A definition keyed by `email` under `policy`, 100 rows a batch.
pub fn definition(policy: &str) -> String {
    definition_with(policy, "")
}

/// `definition` with more options (JSON members, each followed by a comma).
pub fn definition_with(policy: &str, options: &str) -> String {
    format!(
        r#"{{
  "fields": [
    {{"name": "email", "type": "email", "required": true}},
    {{"name": "name", "type": "string", "required": true}},
    {{"name": "n", "type": "integer", "required": true}}
  ],
  "keyField": "email",
  "onDuplicateKey": "{policy}",{options}
  "batchSize": 100,
  "maxAttempts": 50
}}"#
    )
}

/// One row of the file.
#[derive(Debug, Clone)]
pub struct Row {
    pub email: String,
    pub name: String,
    /// The row's line, or text that is not an integer (an invalid row).
    pub n: String,
}

/// `rows` rows over keys of which a third occur 2-10 times, each at random
/// places in the file (so in different batches, taken by different
/// workers); one row in 40 is invalid, repeated keys included.
pub fn rows(rows: usize, seed: u64) -> Vec<Row> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut keys = Vec::with_capacity(rows);
    let mut key = 0;
    while keys.len() < rows {
        let times = if key % 3 == 0 {
            rng.random_range(2..=10)
        } else {
            1
        };
        keys.extend(std::iter::repeat_n(key, times));
        key += 1;
    }
    keys.truncate(rows);
    keys.shuffle(&mut rng);
    keys.into_iter()
        .enumerate()
        .map(|(i, key)| {
            let line = i + 2;
            Row {
                email: format!("user{key}@example.com"),
                name: format!("Name {key} at {line}"),
                n: if rng.random_ratio(1, 40) {
                    format!("bad{line}")
                } else {
                    line.to_string()
                },
            }
        })
        .collect()
}

pub fn csv(rows: &[Row]) -> String {
    let mut text = String::from("email,name,n\n");
    for r in rows {
        text.push_str(&format!("{},{},{}\n", r.email, r.name, r.n));
    }
    text
}

/// The table a sequential import of `rows` gives: key -> (name, n).
pub fn sequential(rows: &[Row], policy: &str) -> HashMap<String, (String, String)> {
    let mut table = HashMap::new();
    for r in rows.iter().filter(|r| is_valid(r)) {
        let value = (r.name.clone(), r.n.clone());
        match policy {
            "last" => {
                table.insert(r.email.clone(), value);
            }
            "first" | "reject" => {
                table.entry(r.email.clone()).or_insert(value);
            }
            other => panic!("no policy {other}"),
        }
    }
    table
}

/// Under `reject`: each valid row that repeats a key, by its line (the
/// line number in the file), with the line of the key's first valid row.
pub fn rejected(rows: &[Row]) -> HashMap<u64, u64> {
    let mut first: HashMap<&str, u64> = HashMap::new();
    let mut rejected = HashMap::new();
    for (i, r) in rows.iter().enumerate().filter(|(_, r)| is_valid(r)) {
        let line = i as u64 + 2;
        match first.get(r.email.as_str()) {
            Some(&at) => {
                rejected.insert(line, at);
            }
            None => {
                first.insert(&r.email, line);
            }
        }
    }
    rejected
}

/// Whether a row passes the definition (its `n` is an integer).
pub fn is_valid(row: &Row) -> bool {
    row.n.parse::<i64>().is_ok()
}
