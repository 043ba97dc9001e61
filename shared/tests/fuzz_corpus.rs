//! Replays the fuzz corpus (seeds and every crash found so far) through the
//! fuzz harness, so that a fixed crash stays fixed without running a fuzzer.

use std::path::Path;

#[test]
fn every_fuzz_corpus_input_is_read_and_validated_without_panicking() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/parse_and_validate");
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    inputs.sort();
    assert!(
        inputs.len() >= 20,
        "the seed corpus is in {}",
        dir.display()
    );
    for path in inputs {
        let data = std::fs::read(&path).expect("a readable corpus file");
        let outcome = std::panic::catch_unwind(|| {
            bulk_import::source::fuzzing::parse_and_validate(&data);
        });
        assert!(outcome.is_ok(), "{} panicked", path.display());
    }
}
