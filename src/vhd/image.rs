//! Opening any supported image file: raw, fixed, dynamic or differencing.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result, Space};
use crate::host::journal::{self, Recovery};
use crate::host::{FileId, LockWait, OutputPolicy};
use crate::vhd::bitmap::SectorBitmap;
use crate::vhd::device::{BlockDevice, ImageFile, RawImage, SectorSize, WritableDevice};
use crate::vhd::finding::Finding;
use crate::vhd::fixed::FixedVhd;
use crate::vhd::footer::{DiskType, FOOTER_COOKIE, FOOTER_SIZE, Footer, LEGACY_FOOTER_SIZE};
use crate::vhd::probe::{PROBE_BYTES, Recognised, recognise};
use crate::vhd::sparse::SparseVhd;
use crate::vhdx::Vhdx;

/// Deepest differencing chain followed (a guard against pathological chains).
pub const MAX_CHAIN_DEPTH: usize = 64;

/// How to open an image.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Treat checksum mismatches and inconsistent copies as errors instead of findings.
    pub strict: bool,
    /// Use this file as the (first) parent of a differencing image instead of the locators.
    pub parent: Option<PathBuf>,
    /// Open a differencing image whose parent cannot be found; reading a sector that lives
    /// in the parent then fails with the error that lists the paths tried.
    pub allow_missing_parent: bool,
    /// Open a differencing image without looking for its parent at all: only its own
    /// sectors can be read (to rewrite its link, or to commit it into a parent the caller
    /// holds).
    pub detached: bool,
    /// What to do when another process holds the image locked.
    pub wait: LockWait,
    #[doc(hidden)]
    /// How sure recovery must be that a pending journal belongs to the image.
    pub journal_identity: journal::Identity,
    /// The container format, when the caller knows it better than the file's magic numbers:
    /// `Some(Raw)` reads any file as a raw disk.
    pub format: Option<ImageFormat>,
}

/// A container format the caller can insist on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// The file's bytes are the disk's bytes, whatever they look like.
    Raw,
    /// A VHD (fixed, dynamic or differencing): the file must end with a VHD footer.
    Vhd,
    /// A VHDX: the file must start with the VHDX identifier.
    Vhdx,
}

impl ImageFormat {
    /// The name people and JSON use: `raw`, `vhd`, `vhdx`.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Vhd => "vhd",
            ImageFormat::Vhdx => "vhdx",
        }
    }
}

/// The kind of container an image is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    /// A file whose bytes are the disk.
    Raw,
    /// A VHD: the disk's bytes then a footer.
    Fixed,
    /// A VHD that stores only the blocks written.
    Dynamic,
    /// A VHD that stores what changed from its parent.
    Differencing,
}

impl ImageKind {
    /// The name people and JSON use: `raw`, `fixed`, `dynamic`, `differencing`.
    pub fn name(self) -> &'static str {
        match self {
            ImageKind::Raw => "raw",
            ImageKind::Fixed => "fixed",
            ImageKind::Dynamic => "dynamic",
            ImageKind::Differencing => "differencing",
        }
    }
}

impl std::fmt::Display for ImageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An opened disk image of any kind.
#[derive(Debug)]
pub enum DiskImage {
    /// A file without a VHD footer: its bytes are the disk.
    Raw(RawImage),
    /// A fixed VHD (boxed, like `Sparse`: the decoded footer keeps its 512 raw bytes).
    Fixed(Box<FixedVhd>),
    /// A dynamic or differencing VHD.
    Sparse(Box<SparseVhd>),
    /// A VHDX of any kind.
    Vhdx(Box<Vhdx>),
}

impl DiskImage {
    /// Opens the image at `path` for reading, following a differencing chain to its base.
    /// Every file of the chain is locked shared for as long as the image is open; an image
    /// with the journal of an interrupted write is refused.
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Self> {
        DiskImage::open_in_chain(path, opts, &mut Vec::new())
    }

    /// Opens the image at `path` for writing: locked exclusively (its parents shared), after
    /// rolling back an interrupted write whose journal belongs to it.
    pub fn open_writable(path: &Path, opts: &OpenOptions) -> Result<(Self, Recovery)> {
        let file = ImageFile::open(path, true, opts.wait)?;
        let recovery = journal::recover(path, file.raw(), opts.journal_identity)?;
        let mut chain = Vec::new();
        let mut image = DiskImage::from_open_file(file, opts, &mut chain)?;
        if let DiskImage::Vhdx(v) = &mut image {
            v.replay_on_disk()?;
        }
        Ok((image, recovery))
    }

    #[doc(hidden)]
    /// Reads an image from a file its caller opened and locked (an output being written).
    pub fn from_file(file: ImageFile, opts: &OpenOptions) -> Result<Self> {
        DiskImage::from_open_file(file, opts, &mut Vec::new())
    }

    /// Opens `path` read-only as one link of a chain whose files so far are in `chain`.
    pub(crate) fn open_in_chain(path: &Path, opts: &OpenOptions, chain: &mut Vec<FileId>) -> Result<Self> {
        let file = ImageFile::open(path, false, opts.wait)?;
        if let Some(journal) = journal::pending(path) {
            return Err(Error::JournalPending { file: path.to_path_buf(), journal });
        }
        DiskImage::from_open_file(file, opts, chain)
    }

    /// Decodes the open `file` as one link of a chain whose files so far are in `chain`.
    fn from_open_file(file: ImageFile, opts: &OpenOptions, chain: &mut Vec<FileId>) -> Result<Self> {
        let path = file.path().to_path_buf();
        let id = FileId::of(&file.raw().metadata().map_err(|e| Error::open(&path, "stat", e))?);
        if chain.contains(&id) {
            return Err(Error::corrupt(
                &path,
                "differencing chain",
                Space::File,
                0,
                "the parent chain loops back to this file",
            ));
        }
        if chain.len() >= MAX_CHAIN_DEPTH {
            return Err(Error::unsupported(&path, format!("differencing chain deeper than {MAX_CHAIN_DEPTH}")));
        }
        chain.push(id);
        let len = file.file_len()?;
        if opts.format != Some(ImageFormat::Raw) && is_vhdx(&file, len)? {
            return Ok(DiskImage::Vhdx(Box::new(Vhdx::open(file, opts, chain)?)));
        }
        if opts.format == Some(ImageFormat::Vhdx) {
            return Err(Error::corrupt(
                &path,
                "VHDX file type identifier",
                Space::File,
                0,
                "missing: the file does not start with `vhdxfile`",
            ));
        }
        let footer = match opts.format {
            Some(ImageFormat::Raw) => None,
            _ => find_footer(&file, len)?,
        };
        match footer {
            None => {
                match opts.format {
                    Some(ImageFormat::Raw) => {}
                    Some(ImageFormat::Vhd | ImageFormat::Vhdx) => {
                        return Err(Error::corrupt(
                            &path,
                            "VHD footer",
                            Space::File,
                            len.saturating_sub(512),
                            "missing: the file does not end with a VHD footer",
                        ));
                    }
                    None => refuse_non_disk(&file, len)?,
                }
                Ok(DiskImage::Raw(RawImage::new(file, len)))
            }
            Some((footer, at)) => match footer.disk_type {
                DiskType::Fixed => Ok(DiskImage::Fixed(Box::new(FixedVhd::open(file, footer, at, opts.strict)?))),
                DiskType::Dynamic | DiskType::Differencing => {
                    Ok(DiskImage::Sparse(Box::new(SparseVhd::open(file, footer, at, opts, chain)?)))
                }
            },
        }
    }

    /// What kind of container this is.
    pub fn kind(&self) -> ImageKind {
        match self {
            DiskImage::Raw(_) => ImageKind::Raw,
            DiskImage::Fixed(_) => ImageKind::Fixed,
            DiskImage::Sparse(s) if s.footer().disk_type == DiskType::Differencing => ImageKind::Differencing,
            DiskImage::Sparse(_) => ImageKind::Dynamic,
            DiskImage::Vhdx(v) if v.parameters().has_parent => ImageKind::Differencing,
            DiskImage::Vhdx(v) if v.is_fixed() => ImageKind::Fixed,
            DiskImage::Vhdx(_) => ImageKind::Dynamic,
        }
    }

    /// The container format: raw, VHD or VHDX.
    pub fn format(&self) -> ImageFormat {
        match self {
            DiskImage::Raw(_) => ImageFormat::Raw,
            DiskImage::Fixed(_) | DiskImage::Sparse(_) => ImageFormat::Vhd,
            DiskImage::Vhdx(_) => ImageFormat::Vhdx,
        }
    }

    /// The container's block size, for formats that allocate by block (dynamic and
    /// differencing VHDs, every VHDX).
    pub fn block_size(&self) -> Option<u64> {
        match self {
            DiskImage::Sparse(s) => Some(s.block_size()),
            DiskImage::Vhdx(v) => Some(v.block_size()),
            _ => None,
        }
    }

    /// Which 512-byte sectors of block `index` (of [`Self::block_size`]) this file holds:
    /// `None` when the block is not stored, a full bitmap when it is whole.
    pub fn block_sectors(&self, index: u64) -> Result<Option<SectorBitmap>> {
        match self {
            DiskImage::Sparse(s) => s.block_bitmap(index),
            DiskImage::Vhdx(v) => v.block_sectors(index),
            _ => Err(Error::internal("block sectors of an image without blocks")),
        }
    }

    /// The blocks this file stores, in order (every block of a fixed or raw image is not
    /// listed: they have none).
    pub fn stored_blocks(&self) -> Vec<u64> {
        match self {
            DiskImage::Sparse(s) => s.bat().allocated().map(|(b, _)| b).collect(),
            DiskImage::Vhdx(v) => v.bat().stored().map(|(k, _, _)| k).collect(),
            _ => Vec::new(),
        }
    }

    /// The ranges of `[a, z)` (offsets inside stored block `index`) whose stored bytes are not
    /// all zero, in 4 KiB steps: what zeroing them must write.
    pub fn stored_nonzero(&self, index: u64, a: u64, z: u64) -> Result<Vec<(u64, u64)>> {
        match self {
            DiskImage::Sparse(s) => s.stored_nonzero(index, a, z),
            DiskImage::Vhdx(v) => v.stored_nonzero(index, a, z),
            _ => Err(Error::internal("stored bytes of an image without blocks")),
        }
    }

    /// Whether this is a differencing image (absent sectors read the parent), even when the
    /// parent was not found.
    pub fn differencing(&self) -> bool {
        match self {
            DiskImage::Sparse(s) => s.parent().is_some() || s.missing_parent().is_some(),
            DiskImage::Vhdx(v) => v.parameters().has_parent,
            _ => false,
        }
    }

    /// The VHDX, if this is one.
    pub fn as_vhdx(&self) -> Option<&Vhdx> {
        match self {
            DiskImage::Vhdx(v) => Some(v),
            _ => None,
        }
    }

    /// Fails, as reading `[start, end)` would, when a block of it that this image or a parent
    /// stores cannot be read (a corrupt table entry); reads nothing. A table of noise names
    /// millions of such blocks: a pass over them checks this before planning each one.
    pub fn require_readable(&self, start: u64, end: u64) -> Result<()> {
        match self {
            DiskImage::Sparse(s) => s.require_readable(start, end)?,
            DiskImage::Vhdx(v) => v.require_readable(start, end)?,
            DiskImage::Raw(_) | DiskImage::Fixed(_) => {}
        }
        self.parent().map_or(Ok(()), |p| p.require_readable(start, end.min(p.len())))
    }

    /// The parent of a differencing image.
    pub fn parent(&self) -> Option<&DiskImage> {
        match self {
            DiskImage::Sparse(s) => s.parent(),
            DiskImage::Vhdx(v) => v.parent(),
            _ => None,
        }
    }

    #[doc(hidden)]
    /// The image as its file now holds it, read afresh through the same open file (and its
    /// lock), not from what a writer cached; writable or not.
    pub fn reopened(&self, writable: bool) -> Result<DiskImage> {
        let file = self.file().raw().try_clone().map_err(|e| Error::open(self.source(), "reopen", e))?;
        let parent = self.parent_resolution().map(|r| r.path.clone().into());
        DiskImage::from_file(
            ImageFile::from_file(file, self.source(), writable),
            &OpenOptions { parent, format: Some(self.format()), ..OpenOptions::default() },
        )
    }

    /// How the parent of a differencing image was found.
    pub fn parent_resolution(&self) -> Option<&crate::vhd::parent::ParentResolution> {
        match self {
            DiskImage::Sparse(s) => s.parent_resolution(),
            DiskImage::Vhdx(v) => v.parent_resolution(),
            _ => None,
        }
    }

    #[doc(hidden)]
    /// The VHD footer, if this is a VHD.
    pub fn footer(&self) -> Option<&Footer> {
        match self {
            DiskImage::Raw(_) | DiskImage::Vhdx(_) => None,
            DiskImage::Fixed(f) => Some(f.footer()),
            DiskImage::Sparse(s) => Some(s.footer()),
        }
    }

    /// The dynamic or differencing image, if this is one.
    pub fn as_sparse(&self) -> Option<&SparseVhd> {
        match self {
            DiskImage::Sparse(s) => Some(s),
            _ => None,
        }
    }

    /// The dynamic or differencing image, to rewrite it.
    pub fn as_sparse_mut(&mut self) -> Option<&mut SparseVhd> {
        match self {
            DiskImage::Sparse(s) => Some(s),
            _ => None,
        }
    }

    #[doc(hidden)]
    /// The image file.
    pub fn file(&self) -> &ImageFile {
        match self {
            DiskImage::Raw(r) => r.file(),
            DiskImage::Fixed(f) => f.file(),
            DiskImage::Sparse(s) => s.file(),
            DiskImage::Vhdx(v) => v.file(),
        }
    }

    #[doc(hidden)]
    /// The image file, to stage writes.
    pub fn file_mut(&mut self) -> &mut ImageFile {
        match self {
            DiskImage::Raw(r) => r.file_mut(),
            DiskImage::Fixed(f) => f.file_mut(),
            DiskImage::Sparse(s) => s.file_mut(),
            DiskImage::Vhdx(v) => v.file_mut(),
        }
    }

    /// Problems noticed while opening this image and its parents.
    pub fn findings(&self) -> Vec<Finding> {
        match self {
            DiskImage::Raw(_) => Vec::new(),
            DiskImage::Fixed(f) => f.findings().to_vec(),
            DiskImage::Sparse(s) => {
                let mut all = s.findings().to_vec();
                if let Some(search) = s.missing_parent() {
                    all.push(Finding::new(
                        s.source(),
                        "parent locators",
                        Space::File,
                        s.header_offset() + 576,
                        format!("parent disk not found; tried {search}"),
                    ));
                }
                if let Some(p) = s.parent() {
                    all.extend(p.findings());
                }
                all
            }
            DiskImage::Vhdx(v) => {
                let mut all = v.findings().to_vec();
                if let Some(search) = v.missing_parent() {
                    all.push(Finding::new(
                        v.source(),
                        "VHDX parent locator",
                        Space::File,
                        0,
                        format!("parent disk not found; tried {search}"),
                    ));
                }
                if let Some(p) = v.parent() {
                    all.extend(p.findings());
                }
                all
            }
        }
    }

    /// Files of the chain from this image to its base.
    pub fn chain(&self) -> Vec<PathBuf> {
        self.chain_files().iter().map(|f| f.path().to_path_buf()).collect()
    }

    #[doc(hidden)]
    /// The open files of the chain from this image to its base.
    pub fn chain_files(&self) -> Vec<&ImageFile> {
        let mut out = vec![self.file()];
        if let Some(p) = self.parent() {
            out.extend(p.chain_files());
        }
        out
    }

    #[doc(hidden)]
    /// Records every file of the chain as an input an output must not overwrite.
    pub fn add_inputs_to(&self, policy: &mut OutputPolicy) {
        for f in self.chain_files() {
            if let Ok(meta) = f.raw().metadata() {
                policy.input(f.path(), &meta);
            }
        }
    }
}

/// Whether the file starts with the VHDX identifier.
fn is_vhdx(file: &ImageFile, len: u64) -> Result<bool> {
    if len < 8 {
        return Ok(false);
    }
    let mut sig = [0u8; 8];
    file.read_exact_at(0, &mut sig, "file type identifier")?;
    Ok(&sig == crate::vhdx::header::FILE_SIGNATURE)
}

/// Refuses a file without a footer that does not look like a raw disk, naming what it is.
fn refuse_non_disk(file: &ImageFile, len: u64) -> Result<()> {
    let mut head = vec![0u8; (len as usize).min(PROBE_BYTES)];
    file.read_exact_at(0, &mut head, "first sectors")?;
    match recognise(&head) {
        Recognised::RawDisk => Ok(()),
        Recognised::Unknown => Err(Error::NotADisk { file: file.path().to_path_buf() }),
        other => Err(Error::Format { file: file.path().to_path_buf(), what: other.to_string() }),
    }
}

/// Finds a VHD footer at the end of the file (512 bytes, or 511 for pre-2004 Virtual PC), or
/// at its start only (a dynamic disk whose end was cut off: an error, since its blocks are
/// gone too). `None` means a raw image.
fn find_footer(file: &ImageFile, len: u64) -> Result<Option<(Footer, u64)>> {
    for size in [FOOTER_SIZE, LEGACY_FOOTER_SIZE] {
        if len < size as u64 {
            continue;
        }
        let at = len - size as u64;
        let mut b = vec![0u8; size];
        file.read_exact_at(at, &mut b, "VHD footer")?;
        if &b[..8] == FOOTER_COOKIE {
            return Ok(Some((Footer::parse(&b, file.path(), at)?, at)));
        }
    }
    if len >= FOOTER_SIZE as u64 {
        let mut b = [0u8; FOOTER_SIZE];
        file.read_exact_at(0, &mut b, "VHD footer copy")?;
        if &b[..8] == FOOTER_COOKIE {
            return Err(Error::corrupt(
                file.path(),
                "VHD footer",
                Space::File,
                len.saturating_sub(FOOTER_SIZE as u64),
                "missing: the file starts with a footer copy but does not end with a footer (truncated?)",
            ));
        }
    }
    Ok(None)
}

impl BlockDevice for DiskImage {
    fn len(&self) -> u64 {
        match self {
            DiskImage::Raw(r) => r.len(),
            DiskImage::Fixed(f) => f.len(),
            DiskImage::Sparse(s) => s.len(),
            DiskImage::Vhdx(v) => v.len(),
        }
    }

    fn sector_size(&self) -> SectorSize {
        match self {
            DiskImage::Vhdx(v) => v.sector_size(),
            _ => SectorSize::LEGACY,
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match self {
            DiskImage::Raw(r) => r.read_at(offset, buf),
            DiskImage::Fixed(f) => f.read_at(offset, buf),
            DiskImage::Sparse(s) => s.read_at(offset, buf),
            DiskImage::Vhdx(v) => v.read_at(offset, buf),
        }
    }

    fn source(&self) -> &Path {
        match self {
            DiskImage::Raw(r) => r.source(),
            DiskImage::Fixed(f) => f.source(),
            DiskImage::Sparse(s) => s.source(),
            DiskImage::Vhdx(v) => v.source(),
        }
    }

    fn data_ranges(&self, start: u64, end: u64) -> Result<Vec<(u64, u64)>> {
        match self {
            DiskImage::Raw(r) => r.data_ranges(start, end),
            DiskImage::Fixed(f) => f.data_ranges(start, end),
            DiskImage::Sparse(s) => s.data_ranges(start, end),
            DiskImage::Vhdx(v) => v.data_ranges(start, end),
        }
    }
}

impl WritableDevice for DiskImage {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<()> {
        match self {
            DiskImage::Raw(r) => r.write_at(offset, buf),
            DiskImage::Fixed(f) => f.write_at(offset, buf),
            DiskImage::Sparse(s) => s.write_at(offset, buf),
            DiskImage::Vhdx(v) => v.write_at(offset, buf),
        }
    }

    fn flush(&mut self) -> Result<()> {
        match self {
            DiskImage::Raw(r) => r.flush(),
            DiskImage::Fixed(f) => f.flush(),
            DiskImage::Sparse(s) => s.flush(),
            DiskImage::Vhdx(v) => v.flush(),
        }
    }
}
