//! Dynamic and differencing images: footer copy, dynamic header, BAT, and per block a sector
//! bitmap followed by the block's data.
//!
//! Both kinds share one reader and writer. The only difference is where an absent sector's
//! bytes come from: zeros in a dynamic disk, the parent in a differencing disk.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::error::{Error, ParentSearch, Result, Space};
use crate::host::FileId;
use crate::vhd::bat::{BlockAllocationTable, FileSector, MAX_ENTRIES, table_bytes};
use crate::vhd::bitmap::SectorBitmap;
use crate::vhd::device::{BlockDevice, ImageFile, block_pieces, check_range, merge_ranges};
use crate::vhd::finding::{Finding, FindingsOfAKind};
use crate::vhd::footer::{DiskType, FOOTER_SIZE, Footer, VHD_EPOCH_UNIX};
use crate::vhd::header::{DynamicHeader, HEADER_SIZE};
use crate::vhd::image::{DiskImage, OpenOptions};
use crate::vhd::parent::{self, DecodedLocator, ParentResolution};

pub(crate) mod create;
mod rewrite;
mod write;

pub use create::ParentLink;
pub use rewrite::{BlockRewrite, RewriteOutcome};

/// Largest block size accepted (Hyper-V's limit for VHDX; no VHD writer goes beyond).
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Default block size of new images.
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;
/// Largest disk a VHD may describe (the specification's and Windows' limit).
pub const MAX_DISK_SIZE: u64 = 2040 << 30;

/// Which sectors of an allocated block live in this file.
#[derive(Debug)]
enum StoredSectors {
    All,
    Some(SectorBitmap),
}

impl StoredSectors {
    /// The sectors `bitmap` marks present: all of them kept as one word, the way reads test
    /// first.
    fn of(bitmap: SectorBitmap) -> Self {
        if bitmap.is_full() { StoredSectors::All } else { StoredSectors::Some(bitmap) }
    }
}

/// A dynamic or differencing VHD.
#[derive(Debug)]
pub struct SparseVhd {
    file: ImageFile,
    footer: Footer,
    header: DynamicHeader,
    header_offset: u64,
    bat: BlockAllocationTable,
    presence: RwLock<HashMap<u64, Arc<StoredSectors>>>,
    parent: Option<Box<DiskImage>>,
    /// Paths tried for a parent that could not be found (opened with `allow_missing_parent`).
    missing_parent: Option<ParentSearch>,
    parent_resolution: Option<ParentResolution>,
    locators: Vec<DecodedLocator>,
    findings: Vec<Finding>,
    /// Where the trailing footer starts; blocks must end at or before it.
    data_end: u64,
    /// Whether the footer at the end and the copy at 0 are the encoded `footer`.
    footers_current: bool,
    /// The block being appended to a fresh image, and the file offset of its bitmap.
    appending: Option<(u64, FileSector)>,
    /// Whether the BAT already names where every appended block goes.
    reserved: bool,
}

impl SparseVhd {
    /// Opens the dynamic or differencing image in `file`, whose trailing footer (already
    /// decoded) starts at `data_end`.
    pub(crate) fn open(
        file: ImageFile,
        footer: Footer,
        data_end: u64,
        opts: &OpenOptions,
        chain: &mut Vec<FileId>,
    ) -> Result<Self> {
        let path = file.path().to_path_buf();
        let mut findings = Vec::new();
        let mut note = |f: Finding| -> Result<()> {
            if opts.strict {
                Err(Error::corrupt(&path, f.structure, Space::File, f.offset, f.problem))
            } else {
                findings.push(f);
                Ok(())
            }
        };
        if !footer.checksum_valid() {
            note(Finding::new(
                &path,
                "VHD footer",
                Space::File,
                data_end,
                format!("checksum {:#010x} stored, {:#010x} computed", footer.checksum, footer.computed_checksum()),
            ))?;
        }
        let mut copy = [0u8; FOOTER_SIZE];
        file.read_exact_at(0, &mut copy, "footer copy")?;
        if &copy != footer.raw() {
            note(Finding::new(
                &path,
                "VHD footer copy",
                Space::File,
                0,
                "differs from the footer at the end of the file",
            ))?;
        }

        let header_offset = footer.data_offset;
        if header_offset.checked_add(HEADER_SIZE as u64).is_none_or(|end| end > data_end) {
            return Err(Error::corrupt(
                &path,
                "VHD footer data offset",
                Space::File,
                data_end + 16,
                format!("dynamic header offset {header_offset:#x} lies outside the file"),
            ));
        }
        let mut raw = [0u8; HEADER_SIZE];
        file.read_exact_at(header_offset, &mut raw, "dynamic disk header")?;
        let header = DynamicHeader::parse(&raw, &path, header_offset)?;
        if !header.checksum_valid() {
            note(Finding::new(
                &path,
                "dynamic disk header",
                Space::File,
                header_offset,
                format!("checksum {:#010x} stored, {:#010x} computed", header.checksum, header.computed_checksum()),
            ))?;
        }
        validate_geometry(&path, &footer, &header, header_offset, data_end)?;

        let mut bat_raw = vec![0u8; table_bytes(header.max_table_entries) as usize];
        file.read_exact_at(header.table_offset, &mut bat_raw, "block allocation table")?;
        let bat = BlockAllocationTable::parse(&bat_raw, header.max_table_entries);
        let block_span = header.bitmap_size() + header.block_size as u64;
        let mut past_end = FindingsOfAKind::default();
        for (block, sector) in bat.allocated() {
            let end = sector.offset() + block_span;
            if end > data_end {
                past_end.push(|| {
                    Finding::new(
                        &path,
                        format!("BAT entry {block}"),
                        Space::File,
                        header.table_offset + 4 * block,
                        format!("block at sector {:#x} ends at {end:#x}, past the data end {data_end:#x}", sector.0),
                    )
                    .hazardous()
                });
            }
        }
        let past_end = past_end.finish(|more| {
            let problem = format!("{more} more entries name blocks that end past the data end {data_end:#x}");
            Finding::new(&path, "block allocation table", Space::File, header.table_offset, problem).hazardous()
        });
        for finding in past_end {
            note(finding)?;
        }

        let mut vhd = SparseVhd {
            file,
            footer,
            header,
            header_offset,
            bat,
            presence: RwLock::new(HashMap::new()),
            parent: None,
            missing_parent: None,
            parent_resolution: None,
            locators: Vec::new(),
            findings,
            data_end,
            footers_current: false,
            appending: None,
            reserved: false,
        };
        if vhd.footer.disk_type == DiskType::Differencing {
            vhd.attach_parent(opts, chain)?;
        }
        vhd.footers_current = vhd.footer.encode() == *vhd.footer.raw() && &copy == vhd.footer.raw();
        Ok(vhd)
    }

    /// Finds, checks and opens the parent of a differencing image.
    fn attach_parent(&mut self, opts: &OpenOptions, chain: &mut Vec<FileId>) -> Result<()> {
        let path = self.file.path().to_path_buf();
        self.locators = parent::decode_locators(&self.file, &self.header)?;
        if opts.detached {
            self.missing_parent = Some(ParentSearch::default());
            return Ok(());
        }
        let want = self.header.parent_uuid;
        let found = match &opts.parent {
            Some(p) => parent::check_override(&path, &want, p, opts.wait, chain)
                .map(|()| (p.clone(), "given parent".to_string())),
            None => parent::resolve(
                &path,
                &want,
                &parent::candidates(&path, &self.header, &self.locators),
                opts.wait,
                chain,
            ),
        };
        let (parent_path, via) = match found {
            Ok(found) => found,
            Err(Error::ParentNotFound { search, .. }) if opts.allow_missing_parent => {
                self.missing_parent = Some(search);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let parent_opts = OpenOptions { parent: None, ..opts.clone() };
        let parent = DiskImage::open_in_chain(&parent_path, &parent_opts, chain)?;
        // A child larger than its parent (expanded) reads zeros past the parent's end; a
        // smaller one would hide the parent's last sectors.
        if parent.len() > self.len() {
            self.findings.push(Finding::new(
                &path,
                "VHD footer current size",
                Space::File,
                self.data_end + 48,
                format!("{} bytes, the parent {} has {}", self.len(), parent_path.display(), parent.len()),
            ));
        }
        if let Some(pf) = parent.footer() {
            let mtime = std::fs::metadata(&parent_path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs().saturating_sub(VHD_EPOCH_UNIX) as u32);
            let ts = self.header.parent_timestamp;
            if ts != pf.timestamp && Some(ts) != mtime {
                self.findings.push(Finding::new(
                    &path,
                    "dynamic header parent timestamp",
                    Space::File,
                    self.header_offset + 56,
                    "matches neither the parent's footer timestamp nor its modification time",
                ));
            }
        }
        self.parent_resolution = Some(ParentResolution { path: parent_path.display().to_string(), resolved_by: via });
        self.parent = Some(Box::new(parent));
        Ok(())
    }

    #[doc(hidden)]
    /// The footer at the end of the file.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    #[doc(hidden)]
    /// The dynamic disk header.
    pub fn header(&self) -> &DynamicHeader {
        &self.header
    }

    /// File offset of the dynamic disk header.
    pub fn header_offset(&self) -> u64 {
        self.header_offset
    }

    #[doc(hidden)]
    /// The block allocation table.
    pub fn bat(&self) -> &BlockAllocationTable {
        &self.bat
    }

    /// The parent, for a differencing image.
    pub fn parent(&self) -> Option<&DiskImage> {
        self.parent.as_deref()
    }

    /// The paths tried for a parent that was not found.
    pub fn missing_parent(&self) -> Option<&ParentSearch> {
        self.missing_parent.as_ref()
    }

    #[doc(hidden)]
    /// How the parent was found.
    pub fn parent_resolution(&self) -> Option<&ParentResolution> {
        self.parent_resolution.as_ref()
    }

    #[doc(hidden)]
    /// The parent locators with their decoded paths (differencing images only).
    pub fn locators(&self) -> &[DecodedLocator] {
        &self.locators
    }

    /// Problems noticed while opening, in lenient mode.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    #[doc(hidden)]
    /// The image file.
    pub fn file(&self) -> &ImageFile {
        &self.file
    }

    #[doc(hidden)]
    /// The image file, to stage writes.
    pub fn file_mut(&mut self) -> &mut ImageFile {
        &mut self.file
    }

    /// Where the trailing footer starts.
    pub fn data_end(&self) -> u64 {
        self.data_end
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.header.block_size as u64
    }

    /// Sectors per block.
    fn block_sectors(&self) -> u32 {
        self.header.block_size / 512
    }

    /// Number of blocks the disk spans (may be fewer than BAT entries).
    pub fn block_count(&self) -> u64 {
        self.len().div_ceil(self.block_size())
    }

    #[doc(hidden)]
    /// The sector bitmap of `block`, or `None` when the block is not allocated.
    pub fn block_bitmap(&self, block: u64) -> Result<Option<SectorBitmap>> {
        let Some(sector) = self.bat.sector(block) else {
            return Ok(None);
        };
        Ok(Some(match &*self.presence(block, sector)? {
            StoredSectors::All => SectorBitmap::full(self.block_sectors()),
            StoredSectors::Some(b) => b.clone(),
        }))
    }

    /// Number of sectors of `block` stored in this file.
    pub fn sectors_present(&self, block: u64) -> Result<u32> {
        let Some(sector) = self.bat.sector(block) else {
            return Ok(0);
        };
        Ok(match &*self.presence(block, sector)? {
            StoredSectors::All => self.block_sectors(),
            StoredSectors::Some(b) => b.count(),
        })
    }

    /// The cached presence of an allocated block, loading its bitmap on first use.
    fn presence(&self, block: u64, sector: FileSector) -> Result<Arc<StoredSectors>> {
        if let Some(p) = self.presence.read().map_err(|_| self.poisoned())?.get(&block) {
            return Ok(p.clone());
        }
        let loaded = Arc::new(self.load_presence(block, sector)?);
        self.presence.write().map_err(|_| self.poisoned())?.insert(block, loaded.clone());
        Ok(loaded)
    }

    fn poisoned(&self) -> Error {
        Error::unsupported(self.file.path(), "bitmap cache lock poisoned by an earlier panic")
    }

    fn load_presence(&self, block: u64, sector: FileSector) -> Result<StoredSectors> {
        self.check_block_inside(block, sector)?;
        let mut raw = vec![0u8; self.header.bitmap_size() as usize];
        self.file.read_exact_at(sector.offset(), &mut raw, "sector bitmap")?;
        let bitmap = SectorBitmap::from_bytes(&raw, self.block_sectors());
        Ok(StoredSectors::of(bitmap))
    }

    /// Fails, as reading them would, when an allocated block of `[start, end)` reaches past
    /// the data area; reads nothing.
    pub fn require_readable(&self, start: u64, end: u64) -> Result<()> {
        let (bs, end) = (self.block_size(), end.min(self.len()));
        if start >= end {
            return Ok(());
        }
        for block in self.bat.allocated_in(start / bs, end.div_ceil(bs)) {
            if let Some(sector) = self.bat.sector(block) {
                self.check_block_inside(block, sector)?;
            }
        }
        Ok(())
    }

    /// Fails when an allocated block reaches past the data area (a corrupt BAT entry).
    fn check_block_inside(&self, block: u64, sector: FileSector) -> Result<()> {
        let end = sector.offset() + self.header.bitmap_size() + self.block_size();
        if end > self.data_end {
            return Err(Error::corrupt(
                self.file.path(),
                format!("BAT entry {block}"),
                Space::File,
                self.header.table_offset + 4 * block,
                format!("block at sector {:#x} ends at {end:#x}, past the data end {:#x}", sector.0, self.data_end),
            ));
        }
        Ok(())
    }

    /// Reads bytes that this file does not hold: zeros, or the parent's bytes.
    fn read_absent(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if let Some(search) = &self.missing_parent {
            return Err(Error::ParentNotFound { file: self.file.path().to_path_buf(), search: search.clone() });
        }
        match &self.parent {
            None => buf.fill(0),
            Some(p) => {
                let have = p.len().saturating_sub(offset).min(buf.len() as u64) as usize;
                if have > 0 {
                    p.read_at(offset, &mut buf[..have])?;
                }
                buf[have..].fill(0);
            }
        }
        Ok(())
    }

    /// Reads `buf` from `block`, starting `within` bytes into it.
    fn read_in_block(&self, block: u64, within: u64, buf: &mut [u8]) -> Result<()> {
        let disk_offset = block * self.block_size() + within;
        let Some(sector) = self.bat.sector(block) else {
            return self.read_absent(disk_offset, buf);
        };
        let data_at = sector.offset() + self.header.bitmap_size();
        match &*self.presence(block, sector)? {
            StoredSectors::All => self.file.read_exact_at(data_at + within, buf, "block data"),
            StoredSectors::Some(bitmap) => {
                let end = within + buf.len() as u64;
                let (first, last) = SectorBitmap::bits_of(within, end);
                for (s, e, present) in bitmap.runs(first, last) {
                    let (lo, hi) = SectorBitmap::bytes_of(s, e);
                    let (lo, hi) = (lo.max(within), hi.min(end));
                    let part = &mut buf[(lo - within) as usize..(hi - within) as usize];
                    if present {
                        self.file.read_exact_at(data_at + lo, part, "block data")?;
                    } else {
                        self.read_absent(block * self.block_size() + lo, part)?;
                    }
                }
                Ok(())
            }
        }
    }

    fn presence_map(&mut self) -> &mut HashMap<u64, Arc<StoredSectors>> {
        self.presence.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl BlockDevice for SparseVhd {
    fn len(&self) -> u64 {
        self.footer.current_size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.file.path(), Space::Disk, offset, buf.len(), self.len())?;
        for (block, within, range) in block_pieces(offset, buf.len(), self.block_size()) {
            self.read_in_block(block, within, &mut buf[range])?;
        }
        Ok(())
    }

    fn source(&self) -> &Path {
        self.file.path()
    }

    /// Allocated blocks (read without touching the others), and where they are not, the
    /// parent's data ranges.
    fn data_ranges(&self, start: u64, end: u64) -> Result<Vec<(u64, u64)>> {
        let end = end.min(self.len());
        if start >= end {
            return Ok(Vec::new());
        }
        let bs = self.block_size();
        let (first, last) = (start / bs, end.div_ceil(bs));
        let mut own: Vec<(u64, u64)> = Vec::new();
        let blocks = self.bat.allocated_in(first, last);
        for b in blocks {
            own.push(((b * bs).max(start), ((b + 1) * bs).min(end)));
        }
        let own = merge_ranges(own);
        let Some(parent) = self.parent.as_deref() else { return Ok(own) };
        // The parent shows through where this image holds no block.
        let mut out = own.clone();
        let mut at = start;
        for &(a, b) in own.iter().chain(std::iter::once(&(end, end))) {
            if at < a {
                out.extend(parent.data_ranges(at, a.min(parent.len()))?);
            }
            at = at.max(b);
        }
        out.sort_unstable();
        Ok(merge_ranges(out))
    }
}

/// Rejects headers whose sizes cannot describe this file, before anything is allocated.
fn validate_geometry(path: &Path, footer: &Footer, h: &DynamicHeader, header_offset: u64, data_end: u64) -> Result<()> {
    let bad = |field: &str, at: u64, problem: String| {
        Err(Error::corrupt(path, format!("dynamic disk header {field}"), Space::File, header_offset + at, problem))
    };
    if h.block_size < 512 || !h.block_size.is_multiple_of(512) || h.block_size > MAX_BLOCK_SIZE {
        return bad(
            "block size",
            32,
            format!("{} bytes is not a multiple of 512 between 512 and {MAX_BLOCK_SIZE}", h.block_size),
        );
    }
    if h.max_table_entries > MAX_ENTRIES {
        return bad(
            "max table entries",
            28,
            format!("{} entries exceed the limit of {MAX_ENTRIES}", h.max_table_entries),
        );
    }
    let needed = footer.current_size.div_ceil(h.block_size as u64);
    if (h.max_table_entries as u64) < needed {
        return bad(
            "max table entries",
            28,
            format!(
                "{} entries, but a disk of {} bytes in {}-byte blocks needs {needed}",
                h.max_table_entries, footer.current_size, h.block_size
            ),
        );
    }
    let table_end = h.table_offset.checked_add(table_bytes(h.max_table_entries));
    if table_end.is_none_or(|end| end > data_end) {
        return bad(
            "table offset",
            16,
            format!(
                "BAT at {:#x} of {} entries reaches past the data end {data_end:#x}",
                h.table_offset, h.max_table_entries
            ),
        );
    }
    Ok(())
}
