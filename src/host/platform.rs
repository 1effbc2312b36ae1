//! What differs between hosts: opening without blocking, file identity and kind, positional
//! I/O, holes of sparse files, ownership. Everything else in vhdkit is portable.

use std::fs::{File, Metadata};
use std::io;
use std::path::Path;

use crate::host::FileId;

#[cfg(unix)]
mod imp {
    use std::fs::{File, Metadata};
    use std::io;
    use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
    use std::path::Path;

    use rustix::fs::{OFlags, SeekFrom};

    use crate::host::FileId;

    pub fn open_nonblocking(path: &Path, write: bool, no_follow: bool) -> io::Result<File> {
        let mut flags = OFlags::NONBLOCK;
        if no_follow {
            flags |= OFlags::NOFOLLOW;
        }
        std::fs::OpenOptions::new().read(true).write(write).custom_flags(flags.bits() as i32).open(path)
    }

    pub fn create_new_private(path: &Path, mode: u32) -> io::Result<File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(OFlags::NOFOLLOW.bits() as i32)
            .open(path)
    }

    pub fn file_id(meta: &Metadata) -> FileId {
        FileId { device: meta.dev(), inode: meta.ino() }
    }

    pub fn link_count(meta: &Metadata) -> u64 {
        meta.nlink()
    }

    pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            // File systems without the flag: a hard link fails as well when the target exists.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP) => {
                std::fs::hard_link(from, to)?;
                std::fs::remove_file(from)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn rename_dir_noreplace(from: &Path, to: &Path) -> io::Result<()> {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            // File systems without the flag: an empty folder made first (failing if the target
            // exists) is then replaced by the rename.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP) => {
                std::fs::create_dir(to)?;
                std::fs::rename(from, to)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn owned_by_me(meta: &Metadata) -> bool {
        meta.uid() == rustix::process::geteuid().as_raw()
    }

    pub fn kind_name(meta: &Metadata) -> &'static str {
        let t = meta.file_type();
        if t.is_file() {
            "regular file"
        } else if t.is_dir() {
            "directory"
        } else if t.is_block_device() {
            "block device"
        } else if t.is_char_device() {
            "character device"
        } else if t.is_fifo() {
            "FIFO"
        } else if t.is_socket() {
            "socket"
        } else {
            "special file"
        }
    }

    pub fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        file.read_exact_at(buf, offset)
    }

    pub fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(buf, offset)
    }

    pub fn data_ranges(file: &File, start: u64, end: u64) -> Option<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        let mut at = start;
        while at < end {
            let data = match rustix::fs::seek(file, SeekFrom::Data(at)) {
                Ok(d) => d,
                // No data at or after `at`: the rest is a hole.
                Err(rustix::io::Errno::NXIO) => break,
                Err(_) => return None,
            };
            if data >= end {
                break;
            }
            let hole = rustix::fs::seek(file, SeekFrom::Hole(data)).ok()?;
            out.push((data, hole.min(end)));
            at = hole;
        }
        Some(out)
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub fn allocate_zeroed(file: &File, offset: u64, len: u64) -> io::Result<bool> {
        use rustix::fs::{FallocateFlags, fallocate};
        match fallocate(file, FallocateFlags::empty(), offset, len) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub fn allocate_zeroed(_file: &File, _offset: u64, _len: u64) -> io::Result<bool> {
        Ok(false)
    }

    pub fn owner(meta: &Metadata) -> Option<(u32, u32)> {
        Some((meta.uid(), meta.gid()))
    }

    pub fn mode(meta: &Metadata) -> u32 {
        meta.mode() & 0o7777
    }

    pub fn set_owner(file: &File, owner: (u32, u32)) -> io::Result<()> {
        std::os::unix::fs::fchown(file, Some(owner.0), Some(owner.1))
    }

    pub fn set_mode(file: &File, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
    }

    /// Whether someone other than the owner may write the file.
    pub fn writable_by_others(meta: &Metadata) -> bool {
        meta.mode() & 0o022 != 0
    }

    pub fn permissions_for_new(mode_of_input: u32) -> Option<std::fs::Permissions> {
        use std::os::unix::fs::PermissionsExt;
        Some(std::fs::Permissions::from_mode(0o666 & mode_of_input))
    }

    pub fn sync_dir(dir: &Path) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }

    pub fn create_dir_new(path: &Path, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(mode).create(path)
    }

    pub fn open_dir(path: &Path) -> Option<File> {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags((OFlags::DIRECTORY | OFlags::NOFOLLOW).bits() as i32)
            .open(path)
            .ok()
    }

    pub fn stdout_file() -> io::Result<File> {
        use std::os::fd::AsFd;
        Ok(File::from(io::stdout().as_fd().try_clone_to_owned()?))
    }

    pub fn sync_filesystem(dir: &File) -> io::Result<()> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        return rustix::fs::syncfs(dir).map_err(io::Error::from);
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        return dir.sync_all();
    }
}

#[cfg(windows)]
mod imp {
    use std::fs::{File, Metadata};
    use std::io;
    use std::os::windows::fs::FileExt;
    use std::path::Path;

    use crate::host::FileId;

    pub fn open_nonblocking(path: &Path, write: bool, _no_follow: bool) -> io::Result<File> {
        std::fs::OpenOptions::new().read(true).write(write).open(path)
    }

    pub fn create_new_private(path: &Path, _mode: u32) -> io::Result<File> {
        std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(path)
    }

    pub fn file_id(meta: &Metadata) -> FileId {
        // Windows exposes no stable file index through std: the creation time (100 ns
        // resolution, kept when the file grows) stands in.
        let created = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        FileId { device: 0, inode: created }
    }

    pub fn link_count(_meta: &Metadata) -> u64 {
        1
    }

    pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
        if std::fs::symlink_metadata(to).is_ok() {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        std::fs::rename(from, to)
    }

    pub fn rename_dir_noreplace(from: &Path, to: &Path) -> io::Result<()> {
        // Windows' rename never replaces a folder.
        std::fs::rename(from, to)
    }

    pub fn owned_by_me(_meta: &Metadata) -> bool {
        true
    }

    pub fn kind_name(meta: &Metadata) -> &'static str {
        if meta.is_file() {
            "regular file"
        } else if meta.is_dir() {
            "directory"
        } else {
            "special file"
        }
    }

    pub fn read_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match file.seek_read(buf, offset)? {
                0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "failed to fill whole buffer")),
                n => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }

    pub fn write_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match file.seek_write(buf, offset)? {
                0 => return Err(io::Error::new(io::ErrorKind::WriteZero, "failed to write whole buffer")),
                n => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }

    pub fn data_ranges(_file: &File, _start: u64, _end: u64) -> Option<Vec<(u64, u64)>> {
        None
    }

    pub fn allocate_zeroed(_file: &File, _offset: u64, _len: u64) -> io::Result<bool> {
        Ok(false)
    }

    pub fn owner(_meta: &Metadata) -> Option<(u32, u32)> {
        None
    }

    pub fn mode(meta: &Metadata) -> u32 {
        if meta.permissions().readonly() { 0o444 } else { 0o666 }
    }

    pub fn set_owner(_file: &File, _owner: (u32, u32)) -> io::Result<()> {
        Ok(())
    }

    pub fn set_mode(file: &File, mode: u32) -> io::Result<()> {
        let mut p = file.metadata()?.permissions();
        p.set_readonly(mode & 0o222 == 0);
        file.set_permissions(p)
    }

    pub fn writable_by_others(_meta: &Metadata) -> bool {
        false
    }

    pub fn permissions_for_new(_mode_of_input: u32) -> Option<std::fs::Permissions> {
        None
    }

    pub fn sync_dir(_dir: &Path) {}

    pub fn create_dir_new(path: &Path, _mode: u32) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    pub fn open_dir(_path: &Path) -> Option<File> {
        None
    }

    pub fn sync_filesystem(_dir: &File) -> io::Result<()> {
        Ok(())
    }

    pub fn stdout_file() -> io::Result<File> {
        use std::os::windows::io::AsHandle;
        Ok(File::from(io::stdout().as_handle().try_clone_to_owned()?))
    }
}

/// Standard output as a file of its own (a duplicate), to stream an output into.
pub fn stdout_file() -> io::Result<File> {
    imp::stdout_file()
}

/// Opens `path` for reading (and writing), without blocking on FIFOs; with `no_follow`, a
/// symlink is refused.
pub fn open_nonblocking(path: &Path, write: bool, no_follow: bool) -> io::Result<File> {
    imp::open_nonblocking(path, write, no_follow)
}

/// Creates `path` (never an existing file, never through a symlink) with permission bits
/// `mode`, the umask applying on top.
pub fn create_new_private(path: &Path, mode: u32) -> io::Result<File> {
    imp::create_new_private(path, mode)
}

/// The identity of a file.
pub fn file_id(meta: &Metadata) -> FileId {
    imp::file_id(meta)
}

/// How many names (hard links) a file has.
pub fn link_count(meta: &Metadata) -> u64 {
    imp::link_count(meta)
}

/// Renames `from` to `to`, failing with `AlreadyExists` when `to` exists.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    imp::rename_noreplace(from, to)
}

/// What a file is, in words: "regular file", "block device", "FIFO"...
pub fn kind_name(meta: &Metadata) -> &'static str {
    imp::kind_name(meta)
}

/// Reads exactly `buf.len()` bytes at `offset`.
pub fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    imp::read_at(file, buf, offset)
}

/// Writes all of `buf` at `offset`.
pub fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    imp::write_at(file, buf, offset)
}

/// The data ranges of `[start, end)` (holes left out), or `None` when the host cannot tell.
pub fn data_ranges(file: &File, start: u64, end: u64) -> Option<Vec<(u64, u64)>> {
    imp::data_ranges(file, start, end)
}

/// Allocates `len` bytes at `offset` as extents that read as zeros without writing them (the
/// file system's zero-range allocation: no holes, no stale data); false where the file system
/// cannot, and the caller writes zeros.
pub fn allocate_zeroed(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    imp::allocate_zeroed(file, offset, len)
}

/// The owner (user, group) of a file, where the host has one.
pub fn owner(meta: &Metadata) -> Option<(u32, u32)> {
    imp::owner(meta)
}

/// The permission bits of a file (rwx for owner, group, others, and the special bits).
pub fn mode(meta: &Metadata) -> u32 {
    imp::mode(meta)
}

/// Gives an open file an owner.
pub fn set_owner(file: &File, owner: (u32, u32)) -> io::Result<()> {
    imp::set_owner(file, owner)
}

/// Gives an open file exact permission bits (not reduced by the umask).
pub fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    imp::set_mode(file, mode)
}

/// Whether the group or others may write the file.
pub fn writable_by_others(meta: &Metadata) -> bool {
    imp::writable_by_others(meta)
}

/// Permissions to create a new file with: at most read-write, never more than the input's
/// (`mode_of_input`), the umask applying on top; `None` where the host's default is right.
pub fn permissions_for_new(mode_of_input: u32) -> Option<std::fs::Permissions> {
    imp::permissions_for_new(mode_of_input)
}

/// Flushes a folder so a create, rename or removal in it survives a crash.
pub fn sync_dir(dir: &Path) {
    imp::sync_dir(dir)
}

/// Creates the folder `path` (never an existing one, never through a symlink) with
/// permission bits `mode`, the umask applying on top.
pub fn create_dir_new(path: &Path, mode: u32) -> io::Result<()> {
    imp::create_dir_new(path, mode)
}

/// A folder opened as a file (not through a symlink), to lock or flush it; `None` where the
/// host cannot.
pub fn open_dir(path: &Path) -> Option<File> {
    imp::open_dir(path)
}

/// Flushes every write to the file system holding `dir` (one call for a whole new tree).
pub fn sync_filesystem(dir: &File) -> io::Result<()> {
    imp::sync_filesystem(dir)
}

/// Permission bits of a new folder whose files get at most `mode_of_input`: read-write
/// where the input allows, plus search where read is allowed.
pub fn dir_mode(mode_of_input: u32) -> u32 {
    let files = 0o666 & mode_of_input;
    files | ((files & 0o444) >> 2)
}

/// Permissions to create a new folder with (see [`dir_mode`]), the umask applying on top;
/// `None` where the host's default is right.
pub fn permissions_for_new_dir(mode_of_input: u32) -> Option<std::fs::Permissions> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        Some(std::fs::Permissions::from_mode(dir_mode(mode_of_input)))
    }
    #[cfg(not(unix))]
    {
        let _ = mode_of_input;
        None
    }
}

/// Renames the folder `from` to `to`, failing with `AlreadyExists` when `to` exists.
pub fn rename_dir_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    imp::rename_dir_noreplace(from, to)
}

/// Whether the current user owns the file (always, where the host has no owners).
pub fn owned_by_me(meta: &Metadata) -> bool {
    imp::owned_by_me(meta)
}
