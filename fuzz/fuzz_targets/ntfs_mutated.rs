//! cargo-fuzz target: see `harness::ntfs_mutated`.
#![no_main]

#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::ntfs_mutated(data));
