//! The partition layer against sfdisk and real Windows-made partition tables.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use vhdkit::disk::volume::{self, BackupState};
use vhdkit::{BlockDevice, DiskImage};
use vhdkit::{DiskLayout, Scheme};

/// (index, start, sectors) of every partition sfdisk sees in a raw disk.
fn sfdisk_partitions(raw: &Path) -> Vec<(u32, u64, u64)> {
    let out = run_ok(Command::new("sfdisk").arg("--json").arg(raw));
    let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
    j["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !matches!(p["type"].as_str(), Some("5" | "f" | "85")))
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            let index = node.rsplit(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
            (index, p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap())
        })
        .collect()
}

fn ours(img: &dyn BlockDevice) -> Vec<(u32, u64, u64)> {
    DiskLayout::read(img).unwrap().partitions.iter().map(|p| (p.index, p.start_lba.0, p.sectors)).collect()
}

#[test]
fn corpus_tables_match_sfdisk() {
    let dir = tempdir();
    for name in ["xp-fixed.vhd", "logical-dynamic.vhd", "gpt-dynamic.vhd"] {
        let img = open(&corpus(name));
        let raw = dir.path().join("disk.raw");
        std::fs::write(&raw, read_all(&img)).unwrap();
        assert_eq!(ours(&img), sfdisk_partitions(&raw), "{name}");
        let layout = DiskLayout::read(&img).unwrap();
        assert!(layout.findings.is_empty(), "{name}: {:?}", layout.findings);
    }
}

#[test]
fn logical_partitions_keep_linux_numbers_and_ebr_positions() {
    let img = open(&corpus("logical-dynamic.vhd"));
    let layout = DiskLayout::read(&img).unwrap();
    assert_eq!(layout.scheme.to_string(), "mbr");
    let p5 = layout.partition(5).unwrap();
    assert!(p5.logical);
    assert_eq!(p5.ebr_lba, Some(vhdkit::Lba(40960)));
    assert_eq!(p5.entry_offset, Some(40960 * 512 + 446));
    let p6 = layout.partition(6).unwrap();
    assert_eq!(p6.ebr_lba, Some(vhdkit::Lba(65598)));
    assert_eq!(layout.mbr.as_ref().unwrap().disk_signature, 0x0BAD_CAFE);
    let clusters: Vec<Option<u32>> =
        layout.partitions.iter().map(|p| volume::probe(&img, p).unwrap().cluster_size).collect();
    assert_eq!(clusters, vec![Some(4096), Some(1024), Some(65536)]);
}

#[test]
fn windows_disk_management_mbr_with_four_logicals() {
    let Some(tgz) = realdata("dfir_ntfs/test_data/mbr-win-512.raw.tgz") else { return };
    let dir = tempdir();
    run_ok(Command::new("tar").arg("xSf").arg(&tgz).arg("-C").arg(dir.path()));
    let raw = dir.path().join("mbr-win-512.raw");
    let img = open(&raw);
    let layout = DiskLayout::read(&img).unwrap();
    assert_eq!(layout.mbr.as_ref().unwrap().disk_signature, 0x882E_DD52);
    assert_eq!(
        ours(&img),
        vec![
            (1, 128, 16384),
            (2, 16512, 16384),
            (3, 32896, 16384),
            (5, 49408, 16384),
            (6, 65920, 16384),
            (7, 82432, 16384),
            (8, 98944, 417792)
        ]
    );
    assert_eq!(ours(&img), sfdisk_partitions(&raw));
    assert_eq!(layout.mbr.unwrap().ebrs.len(), 4);
}

#[test]
fn linux_mbr_samples() {
    if let Some(raw) = realdata("plaso/test_data/tsk_volume_system.raw") {
        assert_eq!(ours(&open(&raw)), vec![(1, 1, 350), (5, 352, 2528)]);
    }
    if let Some(raw) = realdata("dfir_ntfs/test_data/mbr-512-p4.bin") {
        let img = open(&raw);
        let layout = DiskLayout::read(&img).unwrap();
        assert_eq!(layout.partitions.len(), 4);
        assert_eq!(layout.partitions[3].mbr_type, Some(0x8e));
        // The disk is 2 sectors long: every partition but the first reaches past it.
        assert!(!layout.findings.is_empty());
    }
    if let Some(raw) = realdata("dfir_ntfs/test_data/mbr-512-p0.bin") {
        assert!(ours(&open(&raw)).is_empty());
    }
}

#[test]
fn gpt_sample_with_valid_crcs_and_backup() {
    let Some(gz) = realdata("dfir_ntfs/test_data/gpt-512-3p.raw.gz") else { return };
    let dir = tempdir();
    let raw = dir.path().join("gpt.raw");
    gunzip_sparse(&gz, &raw);
    let img = open(&raw);
    let layout = DiskLayout::read(&img).unwrap();
    assert_eq!(layout.scheme.to_string(), "gpt");
    let g = layout.gpt.as_ref().unwrap();
    assert!(g.primary.as_ref().unwrap().header_crc_valid() && g.primary_entries_crc_valid);
    assert!(g.backup.as_ref().unwrap().header_crc_valid() && g.backup_entries_crc_valid);
    assert!(layout.findings.is_empty(), "{:?}", layout.findings);
    assert_eq!(layout.partitions.len(), 3);
    assert!(layout.partitions.iter().all(|p| p.scheme == Scheme::Gpt));
    assert_eq!(ours(&img), sfdisk_partitions(&raw));
}

#[test]
fn a_damaged_primary_gpt_falls_back_to_the_backup() {
    let dir = tempdir();
    let raw = dir.path().join("gpt.raw");
    std::fs::write(&raw, read_all(&open(&corpus("gpt-dynamic.vhd")))).unwrap();
    let mut data = std::fs::read(&raw).unwrap();
    data[1024 + 130] ^= 0xFF; // the first entry's GUID: the primary array CRC breaks
    std::fs::write(&raw, &data).unwrap();
    let layout = DiskLayout::read(&open(&raw)).unwrap();
    assert_eq!(layout.gpt.as_ref().unwrap().used, "backup");
    assert_eq!(layout.partitions.len(), 2);
    assert!(layout.findings.iter().any(|f| f.structure == "GPT primary entry array" && f.offset == 1024));
}

#[test]
fn windows_ntfs_samples_wrapped_into_vhds() {
    let Some(gz) = realdata("ntfs-samples/ntfs-lastaccess.raw.gz") else { return };
    let dir = tempdir();
    let raw = dir.path().join("lastaccess.raw");
    gunzip_sparse(&gz, &raw);
    let vhd = dir.path().join("lastaccess.vhd");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on"])
            .arg(&raw)
            .arg(&vhd),
    );
    let out = run_ok(bin("vhdinspect").args(["dump", "--json"]).arg(&vhd));
    let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(j["footer"]["disk_type"], "dynamic");
    assert_eq!(j["partitions"][0]["start_lba"], 128);
    assert_eq!(j["partitions"][0]["sectors"], 518144);
    assert_eq!(j["partition_table"]["mbr"]["disk_signature"], 0x708C8397);
    assert_eq!(j["volumes"][0]["filesystem"], "ntfs");
    assert_eq!(j["volumes"][0]["cluster_size"], 4096);
    assert_eq!(j["volumes"][0]["hidden_sectors"], 128);
    assert_eq!(j["volumes"][0]["ntfs"]["mft_lcn"], 21589);
    assert_eq!(j["volumes"][0]["backup_boot_sector"], "matches");
}

#[test]
fn a_bare_ntfs_volume_is_one_partition() {
    let Some(raw) = realdata("ntfs/testdata/testfs1") else { return };
    let img = open(&raw);
    let layout = DiskLayout::read(&img).unwrap();
    assert_eq!(layout.scheme.to_string(), "volume");
    assert_eq!(layout.partitions.len(), 1);
    let p = &layout.partitions[0];
    assert_eq!((p.index, p.start_lba.0, p.scheme), (1, 0, Scheme::Volume));
    let v = volume::probe(&img, p).unwrap();
    assert_eq!(v.filesystem, Some("ntfs"));
    assert_eq!(v.cluster_size, Some(512));
    assert_eq!(v.backup_boot_sector, Some(BackupState::Matches));
}

#[test]
fn dump_json_carries_the_documented_keys() {
    let out = run_ok(bin("vhdinspect").args(["dump", "--json", "--blocks"]).arg(corpus("logical-dynamic.vhd")));
    let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
    for key in ["disk_type", "current_size", "original_size", "creator_app", "checksum_valid"] {
        assert!(!j["footer"][key].is_null(), "footer.{key}");
    }
    for key in ["cylinders", "heads", "sectors_per_track"] {
        assert!(j["footer"]["geometry"][key].is_u64(), "footer.geometry.{key}");
    }
    assert_eq!(j["footer"]["disk_type"], "dynamic");
    assert_eq!(j["dynamic_header"]["block_size"], 2 << 20);
    assert_eq!(j["dynamic_header"]["max_table_entries"], 48);
    assert!(j["dynamic_header"]["parent_locators"].as_array().unwrap().is_empty());
    assert!(j["parent"]["path"].is_null());
    let allocated = j["bat"]["allocated_blocks"].as_u64().unwrap();
    assert!(allocated > 0 && allocated <= 48);
    assert_eq!(j["bat"]["blocks"].as_array().unwrap().len() as u64, allocated);
    assert_eq!(j["bat"]["blocks"][0]["sectors_present"], 4096, "qemu sets every bit");
    let parts = j["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    for key in ["partition", "scheme", "type", "type_name", "bootable", "start_lba", "sectors"] {
        assert!(!parts[0][key].is_null(), "partitions[].{key}");
    }
    assert_eq!(parts[1]["partition"], 5);
    assert_eq!(parts[0]["type"], 7);
    assert!(parts[0]["type_guid"].is_null());
    let vols = j["volumes"].as_array().unwrap();
    for key in ["partition", "filesystem", "cluster_size", "hidden_sectors"] {
        assert!(!vols[0][key].is_null(), "volumes[].{key}");
    }
    assert_eq!(vols[2]["hidden_sectors"], 65599);
    // The readable form shows raw entry bytes beside the decoded fields.
    let text = String::from_utf8(run_ok(bin("vhdinspect").arg("dump").arg(corpus("xp-fixed.vhd")))).unwrap();
    assert!(text.lines().any(|l| l.trim_start().starts_with("1  ") && l.contains("80 01 01 00 07")), "{text}");
    assert!(text.contains(" empty"), "empty slots say so: {text}");
}

#[test]
fn check_is_clean_on_the_corpus() {
    for name in ["xp-fixed.vhd", "aligned-dynamic.vhd", "logical-dynamic.vhd", "gpt-dynamic.vhd", "nofs-dynamic.vhd"] {
        let out = run(bin("vhdinspect").args(["check", "--json"]).arg(corpus(name)));
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(j["clean"], true, "{name}: {j}");
        assert_eq!(out.status.code(), Some(0));
    }
    // A fixed image opens as such (not as raw) even though only its end says so.
    let img = DiskImage::open(&corpus("xp-fixed.vhd"), &Default::default()).unwrap();
    assert_eq!(img.kind().name(), "fixed");
}
