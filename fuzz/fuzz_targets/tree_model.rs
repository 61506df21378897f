//! Fuzz target: decodes the input into operations on a context tree (see
//! `tests/model/harness.rs` for the byte format) and checks every observation against the
//! reference model. Any divergence panics with the op trace.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/model/harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    let ops = harness::decode(data);
    harness::run_with(&ops, harness::Config { leak_free: true, ..harness::Config::default() });
});
