//! `cargo +nightly fuzz run parse_compile` (from `frontend/`): any bytes, parsed and compiled;
//! the normal suite runs the same body on random inputs for a bounded time
//! (`frontend/tests/fuzz.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kiln_frontend::fuzz_one(data);
});
