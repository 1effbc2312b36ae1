//! The regf engine against real hives of many Windows versions, re-read after every write by
//! independent readers: nt-hive and hivex (`hivexget`, `hivexregedit --export`).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use vhdkit::Hive;
use vhdkit::hive::value::{reg_type, utf16z};

/// (key path, value name) -> (type, data), as nt-hive reads them.
type Dump = BTreeMap<(String, String), (u32, Vec<u8>)>;

/// nt-hive's reading of a hive. nt-hive takes every value over 16344 bytes for big data, but
/// format 1.3 hives keep such values in one cell: those values are skipped (and counted).
fn nt_hive_dump(bytes: &[u8]) -> (Dump, usize) {
    let hive = nt_hive::Hive::new(bytes).unwrap_or_else(|e| panic!("nt-hive refuses the hive: {e}"));
    let minor = u32::from_le_bytes(bytes[24..28].try_into().unwrap());
    let mut dump = Dump::new();
    let mut keys = 0;
    let mut stack = vec![(String::new(), hive.root_key_node().unwrap())];
    while let Some((path, key)) = stack.pop() {
        keys += 1;
        if let Some(values) = key.values() {
            for v in values.unwrap() {
                let v = v.unwrap();
                let name = v.name().unwrap().to_string_lossy();
                let ty = match v.data_type() {
                    Ok(t) => t as u32,
                    Err(nt_hive::NtHiveError::UnsupportedKeyValueDataType { actual, .. }) => actual,
                    Err(e) => panic!("{e}"),
                };
                match v.data().and_then(|d| d.into_vec()) {
                    Ok(data) => {
                        dump.insert((path.clone(), name), (ty, data));
                    }
                    Err(nt_hive::NtHiveError::InvalidTwoByteSignature { expected, .. })
                        if &expected == b"db" && minor < 4 => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }
        if let Some(subkeys) = key.subkeys() {
            for k in subkeys.unwrap() {
                let k = k.unwrap();
                let name = k.name().unwrap().to_string_lossy();
                stack.push((if path.is_empty() { name } else { format!("{path}\\{name}") }, k));
            }
        }
    }
    (dump, keys)
}

fn our_dump(hive: &Hive) -> (Dump, usize) {
    let mut dump = Dump::new();
    let mut keys = 0;
    hive.walk(&hive.root().unwrap(), &mut |path, key| {
        keys += 1;
        for v in hive.values(key)? {
            dump.insert((path.to_string(), v.name.clone()), (v.ty, hive.value_data(&v)?));
        }
        Ok(())
    })
    .unwrap();
    (dump, keys)
}

/// Clean real hives of many Windows versions.
fn real_hives() -> Vec<PathBuf> {
    [
        "plaso/test_data/NTUSER-WIN7.DAT",
        "plaso/test_data/NTUSER.DAT",
        "plaso/test_data/regf/NTUSER.DAT",
        "plaso/test_data/regf/SAM",
        "plaso/test_data/regf/100_sub_keys.hiv",
        "nt-hive/testdata/testhive",
        "regipy/regipy_tests/data/SAM",
        "regipy/regipy_tests/data/BCD",
        "Registry/Registry.Test/Hives/SAM",
        "Registry/Registry.Test/Hives/SAM_hasBigEndianDWord",
        "Registry/Registry.Test/Hives/SAM_RootValue",
        "yarp/hives_for_tests/UnicodeHive",
        "yarp/hives_for_tests/ExtendedASCIIHive",
        "yarp/hives_for_tests/MultiSzHive",
        "yarp/hives_for_tests/StringValuesHive",
        "yarp/hives_for_tests/UpcaseHive",
        "hivex/images/minimal",
        "hivex/images/special",
        "python-registry/tests/reg_samples/UNICODE_TESTS",
    ]
    .iter()
    .filter_map(|p| realdata(p))
    .collect()
}

#[test]
fn reads_every_real_hive_like_nt_hive() {
    let hives = real_hives();
    for path in &hives {
        let bytes = std::fs::read(path).unwrap();
        let hive = Hive::parse(bytes.clone(), path).unwrap_or_else(|e| panic!("{e}"));
        let (mut ours, our_keys) = our_dump(&hive);
        let (theirs, their_keys) = nt_hive_dump(&bytes);
        assert_eq!(our_keys, their_keys, "{}", path.display());
        // Values nt-hive cannot read (one-cell data over 16344 bytes in format 1.3) are ours alone.
        if hive.minor() < 4 {
            let only_ours: Vec<usize> =
                ours.iter().filter(|(k, _)| !theirs.contains_key(*k)).map(|(_, v)| v.1.len()).collect();
            assert!(only_ours.iter().all(|&len| len > 16344), "{}: {only_ours:?}", path.display());
            ours.retain(|k, _| theirs.contains_key(k));
        }
        assert_eq!(ours, theirs, "{}", path.display());
    }
}

#[test]
fn reads_the_big_windows_7_system_hive() {
    let Some(xz) = realdata("regipy/regipy_tests/data/SYSTEM.xz") else { return };
    let bytes = run_ok(Command::new("xz").arg("-dc").arg(&xz));
    let hive = Hive::parse(bytes.clone(), Path::new("SYSTEM")).unwrap();
    let (ours, keys) = our_dump(&hive);
    let (theirs, their_keys) = nt_hive_dump(&bytes);
    assert_eq!(keys, their_keys);
    assert_eq!(ours.len(), theirs.len());
    assert_eq!(ours, theirs);
    let current = hive.find("Select").unwrap().unwrap();
    let v = hive.find_value(&current, "Current").unwrap().unwrap();
    assert_eq!(v.ty, reg_type::DWORD);
}

#[test]
fn corrupt_hives_give_errors_not_panics() {
    for (rel, needle) in [
        ("Registry/Registry.Test/Hives/NotAHive", "signature"),
        ("Registry/Registry.Test/Hives/SAMBadHBinHeader", "hive bin"),
        ("yarp/hives_for_tests/TruncatedHive", "truncated"),
    ] {
        let Some(path) = realdata(rel) else { continue };
        let e = Hive::open(&path).unwrap_err().to_string();
        assert!(e.contains(needle) && e.contains("hive offset"), "{rel}: {e}");
    }
    for rel in [
        "plaso/test_data/regf/corrupt_sub_key_list.hiv",
        "hivex/images/rlenvalue_test_hive",
        "Registry/Registry.Test/Hives/SECURITYNoRoot",
    ] {
        let Some(path) = realdata(rel) else { continue };
        if let Ok(hive) = Hive::open(&path)
            && let Ok(root) = hive.root()
        {
            let _ =
                hive.walk(&root, &mut |_, k| hive.values(k).map(|vs| vs.iter().for_each(|v| drop(hive.value_data(v)))));
        }
    }
}

/// A copy of nt-hive's test hive (offreg-written, every value type) in a temp dir.
fn testhive(dir: &Path) -> Option<PathBuf> {
    let src = realdata("nt-hive/testdata/testhive")?;
    let dst = dir.join("testhive");
    std::fs::copy(src, &dst).unwrap();
    Some(dst)
}

fn hivexget(hive: &Path, key: &str, name: &str) -> String {
    String::from_utf8(run_ok(Command::new("hivexget").arg(hive).arg(key).arg(name))).unwrap().trim_end().to_string()
}

fn hivex_export(hive: &Path) -> String {
    String::from_utf8_lossy(&run_ok(
        Command::new("hivexregedit").args(["--export", "--prefix", "HKEY_LOCAL_MACHINE\\T"]).arg(hive).arg("\\"),
    ))
    .into_owned()
}

/// Every `[key]` section of a hivexregedit export, keyed by key path.
fn sections(export: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in export.lines() {
        if line.starts_with('[') {
            current = Some(line.to_string());
            out.insert(line.to_string(), String::new());
        } else if let Some(c) = &current {
            let s = out.get_mut(c).unwrap();
            s.push_str(line);
            s.push('\n');
        }
    }
    out
}

#[test]
fn writes_every_value_type_readable_by_nt_hive_and_hivex() {
    let dir = tempdir();
    let Some(path) = testhive(dir.path()) else { return };
    let before = hivex_export(&path);
    let mut hive = Hive::open(&path).unwrap();
    let big: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
    let sets: Vec<(&str, &str, u32, Vec<u8>)> = vec![
        ("vhdkit\\new\\deep", "sz", reg_type::SZ, utf16z("hello from vhdkit")),
        ("vhdkit\\new\\deep", "expand", reg_type::EXPAND_SZ, utf16z("%SystemRoot%\\x")),
        (
            "vhdkit\\new\\deep",
            "multi",
            reg_type::MULTI_SZ,
            vhdkit::hive::value::encode_multi(&["a".into(), "bc".into()]),
        ),
        ("vhdkit\\new\\deep", "dword", reg_type::DWORD, 0xdeadbeefu32.to_le_bytes().to_vec()),
        ("vhdkit\\new\\deep", "dwordbe", reg_type::DWORD_BIG_ENDIAN, 7u32.to_be_bytes().to_vec()),
        ("vhdkit\\new\\deep", "qword", reg_type::QWORD, 1u64.to_le_bytes().to_vec()),
        ("vhdkit\\new\\deep", "binary", reg_type::BINARY, vec![1, 2, 3, 4, 5, 6]),
        ("vhdkit\\new\\deep", "none", reg_type::NONE, vec![]),
        ("vhdkit\\new\\deep", "link", reg_type::LINK, utf16z("\\Registry\\Machine")),
        ("vhdkit\\new\\deep", "odd type", 0xffff_0011, vec![9, 9]),
        ("vhdkit\\new\\deep", "big", reg_type::BINARY, big.clone()),
        ("vhdkit\\new\\deep", "", reg_type::SZ, utf16z("default")),
        ("vhdkit\\Ünïcode ключ", "ключ", reg_type::SZ, utf16z("значение")),
        ("data-test", "dword", reg_type::DWORD, 1234u32.to_le_bytes().to_vec()),
    ];
    for (key, name, ty, data) in &sets {
        hive.set_value(key, name, *ty, data).unwrap();
    }
    hive.seal();
    std::fs::write(&path, hive.bytes()).unwrap();
    // nt-hive validates the base block (checksum, sequence numbers) and reads every value.
    let (dump, _) = nt_hive_dump(hive.bytes());
    for (key, name, ty, data) in &sets {
        let got = dump.get(&(key.to_string(), name.to_string())).unwrap_or_else(|| panic!("{key}\\{name} missing"));
        assert_eq!((got.0, &got.1), (*ty, data), "{key}\\{name}");
    }
    let base = hive.base();
    assert!(base.checksum_valid && !base.dirty());
    // hivex reads them too, and everything else exports as before.
    assert_eq!(hivexget(&path, "\\vhdkit\\new\\deep", "sz"), "hello from vhdkit");
    assert_eq!(hivexget(&path, "\\vhdkit\\new\\deep", "dword"), "-559038737", "hivexget prints DWORDs signed");
    assert_eq!(hivexget(&path, "\\data-test", "dword"), "1234");
    let (old, new) = (sections(&before), sections(&hivex_export(&path)));
    for (key, text) in &old {
        if !key.contains("data-test]") {
            assert_eq!(new.get(key), Some(text), "{key} changed");
        }
    }
}

#[test]
fn every_real_hive_takes_writes_that_nt_hive_and_hivex_read() {
    let dir = tempdir();
    let hives = real_hives();
    for src in &hives {
        let path = dir.path().join("hive");
        std::fs::copy(src, &path).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let before = hivex_export(&path);
        let mut hive = Hive::open(&path).unwrap();
        let big: Vec<u8> = (0..20_000u32).map(|i| (i % 241) as u8).collect();
        hive.set_value("vhdkit\\w", "s", reg_type::SZ, &utf16z("written")).unwrap();
        hive.set_value("vhdkit\\w", "big", reg_type::BINARY, &big).unwrap();
        hive.set_value("vhdkit\\w", "gone", reg_type::DWORD, &[1, 0, 0, 0]).unwrap();
        assert!(hive.delete_value("vhdkit\\w", "gone").unwrap());
        hive.seal();
        std::fs::write(&path, hive.bytes()).unwrap();
        let (dump, _) = nt_hive_dump(hive.bytes());
        let got = dump.get(&("vhdkit\\w".to_string(), "s".to_string()));
        assert_eq!(got.map(|g| (g.0, g.1.clone())), Some((reg_type::SZ, utf16z("written"))), "{}", src.display());
        assert!(!dump.contains_key(&("vhdkit\\w".to_string(), "gone".to_string())));
        assert_eq!(hivexget(&path, "\\vhdkit\\w", "s"), "written", "{}", src.display());
        // Everything that was there exports as before.
        let (old, new) = (sections(&before), sections(&hivex_export(&path)));
        for (key, text) in &old {
            assert_eq!(new.get(key), Some(text), "{}: {key} changed", src.display());
        }
        assert_eq!(new.len(), old.len() + 2, "{}: vhdkit and vhdkit\\w added", src.display());
    }
}

#[test]
fn deleting_frees_every_cell_and_free_cells_are_reused() {
    let dir = tempdir();
    let Some(path) = testhive(dir.path()) else { return };
    let mut hive = Hive::open(&path).unwrap();
    let size = hive.bins_size();
    let free = hive.free_bytes();
    for round in 0..5 {
        for i in 0..50 {
            hive.set_value(&format!("tmp\\k{i}"), "v", reg_type::BINARY, &vec![round as u8; 3000]).unwrap();
        }
        hive.set_value("tmp", "big", reg_type::BINARY, &vec![1u8; 50_000]).unwrap();
        assert!(hive.delete_key("tmp").unwrap());
    }
    // Everything allocated was freed and coalesced: the hive did not grow past the first round.
    let grown = hive.bins_size();
    assert!(grown <= size + 512 * 1024, "{size} -> {grown}");
    for _ in 0..5 {
        hive.set_value("tmp\\again", "v", reg_type::BINARY, &vec![7u8; 3000]).unwrap();
        assert!(hive.delete_key("tmp").unwrap());
    }
    assert_eq!(hive.bins_size(), grown, "free cells were not reused");
    assert!(hive.free_bytes() >= free);
    assert!(hive.find("tmp").unwrap().is_none());
    hive.seal();
    nt_hive_dump(hive.bytes());
    // Deleting values.
    hive.set_value("x", "a", reg_type::DWORD, &[1, 0, 0, 0]).unwrap();
    hive.set_value("x", "b", reg_type::DWORD, &[2, 0, 0, 0]).unwrap();
    assert!(hive.delete_value("x", "a").unwrap());
    assert!(!hive.delete_value("x", "a").unwrap());
    let x = hive.find("x").unwrap().unwrap();
    assert_eq!(hive.values(&x).unwrap().len(), 1);
}

#[test]
fn many_subkeys_stay_sorted_and_split_into_an_index_root() {
    let dir = tempdir();
    let Some(path) = testhive(dir.path()) else { return };
    let mut hive = Hive::open(&path).unwrap();
    for i in (0..1500).rev() {
        hive.create_key(&format!("many\\Key{i}")).unwrap();
    }
    hive.create_key("many\\ß2").unwrap();
    hive.create_key("many\\SS3").unwrap();
    hive.seal();
    std::fs::write(&path, hive.bytes()).unwrap();
    let many = hive.find("many").unwrap().unwrap();
    let list = hive.cell(many.subkeys, "list").unwrap();
    assert_eq!(&list[..2], b"ri");
    // nt-hive finds each by binary search, which needs the Windows sort order.
    let nt = nt_hive::Hive::new(hive.bytes()).unwrap();
    let root = nt.root_key_node().unwrap();
    for name in ["many\\Key0", "many\\Key1499", "many\\Key750", "many\\ß2", "many\\ss3"] {
        assert!(root.subpath(name).is_some(), "{name}");
    }
    let listed = run_ok(Command::new("hivexget").arg(&path).arg("\\many\\Key1234"));
    assert!(listed.is_empty());
}

#[test]
fn new_keys_share_their_parents_security_descriptor() {
    let dir = tempdir();
    let Some(path) = testhive(dir.path()) else { return };
    let mut hive = Hive::open(&path).unwrap();
    let root = hive.root().unwrap();
    let refs = hive.security_refs(root.security).unwrap();
    hive.create_key("s1").unwrap();
    hive.create_key("s2").unwrap();
    assert_eq!(hive.security_refs(root.security).unwrap(), refs + 2);
    assert_eq!(hive.find("s1").unwrap().unwrap().security, root.security);
    hive.delete_key("s1").unwrap();
    assert_eq!(hive.security_refs(root.security).unwrap(), refs + 1);
}

#[test]
fn a_dirty_hive_replays_to_what_windows_recovered() {
    let (Some(dirty), Some(log1), Some(log2), Some(windows)) = (
        realdata("yarp/hives_for_tests/NewDirtyHive1/NewDirtyHive"),
        realdata("yarp/hives_for_tests/NewDirtyHive1/NewDirtyHive.LOG1"),
        realdata("yarp/hives_for_tests/NewDirtyHive1/NewDirtyHive.LOG2"),
        realdata("yarp/hives_for_tests/NewDirtyHive1/RecoveredHive_Windows10"),
    ) else {
        return;
    };
    let primary = std::fs::read(&dirty).unwrap();
    assert!(Hive::parse(primary.clone(), &dirty).unwrap().base().dirty());
    let (l1, l2) = (std::fs::read(&log1).unwrap(), std::fs::read(&log2).unwrap());
    let logs =
        [vhdkit::hive::log::LogFile { name: &log1, data: &l1 }, vhdkit::hive::log::LogFile { name: &log2, data: &l2 }];
    let (recovered, report) = vhdkit::hive::log::replay(&primary, &dirty, &logs).unwrap();
    assert_eq!(report.applied, vec![2, 3, 4, 5]);
    let ours = Hive::parse(recovered, &dirty).unwrap();
    assert!(!ours.base().dirty());
    let theirs = Hive::open(&windows).unwrap();
    assert_eq!(our_dump(&ours), our_dump(&theirs));
    assert!(ours.find("Key3\\Key3_3").unwrap().is_some());
    // Without its logs the dirty hive is refused.
    let e = vhdkit::hive::log::replay(&primary, &dirty, &[]).unwrap_err().to_string();
    assert!(e.contains("dirty") && e.contains("no .LOG1, .LOG2 or .LOG found"), "{e}");
}

#[test]
fn regipy_transaction_logs_replay() {
    let (Some(hive), Some(log1), Some(log2)) = (
        realdata("regipy/regipy_tests/data/transactions_NTUSER.DAT.xz"),
        realdata("regipy/regipy_tests/data/transactions_ntuser.dat.log1.xz"),
        realdata("regipy/regipy_tests/data/transactions_ntuser.dat.log2"),
    ) else {
        return;
    };
    let unxz = |p: &Path| run_ok(Command::new("xz").arg("-dc").arg(p));
    let primary = unxz(&hive);
    let (l1, l2) = (unxz(&log1), std::fs::read(&log2).unwrap());
    let logs =
        [vhdkit::hive::log::LogFile { name: &log1, data: &l1 }, vhdkit::hive::log::LogFile { name: &log2, data: &l2 }];
    let (recovered, report) = vhdkit::hive::log::replay(&primary, &hive, &logs).unwrap();
    assert!(!report.applied.is_empty());
    let h = Hive::parse(recovered.clone(), &hive).unwrap();
    assert!(!h.base().dirty());
    nt_hive_dump(&recovered);
}

#[test]
fn export_then_import_round_trips() {
    let dir = tempdir();
    let Some(path) = testhive(dir.path()) else { return };
    let hive = Hive::open(&path).unwrap();
    let key = hive.find("data-test").unwrap().unwrap();
    let text = vhdkit::hive::regfile::export(&hive, &key, "HKEY_LOCAL_MACHINE\\T\\data-test").unwrap();
    let ops = vhdkit::hive::regfile::parse(&vhdkit::hive::regfile::to_utf16_file(&text)).unwrap();
    // Import into an empty key of another copy and compare the values.
    let mut copy = Hive::open(&path).unwrap();
    copy.delete_key("data-test").unwrap();
    for op in &ops {
        if let vhdkit::RegOp::SetValue { key, name, ty, data } = op {
            let inner = key.strip_prefix("HKEY_LOCAL_MACHINE\\T\\").unwrap();
            copy.set_value(inner, name, *ty, data).unwrap();
        }
    }
    let dump = |h: &Hive| {
        let k = h.find("data-test").unwrap().unwrap();
        h.values(&k)
            .unwrap()
            .into_iter()
            .map(|v| (v.name.clone(), (v.ty, h.value_data(&v).unwrap())))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(dump(&hive), dump(&copy));
    // hivexregedit's export of the same key parses to the same values.
    let hivex = run_ok(
        Command::new("hivexregedit")
            .args(["--export", "--prefix", "HKEY_LOCAL_MACHINE\\T"])
            .arg(&path)
            .arg("\\data-test"),
    );
    let theirs = vhdkit::hive::regfile::parse(&hivex).unwrap();
    let values = |ops: &[vhdkit::RegOp]| {
        ops.iter()
            .filter_map(|o| match o {
                vhdkit::RegOp::SetValue { name, ty, data, .. } => Some((name.clone(), (*ty, data.clone()))),
                _ => None,
            })
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(values(&ops), values(&theirs));
}

/// A copy of the yarp test hives of `folder` in a writable temporary folder.
fn yarp_copy(folder: &str, names: &[&str], dir: &Path) -> Option<Vec<PathBuf>> {
    let mut out = Vec::new();
    for n in names {
        let src = realdata(&format!("yarp/hives_for_tests/{folder}/{n}"))?;
        let to = dir.join(n);
        std::fs::copy(&src, &to).unwrap();
        make_writable(&to);
        out.push(to);
    }
    Some(out)
}

/// The assertions yarp's test_dirty_old makes on an old-format recovery.
fn assert_old_log_applied(h: &Hive) {
    assert!(h.find("key_with_many_subkeys\\1").unwrap().is_none(), "key 1 was deleted in the log");
    assert!(h.find("key_with_many_subkeys\\5000\\find_me_in_log").unwrap().is_some());
    let k = h.find("key_with_many_subkeys\\4500").unwrap().unwrap();
    let v = h.find_value(&k, "v").unwrap().expect("value V written in the log");
    assert_eq!(v.ty, reg_type::MULTI_SZ);
    assert_eq!(h.value_data(&v).unwrap(), vhdkit::hive::value::encode_multi(&["a".into(), "bb".into(), "ccc".into()]));
}

#[test]
fn an_old_format_log_restores_a_damaged_base_block() {
    // BadBaseBlockHive: OldDirtyHive with its base block checksum broken (and version 1.1);
    // its LOG1 is an old-format (dirty vector) log written by Windows 7.
    let dir = tempdir();
    let Some(files) = yarp_copy(
        "BadBaseBlockHive",
        &["BadBaseBlockHive", "BadBaseBlockHive.LOG1", "BadBaseBlockHive.LOG2"],
        dir.path(),
    ) else {
        return;
    };
    let (hive, log1, log2) = (&files[0], &files[1], &files[2]);
    let primary = std::fs::read(hive).unwrap();
    let (l1, l2) = (std::fs::read(log1).unwrap(), std::fs::read(log2).unwrap());
    let logs =
        [vhdkit::hive::log::LogFile { name: log1, data: &l1 }, vhdkit::hive::log::LogFile { name: log2, data: &l2 }];
    let (recovered, report) = vhdkit::hive::log::replay(&primary, hive, &logs).unwrap();
    assert_eq!(report.format, vhdkit::hive::log::LogFormat::Old);
    assert!(report.base_block_restored);
    assert_eq!(report.dirty_pages, 64);
    assert_eq!(report.logs_used, vec![log1.display().to_string()]);
    let h = Hive::parse(recovered.clone(), hive).unwrap();
    assert!(!h.base().dirty());
    assert_eq!((h.base().major, h.base().minor), (1, 3), "the version comes from the log's copy");
    assert_old_log_applied(&h);
    nt_hive_dump(&recovered);
    // vhdreg reads it the same way, and an edit leaves a hive hivex reads, never shorter.
    let key = r"\key_with_many_subkeys\5000\find_me_in_log";
    run_ok(bin("vhdreg").args(["--hive-file", hive.to_str().unwrap(), "get", key]));
    run_ok(bin("vhdreg").args([
        "--hive-file",
        hive.to_str().unwrap(),
        "set",
        key,
        "x",
        "--type",
        "REG_DWORD",
        "--data",
        "7",
    ]));
    assert_eq!(std::fs::metadata(hive).unwrap().len(), primary.len() as u64);
    assert_eq!(hivexget(hive, "\\key_with_many_subkeys\\5000\\find_me_in_log", "x"), "7");
    assert_eq!(std::fs::read(log1).unwrap(), l1, "an old-format log is left as it was");
    // Without its log the damage itself is named, not the version it garbled.
    std::fs::copy(realdata("yarp/hives_for_tests/BadBaseBlockHive/BadBaseBlockHive").unwrap(), hive).unwrap();
    std::fs::remove_file(log1).unwrap();
    let out = run(bin("vhdreg").args(["--hive-file", hive.to_str().unwrap(), "get", key]));
    assert_one_line_error(
        &out,
        "BadBaseBlockHive",
        &["base block is damaged", "checksum 0x4c564e49 stored", "LOG2: empty"],
    );
}

#[test]
fn an_old_format_log_replays_to_what_windows_7_recovered() {
    // yarp's OldDirtyHive with Windows 7's own recovery of it (RecoveredHive_Windows7).
    let dir = tempdir();
    let Some(files) =
        yarp_copy("OldDirtyHive", &["OldDirtyHive", "OldDirtyHive.LOG1", "RecoveredHive_Windows7"], dir.path())
    else {
        return;
    };
    let primary = std::fs::read(&files[0]).unwrap();
    let l1 = std::fs::read(&files[1]).unwrap();
    let (recovered, report) =
        vhdkit::hive::log::replay(&primary, &files[0], &[vhdkit::hive::log::LogFile { name: &files[1], data: &l1 }])
            .unwrap();
    assert!(!report.base_block_restored);
    let ours = Hive::parse(recovered, &files[0]).unwrap();
    assert_old_log_applied(&ours);
    assert_eq!(our_dump(&ours), our_dump(&Hive::open(&files[2]).unwrap()));
    // hivex's export of Windows' recovery equals ours.
    let windows = String::from_utf8(run_ok(
        Command::new("hivexregedit")
            .args(["--export", "--prefix", "HKEY_LOCAL_MACHINE\\SYSTEM"])
            .arg(&files[2])
            .arg("\\"),
    ))
    .unwrap();
    let mine =
        String::from_utf8(run_ok(bin("vhdreg").args(["--hive-file", files[0].to_str().unwrap(), "export", "\\"])))
            .unwrap();
    let lines = |t: &str| {
        let mut l: Vec<String> =
            t.replace('\r', "").lines().map(|l| l.replace("OLDDIRTYHIVE\\]", "OLDDIRTYHIVE]")).collect();
        l.sort();
        l
    };
    assert_eq!(lines(&mine.replace("HKEY_LOCAL_MACHINE\\OLDDIRTYHIVE", "HKEY_LOCAL_MACHINE\\SYSTEM")), lines(&windows));
}

#[test]
fn logs_of_a_bare_hive_are_found_whatever_their_case() {
    let dir = tempdir();
    let Some(files) =
        yarp_copy("NewDirtyHive1", &["NewDirtyHive", "NewDirtyHive.LOG1", "NewDirtyHive.LOG2"], dir.path())
    else {
        return;
    };
    std::fs::rename(&files[1], dir.path().join("newdirtyhive.log1")).unwrap();
    std::fs::rename(&files[2], dir.path().join("NEWDIRTYHIVE.Log2")).unwrap();
    let out = run_ok(bin("vhdreg").args(["--hive-file", files[0].to_str().unwrap(), "get", "Key3\\Key3_3", "--json"]));
    let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(j["stale"].is_null(), "the logs were not found: {j}");
}

#[test]
fn a_hive_file_never_gets_shorter() {
    // A SAM made by Windows is longer than its hive bins; one DWORD must not cut it.
    let dir = tempdir();
    let Some(sam) = realdata("Registry/Registry.Test/Hives/SAM") else { return };
    let hive = dir.path().join("SAM");
    std::fs::copy(&sam, &hive).unwrap();
    make_writable(&hive);
    let before = std::fs::read(&hive).unwrap();
    let out = run_ok(bin("vhdreg").args([
        "--hive-file",
        hive.to_str().unwrap(),
        "--json",
        "set",
        "SAM\\Domains",
        "vhdkit",
        "--type",
        "REG_DWORD",
        "--data",
        "1",
    ]));
    let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let after = std::fs::read(&hive).unwrap();
    assert_eq!(after.len(), before.len(), "262144 bytes before");
    assert_eq!(j["hives"][0]["bytes_after"], after.len() as u64);
    assert_eq!(hivexget(&hive, "\\SAM\\Domains", "vhdkit"), "1");
}

#[test]
fn hostile_lists_and_log_sizes_cannot_exhaust_memory() {
    // A hive whose root lists one lh list 65,535 times through an ri: 4 billion subkeys if the
    // repeats were followed.
    let dir = tempdir();
    let Some(path) = testhive(dir.path()) else { return };
    let mut bytes = std::fs::read(&path).unwrap();
    let root = Hive::parse(bytes.clone(), &path).unwrap().root().unwrap();
    let le32 = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    // A new hive bin at the end holding one index root that names the root's list N times.
    let n = 65_535usize;
    let bins = le32(&bytes, 40) as usize;
    let cell_len = (8 + 4 * n).div_ceil(8) * 8;
    let bin_size = (32 + cell_len).div_ceil(4096) * 4096;
    let mut new_bin = vec![0u8; bin_size];
    new_bin[..4].copy_from_slice(b"hbin");
    new_bin[4..8].copy_from_slice(&(bins as u32).to_le_bytes());
    new_bin[8..12].copy_from_slice(&(bin_size as u32).to_le_bytes());
    new_bin[32..36].copy_from_slice(&(-(cell_len as i32)).to_le_bytes());
    new_bin[36..38].copy_from_slice(b"ri");
    new_bin[38..40].copy_from_slice(&(n as u16).to_le_bytes());
    for i in 0..n {
        new_bin[40 + 4 * i..44 + 4 * i].copy_from_slice(&root.subkeys.to_le_bytes());
    }
    let free = bin_size - 32 - cell_len;
    if free > 0 {
        new_bin[32 + cell_len..36 + cell_len].copy_from_slice(&(free as i32).to_le_bytes());
    }
    bytes.truncate(4096 + bins);
    bytes.extend_from_slice(&new_bin);
    bytes[40..44].copy_from_slice(&((bins + bin_size) as u32).to_le_bytes());
    let ri_off = (bins + 32) as u32;
    let root_at = 4096 + root.off as usize + 4;
    bytes[root_at + 0x1C..root_at + 0x20].copy_from_slice(&ri_off.to_le_bytes());
    let sum = vhdkit::hive::base::checksum(&bytes);
    bytes[0x1FC..0x200].copy_from_slice(&sum.to_le_bytes());
    let hostile = dir.path().join("hostile");
    std::fs::write(&hostile, &bytes).unwrap();
    let out = run(bin("vhdinspect").args(["reg", "--hive-file", hostile.to_str().unwrap(), "list", "\\"]));
    assert_one_line_error(&out, "hostile", &["index root", "twice"]);
    // A log entry that claims 4 GiB of hive bins is not an allocation of 4 GiB.
    let Some(files) =
        yarp_copy("NewDirtyHive1", &["NewDirtyHive", "NewDirtyHive.LOG1", "NewDirtyHive.LOG2"], dir.path())
    else {
        return;
    };
    let primary = std::fs::read(&files[0]).unwrap();
    let mut l1 = std::fs::read(&files[1]).unwrap();
    // The first entry's hive bins size, with both its hashes recomputed so it stays valid.
    let e = 512;
    l1[e + 16..e + 20].copy_from_slice(&0xFFFF_F000u32.to_le_bytes());
    let size = u32::from_le_bytes(l1[e + 4..e + 8].try_into().unwrap()) as usize;
    let h1 = vhdkit::hive::marvin::marvin32(vhdkit::hive::marvin::LOG_SEED, &l1[e + 40..e + size]);
    l1[e + 24..e + 32].copy_from_slice(&h1.to_le_bytes());
    let h2 = vhdkit::hive::marvin::marvin32(vhdkit::hive::marvin::LOG_SEED, &l1[e..e + 32]);
    l1[e + 32..e + 40].copy_from_slice(&h2.to_le_bytes());
    let logs = [vhdkit::hive::log::LogFile { name: &files[1], data: &l1 }];
    let result = vhdkit::hive::log::replay(&primary, &files[0], &logs);
    if let Ok((recovered, _)) = result {
        assert!(recovered.len() < 64 << 20, "the replay grew the hive to {} bytes", recovered.len());
    }
}

#[test]
fn a_tiny_hive_with_a_damaged_base_block_is_an_error_not_a_panic() {
    let dir = tempdir();
    for len in [4096usize, 4100, 4110, 4123, 4124, 8192] {
        let mut b = vec![0u8; len];
        b[..4].copy_from_slice(b"regf");
        b[20] = 1;
        b[24] = 3;
        if len >= 4100 {
            b[4096..4100].copy_from_slice(b"hbin");
        }
        let p = dir.path().join(format!("tiny{len}"));
        std::fs::write(&p, &b).unwrap();
        for cmd in [
            bin("vhdinspect").args(["reg", "--hive-file", p.to_str().unwrap(), "list", "\\"]),
            bin("vhdreg").args(["--hive-file", p.to_str().unwrap(), "get", "\\"]),
        ] {
            let o = run(cmd);
            assert_one_line_error(&o, &format!("tiny{len}"), &[]);
        }
    }
}
