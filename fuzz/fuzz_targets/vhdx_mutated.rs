//! cargo-fuzz target: see `harness::vhdx_mutated`.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::vhdx_mutated(data));
