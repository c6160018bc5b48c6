//! Fuzz target `pending_file`: see `tillsync_fuzz_harness::pending_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Err is a refusal, as the product answers hostile input; only a panic
    // (or a sanitizer report) is a finding.
    let _ = tillsync_fuzz_harness::pending_file(data);
});
