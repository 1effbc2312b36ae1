//! The `BlockDevice` abstraction every layer above reads through, and the plain-file device.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::error::{Error, Result, Space};
use crate::host::fault::{self, Op};
use crate::host::journal::{Overlay, StagedWrites};
use crate::host::stream::StreamSink;
use crate::host::{self, Access, Expect, LockWait};

/// A fixed-length array of bytes readable at any offset.
///
/// Reads are positional and take `&self`, so rayon workers share one device without a lock.
pub trait BlockDevice: Send + Sync {
    /// Length of the device in bytes.
    fn len(&self) -> u64;

    /// Bytes per logical sector, the unit partition tables and file systems count in.
    fn sector_size(&self) -> SectorSize {
        SectorSize::LEGACY
    }

    /// Whether the device has no bytes at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` with the bytes at `offset`; the whole range must lie inside the device.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// The file the device's bytes come from, for error messages.
    fn source(&self) -> &Path;

    /// The ranges of `[start, end)` that may hold non-zero bytes, sorted and disjoint; the
    /// rest reads as zeros. Devices that know where their data is (unallocated blocks, holes
    /// of a sparse file) leave the rest out, so work grows with the data, not the disk's size.
    fn data_ranges(&self, start: u64, end: u64) -> Result<Vec<(u64, u64)>> {
        Ok(if start < end { vec![(start, end)] } else { Vec::new() })
    }
}

/// Bytes per logical sector: 512 on every VHD and most VHDX, 4096 on a "4Kn" VHDX. Partition
/// tables and file systems count in these sectors; container bitmaps always count in 512 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct SectorSize(u32);

impl SectorSize {
    /// 512 bytes.
    pub const LEGACY: SectorSize = SectorSize(512);
    /// 4096 bytes.
    pub const NATIVE_4K: SectorSize = SectorSize(4096);

    /// The sector size of `bytes`, if disks have it.
    pub fn new(bytes: u32) -> Option<Self> {
        matches!(bytes, 512 | 4096).then_some(SectorSize(bytes))
    }

    /// Bytes per sector.
    pub fn bytes(self) -> u64 {
        self.0 as u64
    }

    /// Bytes of `n` sectors (saturating).
    pub fn bytes_of(self, n: u64) -> u64 {
        n.saturating_mul(self.bytes())
    }

    /// Whole sectors needed to hold `bytes`.
    pub fn sectors_for(self, bytes: u64) -> u64 {
        bytes.div_ceil(self.bytes())
    }
}

impl Default for SectorSize {
    fn default() -> Self {
        SectorSize::LEGACY
    }
}

impl std::fmt::Display for SectorSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// `Read + Seek` over a device, for code that wants a stream (another crate, a copy). Cheap
/// to make: each thread gets its own.
pub struct DeviceReader<'a> {
    device: &'a dyn BlockDevice,
    pos: u64,
}

impl<'a> DeviceReader<'a> {
    /// A reader at offset 0 of `device`.
    pub fn new(device: &'a dyn BlockDevice) -> Self {
        DeviceReader { device, pos: 0 }
    }
}

impl Read for DeviceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.device.len().saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.device.read_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for DeviceReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.device.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// Merges sorted ranges that touch or overlap.
pub fn merge_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (a, b) in ranges {
        if a >= b {
            continue;
        }
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// A device that can also be written.
pub trait WritableDevice: BlockDevice {
    /// Writes `buf` at `offset`; the whole range must lie inside the device.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<()>;

    /// Makes every write so far durable.
    fn flush(&mut self) -> Result<()>;

    /// Writes `len` zero bytes at `offset`, a bounded buffer at a time.
    fn write_zeros(&mut self, offset: u64, len: u64) -> Result<()> {
        write_zeros_with(offset, len, &mut |at, zeros| self.write_at(at, zeros))
    }
}

/// Writes `len` zero bytes at `offset` through `write`, a bounded buffer at a time.
pub fn write_zeros_with(offset: u64, len: u64, write: &mut dyn FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = ZERO_CHUNK.min(len - done);
        write(offset + done, &zeros[..n as usize])?;
        done += n;
    }
    Ok(())
}

/// Bytes of zeros written or examined at once: memory stays fixed whatever the range.
const ZERO_CHUNK: u64 = 1 << 20;

/// The pieces of `[a, b)`, in 4 KiB steps counted from `a`, that hold a non-zero byte, read
/// through `read`: what zeroing must write, so ranges already zero are left alone.
pub fn nonzero_ranges(a: u64, b: u64, read: &dyn Fn(u64, &mut [u8]) -> Result<()>) -> Result<Vec<(u64, u64)>> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut buf = vec![0u8; ZERO_CHUNK.min(b.saturating_sub(a)) as usize];
    let mut at = a;
    while at < b {
        let n = ZERO_CHUNK.min(b - at) as usize;
        read(at, &mut buf[..n])?;
        for (i, piece) in buf[..n].chunks(4096).enumerate() {
            if piece.iter().any(|&x| x != 0) {
                let s = at + i as u64 * 4096;
                let e = s + piece.len() as u64;
                match out.last_mut() {
                    Some(last) if last.1 == s => last.1 = e,
                    _ => out.push((s, e)),
                }
            }
        }
        at += n as u64;
    }
    Ok(out)
}

impl<D: BlockDevice + ?Sized> BlockDevice for &D {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn sector_size(&self) -> SectorSize {
        (**self).sector_size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read_at(offset, buf)
    }
    fn source(&self) -> &Path {
        (**self).source()
    }
    fn data_ranges(&self, start: u64, end: u64) -> Result<Vec<(u64, u64)>> {
        (**self).data_ranges(start, end)
    }
}

impl<D: BlockDevice + ?Sized> BlockDevice for Box<D> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn sector_size(&self) -> SectorSize {
        (**self).sector_size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read_at(offset, buf)
    }
    fn source(&self) -> &Path {
        (**self).source()
    }
    fn data_ranges(&self, start: u64, end: u64) -> Result<Vec<(u64, u64)>> {
        (**self).data_ranges(start, end)
    }
}

/// The pieces of `len` bytes at disk offset `offset` cut at block boundaries of `block_size`:
/// each piece's block, its offset inside the block, and its range in the caller's buffer.
pub fn block_pieces(
    offset: u64,
    len: usize,
    block_size: u64,
) -> impl Iterator<Item = (u64, u64, std::ops::Range<usize>)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let pos = offset + done as u64;
        let within = pos % block_size;
        let n = ((block_size - within) as usize).min(len - done);
        let piece = (pos / block_size, within, done..done + n);
        done += n;
        Some(piece)
    })
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

/// An open image file with its name, read and written by position.
///
/// It is opened once per run and holds its lock (shared for reading, exclusive for writing)
/// until dropped. While staging, writes are collected in memory and reads see them; the
/// journal then makes them on disk in one atomic step.
#[derive(Debug)]
pub struct ImageFile {
    file: File,
    path: PathBuf,
    writable: bool,
    overlay: Option<Mutex<Overlay>>,
    /// A pipe written front to back instead of the file (see [`StreamSink`]).
    stream: Option<Mutex<StreamSink>>,
}

impl ImageFile {
    /// Opens the image `path` (a regular file or a block device) without blocking, locked
    /// shared for reading or exclusive for writing.
    pub fn open(path: &Path, writable: bool, wait: LockWait) -> Result<Self> {
        let access = if writable { Access::ReadWrite } else { Access::Read };
        if writable {
            let meta = std::fs::metadata(path).map_err(|e| Error::open(path, "open", e))?;
            host::require_write_permission(path, &meta)?;
        }
        let file = host::open_locked(path, access, Expect::Image, wait)?;
        Ok(ImageFile { file, path: path.to_path_buf(), writable, overlay: None, stream: None })
    }

    /// Creates `path`, failing if it exists, locked exclusively.
    pub fn create_new(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::open(path, "create", e))?;
        host::lock(&file, path, true, LockWait::Fail)?;
        Ok(ImageFile { file, path: path.to_path_buf(), writable: true, overlay: None, stream: None })
    }

    /// Wraps a file its caller opened and locked (a temporary output file).
    pub fn from_file(file: File, path: &Path, writable: bool) -> Self {
        ImageFile { file, path: path.to_path_buf(), writable, overlay: None, stream: None }
    }

    /// A new output written front to back into `out` (a pipe: standard output), named
    /// `label` in errors.
    pub fn stream(out: File, label: &Path) -> Result<Self> {
        let writer = out.try_clone().map_err(|e| Error::open(label, "duplicate", e))?;
        let sink = StreamSink::new(Box::new(std::io::BufWriter::with_capacity(4 << 20, writer)));
        Ok(ImageFile {
            file: out,
            path: label.to_path_buf(),
            writable: true,
            overlay: None,
            stream: Some(Mutex::new(sink)),
        })
    }

    fn sink(&self) -> Option<std::sync::MutexGuard<'_, StreamSink>> {
        self.stream.as_ref().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether this is a stream (see [`Self::stream`]).
    pub fn is_stream(&self) -> bool {
        self.stream.is_some()
    }

    /// A stream's metadata is final: from now on its bytes flow out in order. Nothing for a
    /// file.
    pub fn start_stream(&self, metadata_end: u64) -> Result<()> {
        match self.sink() {
            Some(mut s) => s.start(metadata_end).map_err(|e| Error::io(&self.path, "write", Space::File, 0, e)),
            None => Ok(()),
        }
    }

    /// Sends the rest of a stream and flushes it. Nothing for a file.
    pub fn finish_stream(&self) -> Result<()> {
        match self.sink() {
            Some(mut s) => s.finish().map_err(|e| Error::io(&self.path, "write", Space::File, 0, e)),
            None => Ok(()),
        }
    }

    /// The file's name.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file.
    pub fn raw(&self) -> &File {
        &self.file
    }

    /// Whether writes are allowed.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// From now on writes are collected in memory instead of made ([`Self::take_staged`]).
    pub fn begin_staging(&mut self) -> Result<()> {
        let len = self.file_len()?;
        self.overlay = Some(Mutex::new(Overlay::new(len)));
        Ok(())
    }

    /// Ends staging and returns the writes collected.
    pub fn take_staged(&mut self) -> StagedWrites {
        match self.overlay.take() {
            Some(o) => o.into_inner().unwrap_or_else(|p| p.into_inner()).into_staged(),
            None => StagedWrites::default(),
        }
    }

    fn overlay(&self) -> Option<std::sync::MutexGuard<'_, Overlay>> {
        self.overlay.as_ref().map(|o| o.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Current length of the file (of a block device: its size).
    pub fn file_len(&self) -> Result<u64> {
        if let Some(o) = self.overlay() {
            return Ok(o.file_len());
        }
        if let Some(s) = self.sink() {
            return Ok(s.length());
        }
        let meta = self.file.metadata().map_err(|e| Error::io(&self.path, "stat", Space::File, 0, e))?;
        if meta.is_file() {
            return Ok(meta.len());
        }
        (&self.file).seek(SeekFrom::End(0)).map_err(|e| Error::io(&self.path, "find the size of", Space::File, 0, e))
    }

    /// Reads exactly `buf.len()` bytes at `offset` of the file.
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8], what: &'static str) -> Result<()> {
        let result = match (self.overlay(), self.sink()) {
            (Some(o), _) => o.read(offset, buf, |at, b| host::platform::read_at(&self.file, b, at)),
            (None, Some(s)) => s.read(offset, buf),
            (None, None) => host::platform::read_at(&self.file, buf, offset),
        };
        result.map_err(|e| {
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
        if let Some(mut o) = self.overlay() {
            o.write(offset, buf);
            return Ok(());
        }
        if let Some(mut s) = self.sink() {
            return s.write(offset, buf).map_err(|e| Error::io(&self.path, "write", Space::File, offset, e));
        }
        fault::before(&self.path, Op::Write { offset, bytes: buf });
        host::platform::write_at(&self.file, buf, offset)
            .map_err(|e| Error::io(&self.path, "write", Space::File, offset, e))
    }

    /// Sets the file's length.
    pub fn set_len(&self, len: u64) -> Result<()> {
        if let Some(mut o) = self.overlay() {
            o.set_len(len);
            return Ok(());
        }
        if let Some(mut s) = self.sink() {
            return s.set_len(len).map_err(|e| Error::io(&self.path, "truncate", Space::File, len, e));
        }
        fault::before(&self.path, Op::SetLen(len));
        self.file.set_len(len).map_err(|e| Error::io(&self.path, "truncate", Space::File, len, e))
    }

    /// Flushes data and metadata to stable storage.
    pub fn sync(&self) -> Result<()> {
        if self.overlay.is_some() || self.stream.is_some() {
            return Ok(());
        }
        fault::before(&self.path, Op::Sync);
        self.file.sync_all().map_err(|e| Error::io(&self.path, "fsync", Space::File, 0, e))
    }

    /// Allocates `[offset, offset + len)` as extents reading as zeros, without writing them;
    /// false where the file system cannot (or the file is staged or streamed).
    pub fn allocate_zeroed(&self, offset: u64, len: u64) -> Result<bool> {
        if self.overlay.is_some() || self.stream.is_some() {
            return Ok(false);
        }
        crate::host::platform::allocate_zeroed(&self.file, offset, len)
            .map_err(|e| Error::io(&self.path, "allocate", Space::File, offset, e))
    }

    /// Ranges of `[start, end)` of the file that may hold data (holes of a sparse file left
    /// out, without reading them).
    pub fn data_ranges(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        match (&self.overlay, &self.stream) {
            (None, None) => host::data_ranges(&self.file, start, end),
            _ => vec![(start, end)],
        }
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

    /// The underlying file, to stage writes.
    pub fn file_mut(&mut self) -> &mut ImageFile {
        &mut self.file
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

    fn data_ranges(&self, start: u64, end: u64) -> Result<Vec<(u64, u64)>> {
        let end = end.min(self.len);
        Ok(if start < end { self.file.data_ranges(start, end) } else { Vec::new() })
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
