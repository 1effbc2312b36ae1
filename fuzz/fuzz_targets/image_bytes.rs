//! cargo-fuzz target: see `harness::image_bytes`.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::image_bytes(data));
