//! cargo-fuzz target: see `harness::hive_bytes`.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::hive_bytes(data));
