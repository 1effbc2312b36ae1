//! Helpers shared by the integration tests: corpus images, real third-party data, external
//! tools and the project's binaries.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use vhdkit::vhd::{BlockDevice, DiskImage, OpenOptions};

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
        let tmp = cache.join(format!("{name}.partial"));
        let f = std::fs::File::create(&tmp).unwrap();
        let st = Command::new("gzip").arg("-dc").arg(&src).stdout(f).status().expect("gzip is needed");
        assert!(st.success(), "gzip -dc {}", src.display());
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

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("vhdkit-test").tempdir().unwrap()
}

/// Runs a command, panicking with its stderr if it fails to start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (make test installs the test tools)"))
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

/// Opens an image leniently.
pub fn open(path: &Path) -> DiskImage {
    DiskImage::open(path, &OpenOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// `qemu-img convert -f vpc -O raw` of an image, read into memory (qemu probes a fixed VHD as
/// raw, footer included, unless told the format).
pub fn qemu_raw(image: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("{}.qemu.raw", image.file_name().unwrap().to_string_lossy()));
    run_ok(Command::new("qemu-img").args(["convert", "-f", "vpc", "-O", "raw"]).arg(image).arg(&out));
    let data = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    data
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
