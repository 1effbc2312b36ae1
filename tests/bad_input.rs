//! Broken images: every one ends with a one-line error naming the file, the structure and the
//! offset (exit 1), or with findings; never a panic, a hang or a huge allocation.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use vhdkit::ParentLink;
use vhdkit::vhd::footer::Footer;
use vhdkit::{SparseVhd, WritableDevice};

/// A small dynamic image with two allocated blocks; returns its path.
fn small_dynamic(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let mut d = SparseVhd::create(&p, 8 << 20, 2 << 20, None).unwrap();
    d.write_at(0, &[0x11; 4096]).unwrap();
    d.write_at(5 << 20, &[0x22; 4096]).unwrap();
    p
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let mut data = std::fs::read(path).unwrap();
    data[at as usize..][..bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, data).unwrap();
}

/// Rewrites a field of the dynamic header at 0x200 and fixes its checksum, so the bad value
/// itself (not the checksum) is what must be caught.
fn patch_header(path: &Path, field: usize, bytes: &[u8]) {
    let mut data = std::fs::read(path).unwrap();
    let h = &mut data[512..1536];
    h[field..field + bytes.len()].copy_from_slice(bytes);
    vhd_checksum(h, 36);
    std::fs::write(path, data).unwrap();
}

fn dump(path: &Path, extra: &[&str]) -> std::process::Output {
    run(bin("vhdinspect").arg("dump").args(extra).arg(path))
}

#[test]
fn missing_file_is_a_clean_error() {
    let out = dump(Path::new("/nonexistent/disk.vhd"), &[]);
    assert_one_line_error(&out, "/nonexistent/disk.vhd", &["cannot open"]);
}

#[test]
fn truncated_dynamic_image() {
    let dir = tempdir();
    let p = small_dynamic(dir.path(), "t.vhd");
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len - 3 * 1024 * 1024).unwrap();
    let out = dump(&p, &[]);
    assert_one_line_error(&out, "t.vhd", &["VHD footer", "file offset", "truncated"]);
}

#[test]
fn bad_header_cookie() {
    let dir = tempdir();
    let p = small_dynamic(dir.path(), "c.vhd");
    patch(&p, 512, b"xxsparse");
    assert_one_line_error(&dump(&p, &[]), "c.vhd", &["dynamic disk header", "file offset 0x200", "cookie"]);
}

#[test]
fn absurd_block_sizes_and_table_sizes() {
    let dir = tempdir();
    for (field, value, needle) in [
        (32usize, 0u32, "block size"),
        (32, 3, "block size"),
        (32, 0x8000_0000, "block size"),
        (28, 0xFFFF_FFFF, "max table entries"),
        (28, 1, "max table entries"),
        (28, 1 << 23, "table offset"),
    ] {
        let p = small_dynamic(dir.path(), &format!("a{field}-{value}.vhd"));
        patch_header(&p, field, &value.to_be_bytes());
        let out = dump(&p, &[]);
        assert_one_line_error(
            &out,
            &p.file_name().unwrap().to_string_lossy(),
            &["dynamic disk header", needle, "file offset 0x2"],
        );
    }
}

#[test]
fn a_bat_entry_past_the_end_is_a_finding_then_a_read_error() {
    let dir = tempdir();
    let p = small_dynamic(dir.path(), "b.vhd");
    patch(&p, 1536, &0x00FF_0000u32.to_be_bytes());
    // check lists it with the entry's offset and exits 1.
    let out = run(bin("vhdinspect").args(["check", "--json"]).arg(&p));
    assert_eq!(out.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = j["findings"].as_array().unwrap();
    assert!(problems.iter().any(|f| f["structure"] == "BAT entry 0" && f["offset"] == 1536), "{problems:?}");
    // dump is lenient: it shows the finding and says the disk cannot be read.
    let out = dump(&p, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("BAT entry 0 at file offset 0x600"));
    // --strict refuses at open.
    assert_one_line_error(
        &dump(&p, &["--strict"]),
        "b.vhd",
        &["BAT entry 0", "file offset 0x600", "past the data end"],
    );
}

#[test]
fn overlapping_blocks_are_reported_by_check() {
    let dir = tempdir();
    let p = small_dynamic(dir.path(), "o.vhd");
    let data = std::fs::read(&p).unwrap();
    let first = data[1536..1540].to_vec();
    patch(&p, 1540, &first);
    let out = run(bin("vhdinspect").args(["check"]).arg(&p));
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("overlaps block 0"), "{text}");
}

#[test]
fn footer_copy_disagreement_is_a_finding() {
    let dir = tempdir();
    let p = small_dynamic(dir.path(), "f.vhd");
    patch(&p, 100, &[0x42]);
    let out = run(bin("vhdinspect").args(["check"]).arg(&p));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("footer copy"));
    assert_one_line_error(&dump(&p, &["--strict"]), "f.vhd", &["VHD footer copy", "file offset 0x0"]);
}

#[test]
fn a_parent_loop_is_detected() {
    let dir = tempdir();
    let y = small_dynamic(dir.path(), "y.vhd");
    let y_img = open(&y);
    let x = dir.path().join("x.vhd");
    drop(SparseVhd::create(&x, 0, 2 << 20, Some(ParentLink { image: &y_img, path: &y })).unwrap());
    let x_img = open(&x);
    // A child of x, with y's UUID, written over y: now x -> y -> x.
    let y2 = dir.path().join("y2.vhd");
    drop(SparseVhd::create(&y2, 0, 2 << 20, Some(ParentLink { image: &x_img, path: &x })).unwrap());
    let mut footer = Footer::parse(&std::fs::read(&y2).unwrap()[..512], &y2, 0).unwrap();
    footer.uuid = y_img.footer().unwrap().uuid;
    let bytes = footer.encode();
    let len = std::fs::metadata(&y2).unwrap().len();
    patch(&y2, 0, &bytes);
    patch(&y2, len - 512, &bytes);
    drop((x_img, y_img));
    std::fs::rename(&y2, &y).unwrap();
    let out = dump(&x, &[]);
    assert_one_line_error(&out, "x.vhd", &["this very chain", "loop"]);
}

#[test]
fn an_ebr_chain_that_loops_ends_with_a_finding() {
    let dir = tempdir();
    let raw = dir.path().join("loop.raw");
    let mut data = read_all(&open(&corpus("logical-dynamic.vhd")));
    // The second EBR's link entry points back at the first EBR (relative 0).
    let second = 65598 * 512 + 446 + 16;
    data[second..second + 16].copy_from_slice(&[0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    std::fs::write(&raw, &data).unwrap();
    let out = run(bin("vhdinspect").args(["check"]).arg(&raw));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("loops back"));
}

#[test]
fn an_absurd_gpt_entry_array_is_refused_without_allocating_it() {
    let dir = tempdir();
    let raw = dir.path().join("gpt.raw");
    let mut data = read_all(&open(&corpus("gpt-dynamic.vhd")));
    for at in [512usize, data.len() - 512] {
        data[at + 80..at + 84].copy_from_slice(&u32::MAX.to_le_bytes());
    }
    std::fs::write(&raw, &data).unwrap();
    let out = run(bin("vhdinspect").args(["check", "--json"]).arg(&raw));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not a sane entry array"));
}

#[test]
fn empty_and_tiny_files_are_not_disks_unless_the_user_says_raw() {
    let dir = tempdir();
    for size in [0usize, 100, 511, 512] {
        let p = dir.path().join(format!("tiny{size}.img"));
        std::fs::write(&p, vec![0u8; size]).unwrap();
        assert_one_line_error(&dump(&p, &["--json"]), p.to_str().unwrap(), &["not a disk image", "--format raw"]);
        let out = dump(&p, &["--json", "--format", "raw"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
}
