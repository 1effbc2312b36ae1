//! The container layer against qemu-img and real third-party images: readers, writers,
//! differencing chains, checksums.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use vhdkit::Fill;
use vhdkit::ParentLink;
use vhdkit::vhd::bitmap::SectorBitmap;
use vhdkit::{BlockDevice, DiskImage, FixedVhd, OpenOptions, SparseVhd, WritableDevice};

const CORPUS: [&str; 5] =
    ["xp-fixed.vhd", "aligned-dynamic.vhd", "logical-dynamic.vhd", "gpt-dynamic.vhd", "nofs-dynamic.vhd"];

#[test]
fn our_reader_equals_qemu_img_on_every_corpus_image() {
    let dir = tempdir();
    let manifest = manifest();
    for name in CORPUS {
        let path = corpus(name);
        let img = open(&path);
        let ours = read_all(&img);
        assert_eq!(img.kind().name(), manifest["images"][name]["format"].as_str().unwrap(), "{name}");
        assert_eq!(sha256(&ours), manifest["images"][name]["raw_sha256"].as_str().unwrap(), "{name} vs manifest");
        assert_eq!(sha256(&ours), sha256(&qemu_raw(&path, dir.path())), "{name} vs qemu-img");
    }
}

/// Writes `data` into a new image through `write_at` in uneven chunks.
fn write_uneven(dev: &mut dyn WritableDevice, data: &[u8]) {
    let mut at = 0usize;
    let mut step = 7usize;
    while at < data.len() {
        let n = step.min(data.len() - at);
        if data[at..at + n].iter().any(|&b| b != 0) {
            dev.write_at(at as u64, &data[at..at + n]).unwrap();
        }
        at += n;
        step = (step * 3 + 511) % (3 << 20) + 1;
    }
    dev.flush().unwrap();
}

#[test]
fn qemu_img_reads_our_fixed_and_dynamic_images_byte_identical() {
    let dir = tempdir();
    let raw_path = dir.path().join("xp.raw");
    let data = read_all(&open(&corpus("xp-fixed.vhd")));
    std::fs::write(&raw_path, &data).unwrap();

    let fixed = dir.path().join("ours-fixed.vhd");
    let mut f = FixedVhd::create(&fixed, data.len() as u64, Fill::Zeros).unwrap();
    write_uneven(&mut f, &data);
    drop(f);
    assert_eq!(std::fs::metadata(&fixed).unwrap().len(), data.len() as u64 + 512);

    for block_size in [512 << 10, 2 << 20, 4 << 20] {
        let dynamic = dir.path().join(format!("ours-dynamic-{block_size}.vhd"));
        let mut d = SparseVhd::create(&dynamic, data.len() as u64, block_size, None).unwrap();
        write_uneven(&mut d, &data);
        drop(d);
        for img in [&fixed, &dynamic] {
            let info = run_ok(Command::new("qemu-img").args(["info", "-f", "vpc", "--output=json"]).arg(img));
            let info: serde_json::Value = serde_json::from_slice(&info).unwrap();
            assert_eq!(info["format"], "vpc", "{}", img.display());
            assert_eq!(info["virtual-size"], data.len() as u64, "{}", img.display());
            let cmp = run(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "vpc"]).arg(&raw_path).arg(img));
            assert!(
                cmp.status.success(),
                "qemu-img compare {}: {}",
                img.display(),
                String::from_utf8_lossy(&cmp.stdout)
            );
        }
        // And our own reader agrees, with no findings.
        let back = open(&dynamic);
        assert!(back.findings().is_empty(), "{:?}", back.findings());
        assert_eq!(read_all(&back), data);
    }
}

#[test]
fn a_new_fixed_image_is_fully_written_not_sparse() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempdir();
    let p = dir.path().join("f.vhd");
    FixedVhd::create(&p, 8 << 20, Fill::Zeros).unwrap();
    let m = std::fs::metadata(&p).unwrap();
    assert!(m.blocks() * 512 >= m.len(), "file has holes: {} blocks for {} bytes", m.blocks(), m.len());
}

#[test]
fn a_legacy_511_byte_footer_is_accepted() {
    let dir = tempdir();
    let p = dir.path().join("old.vhd");
    let mut f = FixedVhd::create(&p, 1 << 20, Fill::Zeros).unwrap();
    f.write_at(4096, b"virtual pc 2003").unwrap();
    drop(f);
    let file = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    file.set_len((1 << 20) + 511).unwrap();
    let img = open(&p);
    assert_eq!(img.kind().name(), "fixed");
    assert_eq!(img.len(), 1 << 20);
    let mut b = [0u8; 15];
    img.read_at(4096, &mut b).unwrap();
    assert_eq!(&b, b"virtual pc 2003");
}

/// A model of a differencing disk: the parent's bytes with the child's writes applied.
fn apply(model: &mut [u8], writes: &[(u64, Vec<u8>)]) {
    for (at, data) in writes {
        model[*at as usize..][..data.len()].copy_from_slice(data);
    }
}

#[test]
fn differencing_child_reads_parent_plus_changes_and_never_touches_the_parent() {
    let dir = tempdir();
    let parent = dir.path().join("base.vhd");
    std::fs::copy(corpus("aligned-dynamic.vhd"), &parent).unwrap();
    let parent_hash = sha256(&std::fs::read(&parent).unwrap());
    let parent_img = open(&parent);
    let mut model = read_all(&parent_img);

    let child_path = dir.path().join("child.vhd");
    let mut child =
        SparseVhd::create(&child_path, 0, 2 << 20, Some(ParentLink { image: &parent_img, path: &parent })).unwrap();
    // Unaligned writes inside one sector, across sectors, across blocks, and into blocks the
    // parent never allocated; then a write of zeros over non-zero parent data.
    let writes: Vec<(u64, Vec<u8>)> = vec![
        (1_048_576 + 3, b"partial sector".to_vec()),
        (3 * 512 + 500, vec![0xAB; 1000]),
        ((2 << 20) - 100, vec![0xCD; 300]),
        (40 << 20, b"into a hole of the parent".to_vec()),
        (1_048_576 + 512 * 20, vec![0; 4096]),
    ];
    for (at, data) in &writes {
        child.write_at(*at, data).unwrap();
    }
    child.flush().unwrap();
    apply(&mut model, &writes);
    assert_eq!(read_all(&child), model);
    drop(child);

    // Re-opened from disk, the parent is found through the relative locator.
    let back = open(&child_path);
    assert_eq!(back.kind().name(), "differencing");
    let res = back.as_sparse().unwrap().parent_resolution().unwrap();
    assert_eq!(res.resolved_by, "W2ru");
    assert_eq!(read_all(&back), model);
    // Only the touched sectors are present: zero-writes stay present (not dropped).
    let s = back.as_sparse().unwrap();
    assert_eq!(s.sectors_present(0).unwrap(), 1 + 2 + 1 + 8 + 1);
    assert_eq!(sha256(&std::fs::read(&parent).unwrap()), parent_hash, "parent modified");

    // Moving both files elsewhere keeps the chain readable (relative locator).
    let moved = tempdir();
    std::fs::rename(&parent, moved.path().join("base.vhd")).unwrap();
    std::fs::rename(&child_path, moved.path().join("child.vhd")).unwrap();
    assert_eq!(read_all(&open(&moved.path().join("child.vhd"))), model);
}

#[test]
fn a_chain_of_three_reads_through_every_level() {
    let dir = tempdir();
    let base = dir.path().join("base.vhd");
    let mut b = SparseVhd::create(&base, 8 << 20, 2 << 20, None).unwrap();
    b.write_at(0, &[1; 4096]).unwrap();
    b.write_at(5 << 20, &[2; 512]).unwrap();
    drop(b);
    let base_img = open(&base);
    let mid = dir.path().join("mid.vhd");
    let mut m = SparseVhd::create(&mid, 0, 2 << 20, Some(ParentLink { image: &base_img, path: &base })).unwrap();
    m.write_at(1024, &[3; 1024]).unwrap();
    drop(m);
    let mid_img = open(&mid);
    let top = dir.path().join("top.vhd");
    let mut t = SparseVhd::create(&top, 0, 2 << 20, Some(ParentLink { image: &mid_img, path: &mid })).unwrap();
    t.write_at(1536, &[4; 100]).unwrap();
    drop(t);
    let img = open(&top);
    assert_eq!(img.chain().len(), 3);
    let mut buf = vec![0u8; 4096];
    img.read_at(0, &mut buf).unwrap();
    assert!(buf[..1024].iter().all(|&x| x == 1));
    assert!(buf[1024..1536].iter().all(|&x| x == 3));
    assert!(buf[1536..1636].iter().all(|&x| x == 4));
    assert!(buf[1636..2048].iter().all(|&x| x == 3));
    assert!(buf[2048..].iter().all(|&x| x == 1));
    let mut b = [0u8; 512];
    img.read_at(5 << 20, &mut b).unwrap();
    assert_eq!(b, [2; 512]);
}

#[test]
fn put_block_stores_a_partial_bitmap_and_reads_back() {
    let dir = tempdir();
    let p = dir.path().join("d.vhd");
    let mut d = SparseVhd::create(&p, 4 << 20, 2 << 20, None).unwrap();
    let mut bitmap = SectorBitmap::empty(4096);
    bitmap.set_range(0, 8, true);
    let data = vec![0x5A; 2 << 20];
    d.put_block(1, &bitmap, &data).unwrap();
    drop(d);
    let img = open(&p);
    let mut b = vec![0u8; 8192];
    img.read_at(2 << 20, &mut b).unwrap();
    assert!(b[..4096].iter().all(|&x| x == 0x5A), "present sectors read from the block");
    assert!(b[4096..].iter().all(|&x| x == 0), "absent sectors of a dynamic disk read as zeros");
    assert_eq!(img.as_sparse().unwrap().sectors_present(1).unwrap(), 8);
}

#[test]
fn dfvfs_ext2_dynamic_equals_qemu() {
    let Some(p) = realdata("dfvfs/test_data/ext2.vhd") else { return };
    let dir = tempdir();
    let img = open(&p);
    assert_eq!(img.len(), 4_212_736);
    assert!(img.findings().is_empty());
    assert_eq!(sha256(&read_all(&img)), sha256(&qemu_raw(&p, dir.path())));
}

#[test]
fn dfvfs_bad_checksums_read_leniently_and_fail_strictly() {
    let (Some(parent), Some(child)) =
        (realdata("dfvfs/test_data/image.vhd"), realdata("dfvfs/test_data/image-differential.vhd"))
    else {
        return;
    };
    let p = open(&parent);
    assert_eq!(p.findings().len(), 1, "footer checksum mismatch reported: {:?}", p.findings());
    let c = open(&child);
    assert_eq!(c.kind().name(), "differencing");
    assert_eq!(c.as_sparse().unwrap().parent_resolution().unwrap().resolved_by, "parent name");
    assert_eq!(sha256(&read_all(&c)), sha256(&read_all(&p)));
    let strict = OpenOptions { strict: true, ..OpenOptions::default() };
    let e = DiskImage::open(&child, &strict).unwrap_err().to_string();
    assert!(e.contains("image-differential.vhd") && e.contains("checksum"), "{e}");
    let out = run(bin("vhdinspect").args(["dump", "--strict"]).arg(&parent));
    assert_one_line_error(&out, "image.vhd", &["VHD footer", "0x200a00", "checksum"]);
}

#[test]
fn dfvfs_windows_differencing_disk_without_its_parent() {
    let Some(p) = realdata("dfvfs/test_data/fat-differential.vhd") else { return };
    // Opening for data fails, naming every path tried.
    let e = DiskImage::open(&p, &OpenOptions::default()).unwrap_err().to_string();
    assert!(e.contains("parent disk not found") && e.contains("fat-parent.vhd (from W2ru)"), "{e}");
    // The metadata is still readable, and so are the sectors the child holds.
    let opts = OpenOptions { allow_missing_parent: true, ..OpenOptions::default() };
    let img = DiskImage::open(&p, &opts).unwrap();
    let s = img.as_sparse().unwrap();
    let codes: Vec<(&str, Option<&str>)> =
        s.locators().iter().map(|l| (l.platform_code.as_str(), l.path.as_deref())).collect();
    assert_eq!(
        codes,
        vec![("W2ku", Some("C:\\Projects\\dfvfs\\test_data\\fat-parent.vhd")), ("W2ru", Some(".\\fat-parent.vhd"))]
    );
    assert_eq!(s.sectors_present(0).unwrap(), 18);
    for (sector, text) in
        [(192u64, "This is a text file."), (194, "place,user,password"), (196, "This is another file.")]
    {
        let mut b = vec![0u8; text.len()];
        img.read_at(sector * 512, &mut b).unwrap();
        assert_eq!(String::from_utf8_lossy(&b), text);
    }
    let mut b = [0u8; 512];
    let e = img.read_at(0, &mut b).unwrap_err().to_string();
    assert!(e.contains("parent disk not found"), "{e}");
    // dump shows the locators and exits 1 with the paths tried; check reports it too.
    let out = run(bin("vhdinspect").args(["dump", "--json"]).arg(&p));
    assert_eq!(out.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["dynamic_header"]["parent_locators"][1]["platform_code"], "W2ru");
    assert_eq!(j["dynamic_header"]["parent_locators"][1]["path"], ".\\fat-parent.vhd");
    assert!(j["parent"]["path"].is_null());
    assert_eq!(j["sizes"]["current_size"], 4_194_304);
    assert_eq!(j["sizes"]["chs_size"], 4_177_920);
    assert!(String::from_utf8_lossy(&out.stderr).contains("fat-parent.vhd"));
    let out = run(bin("vhdinspect").args(["check"]).arg(&p));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn libvhdi_virtual_pc_footer_and_header_fragments_decode() {
    let (Some(f), Some(h)) =
        (realdata("libvhdi/tests/data/file_footer.1"), realdata("libvhdi/tests/data/dynamic_disk_header.1"))
    else {
        return;
    };
    let footer = vhdkit::vhd::footer::Footer::parse(&std::fs::read(f).unwrap(), Path::new("file_footer.1"), 0).unwrap();
    assert!(footer.checksum_valid());
    assert_eq!(footer.creator_app_text(), "vpc ");
    assert_eq!(footer.current_size, 512 << 20);
    assert_eq!(footer.geometry, vhdkit::vhd::geometry::Geometry::for_size(512 << 20));
    let raw: [u8; 1024] = std::fs::read(h).unwrap().try_into().unwrap();
    let header = vhdkit::vhd::header::DynamicHeader::parse(&raw, Path::new("h"), 0).unwrap();
    assert!(header.checksum_valid());
    assert_eq!(header.parent_unicode_name, "dynamic.vhd");
    assert_eq!(header.max_table_entries, 256);
    assert_eq!(vhdkit::vhd::footer::uuid_text(&header.parent_uuid), "D49C5C80-350A-4A89-898A-5AD6D10F6578");
}
