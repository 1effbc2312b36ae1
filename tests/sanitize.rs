//! `vhdcompact --sanitize`: marker strings planted in every place deleted or stale data
//! survives `--zero-free` (through ntfs-3g: a deleted big file's clusters, the slack after a
//! truncated file's end, pagefile.sys; by hand where Windows leaves data that ntfs-3g wipes:
//! a freed MFT record, a deleted name in a directory index, old resident data past a record's
//! used size) are found in the input and nowhere in the output, every other file and stream
//! hashes identical through ntfs-3g, and `ntfsfix -n` finds the volume consistent.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Partition 1 of the corpus image: sector 2048, 129024 sectors.
const PART: (usize, usize) = (2048 * 512, 129024 * 512);

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// The planted markers, each written so that it lands in one place only.
const MARKERS: [&str; 6] = [
    "SANITIZE-RESIDENT-A",
    "SANITIZE-NAME-B",
    "SANITIZE-FREE-C",
    "SANITIZE-SLACK-D",
    "SANITIZE-PAGEFILE-E",
    "SANITIZE-TAIL-F",
];

/// Plants every marker in the mounted volume `mnt`.
fn plant(mnt: &Path) {
    let m = |i: usize| MARKERS[i].as_bytes().to_vec();
    // B: a deleted file's name in a directory large enough for an index allocation.
    let dir = mnt.join("many");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..120 {
        std::fs::write(dir.join(format!("file-with-a-rather-long-name-{i:04}.txt")), b"x").unwrap();
    }
    // C: a deleted big file's clusters.
    std::fs::write(mnt.join("big.bin"), m(2).repeat(20_000)).unwrap();
    std::fs::remove_file(mnt.join("big.bin")).unwrap();
    // D: a file cut short keeps the old bytes after its end in its last cluster.
    let slack = mnt.join("slack.bin");
    let mut body = vec![b'k'; 5000];
    body.extend(m(3).repeat(200));
    std::fs::write(&slack, &body).unwrap();
    std::fs::OpenOptions::new().write(true).open(&slack).unwrap().set_len(5000).unwrap();
    // E: pagefile.sys in the root.
    std::fs::write(mnt.join("pagefile.sys"), m(4).repeat(4000)).unwrap();
}

/// What Windows leaves and ntfs-3g wipes, put in by hand where Windows would leave it (never
/// over the last two bytes of a sector, which hold the update sequence number): A, a deleted
/// small file's data in its freed FILE record; B, a deleted file's name in the free space of
/// an INDX record; F, old resident data past the used size of a record in use.
fn plant_by_hand(part: &Path) {
    let mut vol = std::fs::read(part).unwrap();
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    let fits = |at: usize, len: usize| at % 512 + len <= 510;
    let put = |vol: &mut Vec<u8>, at: usize, marker: &str| {
        assert!(fits(at, marker.len()));
        vol[at..at + marker.len()].copy_from_slice(marker.as_bytes());
    };
    let records = |vol: &[u8], sig: &[u8; 4], size: usize| -> Vec<usize> {
        (0..vol.len() / size).map(|k| k * size).filter(|&o| &vol[o..o + 4] == sig).collect()
    };
    let file_records = records(&vol, b"FILE", 1024);
    let free = *file_records
        .iter()
        .find(|&&o| vol[o + 0x16] & 1 == 0 && u32_at(&vol, o + 0x2C) >= 16)
        .expect("a free FILE record");
    put(&mut vol, free + 0x100, MARKERS[0]);
    let used = file_records
        .iter()
        .map(|&o| (o, u32_at(&vol, o + 0x18)))
        .find(|&(o, n)| vol[o + 0x16] & 1 != 0 && u32_at(&vol, o + 0x2C) >= 16 && fits(o + n + 8, 16) && n + 40 < 1024)
        .expect("a FILE record in use with room after its used bytes");
    put(&mut vol, used.0 + used.1 + 8, MARKERS[5]);
    let indx = records(&vol, b"INDX", 4096)
        .into_iter()
        .map(|o| (o, 0x18 + u32_at(&vol, o + 0x1C), 0x18 + u32_at(&vol, o + 0x20)))
        .find(|&(o, used, alloc)| used + 64 < alloc && fits(o + used + 16, 16))
        .expect("an INDX record with free space");
    put(&mut vol, indx.0 + indx.1 + 16, MARKERS[1]);
    std::fs::write(part, vol).unwrap();
}

#[test]
fn sanitize_leaves_no_marker_and_every_file_intact() {
    let dir = tempdir();
    let d = dir.path();
    let mut disk = read_all(&open(&corpus("aligned-dynamic.vhd")));
    let part = d.join("vol.img");
    std::fs::write(&part, &disk[PART.0..PART.0 + PART.1]).unwrap();
    with_ntfs3g(&part, false, plant);
    plant_by_hand(&part);
    disk[PART.0..PART.0 + PART.1].copy_from_slice(&std::fs::read(&part).unwrap());
    let raw = d.join("in.raw");
    std::fs::write(&raw, &disk).unwrap();
    let input = d.join("in.vhd");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic"])
            .arg(&raw)
            .arg(&input),
    );
    let missing: Vec<&str> = MARKERS.iter().copied().filter(|m| count(&disk, m.as_bytes()) == 0).collect();
    assert!(missing.is_empty(), "{missing:?} were not planted where the test expects them");
    // --zero-free alone leaves all but the deleted big file's clusters.
    let zeroed = d.join("zeroed.vhd");
    run_ok(bin("vhdcompact").arg(&input).arg(&zeroed).arg("--zero-free"));
    let zeroed_raw = qemu_raw(&zeroed, d);
    assert_eq!(count(&zeroed_raw, MARKERS[2].as_bytes()), 0);
    let left: Vec<&str> = MARKERS.iter().copied().filter(|m| count(&zeroed_raw, m.as_bytes()) > 0).collect();
    assert!(
        left.len() >= 4,
        "--zero-free already removes {:?}",
        MARKERS.iter().filter(|m| !left.contains(m)).collect::<Vec<_>>()
    );

    let out = d.join("out.vhdx");
    let o = run(bin("vhdcompact").arg(&input).arg(&out).args(["--sanitize", "--verify", "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(o.status.success(), "{}", report["verify"]);
    assert_eq!(report["committed"], true);
    let s = &report["sanitized"];
    assert!(s["free_records"].as_u64().unwrap() > 0 && s["index_records"].as_u64().unwrap() > 0, "{s}");
    assert!(s["recreated_file_bytes"].as_u64().unwrap() >= 4000 * 19, "{s}");
    assert!(s["logfile_bytes"].as_u64().unwrap() > 0 && s["slack_bytes"].as_u64().unwrap() > 0, "{s}");
    let out_raw = d.join("out.raw");
    run_ok(Command::new("qemu-img").args(["convert", "-f", "vhdx", "-O", "raw"]).arg(&out).arg(&out_raw));
    let bytes = std::fs::read(&out_raw).unwrap();
    for m in MARKERS {
        assert_eq!(count(&bytes, m.as_bytes()), 0, "{m} survived --sanitize");
    }
    // Every file and stream as before, but pagefile.sys: kept, same size, zeros.
    let before = image_file_hashes(&raw_vhd(&raw, d, "before.vhd"));
    let after = image_file_hashes(&raw_vhd(&out_raw, d, "after.vhd"));
    let (mut b, mut a) = (before[&1].clone(), after[&1].clone());
    assert_eq!(a.remove("pagefile.sys"), Some(sha256(&vec![0u8; MARKERS[4].len() * 4000])));
    b.remove("pagefile.sys");
    assert_eq!(a, b);
    // ntfs-3g's own consistency check of the sanitized volume.
    let vol = d.join("out.part");
    std::fs::write(&vol, &bytes[PART.0..PART.0 + PART.1]).unwrap();
    let fix = run(Command::new("ntfsfix").arg("-n").arg(&vol));
    assert!(fix.status.success(), "ntfsfix -n: {}", String::from_utf8_lossy(&fix.stdout));
    // In place, on a dynamic VHD and on a VHDX: the same result.
    let vhdx = d.join("in-place.vhdx");
    run_ok(Command::new("qemu-img").args(["convert", "-f", "vpc", "-O", "vhdx"]).arg(&input).arg(&vhdx));
    for work in [input.clone(), vhdx] {
        let r: serde_json::Value = serde_json::from_slice(&run_ok(bin("vhdcompact").arg(&work).args([
            "--in-place",
            "--sanitize",
            "--verify",
            "--json",
        ])))
        .unwrap();
        assert!(r["verify"]["mismatches"].as_array().unwrap().is_empty(), "{r}");
        assert!(r["sanitized"]["free_records"].as_u64().unwrap() > 0, "{r}");
        let bytes = qemu_raw(&work, d);
        for m in MARKERS {
            assert_eq!(count(&bytes, m.as_bytes()), 0, "{m} survived --sanitize --in-place on {}", work.display());
        }
        let raw = d.join("in-place.raw");
        std::fs::write(&raw, &bytes).unwrap();
        let mut a = image_file_hashes(&raw_vhd(&raw, d, "in-place-check.vhd"))[&1].clone();
        a.remove("pagefile.sys");
        assert_eq!(a, b, "{}", work.display());
        std::fs::write(&vol, &bytes[PART.0..PART.0 + PART.1]).unwrap();
        let fix = run(Command::new("ntfsfix").arg("-n").arg(&vol));
        assert!(fix.status.success(), "ntfsfix -n: {}", String::from_utf8_lossy(&fix.stdout));
        // Once clean, there is nothing left to do.
        let settled = std::fs::read(&work).unwrap();
        for option in ["--zero-free", "--sanitize"] {
            let again = run(bin("vhdcompact").arg(&work).args(["--in-place", option]));
            assert_one_line_error(&again, work.file_name().unwrap().to_str().unwrap(), &["nothing to do"]);
            assert!(std::fs::read(&work).unwrap() == settled, "{option} changed a settled image");
        }
    }
}

/// A dynamic VHD of the raw disk `raw`, for the hash helpers.
fn raw_vhd(raw: &Path, dir: &Path, name: &str) -> std::path::PathBuf {
    let out = dir.join(name);
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic"])
            .arg(raw)
            .arg(&out),
    );
    out
}
