//! Replays every input the fuzzers found a crash with (fuzz/regressions/<target>/), each fixed
//! since, through the same harness the fuzz targets run; and a few deterministic inputs per
//! harness so the harnesses themselves stay working.

mod common;
#[path = "../fuzz/harness/mod.rs"]
mod harness;

use std::path::PathBuf;

/// The saved inputs of one target.
fn saved(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions").join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut out: Vec<(PathBuf, Vec<u8>)> =
        entries.map(|e| e.unwrap().path()).map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();
    out.sort();
    out
}

/// Deterministic pseudo-random inputs of growing length.
fn inputs(seed: u64, count: usize, len: usize) -> Vec<Vec<u8>> {
    (0..count).map(|i| common::noise(seed.wrapping_add(i as u64), len * (i + 1) / count)).collect()
}

fn replay(target: &str, harness: fn(&[u8]), seed: u64, len: usize) {
    for (path, data) in saved(target) {
        eprintln!("replaying {}", path.display());
        harness(&data);
    }
    for data in inputs(seed, 24, len) {
        harness(&data);
    }
}

#[test]
fn image_bytes() {
    replay("image_bytes", harness::image_bytes, 1, 4096);
}

#[test]
fn dynamic_mutated() {
    replay("dynamic_mutated", harness::dynamic_mutated, 2, 400);
}

#[test]
fn differencing_mutated() {
    replay("differencing_mutated", harness::differencing_mutated, 3, 400);
}

#[test]
fn ntfs_mutated() {
    replay("ntfs_mutated", harness::ntfs_mutated, 4, 400);
}

#[test]
fn hive_bytes() {
    replay("hive_bytes", harness::hive_bytes, 5, 8192);
}

#[test]
fn hive_edits() {
    replay("hive_edits", harness::hive_edits, 6, 600);
}

#[test]
fn vhdx_mutated() {
    replay("vhdx_mutated", harness::vhdx_mutated, 7, 400);
}
