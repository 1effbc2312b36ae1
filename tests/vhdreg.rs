//! `vhdreg` and `vhdinspect reg` against independent tools: hives written inside images are
//! copied out by ntfs-3g and read by hivex (`hivexget`, `hivexregedit --export`); every other
//! file of the volume hashes as before; interrupted runs roll back.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn vhdreg(args: &[&str]) -> Output {
    run(bin("vhdreg").args(args))
}

fn vhdreg_ok(args: &[&str]) -> String {
    let out = vhdreg(args);
    assert!(out.status.success(), "vhdreg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn bare_hive_values_of_every_type_read_back_with_hivex() {
    let dir = tempdir();
    let Some(h) = hives(dir.path()) else { return };
    let hive = dir.path().join("SYSTEM");
    std::fs::copy(&h.system, &hive).unwrap();
    let f = hive.to_str().unwrap();
    let before = hivex_export(&hive, "\\");
    let key = r"vhdkit\Test";
    let big: String = (0..40_000).map(|i| format!("{:02x}", i % 251)).collect();
    for (name, ty, data) in [
        ("S", "REG_SZ", vec!["hello wörld"]),
        ("E", "REG_EXPAND_SZ", vec![r"%SystemRoot%\x"]),
        ("D", "REG_DWORD", vec!["0x2a"]),
        ("Q", "REG_QWORD", vec!["0x123456789abcdef0"]),
        ("M", "REG_MULTI_SZ", vec!["one", "two"]),
        ("Big", "REG_BINARY", vec![big.as_str()]),
        ("@", "REG_SZ", vec!["default"]),
    ] {
        let mut args = vec!["--hive-file", f, "set", key, name, "--type", ty];
        for d in &data {
            args.extend(["--data", d]);
        }
        vhdreg_ok(&args);
    }
    assert_eq!(hivexget(&hive, "\\vhdkit\\Test", "S"), "hello wörld");
    assert_eq!(hivexget(&hive, "\\vhdkit\\Test", "D"), "42");
    assert_eq!(hivexget(&hive, "\\vhdkit\\Test", "Q"), "1311768467463790320");
    assert_eq!(hivexget(&hive, "\\vhdkit\\Test", "M"), "one\ntwo");
    assert_eq!(hivexget(&hive, "\\vhdkit\\Test", "@"), "default");
    let export = hivex_export(&hive, "\\vhdkit\\Test");
    assert!(reg_hex_value(&export, "Big") == hex::decode(&big).unwrap(), "the big-data value reads back whole");
    // Everything else is as it was.
    let after = hivex_export(&hive, "\\");
    assert_eq!(without_key(&after, "HKEY_LOCAL_MACHINE\\SYSTEM\\vhdkit"), before);
    // Our own reader agrees, in JSON.
    let got: serde_json::Value =
        serde_json::from_str(&vhdreg_ok(&["--hive-file", f, "get", key, "M", "--json"])).unwrap();
    assert_eq!(
        got,
        serde_json::json!({
            "schema_version": 2, "key": key, "name": "M", "type": 7, "type_name": "REG_MULTI_SZ", "data": ["one", "two"],
            "stale": null
        })
    );
    let got: serde_json::Value =
        serde_json::from_str(&vhdreg_ok(&["--hive-file", f, "get", key, "D", "--json"])).unwrap();
    assert_eq!(got["data"], 42);
    // Deletions free what they held; the hive is as before.
    vhdreg_ok(&["--hive-file", f, "delete", key, "Big"]);
    assert!(!run(Command::new("hivexget").arg(&hive).arg("\\vhdkit\\Test").arg("Big")).status.success());
    vhdreg_ok(&["--hive-file", f, "delete", "vhdkit"]);
    assert_eq!(hivex_export(&hive, "\\"), before);
    // Deleting what is absent is an error on the command line.
    let out = vhdreg(&["--hive-file", f, "delete", "vhdkit"]);
    assert_one_line_error(&out, "vhdkit", &["no such key"]);
    // The base block is sealed: sequence numbers equal, checksum valid (nt-hive checks both).
    let bytes = std::fs::read(&hive).unwrap();
    assert_eq!(bytes[4..8], bytes[8..12]);
    let parsed = nt_hive::Hive::new(bytes.as_slice()).unwrap();
    assert!(parsed.root_key_node().unwrap().subkey("Select").is_some());
}

#[test]
fn image_hive_set_reads_back_through_ntfs3g_and_hivex() {
    let dir = tempdir();
    let Some(h) = hives(dir.path()) else { return };
    let image = windows_image(dir.path(), &h);
    let im = image.to_str().unwrap();
    let mut files_before = image_file_hashes(&image);
    let old = vhdreg_ok(&[im, "get", COMPUTER_NAME, "ComputerName", "--json"]);
    assert!(old.contains("WKS-WIN732BITA"), "{old}");
    // --dry-run names the change and writes nothing.
    let hash = sha256(&std::fs::read(&image).unwrap());
    let dry =
        vhdreg_ok(&["--dry-run", im, "set", COMPUTER_NAME, "ComputerName", "--type", "REG_SZ", "--data", "BUILD-01"]);
    assert!(dry.contains("would set") && dry.contains("sectors to write"), "{dry}");
    assert_eq!(sha256(&std::fs::read(&image).unwrap()), hash);
    let after =
        vhdreg_ok(&[im, "set", COMPUTER_NAME, "ComputerName", "--type", "REG_SZ", "--data", "BUILD-01", "--dry-run"]);
    assert_eq!(after, dry, "--dry-run after the command is the same");
    assert_eq!(sha256(&std::fs::read(&image).unwrap()), hash);
    let report: serde_json::Value = serde_json::from_str(&vhdreg_ok(&[
        im,
        "set",
        COMPUTER_NAME,
        "ComputerName",
        "--type",
        "REG_SZ",
        "--data",
        "BUILD-01",
        "--json",
    ]))
    .unwrap();
    assert_eq!(report["hives"][0]["hive"], SYSTEM);
    assert_eq!(report["hives"][0]["new_clusters"], 0);
    assert!(report["hives"][0]["sectors_changed"].as_u64().unwrap() >= 1);
    // vhdinspect reads it; so do ntfs-3g + hivex.
    let got =
        String::from_utf8(run_ok(bin("vhdinspect").args(["reg", im, "get", COMPUTER_NAME, "ComputerName"]))).unwrap();
    assert!(got.contains("BUILD-01"), "{got}");
    let [system] = copy_out(&image, &[SYSTEM], dir.path()).try_into().unwrap();
    assert_eq!(hivexget(&system, "\\ControlSet001\\Control\\ComputerName\\ComputerName", "ComputerName"), "BUILD-01");
    // Every file but the hive hashes as before.
    let mut files_after = image_file_hashes(&image);
    let (mut before, after) = (files_before.remove(&1).unwrap(), files_after.get_mut(&1).unwrap());
    assert_ne!(before.remove(SYSTEM), after.remove(SYSTEM));
    assert_eq!(&before, after);
    assert!(!vhdkit::host::journal::journal_path(&image).exists(), "the journal is removed");
    // A user's hive is found by name; so are SAM and the BCD store, each as hivex reads it.
    let user = vhdreg_ok(&[im, "list", r"HKU\alice\Software"]);
    assert!(user.contains("[Microsoft]"), "{user}");
    for (key, file, inner) in
        [(r"HKLM\SAM\SAM\Domains", &h.sam, r"\SAM\Domains"), (r"HKLM\BCD00000000\Objects", &h.bcd, r"\Objects")]
    {
        let ours: serde_json::Value = serde_json::from_str(&vhdreg_ok(&[im, "list", key, "--json"])).unwrap();
        let names: Vec<&str> =
            ours["subkeys"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
        let theirs = hivexsh(file, &format!("cd {inner}\nls\n"));
        assert!(!names.is_empty());
        assert_eq!(names, theirs.lines().collect::<Vec<_>>(), "{key}");
    }
}

#[test]
fn a_hive_that_outgrows_its_clusters_is_extended_in_ntfs() {
    let dir = tempdir();
    let Some(h) = hives(dir.path()) else { return };
    let image = windows_image(dir.path(), &h);
    let im = image.to_str().unwrap();
    let files_json = |image: &Path| -> serde_json::Value {
        serde_json::from_slice(&run_ok(bin("vhdinspect").args(["files", "--json"]).arg(image))).unwrap()
    };
    let consistency_before = files_json(&image)["volumes"][0]["consistency"].clone();
    let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let blob_file = dir.path().join("blob.bin");
    std::fs::write(&blob_file, &blob).unwrap();
    let report: serde_json::Value = serde_json::from_str(&vhdreg_ok(&[
        im,
        "set",
        r"HKLM\SYSTEM\vhdkit",
        "Blob",
        "--type",
        "REG_BINARY",
        "--data-file",
        blob_file.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    let hive = &report["hives"][0];
    assert!(hive["new_clusters"].as_u64().unwrap() >= 3_000_000 / 4096, "{hive}");
    assert!(hive["bytes_after"].as_u64() > hive["bytes_before"].as_u64());
    let patches = hive["ntfs_patches"].to_string();
    assert!(patches.contains("MFT record") && patches.contains("$Bitmap") && patches.contains("$I30"), "{patches}");
    // ntfs-3g mounts the volume and reads the grown hive whole; hivex reads the value.
    let [system] = copy_out(&image, &[SYSTEM], dir.path()).try_into().unwrap();
    assert_eq!(std::fs::metadata(&system).unwrap().len(), hive["bytes_after"].as_u64().unwrap());
    let export = hivex_export(&system, "\\vhdkit");
    assert!(reg_hex_value(&export, "Blob") == blob, "hivex reads the value back whole");
    // The directory listing (the $I30 entry) shows the new size to Sleuth Kit as well.
    let (start, _) = partition_span(&image);
    let fls = String::from_utf8(run_ok(
        Command::new("fls").args(["-r", "-p", "-o"]).arg((start / 512).to_string()).arg(&image),
    ))
    .unwrap();
    assert!(fls.contains(SYSTEM), "{fls}");
    // Our own index sees the new clusters as allocated and owned by the hive only.
    let check = files_json(&image);
    assert_eq!(check["volumes"][0]["consistency"], consistency_before);
    let sys = check["files"].as_array().unwrap().iter().find(|f| f["path"] == SYSTEM).unwrap();
    assert_eq!(sys["size"], hive["bytes_after"]);
    // Everything else is untouched.
    let other = image_file_hashes(&image);
    assert!(other[&1].contains_key("Users/alice/NTUSER.DAT"));
}

#[test]
fn a_differencing_child_takes_the_write_and_its_parent_stays() {
    let dir = tempdir();
    let Some(h) = hives(dir.path()) else { return };
    let parent = dynamic_windows_image(dir.path(), &h);
    let child = dir.path().join("child.vhd");
    let parent_img = open(&parent);
    vhdkit::SparseVhd::create(&child, 0, 2 << 20, Some(vhdkit::ParentLink { image: &parent_img, path: &parent }))
        .unwrap();
    drop(parent_img);
    let parent_sha = sha256(&std::fs::read(&parent).unwrap());
    let c = child.to_str().unwrap();
    vhdreg_ok(&[c, "set", COMPUTER_NAME, "ComputerName", "--type", "REG_SZ", "--data", "CHILD"]);
    assert_eq!(sha256(&std::fs::read(&parent).unwrap()), parent_sha, "the parent was written");
    let get = |image: &Path| -> serde_json::Value {
        serde_json::from_str(&vhdreg_ok(&[image.to_str().unwrap(), "get", COMPUTER_NAME, "ComputerName", "--json"]))
            .unwrap()
    };
    assert_eq!(get(&child)["data"], "CHILD");
    assert_eq!(get(&parent)["data"], "WKS-WIN732BITA");
    // The child now holds the hive's changed sectors: vhdinspect diff names the hive.
    let diff = String::from_utf8(run_ok(bin("vhdinspect").args(["diff", "--json"]).arg(&child))).unwrap();
    assert!(diff.contains(SYSTEM), "{diff}");
    // ntfs-3g over the merged view reads the new name.
    let [system] = copy_out(&child, &[SYSTEM], dir.path()).try_into().unwrap();
    assert_eq!(hivexget(&system, "\\ControlSet001\\Control\\ComputerName\\ComputerName", "ComputerName"), "CHILD");
}

/// Runs `args` on a copy of `base` with the fault hook aborting before each write in turn; after
/// every crash, read-only commands refuse the image and `vhdreg recover` rolls the file back to
/// `base`'s bytes exactly. Returns the image of the run that completed.
fn crash_loop(base: &Path, work: &Path, args: &[&str]) -> PathBuf {
    let before = sha256(&std::fs::read(base).unwrap());
    let w = work.to_str().unwrap();
    let mut n = 0;
    while n < 2000 {
        std::fs::copy(base, work).unwrap();
        if completes_within(bin("vhdreg").arg(w).args(args), n) {
            assert!(n > 5, "{args:?}: only {n} writes: the loop tested too little");
            eprintln!("{args:?} completed when allowed {n} writes");
            return work.to_path_buf();
        }
        let journal = vhdkit::host::journal::journal_path(work);
        if journal.exists() {
            // Read-only commands refuse to show a half-written image, and never roll it back...
            let copy = work.with_extension("copy.vhd");
            for reader in [
                bin("vhdinspect").args(["reg", w, "get", COMPUTER_NAME]),
                bin("vhdreg").args([w, "get", COMPUTER_NAME, "ComputerName"]),
                bin("vhdcompact").arg(w).arg(&copy),
            ] {
                let out = run(reader);
                assert_one_line_error(&out, "vhdkit-journal", &["interrupted", "recover"]);
            }
            assert!(journal.exists(), "a reader removed the journal");
            assert!(!copy.exists(), "a torn image was copied");
            // ...and `recover`, a writer, rolls it back.
            let out = run(bin("vhdreg").args([w, "recover"]));
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(said.contains("rolled back") || said.contains("before it touched the image"), "{said}");
            assert!(!journal.exists());
        }
        assert_eq!(
            sha256(&std::fs::read(work).unwrap()),
            before,
            "{args:?}: the file differs after a crash at write {n}"
        );
        let check = run(bin("vhdinspect").arg("check").arg(work));
        assert!(check.status.success(), "{args:?}: crash at write {n}: {}", String::from_utf8_lossy(&check.stdout));
        // Every write position early on; then a stride (the middle writes are alike).
        n += if n < 40 { 1 } else { 7 };
    }
    panic!("{args:?}: the run never completed");
}

#[test]
fn an_interrupted_write_is_rolled_back_by_the_next_run() {
    let dir = tempdir();
    let Some(h) = hives(dir.path()) else { return };
    let base = dynamic_windows_image(dir.path(), &h);
    let work = dir.path().join("work.vhd");
    // A write that grows the hive in NTFS (new clusters, $Bitmap, MFT record, $I30).
    let blob = dir.path().join("blob.bin");
    std::fs::write(&blob, (0..1_500_000u32).map(|i| (i % 253) as u8).collect::<Vec<u8>>()).unwrap();
    let done = crash_loop(
        &base,
        &work,
        &["set", r"HKLM\SYSTEM\vhdkit", "Blob", "--type", "REG_BINARY", "--data-file", blob.to_str().unwrap()],
    );
    let [system] = copy_out(&done, &[SYSTEM], dir.path()).try_into().unwrap();
    assert!(reg_hex_value(&hivex_export(&system, "\\vhdkit"), "Blob") == std::fs::read(&blob).unwrap());
    // A recursive delete, in place.
    let done = crash_loop(&base, &work, &["delete", r"HKLM\SYSTEM\ControlSet001\Services\Tcpip"]);
    let [system] = copy_out(&done, &[SYSTEM], dir.path()).try_into().unwrap();
    assert!(!run(Command::new("hivexget").arg(&system).arg("\\ControlSet001\\Services\\Tcpip")).status.success());
    // An import into a dirty hive: replay, edit, and both logs' headers reset.
    let reg = dir.path().join("v.reg");
    std::fs::write(
        &reg,
        "Windows Registry Editor Version 5.00\r\n\r\n[HKEY_LOCAL_MACHINE\\X\\vhdkit]\r\n\"V\"=dword:00000007\r\n",
    )
    .unwrap();
    let done = crash_loop(&base, &work, &["--hive", "dirty/NewDirtyHive", "import", reg.to_str().unwrap()]);
    let [hive] = copy_out(&done, &["dirty/NewDirtyHive"], dir.path()).try_into().unwrap();
    assert_eq!(hivexget(&hive, "\\vhdkit", "V"), "7");
}

#[test]
fn a_dirty_hive_in_the_image_is_replayed_then_edited_and_its_logs_reset() {
    let dir = tempdir();
    let Some(h) = hives(dir.path()) else { return };
    let image = windows_image(dir.path(), &h);
    let im = image.to_str().unwrap();
    let recovered = h.dirty.join("RecoveredHive_Windows10");
    // Reading replays in memory: the listing is the recovered hive's.
    let listing = vhdreg_ok(&["--json", im, "--hive", "dirty/NewDirtyHive", "list", r"Key3"]);
    let want = vhdreg_ok(&["--json", "--hive-file", recovered.to_str().unwrap(), "list", r"Key3"]);
    assert_eq!(listing, want);
    let r: serde_json::Value = serde_json::from_str(&vhdreg_ok(&[
        "--json",
        im,
        "--hive",
        "dirty/NewDirtyHive",
        "set",
        "vhdkit",
        "V",
        "--type",
        "REG_DWORD",
        "--data",
        "7",
    ]))
    .unwrap();
    assert!(!r["replays"][0]["applied"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(r["hives"][0]["logs_reset"].as_array().unwrap().len(), 2, "{r}");
    let [hive, log1, log2] =
        copy_out(&image, &["dirty/NewDirtyHive", "dirty/NewDirtyHive.LOG1", "dirty/NewDirtyHive.LOG2"], dir.path())
            .try_into()
            .unwrap();
    let bytes = std::fs::read(&hive).unwrap();
    assert_eq!(bytes[4..8], bytes[8..12], "the hive is clean");
    assert_eq!(hivexget(&hive, "\\vhdkit", "V"), "7");
    let strip = |e: String| without_key(&e, "HKEY_LOCAL_MACHINE\\SYSTEM\\vhdkit");
    assert_eq!(strip(hivex_export(&hive, "\\")), hivex_export(&recovered, "\\"));
    // Each log now starts with the hive's base block (file type 6): nothing left to replay.
    for log in [log1, log2] {
        let l = std::fs::read(&log).unwrap();
        assert_eq!(&l[..4], b"regf");
        assert_eq!(l[4..12], bytes[4..12], "{}", log.display());
        assert_eq!(u32::from_le_bytes(l[28..32].try_into().unwrap()), 6);
    }
    // A dirty hive without its logs is not edited.
    let lonely = dir.path().join("lonely");
    std::fs::copy(h.dirty.join("NewDirtyHive"), &lonely).unwrap();
    make_writable(&lonely);
    let sha = sha256(&std::fs::read(&lonely).unwrap());
    let out = vhdreg(&["--hive-file", lonely.to_str().unwrap(), "set", "x", "y", "--type", "REG_DWORD", "--data", "1"]);
    assert_one_line_error(&out, "lonely", &["dirty", "no .LOG1, .LOG2 or .LOG found"]);
    assert_eq!(sha256(&std::fs::read(&lonely).unwrap()), sha);
}

#[test]
fn export_matches_hivex_and_import_round_trips() {
    let dir = tempdir();
    let Some(h) = hives(dir.path()) else { return };
    let hive = dir.path().join("SYSTEM");
    std::fs::copy(&h.system, &hive).unwrap();
    let f = hive.to_str().unwrap();
    let key = r"HKLM\SYSTEM\ControlSet001\Control\Session Manager";
    let ours = dir.path().join("ours.reg");
    vhdreg_ok(&["--hive-file", f, "export", key, ours.to_str().unwrap()]);
    let bytes = std::fs::read(&ours).unwrap();
    assert_eq!(&bytes[..2], &[0xFF, 0xFE], "UTF-16LE with a BOM");
    let theirs = run_ok(
        Command::new("hivexregedit")
            .args(["--export", "--prefix", "HKEY_LOCAL_MACHINE\\SYSTEM"])
            .arg(&hive)
            .arg("\\ControlSet001\\Control\\Session Manager"),
    );
    // Same keys and values (hivexregedit sorts values by name; we keep the hive's order, as
    // regedit does).
    let ops = vhdkit::hive::regfile::parse(&bytes).unwrap();
    assert!(ops.len() > 50);
    let sorted = |mut ops: Vec<vhdkit::RegOp>| {
        ops.sort_by_key(|o| format!("{o:?}"));
        ops
    };
    assert!(
        sorted(ops) == sorted(vhdkit::hive::regfile::parse(&theirs).unwrap()),
        "our export differs from hivexregedit's"
    );
    // Delete the key, import the export: the key is back, value for value.
    let before = hivex_export(&hive, "\\");
    vhdreg_ok(&["--hive-file", f, "delete", key]);
    assert_ne!(hivex_export(&hive, "\\"), before);
    let r = vhdreg_ok(&["--hive-file", f, "import", ours.to_str().unwrap()]);
    assert!(r.contains("create HKLM\\SYSTEM\\ControlSet001\\Control\\Session Manager"), "{r}");
    assert_eq!(hivex_export(&hive, "\\"), before);
    // A .reg with deletions and REGEDIT4 ANSI text.
    let reg = dir.path().join("change.reg");
    std::fs::write(&reg, b"REGEDIT4\r\n\r\n[HKEY_LOCAL_MACHINE\\SYSTEM\\vhdkit]\r\n\"S\"=\"caf\xe9\"\r\n\r\n[-HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Control\\Session Manager\\Environment]\r\n").unwrap();
    vhdreg_ok(&["--hive-file", f, "import", reg.to_str().unwrap()]);
    assert_eq!(hivexget(&hive, "\\vhdkit", "S"), "café");
    assert!(
        !run(Command::new("hivexget").arg(&hive).arg("\\ControlSet001\\Control\\Session Manager\\Environment"))
            .status
            .success()
    );
}

#[test]
fn bad_requests_are_one_line_errors() {
    let dir = tempdir();
    let not_vhd = dir.path().join("notes.txt");
    std::fs::write(&not_vhd, b"hello").unwrap();
    let out = vhdreg(&[not_vhd.to_str().unwrap(), "get", COMPUTER_NAME]);
    assert_one_line_error(&out, "notes.txt", &[]);
    let out = vhdreg(&[corpus("xp-fixed.vhd").to_str().unwrap(), "get", COMPUTER_NAME]);
    assert_one_line_error(&out, "xp-fixed.vhd", &["no hive at Windows/System32/config/SYSTEM"]);
    let out = vhdreg(&[corpus("xp-fixed.vhd").to_str().unwrap(), "get", r"Software\x"]);
    assert_usage_error(&out, "Software", &["--hive"]);
    let Some(h) = hives(dir.path()) else { return };
    let f = h.system.to_str().unwrap();
    assert_one_line_error(&vhdreg(&["--hive-file", f, "get", "NoSuchKey"]), "NoSuchKey", &["no such key"]);
    assert_one_line_error(&vhdreg(&["--hive-file", f, "get", "Select", "Nope"]), "Select", &["no value"]);
    assert_usage_error(
        &vhdreg(&["--hive-file", f, "set", "Select", "X", "--type", "REG_DWORD", "--data", "x"]),
        "REG_DWORD",
        &["not a"],
    );
}

/// Sets the dirty flag of the NTFS volume in partition 1 of `image` (in `$Volume`'s
/// `$VOLUME_INFORMATION`, record 3 of the MFT).
fn make_dirty(image: &Path) {
    use std::os::unix::fs::FileExt;
    let (start, _) = partition_span(image);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(image).unwrap();
    let mut boot = [0u8; 512];
    f.read_exact_at(&mut boot, start).unwrap();
    let cluster = u16::from_le_bytes([boot[11], boot[12]]) as u64 * boot[13] as u64;
    let mft = u64::from_le_bytes(boot[0x30..0x38].try_into().unwrap());
    let at = start + mft * cluster + 3 * 1024;
    let mut rec = vec![0u8; 1024];
    f.read_exact_at(&mut rec, at).unwrap();
    vhdkit::ntfs::record::apply_fixups(&mut rec).unwrap();
    let mut a = u16::from_le_bytes([rec[20], rec[21]]) as usize;
    loop {
        let ty = u32::from_le_bytes(rec[a..a + 4].try_into().unwrap());
        let len = u32::from_le_bytes(rec[a + 4..a + 8].try_into().unwrap()) as usize;
        assert_ne!(ty, 0xFFFF_FFFF, "no $VOLUME_INFORMATION");
        if ty == 0x70 {
            let value = a + u16::from_le_bytes([rec[a + 20], rec[a + 21]]) as usize;
            rec[value + 0x0A] |= 1;
            break;
        }
        a += len;
    }
    vhdkit::ntfs::record::protect(&mut rec).unwrap();
    f.write_all_at(&rec, at).unwrap();
}

#[test]
fn every_writer_refuses_a_dirty_or_hibernated_volume() {
    let dir = tempdir();
    let Some(h) = hives(dir.path()) else { return };
    let clean = windows_image(dir.path(), &h);
    let dirty = dir.path().join("dirty.vhd");
    std::fs::copy(&clean, &dirty).unwrap();
    make_dirty(&dirty);
    let hibernated = dir.path().join("hibernated.vhd");
    std::fs::copy(&clean, &hibernated).unwrap();
    let part = partition_image(&open(&hibernated), 1, dir.path());
    with_ntfs3g(&part, false, |mnt| {
        let mut data = b"HIBR".to_vec();
        data.resize(1 << 20, 7);
        std::fs::write(mnt.join("hiberfil.sys"), data).unwrap();
    });
    {
        use std::os::unix::fs::FileExt;
        let (start, _) = partition_span(&hibernated);
        let f = std::fs::OpenOptions::new().write(true).open(&hibernated).unwrap();
        f.write_all_at(&std::fs::read(&part).unwrap(), start).unwrap();
    }
    for (image, state) in [(&dirty, "dirty"), (&hibernated, "hibernated")] {
        let before = std::fs::read(image).unwrap();
        let i = image.to_str().unwrap();
        let o = vhdreg(&[i, "set", COMPUTER_NAME, "ComputerName", "--type", "REG_SZ", "--data", "X"]);
        assert_one_line_error(&o, i, &[state, "--force"]);
        let o = run(bin("vhdcompact").arg(image).arg(dir.path().join("out.vhd")));
        assert_one_line_error(&o, i, &[state, "--force"]);
        // A partition grown is refused before the disk is expanded.
        let o = run(bin("vhddisk").arg("expand").arg(image).args(["--size", "200M", "--grow-partition"]));
        assert_one_line_error(&o, i, &[state, "--force"]);
        assert_eq!(std::fs::read(image).unwrap(), before, "{state}: the image changed");
        let check = run(bin("vhdinspect").arg("check").arg(image));
        assert_eq!(check.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&check.stdout).contains(state), "{}", String::from_utf8_lossy(&check.stdout));
        // --force writes anyway, and a hive in NTFS keeps its length.
        let j: serde_json::Value = serde_json::from_str(&vhdreg_ok(&[
            i,
            "set",
            COMPUTER_NAME,
            "ComputerName",
            "--type",
            "REG_SZ",
            "--data",
            "X",
            "--force",
            "--json",
        ]))
        .unwrap();
        assert_eq!(j["hives"][0]["bytes_after"], j["hives"][0]["bytes_before"]);
        let grown =
            run(bin("vhddisk").arg("expand").arg(image).args(["--size", "200M", "--grow-partition", "--force"]));
        assert!(grown.status.success(), "{state}: {}", String::from_utf8_lossy(&grown.stderr));
    }
    assert!(run(bin("vhdinspect").arg("check").arg(&clean)).status.success());
}

#[test]
fn the_image_may_follow_the_command_and_options_go_anywhere() {
    let dir = tempdir();
    let Some(h) = hives(dir.path()) else { return };
    let image = windows_image(dir.path(), &h);
    let img = image.to_str().unwrap();
    let old = vhdreg_ok(&[img, "get", COMPUTER_NAME, "ComputerName"]);
    assert_eq!(vhdreg_ok(&["get", img, COMPUTER_NAME, "ComputerName"]), old);
    assert_eq!(vhdreg_ok(&["get", "--partition", "1", img, COMPUTER_NAME, "ComputerName"]), old);
    let json: serde_json::Value =
        serde_json::from_str(&vhdreg_ok(&["get", img, COMPUTER_NAME, "ComputerName", "--json"])).unwrap();
    assert!(json.to_string().contains(old.split_whitespace().last().unwrap()), "{json}");
    // A bare hive: options after the command, the key first.
    let hive = dir.path().join("SYSTEM");
    std::fs::copy(&h.system, &hive).unwrap();
    let bare = vhdreg_ok(&["get", r"Select", "Current", "--hive-file", hive.to_str().unwrap()]);
    assert!(bare.contains("REG_DWORD"), "{bare}");
    // A change names its key as get does: the short root, the hive's own case, the control set.
    let typed = r"hklm\system\CurrentControlSet\Control";
    let dry: serde_json::Value = serde_json::from_str(&vhdreg_ok(&[
        "set",
        img,
        typed,
        "X",
        "--type",
        "REG_SZ",
        "--data",
        "y",
        "--dry-run",
        "--json",
    ]))
    .unwrap();
    assert_eq!(dry["changes"][0], r"set HKLM\SYSTEM\ControlSet001\Control X = y (REG_SZ)", "{dry}");
    // vhdinspect reg takes the same orders.
    let inspect = |args: &[&str]| String::from_utf8(run_ok(bin("vhdinspect").arg("reg").args(args))).unwrap();
    assert_eq!(inspect(&[img, "get", COMPUTER_NAME, "ComputerName"]), old);
    assert_eq!(inspect(&["get", img, COMPUTER_NAME, "ComputerName"]), old);
    assert_eq!(inspect(&["get", "Select", "Current", "--hive-file", hive.to_str().unwrap()]), bare);
}
