//! Fuzz harnesses, shared by the cargo-fuzz targets (fuzz/fuzz_targets/) and by the test that
//! replays every saved crasher (tests/fuzz_regressions.rs). Each harness takes arbitrary bytes
//! and must return without panicking, hanging or allocating without bound: errors are fine.
//!
//! Most harnesses mutate a valid structure built once (a dynamic VHD, a differencing child, a
//! real NTFS volume, a real hive) so the fuzzer reaches the deep code: the input is a list of
//! 5-byte edits (offset as u32 LE, new byte), and for files two trailing bytes set a length
//! to truncate to.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use vhdkit::disk::{DiskLayout, PartitionView};
use vhdkit::hive::{Hive, KeyNode};
use vhdkit::ntfs::{IndexDetail, NtfsIndex};
use vhdkit::vhd::sparse::ParentLink;
use vhdkit::vhd::{BlockDevice, DiskImage, OpenOptions, SparseVhd, WritableDevice};

/// The crate's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(if env!("CARGO_MANIFEST_DIR").ends_with("fuzz") {
        ".."
    } else {
        "."
    })
}

/// A scratch file private to this process (tmpfs when there is one).
fn scratch(name: &str) -> PathBuf {
    let dir = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    dir.join(format!("vhdkit-fuzz-{}-{name}", std::process::id()))
}

/// Removes the scratch files of processes that have ended (the parent image outlives each
/// run: the child names it).
fn remove_stale_scratch() {
    let Some(dir) = scratch("x").parent().map(Path::to_path_buf) else { return };
    let Ok(entries) = std::fs::read_dir(&dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("vhdkit-fuzz-").and_then(|r| r.split('-').next()) else { continue };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Applies 5-byte edits to `base`; a 2-byte remainder truncates the result.
pub fn mutate(base: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    let mut chunks = data.chunks_exact(5);
    for c in &mut chunks {
        if out.is_empty() {
            break;
        }
        let at = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize % out.len();
        out[at] = c[4];
    }
    if let [a, b, ..] = chunks.remainder() {
        let keep = out.len() * u16::from_le_bytes([*a, *b]) as usize / 65536;
        out.truncate(keep);
    }
    out
}

/// Reads the whole device in pieces, and a few odd ranges; errors are fine.
fn read_everything(dev: &dyn BlockDevice) {
    let len = dev.len().min(64 << 20);
    let mut buf = vec![0u8; 65536];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        let _ = dev.read_at(at, &mut buf[..n]);
        at += n as u64;
    }
    for (off, n) in [(dev.len().saturating_sub(1), 1), (511, 2), (dev.len() / 2, 4097), (u64::MAX - 10, 8)] {
        let mut b = vec![0u8; n];
        let _ = dev.read_at(off, &mut b);
    }
}

/// Opens an image file and walks everything the tools read first.
fn open_and_walk(path: &Path, opts: &OpenOptions) {
    let Ok(img) = DiskImage::open(path, opts) else { return };
    read_everything(&img);
    let _ = vhdkit::vhd::check::check_image(&img);
    if let Ok(layout) = DiskLayout::read(&img) {
        for p in &layout.partitions {
            let view = PartitionView::new(&img, p);
            let mut s = [0u8; 512];
            let _ = view.read_at(0, &mut s);
        }
    }
}

/// Any bytes as an image file: footer, header, BAT, MBR/EBR/GPT parsing from scratch.
pub fn image_bytes(data: &[u8]) {
    let path = scratch("image");
    if std::fs::write(&path, data).is_ok() {
        open_and_walk(&path, &OpenOptions::default());
        open_and_walk(&path, &OpenOptions { strict: true, ..OpenOptions::default() });
    }
    let _ = std::fs::remove_file(&path);
}

/// A small dynamic VHD (4 KiB blocks) holding an MBR with an extended chain, and a
/// differencing child of it; built once.
struct SparseBases {
    dynamic: Vec<u8>,
    parent_path: PathBuf,
    child: Vec<u8>,
}

fn mbr_sector(entries: &[(u8, u32, u32)]) -> [u8; 512] {
    let mut s = [0u8; 512];
    s[440..444].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    for (i, &(kind, start, len)) in entries.iter().enumerate() {
        let e = 446 + 16 * i;
        s[e + 4] = kind;
        s[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
        s[e + 12..e + 16].copy_from_slice(&len.to_le_bytes());
    }
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

fn sparse_bases() -> &'static SparseBases {
    static BASES: OnceLock<SparseBases> = OnceLock::new();
    BASES.get_or_init(|| {
        remove_stale_scratch();
        let parent_path = scratch("parent.vhd");
        let _ = std::fs::remove_file(&parent_path);
        let mut d = SparseVhd::create(&parent_path, 512 << 10, 4096, None).expect("create the base dynamic VHD");
        d.write_at(0, &mbr_sector(&[(0x07, 8, 200), (0x05, 300, 600)])).expect("write");
        d.write_at(300 * 512, &mbr_sector(&[(0x07, 8, 100), (0x05, 150, 200)])).expect("write");
        d.write_at(450 * 512, &mbr_sector(&[(0x07, 8, 100)])).expect("write");
        for (i, at) in [8u64 * 512, 100 * 4096, 37 * 4096 + 512, 120 * 4096].into_iter().enumerate() {
            d.write_at(at, &[i as u8 + 1; 1024]).expect("write");
        }
        d.flush().expect("flush");
        drop(d);
        let dynamic = std::fs::read(&parent_path).expect("read back");
        let parent = DiskImage::open(&parent_path, &OpenOptions::default()).expect("open the base");
        let child_path = scratch("child-base.vhd");
        let _ = std::fs::remove_file(&child_path);
        let mut c = SparseVhd::create(&child_path, 0, 4096, Some(ParentLink { image: &parent, path: &parent_path }))
            .expect("create the child");
        c.write_at(5 * 4096 + 1024, &[0xAB; 1536]).expect("write");
        c.write_at(100 * 4096, &[0xCD; 512]).expect("write");
        c.flush().expect("flush");
        drop(c);
        let child = std::fs::read(&child_path).expect("read back");
        let _ = std::fs::remove_file(&child_path);
        SparseBases { dynamic, parent_path, child }
    })
}

/// Edits to a valid dynamic VHD.
pub fn dynamic_mutated(data: &[u8]) {
    let path = scratch("dynamic.vhd");
    if std::fs::write(&path, mutate(&sparse_bases().dynamic, data)).is_ok() {
        open_and_walk(&path, &OpenOptions::default());
    }
    let _ = std::fs::remove_file(&path);
}

/// Edits to a valid differencing child (its parent intact, named with --parent).
pub fn differencing_mutated(data: &[u8]) {
    let bases = sparse_bases();
    let path = scratch("child.vhd");
    if std::fs::write(&path, mutate(&bases.child, data)).is_ok() {
        open_and_walk(&path, &OpenOptions { parent: Some(bases.parent_path.clone()), ..OpenOptions::default() });
        open_and_walk(&path, &OpenOptions { allow_missing_parent: true, ..OpenOptions::default() });
    }
    let _ = std::fs::remove_file(&path);
}

/// A small dynamic VHDX (1 MiB blocks, an MBR, a few blocks written) made by vhdkit's writer,
/// in two states: clean, and with a pending log entry (a crash between logging and applying);
/// and the file ranges worth editing: identifier, headers, region tables, log, BAT, metadata.
struct VhdxBases {
    clean: Vec<u8>,
    logged: Vec<u8>,
    regions: Vec<(u64, u64)>,
}

fn vhdx_bases() -> &'static VhdxBases {
    static BASES: OnceLock<VhdxBases> = OnceLock::new();
    BASES.get_or_init(|| {
        remove_stale_scratch();
        let path = scratch("base.vhdx");
        let _ = std::fs::remove_file(&path);
        let spec = vhdkit::vhdx::create::NewVhdx {
            size: 8 << 20,
            block_size: 1 << 20,
            logical_sector_size: 512,
            kind: vhdkit::vhdx::create::NewKind::Dynamic,
            identity: Default::default(),
        };
        drop(vhdkit::vhdx::Vhdx::create(&path, spec).expect("create the base VHDX"));
        let (mut img, _) = DiskImage::open_writable(&path, &OpenOptions::default()).expect("open the base");
        img.write_at(0, &mbr_sector(&[(0x07, 2048, 8192)])).expect("write");
        for (i, at) in [3u64 << 20, (5 << 20) + 4096, 7 << 20].into_iter().enumerate() {
            img.write_at(at, &[i as u8 + 1; 8192]).expect("write");
        }
        img.flush().expect("flush");
        drop(img);
        let clean = std::fs::read(&path).expect("read back");
        let _ = std::fs::remove_file(&path);
        use vhdkit::vhdx::header::{HEADER_OFFSETS, HEADER_SIZE, VhdxHeader};
        use vhdkit::vhdx::region::{BAT_REGION, METADATA_REGION, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE, RegionTable};
        let slot = |i: usize| {
            let at = HEADER_OFFSETS[i] as usize;
            VhdxHeader::parse(&clean[at..at + HEADER_SIZE], i as u8 + 1).expect("a valid header")
        };
        let (header_at, header) = if slot(1).sequence_number > slot(0).sequence_number {
            (HEADER_OFFSETS[1], slot(1))
        } else {
            (HEADER_OFFSETS[0], slot(0))
        };
        let table_at = REGION_TABLE_OFFSETS[0] as usize;
        let table = RegionTable::parse(&clean[table_at..table_at + REGION_TABLE_SIZE]).expect("a valid region table");
        let region = |g| table.find(g).expect("a region").file_offset;
        let (log_at, bat_at, meta_at) = (header.log_offset, region(BAT_REGION), region(METADATA_REGION));
        // A pending entry that rewrites the BAT's first sector (block 0 becomes "zero").
        let mut logged = clean.clone();
        let mut sector = clean[bat_at as usize..bat_at as usize + 4096].to_vec();
        sector[..8].copy_from_slice(&2u64.to_le_bytes());
        let guid = vhdkit::bytes::Guid([0x5a; 16]);
        let len = clean.len() as u64;
        let entry = vhdkit::vhdx::log::encode_entry(
            guid,
            1,
            0,
            (len, len),
            &[vhdkit::vhdx::log::LogWrite::Data { offset: bat_at, bytes: sector }],
        );
        logged[log_at as usize..log_at as usize + entry.len()].copy_from_slice(&entry);
        let mut h = header;
        h.log_guid = guid;
        h.sequence_number += 1;
        logged[header_at as usize..header_at as usize + 4096].copy_from_slice(&h.encode());
        let regions =
            vec![(0, 0x50000), (log_at, log_at + 0x3000), (bat_at, bat_at + 4096), (meta_at, meta_at + 0x10100)];
        VhdxBases { clean, logged, regions }
    })
}

/// Edits to the structures of a valid dynamic VHDX (the first input byte picks the clean
/// file or the one with a pending log), read, checked and dumped.
pub fn vhdx_mutated(data: &[u8]) {
    let bases = vhdx_bases();
    let Some((&pick, data)) = data.split_first() else { return };
    let mut bytes = if pick & 1 == 0 { bases.clean.clone() } else { bases.logged.clone() };
    let span: u64 = bases.regions.iter().map(|(a, b)| b - a).sum();
    let mut chunks = data.chunks_exact(5);
    for c in &mut chunks {
        let mut at = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64 % span;
        for &(a, b) in &bases.regions {
            if at < b - a {
                bytes[(a + at) as usize] = c[4];
                break;
            }
            at -= b - a;
        }
    }
    if let [a, b, ..] = chunks.remainder() {
        let keep = bytes.len() * u16::from_le_bytes([*a, *b]) as usize / 65536;
        bytes.truncate(keep);
    }
    let path = scratch("mutated.vhdx");
    if std::fs::write(&path, &bytes).is_ok() {
        open_and_walk(&path, &OpenOptions::default());
        open_and_walk(&path, &OpenOptions { strict: true, ..OpenOptions::default() });
        if let Ok(img) = DiskImage::open(&path, &OpenOptions::default())
            && let Some(v) = img.as_vhdx()
        {
            let _ = v.summary();
            for k in 0..v.bat().payload_blocks().min(64) {
                let _ = v.raw_sector_bits(k);
                let _ = v.block_sectors(k);
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// A device reading a shared base with a sparse overlay of edited bytes.
struct OverlayDevice<'a> {
    base: &'a [u8],
    edits: BTreeMap<u64, u8>,
}

impl BlockDevice for OverlayDevice<'_> {
    fn len(&self) -> u64 {
        self.base.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> vhdkit::Result<()> {
        vhdkit::vhd::device::check_range(self.source(), vhdkit::Space::Disk, offset, buf.len(), self.len())?;
        buf.copy_from_slice(&self.base[offset as usize..offset as usize + buf.len()]);
        for (&at, &b) in self.edits.range(offset..offset + buf.len() as u64) {
            buf[(at - offset) as usize] = b;
        }
        Ok(())
    }

    fn source(&self) -> &Path {
        Path::new("fuzz-volume")
    }
}

/// A real NTFS volume (partition 1 of the corpus' aligned-dynamic image) and the byte ranges
/// worth editing: the boot sector, the first MFT records, `$Bitmap`.
struct NtfsBase {
    volume: Vec<u8>,
    regions: Vec<(u64, u64)>,
}

fn ntfs_base() -> Option<&'static NtfsBase> {
    static BASE: OnceLock<Option<NtfsBase>> = OnceLock::new();
    BASE.get_or_init(|| {
        let gz = root().join("corpus/aligned-dynamic.vhd.gz");
        let out = std::process::Command::new("gzip").arg("-dc").arg(&gz).output().ok()?;
        let path = scratch("ntfs-base.vhd");
        std::fs::write(&path, &out.stdout).ok()?;
        let img = DiskImage::open(&path, &OpenOptions::default()).ok()?;
        let layout = DiskLayout::read(&img).ok()?;
        let p = layout.partition(1)?.clone();
        let view = PartitionView::new(&img, &p);
        let mut volume = vec![0u8; view.len() as usize];
        view.read_at(0, &mut volume).ok()?;
        let _ = std::fs::remove_file(&path);
        let idx =
            NtfsIndex::build(&OverlayDevice { base: &volume, edits: BTreeMap::new() }, 1, IndexDetail::Files).ok()?;
        let cs = idx.cluster_size();
        let mft = idx.bpb.mft_lcn * cs;
        let mut regions = vec![(0, 512), (mft, mft + 96 * idx.layout.record_size as u64)];
        if let Some(s) = idx.file(6).and_then(|f| f.default_stream()) {
            regions.extend(s.runs.iter().filter_map(|r| r.lcn.map(|l| (l * cs, (l + r.length) * cs))));
        }
        Some(NtfsBase { volume, regions })
    })
    .as_ref()
}

/// Edits to the MFT, `$Bitmap` and boot sector of a real NTFS volume, then the whole index:
/// paths, owners, consistency, and each file's data read through its runs.
pub fn ntfs_mutated(data: &[u8]) {
    let Some(base) = ntfs_base() else { return };
    let span: u64 = base.regions.iter().map(|(a, b)| b - a).sum();
    let mut edits = BTreeMap::new();
    for c in data.chunks_exact(5) {
        let mut at = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64 % span;
        for &(a, b) in &base.regions {
            if at < b - a {
                edits.insert(a + at, c[4]);
                break;
            }
            at -= b - a;
        }
    }
    let dev = OverlayDevice { base: &base.volume, edits };
    // The index of clusters alone, as compaction builds it, with a plain file's path read
    // back from its (mutated) record.
    if let Ok(lean) = NtfsIndex::build(&dev, 1, IndexDetail::Clusters) {
        for c in (0..lean.total_clusters()).step_by(97) {
            if let Some(&id) = lean.owners.owners_of(c).first() {
                let _ = lean.path_of_record(&dev, lean.owner(id).record);
            }
        }
    }
    let Ok(idx) = NtfsIndex::build(&dev, 1, IndexDetail::Files) else { return };
    let _ = idx.consistency();
    for f in idx.files.iter().take(200) {
        let _ = idx.paths(f);
        if let Some(s) = f.default_stream().filter(|s| !s.resident && s.data_size < (1 << 20)) {
            let _ =
                vhdkit::ntfs::stream::read_runs(&dev, 1, idx.cluster_size(), &s.runs, s.data_size, s.initialized_size);
        }
    }
    let _ = idx.tree_order();
    for c in (0..idx.total_clusters()).step_by(97) {
        let _ = idx.owners.owners_of(c);
    }
}

/// Reads every key, value, class name and the .reg export of a hive.
fn walk_hive(hive: &Hive) -> vhdkit::Result<usize> {
    let root = hive.root()?;
    let mut keys = 0;
    hive.walk(&root, &mut |_, k| {
        keys += 1;
        let _ = hive.class_name(k);
        for v in hive.values(k)? {
            let _ = hive.value_data(&v);
        }
        Ok(())
    })?;
    let _ = vhdkit::hive::regfile::export(hive, &root, "HKEY_LOCAL_MACHINE\\FUZZ");
    Ok(keys)
}

/// Any bytes as a hive file, and the same bytes as edits to a real hive.
pub fn hive_bytes(data: &[u8]) {
    if let Ok(hive) = Hive::parse(data.to_vec(), Path::new("fuzz-hive")) {
        let _ = walk_hive(&hive);
    }
    let Some((base, _)) = hive_base() else { return };
    if let Ok(hive) = Hive::parse(mutate(base, data), Path::new("fuzz-hive")) {
        let _ = walk_hive(&hive);
    }
}

/// A real hive (nt-hive's test hive, from ../shared/realdata) and its key paths.
fn hive_base() -> Option<&'static (Vec<u8>, Vec<String>)> {
    static BASE: OnceLock<Option<(Vec<u8>, Vec<String>)>> = OnceLock::new();
    BASE.get_or_init(|| {
        let bytes = std::fs::read(root().join("../shared/realdata/nt-hive/testdata/testhive")).ok()?;
        let hive = Hive::parse(bytes.clone(), Path::new("testhive")).ok()?;
        let mut paths = Vec::new();
        hive.walk(&hive.root().ok()?, &mut |rel, _: &KeyNode| {
            paths.push(rel.to_string());
            Ok(())
        })
        .ok()?;
        Some((bytes, paths))
    })
    .as_ref()
}

/// A sequence of set/delete/create edits on a real hive; after each, the sealed hive must parse
/// and walk again: the engine never writes a hive it cannot read.
pub fn hive_edits(data: &[u8]) {
    let Some((bytes, paths)) = hive_base() else { return };
    let Ok(mut hive) = Hive::parse(bytes.clone(), Path::new("testhive")) else { return };
    let mut at = 0;
    let mut take = |n: usize| {
        let s = data.get(at..(at + n).min(data.len())).unwrap_or(&[]).to_vec();
        at += n;
        s
    };
    for _ in 0..64 {
        let op = take(3);
        let [kind, key, len] = op[..] else { break };
        let path = if (key as usize) < paths.len() * 2 {
            paths[key as usize % paths.len()].clone()
        } else {
            format!("{}\\new{}", paths[key as usize % paths.len()], key % 7)
        };
        let name = String::from_utf8_lossy(&take((len % 24) as usize)).into_owned();
        let data_len = match kind % 4 {
            0 => (len as usize) * 97 % 20_000,
            _ => len as usize % 9,
        };
        let value: Vec<u8> = (0..data_len).map(|i| (i as u8).wrapping_mul(kind)).collect();
        let _ = match kind % 5 {
            0 | 1 => hive.set_value(&path, &name, (kind as u32) % 12, &value).map(|_| ()),
            2 => hive.delete_value(&path, &name).map(|_| ()),
            3 => hive.create_key(&format!("{path}\\{name}")).map(|_| ()),
            _ => hive.delete_key(&path).map(|_| ()),
        };
        hive.seal();
        let reread = Hive::parse(hive.bytes().to_vec(), Path::new("edited"))
            .unwrap_or_else(|e| panic!("an edit left a hive that does not parse: {e}"));
        walk_hive(&reread).unwrap_or_else(|e| panic!("an edit left a hive that does not walk: {e}"));
    }
}
