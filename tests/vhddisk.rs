//! `vhddisk`: create, expand, shrink, set-parent and commit, checked with qemu-img, libvhdi,
//! sgdisk, ntfs-3g (every file's hash) and a crash at every write of an in-place change.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use vhdkit::{BlockDevice, DiskImage, OpenOptions, WritableDevice};

/// A writable copy of the corpus image `name` in `dir`.
fn copy_of(name: &str, dir: &Path) -> PathBuf {
    let out = dir.join(name);
    std::fs::copy(corpus(name), &out).unwrap();
    make_writable(&out);
    out
}

/// A VHDX copy of the corpus image `name` (made by qemu-img) in `dir`.
fn vhdx_of(name: &str, dir: &Path) -> PathBuf {
    let out = dir.join(Path::new(name).with_extension("vhdx"));
    run_ok(Command::new("qemu-img").args(["convert", "-f", "vpc", "-O", "vhdx"]).arg(corpus(name)).arg(&out));
    out
}

fn vhddisk_json(args: &[&str], paths: &[&Path]) -> serde_json::Value {
    let mut cmd = bin("vhddisk");
    cmd.args(args).args(paths).arg("--json");
    serde_json::from_slice(&run_ok(&mut cmd)).unwrap()
}

/// The virtual size qemu-img reads.
fn qemu_size(image: &Path, format: &str) -> u64 {
    let out = run_ok(Command::new("qemu-img").args(["info", "--output=json", "-f", format]).arg(image));
    serde_json::from_slice::<serde_json::Value>(&out).unwrap()["virtual-size"].as_u64().unwrap()
}

#[test]
fn create_makes_disks_qemu_reads_and_fixed_ones_without_holes() {
    let dir = tempdir();
    let fixed = dir.path().join("fixed.vhd");
    // 256 MiB: the suite must pass on a machine with little free disk.
    let r = vhddisk_json(&["create", "--size", "256M", "--fixed"], &[&fixed]);
    assert_eq!(r["disk_size"], 256u64 << 20);
    assert_eq!(qemu_size(&fixed, "vpc"), 256 << 20);
    let meta = std::fs::metadata(&fixed).unwrap();
    assert_eq!(meta.len(), (256 << 20) + 512);
    if r["zero_fill"] == "allocate" {
        assert!(
            meta.blocks() * 512 >= meta.len(),
            "no holes: {} of {} bytes allocated",
            meta.blocks() * 512,
            meta.len()
        );
    }
    assert!(read_all(&open(&fixed))[..1 << 20].iter().all(|&b| b == 0));
    // Dynamic VHDX and VHD, and a fixed VHDX: qemu finds nothing wrong.
    for (name, args) in
        [("d.vhdx", &["--size", "4G"][..]), ("d.vhd", &["--size", "3G"]), ("f.vhdx", &["--size", "64M", "--fixed"])]
    {
        let out = dir.path().join(name);
        vhddisk_json(&[&["create"][..], args].concat(), &[&out]);
        let format = if name.ends_with("vhdx") { "vhdx" } else { "vpc" };
        let check = run(Command::new("qemu-img").args(["check", "-f", format]).arg(&out));
        assert!(check.status.success() || name == "d.vhd", "{name}: {}", String::from_utf8_lossy(&check.stdout));
    }
    assert_eq!(qemu_size(&dir.path().join("d.vhdx"), "vhdx"), 4 << 30);
    // An existing file is never replaced without --force.
    let again = run(bin("vhddisk").args(["create", "--size", "1G"]).arg(&fixed));
    assert_one_line_error(&again, "fixed.vhd", &["exists"]);
    assert_eq!(std::fs::metadata(&fixed).unwrap().len(), (256 << 20) + 512);
}

#[test]
fn create_from_a_source_copies_it_exactly() {
    let dir = tempdir();
    let src = corpus("aligned-dynamic.vhd");
    for (name, args, format) in
        [("copy.vhdx", &[][..], "vhdx"), ("copy-fixed.vhd", &["--fixed"][..], "vpc"), ("copy.vhd", &[][..], "vpc")]
    {
        let out = dir.path().join(name);
        let r = vhddisk_json(&[&["create", "--from", src.to_str().unwrap()][..], args].concat(), &[&out]);
        assert!(r["copied_bytes"].as_u64().unwrap() > 0);
        let cmp = run(Command::new("qemu-img").args(["compare", "-f", format, "-F", "vpc"]).arg(&out).arg(&src));
        assert!(cmp.status.success(), "{name}: {}", String::from_utf8_lossy(&cmp.stdout));
    }
    // Into a larger disk, a GPT's backup moves to the new end.
    let gpt = corpus("gpt-dynamic.vhd");
    let big = dir.path().join("big.vhd");
    vhddisk_json(&["create", "--size", "100M", "--from", gpt.to_str().unwrap()], &[&big]);
    let raw = dir.path().join("big.raw");
    qemu_raw_file(&big, &raw);
    let verify = String::from_utf8(run_ok(Command::new("sgdisk").arg("-v").arg(&raw))).unwrap();
    assert!(verify.contains("No problems found"), "{verify}");
    assert_eq!(image_file_hashes(&big), image_file_hashes(&gpt));
    // A file that is no disk is copied only when the user says it is raw.
    let blank = dir.path().join("blank.bin");
    std::fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
    let refused = run(bin("vhddisk").args(["create", "--from"]).arg(&blank).arg(dir.path().join("b.vhd")));
    assert_one_line_error(&refused, "blank.bin", &["--from-format raw"]);
    vhddisk_json(&["create", "--from-format", "raw", "--from", blank.to_str().unwrap()], &[&dir.path().join("b.vhd")]);
}

#[test]
fn a_differencing_child_reads_as_its_parent_for_libvhdi_too() {
    let dir = tempdir();
    let parent = copy_of("aligned-dynamic.vhd", dir.path());
    let child = dir.path().join("child.vhd");
    let r = vhddisk_json(&["create", "--parent", parent.to_str().unwrap()], &[&child]);
    assert_eq!(r["format"], "differencing");
    assert_eq!(read_all(&open(&child)), read_all(&open(&parent)));
    let script = format!(
        "import pyvhdi\nc=pyvhdi.file(); c.open({child:?})\np=pyvhdi.file(); p.open({parent:?})\nc.set_parent(p)\nprint(c.get_parent_filename())\nprint(c.read_buffer_at_offset(65536, 0) == p.read_buffer_at_offset(65536, 0))",
        child = child.to_str().unwrap(),
        parent = parent.to_str().unwrap()
    );
    let out = String::from_utf8(run_ok(Command::new("python3").arg("-c").arg(script))).unwrap();
    assert!(out.contains(parent.to_str().unwrap()) && out.trim_end().ends_with("True"), "{out}");
}

#[test]
fn expand_and_shrink_keep_every_file_and_move_the_gpt_backup() {
    let dir = tempdir();
    let image = copy_of("gpt-dynamic.vhd", dir.path());
    let before = image_file_hashes(&image);
    let r = vhddisk_json(&["expand", "--size", "1G"], &[&image]);
    assert_eq!((r["old_size"].as_u64(), r["new_size"].as_u64()), (Some(64 << 20), Some(1 << 30)));
    assert_eq!(r["gpt_backup_moved"], true);
    assert_eq!(qemu_size(&image, "vpc"), 1 << 30);
    let raw = dir.path().join("grown.raw");
    qemu_raw_file(&image, &raw);
    let verify = String::from_utf8(run_ok(Command::new("sgdisk").arg("-v").arg(&raw))).unwrap();
    assert!(verify.contains("No problems found"), "{verify}");
    assert_eq!(image_file_hashes(&image), before, "every file as it was");
    assert!(run(bin("vhdinspect").arg("check").arg(&image)).status.success());
    // Back down to the end of the last partition and its GPT backup.
    let r = vhddisk_json(&["shrink"], &[&image]);
    let layout = vhdkit::DiskLayout::read(&open(&image)).unwrap();
    let last_end = layout.partitions.iter().map(|p| p.start() + p.len()).max().unwrap();
    assert_eq!(r["new_size"].as_u64().unwrap(), last_end + 33 * 512);
    qemu_raw_file(&image, &raw);
    let verify = String::from_utf8(run_ok(Command::new("sgdisk").arg("-v").arg(&raw))).unwrap();
    assert!(verify.contains("No problems found"), "{verify}");
    assert_eq!(image_file_hashes(&image), before);
    // A byte written past the last partition stops a shrink there.
    vhddisk_json(&["expand", "--size", "128M"], &[&image]);
    {
        let (mut img, _) = DiskImage::open_writable(&image, &OpenOptions::default()).unwrap();
        img.write_at(100 << 20, b"data").unwrap();
        img.flush().unwrap();
    }
    let hash = sha256(&std::fs::read(&image).unwrap());
    let out = run(bin("vhddisk").arg("shrink").arg(&image));
    assert_one_line_error(&out, "gpt-dynamic.vhd", &["holds data at offset 104857600"]);
    assert_eq!(sha256(&std::fs::read(&image).unwrap()), hash, "a refused shrink writes nothing");
}

#[test]
fn a_fixed_disk_grows_its_footer_to_the_new_end() {
    let dir = tempdir();
    let image = copy_of("xp-fixed.vhd", dir.path());
    let before = image_file_hashes(&image);
    let r = vhddisk_json(&["expand", "--size", "100M"], &[&image]);
    assert_eq!(r["new_size"], 100u64 << 20);
    assert_eq!(std::fs::metadata(&image).unwrap().len(), (100 << 20) + 512);
    assert_eq!(qemu_size(&image, "vpc"), 100 << 20);
    let disk = read_all(&open(&image));
    assert!(disk[64 << 20..].iter().all(|&b| b == 0), "the new space and the old footer read as zeros");
    assert_eq!(image_file_hashes(&image), before);
    let small = run(bin("vhddisk").args(["expand", "--size", "10M"]).arg(&image));
    assert_one_line_error(&small, "xp-fixed.vhd", &["not larger"]);
}

#[test]
fn a_disk_with_children_is_not_resized_and_sizes_stay_within_the_format() {
    let dir = tempdir();
    let parent = copy_of("aligned-dynamic.vhd", dir.path());
    let child = dir.path().join("child.vhd");
    vhddisk_json(&["create", "--parent", parent.to_str().unwrap()], &[&child]);
    let hash = sha256(&std::fs::read(&parent).unwrap());
    let out = run(bin("vhddisk").args(["expand", "--size", "1G"]).arg(&parent));
    assert_one_line_error(&out, "aligned-dynamic.vhd", &["has children", "child.vhd", "--force"]);
    assert_eq!(sha256(&std::fs::read(&parent).unwrap()), hash);
    let out = run(bin("vhddisk").args(["expand", "--size", "2041G", "--force"]).arg(&parent));
    assert_one_line_error(&out, "aligned-dynamic.vhd", &["at most"]);
    // A child grown past its parent reads zeros there, and check accepts it.
    vhddisk_json(&["expand", "--size", "128M"], &[&child]);
    assert!(run(bin("vhdinspect").arg("check").arg(&child)).status.success());
    assert!(read_all(&open(&child))[64 << 20..].iter().all(|&b| b == 0));
}

#[test]
fn set_parent_repairs_a_moved_parent_and_refuses_a_stranger() {
    let dir = tempdir();
    let parent = copy_of("aligned-dynamic.vhd", dir.path());
    let child = dir.path().join("child.vhd");
    vhddisk_json(&["create", "--parent", parent.to_str().unwrap()], &[&child]);
    let want = read_all(&open(&parent));
    let moved = dir.path().join("elsewhere");
    std::fs::create_dir(&moved).unwrap();
    let new_place = moved.join("base.vhd");
    std::fs::rename(&parent, &new_place).unwrap();
    assert_eq!(run(bin("vhdinspect").arg("check").arg(&child)).status.code(), Some(1), "the link is broken");
    // The parent renamed in the child's folder is found by its UUID, and named.
    let renamed = dir.path().join("renamed-base.vhd");
    std::fs::copy(&new_place, &renamed).unwrap();
    let out = run(bin("vhdinspect").arg("dump").arg(&child));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a disk with the parent's identity is at") && err.contains("renamed-base.vhd"), "{err}");
    assert!(err.contains("vhddisk set-parent"), "{err}");
    std::fs::remove_file(&renamed).unwrap();
    let stranger = copy_of("xp-fixed.vhd", dir.path());
    let refused = run(bin("vhddisk").arg("set-parent").arg(&child).arg(&stranger));
    assert_one_line_error(&refused, "child.vhd", &["not this disk's parent", "--force"]);
    let linked = dir.path().join("same-child.vhd");
    std::fs::hard_link(&child, &linked).unwrap();
    for itself in [&child, &linked] {
        let refused = run(bin("vhddisk").arg("set-parent").arg(&child).arg(itself).arg("--force"));
        assert_one_line_error(&refused, "child.vhd", &["the child itself"]);
    }
    std::fs::remove_file(&linked).unwrap();
    let r = vhddisk_json(&["set-parent"], &[&child, &new_place]);
    assert_eq!(r["relative_locator"], r".\elsewhere\base.vhd");
    // A parent moved far (a path of more than 1000 characters) is relinked in the space the
    // child reserved.
    let far = dir.path().join("a".repeat(250)).join("b".repeat(250)).join("c".repeat(250)).join("d".repeat(250));
    std::fs::create_dir_all(&far).unwrap();
    std::fs::rename(&new_place, far.join("base.vhd")).unwrap();
    vhddisk_json(&["set-parent"], &[&child, &far.join("base.vhd")]);
    assert_eq!(read_all(&open(&child)), want);
    std::fs::rename(far.join("base.vhd"), &new_place).unwrap();
    let r = vhddisk_json(&["set-parent"], &[&child, &new_place]);
    assert_eq!(r["forced_identity"], false);
    assert!(run(bin("vhdinspect").arg("check").arg(&child)).status.success());
    assert_eq!(read_all(&open(&child)), want);
    let dump = vhdinspect_dump(&child);
    assert_eq!(dump["parent"]["resolved_by"], "W2ru");
}

fn vhdinspect_dump(image: &Path) -> serde_json::Value {
    serde_json::from_slice(&run_ok(bin("vhdinspect").args(["dump", "--json"]).arg(image))).unwrap()
}

/// Changes partition 1 of the disk `base` with ntfs-3g (`change` gets the mount point) and
/// writes the 4 KiB pieces that differ into `target` (the same disk, or a child of it).
fn write_volume_changes(base: &Path, target: &Path, dir: &Path, change: impl FnOnce(&Path)) {
    let img = open(base);
    let volume = partition_image(&img, 1, dir);
    let start = vhdkit::DiskLayout::read(&img).unwrap().partition(1).unwrap().start();
    drop(img);
    with_ntfs3g(&volume, false, change);
    let changed = std::fs::read(&volume).unwrap();
    let (mut t, _) = DiskImage::open_writable(target, &OpenOptions::default()).unwrap();
    let mut old = vec![0u8; 4096];
    for (i, chunk) in changed.chunks(4096).enumerate() {
        let at = start + (i * 4096) as u64;
        t.read_at(at, &mut old[..chunk.len()]).unwrap();
        if old[..chunk.len()] != *chunk {
            t.write_at(at, chunk).unwrap();
        }
    }
    t.flush().unwrap();
}

type FileHashes = std::collections::BTreeMap<u32, std::collections::BTreeMap<String, String>>;

/// A parent and a child holding real NTFS changes (files added and rewritten by ntfs-3g), and
/// the file hashes of the child's view.
fn parent_and_changed_child(dir: &Path) -> (PathBuf, PathBuf, FileHashes) {
    let parent = copy_of("aligned-dynamic.vhd", dir);
    let child = dir.join("child.vhd");
    vhddisk_json(&["create", "--parent", parent.to_str().unwrap()], &[&child]);
    write_volume_changes(&parent, &child, dir, |mnt| {
        std::fs::write(mnt.join("new.bin"), vec![0x5a; 8 << 20]).unwrap();
        std::fs::write(mnt.join("small.txt"), b"committed").unwrap();
    });
    let want = image_file_hashes(&child);
    assert!(want[&1].contains_key("new.bin"));
    (parent, child, want)
}

#[test]
fn rebase_plan_sorts_the_files_both_sides_changed() {
    let dir = tempdir();
    let (parent, child, _) = parent_and_changed_child(dir.path());
    let onto = dir.path().join("updated.vhd");
    std::fs::copy(&parent, &onto).unwrap();
    let updated = tempdir();
    write_volume_changes(&parent, &onto, updated.path(), |mnt| {
        std::fs::write(mnt.join("small.txt"), b"the template's").unwrap();
        std::fs::write(mnt.join("update.txt"), b"patched").unwrap();
    });
    let plan: serde_json::Value = serde_json::from_slice(&run_ok(
        bin("vhdinspect").args(["rebase-plan", "--json", "--onto"]).arg(&onto).arg(&child),
    ))
    .unwrap();
    let paths = |key: &str| -> Vec<String> {
        plan[key].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(paths("carry_over"), ["new.bin"], "{plan}");
    assert_eq!(paths("conflicts"), ["small.txt"], "{plan}");
    assert_eq!(paths("take_onto"), ["update.txt"], "{plan}");
    assert_eq!(plan["take_onto"][0]["onto"], "added");
    let text =
        String::from_utf8(run_ok(bin("vhdinspect").args(["rebase-plan", "--onto"]).arg(&onto).arg(&child))).unwrap();
    assert!(text.contains("1 file: conflicts") && text.contains("nothing written"), "{text}");
}

/// The disk offset of a 4 KiB piece of free NTFS space in `image`'s view.
fn free_piece(image: &Path) -> u64 {
    let img = open(image);
    let map = vhdkit::ImageMap::build(&img, None).unwrap();
    map.needs(0, img.len())
        .into_iter()
        .filter(|n| n.kind == vhdkit::map::blocks::NeedKind::Unneeded)
        .find_map(|n| Some(n.start.div_ceil(4096) * 4096).filter(|at| at + 4096 <= n.end))
        .unwrap_or_else(|| panic!("{}: no free space", image.display()))
}

#[test]
fn commit_writes_the_childs_files_into_its_parent() {
    let dir = tempdir();
    let (parent, child, _) = parent_and_changed_child(dir.path());
    // A sibling (another child of the same parent) stops the commit.
    let sibling = dir.path().join("sibling.vhd");
    vhddisk_json(&["create", "--parent", parent.to_str().unwrap()], &[&sibling]);
    let hash = sha256(&std::fs::read(&parent).unwrap());
    let refused = run(bin("vhddisk").arg("commit").arg(&child));
    assert_one_line_error(&refused, "child.vhd", &["other children", "sibling.vhd"]);
    assert_eq!(sha256(&std::fs::read(&parent).unwrap()), hash);
    // So does one another process holds (it cannot be read to tell).
    std::fs::remove_file(&sibling).unwrap();
    let locked = dir.path().join("locked.vhd");
    vhddisk_json(&["create", "--size", "16M"], &[&locked]);
    {
        let _held = DiskImage::open_writable(&locked, &OpenOptions::default()).unwrap();
        let refused = run(bin("vhddisk").arg("commit").arg(&child));
        assert_one_line_error(&refused, "child.vhd", &["locked.vhd (in use: it may be one)"]);
    }
    // --remove is refused while the child has a child of its own.
    let grandchild = dir.path().join("grandchild.vhd");
    vhddisk_json(&["create", "--parent", child.to_str().unwrap()], &[&grandchild]);
    let refused = run(bin("vhddisk").args(["commit", "--remove"]).arg(&child));
    assert_one_line_error(&refused, "child.vhd", &["children of its own", "grandchild.vhd"]);
    assert_eq!(sha256(&std::fs::read(&parent).unwrap()), hash);
    std::fs::remove_file(&grandchild).unwrap();
    // The guest wiped a free cluster that holds the parent's stale data: the wipe reaches the
    // parent.
    let wiped = free_piece(&child);
    for (image, byte) in [(&parent, 0xabu8), (&child, 0)] {
        let (mut c, _) = DiskImage::open_writable(image, &OpenOptions::default()).unwrap();
        c.write_at(wiped, &[byte; 4096]).unwrap();
        c.flush().unwrap();
    }
    let want = image_file_hashes(&child);
    let r = vhddisk_json(&["commit", "--remove"], &[&child]);
    assert!(r["zeroed_free_bytes"].as_u64().unwrap() >= 4096, "{r}");
    let appended = r["appended_bytes"].as_u64().unwrap();
    assert!(appended > 0 && appended < r["written_bytes"].as_u64().unwrap(), "blocks appended and overwritten: {r}");
    let mut after = [1u8; 4096];
    open(&parent).read_at(wiped, &mut after).unwrap();
    assert!(after.iter().all(|&b| b == 0), "the wiped cluster is zero in the parent");
    assert!(r["written_bytes"].as_u64().unwrap() >= 3 << 20);
    assert!(r["written_bytes"].as_u64() <= r["child_bytes"].as_u64());
    assert_eq!(r["removed"], true);
    assert!(!child.exists());
    assert_eq!(image_file_hashes(&parent), want, "the parent holds the child's files");
    assert!(run(Command::new("qemu-img").args(["check", "-f", "vpc"]).arg(&parent)).status.code() != Some(2));
    assert!(run(bin("vhdinspect").arg("check").arg(&parent)).status.success());
}

#[test]
fn a_deep_commit_writes_the_chain_into_the_grandparent() {
    let dir = tempdir();
    let (base, middle, _) = parent_and_changed_child(dir.path());
    let top = dir.path().join("top.vhd");
    vhddisk_json(&["create", "--parent", middle.to_str().unwrap()], &[&top]);
    let scratch = tempdir();
    write_volume_changes(&middle, &top, scratch.path(), |mnt| {
        std::fs::write(mnt.join("top.bin"), vec![0xc3; 5 << 20]).unwrap();
        std::fs::write(mnt.join("small.txt"), b"from the top").unwrap();
    });
    let want = image_file_hashes(&top);
    let too_deep = run(bin("vhddisk").args(["commit", "--depth", "3"]).arg(&top));
    assert_one_line_error(&too_deep, "top.vhd", &["2 disks below it, not 3"]);
    // Another child of the middle disk would read changed data: refused.
    let sibling = dir.path().join("sibling.vhd");
    vhddisk_json(&["create", "--parent", middle.to_str().unwrap()], &[&sibling]);
    let refused = run(bin("vhddisk").args(["commit", "--depth", "2"]).arg(&top));
    assert_one_line_error(&refused, "top.vhd", &["other children", "sibling.vhd"]);
    std::fs::remove_file(&sibling).unwrap();
    let r = vhddisk_json(&["commit", "--depth", "2"], &[&top]);
    assert_eq!(r["superseded"], serde_json::json!([middle.display().to_string()]), "{r}");
    assert_eq!(r["relinked"], true);
    assert!(r["appended_bytes"].as_u64().unwrap() > 0, "blocks the base lacked were appended: {r}");
    assert!(r["written_bytes"].as_u64().unwrap() >= 8 << 20, "both disks' files: {r}");
    assert_eq!(image_file_hashes(&base), want, "the base holds the files of the whole chain");
    assert_eq!(image_file_hashes(&top), want, "the kept child, now over the base, reads the same");
    let dump = vhddisk_dump_parent(&top);
    assert_eq!(std::fs::canonicalize(dump).unwrap(), std::fs::canonicalize(&base).unwrap());
    for image in [&base, &top] {
        assert!(run(bin("vhdinspect").arg("check").arg(image)).status.success(), "{}", image.display());
    }
    let check = run(Command::new("qemu-img").args(["check", "-f", "vpc"]).arg(&base));
    assert!(check.status.code() != Some(2), "{}", String::from_utf8_lossy(&check.stdout));
    // qemu reads no VHD parent: the base alone is compared.
    let (qemu, ours) = (qemu_raw(&base, scratch.path()), read_all(&open(&base)));
    let first = qemu.chunks(512).zip(ours.chunks(512)).position(|(a, b)| a != b);
    assert_eq!(first, None, "qemu-img reads a different sector of the base first");
}

/// The parent `vhdinspect dump` names for `image`.
fn vhddisk_dump_parent(image: &Path) -> String {
    let dump: serde_json::Value =
        serde_json::from_slice(&run_ok(bin("vhdinspect").args(["dump", "--json"]).arg(image))).unwrap();
    dump["parent"]["path"].as_str().unwrap_or_else(|| panic!("no parent path: {dump}")).to_string()
}

#[test]
fn a_windows_made_child_is_relinked_and_committed() {
    // A differencing VHD made by Windows 10's diskpart (its W2ku and W2ru locators, sector
    // bitmaps as Windows writes them); its parent is not published, so a new disk of its size
    // stands in, linked with --force.
    let Some(real) = realdata("dfvfs/test_data/fat-differential.vhd") else { return };
    for fixed in [true, false] {
        let dir = tempdir();
        let child = dir.path().join("child.vhd");
        std::fs::copy(&real, &child).unwrap();
        make_writable(&child);
        let parent = dir.path().join("p.vhd");
        let kind = if fixed { "--fixed" } else { "--dynamic" };
        vhddisk_json(&["create", "--size", "4194304", kind], &[&parent]);
        let refused = run(bin("vhddisk").arg("set-parent").arg(&child).arg(&parent));
        assert_one_line_error(&refused, "child.vhd", &["not this disk's parent", "--force"]);
        let r = vhddisk_json(&["set-parent", "--force"], &[&child, &parent]);
        assert_eq!(r["forced_identity"], true, "{r}");
        let view = read_all(&open(&child));
        assert!(view[192 * 512..].starts_with(b"This is a text file."), "the child's own sectors over the new parent");
        let r = vhddisk_json(&["commit", "--remove"], &[&parent.parent().unwrap().join("child.vhd")]);
        assert_eq!(r["child_bytes"].as_u64(), Some(18 * 512), "the 18 sectors its bitmap holds: {r}");
        assert_eq!(r["appended_bytes"].as_u64().unwrap() > 0, !fixed, "{r}");
        assert!(read_all(&open(&parent)) == view, "the parent reads as the chain did");
        let check = run(Command::new("qemu-img").args(["check", "-f", "vpc"]).arg(&parent));
        assert!(check.status.code() != Some(2), "{}", String::from_utf8_lossy(&check.stdout));
        assert!(run(bin("vhdinspect").arg("check").arg(&parent)).status.success());
    }
}

#[test]
fn children_in_other_folders_are_found_where_the_user_says() {
    let dir = tempdir();
    let parent = dir.path().join("base.vhd");
    vhddisk_json(&["create", "--size", "64M"], &[&parent]);
    let elsewhere = dir.path().join("vms").join("one");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let child = elsewhere.join("child.vhd");
    vhddisk_json(&["create", "--parent", parent.to_str().unwrap()], &[&child]);
    let hash = sha256(&std::fs::read(&parent).unwrap());
    let refused =
        run(bin("vhddisk").args(["expand", "--size", "128M", "--search"]).arg(dir.path().join("vms/one")).arg(&parent));
    assert_one_line_error(&refused, "base.vhd", &["has children", "child.vhd"]);
    assert_eq!(sha256(&std::fs::read(&parent).unwrap()), hash, "nothing written");
    // A folder that is not one is a usage error, not a search that finds nothing.
    let typo =
        run(bin("vhddisk").args(["expand", "--size", "128M", "--search"]).arg(dir.path().join("vms/on")).arg(&parent));
    assert_eq!(typo.status.code(), Some(2), "{}", String::from_utf8_lossy(&typo.stderr));
    // Its own folder alone holds no child: the expand goes on.
    vhddisk_json(&["expand", "--size", "128M"], &[&parent]);
}

#[test]
fn a_commit_killed_at_any_write_leaves_the_chain_reading_the_same() {
    let dir = tempdir();
    let (parent, child, want) = parent_and_changed_child(dir.path());
    let base = dir.path().join("base-copy.vhd");
    std::fs::copy(&parent, &base).unwrap();
    let before = sha256(&std::fs::read(&base).unwrap());
    let view = read_all(&open(&child));
    let mut n = 0;
    let completed = loop {
        std::fs::copy(&base, &parent).unwrap();
        if completes_within(bin("vhddisk").arg("commit").arg(&child), n) {
            break n;
        }
        // The next writer rolls the interrupted batch back: the batches before it stay, and
        // the child still shadows every sector they wrote, so the chain reads as before.
        let out = run(bin("vhddisk").args(["expand", "--size", "64M"]).arg(&parent));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not larger"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(vhdkit::host::journal::pending(&parent).is_none());
        // A crash in the last step (the child's header names the parent's new time) leaves
        // the child's journal, which a writer of the child rolls back.
        if vhdkit::host::journal::pending(&child).is_some() {
            run_ok(bin("vhdreg").arg(&child).arg("recover"));
        }
        assert!(read_all(&open(&child)) == view, "crash at write {n}: the chain reads differently");
        // Running the commit again finishes it.
        if n % 8 == 0 {
            run_ok(bin("vhddisk").arg("commit").arg(&child));
            assert_eq!(image_file_hashes(&parent), want, "crash at write {n}, then a commit");
        }
        n += if n < 30 { 1 } else { 5 };
        assert!(n < 500, "the commit never completed");
    };
    assert!(completed > 3, "only {completed} writes: the loop tested too little");
    assert_ne!(sha256(&std::fs::read(&parent).unwrap()), before);
    assert_eq!(image_file_hashes(&parent), want);
    // The kept child names its parent's new time: the chain checks clean.
    assert!(run(bin("vhdinspect").arg("check").arg(&child)).status.success());
}

#[test]
fn a_vhdx_grows_and_shrinks_through_its_log() {
    let dir = tempdir();
    let image = vhdx_of("gpt-dynamic.vhd", dir.path());
    let before = image_file_hashes(&image);
    vhddisk_json(&["expand", "--size", "1G"], &[&image]);
    for (size, label) in [(1u64 << 30, "grown"), (0, "shrunk")] {
        if size == 0 {
            vhddisk_json(&["shrink"], &[&image]);
        }
        let check = run(Command::new("qemu-img").args(["check", "-f", "vhdx"]).arg(&image));
        assert!(check.status.success(), "{label}: {}", String::from_utf8_lossy(&check.stdout));
        let raw = dir.path().join("disk.raw");
        qemu_raw_file(&image, &raw);
        let verify = String::from_utf8(run_ok(Command::new("sgdisk").arg("-v").arg(&raw))).unwrap();
        assert!(verify.contains("No problems found"), "{label}: {verify}");
        assert_eq!(image_file_hashes(&image), before, "{label}: every file as it was");
        let libvhdi =
            format!("import pyvhdi\nf=pyvhdi.file(); f.open({:?}); print(f.get_media_size())", image.to_str().unwrap());
        let media: u64 =
            String::from_utf8(run_ok(Command::new("python3").arg("-c").arg(libvhdi))).unwrap().trim().parse().unwrap();
        assert_eq!(media, qemu_size(&image, "vhdx"), "{label}: libvhdi and qemu agree");
        assert!(size == 0 || media == size);
    }
}

#[test]
fn a_vhdx_grows_past_its_bat_region_by_moving_it() {
    let dir = tempdir();
    let image = vhdx_of("gpt-dynamic.vhd", dir.path());
    let before = image_file_hashes(&image);
    let region = |image: &Path| -> (u64, u64) {
        let dump: serde_json::Value =
            serde_json::from_slice(&run_ok(bin("vhdinspect").args(["dump", "--json"]).arg(image))).unwrap();
        let bat = dump["vhdx"]["regions"].as_array().unwrap().iter().find(|r| r["name"] == "BAT").unwrap().clone();
        (bat["file_offset"].as_u64().unwrap(), bat["length"].as_u64().unwrap())
    };
    let (old_offset, old_length) = region(&image);
    // 16 TiB needs more entries than a 1 MiB region holds, whatever the block size (up to
    // 32 MiB, qemu's).
    let r = vhddisk_json(&["expand", "--size", "16T"], &[&image]);
    assert_eq!(r["bat_moved"], true, "{r}");
    let (offset, length) = region(&image);
    assert!(
        offset != old_offset && length > old_length,
        "the BAT moved: {old_offset}+{old_length} -> {offset}+{length}"
    );
    let check = run(Command::new("qemu-img").args(["check", "-f", "vhdx"]).arg(&image));
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    assert_eq!(qemu_size(&image, "vhdx"), 16 << 40);
    assert!(run(bin("vhdinspect").arg("check").arg(&image)).status.success());
    assert_eq!(image_file_hashes(&image), before, "every file as it was");
    // A block past the old end, written by qemu, reads back through the moved table.
    let at = 15u64 << 40;
    run_ok(Command::new("qemu-io").args(["-f", "vhdx", "-c", &format!("write -P 0x6b {at} 1M")]).arg(&image));
    let mut buf = vec![0u8; 1 << 20];
    open(&image).read_at(at, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0x6b), "the block qemu wrote past the old end");
}

#[test]
fn a_fixed_vhdx_is_not_grown_into_unallocated_blocks() {
    let dir = tempdir();
    let image = dir.path().join("fixed.vhdx");
    vhddisk_json(&["create", "--size", "16M", "--fixed"], &[&image]);
    let hash = sha256(&std::fs::read(&image).unwrap());
    let refused = run(bin("vhddisk").args(["expand", "--size", "32M"]).arg(&image));
    assert_one_line_error(&refused, "fixed.vhdx", &["fixed VHDX does not grow in place", "dynamic"]);
    assert_eq!(sha256(&std::fs::read(&image).unwrap()), hash, "nothing written");
}

#[test]
fn a_vhdx_killed_while_its_bat_moves_reads_as_before() {
    let dir = tempdir();
    let original = vhdx_of("gpt-dynamic.vhd", dir.path());
    let (len, want) = {
        let img = open(&original);
        (img.len(), read_all(&img))
    };
    let image = dir.path().join("work.vhdx");
    let mut n = 0;
    let completed = loop {
        std::fs::copy(&original, &image).unwrap();
        if completes_within(bin("vhddisk").args(["expand", "--size", "16T"]).arg(&image), n) {
            break n;
        }
        // Read as it is (its log replayed in memory), the disk holds what it held.
        let img = open(&image);
        assert!(img.len() == len || img.len() == 16 << 40, "killed after {n} writes: {} bytes", img.len());
        let mut got = vec![0u8; len as usize];
        img.read_at(0, &mut got).unwrap();
        assert!(got == want, "killed after {n} writes: the disk reads differently");
        // Every write of the move (the copy, the region tables' log entry), then a sample of
        // the many BAT sectors the new size zeroes.
        n += if n < 40 { 1 } else { 97 };
        assert!(n < 20_000, "the expand never completed");
    };
    assert!(completed > 5, "only {completed} writes: the loop tested too little");
}

#[test]
fn set_parent_relinks_a_vhdx_child_through_its_log() {
    let dir = tempdir();
    let parent = vhdx_of("aligned-dynamic.vhd", dir.path());
    let child = dir.path().join("child.vhdx");
    vhddisk_json(&["create", "--parent", parent.to_str().unwrap()], &[&child]);
    let want = read_all(&open(&parent));
    // Moved to a path longer than the locator item had room for: the item moves too.
    let far = dir.path().join("x".repeat(200)).join("y".repeat(200));
    std::fs::create_dir_all(&far).unwrap();
    let moved = far.join("base.vhdx");
    std::fs::rename(&parent, &moved).unwrap();
    assert_eq!(run(bin("vhdinspect").arg("check").arg(&child)).status.code(), Some(1));
    let r = vhddisk_json(&["set-parent"], &[&child, &moved]);
    assert_eq!(r["forced_identity"], false);
    assert!(run(bin("vhdinspect").arg("check").arg(&child)).status.success());
    assert_eq!(read_all(&open(&child)), want);
    // libvhdi reads the new locator.
    let script = format!(
        "import pyvhdi\nc=pyvhdi.file(); c.open({:?})\nprint(c.get_parent_filename())",
        child.to_str().unwrap()
    );
    let named = String::from_utf8(run_ok(Command::new("python3").arg("-c").arg(script))).unwrap();
    assert!(named.trim_end().ends_with(&format!("{}\\base.vhdx", "y".repeat(200))), "{named}");
    // Another VHDX is refused.
    let other = vhdx_of("xp-fixed.vhd", dir.path());
    let refused = run(bin("vhddisk").arg("set-parent").arg(&child).arg(&other));
    assert_one_line_error(&refused, "child.vhdx", &["not this disk's parent"]);
}

/// Free bytes of the NTFS volume in `volume` (a partition image), as ntfs-3g reports them.
fn ntfs3g_free(volume: &Path) -> u64 {
    with_ntfs3g(volume, true, |mnt| {
        let out = run_ok(Command::new("stat").args(["-f", "-c", "%a %S"]).arg(mnt));
        let text = String::from_utf8(out).unwrap();
        let (blocks, size) = text.trim().split_once(' ').unwrap();
        blocks.parse::<u64>().unwrap() * size.parse::<u64>().unwrap()
    })
}

#[test]
fn expand_grows_the_last_ntfs_partition_into_the_new_space() {
    // A primary partition, a GPT one and a logical one (its EBR, the link to it and the
    // extended partition grow with it).
    for name in ["xp-fixed.vhd", "gpt-dynamic.vhd", "logical-dynamic.vhd"] {
        let dir = tempdir();
        let image = copy_of(name, dir.path());
        let before = image_file_hashes(&image);
        let layout = vhdkit::DiskLayout::read(&open(&image)).unwrap();
        let last = layout.partitions.iter().max_by_key(|p| p.end()).unwrap().index;
        let free_before = ntfs3g_free(&partition_image(&open(&image), last, dir.path()));
        let r = vhddisk_json(&["expand", "--size", "200M", "--grow-partition"], &[&image]);
        let grown = &r["partition_grown"];
        assert_eq!(grown["partition"], last, "{name}");
        assert!(grown["new_clusters"].as_u64() > grown["old_clusters"].as_u64(), "{name}: {r}");
        let volume = partition_image(&open(&image), last, dir.path());
        // ntfsresize checks the volume (its cluster accounting against $Bitmap included).
        let info = run(Command::new("ntfsresize").args(["--info", "--force", "--no-progress-bar"]).arg(&volume));
        let text = String::from_utf8_lossy(&info.stdout).into_owned() + &String::from_utf8_lossy(&info.stderr);
        assert!(!text.contains("inconsistent") && text.contains("You might resize"), "{name}: {text}");
        // Sleuth Kit sees the new size; ntfs-3g the new free space and every file as it was.
        let fsstat = String::from_utf8(run_ok(Command::new("fsstat").arg(&volume))).unwrap();
        let last_cluster = grown["new_clusters"].as_u64().unwrap() - 1;
        assert!(fsstat.contains(&format!("Total Cluster Range: 0 - {last_cluster}")), "{name}: {fsstat}");
        let free_after = ntfs3g_free(&volume);
        let added = grown["new_bytes"].as_u64().unwrap() - grown["old_bytes"].as_u64().unwrap();
        assert!(free_after >= free_before + added - (1 << 20), "{name}: free {free_before} -> {free_after}");
        assert_eq!(image_file_hashes(&image), before, "{name}");
        let raw = dir.path().join("disk.raw");
        qemu_raw_file(&image, &raw);
        let table = String::from_utf8(run_ok(Command::new("sfdisk").arg("-d").arg(&raw))).unwrap();
        let sectors = grown["new_bytes"].as_u64().unwrap() / 512;
        assert!(table.replace(' ', "").contains(&format!("size={sectors},")), "{name}: {table}");
        let verify = String::from_utf8(run_ok(Command::new("sfdisk").arg("--verify").arg(&raw))).unwrap();
        assert!(!verify.to_lowercase().contains("overlap") && !verify.contains("exceeds"), "{name}: {verify}");
        let listed = String::from_utf8(run_ok(Command::new("mmls").arg(&raw))).unwrap();
        assert!(listed.contains(&format!("{sectors:010}")), "{name}: Sleuth Kit sees the partition's size: {listed}");
    }
}

#[test]
fn commit_writes_a_vhdx_childs_files_into_its_parent() {
    let dir = tempdir();
    let parent = vhdx_of("aligned-dynamic.vhd", dir.path());
    let child = dir.path().join("child.vhdx");
    vhddisk_json(&["create", "--parent", parent.to_str().unwrap()], &[&child]);
    write_volume_changes(&parent, &child, dir.path(), |mnt| {
        std::fs::write(mnt.join("new.bin"), vec![0x3c; 2 << 20]).unwrap();
    });
    let want = image_file_hashes(&child);
    let r = vhddisk_json(&["commit", "--remove"], &[&child]);
    assert!(r["written_bytes"].as_u64().unwrap() >= 2 << 20, "{r}");
    assert_eq!(image_file_hashes(&parent), want);
    let check = run(Command::new("qemu-img").args(["check", "-f", "vhdx"]).arg(&parent));
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
}
