//! `vhdinspect align` and `vhdcompact --realign` against independent tools: qemu-img reads the
//! realigned image, Sleuth Kit's `mmls` and sfdisk see the new starts, ntfs-3g mounts every
//! moved volume with every file identical, hivex reads the patched MountedDevices and BCD.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use vhdkit::BlockDevice;

fn compact_json(input: &Path, output: &Path, args: &[&str]) -> serde_json::Value {
    let out = run(bin("vhdcompact").arg(input).arg(output).args(args).arg("--json"));
    assert!(out.status.success(), "vhdcompact {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn align_json(image: &Path) -> serde_json::Value {
    serde_json::from_slice(&run_ok(bin("vhdinspect").args(["align", "--json"]).arg(image))).unwrap()
}

/// Partition `index` of an image as qemu-img reads it, written to a file; its start LBA from
/// the table qemu-img returns.
fn qemu_partition(image: &Path, index: u32, dir: &Path) -> (PathBuf, u64) {
    let raw = qemu_raw(image, dir);
    let raw_file = dir.join("qemu-disk.raw");
    std::fs::write(&raw_file, &raw).unwrap();
    let disk = open(&raw_file);
    let layout = vhdkit::DiskLayout::read(&disk).unwrap();
    let p = layout.partition(index).unwrap_or_else(|| panic!("no partition {index}")).clone();
    let out = dir.join(format!("qemu-part{index}.img"));
    std::fs::write(&out, &raw[p.start() as usize..p.end() as usize]).unwrap();
    std::fs::remove_file(&raw_file).unwrap();
    (out, p.start_lba.0)
}

/// `mmls` start sectors of the NTFS partitions.
fn mmls_starts(image: &Path, dir: &Path) -> Vec<u64> {
    let raw = dir.join("mmls.raw");
    qemu_raw_file(image, &raw);
    let text = String::from_utf8(run_ok(Command::new("mmls").arg(&raw))).unwrap();
    std::fs::remove_file(&raw).unwrap();
    text.lines().filter(|l| l.contains("NTFS")).map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap()).collect()
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

#[test]
fn a_sector_63_volume_moves_to_1_mib_with_every_file_intact() {
    let dir = tempdir();
    let input = corpus("xp-fixed.vhd");
    let want = image_file_hashes(&input).remove(&1).unwrap();
    let before = align_json(&input);
    assert_eq!(before["partitions"][0]["aligned_4k"], false);
    assert_eq!(
        before["partitions"][0]["clusters_straddling_4k"], before["partitions"][0]["clusters"],
        "every 4 KiB cluster at sector 63 straddles"
    );
    let fail = run(bin("vhdinspect").args(["align", "--fail-on-misaligned"]).arg(&input));
    assert_eq!(fail.status.code(), Some(1));
    for to in ["dynamic", "fixed"] {
        let out = dir.path().join(format!("realigned-{to}.vhd"));
        let r = compact_json(&input, &out, &["--realign", "--to", to, "--verify"]);
        assert_eq!(r["realign"]["moves"][0]["new_start_lba"], 2048, "{r}");
        assert!(r["verify"]["mismatches"].as_array().unwrap().is_empty());
        let changes = r["realign"]["changes"].to_string();
        assert!(changes.contains("hidden sectors 63 -> 2048") && changes.contains("backup boot sector"), "{changes}");
        // Our report and Sleuth Kit agree on the new start.
        let after = align_json(&out);
        assert_eq!(after["partitions"][0]["start_lba"], 2048);
        assert_eq!(after["partitions"][0]["aligned_1mib"], true);
        assert_eq!(after["partitions"][0]["clusters_straddling_4k"], 0);
        assert!(run(bin("vhdinspect").args(["align", "--fail-on-misaligned"]).arg(&out)).status.success());
        assert_eq!(mmls_starts(&out, dir.path()), vec![2048]);
        // qemu-img reads it; both boot sectors carry the new hidden-sectors value; ntfs-3g
        // mounts the moved volume and every file and stream hashes as before.
        let (part, start) = qemu_partition(&out, 1, dir.path());
        assert_eq!(start, 2048);
        let bytes = std::fs::read(&part).unwrap();
        assert_eq!(le32(&bytes, 0x1C), 2048, "boot sector");
        let total = u64::from_le_bytes(bytes[0x28..0x30].try_into().unwrap()) as usize;
        assert_eq!(le32(&bytes[total * 512..], 0x1C), 2048, "backup boot sector");
        assert_eq!(ntfs3g_hashes(&part), want, "{to}");
        let check = run(bin("vhdinspect").arg("check").arg(&out));
        assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    }
}

#[test]
fn a_differencing_child_realigns_into_a_standalone_image() {
    let dir = tempdir();
    let parent = dir.path().join("parent.vhd");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "vpc", "-O", "vpc", "-o", "subformat=dynamic"])
            .arg(corpus("xp-fixed.vhd"))
            .arg(&parent),
    );
    let child = dir.path().join("child.vhd");
    let parent_img = open(&parent);
    let mut c =
        vhdkit::SparseVhd::create(&child, 0, 2 << 20, Some(vhdkit::ParentLink { image: &parent_img, path: &parent }))
            .unwrap();
    // The child changes a sector of the volume's first block.
    let mut s = [0u8; 512];
    parent_img.read_at(63 * 512 + 4 * 4096 * 1024, &mut s).unwrap();
    vhdkit::WritableDevice::write_at(&mut c, 63 * 512 + 4 * 4096 * 1024, &s).unwrap();
    drop(c);
    let want = image_file_hashes(&parent).remove(&1).unwrap();
    let out = dir.path().join("realigned.vhd");
    // Realigning moves every sector: the output is standalone, which must be asked for.
    let refused = run(bin("vhdcompact").arg(&child).arg(&out).arg("--realign"));
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--merge"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!out.exists());
    let r = compact_json(&child, &out, &["--realign", "--merge", "--verify"]);
    assert_eq!(r["output_format"], "dynamic");
    assert!(r["verify"]["mismatches"].as_array().unwrap().is_empty());
    let (part, start) = qemu_partition(&out, 1, dir.path());
    assert_eq!(start, 2048);
    assert_eq!(ntfs3g_hashes(&part), want);
}

#[test]
fn logical_partitions_and_their_ebrs_move_together() {
    let dir = tempdir();
    let input = corpus("logical-dynamic.vhd");
    let want = image_file_hashes(&input);
    assert_eq!(want.len(), 3, "partitions 1, 5 and 6");
    let out = dir.path().join("realigned.vhd");
    let r = compact_json(&input, &out, &["--realign", "--verify"]);
    assert!(r["verify"]["mismatches"].as_array().unwrap().is_empty());
    let moves = r["realign"]["moves"].as_array().unwrap();
    assert!(moves.iter().all(|m| m["new_start_lba"].as_u64().unwrap() % 2048 == 0), "{moves:?}");
    assert!(
        moves.iter().filter(|m| m["partition"].as_u64() >= Some(5)).all(|m| m["old_start_lba"] != m["new_start_lba"]),
        "both logicals were misaligned"
    );
    let after = align_json(&out);
    assert!(after["partitions"].as_array().unwrap().iter().all(|p| p["aligned_1mib"] == true));
    assert_eq!(after["partitions"].as_array().unwrap().len(), 3);
    let starts = mmls_starts(&out, dir.path());
    assert_eq!(starts, moves.iter().map(|m| m["new_start_lba"].as_u64().unwrap()).collect::<Vec<_>>());
    for index in [1, 5, 6] {
        let (part, _) = qemu_partition(&out, index, dir.path());
        assert_eq!(ntfs3g_hashes(&part), want[&index], "partition {index}");
        std::fs::remove_file(&part).unwrap();
    }
    // sfdisk reads the same chain.
    let raw = dir.path().join("disk.raw");
    qemu_raw_file(&out, &raw);
    let dump = String::from_utf8(run_ok(Command::new("sfdisk").arg("-d").arg(&raw))).unwrap();
    for m in moves {
        assert!(dump.contains(&format!("start= {:>11}", m["new_start_lba"].as_u64().unwrap())), "{dump}");
    }
}

#[test]
fn a_gpt_disk_moves_to_the_block_size_with_valid_crcs() {
    let dir = tempdir();
    let input = corpus("gpt-dynamic.vhd");
    let want = image_file_hashes(&input);
    let out = dir.path().join("realigned.vhd");
    let r = compact_json(&input, &out, &["--realign=block", "--verify"]);
    assert!(r["realign"]["moves"].as_array().unwrap().iter().all(|m| m["new_start_lba"].as_u64().unwrap() % 4096 == 0));
    assert!(r["realign"]["changes"].to_string().contains("GPT headers"));
    // Our reader finds both GPT copies valid; sfdisk reads the table without complaint.
    let check = run(bin("vhdinspect").arg("check").arg(&out));
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    let raw = dir.path().join("disk.raw");
    qemu_raw_file(&out, &raw);
    let sf = run(Command::new("sfdisk").arg("-d").arg(&raw));
    assert!(sf.status.success() && sf.stderr.is_empty(), "{}", String::from_utf8_lossy(&sf.stderr));
    assert_eq!(image_file_hashes(&out), want);
}

/// An MBR partition device as BCD stores it: device type 6 at 0x10, byte offset at 0x20,
/// partition style 1 (MBR) at 0x34, disk signature at 0x38.
fn bcd_partition_device(offset: u64, signature: u32) -> Vec<u8> {
    let mut d = vec![0u8; 0x58];
    d[0x10] = 6;
    d[0x18] = 0x48;
    d[0x20..0x28].copy_from_slice(&offset.to_le_bytes());
    d[0x34] = 1;
    d[0x38..0x3C].copy_from_slice(&signature.to_le_bytes());
    d
}

#[test]
fn windows_records_of_the_partition_offset_are_patched() {
    let dir = tempdir();
    let Some(h) = hives(dir.path()) else { return };
    let image = windows_image(dir.path(), &h);
    let im = image.to_str().unwrap();
    let mut mbr = [0u8; 512];
    std::fs::File::open(&image).unwrap().read_exact_at(&mut mbr, 0).unwrap();
    let signature = le32(&mbr, 440);
    let old = 63u64 * 512;
    let mut mounted = signature.to_le_bytes().to_vec();
    mounted.extend(old.to_le_bytes());
    let set = |key: &str, name: &str, data: &[u8]| {
        let out = run(bin("vhdreg").args([im, "set", key, name, "--type", "REG_BINARY", "--data", &hex::encode(data)]));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    set(r"HKLM\SYSTEM\MountedDevices", r"\DosDevices\C:", &mounted);
    // A boot manager device and an OS loader's osdevice in MBR form; a ramdisk-style device
    // nests the same structure deeper.
    let device = bcd_partition_device(old, signature);
    let mut nested = vec![0u8; 0x30];
    nested.extend(&device[0x10..]);
    let obj = r"HKLM\BCD00000000\Objects\{7619dcc9-fafe-11d9-b411-000476eba25f}\Elements";
    set(&format!(r"{obj}\11000001"), "Element", &device);
    set(&format!(r"{obj}\21000001"), "Element", &device);
    set(&format!(r"{obj}\12000004"), "Element", &nested);
    let gpt_element = run_ok(bin("vhdreg").args([
        im,
        "get",
        r"HKLM\BCD00000000\Objects\{733b62e4-f608-11eb-825c-c112f60133ab}\Elements\11000001",
        "Element",
        "--json",
    ]));
    let out = dir.path().join("realigned.vhd");
    let r = compact_json(&image, &out, &["--realign", "--to", "dynamic", "--verify"]);
    assert!(r["verify"]["mismatches"].as_array().unwrap().is_empty());
    let changes = r["realign"]["changes"].to_string();
    assert!(changes.contains("MountedDevices") && changes.contains("BCD"), "{changes}");
    assert!(r["realign"]["impossible"].as_array().unwrap().is_empty());
    // Copied out of the realigned image by qemu-img and ntfs-3g, read by hivex.
    let (part, _) = qemu_partition(&out, 1, dir.path());
    let (system, bcd) = with_ntfs3g(&part, true, |mnt| {
        let (s, b) = (dir.path().join("SYSTEM.out"), dir.path().join("BCD.out"));
        std::fs::copy(mnt.join(SYSTEM), &s).unwrap();
        std::fs::copy(mnt.join("Boot/BCD"), &b).unwrap();
        (s, b)
    });
    let export = hivex_export(&system, "\\MountedDevices");
    let value = reg_hex_value(&export, r"\\DosDevices\\C:");
    let new = 2048u64 * 512;
    assert_eq!(le32(&value, 0), signature);
    assert_eq!(u64::from_le_bytes(value[4..12].try_into().unwrap()), new);
    let bcd_export = String::from_utf8(run_ok(
        Command::new("hivexregedit")
            .args(["--export", "--prefix", "HKEY_LOCAL_MACHINE\\BCD00000000"])
            .arg(&bcd)
            .arg("\\Objects\\{7619dcc9-fafe-11d9-b411-000476eba25f}"),
    ))
    .unwrap();
    for (element, at) in [("11000001", 0x20), ("21000001", 0x20), ("12000004", 0x40)] {
        let section = bcd_export.split(&format!("\\Elements\\{element}]")).nth(1).unwrap();
        let data = reg_hex_value(section, "Element");
        assert_eq!(u64::from_le_bytes(data[at..at + 8].try_into().unwrap()), new, "element {element}");
    }
    // GPT-style elements name partitions by GUID: untouched.
    let after = run_ok(bin("vhdreg").arg(&out).args([
        "get",
        r"HKLM\BCD00000000\Objects\{733b62e4-f608-11eb-825c-c112f60133ab}\Elements\11000001",
        "Element",
        "--json",
    ]));
    assert_eq!(after, gpt_element);
}

#[test]
fn a_record_that_cannot_be_patched_stops_realignment_unless_forced() {
    let dir = tempdir();
    let Some(h) = hives(dir.path()) else { return };
    let image = windows_image(dir.path(), &h);
    // A dirty SYSTEM hive without its logs cannot be edited safely.
    let part = partition_image(&open(&image), 1, dir.path());
    with_ntfs3g(&part, false, |mnt| {
        std::fs::copy(h.dirty.join("NewDirtyHive"), mnt.join(SYSTEM)).unwrap();
    });
    let (start, _) = partition_span(&image);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .write_all_at(&std::fs::read(&part).unwrap(), start)
        .unwrap();
    let out = dir.path().join("realigned.vhd");
    let refused = run(bin("vhdcompact").arg(&image).arg(&out).arg("--realign"));
    assert_one_line_error(&refused, "win.vhd", &["cannot realign safely", "dirty", "--force"]);
    assert!(!out.exists(), "no output after a refusal");
    let r = compact_json(&image, &out, &["--realign", "--force"]);
    assert!(r["realign"]["impossible"].to_string().contains("dirty"), "{r}");
    let text = String::from_utf8(run_ok(
        bin("vhdcompact").arg(&image).arg(dir.path().join("again.vhd")).args(["--realign", "--force"]),
    ))
    .unwrap();
    assert!(text.contains("NOT PATCHED") && text.contains("0xc0000225"), "{text}");
}
