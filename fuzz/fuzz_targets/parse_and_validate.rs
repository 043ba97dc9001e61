//! Reads arbitrary bytes as an import file and validates every record; see
//! `bulk_import::source::fuzzing` for how the first byte picks the options.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bulk_import::source::fuzzing::parse_and_validate(data);
});
