//! The `BlockDevice` abstraction every layer above reads through, and the plain-file device.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, Space};

/// A fixed-length array of bytes readable at any offset.
///
/// Reads are positional and take `&self`, so rayon workers share one device without a lock.
pub trait BlockDevice: Send + Sync {
    /// Length of the device in bytes.
    fn len(&self) -> u64;

    /// Whether the device has no bytes at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` with the bytes at `offset`; the whole range must lie inside the device.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// The file the device's bytes come from, for error messages.
    fn source(&self) -> &Path;
}

/// A device that can also be written.
pub trait WritableDevice: BlockDevice {
    /// Writes `buf` at `offset`; the whole range must lie inside the device.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<()>;

    /// Makes every write so far durable.
    fn flush(&mut self) -> Result<()>;
}

impl<D: BlockDevice + ?Sized> BlockDevice for &D {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read_at(offset, buf)
    }
    fn source(&self) -> &Path {
        (**self).source()
    }
}

impl<D: BlockDevice + ?Sized> BlockDevice for Box<D> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read_at(offset, buf)
    }
    fn source(&self) -> &Path {
        (**self).source()
    }
}

/// Checks that `[offset, offset + len)` lies inside a device of `size` bytes.
pub fn check_range(file: &Path, space: Space, offset: u64, len: usize, size: u64) -> Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::corrupt(
            file,
            "read request",
            space,
            offset,
            format!("{len} bytes reach past the end ({size} bytes)"),
        )),
    }
}

/// An open file with its name, read and written by position.
#[derive(Debug)]
pub struct ImageFile {
    file: File,
    path: PathBuf,
    writable: bool,
}

impl ImageFile {
    /// Opens `path` for reading, or for reading and writing.
    pub fn open(path: &Path, writable: bool) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| Error::open(path, "open", e))?;
        Ok(ImageFile {
            file,
            path: path.to_path_buf(),
            writable,
        })
    }

    /// Creates `path`, failing if it exists.
    pub fn create_new(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::open(path, "create", e))?;
        Ok(ImageFile {
            file,
            path: path.to_path_buf(),
            writable: true,
        })
    }

    /// Wraps a file already open for reading and writing (a temporary output file).
    pub fn from_file(file: File, path: &Path) -> Self {
        ImageFile {
            file,
            path: path.to_path_buf(),
            writable: true,
        }
    }

    /// The file's name.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether writes are allowed.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Current length of the file.
    pub fn file_len(&self) -> Result<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| Error::io(&self.path, "stat", Space::File, 0, e))
    }

    /// Reads exactly `buf.len()` bytes at `offset` of the file.
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8], what: &'static str) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            let e = if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(e.kind(), format!("file ends inside the {what}"))
            } else {
                e
            };
            Error::io(&self.path, "read", Space::File, offset, e)
        })
    }

    /// Writes all of `buf` at `offset` of the file.
    pub fn write_all_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        crate::vhd::fault::before_write();
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| Error::io(&self.path, "write", Space::File, offset, e))
    }

    /// Sets the file's length.
    pub fn set_len(&self, len: u64) -> Result<()> {
        crate::vhd::fault::before_write();
        self.file
            .set_len(len)
            .map_err(|e| Error::io(&self.path, "truncate", Space::File, len, e))
    }

    /// Flushes data and metadata to stable storage.
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::io(&self.path, "fsync", Space::File, 0, e))
    }
}

/// A raw disk image: the file's bytes are the disk's bytes.
#[derive(Debug)]
pub struct RawImage {
    file: ImageFile,
    len: u64,
}

impl RawImage {
    /// Wraps an open file whose first `len` bytes are the disk.
    pub fn new(file: ImageFile, len: u64) -> Self {
        RawImage { file, len }
    }

    /// The underlying file.
    pub fn file(&self) -> &ImageFile {
        &self.file
    }
}

impl BlockDevice for RawImage {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.file.path(), Space::Disk, offset, buf.len(), self.len)?;
        self.file.read_exact_at(offset, buf, "disk data")
    }

    fn source(&self) -> &Path {
        self.file.path()
    }
}

impl WritableDevice for RawImage {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<()> {
        check_range(self.file.path(), Space::Disk, offset, buf.len(), self.len)?;
        self.file.write_all_at(offset, buf)
    }

    fn flush(&mut self) -> Result<()> {
        self.file.sync()
    }
}
