//! `create`: a new fixed, dynamic or differencing VHD or VHDX, empty or holding a copy of a
//! source disk, written to a temporary file and renamed into place only when complete.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::host::{NewFile, OutputPolicy, Replace};
use crate::pass::Event;
use crate::pass::container::resize::backup_gpt_writes;
use crate::vhd::device::{BlockDevice, ImageFile, WritableDevice};
use crate::vhd::fixed::{Fill, FixedVhd};
use crate::vhd::identity::Identity;
use crate::vhd::image::{DiskImage, ImageFormat, ImageKind, OpenOptions};
use crate::vhd::sparse::{ParentLink, SparseVhd};
use crate::vhdx::Vhdx;
use crate::vhdx::create::{NewKind, NewVhdx};

/// The block size of a new dynamic VHD (Hyper-V's and qemu's) and VHDX (the smallest that
/// compacts well; Hyper-V uses 32 MiB).
const VHD_BLOCK: u32 = 2 << 20;
const VHDX_BLOCK: u32 = 1 << 20;

/// Bytes of the source copied at once.
const COPY_CHUNK: u64 = 1 << 20;

/// What to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NewDisk {
    /// Every byte of the disk allocated in the file.
    Fixed,
    /// Blocks allocated as they are written.
    Dynamic,
    /// A child of the image at this path, holding only what differs from it.
    Differencing(PathBuf),
}

/// How a new fixed disk's data area is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ZeroFill {
    /// Allocated as zeros by the file system without writing them (`fallocate`), or written
    /// as zeros where it cannot: no holes, no stale data.
    Allocate,
    /// Left as a hole of a sparse file: instant, but the file is not fully allocated and may
    /// fragment as the guest writes.
    Skip,
}

/// The options of [`create`].
#[derive(Clone, Debug)]
pub struct CreateOptions {
    pub disk: NewDisk,
    /// VHD or VHDX.
    pub container: ImageFormat,
    /// The virtual size in bytes (a child takes its parent's; with a source, the source's
    /// when not given). Rounded up to whole MiB with `azure`.
    pub size: Option<u64>,
    /// The block size of a dynamic or differencing disk.
    pub block_size: Option<u32>,
    /// Round the size up to whole MiB, as Azure requires.
    pub azure: bool,
    /// A disk whose contents the new one starts with (a raw file or any image).
    pub from: Option<PathBuf>,
    /// The source's format, when its content should not decide (`Raw`: any file).
    pub from_format: Option<ImageFormat>,
    pub zero_fill: ZeroFill,
    /// Whether an existing file at the output may be replaced.
    pub replace: Replace,
    pub open: OpenOptions,
}

/// What [`create`] made.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CreateReport {
    pub file: String,
    pub container: ImageFormat,
    pub format: ImageKind,
    pub disk_size: u64,
    /// Null for a fixed disk.
    pub block_size: Option<u64>,
    /// The parent of a differencing disk.
    pub parent: Option<String>,
    /// The source copied in, if any, and its non-zero bytes written.
    pub source: Option<String>,
    pub copied_bytes: u64,
    /// How a fixed disk's data area was made (`allocate`: by the file system; `write`: zeros
    /// written; `skip`: left as a hole), null otherwise.
    pub zero_fill: Option<&'static str>,
    /// The file's length.
    pub file_bytes: u64,
    pub elapsed_seconds: f64,
}

/// Creates the disk `opts` describes at `out`, which appears only once complete.
pub fn create(out: &Path, opts: &CreateOptions, events: &(dyn Fn(Event<'_>) + Sync)) -> Result<CreateReport> {
    let started = Instant::now();
    let source_opts = OpenOptions { format: opts.from_format, ..opts.open.clone() };
    let source = opts.from.as_deref().map(|p| DiskImage::open(p, &source_opts)).transpose()?;
    if let Some(s) = &source {
        // Every stored block is copied: one that cannot be read fails before the output exists.
        s.require_readable(0, s.len())?;
    }
    let parent = match &opts.disk {
        NewDisk::Differencing(p) => Some(DiskImage::open(p, &opts.open)?),
        _ => None,
    };
    let mut policy = OutputPolicy::new(opts.replace);
    for image in source.iter().chain(&parent) {
        image.add_inputs_to(&mut policy);
    }
    policy.check(out)?;
    let size = disk_size(out, opts, source.as_ref(), parent.as_ref())?;
    let sector = parent.as_ref().or(source.as_ref()).map_or(512, |p| p.sector_size().bytes());
    if sector != 512 && opts.container == ImageFormat::Vhd {
        return Err(Error::unsupported(
            out,
            format!("a VHD holds only disks of 512-byte sectors; the source has {sector}-byte sectors (make a VHDX)"),
        ));
    }
    // Checked before the temporary file exists, so that an error names the output.
    match (opts.container, &opts.disk) {
        (ImageFormat::Vhd, NewDisk::Fixed) => crate::vhd::fixed::check_fixed_size(out, size)?,
        (ImageFormat::Vhd, _) => crate::vhd::sparse::create::validate_new(out, size, vhd_block(opts, parent.as_ref()))?,
        _ => {}
    }
    let new = NewFile::create(out, &policy)?;
    if !new.removed_stale().is_empty() {
        events(Event::RemovedStale(new.removed_stale()));
    }
    // Only what the source may hold is read: its stored blocks, a raw file's data (not its holes).
    let to_copy = source.as_ref().map(|s| s.data_ranges(0, s.len())).transpose()?.unwrap_or_default();
    events(Event::Writing { temp: Some(new.path()), units: to_copy.iter().map(|(a, b)| b - a).sum() });
    let file = ImageFile::from_file(
        new.file().try_clone().map_err(|e| Error::open(new.path(), "reopen", e))?,
        new.path(),
        true,
    );
    let mut image = make(file, opts, size, parent.as_ref().or(source.as_ref()))?;
    let zero_fill = match opts.disk {
        NewDisk::Fixed => Some(fill_fixed(&mut image, opts.zero_fill)?),
        _ => None,
    };
    let copied_bytes = match &source {
        Some(src) => {
            let n = copy(src, &to_copy, &mut image, events)?;
            // A larger disk gets the source's GPT backup at its own last sector.
            let layout = crate::disk::DiskLayout::read(src)?;
            for w in backup_gpt_writes(&layout, src.len(), size).filter(|_| size > src.len()).unwrap_or_default() {
                image.write_at(w.offset, &w.bytes)?;
            }
            n
        }
        None => 0,
    };
    image.flush()?;
    let report = CreateReport {
        file: out.display().to_string(),
        container: image.format(),
        format: image.kind(),
        disk_size: image.len(),
        block_size: image.block_size(),
        parent: match &opts.disk {
            NewDisk::Differencing(p) => Some(p.display().to_string()),
            _ => None,
        },
        source: opts.from.as_ref().map(|p| p.display().to_string()),
        copied_bytes,
        zero_fill,
        file_bytes: image.file().file_len()?,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    };
    drop(image);
    new.commit()?;
    Ok(report)
}

/// The new disk's size: the parent's for a child, else the one asked (or the source's),
/// rounded up to whole MiB for Azure and to whole sectors otherwise.
fn disk_size(out: &Path, opts: &CreateOptions, source: Option<&DiskImage>, parent: Option<&DiskImage>) -> Result<u64> {
    if let Some(p) = parent {
        if opts.size.is_some_and(|s| s != p.len()) {
            return Err(Error::unsupported(out, "a differencing disk has its parent's size"));
        }
        return Ok(p.len());
    }
    let size = opts.size.or(source.map(|s| s.len())).ok_or_else(|| Error::Usage("give the disk's size".into()))?;
    if source.is_some_and(|s| s.len() > size) {
        return Err(Error::unsupported(
            out,
            format!("{size} bytes cannot hold the source's {} bytes", source.map_or(0, |s| s.len())),
        ));
    }
    let unit = if opts.azure { 1 << 20 } else { 512 };
    Ok(size.div_ceil(unit) * unit)
}

/// Writes the empty container; `like` is the parent or the source, whose sector size a VHDX
/// takes (and which a VHD must have of 512 bytes).
fn make(file: ImageFile, opts: &CreateOptions, size: u64, like: Option<&DiskImage>) -> Result<DiskImage> {
    let sector = like.map_or(512, |p| p.sector_size().bytes() as u32);
    let parent = like.filter(|_| matches!(opts.disk, NewDisk::Differencing(_)));
    let identity = Identity::Fresh;
    Ok(match (opts.container, &opts.disk, parent) {
        (ImageFormat::Vhdx, disk, parent) => {
            let kind = match (disk, parent) {
                (NewDisk::Differencing(path), Some(image)) => NewKind::Differencing { image, path },
                (NewDisk::Fixed, _) => NewKind::Fixed,
                _ => NewKind::Dynamic,
            };
            let block_size = opts.block_size.unwrap_or(VHDX_BLOCK);
            let spec = NewVhdx { size, block_size, logical_sector_size: sector, kind, identity };
            DiskImage::Vhdx(Box::new(Vhdx::create_in(file, spec)?))
        }
        (_, NewDisk::Fixed, _) => DiskImage::Fixed(Box::new(FixedVhd::create_in(file, size, Fill::Caller, &identity)?)),
        (_, NewDisk::Differencing(path), Some(image)) => {
            let link = ParentLink { image, path };
            DiskImage::Sparse(Box::new(SparseVhd::create_in(file, 0, vhd_block(opts, parent), Some(link), &identity)?))
        }
        _ => DiskImage::Sparse(Box::new(SparseVhd::create_in(file, size, vhd_block(opts, None), None, &identity)?)),
    })
}

/// A VHD's block size: the one asked, else a child's parent's (qemu and Hyper-V expect them
/// equal), else 2 MiB.
fn vhd_block(opts: &CreateOptions, parent: Option<&DiskImage>) -> u32 {
    let parents = parent.filter(|_| matches!(opts.disk, NewDisk::Differencing(_))).and_then(|p| p.block_size());
    opts.block_size.or(parents.and_then(|b| u32::try_from(b).ok())).unwrap_or(VHD_BLOCK)
}

/// Allocates a fixed disk's data area as `fill` asks; says how.
fn fill_fixed(image: &mut DiskImage, fill: ZeroFill) -> Result<&'static str> {
    if fill == ZeroFill::Skip {
        return Ok("skip");
    }
    let len = image.file().file_len()?;
    if image.file().allocate_zeroed(0, len)? {
        return Ok("allocate");
    }
    image.write_zeros(0, image.len())?;
    Ok("write")
}

/// Copies the non-zero contents of `ranges` of `source` into `image`, a chunk at a time; the
/// bytes written.
fn copy(
    source: &DiskImage,
    ranges: &[(u64, u64)],
    image: &mut DiskImage,
    events: &(dyn Fn(Event<'_>) + Sync),
) -> Result<u64> {
    let mut buf = vec![0u8; COPY_CHUNK as usize];
    let (mut read, mut written) = (0, 0);
    for &(start, end) in ranges {
        let mut at = start;
        while at < end {
            let n = COPY_CHUNK.min(end - at) as usize;
            source.read_at(at, &mut buf[..n])?;
            if buf[..n].iter().any(|&b| b != 0) {
                image.write_at(at, &buf[..n])?;
                written += n as u64;
            }
            at += n as u64;
            read += n as u64;
            events(Event::Written(read));
        }
    }
    Ok(written)
}
