//! Sniffing of an object's first bytes: compression, and whether it is text
//! at all. Which format it is in is for the formats to say (`format`).

/// How much of the stream is buffered up front for sniffing.
pub(super) const SNIFF_BYTES: usize = 8 * 1024;

pub(super) const BOM: &[u8] = b"\xEF\xBB\xBF";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    None,
    Gzip,
    Unsupported(&'static str),
}

/// Content beats the name: a `.csv` that is really gzip is decoded, a `.gz`
/// that is really zstd is rejected as zstd.
pub(super) fn compression(name: &str, content_encoding: Option<&str>, head: &[u8]) -> Compression {
    const MAGIC: [(&[u8], &str); 4] = [
        (b"\x28\xb5\x2f\xfd", "zstd"),
        (b"BZh", "bzip2"),
        (b"\xfd\x37\x7a\x58\x5a\x00", "xz"),
        (b"PK\x03\x04", "zip"),
    ];
    const SUFFIXES: [(&str, &str); 5] = [
        (".zst", "zstd"),
        (".zstd", "zstd"),
        (".bz2", "bzip2"),
        (".xz", "xz"),
        (".zip", "zip"),
    ];

    if head.starts_with(b"\x1f\x8b") {
        return Compression::Gzip;
    }
    if let Some((_, kind)) = MAGIC.iter().find(|(magic, _)| head.starts_with(magic)) {
        return Compression::Unsupported(kind);
    }
    let name = name.to_ascii_lowercase();
    if name.ends_with(".gz") {
        return Compression::Gzip;
    }
    if let Some((_, kind)) = SUFFIXES.iter().find(|(suffix, _)| name.ends_with(suffix)) {
        return Compression::Unsupported(kind);
    }
    // A declared gzip encoding without the magic bytes means a transport
    // already decoded the body; anything else declared cannot be decoded here.
    match content_encoding
        .map(|e| e.trim().to_ascii_lowercase())
        .as_deref()
    {
        Some("br") => Compression::Unsupported("brotli"),
        Some("zstd") => Compression::Unsupported("zstd"),
        Some("deflate") => Compression::Unsupported("deflate"),
        Some("compress") => Compression::Unsupported("compress"),
        _ => Compression::None,
    }
}

/// Why the sample does not look like text, if it does not: a NUL byte (also
/// what UTF-16 looks like), or more than 10% control characters and invalid
/// UTF-8, which tolerates a legacy-encoded file with a few accented letters.
pub(super) fn not_text_reason(sample: &[u8]) -> Option<&'static str> {
    if sample.contains(&0) {
        return Some("it contains NUL bytes (binary data or UTF-16 text)");
    }
    let controls = sample
        .iter()
        .filter(|&&b| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0c)) || b == 0x7f)
        .count();
    if (controls + invalid_utf8_bytes(sample)) * 10 > sample.len() {
        return Some("more than 10% of its first bytes are control characters or invalid UTF-8");
    }
    None
}

fn invalid_utf8_bytes(mut bytes: &[u8]) -> usize {
    let mut invalid = 0;
    while let Err(e) = std::str::from_utf8(bytes) {
        match e.error_len() {
            Some(len) => {
                invalid += len;
                bytes = &bytes[e.valid_up_to() + len..];
            }
            // A character cut by the end of the sample.
            None => break,
        }
    }
    invalid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_by_magic_beats_name() {
        assert_eq!(
            compression("a.csv", None, b"\x1f\x8b\x08"),
            Compression::Gzip
        );
        assert_eq!(
            compression("a.gz", None, b"\x28\xb5\x2f\xfd"),
            Compression::Unsupported("zstd")
        );
        assert_eq!(compression("a.csv.gz", None, b"a,b"), Compression::Gzip);
        assert_eq!(
            compression("a.csv.BZ2", None, b"a,b"),
            Compression::Unsupported("bzip2")
        );
        assert_eq!(
            compression("a.csv", Some("gzip"), b"a,b"),
            Compression::None
        );
        assert_eq!(
            compression("a.csv", Some("br"), b"a,b"),
            Compression::Unsupported("brotli")
        );
        assert_eq!(compression("a.csv", None, b"a,b"), Compression::None);
    }

    #[test]
    fn text_tolerates_a_few_legacy_bytes_but_not_binary() {
        assert_eq!(not_text_reason("naïve,café\n".as_bytes()), None);
        assert_eq!(
            not_text_reason(b"na\xefve,caf\xe9 and a longer line of text\n"),
            None
        );
        assert!(not_text_reason(b"a,b\x00").is_some());
        assert!(not_text_reason(b"\x01\x02\x03\x04abc").is_some());
        assert!(not_text_reason(b"\xff\xfe\xfd\xfcabcdef").is_some());
        // A multi-byte character cut by the end of the sample is fine.
        assert_eq!(not_text_reason(&"ab日".as_bytes()[..3]), None);
    }
}
