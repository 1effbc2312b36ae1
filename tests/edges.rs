//! The edges a new user hits: outputs that must never replace an input, files that are not
//! disks, volumes that are not NTFS, options that would silently do nothing, interrupted runs.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

fn copy_of(name: &str, dir: &Path) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(corpus(name), &to).unwrap();
    to
}

fn json(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(out)))
}

#[test]
fn no_output_ever_replaces_an_input() {
    let dir = tempdir();
    let img = copy_of("xp-fixed.vhd", dir.path());
    let before = sha256(&std::fs::read(&img).unwrap());
    let link = dir.path().join("link.svg");
    std::os::unix::fs::symlink(&img, &link).unwrap();
    let hard = dir.path().join("hard.vhd");
    std::fs::hard_link(&img, &hard).unwrap();
    for out in [&img, &link, &hard] {
        for force in [false, true] {
            let mut map = bin("vhdinspect");
            map.args(["map"]).arg(&img).arg("--svg").arg(out);
            let mut compact = bin("vhdcompact");
            compact.arg(&img).arg(out);
            let mut export = bin("vhdreg");
            export.arg(&img).args(["export", r"HKLM\SYSTEM\Select"]).arg(out);
            for cmd in [&mut map, &mut compact, &mut export] {
                if force {
                    cmd.arg("--force");
                }
                let o = run(cmd);
                assert_eq!(o.status.code(), Some(1), "{cmd:?}");
                let err = String::from_utf8_lossy(&o.stderr);
                // The export finds no hive in the corpus image first or refuses the output;
                // either way nothing is written.
                assert_eq!(err.trim_end().lines().count(), 1, "{err}");
            }
        }
    }
    assert_eq!(sha256(&std::fs::read(&img).unwrap()), before, "an input was overwritten");
    let o = run(bin("vhdinspect").args(["map"]).arg(&img).arg("--svg").arg(&hard));
    assert_one_line_error(&o, "hard.vhd", &["is the input", "same file"]);
    // A bare hive cannot become its own export either.
    let Some(sam) = realdata("Registry/Registry.Test/Hives/SAM") else { return };
    let hive = dir.path().join("SAM");
    std::fs::copy(sam, &hive).unwrap();
    let h = hive.to_str().unwrap();
    let o = run(bin("vhdinspect").args(["reg", "--hive-file", h, "export", r"SAM\Domains", h, "--force"]));
    assert_one_line_error(&o, "SAM", &["is the input"]);
    assert_eq!(std::fs::metadata(&hive).unwrap().len(), 262_144);
}

#[test]
fn an_existing_output_is_replaced_only_with_force_and_never_a_device_fifo_or_folder() {
    let dir = tempdir();
    let img = corpus("aligned-dynamic.vhd");
    let out = dir.path().join("out.vhd");
    std::fs::write(&out, b"precious").unwrap();
    let o = run(bin("vhdcompact").arg(&img).arg(&out));
    assert_one_line_error(&o, "out.vhd", &["exists", "--force"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    run_ok(bin("vhdcompact").arg(&img).arg(&out).arg("--force"));
    assert!(std::fs::metadata(&out).unwrap().len() > 1 << 20);
    // A link is neither replaced nor written through, even with --force: who planted it
    // would choose the file replaced.
    let kept = dir.path().join("kept.vhd");
    std::fs::write(&kept, b"old").unwrap();
    let link = dir.path().join("link.vhd");
    std::os::unix::fs::symlink(&kept, &link).unwrap();
    assert_one_line_error(&run(bin("vhdcompact").arg(&img).arg(&link)), "link.vhd", &["exists", "--force"]);
    let nowhere = dir.path().join("nowhere.vhd");
    std::os::unix::fs::symlink(dir.path().join("missing/x.vhd"), &nowhere).unwrap();
    for l in [&link, &nowhere] {
        let o = run(bin("vhdcompact").arg(&img).arg(l).arg("--force"));
        assert_one_line_error(&o, l.file_name().unwrap().to_str().unwrap(), &["symbolic link", "name the file itself"]);
        assert!(std::fs::symlink_metadata(l).unwrap().file_type().is_symlink(), "the link is kept");
    }
    assert_eq!(std::fs::read(&kept).unwrap(), b"old", "its file is untouched");
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    let to_fifo = dir.path().join("to-fifo");
    std::os::unix::fs::symlink(&fifo, &to_fifo).unwrap();
    for target in [Path::new("/dev/null"), &fifo, &folder, &to_fifo] {
        let o = run(bin("vhdcompact").arg(&img).arg(target).arg("--force"));
        assert_one_line_error(
            &o,
            target.file_name().unwrap().to_str().unwrap(),
            &["the output must be a regular file"],
        );
    }
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device_like());
    // Nothing was left behind in the folder.
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.ends_with(".partial")), "{names:?}");
}

trait CharDevice {
    fn is_char_device_like(&self) -> bool;
}

impl CharDevice for std::fs::FileType {
    fn is_char_device_like(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_char_device(self)
    }
}

#[test]
fn container_formats_are_recognised_never_taken_for_raw_disks() {
    let dir = tempdir();
    let img = corpus("aligned-dynamic.vhd");
    let mut made = Vec::new();
    // VHDX is read (tests/vhdx.rs); the other containers are named and refused.
    for (fmt, ext, what) in
        [("qcow2", "qcow2", "qcow"), ("vmdk", "vmdk", "VMDK sparse"), ("vdi", "vdi", "VirtualBox VDI")]
    {
        let out = dir.path().join(format!("x.{ext}"));
        run_ok(Command::new("qemu-img").args(["convert", "-f", "vpc", "-O", fmt]).arg(&img).arg(&out));
        made.push((out, what));
    }
    let descriptor = dir.path().join("desc.vmdk");
    std::fs::write(&descriptor, "# Disk DescriptorFile\nversion=1\nCID=fffffffe\n").unwrap();
    made.push((descriptor, "VMDK descriptor"));
    let gz = dir.path().join("x.vhd.gz");
    std::fs::copy(root().join("corpus/aligned-dynamic.vhd.gz"), &gz).unwrap();
    made.push((gz, "gzip"));
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello world\n").unwrap();
    made.push((text.clone(), "not a disk image"));
    for (file, what) in &made {
        let name = file.file_name().unwrap().to_str().unwrap();
        for cmd in [
            bin("vhdinspect").arg("check").arg(file),
            bin("vhdinspect").arg("dump").arg(file),
            bin("vhdcompact").arg(file).arg(dir.path().join("out.vhd")),
        ] {
            let o = run(cmd);
            assert_one_line_error(&o, name, &[what]);
        }
        assert!(!dir.path().join("out.vhd").exists());
    }
    // Told so, the user can read anything as a raw disk.
    let o = run(bin("vhdinspect").args(["dump", "--json", "--format", "raw"]).arg(&text));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A 64 MiB raw disk with FAT32, ext4, swap and an NTFS volume, plus a BitLocker and a ReFS
/// volume (their signatures over random data).
fn many_volumes(dir: &Path) -> PathBuf {
    let disk = dir.join("many.raw");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(96 << 20).unwrap();
    let table = "label: dos\nstart=2048, size=16384, type=c\nstart=18432, size=16384, type=83\n\
                 start=34816, size=8192, type=82\nstart=43008, type=5\n\
                 start=45056, size=16384, type=7\nstart=63488, size=8192, type=7\nstart=73728, type=7\n";
    let mut sf = Command::new("sfdisk").arg("-q").arg(&disk).stdin(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(sf.stdin.as_mut().unwrap(), table.as_bytes()).unwrap();
    assert!(sf.wait().unwrap().success());
    let part = |start: u64, sectors: u64, name: &str| -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().set_len(sectors * 512).unwrap();
        let _ = start;
        p
    };
    let put = |start: u64, p: &Path| {
        use std::os::unix::fs::FileExt;
        let data = std::fs::read(p).unwrap();
        std::fs::OpenOptions::new().write(true).open(&disk).unwrap().write_all_at(&data, start * 512).unwrap();
    };
    let fat = part(2048, 16384, "fat");
    run_ok(Command::new("mkfs.fat").args(["-F", "32", "-S", "512"]).arg(&fat));
    put(2048, &fat);
    let ext = part(18432, 16384, "ext");
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&ext));
    put(18432, &ext);
    let swap = part(34816, 8192, "swap");
    run_ok(Command::new("mkswap").arg(&swap));
    put(34816, &swap);
    let ntfs = part(45056, 16384, "ntfs");
    run_ok(Command::new("mkntfs").args(["-q", "-F", "-f", "-H", "0", "-S", "63", "-p", "45056"]).arg(&ntfs));
    put(45056, &ntfs);
    // BitLocker and ReFS: a boot sector with their signature, then data vhdkit cannot read.
    for (lba, sig) in [(63488u64, &b"-FVE-FS-"[..]), (73728, &b"ReFS\0\0\0\0"[..])] {
        let mut v: Vec<u8> = (0..8192u32 * 512).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
        v[3..11].copy_from_slice(sig);
        v[510] = 0x55;
        v[511] = 0xAA;
        // A stretch of zeros that a file-system-aware drop would take for free space.
        v[1 << 20..2 << 20].fill(0);
        let p = dir.join("opaque");
        std::fs::write(&p, &v).unwrap();
        put(lba, &p);
    }
    disk
}

#[test]
fn every_volume_is_named_for_what_it_is() {
    let dir = tempdir();
    let disk = many_volumes(dir.path());
    let dump = json(&run_ok(bin("vhdinspect").args(["dump", "--json"]).arg(&disk)));
    let detected: Vec<String> =
        dump["volumes"].as_array().unwrap().iter().map(|v| v["detected"].as_str().unwrap_or("-").to_string()).collect();
    assert_eq!(detected, ["fat32", "ext4", "linux_swap", "ntfs", "bitlocker", "refs"], "{dump}");
    let map = json(&run_ok(bin("vhdinspect").args(["map", "--json"]).arg(&disk)));
    let parts = map["summary"]["partitions"].as_array().unwrap();
    let contents: Vec<(&str, bool)> =
        parts.iter().map(|p| (p["contents"].as_str().unwrap(), p["kept_whole"].as_bool().unwrap())).collect();
    assert_eq!(
        contents,
        [
            ("fat32", false),
            ("ext4", false),
            ("linux_swap", false),
            ("ntfs", false),
            ("bitlocker", true),
            ("refs", true)
        ]
    );
    assert!(map["blocks"].as_array().unwrap().iter().any(|b| b["state"] == "kept_whole"));
    // Compaction keeps the opaque volumes byte for byte, zero stretch included.
    let out = dir.path().join("out.vhd");
    let report = json(&run_ok(bin("vhdcompact").arg(&disk).arg(&out).args(["--json", "--verify"])));
    assert_eq!(report["output_format"], "dynamic");
    let original = std::fs::read(&disk).unwrap();
    let copy = read_all(&open(&out));
    for (lba, len) in [(63488usize, 8192usize), (73728, 8192)] {
        assert!(copy[lba * 512..(lba + len) * 512] == original[lba * 512..(lba + len) * 512]);
    }
    // A disk without NTFS says so, on stderr, and names what it has.
    let fat_only = dir.path().join("fat.raw");
    std::fs::write(&fat_only, std::fs::read(dir.path().join("fat")).unwrap()).unwrap();
    let o = run(bin("vhdinspect").args(["files", "--json"]).arg(&fat_only));
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no NTFS volume (partition 1: FAT32)"));
    assert_eq!(json(&o.stdout)["filesystems"][0]["filesystem"], "fat32");
}

#[test]
fn compaction_says_what_it_does_and_refuses_what_cannot_change_anything() {
    let dir = tempdir();
    let fixed = corpus("xp-fixed.vhd");
    // A fixed input compacts to a dynamic image unless fixed is asked for.
    let out = dir.path().join("out.vhd");
    let r = json(&run_ok(bin("vhdcompact").arg(&fixed).arg(&out).arg("--json")));
    assert_eq!(r["output_format"], "dynamic");
    assert!(r["output_bytes"].as_u64() < r["input_bytes"].as_u64());
    // A fixed output claims no dropped block.
    let out2 = dir.path().join("out2.vhd");
    let r = json(&run_ok(bin("vhdcompact").arg(&fixed).arg(&out2).args(["--json", "--to", "fixed"])));
    assert_eq!(r["dropped_blocks"], 0);
    for p in r["partitions"].as_array().unwrap() {
        assert_eq!((&p["dropped_blocks"], &p["dropped_bytes"]), (&serde_json::json!(0), &serde_json::json!(0)), "{p}");
    }
    assert!(r["partitions"][0]["zero_filled_blocks"].as_u64().unwrap() > 0, "{r}");
    assert!(r["zero_filled_blocks"].as_u64().unwrap() > 0);
    let text =
        String::from_utf8(run_ok(bin("vhdcompact").arg(&fixed).arg(dir.path().join("o3.vhd")).args(["--to", "fixed"])))
            .unwrap();
    assert!(text.contains("none: a fixed image stores every block"), "{text}");
    // --merge of a standalone image, and in-place runs that would change nothing.
    let o = run(bin("vhdcompact").arg(&fixed).arg(dir.path().join("m.vhd")).arg("--merge"));
    assert_one_line_error(&o, "xp-fixed.vhd", &["not a differencing one"]);
    let work = copy_of("xp-fixed.vhd", dir.path());
    let o = run(bin("vhdcompact").arg(&work).arg("--in-place"));
    assert_one_line_error(&o, "xp-fixed.vhd", &["only its free space can be zeroed"]);
    let dynamic = dir.path().join("dyn.vhd");
    std::fs::copy(&out, &dynamic).unwrap();
    let o = run(bin("vhdcompact").arg(&dynamic).arg("--in-place"));
    assert_one_line_error(&o, "dyn.vhd", &["nothing to do"]);
    // `--realign 1M` would name the output "1M".
    let o = run(bin("vhdcompact").current_dir(dir.path()).arg(&fixed).args(["--realign", "1M"]));
    assert_usage_error(&o, "1M", &["looks like a size", "--realign=1M"]);
    assert!(!dir.path().join("1M").exists());
    for bad in ["3000", "2K", "1M1", "0"] {
        let o = run(bin("vhdinspect").args(["align", "--boundary", bad]).arg(&fixed));
        assert_eq!(o.status.code(), Some(2), "{bad}");
        let o = run(bin("vhdcompact").arg(&fixed).arg(dir.path().join("b.vhd")).arg(format!("--realign={bad}")));
        assert_eq!(o.status.code(), Some(2), "{bad}");
    }
    // An aligned partition is not reported as moved.
    let r = json(&run_ok(
        bin("vhdcompact")
            .arg(corpus("aligned-dynamic.vhd"))
            .arg(dir.path().join("a.vhd"))
            .args(["--realign", "--json"]),
    ));
    assert_eq!(r["realign"]["moves"].as_array().unwrap().len(), 0, "{}", r["realign"]);
}

#[test]
fn zero_free_in_place_clears_every_free_cluster_of_a_fixed_image() {
    let dir = tempdir();
    let img = copy_of("xp-fixed.vhd", dir.path());
    let (start, len) = partition_span(&img);
    let part = partition_image(&open(&img), 1, dir.path());
    // An 8 MiB file of a marker pattern, then deleted: its clusters are free, its bytes stay.
    let marker: Vec<u8> = b"DELETED-SECRET-".iter().copied().cycle().take(8 << 20).collect();
    with_ntfs3g(&part, false, |mnt| std::fs::write(mnt.join("secret.bin"), &marker).unwrap());
    with_ntfs3g(&part, false, |mnt| std::fs::remove_file(mnt.join("secret.bin")).unwrap());
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&std::fs::read(&part).unwrap(), start).unwrap();
    }
    let count = |data: &[u8]| data.windows(15).filter(|w| *w == b"DELETED-SECRET-").count();
    assert!(count(&std::fs::read(&img).unwrap()) > 400_000, "the stale data is there before");
    let files_before = image_file_hashes(&img);
    let r = json(&run_ok(bin("vhdcompact").arg(&img).args(["--in-place", "--zero-free", "--verify", "--json"])));
    assert!(r["zeroed_bytes"].as_u64().unwrap() >= 8 << 20);
    assert_eq!(count(&std::fs::read(&img).unwrap()), 0, "stale data of the deleted file is left");
    assert_eq!(image_file_hashes(&img), files_before);
    let _ = len;
    // A second run has nothing left to zero.
    let o = run(bin("vhdcompact").arg(&img).args(["--in-place", "--zero-free"]));
    assert_one_line_error(&o, "xp-fixed.vhd", &["already zero"]);
}

#[test]
fn an_azure_gpt_disk_gets_its_backup_table_at_the_new_end() {
    let dir = tempdir();
    let gpt = corpus("gpt-dynamic.vhd");
    let out = dir.path().join("azure.vhd");
    run_ok(bin("vhdcompact").arg(&gpt).arg(&out).args(["--azure", "--input-format", "vhd"]));
    let raw = dir.path().join("azure.raw");
    std::fs::write(&raw, read_all(&open(&out))).unwrap();
    let v = run(Command::new("sgdisk").arg("-v").arg(&raw));
    let said = String::from_utf8_lossy(&v.stdout);
    assert!(said.contains("No problems found"), "{said}");
    let check = run(bin("vhdinspect").arg("check").arg(&out));
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    // A disk that is not a whole number of MiB grows for Azure, and its backup table moves.
    let odd = dir.path().join("odd.raw");
    std::fs::File::create(&odd).unwrap().set_len((64 << 20) + 300 * 512).unwrap();
    run_ok(Command::new("sgdisk").args(["-o", "-n", "1:2048:+32M", "-t", "1:0700"]).arg(&odd));
    let out = dir.path().join("odd-azure.vhd");
    let r: serde_json::Value =
        serde_json::from_slice(&run_ok(bin("vhdcompact").arg(&odd).arg(&out).args(["--azure", "--json"]))).unwrap();
    assert_eq!(r["output_disk_size"], 65 << 20, "{r}");
    let raw = dir.path().join("odd-azure.raw");
    std::fs::write(&raw, read_all(&open(&out))).unwrap();
    let v = run(Command::new("sgdisk").arg("-v").arg(&raw));
    let said = String::from_utf8_lossy(&v.stdout);
    assert!(said.contains("No problems found"), "{said}");
    assert!(run(bin("vhdinspect").arg("check").arg(&out)).status.success());
    // A disk grown without moving the table is reported.
    let grown = dir.path().join("grown.raw");
    let mut data = read_all(&open(&gpt));
    data.resize(data.len() + (4 << 20), 0);
    std::fs::write(&grown, &data).unwrap();
    let check = run(bin("vhdinspect").args(["check", "--json"]).arg(&grown));
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stdout).contains("backup header"));
}

#[test]
fn realignment_keeps_the_table_s_own_geometry() {
    let dir = tempdir();
    let xp = corpus("xp-fixed.vhd");
    // The XP table: 0/1/1 to 8/40/32, written with 255 heads and 63 sectors.
    let out = dir.path().join("r.vhd");
    run_ok(bin("vhdcompact").arg(&xp).arg(&out).args(["--realign", "--to", "fixed"]));
    let mbr = &std::fs::read(&out).unwrap()[446..462];
    let chs = |b: &[u8]| ((b[1] as u16 & 0xC0) << 2 | b[2] as u16, b[0], b[1] & 0x3F);
    let lba = |(c, h, s): (u16, u8, u8)| (c as u64 * 255 + h as u64) * 63 + s as u64 - 1;
    let start = u32::from_le_bytes(mbr[8..12].try_into().unwrap()) as u64;
    let sectors = u32::from_le_bytes(mbr[12..16].try_into().unwrap()) as u64;
    assert_eq!(start, 2048);
    assert_eq!(lba(chs(&mbr[1..4])), 2048, "first CHS in 255 x 63");
    assert_eq!(lba(chs(&mbr[5..8])), 2048 + sectors - 1, "last CHS in 255 x 63");
}

#[test]
fn interrupted_runs_leave_no_temporary_output() {
    let dir = tempdir();
    // A large enough input that the run is still writing when the signal comes.
    let big = dir.path().join("big.vhd");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(512 << 20).unwrap();
    drop(f);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
        f.write_all_at(&[0x55, 0xAA], 510).unwrap();
        // Data everywhere, so every block is copied.
        let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 + 1).collect();
        for i in 1..512u64 {
            f.write_all_at(&chunk, i << 20).unwrap();
        }
    }
    let leftovers = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".partial"))
            .collect()
    };
    for (signal, code) in [("INT", 130), ("TERM", 143), ("HUP", 129)] {
        let out = dir.path().join(format!("out-{signal}.vhd"));
        let mut child = bin("vhdcompact").arg(&big).arg(&out).stderr(Stdio::piped()).spawn().unwrap();
        // Wait until the temporary output exists, then interrupt.
        assert!(wait_until(30, || !leftovers(dir.path()).is_empty()), "no temporary output appeared");
        assert!(Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status().unwrap().success());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "{signal}: 128 + the signal's number, as a shell reports it");
        assert!(leftovers(dir.path()).is_empty(), "{signal} left {:?}", leftovers(dir.path()));
        assert!(!out.exists());
    }
    // A killed run leaves its temporary file; the next run in the folder removes it and says so.
    let out = dir.path().join("out-kill.vhd");
    let mut child = bin("vhdcompact").arg(&big).arg(&out).stderr(Stdio::null()).spawn().unwrap();
    assert!(wait_until(30, || !leftovers(dir.path()).is_empty()));
    child.kill().unwrap();
    child.wait().unwrap();
    let left = leftovers(dir.path());
    assert_eq!(left.len(), 1);
    let o = run(bin("vhdcompact").arg(corpus("aligned-dynamic.vhd")).arg(dir.path().join("next.vhd")));
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("removed {}", dir.path().join(&left[0]).display())));
    assert!(leftovers(dir.path()).is_empty());
}

/// Polls `done` every 20 ms for up to `secs` seconds.
fn wait_until(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

#[test]
fn outputs_are_never_more_open_than_their_input() {
    let dir = tempdir();
    let img = copy_of("aligned-dynamic.vhd", dir.path());
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = dir.path().join("out.vhd");
    run_ok(bin("vhdcompact").arg(&img).arg(&out));
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    // The umask applies on top.
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = dir.path().join("out2.vhd");
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "umask 077 && exec {} {} {}",
        env!("CARGO_BIN_EXE_vhdcompact"),
        img.display(),
        out.display()
    )));
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn a_disk_without_a_partition_table_has_no_mbr() {
    // dfvfs's differencing pair: an ext2 volume with no partition table.
    let (Some(child), Some(parent)) =
        (realdata("dfvfs/test_data/image-differential.vhd"), realdata("dfvfs/test_data/image.vhd"))
    else {
        return;
    };
    let dir = tempdir();
    let c = dir.path().join("image-differential.vhd");
    std::fs::copy(child, &c).unwrap();
    std::fs::copy(parent, dir.path().join("image.vhd")).unwrap();
    let j = json(&run_ok(bin("vhdinspect").args(["diff", "--json"]).arg(&c)));
    let regions: Vec<&str> = j["unowned"].as_array().unwrap().iter().map(|u| u["region"].as_str().unwrap()).collect();
    assert!(!regions.contains(&"mbr"), "{regions:?}");
    let o = json(&run_ok(bin("vhdinspect").args(["owner", "--json", "--sector", "0"]).arg(&c)));
    assert_ne!(o["region"], "mbr");
    assert_eq!(o["filesystem"], "ext2");
}
