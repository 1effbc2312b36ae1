//! Helpers shared by the integration tests: corpus images, real third-party data, external
//! tools and the project's binaries.
#![allow(dead_code)]

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use vhdkit::{BlockDevice, DiskImage, OpenOptions};

/// The crate's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

static DECOMPRESS: Mutex<()> = Mutex::new(());

/// A corpus image decompressed once per build into target/test-corpus (read-only use: copy
/// it before writing).
pub fn corpus(name: &str) -> PathBuf {
    let cache = root().join("target/test-corpus");
    let out = cache.join(name);
    let _guard = DECOMPRESS.lock().unwrap_or_else(|p| p.into_inner());
    if !out.exists() {
        std::fs::create_dir_all(&cache).unwrap();
        let src = root().join("corpus").join(format!("{name}.gz"));
        // Another test process may decompress the same image at the same time: each writes
        // its own file and the rename is atomic.
        let tmp = cache.join(format!("{name}.{}.partial", std::process::id()));
        // Unpacked whole, not sparse: a fixed image is tested as the fully allocated file it is.
        gunzipped(&src, |image| std::io::copy(image, &mut std::fs::File::create(&tmp).unwrap()).unwrap());
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

/// The corpus manifest.
pub fn manifest() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(root().join("corpus/manifest.json")).unwrap()).unwrap()
}

/// A file under ../shared/realdata, or `None` (with a printed notice) when it is absent.
pub fn realdata(rel: &str) -> Option<PathBuf> {
    let p = root().join("../shared/realdata").join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipped: real data {} is absent", p.display());
        None
    }
}

/// Copies `from` into a new file at `to`, leaving each all-zero MiB a hole: the Windows-made
/// sample volumes are GiBs of mostly zeros, and a CI machine may be short of disk.
pub fn copy_sparse(mut from: impl Read, to: &Path) -> u64 {
    let mut out = std::fs::File::create(to).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match from.read(&mut buf[n..]).unwrap() {
                0 => break,
                got => n += got,
            }
        }
        if n == 0 {
            break;
        }
        if buf[..n].iter().all(|&b| b == 0) {
            out.seek(SeekFrom::Current(n as i64)).unwrap();
        } else {
            out.write_all(&buf[..n]).unwrap();
        }
        len += n as u64;
    }
    out.set_len(len).unwrap();
    len
}

/// `read` given the decompressed stream of `gz` (what it leaves unread is drained, so gzip
/// exits), and gzip's success checked.
fn gunzipped<T>(gz: &Path, read: impl FnOnce(&mut std::process::ChildStdout) -> T) -> T {
    let mut gzip = Command::new("gzip").arg("-dc").arg(gz).stdout(Stdio::piped()).spawn().expect("gzip is needed");
    let mut stream = gzip.stdout.take().unwrap();
    let out = read(&mut stream);
    std::io::copy(&mut stream, &mut std::io::sink()).unwrap();
    assert!(gzip.wait().unwrap().success(), "gzip -dc {}", gz.display());
    out
}

/// A gzip-compressed disk unpacked to `to` as a sparse file (see `copy_sparse`).
pub fn gunzip_sparse(gz: &Path, to: &Path) {
    gunzipped(gz, |disk| copy_sparse(disk, to));
}

/// The first partition of a gzip-compressed MBR disk, unpacked alone to `to` (sparse).
pub fn gunzip_first_partition(gz: &Path, to: &Path) {
    gunzipped(gz, |disk| {
        let mut mbr = [0u8; 512];
        disk.read_exact(&mut mbr).unwrap();
        let field = |at: usize| u64::from(u32::from_le_bytes(mbr[at..at + 4].try_into().unwrap()));
        let (start, sectors) = (field(454), field(458));
        assert!(start > 0 && mbr[450] == 0x07 && mbr[510..] == [0x55, 0xAA], "{}: no NTFS partition 1", gz.display());
        std::io::copy(&mut disk.take((start - 1) * 512), &mut std::io::sink()).unwrap();
        assert_eq!(copy_sparse(disk.take(sectors * 512), to), sectors * 512, "{}: truncated", gz.display());
    });
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("vhdkit-test").tempdir().unwrap()
}

/// Runs a command, panicking with its stderr if it fails to start. The JSON a project tool
/// prints is validated against its published schema (docs/schema/).
/// Runs `cmd` allowed `writes` writes (the fault-injection build aborts it at the next one):
/// true when it completed within them; otherwise it must have stopped at the fault.
pub fn completes_within(cmd: &mut Command, writes: u64) -> bool {
    let out = run(cmd.env("VHDKIT_FAULT_AFTER_WRITES", writes.to_string()));
    if out.status.success() {
        return true;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("aborting before write"), "{stderr}");
    false
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (make test installs the test tools)"));
    validate_json(cmd, &out);
    out
}

/// Where a project tool's JSON goes and which schema it follows: the schema's name, whether it
/// is JSON Lines, and whether it is on stderr (the report of `vhdcompact IN -`).
fn json_schema_of(cmd: &Command) -> Option<(&'static str, bool, bool)> {
    let tool = Path::new(cmd.get_program()).file_name()?.to_str()?.to_string();
    let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let lines = has("--jsonl");
    if !lines && !has("--json") {
        return None;
    }
    let first_of = |names: &[&'static str]| args.iter().find_map(|a| names.iter().find(|n| **n == a).copied());
    let reg = |first: &str| match first {
        "export" => "vhdreg-export",
        "get" | "list" => "vhdreg-get",
        "recover" => "vhdreg-recover",
        _ => "vhdreg-write",
    };
    Some(match tool.as_str() {
        "vhdinspect" => {
            let commands =
                ["dump", "check", "files", "owner", "map", "diff", "align", "ranges", "reg", "extract", "rebase-plan"];
            match first_of(&commands)? {
                "reg" => (reg(first_of(&["get", "list", "export"])?), false, false),
                "rebase-plan" => ("vhdinspect-rebase-plan", false, false),
                "files" if lines => ("vhdinspect-files-line", true, false),
                "map" if lines => ("vhdinspect-map-line", true, false),
                "owner" if lines => ("vhdinspect-owner-line", true, false),
                "dump" => ("vhdinspect-dump", false, false),
                "check" => ("vhdinspect-check", false, false),
                "files" => ("vhdinspect-files", false, false),
                "owner" => ("vhdinspect-owner", false, false),
                "map" => ("vhdinspect-map", false, false),
                "diff" => ("vhdinspect-diff", false, false),
                "align" => ("vhdinspect-align", false, false),
                "ranges" => ("vhdinspect-ranges", false, false),
                _ => ("vhdinspect-extract", false, false),
            }
        }
        "vhdreg" => (reg(first_of(&["get", "list", "export", "set", "delete", "import", "recover"])?), false, false),
        "vhdcompact" if has("--what-if") => ("vhdcompact-what-if-line", true, false),
        "vhdcompact" if args.iter().any(|a| a.starts_with("http://") || a.starts_with("https://")) => {
            ("vhdcompact-upload", false, false)
        }
        "vhdcompact" => ("vhdcompact", false, has("-")),
        "vhddisk" => match first_of(&["create", "expand", "shrink", "set-parent", "commit"])? {
            "create" => ("vhddisk-create", false, false),
            "set-parent" => ("vhddisk-set-parent", false, false),
            "commit" => ("vhddisk-commit", false, false),
            _ => ("vhddisk-resize", false, false),
        },
        _ => return None,
    })
}

/// The published schemas, compiled once per test process.
fn schemas() -> &'static std::collections::HashMap<String, jsonschema::Validator> {
    static SCHEMAS: std::sync::OnceLock<std::collections::HashMap<String, jsonschema::Validator>> =
        std::sync::OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let dir = root().join("docs/schema");
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?.strip_suffix(".schema.json")?.to_string();
                let schema: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                Some((name, jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{}: {e}", p.display()))))
            })
            .collect()
    })
}

/// Checks the JSON a project tool printed against its schema.
fn validate_json(cmd: &Command, out: &Output) {
    let Some((name, lines, on_stderr)) = json_schema_of(cmd) else { return };
    let text = String::from_utf8_lossy(if on_stderr { &out.stderr } else { &out.stdout });
    if text.trim().is_empty() {
        return;
    }
    let validator = schemas().get(name).unwrap_or_else(|| panic!("docs/schema/{name}.schema.json is missing"));
    let docs: Vec<&str> = if lines { text.lines().filter(|l| !l.trim().is_empty()).collect() } else { vec![&text] };
    for doc in docs {
        let value: serde_json::Value =
            serde_json::from_str(doc).unwrap_or_else(|e| panic!("{cmd:?} printed invalid JSON ({e}): {doc}"));
        let errors: Vec<String> =
            validator.iter_errors(&value).map(|e| format!("{} at {}", e, e.instance_path())).take(5).collect();
        assert!(errors.is_empty(), "{cmd:?}: output does not follow docs/schema/{name}.schema.json: {errors:#?}");
    }
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// One of the project's binaries.
pub fn bin(name: &str) -> Command {
    let path = match name {
        "vhdinspect" => env!("CARGO_BIN_EXE_vhdinspect"),
        "vhdcompact" => env!("CARGO_BIN_EXE_vhdcompact"),
        "vhdreg" => env!("CARGO_BIN_EXE_vhdreg"),
        "vhddisk" => env!("CARGO_BIN_EXE_vhddisk"),
        other => panic!("unknown binary {other}"),
    };
    Command::new(path)
}

/// The whole content of a device.
pub fn read_all(dev: &dyn BlockDevice) -> Vec<u8> {
    let mut buf = vec![0u8; dev.len() as usize];
    dev.read_at(0, &mut buf).unwrap();
    buf
}

/// Opens an image leniently. It waits for a lock: a process another test thread is spawning
/// holds copies of this process's files (and their locks) between its fork and its exec.
pub fn open(path: &Path) -> DiskImage {
    let opts = OpenOptions { wait: vhdkit::LockWait::Wait, ..OpenOptions::default() };
    DiskImage::open(path, &opts).unwrap_or_else(|e| panic!("{e}"))
}

/// `qemu-img convert -O raw` of a VHD (told `-f vpc`: qemu probes a fixed VHD as raw, footer
/// included) or a VHDX, written to `to` (sparse: qemu leaves zeros as holes).
pub fn qemu_raw_file(image: &Path, to: &Path) {
    let mut head = [0u8; 8];
    std::io::Read::read_exact(&mut std::fs::File::open(image).unwrap(), &mut head).unwrap();
    let format = if &head == b"vhdxfile" { "vhdx" } else { "vpc" };
    run_ok(Command::new("qemu-img").args(["convert", "-f", format, "-O", "raw"]).arg(image).arg(to));
}

/// `qemu_raw_file` read into memory.
pub fn qemu_raw(image: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("{}.qemu.raw", image.file_name().unwrap().to_string_lossy()));
    qemu_raw_file(image, &out);
    let data = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    data
}

/// `len` bytes of noise no coder shrinks, the same for the same `seed` (xorshift).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sets the one's-complement VHD checksum of a footer or dynamic header (`bytes`), its own
/// field at `at` taken as zero.
pub fn vhd_checksum(bytes: &mut [u8], at: usize) {
    bytes[at..at + 4].fill(0);
    let sum = bytes.iter().fold(0u32, |s, &b| s.wrapping_add(b as u32));
    bytes[at..at + 4].copy_from_slice(&(!sum).to_be_bytes());
}

/// SHA-256 of bytes, in hex.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Asserts that a failed command printed exactly one line naming `file` and containing every
/// `needle`, exited with 1 and did not panic.
pub fn assert_one_line_error(out: &Output, file: &str, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line expected: {err}");
    assert!(err.contains(file), "{err:?} does not name {file}");
    for n in needles {
        assert!(err.contains(n), "{err:?} lacks {n:?}");
    }
}

/// Asserts that a command refused its arguments: one line naming `file` with every `needle`,
/// exit code 2.
pub fn assert_usage_error(out: &Output, file: &str, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line expected: {err}");
    assert!(err.contains(file), "{err:?} does not name {file}");
    for n in needles {
        assert!(err.contains(n), "{err:?} lacks {n:?}");
    }
}

/// Whether `dir` is a mount point now (the kernel's own table, not a guess).
fn is_mounted(dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    table.lines().any(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap_or("")))
}

/// Polls `done` every 50 ms for up to `secs` seconds.
fn wait_for(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    done()
}

/// Mounts an NTFS volume (a raw partition image) with ntfs-3g, runs `f` on the mount point,
/// then unmounts (also when `f` panics). The mount is over only when `umount` succeeded and
/// the ntfs-3g process has exited successfully (it then has written everything to the
/// volume); anything else fails the test loudly, so a busy machine cannot make it race.
pub fn with_ntfs3g<T>(volume: &Path, read_only: bool, f: impl FnOnce(&Path) -> T) -> T {
    let mnt = tempdir();
    let log = tempfile::NamedTempFile::new().unwrap();
    // noatime: another process reading the mount (a `du` over /tmp, an indexer) must not
    // change the volume a test compares sector by sector.
    let opts =
        if read_only { "ro,streams_interface=xattr,no_detach" } else { "rw,noatime,streams_interface=xattr,no_detach" };
    let mut child = Command::new("ntfs-3g")
        .args(["-o", opts])
        .arg(volume)
        .arg(mnt.path())
        .stdout(std::process::Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .expect("ntfs-3g is needed (make test installs it)");
    let log_text = || std::fs::read_to_string(log.path()).unwrap_or_default();
    let up = wait_for(60, || is_mounted(mnt.path()) || child.try_wait().ok().flatten().is_some());
    if !up || !is_mounted(mnt.path()) {
        let _ = child.kill();
        panic!("ntfs-3g could not mount {} (FUSE and root are needed): {}", volume.display(), log_text());
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(mnt.path())));
    let unmounted = wait_for(120, || {
        Command::new("umount").arg(mnt.path()).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success())
            || !is_mounted(mnt.path())
    });
    let mut status = None;
    let exited = unmounted && wait_for(120, || matches!(child.try_wait(), Ok(Some(s)) if { status = Some(s); true }));
    if !unmounted || !exited {
        let _ = Command::new("umount").arg("-l").arg(mnt.path()).status();
        let _ = child.kill();
        panic!(
            "ntfs-3g on {}: umount {} and the process {}",
            volume.display(),
            if unmounted { "succeeded" } else { "kept failing" },
            if exited { "exited" } else { "did not exit" }
        );
    }
    let status = status.expect("the exit status was read");
    assert!(status.success(), "ntfs-3g on {} exited with {status}: {}", volume.display(), log_text());
    result.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Every file and alternate data stream of an NTFS volume (a raw partition image) as
/// `path[:stream]` -> SHA-256, read by ntfs-3g mounted read-only.
pub fn ntfs3g_hashes(volume: &Path) -> std::collections::BTreeMap<String, String> {
    with_ntfs3g(volume, true, |mnt| {
        let mut out = std::collections::BTreeMap::new();
        hash_tree(mnt, mnt, &mut out);
        out
    })
}

fn hash_tree(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            hash_tree(root, &path, out);
        } else if kind.is_file() {
            out.insert(rel.clone(), sha256(&std::fs::read(&path).unwrap()));
        }
        let xattrs = Command::new("getfattr")
            .args(["--absolute-names", "-d", "-m", "^user\\.", "-e", "hex"])
            .arg(&path)
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&xattrs.stdout).lines() {
            if let Some((name, value)) = line.split_once('=') {
                let bytes = hex::decode(value.trim_start_matches("0x")).unwrap_or_default();
                out.insert(format!("{rel}:{}", name.trim_start_matches("user.")), sha256(&bytes));
            }
        }
    }
}

/// The bytes of partition `index` of an image, written to `dir/part<index>.img` as a sparse
/// file (for ntfs-3g and Sleuth Kit, which read volumes, not containers).
pub fn partition_image(image: &DiskImage, index: u32, dir: &Path) -> PathBuf {
    let layout = vhdkit::DiskLayout::read(image).unwrap();
    let p = layout.partition(index).unwrap_or_else(|| panic!("no partition {index}"));
    let view = vhdkit::PartitionView::new(image, p);
    let out = dir.join(format!("part{index}.img"));
    copy_sparse(vhdkit::DeviceReader::new(&view), &out);
    out
}

/// Partition `index` of `image` as a file ntfs-3g or Sleuth Kit reads: a raw image in place
/// where the tool can, anything else through a sparse copy in `dir`, removed on drop. For
/// reading only: the file may be the real data under ../shared/realdata.
pub struct ReadableVolume {
    pub path: PathBuf,
    /// The volume's first 512-byte sector in `path` (Sleuth Kit's `-o`).
    pub sector: u64,
    copied: bool,
}

impl ReadableVolume {
    /// For ntfs-3g, which reads a volume only from the start of a file.
    pub fn at_start(img: &DiskImage, index: u32, dir: &Path) -> Self {
        Self::new(img, index, dir, false)
    }

    /// For Sleuth Kit, which reads a raw disk's partition in place at its sector.
    pub fn at_sector(img: &DiskImage, index: u32, dir: &Path) -> Self {
        Self::new(img, index, dir, true)
    }

    fn new(img: &DiskImage, index: u32, dir: &Path, offset_read: bool) -> Self {
        let layout = vhdkit::DiskLayout::read(img).unwrap();
        let p = layout.partition(index).unwrap_or_else(|| panic!("no partition {index}"));
        if img.format() == vhdkit::ImageFormat::Raw && (offset_read || p.start() == 0) {
            ReadableVolume { path: img.source().to_path_buf(), sector: p.start() / 512, copied: false }
        } else {
            ReadableVolume { path: partition_image(img, index, dir), sector: 0, copied: true }
        }
    }
}

impl Drop for ReadableVolume {
    fn drop(&mut self) {
        if self.copied {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// ntfs-3g's file hashes of every NTFS partition of an image, keyed by partition.
pub fn image_file_hashes(image: &Path) -> std::collections::BTreeMap<u32, std::collections::BTreeMap<String, String>> {
    let dir = tempdir();
    let img = open(image);
    let layout = vhdkit::DiskLayout::read(&img).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for p in &layout.partitions {
        let mut boot = [0u8; 512];
        img.read_at(p.start(), &mut boot).unwrap();
        if &boot[3..11] == b"NTFS    " {
            out.insert(p.index, ntfs3g_hashes(&ReadableVolume::at_start(&img, p.index, dir.path()).path));
        }
    }
    out
}

// Real hives in generated Windows-like images (shared by the registry and alignment tests).

pub const SYSTEM: &str = "Windows/System32/config/SYSTEM";
pub const COMPUTER_NAME: &str = r"HKLM\SYSTEM\CurrentControlSet\Control\ComputerName\ComputerName";

/// The real hives the tests put into images; `None` (with a notice) when real data is absent.
pub struct Hives {
    pub system: PathBuf,
    pub ntuser: PathBuf,
    pub dirty: PathBuf,
    pub bcd: PathBuf,
    pub sam: PathBuf,
}

pub fn hives(dir: &Path) -> Option<Hives> {
    let xz = realdata("regipy/regipy_tests/data/SYSTEM.xz")?;
    let ntuser = realdata("plaso/test_data/NTUSER.DAT")?;
    let dirty = realdata("yarp/hives_for_tests/NewDirtyHive1")?;
    let bcd = realdata("regipy/regipy_tests/data/BCD")?;
    let sam = realdata("regipy/regipy_tests/data/SAM")?;
    let system = dir.join("SYSTEM.orig");
    let f = std::fs::File::create(&system).unwrap();
    assert!(Command::new("xz").arg("-dc").arg(&xz).stdout(f).status().unwrap().success());
    Some(Hives { system, ntuser, dirty, bcd, sam })
}

/// Byte offset and length of partition 1 of an image.
pub fn partition_span(image: &Path) -> (u64, u64) {
    let img = open(image);
    let layout = vhdkit::DiskLayout::read(&img).unwrap();
    let p = layout.partition(1).unwrap();
    (p.start(), p.len())
}

/// A copy of the XP corpus image (fixed VHD, partition 1 at sector 63) with real hives put in
/// by ntfs-3g: SYSTEM, SAM, Boot/BCD, Users/alice/NTUSER.DAT, and dirty/NewDirtyHive with its
/// two logs.
pub fn windows_image(dir: &Path, h: &Hives) -> PathBuf {
    let image = dir.join("win.vhd");
    std::fs::copy(corpus("xp-fixed.vhd"), &image).unwrap();
    let part = partition_image(&open(&image), 1, dir);
    with_ntfs3g(&part, false, |mnt| {
        let config = mnt.join("Windows/System32/config");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::copy(&h.system, config.join("SYSTEM")).unwrap();
        std::fs::copy(&h.sam, config.join("SAM")).unwrap();
        std::fs::create_dir_all(mnt.join("Boot")).unwrap();
        std::fs::copy(&h.bcd, mnt.join("Boot/BCD")).unwrap();
        std::fs::create_dir_all(mnt.join("Users/alice")).unwrap();
        std::fs::copy(&h.ntuser, mnt.join("Users/alice/NTUSER.DAT")).unwrap();
        std::fs::create_dir_all(mnt.join("dirty")).unwrap();
        for name in ["NewDirtyHive", "NewDirtyHive.LOG1", "NewDirtyHive.LOG2"] {
            std::fs::copy(h.dirty.join(name), mnt.join("dirty").join(name)).unwrap();
        }
    });
    let (start, _) = partition_span(&image);
    let f = std::fs::OpenOptions::new().write(true).open(&image).unwrap();
    f.write_all_at(&std::fs::read(&part).unwrap(), start).unwrap();
    std::fs::remove_file(&part).unwrap();
    image
}

/// A dynamic copy of the Windows image (made by qemu-img).
pub fn dynamic_windows_image(dir: &Path, h: &Hives) -> PathBuf {
    let fixed = windows_image(dir, h);
    let dynamic = dir.join("win-dynamic.vhd");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "vpc", "-O", "vpc", "-o", "subformat=dynamic"])
            .arg(&fixed)
            .arg(&dynamic),
    );
    std::fs::remove_file(&fixed).unwrap();
    dynamic
}

/// Files copied out of partition 1 of an image by ntfs-3g (read-only), by path in the volume.
pub fn copy_out(image: &Path, paths: &[&str], dir: &Path) -> Vec<PathBuf> {
    let part = partition_image(&open(image), 1, dir);
    let out = with_ntfs3g(&part, true, |mnt| {
        paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let to = dir.join(format!("out{i}-{}", p.rsplit('/').next().unwrap()));
                std::fs::copy(mnt.join(p), &to).unwrap_or_else(|e| panic!("ntfs-3g cannot read {p}: {e}"));
                to
            })
            .collect()
    });
    std::fs::remove_file(&part).unwrap();
    out
}

/// hivexsh (read-only) running `script` on `hive`.
pub fn hivexsh(hive: &Path, script: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("hivexsh")
        .arg(hive)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "hivexsh {}", hive.display());
    String::from_utf8(out.stdout).unwrap()
}

pub fn hivexget(hive: &Path, key: &str, value: &str) -> String {
    String::from_utf8(run_ok(Command::new("hivexget").arg(hive).arg(key).arg(value))).unwrap().trim_end().to_string()
}

pub fn hivex_export(hive: &Path, key: &str) -> String {
    String::from_utf8(run_ok(
        Command::new("hivexregedit").args(["--export", "--prefix", "HKEY_LOCAL_MACHINE\\SYSTEM"]).arg(hive).arg(key),
    ))
    .unwrap()
}

/// Drops the section of `key` (and its subkeys) from a hivexregedit export.
pub fn without_key(export: &str, key: &str) -> String {
    let mut out = String::new();
    let mut skip = false;
    for line in export.lines() {
        if line.starts_with('[') {
            let name = line.trim_matches(|c| c == '[' || c == ']');
            skip = name == key || name.starts_with(&format!("{key}\\"));
        }
        if !skip {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The bytes of value `name` in a .reg export (`"name"=hex:..` or `hex(N):..`).
pub fn reg_hex_value(export: &str, name: &str) -> Vec<u8> {
    let prefix = format!("\"{name}\"=hex");
    let mut lines = export.lines().skip_while(|l| !l.starts_with(&prefix));
    let first = lines.next().unwrap_or_else(|| panic!("no hex value {name}"));
    let mut data = first[prefix.len()..].split_once(':').unwrap().1.to_string();
    // A value continues on the next line after a trailing backslash.
    while data.ends_with('\\') {
        data.pop();
        data.push_str(lines.next().unwrap_or(""));
    }
    hex::decode(data.chars().filter(|c| c.is_ascii_hexdigit()).collect::<String>())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub fn image_hash(image: &Path) -> String {
    sha256(&read_all(&open(image)))
}

/// Gives a copied file (real data is read-only) its owner's write permission.
pub fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o200)).unwrap();
}
