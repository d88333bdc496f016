//! `cargo +nightly fuzz run hostile_shapes` (from `frontend/`): bytes turned into the Dockerfile
//! shapes that used to crash kiln or cost it quadratic time (deep `${...}` nesting, long stage
//! chains, many or huge lines, long patterns), up to 100,000 levels, stages or lines; the normal
//! suite runs smaller ones (`frontend/tests/fuzz.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kiln_frontend::fuzz_shape(data, 100_000);
});
