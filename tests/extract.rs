//! Files read out of the image (`vhdinspect cat` and `extract`), checked byte for byte against
//! ntfs-3g (every file and stream of every corpus volume and of the real volumes present) and
//! Sleuth Kit's icat, with times, hard links, hostile names and WOF-compressed files.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;

/// Every regular file under `root` as `path` -> SHA-256 (streams are files `NAME:STREAM`).
fn tree_hashes(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                let rel = entry.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, sha256(&std::fs::read(entry.path()).unwrap()));
            }
        }
    }
    out
}

/// Runs `vhdinspect extract --json IMAGE PATHS... --to OUT` and returns its report.
fn extract(image: &Path, paths: &[&str], out: &Path) -> serde_json::Value {
    let r = run(bin("vhdinspect").args(["extract", "--json"]).arg(image).args(paths).arg("--to").arg(out));
    assert!(r.status.success(), "{}{}", String::from_utf8_lossy(&r.stdout), String::from_utf8_lossy(&r.stderr));
    serde_json::from_slice(&r.stdout).unwrap()
}

/// The extracted tree of each NTFS partition of `image` equals what ntfs-3g reads.
fn assert_extract_matches_ntfs3g(image: &Path) {
    let want = image_file_hashes(image);
    let dir = tempdir();
    let out = dir.path().join("out");
    let report = extract(image, &[], &out);
    for (p, files) in &want {
        let root = if want.len() > 1 { out.join(format!("partition-{p}")) } else { out.clone() };
        let got = tree_hashes(&root);
        std::fs::remove_dir_all(&root).unwrap();
        let differ: Vec<_> = files.keys().chain(got.keys()).filter(|k| files.get(*k) != got.get(*k)).collect();
        assert!(
            differ.is_empty(),
            "{} partition {p}: {} differ, e.g. {:?}",
            image.display(),
            differ.len(),
            &differ[..differ.len().min(5)]
        );
        eprintln!("{} partition {p}: {} files and streams identical to ntfs-3g's", image.display(), files.len());
        // Sleuth Kit, independently: every file it recovers (default streams) reads the same.
        let volume = ReadableVolume::at_sector(&open(image), *p, dir.path());
        let recovered = dir.path().join(format!("tsk-{p}"));
        run_ok(
            Command::new("tsk_recover")
                .args(["-a", "-o"])
                .arg(volume.sector.to_string())
                .arg(&volume.path)
                .arg(&recovered),
        );
        drop(volume);
        let theirs = if recovered.exists() { tree_hashes(&recovered) } else { BTreeMap::new() };
        if recovered.exists() {
            std::fs::remove_dir_all(&recovered).unwrap();
        }
        let metadata = |k: &str| k.split('/').any(|c| c.starts_with('$'));
        let differ: Vec<_> = theirs.iter().filter(|(k, v)| got.get(*k) != Some(*v) && !metadata(k)).collect();
        assert!(
            differ.is_empty(),
            "{} partition {p}: against tsk_recover {:?}",
            image.display(),
            &differ[..differ.len().min(5)]
        );
        let compared = theirs.keys().filter(|k| !metadata(k)).count();
        eprintln!("{} partition {p}: {compared} files identical to Sleuth Kit's", image.display());
    }
    assert!(report["skipped"].as_array().unwrap().iter().all(|s| s["failed"] == false), "{report}");
}

#[test]
fn extract_writes_every_file_and_stream_of_the_corpus_as_ntfs3g_reads_them() {
    for name in ["xp-fixed.vhd", "aligned-dynamic.vhd", "logical-dynamic.vhd", "gpt-dynamic.vhd"] {
        assert_extract_matches_ntfs3g(&corpus(name));
    }
}

#[test]
fn extract_matches_ntfs3g_on_real_windows_volumes() {
    // One volume at a time, each removed after: the Windows-made ones are 1 GiB of data.
    let dir = tempdir();
    let raw_of = |rel: &str| dir.path().join(Path::new(rel).file_stem().unwrap()).with_extension("raw");
    // The 1 GiB one as a bare volume (read in place), the 256 MiB one as the MBR disk it is.
    if let Some(gz) = realdata("ntfs-samples/ntfs-ramslack.raw.gz") {
        let volume = dir.path().join("ramslack-volume.raw");
        gunzip_first_partition(&gz, &volume);
        assert_extract_matches_ntfs3g(&volume);
        std::fs::remove_file(&volume).unwrap();
    }
    if let Some(gz) = realdata("ntfs-samples/ntfs-lastaccess.raw.gz") {
        let raw = raw_of("ntfs-lastaccess.raw.gz");
        gunzip_sparse(&gz, &raw);
        assert_extract_matches_ntfs3g(&raw);
        std::fs::remove_file(&raw).unwrap();
    }
    for rel in ["dfvfs/test_data/windows_volume.qcow2", "plaso/test_data/vsstest.qcow2"] {
        if let Some(q) = realdata(rel) {
            let raw = raw_of(rel);
            run_ok(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(&q).arg(&raw));
            assert_extract_matches_ntfs3g(&raw);
            std::fs::remove_file(&raw).unwrap();
        }
    }
    if let Some(v) = realdata("ntfs/testdata/testfs1") {
        assert_extract_matches_ntfs3g(&v);
    }
}

/// The bytes of `volume`'s file at `path` (or its stream), as Sleuth Kit's icat reads them.
fn icat(volume: &Path, path: &str, stream: Option<&str>) -> Vec<u8> {
    let inode = String::from_utf8(run_ok(Command::new("ifind").args(["-n", path]).arg(volume))).unwrap();
    let inode = inode.trim().to_string();
    let address = match stream {
        None => inode,
        Some(name) => {
            let istat = String::from_utf8(run_ok(Command::new("istat").arg(volume).arg(&inode))).unwrap();
            let line = istat
                .lines()
                .find(|l| l.starts_with("Type: $DATA") && l.contains(&format!("Name: {name}")))
                .unwrap_or_else(|| panic!("istat shows no stream {name} of {path}: {istat}"));
            let id = line.split(['(', ')']).nth(1).unwrap().to_string();
            format!("{inode}-{id}")
        }
    };
    run_ok(Command::new("icat").arg(volume).arg(address))
}

#[test]
fn cat_reads_every_file_and_stream_as_ntfs3g_and_icat_do() {
    let dir = tempdir();
    let image = corpus("xp-fixed.vhd");
    let volume = partition_image(&open(&image), 1, dir.path());
    let files = ntfs3g_hashes(&volume);
    let mut checked = 0;
    for key in files.keys() {
        let (path, stream) = match key.split_once(':') {
            Some((p, s)) => (p, Some(s)),
            None => (key.as_str(), None),
        };
        let ours = run(bin("vhdinspect").arg("cat").arg(&image).arg(key));
        assert!(ours.status.success(), "{key}: {}", String::from_utf8_lossy(&ours.stderr));
        assert_eq!(sha256(&ours.stdout), files[key], "{key} against ntfs-3g");
        assert_eq!(sha256(&ours.stdout), sha256(&icat(&volume, path, stream)), "{key} against icat");
        checked += 1;
    }
    for needed in
        ["compressed/squeezed.txt", "sparse.bin", "tiny.txt", "docs/original.txt:bigstream", "docs/fragmented.bin"]
    {
        assert!(files.contains_key(needed), "the corpus has {needed}");
    }
    eprintln!("{checked} files and streams identical to ntfs-3g's and icat's");
    let folder = run(bin("vhdinspect").arg("cat").arg(&image).arg("docs"));
    assert_usage_error(&folder, "docs", &["folder"]);
    let missing = run(bin("vhdinspect").arg("cat").arg(&image).arg("no/such/file"));
    assert_one_line_error(&missing, "xp-fixed.vhd", &["no/such/file"]);
}

#[test]
fn extracted_files_keep_their_times_and_hard_links() {
    let dir = tempdir();
    let image = corpus("xp-fixed.vhd");
    let volume = partition_image(&open(&image), 1, dir.path());
    let out = dir.path().join("out");
    let report = extract(&image, &[], &out);
    assert!(report["hard_links"].as_u64().unwrap() >= 1, "{report}");
    let times = with_ntfs3g(&volume, true, |mnt| {
        let mut t = BTreeMap::new();
        for rel in tree_hashes(mnt).keys().filter(|k| !k.contains(':')) {
            let m = std::fs::metadata(mnt.join(rel)).unwrap();
            t.insert(rel.clone(), (m.modified().unwrap(), m.len()));
        }
        t
    });
    for (rel, (modified, len)) in &times {
        let m = std::fs::metadata(out.join(rel)).unwrap();
        assert_eq!((m.modified().unwrap(), m.len()), (*modified, *len), "{rel}");
    }
    use std::os::unix::fs::MetadataExt;
    let linked = times.keys().filter(|k| std::fs::metadata(out.join(k)).unwrap().nlink() > 1).count();
    assert!(linked >= 2, "the hard link's two names share one file");
}

#[test]
fn a_subtree_or_a_file_lands_under_its_own_name() {
    let dir = tempdir();
    let image = corpus("xp-fixed.vhd");
    let all = {
        let out = dir.path().join("all");
        extract(&image, &[], &out);
        tree_hashes(&out)
    };
    let out = dir.path().join("some");
    extract(&image, &["docs", "compressed/squeezed.txt"], &out);
    let got = tree_hashes(&out);
    assert_eq!(got["squeezed.txt"], all["compressed/squeezed.txt"]);
    let docs: BTreeMap<_, _> =
        all.iter().filter(|(k, _)| k.starts_with("docs/")).map(|(k, v)| (k.clone(), v.clone())).collect();
    let got_docs: BTreeMap<_, _> = got.into_iter().filter(|(k, _)| k.starts_with("docs/")).collect();
    assert_eq!(got_docs, docs);
}

#[test]
fn an_existing_target_is_refused_and_nothing_is_written() {
    let dir = tempdir();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let r = run(bin("vhdinspect").arg("extract").arg(corpus("aligned-dynamic.vhd")).arg("--to").arg(&out));
    assert_one_line_error(&r, "out", &["exists"]);
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary folder left beside it");
}

/// Overwrites the first `$FILE_NAME` spelling of `from` in `volume`'s MFT records with `to`
/// (as long), keeping every record's update sequence intact.
fn rename_in_records(volume: &Path, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(volume).unwrap();
    let utf16 = |s: &str| s.encode_utf16().flat_map(u16::to_le_bytes).collect::<Vec<u8>>();
    let (old, new) = (utf16(from), utf16(to));
    let mut at = 0;
    let mut done = 0;
    while let Some(i) = bytes[at..].windows(old.len()).position(|w| w == old) {
        let hit = at + i;
        let record = hit / 1024 * 1024;
        // Only names inside FILE records, and not across a sector's last two bytes.
        if &bytes[record..record + 4] == b"FILE" && (hit % 512) + old.len() <= 510 {
            bytes[hit..hit + new.len()].copy_from_slice(&new);
            done += 1;
        }
        at = hit + 1;
    }
    assert!(done > 0, "{from} not found in a FILE record");
    std::fs::write(volume, bytes).unwrap();
}

#[test]
fn names_from_the_volume_never_lead_outside_the_folder() {
    let dir = tempdir();
    let volume = partition_image(&open(&corpus("aligned-dynamic.vhd")), 1, dir.path());
    let files = ntfs3g_hashes(&volume);
    let victim = files
        .keys()
        .filter(|k| !k.contains(':'))
        .map(|k| k.rsplit('/').next().unwrap().to_string())
        .find(|name| name.len() >= 4)
        .expect("a file with a name of 4 characters or more");
    let hostile = format!("../{}", "x".repeat(victim.len() - 3));
    rename_in_records(&volume, &victim, &hostile);
    let inner = dir.path().join("deep");
    std::fs::create_dir(&inner).unwrap();
    let out = inner.join("out");
    let report = extract(&volume, &[], &out);
    let skipped = report["skipped"].as_array().unwrap();
    assert!(skipped.iter().any(|s| s["path"].as_str().unwrap().contains("..")), "{report}");
    let outside: Vec<_> = std::fs::read_dir(&inner).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(outside, vec![std::ffi::OsString::from("out")], "nothing written beside the folder");
    assert!(!dir.path().join("xxx").exists() && !tree_hashes(&out).keys().any(|k| k.contains("..")));
    // A stream with such a name is left out by design too: not a failure (exit 0).
    let volume = partition_image(&open(&corpus("aligned-dynamic.vhd")), 1, dir.path());
    let stream = files
        .keys()
        .filter(|k| !k.starts_with('$'))
        .find_map(|k| k.split_once(':').map(|(_, s)| s.to_string()))
        .filter(|s| s.len() >= 4)
        .expect("a stream with a name of 4 characters or more");
    rename_in_records(&volume, &stream, &format!("../{}", "y".repeat(stream.len() - 3)));
    let report = extract(&volume, &[], &dir.path().join("again"));
    let left_out = report["skipped"].as_array().unwrap().iter().find(|s| s["path"].as_str().unwrap().contains(":../"));
    assert_eq!(left_out.expect("the stream is left out")["failed"], false, "{report}");
}

/// The compressed resource of the one file in a WIM that wimlib wrote, as (chunk table +
/// chunks), which is also how WOF stores a file in its `WofCompressedData` stream.
fn wim_resource(wim: &Path, size: u64) -> Vec<u8> {
    let b = std::fs::read(wim).unwrap();
    assert_eq!(&b[..8], b"MSWIM\0\0\0");
    let le = |at: usize, n: usize| b[at..at + n].iter().rev().fold(0u64, |v, &x| v << 8 | x as u64);
    let (table_size, table_at) = (le(48, 7) as usize, le(56, 8) as usize);
    b[table_at..table_at + table_size]
        .chunks(50)
        .find(|e| e[16..24] == size.to_le_bytes())
        .map(|e| {
            let (len, at) = (
                e[..7].iter().rev().fold(0usize, |v, &x| v << 8 | x as usize),
                e[8..16].iter().rev().fold(0usize, |v, &x| v << 8 | x as usize),
            );
            b[at..at + len].to_vec()
        })
        .expect("the file's resource in the WIM")
}

#[test]
fn wof_compressed_files_read_as_their_bytes_xpress_and_lzx() {
    let dir = tempdir();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // Text, x86 CALLs (E8 and an address, which LZX translates) and noise no coder shrinks.
    let mut content: Vec<u8> =
        (0..100_000u32).flat_map(|i| format!("{} wof line {}\n", i % 977, i / 7).into_bytes()).take(100_000).collect();
    content.extend((0..1500u32).flat_map(|i| [0xE8].into_iter().chain((i * 37).to_le_bytes())).chain([0x90; 3]));
    content.extend(noise(0x9E37_79B9, 6000));
    std::fs::write(src.join("file.bin"), &content).unwrap();
    let mut resources = Vec::new();
    for (algorithm, compress, chunk) in
        [(0u8, "XPRESS", "4096"), (2, "XPRESS", "8192"), (3, "XPRESS", "16384"), (1, "LZX", "32768")]
    {
        let wim = dir.path().join(format!("{compress}-{chunk}.wim"));
        run_ok(Command::new("wimlib-imagex").arg("capture").arg(&src).arg(&wim).args([
            &format!("--compress={compress}"),
            &format!("--chunk-size={chunk}"),
            "--no-acls",
        ]));
        resources.push((algorithm, wim_resource(&wim, content.len() as u64)));
    }
    let volume = dir.path().join("wof.img");
    std::fs::File::create(&volume).unwrap().set_len(16 << 20).unwrap();
    run_ok(Command::new("mkntfs").args(["-F", "-f", "-q", "-L", "wof"]).arg(&volume));
    with_ntfs3g(&volume, false, |mnt| {
        for (algorithm, resource) in &resources {
            let f = mnt.join(format!("wof-{algorithm}.bin"));
            std::fs::File::create(&f).unwrap().set_len(content.len() as u64).unwrap();
            run_ok(
                Command::new("setfattr")
                    .args(["-n", "user.WofCompressedData", "-v"])
                    .arg(format!("0x{}", hex::encode(resource)))
                    .arg(&f),
            );
            // IO_REPARSE_TAG_WOF, 16 bytes: WOF version 1, file provider 2, version 1, algorithm.
            let reparse = [
                &0x8000_0017u32.to_le_bytes()[..],
                &16u16.to_le_bytes(),
                &[0, 0],
                &1u32.to_le_bytes(),
                &2u32.to_le_bytes(),
                &1u32.to_le_bytes(),
                &(*algorithm as u32).to_le_bytes(),
            ]
            .concat();
            run_ok(
                Command::new("setfattr")
                    .args(["-n", "system.ntfs_reparse_data", "-v"])
                    .arg(format!("0x{}", hex::encode(reparse)))
                    .arg(&f),
            );
        }
    });
    for algorithm in [0u8, 1, 2, 3] {
        let got = run(bin("vhdinspect").arg("cat").arg(&volume).arg(format!("wof-{algorithm}.bin")));
        assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
        assert!(got.stdout == content, "WOF algorithm {algorithm}: the uncompressed bytes");
    }
    let out = dir.path().join("out");
    extract(&volume, &[], &out);
    for algorithm in [0u8, 1, 2, 3] {
        assert!(std::fs::read(out.join(format!("wof-{algorithm}.bin"))).unwrap() == content);
    }
    assert!(!out.join("wof-0.bin:WofCompressedData").exists());
    // A damaged LZX chunk ends in an error naming it, or decodes (LZX has no checksum), and
    // never panics.
    let image = std::fs::read(&volume).unwrap();
    let resource = &resources.iter().find(|(a, _)| *a == 1).unwrap().1;
    let at = image.windows(64).position(|w| w == &resource[resource.len() - 64..]).expect("the LZX data on disk");
    let mut damaged = image.clone();
    for b in &mut damaged[at - 2000..at + 64] {
        *b ^= 0x5A;
    }
    std::fs::write(&volume, &damaged).unwrap();
    let got = run(bin("vhdinspect").arg("cat").arg(&volume).arg("wof-1.bin"));
    match got.status.code() {
        Some(0) => assert_ne!(got.stdout, content, "the damage shows"),
        _ => assert_one_line_error(&got, "wof.img", &["chunk", "LZX"]),
    }
}
