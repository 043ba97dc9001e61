//! The email check: what `email_address` accepts with display text refused
//! and a top-level domain required, decided byte by byte for plain ASCII
//! addresses (nearly all input) and by the crate itself for the rest.

use email_address::{EmailAddress, Options};

const LOCAL_PART_MAX: usize = 64;
const DOMAIN_MAX: usize = 254;
const LABEL_MAX: usize = 63;

/// Whether `text` is a bare address with a top-level domain.
pub(super) fn is_valid(text: &str) -> bool {
    match is_valid_ascii(text.as_bytes()) {
        Some(valid) => valid,
        None => is_valid_by_crate(text),
    }
}

pub(super) fn is_valid_by_crate(text: &str) -> bool {
    let options = Options::default()
        .without_display_text()
        .with_required_tld();
    EmailAddress::parse_with_options(text, options).is_ok()
}

/// The crate's rules for input without non-ASCII bytes, quotes (quoted local
/// parts), `<` (display text) or `[` (domain literals): a dot-atom local
/// part, then at least two domain labels of atext that start and end with a
/// letter or digit. `None` for input outside that shape.
fn is_valid_ascii(b: &[u8]) -> Option<bool> {
    // The shape first: an address that has it is all atext, dots and one
    // `@`, so none of its bytes is outside, and the usual valid address
    // takes one pass.
    if has_shape(b) {
        return Some(true);
    }
    if b.iter().any(|&c| CLASS[usize::from(c)] == OUTSIDE) {
        return None;
    }
    Some(false)
}

/// A dot-atom local part of at most `LOCAL_PART_MAX` bytes, `@`, and a
/// domain of labels (`has_labels`) of at most `DOMAIN_MAX`.
fn has_shape(b: &[u8]) -> bool {
    let Some(at) = memchr::memrchr(b'@', b) else {
        return false;
    };
    let (local, domain) = (&b[..at], &b[at + 1..]);
    local.len() <= LOCAL_PART_MAX
        && is_dot_atom(local)
        && domain.len() <= DOMAIN_MAX
        && has_labels(domain)
}

/// Atoms of atext joined by single dots, in one pass: not empty, no dot at
/// either end, none doubled.
fn is_dot_atom(b: &[u8]) -> bool {
    let mut after_dot = true;
    for &c in b {
        if c == b'.' {
            if after_dot {
                return false;
            }
            after_dot = true;
        } else if is_atext(c) {
            after_dot = false;
        } else {
            return false;
        }
    }
    !after_dot
}

/// At least two dot-separated labels of atext, each starting and ending
/// with a letter or digit and at most `LABEL_MAX` long, in one pass.
fn has_labels(b: &[u8]) -> bool {
    let (mut labels, mut len, mut last) = (0, 0, b'.');
    for &c in b {
        if c == b'.' {
            if len == 0 || !last.is_ascii_alphanumeric() {
                return false;
            }
            labels += 1;
            len = 0;
        } else {
            if !is_atext(c) || (len == 0 && !c.is_ascii_alphanumeric()) || len == LABEL_MAX {
                return false;
            }
            len += 1;
        }
        last = c;
    }
    len > 0 && last.is_ascii_alphanumeric() && labels + 1 >= 2
}

/// RFC 5322 atext, ASCII part.
fn is_atext(c: u8) -> bool {
    CLASS[usize::from(c)] == ATEXT
}

const OTHER: u8 = 0;
const ATEXT: u8 = 1;
/// Bytes the ASCII check leaves to the crate.
const OUTSIDE: u8 = 2;

/// Each byte's class, looked up rather than matched: addresses are checked
/// once a record, and this is most of what a record's validation costs.
static CLASS: [u8; 256] = classes();

const fn classes() -> [u8; 256] {
    let mut class = [OTHER; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        class[c] = if !b.is_ascii() || b == b'"' || b == b'<' || b == b'[' {
            OUTSIDE
        } else if b.is_ascii_alphanumeric() {
            ATEXT
        } else {
            OTHER
        };
        c += 1;
    }
    let symbols = b"!#$%&'*+-/=?^_`{|}~";
    let mut i = 0;
    while i < symbols.len() {
        class[symbols[i] as usize] = ATEXT;
        i += 1;
    }
    class
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_addresses_are_decided_without_the_crate() {
        for (text, valid) in [
            ("a@example.com", true),
            ("first.last+tag@sub.example.co", true),
            ("a@localhost", false),
            ("a..b@example.com", false),
            (".a@example.com", false),
            ("a@-example.com", false),
            ("a@example-.com", false),
            ("a@ex_ample.com", true),
            ("a@example..com", false),
            ("a b@example.com", false),
            ("a@b@example.com", false),
            ("@example.com", false),
            ("a@", false),
        ] {
            assert_eq!(is_valid_ascii(text.as_bytes()), Some(valid), "{text}");
            assert_eq!(is_valid_by_crate(text), valid, "{text}");
        }
    }

    #[test]
    fn quotes_display_text_literals_and_unicode_go_to_the_crate() {
        for text in [
            "\"a b\"@example.com",
            "Ann <a@example.com>",
            "a@[127.0.0.1]",
            "é@example.com",
        ] {
            assert_eq!(is_valid_ascii(text.as_bytes()), None, "{text}");
        }
    }

    fn address() -> impl Strategy<Value = String> {
        // Heavy on the bytes the rules turn on, with lengths around the limits.
        let piece = prop::sample::select(vec![
            "a",
            "Z",
            "0",
            "9",
            ".",
            "@",
            "-",
            "_",
            "+",
            "!",
            "~",
            "(",
            ",",
            " ",
            "\t",
            "\"",
            "<",
            ">",
            "[",
            "]",
            "\\",
            "é",
            "example",
            "com",
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        ]);
        prop::collection::vec(piece, 0..24).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn the_byte_check_agrees_with_the_crate(text in address()) {
            prop_assert_eq!(is_valid(&text), is_valid_by_crate(&text), "{:?}", text);
        }

        #[test]
        fn the_byte_check_agrees_with_the_crate_on_shaped_addresses(
            local in "[a-z.+_-]{0,70}",
            domain in "[a-z0-9.-]{0,70}",
        ) {
            let text = format!("{local}@{domain}");
            prop_assert_eq!(is_valid(&text), is_valid_by_crate(&text), "{:?}", text);
        }
    }
}
