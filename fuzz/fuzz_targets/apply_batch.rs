//! Fuzz target `apply_batch`: see `tillsync_fuzz_harness::apply_batch`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Err is a refusal, as the product answers hostile input; only a panic
    // (or a sanitizer report) is a finding.
    let _ = tillsync_fuzz_harness::apply_batch(data);
});
