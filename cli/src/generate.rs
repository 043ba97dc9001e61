//! Sample input for demos and benchmarks: a users CSV of about 100 bytes a
//! row matching `examples/users.json`, with a few deliberately invalid rows.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::Write;

const FIRST: &[&str] = &[
    "Ada",
    "Grace",
    "Alan",
    "Katherine",
    "Linus",
    "Margaret",
    "Dennis",
    "Barbara",
    "Ken",
    "Frances",
];
const LAST: &[&str] = &[
    "Lovelace", "Hopper", "Turing", "Johnson", "Torvalds", "Hamilton", "Ritchie", "Liskov",
    "Thompson", "Allen",
];
const CITIES: &[(&str, &str)] = &[
    ("GB", "London"),
    ("US", "San Francisco"),
    ("DE", "Berlin"),
    ("FR", "Paris"),
    ("JP", "Tokyo"),
    ("BR", "São Paulo"),
    ("IN", "Bengaluru"),
    ("CA", "Toronto"),
];
const PLANS: &[&str] = &["free", "pro", "team"];

/// Writes `rows` data rows (plus a header); every `invalid_every`-th row is
/// invalid in one of several ways. Returns the number of invalid rows.
pub fn users_csv(
    out: &mut impl Write,
    rows: u64,
    invalid_every: u64,
    seed: u64,
) -> std::io::Result<u64> {
    let mut rng = StdRng::seed_from_u64(seed);
    writeln!(
        out,
        "email,full name,age,plan,country,city,signup_date,score,active"
    )?;
    let mut invalid = 0;
    for i in 0..rows {
        let first = FIRST[rng.random_range(0..FIRST.len())];
        let last = LAST[rng.random_range(0..LAST.len())];
        let (country, city) = CITIES[rng.random_range(0..CITIES.len())];
        let mut email = format!(
            "{}.{}{i}@example.com",
            first.to_lowercase(),
            last.to_lowercase()
        );
        let mut age = rng.random_range(18..90).to_string();
        let mut plan = PLANS[rng.random_range(0..PLANS.len())].to_string();
        let mut date = format!(
            "20{:02}-{:02}-{:02}",
            rng.random_range(15..26),
            rng.random_range(1..13),
            rng.random_range(1..29)
        );
        let score = format!("{:.1}", rng.random_range(0.0..1000.0));
        let active = if rng.random_bool(0.8) {
            "true"
        } else {
            "false"
        };
        if invalid_every > 0 && i % invalid_every == invalid_every - 1 {
            invalid += 1;
            match (i / invalid_every) % 4 {
                0 => email = format!("{}-at-example.com", first.to_lowercase()),
                1 => age = "forty".into(),
                2 => plan = "gold".into(),
                _ => date = "2024-13-45".into(),
            }
        }
        writeln!(
            out,
            "{email},{first} {last},{age},{plan},{country},{city},{date},{score},{active}"
        )?;
    }
    Ok(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_about_a_hundred_bytes_and_invalid_rows_are_counted() {
        let mut buf = Vec::new();
        let invalid = users_csv(&mut buf, 1000, 100, 7).unwrap();
        assert_eq!(invalid, 10);
        let lines = buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
        assert_eq!(lines, 1001);
        let avg = buf.len() / 1001;
        assert!((70..=110).contains(&avg), "average row {avg} bytes");
    }
}
