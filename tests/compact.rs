//! `vhdcompact` against independent readers: ntfs-3g mounts the output and every file and ADS
//! hashes identical to the input; qemu-img reads every output.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use vhdkit::{BlockDevice, DiskImage, OpenOptions};

fn compact(input: &Path, output: &Path, args: &[&str]) -> serde_json::Value {
    let out = run(bin("vhdcompact").arg(input).arg(output).args(args).arg("--json"));
    assert!(out.status.success(), "vhdcompact {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn qemu_reads(image: &Path, dir: &Path) -> Vec<u8> {
    let info = run_ok(Command::new("qemu-img").args(["info", "-f", "vpc", "--output=json"]).arg(image));
    let info: serde_json::Value = serde_json::from_slice(&info).unwrap();
    assert_eq!(info["format"], "vpc");
    qemu_raw(image, dir)
}

/// Files in the working dir other than the ones named: leftovers of a failed run.
fn leftovers(dir: &Path, expected: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !expected.contains(&n.as_str()))
        .collect()
}

#[test]
fn every_file_and_stream_survives_every_conversion() {
    let dir = tempdir();
    for (name, args) in [
        ("xp-fixed.vhd", vec!["--to", "dynamic"]),
        ("xp-fixed.vhd", vec!["--to", "dynamic", "--zero-free", "--block-size", "512K"]),
        ("xp-fixed.vhd", vec!["--zero-free"]),
        ("aligned-dynamic.vhd", vec![]),
        ("aligned-dynamic.vhd", vec!["--to", "fixed", "--zero-free"]),
        ("logical-dynamic.vhd", vec!["--zero-free", "--verify"]),
        ("gpt-dynamic.vhd", vec!["--to", "fixed"]),
    ] {
        let input = corpus(name);
        let output = dir.path().join("out.vhd");
        let _ = std::fs::remove_file(&output);
        let r = compact(&input, &output, &args);
        let want = image_file_hashes(&input);
        assert!(!want.is_empty());
        assert_eq!(image_file_hashes(&output), want, "{name} {args:?}");
        // qemu-img reads the output, and it has the input's size.
        let raw = qemu_reads(&output, dir.path());
        assert_eq!(raw.len() as u64, open(&input).len(), "{name} {args:?}");
        assert_eq!(r["output_bytes"], std::fs::metadata(&output).unwrap().len());
        assert!(leftovers(dir.path(), &["out.vhd"]).is_empty());
    }
}

#[test]
fn stale_data_of_deleted_files_leaves_the_image() {
    let dir = tempdir();
    let input = corpus("xp-fixed.vhd");
    let stale = |data: &[u8]| data.windows(13).filter(|w| w == b"STALE-DELETED").count();
    let before = stale(&read_all(&open(&input)));
    assert!(before > 1000, "the corpus holds stale data: {before}");
    let plain = dir.path().join("plain.vhd");
    let r = compact(&input, &plain, &["--to", "dynamic"]);
    assert!(r["dropped_blocks"].as_u64().unwrap() >= 10);
    assert!(r["output_bytes"].as_u64().unwrap() < r["input_bytes"].as_u64().unwrap() / 2);
    let zeroed = dir.path().join("zeroed.vhd");
    let r = compact(&input, &zeroed, &["--to", "dynamic", "--zero-free"]);
    assert!(r["zeroed_bytes"].as_u64().unwrap() > 0);
    assert_eq!(stale(&read_all(&open(&zeroed))), 0, "stale data remains after --zero-free");
    assert_eq!(stale(&std::fs::read(&zeroed).unwrap()), 0, "stale data in the file itself");
}

#[test]
fn an_image_without_ntfs_compacts_to_an_identical_disk() {
    let dir = tempdir();
    let input = corpus("nofs-dynamic.vhd");
    for args in [vec![], vec!["--to", "fixed"], vec!["--block-size", "512K"]] {
        let output = dir.path().join("nofs.vhd");
        let _ = std::fs::remove_file(&output);
        compact(&input, &output, &args);
        let cmp = run(Command::new("qemu-img").args(["compare", "-f", "vpc", "-F", "vpc"]).arg(&input).arg(&output));
        assert!(cmp.status.success(), "{args:?}: {}", String::from_utf8_lossy(&cmp.stdout));
    }
}

#[test]
fn a_fixed_output_is_fully_written() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempdir();
    let output = dir.path().join("fixed.vhd");
    compact(&corpus("aligned-dynamic.vhd"), &output, &["--to", "fixed"]);
    let m = std::fs::metadata(&output).unwrap();
    assert!(m.blocks() * 512 >= m.len(), "sparse output: {} blocks for {} bytes", m.blocks(), m.len());
}

#[test]
fn azure_output_is_fixed_whole_mib_with_consistent_chs() {
    let dir = tempdir();
    // A disk of 64 MiB + 3 sectors, as a raw image: Azure needs whole MiB.
    let raw = dir.path().join("odd.raw");
    let mut data = read_all(&open(&corpus("aligned-dynamic.vhd")));
    data.extend_from_slice(&[0u8; 1536]);
    std::fs::write(&raw, &data).unwrap();
    let output = dir.path().join("azure.vhd");
    let r = compact(&raw, &output, &["--azure"]);
    assert_eq!(r["output_format"], "fixed");
    assert_eq!(r["output_disk_size"], 65 << 20);
    let img = open(&output);
    assert_eq!(img.kind().name(), "fixed");
    let f = img.footer().unwrap();
    assert_eq!(f.current_size, 65 << 20);
    assert_eq!(f.geometry, vhdkit::vhd::geometry::Geometry::for_size(65 << 20));
    assert!(f.checksum_valid());
    let out = read_all(&img);
    assert!(out[data.len()..].iter().all(|&b| b == 0), "the rounding is zeros");
    assert_eq!(image_file_hashes(&output), image_file_hashes(&raw));
    assert_eq!(std::fs::metadata(&output).unwrap().len(), (65 << 20) + 512);
    // Too small for Azure.
    let tiny = dir.path().join("tiny.raw");
    std::fs::write(&tiny, vec![0u8; 1 << 20]).unwrap();
    let out =
        run(bin("vhdcompact").arg(&tiny).arg(dir.path().join("t.vhd")).args(["--azure", "--input-format", "raw"]));
    assert_one_line_error(&out, "tiny.raw", &["Azure accepts disks of 20971520"]);
    assert!(!dir.path().join("t.vhd").exists());
}

/// A differencing child of a copy of the aligned image, changed with ntfs-3g: (parent, child).
fn changed_child(dir: &Path) -> (PathBuf, PathBuf) {
    let parent = dir.join("parent.vhd");
    std::fs::copy(corpus("aligned-dynamic.vhd"), &parent).unwrap();
    let disk = read_all(&open(&parent));
    let (start, len) = (2048 * 512, 129024 * 512);
    let part = dir.join("vol.img");
    std::fs::write(&part, &disk[start..start + len]).unwrap();
    let new_file = dir.join("new.bin");
    std::fs::write(&new_file, (0..400_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>()).unwrap();
    run_ok(Command::new("ntfscp").arg("-f").arg(&part).arg(&new_file).arg("data/added.bin"));
    let replaced = dir.join("replaced.bin");
    std::fs::write(&replaced, vec![0xEE; 100_000]).unwrap();
    run_ok(Command::new("ntfscp").arg("-f").arg(&part).arg(&replaced).arg("data/nested/small.bin"));
    std::fs::remove_file(&replaced).unwrap();
    let mut changed = disk.clone();
    changed[start..start + len].copy_from_slice(&std::fs::read(&part).unwrap());
    std::fs::remove_file(&part).unwrap();
    // Stale data in free clusters of a block the parent holds no allocated cluster in.
    let map =
        serde_json::from_slice::<serde_json::Value>(&run_ok(bin("vhdinspect").args(["map", "--json"]).arg(&parent)))
            .unwrap();
    let free = map["blocks"].as_array().unwrap().iter().find(|b| b["droppable"] == true).unwrap()["offset"]
        .as_u64()
        .unwrap() as usize;
    changed[free + 4096..free + 4096 + 64 * 1024].fill(0x77);
    std::fs::remove_file(&new_file).unwrap();
    let child = dir.join("child.vhd");
    let parent_img = open(&parent);
    let base = read_all(&parent_img);
    let mut c =
        vhdkit::SparseVhd::create(&child, 0, 2 << 20, Some(vhdkit::ParentLink { image: &parent_img, path: &parent }))
            .unwrap();
    for s in 0..changed.len() / 512 {
        if changed[s * 512..(s + 1) * 512] != base[s * 512..(s + 1) * 512] {
            vhdkit::WritableDevice::write_at(&mut c, (s * 512) as u64, &changed[s * 512..(s + 1) * 512]).unwrap();
        }
    }
    (parent, child)
}

/// File hashes of partition 1 of an image read through vhdkit (so differencing works).
fn hashes_via_vhdkit(image: &Path) -> std::collections::BTreeMap<String, String> {
    let dir = tempdir();
    let img = DiskImage::open(image, &OpenOptions::default()).unwrap();
    ntfs3g_hashes(&partition_image(&img, 1, dir.path()))
}

#[test]
fn a_differencing_child_compacts_and_merges_file_identical() {
    let dir = tempdir();
    let (parent, child) = changed_child(dir.path());
    let parent_hash = sha256(&std::fs::read(&parent).unwrap());
    let want = hashes_via_vhdkit(&child);
    assert!(want.contains_key("data/added.bin"));
    assert_eq!(want["data/nested/small.bin"], sha256(&[0xEE; 100_000]));
    // The child keeps its parent; blocks whose present sectors are all free go.
    let compacted = dir.path().join("child-compacted.vhd");
    let r = compact(&child, &compacted, &["--verify"]);
    assert_eq!(r["output_format"], "differencing");
    assert_eq!(hashes_via_vhdkit(&compacted), want);
    let img = open(&compacted);
    assert_eq!(img.as_sparse().unwrap().parent_resolution().unwrap().resolved_by, "W2ru");
    // --merge: a standalone image of the whole chain.
    for to in ["dynamic", "fixed"] {
        let merged = dir.path().join(format!("merged-{to}.vhd"));
        let r = compact(&child, &merged, &["--merge", "--to", to, "--verify"]);
        assert_eq!(r["output_format"], to);
        assert_eq!(open(&merged).kind().name(), to);
        assert_eq!(image_file_hashes(&merged)[&1], want);
    }
    // Without --merge a standalone output is refused.
    let out = run(bin("vhdcompact").arg(&child).arg(dir.path().join("x.vhd")).args(["--to", "dynamic"]));
    assert_one_line_error(&out, "vhdcompact", &["--merge"]);
    assert_eq!(sha256(&std::fs::read(&parent).unwrap()), parent_hash, "the parent changed");
}

#[test]
fn zero_free_keeps_a_childs_free_sectors_present() {
    let dir = tempdir();
    let (_, child) = changed_child(dir.path());
    let plain = dir.path().join("plain.vhd");
    compact(&child, &plain, &[]);
    let zeroed = dir.path().join("zeroed.vhd");
    let r = compact(&child, &zeroed, &["--zero-free"]);
    assert!(r["zeroed_bytes"].as_u64().unwrap() > 0);
    let count = |p: &Path| {
        let img = open(p);
        let s = img.as_sparse().unwrap();
        s.bat().allocated().map(|(b, _)| s.sectors_present(b).unwrap() as u64).sum::<u64>()
    };
    assert!(count(&zeroed) > count(&plain), "zeroed sectors stay present");
    assert_eq!(hashes_via_vhdkit(&zeroed), hashes_via_vhdkit(&child));
}

#[test]
fn refusals_leave_no_output() {
    let dir = tempdir();
    let input = dir.path().join("in.vhd");
    std::fs::copy(corpus("aligned-dynamic.vhd"), &input).unwrap();
    let hash = sha256(&std::fs::read(&input).unwrap());
    // OUT == IN, also through another name.
    let out = run(bin("vhdcompact").arg(&input).arg(&input));
    assert_one_line_error(&out, "in.vhd", &["refusing to overwrite an input"]);
    let out = run(bin("vhdcompact").arg(&input).arg(dir.path().join(".").join("in.vhd")));
    assert_eq!(out.status.code(), Some(1));
    // A hibernated volume, unless forced.
    let img = open(&input);
    let part = partition_image(&img, 1, dir.path());
    let hib = dir.path().join("hiberfil.sys");
    std::fs::write(&hib, [b"hibr".as_slice(), &[7u8; 8192]].concat()).unwrap();
    run_ok(Command::new("ntfscp").arg("-f").arg(&part).arg(&hib).arg("hiberfil.sys"));
    let mut disk = read_all(&img);
    disk[2048 * 512..2048 * 512 + std::fs::metadata(&part).unwrap().len() as usize]
        .copy_from_slice(&std::fs::read(&part).unwrap());
    let hibernated = dir.path().join("hibernated.raw");
    std::fs::write(&hibernated, &disk).unwrap();
    let out = run(bin("vhdcompact").arg(&hibernated).arg(dir.path().join("h.vhd")));
    assert_one_line_error(&out, "hibernated.raw", &["partition 1", "hibernated", "--force"]);
    assert!(!dir.path().join("h.vhd").exists());
    let forced = run(bin("vhdcompact").arg(&hibernated).arg(dir.path().join("h.vhd")).arg("--force"));
    assert!(forced.status.success());
    // A read error in the middle of the copy: no output, no temporary file.
    let broken = dir.path().join("broken.vhd");
    std::fs::copy(&input, &broken).unwrap();
    let s = open(&broken);
    let sparse = s.as_sparse().unwrap();
    let (last, _) = sparse.bat().allocated().last().unwrap();
    let entry_at = sparse.header().table_offset + 4 * last;
    drop(s);
    let mut bytes = std::fs::read(&broken).unwrap();
    bytes[entry_at as usize..entry_at as usize + 4].copy_from_slice(&0x00F0_0000u32.to_be_bytes());
    std::fs::write(&broken, &bytes).unwrap();
    let out = run(bin("vhdcompact").arg(&broken).arg(dir.path().join("b.vhd")).arg("--to").arg("fixed"));
    assert_one_line_error(&out, "broken.vhd", &[&format!("BAT entry {last}")]);
    let left = leftovers(dir.path(), &["in.vhd", "part1.img", "hiberfil.sys", "hibernated.raw", "h.vhd", "broken.vhd"]);
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(sha256(&std::fs::read(&input).unwrap()), hash, "the input changed");
}

/// File hashes of every NTFS volume through vhdkit's own reader (no mount: fast enough to run
/// after every simulated crash).
fn own_file_hashes(image: &Path) -> Option<std::collections::BTreeMap<String, String>> {
    let img = DiskImage::open(image, &OpenOptions::default()).ok()?;
    let map = vhdkit::ImageMap::build(&img, None).ok()?;
    let mut out = std::collections::BTreeMap::new();
    for (p, idx) in map.ntfs() {
        let view = vhdkit::PartitionView::new(&img, p);
        for f in &idx.files {
            for s in f.streams.iter().filter(|s| s.is_data() && !s.resident) {
                let data = vhdkit::ntfs::stream::read_runs(
                    &view,
                    p.index,
                    idx.cluster_size(),
                    &s.runs,
                    s.data_size,
                    s.initialized_size,
                )
                .ok()?;
                out.insert(format!("{}:{}:{}", p.index, idx.path(f, 0), s.name), sha256(&data));
            }
        }
    }
    Some(out)
}

#[test]
fn in_place_compaction_survives_a_crash_after_every_write() {
    let dir = tempdir();
    let (_, child) = changed_child(dir.path());
    for (name, source, flag) in
        [("dynamic", corpus("xp-fixed.vhd"), "--zero-free"), ("differencing", child.clone(), "--verify")]
    {
        // A dynamic image with blocks to drop, from the XP image; the child as is.
        let base = dir.path().join(format!("base-{name}.vhd"));
        if name == "dynamic" {
            run_ok(
                Command::new("qemu-img")
                    .args(["convert", "-f", "vpc", "-O", "vpc", "-o", "subformat=dynamic"])
                    .arg(&source)
                    .arg(&base),
            );
        } else {
            std::fs::copy(&source, &base).unwrap();
        }
        let want = own_file_hashes(&base).unwrap();
        let mut completed = false;
        for n in 0..400 {
            let work = dir.path().join(format!("work-{name}.vhd"));
            std::fs::copy(&base, &work).unwrap();
            let out = run(bin("vhdcompact")
                .arg(&work)
                .arg("--in-place")
                .arg(flag)
                .env("VHDKIT_FAULT_AFTER_WRITES", n.to_string()));
            let got = own_file_hashes(&work).unwrap_or_else(|| panic!("{name}: unreadable after a crash at write {n}"));
            assert_eq!(got, want, "{name}: files differ after a crash at write {n}");
            if out.status.success() {
                completed = true;
                assert!(
                    std::fs::metadata(&work).unwrap().len() < std::fs::metadata(&base).unwrap().len(),
                    "{name}: the file did not shrink"
                );
                let check = run(bin("vhdinspect").arg("check").arg(&work));
                assert!(check.status.success(), "{name}: {}", String::from_utf8_lossy(&check.stdout));
                break;
            }
        }
        assert!(completed, "{name}: the run never completed");
    }
    // ntfs-3g agrees on the finished dynamic image.
    let work = dir.path().join("work-dynamic.vhd");
    assert_eq!(image_file_hashes(&work), image_file_hashes(&dir.path().join("base-dynamic.vhd")));
}

#[test]
fn in_place_verify_and_refusals() {
    let dir = tempdir();
    let work = dir.path().join("w.vhd");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "vpc", "-O", "vpc", "-o", "subformat=dynamic"])
            .arg(corpus("xp-fixed.vhd"))
            .arg(&work),
    );
    let out = run_ok(bin("vhdcompact").arg(&work).args(["--in-place", "--verify", "--json"]));
    let r: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(r["in_place"], true);
    assert!(r["verify"]["mismatches"].as_array().unwrap().is_empty());
    assert!(r["verify"]["checked_bytes"].as_u64().unwrap() > 1 << 20);
    assert!(r["output_bytes"].as_u64().unwrap() < r["input_bytes"].as_u64().unwrap());
    let out = run(bin("vhdcompact").arg(&work).args(["--in-place", "--to", "fixed"]));
    assert_usage_error(&out, "vhdcompact", &["in place, an image keeps its kind"]);
    // A fixed image in place: only free clusters are zeroed, the size stays.
    let fixed = dir.path().join("f.vhd");
    std::fs::copy(corpus("xp-fixed.vhd"), &fixed).unwrap();
    let want = image_file_hashes(&fixed);
    let out = run_ok(bin("vhdcompact").arg(&fixed).args(["--in-place", "--zero-free", "--json"]));
    let r: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(r["zeroed_bytes"].as_u64().unwrap() > 0);
    assert_eq!(std::fs::metadata(&fixed).unwrap().len(), open(&corpus("xp-fixed.vhd")).len() + 512);
    assert_eq!(image_file_hashes(&fixed), want);
}

#[test]
fn an_unreadable_ntfs_partition_is_kept_whole() {
    let dir = tempdir();
    let mut disk = read_all(&open(&corpus("logical-dynamic.vhd")));
    // Break partition 5's $MFT record 0 signature: that volume can no longer be read.
    let p5 = 41023usize * 512;
    let mft_lcn = u64::from_le_bytes(disk[p5 + 0x30..p5 + 0x38].try_into().unwrap()) as usize;
    disk[p5 + mft_lcn * 1024..p5 + mft_lcn * 1024 + 4].copy_from_slice(b"XXXX");
    let raw = dir.path().join("broken-p5.raw");
    std::fs::write(&raw, &disk).unwrap();
    let output = dir.path().join("out.vhd");
    let r = compact(&raw, &output, &["--to", "dynamic"]);
    let p = r["partitions"].as_array().unwrap().iter().find(|p| p["partition"] == 5).unwrap();
    assert_eq!(p["contents"], "unreadable ntfs");
    let out = read_all(&open(&output));
    let end = p5 + 24513 * 512;
    assert_eq!(sha256(&out[p5..end]), sha256(&disk[p5..end]), "partition 5 changed");
}

#[test]
fn a_block_size_that_is_not_a_whole_number_of_sectors_is_refused() {
    let dir = tempdir();
    let out = run(bin("vhdcompact")
        .arg(corpus("aligned-dynamic.vhd"))
        .arg(dir.path().join("o.vhd"))
        .args(["--block-size", "3000"]));
    assert_one_line_error(&out, "o.vhd", &["block size 3000"]);
}

#[test]
fn the_upload_plan_holds_every_needed_byte() {
    let dir = tempdir();
    let input = corpus("xp-fixed.vhd");
    let out = run_ok(bin("vhdinspect").args(["ranges", "--json"]).arg(&input));
    let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let disk = read_all(&open(&input));
    // A disk rebuilt from the ranges alone (zeros elsewhere) holds the same files.
    let mut rebuilt = vec![0u8; disk.len()];
    let mut last_end = 0;
    for r in j["ranges"].as_array().unwrap() {
        let (at, len) = (r["offset"].as_u64().unwrap() as usize, r["length"].as_u64().unwrap() as usize);
        assert!(at % 512 == 0 && len % 512 == 0 && len > 0 && len <= 4 << 20, "{r}");
        assert!(at >= last_end, "ranges overlap or are unsorted at {at}");
        last_end = at + len;
        rebuilt[at..at + len].copy_from_slice(&disk[at..at + len]);
    }
    let raw = dir.path().join("rebuilt.raw");
    std::fs::write(&raw, &rebuilt).unwrap();
    assert_eq!(image_file_hashes(&raw), image_file_hashes(&input));
    let data = j["data_bytes"].as_u64().unwrap();
    assert!(data < disk.len() as u64 / 4, "stale data and zeros are skipped: {data}");
}

/// Runs `vhdcompact INPUT OUT ARGS` with SOURCE_DATE_EPOCH set (or unset) and returns OUT's bytes.
fn compact_bytes(input: &Path, out: &Path, args: &[&str], epoch: Option<&str>) -> Vec<u8> {
    let _ = std::fs::remove_file(out);
    let mut cmd = bin("vhdcompact");
    cmd.arg(input).arg(out).args(args);
    match epoch {
        Some(e) => cmd.env("SOURCE_DATE_EPOCH", e),
        None => cmd.env_remove("SOURCE_DATE_EPOCH"),
    };
    run_ok(&mut cmd);
    std::fs::read(out).unwrap()
}

#[test]
fn same_input_and_options_give_the_same_bytes() {
    let dir = tempdir();
    let d = dir.path();
    let (_parent, child) = changed_child(d);
    let vhdx = d.join("in.vhdx");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "vpc", "-O", "vhdx"])
            .arg(corpus("aligned-dynamic.vhd"))
            .arg(&vhdx),
    );
    let xp = corpus("xp-fixed.vhd");
    let dynamic = corpus("aligned-dynamic.vhd");
    // Every direction of every conversion, realignment (whose registry edits carry
    // timestamps) and a differencing output included.
    let runs: Vec<(&Path, &str, Vec<&str>)> = vec![
        (&xp, "vhd", vec!["--to", "dynamic"]),
        (&dynamic, "vhd", vec!["--to", "fixed"]),
        (&xp, "vhd", vec!["--azure"]),
        (&xp, "vhdx", vec!["--to", "dynamic", "--realign"]),
        (&dynamic, "vhdx", vec!["--to", "fixed"]),
        (&vhdx, "vhd", vec!["--to", "dynamic"]),
        (&vhdx, "vhdx", vec!["--block-size", "1M"]),
        (&vhdx, "vhd", vec!["--azure"]),
        (&child, "vhd", vec!["--to", "differencing"]),
        (&child, "vhdx", vec!["--merge"]),
    ];
    for (i, (input, ext, args)) in runs.iter().enumerate() {
        let out = d.join(format!("out{i}.{ext}"));
        let first = compact_bytes(input, &out, args, Some("1700000000"));
        let again = compact_bytes(input, &out, args, Some("1700000000"));
        assert!(first == again, "{args:?} to .{ext}: two runs differ");
        let mut flagged = args.clone();
        flagged.push("--deterministic");
        let fresh = compact_bytes(input, &out, args, None);
        assert!(fresh != first, "{args:?} to .{ext}: a fresh output has the same identifiers");
        let flag_only = compact_bytes(input, &out, &flagged, None);
        assert!(flag_only == compact_bytes(input, &out, &flagged, None), "{args:?} --deterministic: two runs differ");
        if *ext == "vhd" {
            // The footer's timestamp is SOURCE_DATE_EPOCH in VHD seconds (since 2000).
            let ts = u32::from_be_bytes(first[first.len() - 512 + 24..first.len() - 512 + 28].try_into().unwrap());
            assert_eq!(ts as u64, 1_700_000_000 - 946_684_800, "{args:?}");
        } else {
            run_ok(Command::new("qemu-img").args(["check", "-f", "vhdx"]).arg(&out));
        }
    }
    // A different time changes the VHD's timestamp, and nothing else needs to change.
    let a = compact_bytes(&xp, &d.join("t.vhd"), &["--to", "dynamic"], Some("1700000000"));
    let b = compact_bytes(&xp, &d.join("t.vhd"), &["--to", "dynamic"], Some("1700000001"));
    assert_ne!(a, b);
    let out = run(bin("vhdcompact").arg(&xp).arg(d.join("u.vhd")).env("SOURCE_DATE_EPOCH", "yesterday"));
    assert_eq!(out.status.code(), Some(2), "a bad SOURCE_DATE_EPOCH is a usage error");
}

#[test]
fn a_stream_to_a_pipe_equals_the_file_output() {
    let dir = tempdir();
    let d = dir.path();
    let (_parent, child) = changed_child(d);
    let vhdx = d.join("in.vhdx");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "vpc", "-O", "vhdx"])
            .arg(corpus("aligned-dynamic.vhd"))
            .arg(&vhdx),
    );
    let xp = corpus("xp-fixed.vhd");
    let runs: Vec<(&Path, &str, Vec<&str>)> = vec![
        (&xp, "vhd", vec!["--to", "dynamic", "--zero-free"]),
        (&xp, "vhd", vec!["--to", "fixed"]),
        (&xp, "vhd", vec!["--azure"]),
        (&xp, "vhdx", vec!["--to", "dynamic", "--block-size", "1M"]),
        (&xp, "vhdx", vec!["--to", "fixed"]),
        (&vhdx, "vhd", vec!["--to", "dynamic"]),
        (&child, "vhdx", vec!["--merge"]),
        (&child, "vhd", vec!["--to", "differencing"]),
    ];
    for (i, (input, ext, args)) in runs.iter().enumerate() {
        let file = d.join(format!("file{i}.{ext}"));
        let want = compact_bytes(input, &file, args, Some("1700000000"));
        // Standard output is a pipe the test reads: no seek is possible. (A differencing
        // child's relative parent locator is relative to the current folder.)
        let format = if *ext == "vhdx" { "vhdx" } else { "vhd" };
        let out = bin("vhdcompact")
            .current_dir(d)
            .arg(input)
            .arg("-")
            .args(args)
            .args(["--format", format])
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.stdout == want,
            "{args:?} to .{ext}: the stream differs from the file ({} vs {} bytes)",
            out.stdout.len(),
            want.len()
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("<stdout>"), "the report goes to standard error");
    }
    // Standard output appended to the input itself (`>> IN`) is refused, the input untouched.
    let own = d.join("own.vhd");
    std::fs::copy(&xp, &own).unwrap();
    let before = sha256(&std::fs::read(&own).unwrap());
    let append = std::fs::OpenOptions::new().append(true).open(&own).unwrap();
    let out = bin("vhdcompact").arg(&own).arg("-").stdout(append).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(sha256(&std::fs::read(&own).unwrap()), before);
    // What a stream cannot do is refused before anything is sent.
    for args in [vec!["--verify"], vec!["--to", "differencing", "--format", "vhdx"]] {
        let input: &Path = if args.contains(&"--verify") { &xp } else { &vhdx };
        let out =
            bin("vhdcompact").arg(input).arg("-").args(&args).stdout(std::process::Stdio::piped()).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {} bytes sent", out.stdout.len());
    }
}
