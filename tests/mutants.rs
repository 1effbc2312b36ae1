//! The mutated-image suite: deterministic truncations and byte flips in the footer, dynamic
//! header, BAT, MBR, boot sector and MFT records of corpus images, in the headers, region
//! tables, log, metadata and BAT of VHDX images (and in the cells of a real hive), each run through every command. Every run must end with exit 0 or 1 within a time
//! bound, a failure must be one line naming the file, a failed `vhdcompact` must leave no
//! output, and no input may change.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vhdkit::BlockDevice;

/// Longest any command may take on a 64 MiB mutant.
const TIME_BOUND: Duration = Duration::from_secs(30);

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A named way to damage a file: byte edits and an optional truncation.
struct Mutant {
    name: String,
    edits: Vec<(u64, u8)>,
    truncate: Option<u64>,
}

/// Where the structures of an image lie in its file.
struct Structures {
    len: u64,
    /// The VHD footer (VHD images).
    footer: Option<u64>,
    /// Dynamic header and BAT (dynamic images).
    header: Option<(u64, u64)>,
    /// Named (offset, length) spans of a VHDX's own structures.
    vhdx: Vec<(&'static str, u64, u64)>,
    mbr: Option<u64>,
    boot: Option<u64>,
    mft: Vec<u64>,
}

/// The file offset of a disk offset.
fn file_offset(img: &vhdkit::DiskImage, disk: u64) -> Option<u64> {
    if let Some(x) = img.as_vhdx() {
        let bs = x.block_size();
        let (_, offset) = x.bat().payload(disk / bs).ok()?;
        return (offset != 0).then_some(offset + disk % bs);
    }
    match img.as_sparse() {
        None => Some(disk),
        Some(s) => {
            let bs = s.block_size();
            let sector = s.bat().sector(disk / bs)?;
            Some(sector.offset() + vhdkit::vhd::header::bitmap_size_for(bs as u32) + disk % bs)
        }
    }
}

fn structures(path: &Path) -> Structures {
    let img = open(path);
    let len = std::fs::metadata(path).unwrap().len();
    let header = img.as_sparse().map(|s| {
        let table = s.header().table_offset;
        (s.header_offset(), table + s.header().max_table_entries as u64 * 4)
    });
    let layout = vhdkit::DiskLayout::read(&img).unwrap();
    let part = layout.partitions.first().cloned();
    let boot = part.as_ref().and_then(|p| file_offset(&img, p.start()));
    let mut mft = Vec::new();
    if let Some(p) = &part {
        let mut b = [0u8; 512];
        img.read_at(p.start(), &mut b).unwrap();
        if let Ok(bpb) = vhdkit::disk::boot_sector::NtfsBootSector::parse(&b) {
            let start = p.start() + bpb.mft_lcn * bpb.cluster_size as u64;
            mft = (0..40).filter_map(|k| file_offset(&img, start + k * bpb.file_record_size as u64)).collect();
        }
    }
    let vhdx = img.as_vhdx().map(vhdx_structures).unwrap_or_default();
    let footer = img.footer().map(|_| len - 512);
    Structures { len, footer, header, vhdx, mbr: file_offset(&img, 0), boot, mft }
}

/// The headers, region tables, log, metadata table and BAT of a VHDX.
fn vhdx_structures(x: &vhdkit::vhdx::Vhdx) -> Vec<(&'static str, u64, u64)> {
    let s = x.summary().unwrap();
    let mut out = vec![("identifier", 0, 512), ("region-table", 0x30000, 0x10000), ("region-table2", 0x40000, 0x10000)];
    for h in &s.headers {
        out.push(if h.offset == 0x10000 { ("header", h.offset, 4096) } else { ("header2", h.offset, 4096) });
    }
    out.push(("metadata-table", s.metadata_offset, 0x10000));
    out.push(("log", s.log.offset, u64::from(s.log.length).min(0x20000)));
    out.push(("vhdx-bat", s.bat.offset, (s.bat.entries * 8).max(8)));
    out
}

/// The mutants of one image: `per_class` of each kind.
fn mutants(s: &Structures, seed: u64, per_class: usize) -> Vec<Mutant> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let flips = |name: &str, base: u64, span: u64, out: &mut Vec<Mutant>, rng: &mut Rng| {
        for i in 0..per_class {
            let n = 1 + rng.below(3) as usize;
            let edits = (0..n).map(|_| (base + rng.below(span), rng.next() as u8)).collect();
            out.push(Mutant { name: format!("{name}-{i}"), edits, truncate: None });
        }
    };
    if let Some(f) = s.footer {
        flips("footer", f, 512, &mut out, &mut rng);
    }
    for &(name, at, span) in &s.vhdx {
        flips(name, at, span, &mut out, &mut rng);
    }
    if let Some((h, bat_end)) = s.header {
        flips("footer-copy", 0, 512, &mut out, &mut rng);
        flips("header", h, 1024, &mut out, &mut rng);
        flips("bat", h + 1024, bat_end.saturating_sub(h + 1024).max(4), &mut out, &mut rng);
    }
    if let Some(m) = s.mbr {
        flips("mbr", m + 440, 72, &mut out, &mut rng);
    }
    if let Some(b) = s.boot {
        flips("boot", b, 512, &mut out, &mut rng);
    }
    for (k, &m) in s.mft.iter().enumerate().filter(|(k, _)| k % (40 / per_class.max(1)).max(1) == 0) {
        flips(&format!("mft{k}"), m, 1024, &mut out, &mut rng);
    }
    let inside = s.header.map(|(h, _)| h + 700).or(s.vhdx.get(1).map(|v| v.1 + 300)).unwrap_or(512);
    for (i, at) in [s.len / 2, s.len - 300, inside, s.len - 512].into_iter().enumerate() {
        out.push(Mutant { name: format!("truncated-{i}"), edits: Vec::new(), truncate: Some(at) });
    }
    out
}

/// Writes `m` of `src` to `dst`.
fn apply(src: &Path, dst: &Path, m: &Mutant) {
    let mut bytes = std::fs::read(src).unwrap();
    for &(at, b) in &m.edits {
        if let Some(x) = bytes.get_mut(at as usize) {
            *x ^= b | 1;
        }
    }
    if let Some(t) = m.truncate {
        bytes.truncate(t as usize);
    }
    std::fs::write(dst, bytes).unwrap();
}

/// Runs `cmd` with a time bound; returns (exit code, stderr).
fn run_bounded(mut cmd: Command) -> (Option<i32>, String) {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (status.code(), err);
        }
        if started.elapsed() > TIME_BOUND {
            let _ = child.kill();
            panic!("{cmd:?} hung (over {TIME_BOUND:?})");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Checks one command's outcome on a mutant.
fn assert_clean_outcome(what: &str, file: &str, code: Option<i32>, err: &str) {
    assert!(matches!(code, Some(0) | Some(1)), "{what}: exit {code:?} (101 is a panic): {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.contains("warning:")).collect();
    assert!(lines.len() <= 1, "{what}: more than one line: {err}");
    if code == Some(1) && !lines.is_empty() {
        assert!(lines[0].contains(file), "{what}: the error does not name {file}: {err}");
    }
}

/// Every command on one mutant image.
fn run_all(mutant: &Path, dir: &Path) {
    let file = mutant.file_name().unwrap().to_string_lossy().into_owned();
    let before = sha256(&std::fs::read(mutant).unwrap());
    let inspect: &[&[&str]] = &[
        &["dump"],
        &["check"],
        &["files", "--json"],
        &["map", "--json"],
        &["owner", "--sector", "2100"],
        &["align"],
        &["ranges"],
    ];
    for args in inspect {
        let mut cmd = bin("vhdinspect");
        cmd.arg(args[0]).arg(mutant).args(&args[1..]);
        let (code, err) = run_bounded(cmd);
        assert_clean_outcome(&format!("vhdinspect {args:?} {file}"), &file, code, &err);
    }
    let out = dir.join("compacted.vhd");
    let mut cmd = bin("vhdcompact");
    cmd.arg(mutant).arg(&out).arg("--merge").arg("--to").arg("dynamic");
    let (code, err) = run_bounded(cmd);
    assert_clean_outcome(&format!("vhdcompact {file}"), &file, code, &err);
    if code != Some(0) {
        assert!(!out.exists(), "vhdcompact {file} failed but left its output");
    }
    let _ = std::fs::remove_file(&out);
    let leftovers: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "vhdcompact {file} left {leftovers:?}");
    let mut cmd = bin("vhdreg");
    cmd.arg(mutant).args(["get", r"HKLM\SYSTEM\Select", "Current"]);
    let (code, err) = run_bounded(cmd);
    assert_clean_outcome(&format!("vhdreg get {file}"), &file, code, &err);
    // vhddisk: a copy of the mutant grown (its partition too) and shrunk, and copied into a
    // new disk, which exists only when the copy succeeded.
    let work = dir.join(format!("work-{file}"));
    std::fs::copy(mutant, &work).unwrap();
    let work_name = work.file_name().unwrap().to_string_lossy().into_owned();
    for args in [&["expand", "--size", "200M", "--grow-partition"][..], &["shrink"]] {
        let mut cmd = bin("vhddisk");
        cmd.arg(args[0]).arg(&work).args(&args[1..]);
        let (code, err) = run_bounded(cmd);
        assert_clean_outcome(&format!("vhddisk {args:?} {file}"), &work_name, code, &err);
    }
    let _ = std::fs::remove_file(&work);
    let copy = dir.join("copy.vhdx");
    let mut cmd = bin("vhddisk");
    cmd.arg("create").arg(&copy).arg("--from").arg(mutant);
    let (code, err) = run_bounded(cmd);
    assert_clean_outcome(&format!("vhddisk create --from {file}"), &file, code, &err);
    assert_eq!(copy.exists(), code == Some(0), "vhddisk create --from {file}: exit {code:?}");
    let _ = std::fs::remove_file(&copy);
    let partial =
        std::fs::read_dir(dir).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains(".partial"));
    assert!(!partial, "vhddisk create --from {file} left a temporary file");
    assert_eq!(sha256(&std::fs::read(mutant).unwrap()), before, "{file} changed");
}

/// Runs the mutants of `image` on `threads` threads.
fn run_mutants(image: &str, seed: u64, per_class: usize) -> usize {
    run_mutants_of(&corpus(image), seed, per_class)
}

/// Runs the mutants of the image at `src` on two threads.
fn run_mutants_of(src: &Path, seed: u64, per_class: usize) -> usize {
    let s = structures(src);
    let (stem, ext) = (src.file_stem().unwrap().to_string_lossy(), src.extension().unwrap().to_string_lossy());
    let all = mutants(&s, seed, per_class);
    let count = all.len();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let dir = tempdir();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(m) = all.get(i) else { break };
                    let path: PathBuf = dir.path().join(format!("{stem}-{}.{ext}", m.name));
                    apply(src, &path, m);
                    run_all(&path, dir.path());
                    std::fs::remove_file(&path).unwrap();
                }
            });
        }
    });
    count
}

#[test]
fn mutated_dynamic_images_fail_cleanly() {
    let n = run_mutants("aligned-dynamic.vhd", 0x5EED_0001, 8)
        + run_mutants("logical-dynamic.vhd", 0x5EED_0002, 4)
        + run_mutants("gpt-dynamic.vhd", 0x5EED_0003, 4);
    eprintln!("{n} dynamic mutants");
    assert!(n >= 150, "{n} mutants");
}

#[test]
fn mutated_fixed_images_fail_cleanly() {
    let n = run_mutants("xp-fixed.vhd", 0x5EED_0004, 4);
    eprintln!("{n} fixed mutants");
    assert!(n >= 20, "{n} mutants");
}

#[test]
fn mutated_vhdx_images_fail_cleanly() {
    let dir = tempdir();
    // One written by qemu-img, one by our own writer (a different layout).
    let foreign = dir.path().join("qemu-dynamic.vhdx");
    run_ok(Command::new("qemu-img").args(["convert", "-O", "vhdx"]).arg(corpus("aligned-dynamic.vhd")).arg(&foreign));
    let ours = dir.path().join("vhdkit-dynamic.vhdx");
    run_ok(bin("vhdcompact").arg(corpus("gpt-dynamic.vhd")).arg(&ours).args(["--to", "dynamic"]));
    let n = run_mutants_of(&foreign, 0x5EED_0006, 6) + run_mutants_of(&ours, 0x5EED_0007, 4);
    eprintln!("{n} VHDX mutants");
    assert!(n >= 80, "{n} mutants");
}

#[test]
fn mutated_hives_fail_cleanly() {
    let Some(src) = realdata("nt-hive/testdata/testhive") else { return };
    let dir = tempdir();
    let bytes = std::fs::read(&src).unwrap();
    let mut rng = Rng(0x5EED_0005);
    let mut count = 0;
    for i in 0..120 {
        let mut m = bytes.clone();
        if i % 10 == 9 {
            m.truncate(rng.below(bytes.len() as u64) as usize);
        } else {
            // Base block for some, cells (the first hive bins) for the rest.
            let span = if i % 5 == 0 { 4096 } else { bytes.len() as u64 };
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(span) as usize;
                m[at] ^= rng.next() as u8 | 1;
            }
        }
        let path = dir.path().join(format!("hive-{i}"));
        std::fs::write(&path, &m).unwrap();
        let file = format!("hive-{i}");
        for args in
            [vec!["list", ""], vec!["export", ""], vec!["set", "vhdkit", "v", "--type", "REG_DWORD", "--data", "1"]]
        {
            let mut cmd = bin("vhdreg");
            cmd.arg("--hive-file").arg(&path).args(&args);
            let (code, err) = run_bounded(cmd);
            assert_clean_outcome(&format!("vhdreg {args:?} {file}"), &file, code, &err);
            if code == Some(0) && args[0] == "set" {
                // A write that succeeded left a hive that reads back.
                let mut cmd = bin("vhdreg");
                cmd.arg("--hive-file").arg(&path).args(["get", "vhdkit", "v"]);
                assert_eq!(run_bounded(cmd).0, Some(0), "{file}: the written hive does not read back");
            }
        }
        count += 1;
    }
    assert_eq!(count, 120);
}
