//! `Envelope::parse` (the schema-specific verifier) against
//! `Envelope::parse_generic` (the `flatbuffers` crate's verifier) on the same
//! bytes: the same verdict, the same error code (the same error for semantic
//! failures), and on acceptance the same value from every accessor. Each
//! input runs under the default limits and under limits tight enough for the
//! apparent-size and table counts to decide.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::{Envelope, Limits};

fuzz_target!(|data: &[u8]| {
    let tight = |slack: usize, max_metadata_entries: usize| Limits {
        max_envelope_len: data.len() + slack,
        max_metadata_entries,
    };
    for limits in [Limits::default(), tight(0, 1), tight(64, 3)] {
        if let Err(difference) = Envelope::compare_verifiers(data, &limits) {
            panic!("verifiers disagree under {limits:?}: {difference}");
        }
    }
});
