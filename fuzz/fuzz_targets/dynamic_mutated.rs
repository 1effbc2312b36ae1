//! cargo-fuzz target: see `harness::dynamic_mutated`.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::dynamic_mutated(data));
