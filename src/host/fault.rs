//! Crash-safety test hooks, compiled only with the test-only cargo feature `fault-injection`.
//!
//! - `VHDKIT_FAULT_AFTER_WRITES=N` aborts the process just before its (N+1)-th write,
//!   truncation or removal, as `kill -9` or a power cut would stop it.
//! - `VHDKIT_TRACE_WRITES=FILE` appends every write, truncation, flush and removal to FILE, so
//!   a test can rebuild the states a power cut could leave (any subset of the writes issued
//!   since the last flush).
//! - `VHDKIT_PAUSE_AFTER_WRITES=N` with `VHDKIT_PAUSE_FILE=FILE` stops the process just before
//!   its (N+1)-th write: it creates `FILE.paused` and waits until `FILE` is removed, so a test
//!   can run another tool at exactly that point.
//!
//! Without the feature every hook is an empty inline function.

use std::path::Path;

/// One traced operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Write { offset: u64, bytes: &'a [u8] },
    SetLen(u64),
    Sync,
    Remove,
}

#[cfg(feature = "fault-injection")]
mod armed {
    use std::io::Write;
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock};

    use super::Op;

    pub const FAULT_ENV: &str = "VHDKIT_FAULT_AFTER_WRITES";
    pub const TRACE_ENV: &str = "VHDKIT_TRACE_WRITES";
    pub const PAUSE_ENV: &str = "VHDKIT_PAUSE_AFTER_WRITES";
    pub const PAUSE_FILE_ENV: &str = "VHDKIT_PAUSE_FILE";

    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    static PAUSE: OnceLock<Option<(u64, std::path::PathBuf)>> = OnceLock::new();
    static PAUSE_COUNT: AtomicU64 = AtomicU64::new(0);

    /// Waits at the armed write until the test removes the pause file.
    fn pause_here() {
        let pause = PAUSE.get_or_init(|| {
            let n = std::env::var(PAUSE_ENV).ok()?.parse().ok()?;
            Some((n, std::env::var_os(PAUSE_FILE_ENV)?.into()))
        });
        let Some((n, file)) = pause else { return };
        if PAUSE_COUNT.fetch_add(1, Ordering::SeqCst) != *n {
            return;
        }
        let mut marker = file.as_os_str().to_os_string();
        marker.push(".paused");
        let _ = std::fs::write(&marker, b"");
        while file.exists() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    static WRITES: AtomicU64 = AtomicU64::new(0);
    static TRACE: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();

    pub fn before(path: &Path, op: Op<'_>) {
        if op != Op::Sync {
            pause_here();
            let limit = LIMIT.get_or_init(|| std::env::var(FAULT_ENV).ok().and_then(|v| v.parse().ok()));
            if let Some(limit) = *limit
                && WRITES.fetch_add(1, Ordering::SeqCst) >= limit
            {
                eprintln!("{FAULT_ENV}: aborting before write {}", limit + 1);
                std::process::abort();
            }
        }
        let trace = TRACE.get_or_init(|| {
            let path = std::env::var_os(TRACE_ENV)?;
            std::fs::OpenOptions::new().create(true).append(true).open(path).ok().map(Mutex::new)
        });
        if let Some(trace) = trace
            && let Ok(mut f) = trace.lock()
        {
            let name = path.as_os_str().as_encoded_bytes();
            let (kind, offset, bytes): (u8, u64, &[u8]) = match op {
                Op::Write { offset, bytes } => (b'W', offset, bytes),
                Op::SetLen(len) => (b'T', len, &[]),
                Op::Sync => (b'S', 0, &[]),
                Op::Remove => (b'R', 0, &[]),
            };
            let mut rec = vec![kind];
            rec.extend_from_slice(&(name.len() as u32).to_le_bytes());
            rec.extend_from_slice(name);
            rec.extend_from_slice(&offset.to_le_bytes());
            rec.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            rec.extend_from_slice(bytes);
            let _ = f.write_all(&rec);
        }
    }
}

/// Called before every write, truncation, flush and removal of an image or journal.
#[cfg(feature = "fault-injection")]
pub fn before(path: &Path, op: Op<'_>) {
    armed::before(path, op);
}

/// Called before every write, truncation, flush and removal of an image or journal.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn before(_path: &Path, _op: Op<'_>) {}
