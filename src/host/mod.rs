//! The host file system: how vhdkit opens, locks, reads, creates and replaces files.
//!
//! Every rule about files that are not the image's own structures lives here, so that each
//! command follows the same ones:
//! - inputs are opened without blocking and must be regular files (or block devices where an
//!   image is expected): a FIFO or a character device named as an input is refused, never read;
//! - readers take a shared lock and writers an exclusive one, for the whole run;
//! - nothing read from a file sizes an allocation beyond a limit the caller states;
//! - new files appear whole or not at all ([`NewFile`]), never replace an input, a device or an
//!   existing file unless asked, and are never more open than their inputs.
//!
//! Platform differences stay in [`platform`].

pub mod fault;
pub mod journal;
mod output;
pub(crate) mod platform;
pub mod stream;

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub use output::{NewFile, NewTree, OutputPolicy, Replace, sync_dir};

/// Which file a path names, by device and inode (what survives renames, links and symlinks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    pub device: u64,
    pub inode: u64,
}

impl FileId {
    /// The identity of an open file or a stat result.
    pub fn of(meta: &Metadata) -> FileId {
        platform::file_id(meta)
    }

    /// The identity of the file `path` names (following symlinks), if it exists.
    pub fn of_path(path: &Path) -> Option<FileId> {
        std::fs::metadata(path).ok().map(|m| FileId::of(&m))
    }
}

/// What kind of file an input must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A disk image: a regular file or a block device.
    Image,
    /// A regular file (hives, logs, journals, .reg files, data files).
    Regular,
}

/// How a file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

/// What to do when another process holds a conflicting lock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LockWait {
    /// Fail at once with [`Error::InUse`].
    #[default]
    Fail,
    /// Block until the other process lets go.
    Wait,
}

/// Opens `path` without blocking (a FIFO must not hang the command) and checks that it is the
/// kind of file `expect` allows.
pub fn open(path: &Path, access: Access, expect: Expect) -> Result<File> {
    let file = platform::open_nonblocking(path, access == Access::ReadWrite, false)
        .map_err(|e| Error::open(path, "open", e))?;
    let meta = file.metadata().map_err(|e| Error::open(path, "stat", e))?;
    check_kind(path, &meta, expect)?;
    Ok(file)
}

/// Refuses a file that is not what `expect` allows, naming what it is.
pub fn check_kind(path: &Path, meta: &Metadata, expect: Expect) -> Result<()> {
    let kind = platform::kind_name(meta);
    let ok = match expect {
        Expect::Image => kind == "regular file" || kind == "block device",
        Expect::Regular => kind == "regular file",
    };
    if ok {
        Ok(())
    } else {
        let wanted = match expect {
            Expect::Image => "a regular file or a block device",
            Expect::Regular => "a regular file",
        };
        Err(Error::unsupported(path, format!("is a {kind}, not {wanted}")))
    }
}

/// Takes a shared or exclusive lock on `file` for as long as it stays open.
pub fn lock(file: &File, path: &Path, exclusive: bool, wait: LockWait) -> Result<()> {
    use std::fs::TryLockError;
    let attempt = match (exclusive, wait) {
        (true, LockWait::Wait) => return file.lock().map_err(|e| Error::open(path, "lock", e)),
        (false, LockWait::Wait) => return file.lock_shared().map_err(|e| Error::open(path, "lock", e)),
        (true, LockWait::Fail) => file.try_lock(),
        (false, LockWait::Fail) => file.try_lock_shared(),
    };
    match attempt {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => Err(Error::InUse { file: path.to_path_buf() }),
        Err(TryLockError::Error(e)) => Err(Error::open(path, "lock", e)),
    }
}

/// Opens and locks `path`, then checks that the path still names the file locked: a writer
/// that replaced the file by rename while this one waited would otherwise leave it holding
/// the old copy.
pub fn open_locked(path: &Path, access: Access, expect: Expect, wait: LockWait) -> Result<File> {
    loop {
        let file = open(path, access, expect)?;
        lock(&file, path, access == Access::ReadWrite, wait)?;
        let held = FileId::of(&file.metadata().map_err(|e| Error::open(path, "stat", e))?);
        if FileId::of_path(path) == Some(held) {
            return Ok(file);
        }
    }
}

/// Reads the whole regular file `path` (under a shared lock) when it is at most `limit` bytes;
/// `what` names the file in the error otherwise. The file's stated length is not trusted:
/// reading stops one byte past the limit.
pub fn read_limited(path: &Path, limit: u64, what: &str, wait: LockWait) -> Result<Vec<u8>> {
    let file = open_locked(path, Access::Read, Expect::Regular, wait)?;
    read_file_limited(&file, path, limit, what)
}

/// [`read_limited`] of a file already open.
pub fn read_file_limited(file: &File, path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let too_large = || Error::unsupported(path, format!("is larger than {limit} bytes: too large for {what}"));
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // A regular file says its length: one too large is refused before a byte is read.
    if len > limit {
        return Err(too_large());
    }
    let mut out = Vec::new();
    out.try_reserve(len as usize)
        .map_err(|_| Error::unsupported(path, format!("cannot hold {len} bytes in memory")))?;
    file.take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| Error::io(path, "read", crate::Space::File, out.len() as u64, e))?;
    if out.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(out)
}

/// Refuses to write a file whose permissions forbid it, even where the caller could (root):
/// a file made read-only was made so on purpose.
pub fn require_write_permission(path: &Path, meta: &Metadata) -> Result<()> {
    if meta.permissions().readonly() {
        return Err(Error::Conflict {
            file: path.to_path_buf(),
            problem: "is read-only (no write permission); make it writable first".into(),
        });
    }
    Ok(())
}

/// Refuses to replace a file that has other names (hard links): they would keep the old
/// content.
pub fn require_single_name(path: &Path, meta: &Metadata) -> Result<()> {
    let links = platform::link_count(meta);
    if links > 1 {
        return Err(Error::Conflict {
            file: path.to_path_buf(),
            problem: format!("has {links} names (hard links), which a rewrite would split; edit a copy"),
        });
    }
    Ok(())
}

/// Ranges `[a, b)` of `[start, end)` of `file` that may hold data: a sparse file's holes read
/// as zeros and are skipped without reading them. Where the host cannot tell, the whole range.
pub fn data_ranges(file: &File, start: u64, end: u64) -> Vec<(u64, u64)> {
    platform::data_ranges(file, start, end).unwrap_or_else(|| vec![(start, end)])
}

/// The folder holding `path` ("." for a bare file name).
pub fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
