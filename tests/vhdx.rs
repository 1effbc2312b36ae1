//! VHDX: reads equal qemu-img's byte for byte (every block size, fixed and dynamic, a log
//! replayed), outputs qemu-img accepts and ntfs-3g reads file for file, conversions both ways,
//! differencing children read through their parent (checked with libvhdi's vhdimount).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// `image` converted by qemu-img to VHDX with `options`.
fn to_vhdx(image: &Path, dir: &Path, name: &str, options: &str) -> PathBuf {
    let out = dir.join(name);
    run_ok(Command::new("qemu-img").args(["convert", "-O", "vhdx", "-o", options]).arg(image).arg(&out));
    out
}

#[test]
fn every_vhdx_qemu_writes_reads_as_qemu_reads_it() {
    let dir = tempdir();
    let source = corpus("xp-fixed.vhd");
    for (name, options) in [
        ("d1.vhdx", "subformat=dynamic,block_size=1M"),
        ("d8.vhdx", "subformat=dynamic"),
        ("d32.vhdx", "subformat=dynamic,block_size=32M,log_size=4M"),
        ("d256.vhdx", "subformat=dynamic,block_size=256M"),
        ("f.vhdx", "subformat=fixed,block_size=16M"),
        ("z.vhdx", "subformat=dynamic,block_state_zero=off"),
    ] {
        let vhdx = to_vhdx(&source, dir.path(), name, options);
        let ours = read_all(&open(&vhdx));
        assert!(ours == qemu_raw(&vhdx, dir.path()), "{name}: our read differs from qemu-img's");
        let check = run(bin("vhdinspect").arg("check").arg(&vhdx));
        assert!(check.status.success(), "{name}: {}", String::from_utf8_lossy(&check.stdout));
    }
}

#[test]
fn compaction_to_vhdx_and_back_keeps_every_file() {
    let dir = tempdir();
    let input = corpus("xp-fixed.vhd");
    let want = image_file_hashes(&input);
    let dynamic = dir.path().join("out.vhdx");
    let r = run(bin("vhdcompact").arg(&input).arg(&dynamic).args(["--verify", "--json"]));
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let report: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!((report["output_format"].as_str(), report["committed"].as_bool()), (Some("dynamic"), Some(true)));
    assert!(report["output_bytes"].as_u64().unwrap() < std::fs::metadata(&input).unwrap().len() / 2);
    for (out, extra) in [(dynamic.clone(), &[][..]), (dir.path().join("fixed.vhdx"), &["--to", "fixed"][..])] {
        if !out.exists() {
            run_ok(bin("vhdcompact").arg(&input).arg(&out).args(extra).arg("--verify"));
        }
        run_ok(Command::new("qemu-img").args(["check", "-f", "vhdx"]).arg(&out));
        let raw = dir.path().join("check.raw");
        run_ok(Command::new("qemu-img").args(["convert", "-f", "vhdx", "-O", "raw"]).arg(&out).arg(&raw));
        assert_eq!(image_file_hashes(&raw), want, "{}: files read through qemu-img", out.display());
        assert!(read_all(&open(&out)) == std::fs::read(&raw).unwrap(), "our read of our output equals qemu-img's");
    }
    // And back to a VHD, which qemu-img reads too.
    let back = dir.path().join("back.vhd");
    run_ok(bin("vhdcompact").arg(&dynamic).arg(&back).arg("--verify"));
    assert!(read_all(&open(&back)) == qemu_raw(&back, dir.path()), "qemu-img reads the VHD as we do");
    assert_eq!(image_file_hashes(&back), want);
}

#[test]
fn the_output_container_follows_the_name_unless_told() {
    let dir = tempdir();
    let input = corpus("aligned-dynamic.vhd");
    let named = dir.path().join("a.vhdx");
    run_ok(bin("vhdcompact").arg(&input).arg(&named));
    assert_eq!(&std::fs::read(&named).unwrap()[..8], b"vhdxfile");
    let told = dir.path().join("b.img");
    run_ok(bin("vhdcompact").arg(&input).arg(&told).args(["--format", "vhdx", "--block-size", "1M"]));
    assert_eq!(&std::fs::read(&told).unwrap()[..8], b"vhdxfile");
    let azure = run(bin("vhdcompact").arg(&input).arg(dir.path().join("c.vhdx")).arg("--azure"));
    assert!(!azure.status.success() && String::from_utf8_lossy(&azure.stderr).contains("Azure"));
    let odd = run(bin("vhdcompact").arg(&input).arg(dir.path().join("d.vhdx")).args(["--block-size", "3M"]));
    assert!(!odd.status.success() && String::from_utf8_lossy(&odd.stderr).contains("power of two"));
}

/// A differencing VHDX child of `parent` (ours), with `block`'s sectors `sectors` replaced by
/// `fill` bytes, written through the library's append API.
fn child_with(parent: &Path, child: &Path, block: u64, sectors: std::ops::Range<u64>, fill: u8) {
    let parent_img = open(parent);
    let mut c = vhdkit::vhdx::Vhdx::create(
        child,
        vhdkit::vhdx::create::NewVhdx {
            size: 0,
            block_size: parent_img.block_size().unwrap() as u32,
            logical_sector_size: 512,
            kind: vhdkit::vhdx::create::NewKind::Differencing { image: &parent_img, path: parent },
            identity: Default::default(),
        },
    )
    .unwrap();
    let bs = parent_img.block_size().unwrap();
    let mut bits = vec![0u8; (bs / 512 / 8) as usize];
    let mut data = vec![0u8; bs as usize];
    for s in sectors {
        bits[(s / 8) as usize] |= 1 << (s % 8);
        data[(s * 512) as usize..((s + 1) * 512) as usize].fill(fill);
    }
    c.append_begin(block, Some(bits)).unwrap();
    c.append_data(0, &data).unwrap();
    c.append_end(true).unwrap();
    c.finish_appends().unwrap();
}

#[test]
fn a_differencing_child_reads_its_own_sectors_and_the_rest_from_its_parent() {
    let dir = tempdir();
    let parent = to_vhdx(&corpus("xp-fixed.vhd"), dir.path(), "parent.vhdx", "subformat=dynamic,block_size=1M");
    let child = dir.path().join("child.avhdx");
    child_with(&parent, &child, 3, 10..20, 0xAB);
    let mut want = read_all(&open(&parent));
    let at = (3 << 20) + 10 * 512;
    want[at..at + 10 * 512].fill(0xAB);
    let img = open(&child);
    assert_eq!(img.kind(), vhdkit::ImageKind::Differencing);
    assert_eq!(img.parent_resolution().unwrap().resolved_by, "relative_path");
    assert!(read_all(&img) == want, "the child's sectors over the parent's");
    // libvhdi (pyvhdi) reads the chain the same way.
    let script = "import pyvhdi,sys\nc=pyvhdi.file(); c.open(sys.argv[1])\np=pyvhdi.file(); p.open(sys.argv[2])\nc.set_parent(p)\nsys.stdout.buffer.write(c.read_buffer_at_offset(c.media_size, 0))\n";
    let theirs = run_ok(Command::new("python3").args(["-c", script]).arg(&child).arg(&parent));
    assert!(theirs == want, "libvhdi reads the chain as we do");
    // A parent whose data changed (another data write GUID) is not accepted.
    let other = to_vhdx(&corpus("xp-fixed.vhd"), dir.path(), "other.vhdx", "subformat=dynamic,block_size=1M");
    std::fs::rename(&other, &parent).unwrap();
    let refused = run(bin("vhdinspect").arg("files").arg(&child));
    assert_one_line_error(&refused, "child.avhdx", &["parent", "not the expected"]);
}

/// The file offset and bytes of `vhdx`'s current header and its BAT region.
fn header_and_bat(vhdx: &Path) -> (u64, Vec<u8>, u64) {
    let b = std::fs::read(vhdx).unwrap();
    let le = |at: usize, n: usize| b[at..at + n].iter().rev().fold(0u64, |v, &x| v << 8 | x as u64);
    let (s1, s2) = (le(0x10000 + 8, 8), le(0x20000 + 8, 8));
    let header_at = if s2 > s1 { 0x20000 } else { 0x10000 };
    let regions = 0x30000;
    let bat_guid = [0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08];
    let bat_at = (0..le(regions + 8, 4) as usize)
        .map(|i| regions + 16 + 32 * i)
        .find(|&e| b[e..e + 16] == bat_guid)
        .map(|e| le(e + 16, 8))
        .unwrap();
    (header_at as u64, b[header_at..header_at + 4096].to_vec(), bat_at)
}

#[test]
fn a_pending_log_is_replayed_in_memory_as_qemu_replays_it_on_disk() {
    let dir = tempdir();
    let vhdx = to_vhdx(&corpus("xp-fixed.vhd"), dir.path(), "dirty.vhdx", "subformat=dynamic,block_size=1M");
    let before = read_all(&open(&vhdx));
    let (header_at, header, bat_at) = header_and_bat(&vhdx);
    // A log entry that turns the BAT's first sector into "block 0 is zero", as a crash after
    // logging and before applying would leave it.
    let mut bat_sector = std::fs::read(&vhdx).unwrap()[bat_at as usize..bat_at as usize + 4096].to_vec();
    bat_sector[..8].copy_from_slice(&2u64.to_le_bytes());
    let guid = vhdkit::bytes::Guid([0x5a; 16]);
    let len = std::fs::metadata(&vhdx).unwrap().len();
    let entry = vhdkit::vhdx::log::encode_entry(
        guid,
        1,
        0,
        (len, len),
        &[vhdkit::vhdx::log::LogWrite::Data { offset: bat_at, bytes: bat_sector }],
    );
    let mut h = vhdkit::vhdx::header::VhdxHeader::parse(&header, 1).unwrap();
    h.log_guid = guid;
    h.sequence_number += 1;
    let f = std::fs::OpenOptions::new().write(true).open(&vhdx).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&entry, h.log_offset).unwrap();
    f.write_all_at(&h.encode(), header_at).unwrap();
    drop(f);
    let hash = image_hash(&vhdx);
    let ours = read_all(&open(&vhdx));
    assert_eq!(image_hash(&vhdx), hash, "a reader replays in memory, never on disk");
    assert!(ours[..1 << 20].iter().all(|&x| x == 0) && ours[1 << 20..] == before[1 << 20..], "block 0 reads as zeros");
    // qemu-img refuses to read it until it has replayed the log itself.
    run_ok(Command::new("qemu-img").args(["check", "-r", "all", "-f", "vhdx"]).arg(&vhdx));
    assert!(qemu_raw(&vhdx, dir.path()) == ours, "qemu's replay on disk reads as ours in memory");
}

#[test]
fn broken_vhdx_structures_are_one_line_errors() {
    let dir = tempdir();
    let good = to_vhdx(&corpus("aligned-dynamic.vhd"), dir.path(), "good.vhdx", "subformat=dynamic,block_size=1M");
    let bytes = std::fs::read(&good).unwrap();
    for (name, at, needles) in [
        ("both-headers.vhdx", vec![0x10000 + 100, 0x20000 + 100], &["VHDX headers", "CRC-32C"][..]),
        ("regions.vhdx", vec![0x30000 + 40, 0x40000 + 40], &["region table"][..]),
    ] {
        let mut b = bytes.clone();
        for x in at {
            b[x] ^= 0xff;
        }
        let path = dir.path().join(name);
        std::fs::write(&path, b).unwrap();
        assert_one_line_error(&run(bin("vhdinspect").arg("files").arg(&path)), name, needles);
    }
    // One damaged header: the other is used.
    let mut b = bytes.clone();
    b[0x10000 + 100] ^= 0xff;
    let one = dir.path().join("one-header.vhdx");
    std::fs::write(&one, b).unwrap();
    assert!(read_all(&open(&one)) == read_all(&open(&good)));
}

/// `vhdinspect check --json` of `image`: its exit code and the problems' structures.
fn check(image: &Path) -> (Option<i32>, Vec<String>) {
    let out = run(bin("vhdinspect").args(["check", "--json"]).arg(image));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let structures =
        report["findings"].as_array().unwrap().iter().map(|p| p["structure"].as_str().unwrap().to_string()).collect();
    (out.status.code(), structures)
}

#[test]
fn dump_decodes_every_vhdx_structure_and_check_finds_at_least_what_qemu_finds() {
    let dir = tempdir();
    let good = to_vhdx(&corpus("aligned-dynamic.vhd"), dir.path(), "good.vhdx", "subformat=dynamic,block_size=1M");
    let dump: serde_json::Value =
        serde_json::from_slice(&run_ok(bin("vhdinspect").args(["dump", "--json", "--blocks"]).arg(&good))).unwrap();
    let v = &dump["vhdx"];
    assert_eq!(dump["container"], "vhdx");
    assert_eq!(v["headers"].as_array().unwrap().iter().filter(|h| h["current"] == true).count(), 1);
    for hex in v["headers_hex"].as_array().unwrap() {
        assert!(hex.as_str().unwrap().starts_with("68656164"), "each header's raw bytes start with `head`");
    }
    assert!(v["region_table_hex"].as_str().unwrap().starts_with("72656769"));
    assert!(v["metadata_table_hex"].as_str().unwrap().starts_with("6d65746164617461"));
    let names: Vec<&str> = v["regions"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"BAT") && names.contains(&"metadata"));
    assert_eq!(v["parameters"]["block_size"], 1 << 20);
    assert_eq!(v["log"]["pending_entries"], 0);
    let states = v["bat"]["states"].as_array().unwrap();
    assert_eq!(
        states.iter().map(|s| s["blocks"].as_u64().unwrap()).sum::<u64>(),
        v["bat"]["payload_blocks"].as_u64().unwrap()
    );
    let (header_at, _, bat_at) = header_and_bat(&good);
    let bat = std::fs::read(&good).unwrap()[bat_at as usize..bat_at as usize + 4096].to_vec();
    let entries: Vec<u64> = bat.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
    let stored: Vec<usize> = (0..entries.len()).filter(|&i| entries[i] & 7 == 6).collect();
    assert_eq!(v["blocks"].as_array().unwrap().len(), stored.len(), "--blocks lists every stored block");
    assert_eq!(v["blocks"][0]["file_offset"].as_u64().unwrap(), entries[stored[0]] & !0xFFFFF);
    assert_eq!(check(&good), (Some(0), vec![]));
    run_ok(Command::new("qemu-img").args(["check", "-f", "vhdx"]).arg(&good));

    let broken = |name: &str, patch: &dyn Fn(&mut Vec<u8>)| {
        let mut b = std::fs::read(&good).unwrap();
        patch(&mut b);
        let path = dir.path().join(name);
        std::fs::write(&path, b).unwrap();
        path
    };
    let set_entry = |b: &mut Vec<u8>, i: usize, value: u64| {
        let at = bat_at as usize + 8 * i;
        b[at..at + 8].copy_from_slice(&value.to_le_bytes());
    };
    // The header not in use damaged: a finding, the other header still reads the disk.
    let other = if header_at == 0x10000 { 0x20000 } else { 0x10000 };
    let one = broken("one-header.vhdx", &|b| b[other + 100] ^= 0xff);
    assert_eq!(check(&one), (Some(1), vec![format!("VHDX header {}", if other == 0x10000 { 1 } else { 2 })]));
    // A block past the end of the file: qemu-img check calls it corrupt, and so does vhdinspect
    // check, naming the entry. Two blocks at one offset: qemu-img check misses it, we do not.
    let len = std::fs::metadata(&good).unwrap().len();
    let past = broken("past-end.vhdx", &|b| set_entry(b, stored[0], (len + (1 << 20)) | 6));
    // (Block 0 holds the partition table, so the disk's contents are unreadable too.)
    let (code, problems) = check(&past);
    assert_eq!((code, problems[0].as_str()), (Some(1), "VHDX BAT entry"), "{problems:?}");
    assert!(!run(Command::new("qemu-img").args(["check", "-f", "vhdx"]).arg(&past)).status.success());
    let dup = broken("overlap.vhdx", &|b| set_entry(b, stored[1], entries[stored[0]]));
    let (code, problems) = check(&dup);
    assert_eq!((code, problems[0].as_str()), (Some(1), "VHDX layout"), "{problems:?}");
    // Reading the broken block (the partition table's) is a one-line error naming the entry.
    assert_eq!(stored[0], 0);
    let out = run(bin("vhdinspect").arg("files").arg(&past));
    assert_one_line_error(&out, "past-end.vhdx", &["VHDX BAT entry", &format!("{:#x}", bat_at + 8 * stored[0] as u64)]);
}

#[test]
fn registry_writes_into_a_vhdx_are_read_back_by_hivex_through_qemu() {
    let dir = tempdir();
    let Some(h) = hives(dir.path()) else { return };
    let vhd = windows_image(dir.path(), &h);
    let vhdx = to_vhdx(&vhd, dir.path(), "win.vhdx", "subformat=dynamic,block_size=1M");
    // A value of 3 MiB: the hive grows into clusters whose blocks the VHDX does not store yet.
    let data = dir.path().join("big.bin");
    std::fs::write(&data, (0..3u32 << 20).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>()).unwrap();
    let key = r"HKLM\SYSTEM\ControlSet001\Control\ComputerName\ComputerName";
    run_ok(bin("vhdreg").arg(&vhdx).args(["set", key, "ComputerName", "--type", "REG_SZ", "--data", "VHDX-HOST"]));
    run_ok(bin("vhdreg").arg(&vhdx).args(["set", key, "Blob", "--type", "REG_BINARY", "--data-file"]).arg(&data));
    run_ok(Command::new("qemu-img").args(["check", "-f", "vhdx"]).arg(&vhdx));
    let raw = dir.path().join("win.raw");
    run_ok(Command::new("qemu-img").args(["convert", "-f", "vhdx", "-O", "raw"]).arg(&vhdx).arg(&raw));
    let system = copy_out(&raw, &[SYSTEM], dir.path()).remove(0);
    assert_eq!(
        hivexget(&system, r"\ControlSet001\Control\ComputerName\ComputerName", "ComputerName").trim(),
        "VHDX-HOST"
    );
    let export = hivex_export(&system, r"\ControlSet001\Control\ComputerName\ComputerName");
    assert!(reg_hex_value(&export, "Blob") == std::fs::read(&data).unwrap(), "hivex reads the 3 MiB value whole");
    // The log is clear again: qemu opens it read-only, which it refuses for a dirty log.
    run_ok(Command::new("qemu-img").args(["info", "-f", "vhdx"]).arg(&vhdx));
}

#[test]
fn a_registry_write_into_a_vhdx_killed_at_any_write_is_rolled_back_whole() {
    let dir = tempdir();
    let Some(h) = hives(dir.path()) else { return };
    let vhd = windows_image(dir.path(), &h);
    let vhdx = to_vhdx(&vhd, dir.path(), "win.vhdx", "subformat=dynamic,block_size=1M");
    let original = std::fs::read(&vhdx).unwrap();
    let key = r"HKLM\SYSTEM\ControlSet001\Control\ComputerName\ComputerName";
    let set = ["set", key, "ComputerName", "--type", "REG_SZ", "--data", "KILLED"];
    let work = dir.path().join("work.vhdx");
    let mut n = 1;
    loop {
        std::fs::write(&work, &original).unwrap();
        let o = run(bin("vhdreg").arg(&work).args(set).env("VHDKIT_FAULT_AFTER_WRITES", n.to_string()));
        if o.status.success() {
            break;
        }
        // The next writer rolls the interrupted write back; the image is then the original.
        run_ok(bin("vhdreg").arg(&work).arg("recover"));
        assert!(std::fs::read(&work).unwrap() == original, "killed before write {n}: not rolled back whole");
        n += 1;
        assert!(n < 500, "no run finished");
    }
    run_ok(Command::new("qemu-img").args(["check", "-f", "vhdx"]).arg(&work));
    eprintln!(
        "FIGURE: vhdreg set into a VHDX killed before each of its {} writes: rolled back whole every time",
        n - 1
    );
}

#[test]
fn in_place_compaction_of_a_vhdx_shrinks_it_and_keeps_every_file() {
    let dir = tempdir();
    let input = corpus("xp-fixed.vhd");
    let want = image_file_hashes(&input);
    let vhdx = to_vhdx(&input, dir.path(), "xp.vhdx", "subformat=dynamic,block_size=1M");
    let before = std::fs::metadata(&vhdx).unwrap().len();
    let headers_before = header_and_bat(&vhdx).1;
    let r = run(bin("vhdcompact").arg(&vhdx).args(["--in-place", "--zero-free", "--verify", "--json"]));
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let report: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert!(report["verify"]["mismatches"].as_array().unwrap().is_empty());
    assert!(report["dropped_blocks"].as_u64().unwrap() > 0, "{report}");
    assert!(std::fs::metadata(&vhdx).unwrap().len() < before, "the file shrank");
    run_ok(Command::new("qemu-img").args(["check", "-f", "vhdx"]).arg(&vhdx));
    let raw = dir.path().join("after.raw");
    run_ok(Command::new("qemu-img").args(["convert", "-f", "vhdx", "-O", "raw"]).arg(&vhdx).arg(&raw));
    assert_eq!(image_file_hashes(&raw), want);
    // The headers name a new data write GUID (children of the old data would be stale) and
    // no log.
    let after = header_and_bat(&vhdx).1;
    assert_ne!(after[32..48], headers_before[32..48], "data write GUID");
    assert!(after[48..64].iter().all(|&b| b == 0), "log GUID cleared");
}

/// The disk of `image` as libvhdi (pyvhdi) reads it: an independent reader that, unlike
/// qemu, knows 4Kn VHDX.
fn libvhdi_raw(image: &Path, out: &Path) {
    let script = "import pyvhdi,sys\nf=pyvhdi.file(); f.open(sys.argv[1])\no=open(sys.argv[2],'wb')\nat=0\nwhile at<f.media_size:\n    b=f.read_buffer_at_offset(min(1<<20,f.media_size-at),at); o.write(b); at+=len(b)\n";
    run_ok(Command::new("python3").args(["-c", script]).arg(image).arg(out));
}

/// An NTFS volume of 4096-byte sectors and clusters made by mkntfs, with `hidden` sectors
/// before it and a few files written through ntfs-3g.
fn ntfs_4k_volume(dir: &Path, sectors: u64, hidden: u64) -> PathBuf {
    let vol = dir.join(format!("vol{hidden}.img"));
    std::fs::File::create(&vol).unwrap().set_len(sectors * 4096).unwrap();
    run_ok(
        Command::new("mkntfs")
            .args(["-F", "-Q", "-q", "-s", "4096", "-c", "4096", "-H", "0", "-S", "0", "-p"])
            .arg(hidden.to_string())
            .arg(&vol),
    );
    with_ntfs3g(&vol, false, |mnt| {
        std::fs::create_dir(mnt.join("dir")).unwrap();
        std::fs::write(mnt.join("dir/small.txt"), b"four k sectors\n").unwrap();
        for i in 1..4u32 {
            std::fs::write(
                mnt.join(format!("file{i}.bin")),
                (0..i * 300_000).map(|x| (x * 31 % 253) as u8).collect::<Vec<u8>>(),
            )
            .unwrap();
        }
        std::fs::write(mnt.join("deleted.bin"), vec![0x5A; 5 << 20]).unwrap();
        std::fs::remove_file(mnt.join("deleted.bin")).unwrap();
    });
    vol
}

/// A raw disk of 4096-byte sectors: `table` partitions it, then `vol` is copied to sector `start`.
fn raw_4k_disk(dir: &Path, name: &str, sectors: u64, start: u64, vol: &Path, table: &dyn Fn(&Path)) -> PathBuf {
    let disk = dir.join(name);
    std::fs::File::create(&disk).unwrap().set_len(sectors * 4096).unwrap();
    table(&disk);
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&std::fs::read(vol).unwrap(), start * 4096).unwrap();
    disk
}

#[test]
fn a_4kn_disk_works_as_one_of_512_byte_sectors() {
    let dir = tempdir();
    let d = dir.path();
    // GPT by fdisk with 4096-byte sectors (the partition at sector 256); an MBR whose partition
    // starts at sector 63, as an old tool would place it.
    let gpt_vol = ntfs_4k_volume(d, 11776, 256);
    let gpt = raw_4k_disk(d, "gpt.raw", 12288, 256, &gpt_vol, &|disk| {
        let mut fdisk = Command::new("fdisk")
            .args(["-b", "4096"])
            .arg(disk)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        fdisk.stdin.take().unwrap().write_all(b"g\nn\n1\n256\n12031\nt\n11\nw\n").unwrap();
        assert!(fdisk.wait().unwrap().success());
    });
    let mbr_vol = ntfs_4k_volume(d, 12224, 63);
    let mbr = raw_4k_disk(d, "mbr.raw", 12288, 63, &mbr_vol, &|disk| {
        let mut sfdisk =
            Command::new("sfdisk").arg("-q").arg(disk).stdin(std::process::Stdio::piped()).spawn().unwrap();
        use std::io::Write;
        sfdisk.stdin.take().unwrap().write_all(b"start=63, size=12224, type=7\n").unwrap();
        assert!(sfdisk.wait().unwrap().success());
    });
    for (raw, vol, start, realign) in [(&gpt, &gpt_vol, 256, false), (&mbr, &mbr_vol, 63, true)] {
        let want = ntfs3g_hashes(vol);
        let name = raw.file_stem().unwrap().to_string_lossy().to_string();
        // A raw 4Kn disk is recognised as one, and converts to a 4Kn VHDX (our writer; qemu-img
        // makes none), realigned to 1 MiB on the way for the MBR disk.
        let vhdx = d.join(format!("{name}.vhdx"));
        let mut compact = bin("vhdcompact");
        compact.arg(raw).arg(&vhdx);
        if realign {
            compact.arg("--realign");
        }
        run_ok(&mut compact);
        let dump: serde_json::Value =
            serde_json::from_slice(&run_ok(bin("vhdinspect").args(["dump", "--json"]).arg(&vhdx))).unwrap();
        assert_eq!(dump["vhdx"]["parameters"]["logical_sector_size"], 4096);
        assert_eq!(dump["partition_table"]["sector_size"], 4096);
        let new_start = if realign { 256 } else { start };
        assert_eq!(dump["partitions"][0]["start_lba"], new_start);
        assert_eq!(check(&vhdx), (Some(0), vec![]));
        // libvhdi reads our VHDX; Sleuth Kit finds the partition and the files in its export,
        // ntfs-3g every file's bytes.
        let export = d.join(format!("{name}.export"));
        libvhdi_raw(&vhdx, &export);
        let mmls = String::from_utf8(run_ok(Command::new("mmls").args(["-b", "4096"]).arg(&export))).unwrap();
        assert!(mmls.lines().any(|l| l.split_whitespace().nth(2) == Some(&format!("{new_start:010}"))), "{mmls}");
        let fls = String::from_utf8(run_ok(
            Command::new("fls").args(["-r", "-p", "-b", "4096", "-o", &new_start.to_string()]).arg(&export),
        ))
        .unwrap();
        let ours = String::from_utf8(run_ok(bin("vhdinspect").args(["files", "--json"]).arg(&vhdx))).unwrap();
        for f in ["dir/small.txt", "file1.bin", "file3.bin"] {
            assert!(fls.contains(f) && ours.contains(f), "{f} listed by fls and by vhdinspect files");
        }
        let part = d.join(format!("{name}.part"));
        let bytes = std::fs::read(&export).unwrap();
        let (a, n) = (new_start as usize * 4096, std::fs::metadata(vol).unwrap().len() as usize);
        std::fs::write(&part, &bytes[a..a + n]).unwrap();
        assert_eq!(ntfs3g_hashes(&part), want, "{name}: every file as ntfs-3g reads it");
        if realign {
            let boot = &bytes[a..a + 512];
            assert_eq!(u32::from_le_bytes(boot[0x1c..0x20].try_into().unwrap()), 256, "hidden sectors follow the move");
        }
        // Where a sector is: sector numbers count 4096 bytes.
        let owner: serde_json::Value = serde_json::from_slice(&run_ok(
            bin("vhdinspect").args(["owner", "--json", "--sector"]).arg(new_start.to_string()).arg(&vhdx),
        ))
        .unwrap();
        assert_eq!(owner["disk_offset"], new_start * 4096);
        assert_eq!(owner["partition"], 1);
        // cat reads a file through the 4Kn container.
        let cat = run_ok(bin("vhdinspect").args(["cat"]).arg(&vhdx).arg("file3.bin"));
        assert_eq!(sha256(&cat), want["file3.bin"]);
        // Compaction in place keeps every file.
        run_ok(bin("vhdcompact").arg(&vhdx).args(["--in-place", "--zero-free"]));
        libvhdi_raw(&vhdx, &export);
        std::fs::write(&part, &std::fs::read(&export).unwrap()[a..a + n]).unwrap();
        assert_eq!(ntfs3g_hashes(&part), want, "{name}: every file after --in-place");
        // A VHD holds only 512-byte sectors: converting is refused by name.
        let out = run(bin("vhdcompact").arg(&vhdx).arg(d.join(format!("{name}.vhd"))));
        assert_one_line_error(&out, &format!("{name}.vhdx"), &["4096-byte sectors", "VHD"]);
        assert!(!d.join(format!("{name}.vhd")).exists());
    }
}

/// Payload blocks a VHDX stores (fully or partially present), as its dump counts them.
fn stored_blocks(vhdx: &Path) -> u64 {
    let dump: serde_json::Value =
        serde_json::from_slice(&run_ok(bin("vhdinspect").args(["dump", "--json"]).arg(vhdx))).unwrap();
    dump["vhdx"]["bat"]["states"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "fully_present" || s["state"] == "partially_present")
        .map(|s| s["blocks"].as_u64().unwrap())
        .sum()
}

#[test]
fn what_if_predicts_what_compaction_keeps_at_every_block_size() {
    let dir = tempdir();
    let d = dir.path();
    let big = to_vhdx(&corpus("xp-fixed.vhd"), d, "big.vhdx", "subformat=dynamic,block_size=32M");
    let lines = run_ok(bin("vhdcompact").arg("--what-if").arg(&big).arg("--json"));
    let w: serde_json::Value = serde_json::from_slice(&lines).unwrap();
    let sizes = w["block_sizes"].as_array().unwrap();
    assert_eq!(
        sizes.iter().map(|k| k["block_size"].as_u64().unwrap() >> 20).collect::<Vec<_>>(),
        [32, 16, 8, 4, 2, 1],
        "the image's block size, then each smaller one down to 1 MiB"
    );
    assert_eq!(w["reclaimable_with_smallest_blocks"], sizes[5]["freed_bytes"]);
    // `map` says the same, block by block.
    let map: serde_json::Value =
        serde_json::from_slice(&run_ok(bin("vhdinspect").args(["map", "--json"]).arg(&big))).unwrap();
    assert_eq!(&map["summary"]["block_sizes"], &w["block_sizes"]);
    for b in map["blocks"].as_array().unwrap() {
        let f = b["used_fraction"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&f) && (f > 0.0) == (b["droppable"] == false), "{b}");
    }
    // Compaction at each block size keeps exactly the blocks predicted, but for those whose
    // needed bytes all read as zeros (it drops them too; --what-if reads no cluster data).
    for k in sizes {
        let bs = k["block_size"].as_u64().unwrap();
        let out = d.join(format!("out-{}.vhdx", bs >> 20));
        let report: serde_json::Value = serde_json::from_slice(&run_ok(bin("vhdcompact").arg(&big).arg(&out).args([
            "--json",
            "--block-size",
            &bs.to_string(),
        ])))
        .unwrap();
        let zero = report["dropped_zero_blocks"].as_u64().unwrap();
        assert_eq!(stored_blocks(&out) + zero, k["kept_blocks"].as_u64().unwrap(), "{} MiB blocks", bs >> 20);
        let on_disk = std::fs::metadata(&out).unwrap().len();
        assert!(on_disk <= k["kept_bytes"].as_u64().unwrap() + (8 << 20), "{} MiB blocks: {on_disk} bytes", bs >> 20);
        std::fs::remove_file(&out).unwrap();
    }
    // A fleet: a directory of images read in parallel, a row each and a total; an unreadable
    // file is a row with its error and exit 1, the others still reported; nothing written.
    let fleet = d.join("fleet");
    std::fs::create_dir(&fleet).unwrap();
    for i in 0..12 {
        // Sparse copies: twelve whole ones were 1.2 GB of disk.
        copy_sparse(std::fs::File::open(&big).unwrap(), &fleet.join(format!("profile-{i:02}.vhdx")));
    }
    std::fs::write(fleet.join("broken.vhdx"), b"not a disk").unwrap();
    std::fs::write(fleet.join("notes.txt"), b"not an image either").unwrap();
    let before: Vec<String> =
        std::fs::read_dir(&fleet).unwrap().map(|e| sha256(&std::fs::read(e.unwrap().path()).unwrap())).collect();
    let out = run(bin("vhdcompact").arg("--what-if").arg(&fleet).arg("--json"));
    assert_eq!(out.status.code(), Some(1));
    let rows: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 13, "twelve images and the broken one; notes.txt is no image");
    assert!(rows[0]["error"].as_str().unwrap().contains("broken.vhdx"));
    for r in &rows[1..] {
        assert_eq!(r["reclaimable_with_smallest_blocks"], w["reclaimable_with_smallest_blocks"]);
    }
    let table = String::from_utf8(run(bin("vhdcompact").arg("--what-if").arg(&fleet)).stdout).unwrap();
    assert!(table.contains("total (13 images)"), "{table}");
    assert!(rows.iter().any(|r| r["file"].as_str().unwrap().ends_with("profile-11.vhdx")));
    let after: Vec<String> =
        std::fs::read_dir(&fleet).unwrap().map(|e| sha256(&std::fs::read(e.unwrap().path()).unwrap())).collect();
    assert_eq!(before, after, "--what-if writes nothing");
}

#[test]
fn every_command_works_on_a_differencing_vhdx_chain() {
    let dir = tempdir();
    let d = dir.path();
    let Some(h) = hives(d) else { return };
    let vhd = windows_image(d, &h);
    let parent = to_vhdx(&vhd, d, "parent.vhdx", "subformat=dynamic,block_size=2M");
    let want = image_file_hashes(&parent);
    let child = d.join("child.avhdx");
    let parent_img = open(&parent);
    vhdkit::vhdx::Vhdx::create(
        &child,
        vhdkit::vhdx::create::NewVhdx {
            size: 0,
            block_size: 2 << 20,
            logical_sector_size: 512,
            kind: vhdkit::vhdx::create::NewKind::Differencing { image: &parent_img, path: &parent },
            identity: Default::default(),
        },
    )
    .unwrap();
    drop(parent_img);
    let parent_sha = sha256(&std::fs::read(&parent).unwrap());
    // vhdreg writes into the child (copy-on-write); the parent is never written.
    run_ok(bin("vhdreg").arg(&child).args([
        "set",
        COMPUTER_NAME,
        "ComputerName",
        "--type",
        "REG_SZ",
        "--data",
        "AVHDX",
    ]));
    assert_eq!(sha256(&std::fs::read(&parent).unwrap()), parent_sha, "the parent was written");
    let get = |image: &Path| -> serde_json::Value {
        serde_json::from_slice(&run_ok(bin("vhdreg").arg(image).args(["get", COMPUTER_NAME, "ComputerName", "--json"])))
            .unwrap()
    };
    assert_eq!(get(&child)["data"], "AVHDX");
    assert_eq!(get(&parent)["data"], "WKS-WIN732BITA");
    // The read-only commands, on the child, as on a VHD.
    let json = |args: &[&str]| -> serde_json::Value {
        serde_json::from_slice(&run_ok(bin("vhdinspect").args(args).arg("--json").arg(&child))).unwrap()
    };
    assert!(json(&["diff"]).to_string().contains(SYSTEM), "diff names the hive the child holds");
    assert_eq!(json(&["check"])["findings"], serde_json::json!([]));
    assert_eq!(json(&["dump"])["parent"]["resolved_by"], "relative_path");
    assert!(json(&["files"]).to_string().contains("Users/alice/NTUSER.DAT"));
    assert!(json(&["map"])["summary"]["allocated_blocks"].as_u64().unwrap() > 0);
    assert!(!json(&["ranges"])["ranges"].as_array().unwrap().is_empty());
    assert!(json(&["align"])["partitions"].as_array().is_some_and(|p| !p.is_empty()));
    let owner: serde_json::Value =
        serde_json::from_slice(&run_ok(bin("vhdinspect").args(["owner", "--json", "--file", SYSTEM]).arg(&child)))
            .unwrap();
    assert!(owner["streams"].as_array().is_some_and(|s| !s.is_empty()));
    // Compaction: the chain merged into a standalone VHDX, which qemu-img accepts and ntfs-3g
    // reads (libvhdi misreads a differencing VHDX whose chunks have no sector bitmap block,
    // which the specification allows, so the chain is checked through the merge): the new
    // name in the hive, every other file as in the parent. cat reads the same hive.
    let merged = d.join("merged.vhdx");
    run_ok(bin("vhdcompact").arg(&child).arg(&merged).args(["--merge", "--verify"]));
    run_ok(Command::new("qemu-img").args(["check", "-f", "vhdx"]).arg(&merged));
    let merged_raw = d.join("merged.raw");
    run_ok(Command::new("qemu-img").args(["convert", "-f", "vhdx", "-O", "raw"]).arg(&merged).arg(&merged_raw));
    let [system] = copy_out(&merged_raw, &[SYSTEM], d).try_into().unwrap();
    assert_eq!(hivexget(&system, r"\ControlSet001\Control\ComputerName\ComputerName", "ComputerName"), "AVHDX");
    let mut merged_files = image_file_hashes(&merged_raw);
    let mut parent_files = want.clone();
    merged_files.get_mut(&1).unwrap().remove(SYSTEM);
    parent_files.get_mut(&1).unwrap().remove(SYSTEM);
    assert_eq!(merged_files, parent_files);
    let cat = run_ok(bin("vhdinspect").arg("cat").arg(&child).arg(SYSTEM));
    assert!(cat == std::fs::read(&system).unwrap(), "cat reads the hive through the chain");
    // The child compacted stays a child; the parent made an Azure VHD (fixed, whole MiB, no
    // holes) and a VHDX with free space zeroed.
    let kept_child = d.join("kept.avhdx");
    run_ok(bin("vhdcompact").arg(&child).arg(&kept_child));
    assert_eq!(open(&kept_child).kind(), vhdkit::ImageKind::Differencing);
    assert_eq!(get(&kept_child)["data"], "AVHDX");
    let azure = d.join("azure.vhd");
    run_ok(bin("vhdcompact").arg(&parent).arg(&azure).arg("--azure"));
    let len = std::fs::metadata(&azure).unwrap().len();
    assert_eq!((len - 512) % (1 << 20), 0, "N MiB + 512");
    assert!(std::fs::metadata(&azure).unwrap().blocks() * 512 >= len, "no host holes in an Azure VHD");
    assert_eq!(image_file_hashes(&azure), want);
    let zeroed = d.join("zeroed.vhdx");
    run_ok(bin("vhdcompact").arg(&parent).arg(&zeroed).args(["--zero-free", "--verify"]));
    assert_eq!(image_file_hashes(&zeroed), want);
}
