//! Layer 1, second container: VHDX (MS-VHDX), the format of Hyper-V, FSLogix and WSL disks.
//!
//! A file is opened by reading its identifier, its current header, a valid region table, the
//! metadata (block size, sector sizes, size, parent locator) and the BAT. A header that names a
//! log has the log's active sequence replayed first: in memory for a reader (every metadata
//! read sees the replayed bytes; payload is never logged), on disk only by a writer. Payload
//! blocks are read by state: fully present from the file; partially present (differencing)
//! sector by sector through the chunk's sector bitmap; not present from the parent or as
//! zeros; zero, undefined and unmapped as zeros.

pub mod bat;
pub mod create;
pub mod header;
pub mod log;
pub mod metadata;
pub mod region;
mod relink;
mod resize;
mod rewrite;
pub mod summary;
mod write;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::bytes::Guid;
use crate::error::{Error, ParentSearch, Result, Space};
use crate::host::FileId;
use crate::vhd::bitmap::SectorBitmap;
use crate::vhd::device::{BlockDevice, ImageFile, SectorSize, block_pieces, check_range, merge_ranges};
use crate::vhd::finding::{Finding, FindingsOfAKind};
use crate::vhd::header::LocatorEncoding;
use crate::vhd::image::{DiskImage, OpenOptions};
use crate::vhd::parent::{Candidate, ParentResolution};
use crate::vhdx::bat::{BatShape, PayloadState, VhdxBat};
use crate::vhdx::header::{FILE_SIGNATURE, HEADER_OFFSETS, HEADER_SIZE, VhdxHeader};
use crate::vhdx::log::{LogWrite, Replay};
use crate::vhdx::metadata::DiskParameters;
use crate::vhdx::region::{BAT_REGION, METADATA_REGION, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE, RegionTable};

/// Largest log read into memory to find its active sequence.
const MAX_LOG: u64 = 256 << 20;
/// Largest BAT accepted (what 64 TiB in 1 MiB blocks needs, with room).
const MAX_BAT: u64 = 1 << 30;

/// An open VHDX file.
#[derive(Debug)]
pub struct Vhdx {
    file: ImageFile,
    file_len: u64,
    creator: String,
    headers: [std::result::Result<VhdxHeader, String>; 2],
    header: VhdxHeader,
    regions: RegionTable,
    /// Which copy of the region table was used (1 or 2).
    region_copy: u8,
    metadata: Vec<metadata::MetadataEntry>,
    params: DiskParameters,
    bat: VhdxBat,
    /// The log's writes, replayed in memory over every metadata read.
    replay: Option<Replay>,
    /// Sector bits of partially present blocks, loaded on first use.
    bitmaps: RwLock<HashMap<u64, Arc<Vec<u8>>>>,
    parent: Option<Box<DiskImage>>,
    parent_resolution: Option<ParentResolution>,
    missing_parent: Option<ParentSearch>,
    findings: Vec<Finding>,
    /// The block being appended to a fresh file: index, file offset, present sectors.
    appending: Option<(u64, u64, Option<Vec<u8>>)>,
    /// Sector bitmaps of the chunks a fresh differencing file's appended blocks need.
    pending_bitmaps: std::collections::BTreeMap<u64, Vec<u8>>,
    /// Where the GUIDs of a file being created come from (its headers are written last).
    new_identity: crate::vhd::identity::Identity,
    /// Whether the BAT already names where every appended block goes.
    reserved: bool,
    /// The write session open, if any.
    session: Option<write::Session>,
    /// Payload blocks whose BAT entry is broken (kept open leniently): the entry's offset and
    /// the problem, returned as the error of every read of the block.
    broken_blocks: BTreeSet<u64>,
}

impl Vhdx {
    /// Opens the VHDX in `file`, as one link of a chain whose files so far are in `chain`.
    pub(crate) fn open(file: ImageFile, opts: &OpenOptions, chain: &mut Vec<FileId>) -> Result<Self> {
        let path = file.path().to_path_buf();
        let file_len = file.file_len()?;
        let corrupt = |structure: &str, offset: u64, problem: String| {
            Error::corrupt(&path, structure, Space::File, offset, problem)
        };
        let mut ident = vec![0u8; 520];
        file.read_exact_at(0, &mut ident, "file type identifier")?;
        if &ident[..8] != FILE_SIGNATURE {
            return Err(corrupt("VHDX file type identifier", 0, "no `vhdxfile` signature".into()));
        }
        let creator = utf16z(&ident[8..520]);
        let headers = HEADER_OFFSETS.map(|at| {
            let mut b = vec![0u8; HEADER_SIZE];
            match file.read_exact_at(at, &mut b, "VHDX header") {
                Ok(()) => VhdxHeader::parse(&b, if at == HEADER_OFFSETS[0] { 1 } else { 2 }),
                Err(e) => Err(e.to_string()),
            }
        });
        let header =
            header::current(&headers[0], &headers[1]).map_err(|why| corrupt("VHDX headers", HEADER_OFFSETS[0], why))?;
        if header.log_version != 0 && !header.log_guid.is_zero() {
            return Err(corrupt(
                "VHDX header",
                header_offset(&header) + 64,
                format!("log version {}", header.log_version),
            ));
        }
        let replay = read_replay(&file, &header, file_len)?;
        let mut vhdx = Vhdx {
            file,
            file_len: replay.as_ref().map_or(file_len, |r| file_len.max(r.last_file_offset)),
            creator,
            header,
            headers,
            regions: RegionTable { entries: Vec::new() },
            region_copy: 1,
            metadata: Vec::new(),
            params: DiskParameters {
                block_size: 1 << 20,
                leave_blocks_allocated: false,
                has_parent: false,
                virtual_disk_size: 0,
                virtual_disk_id: Guid::default(),
                logical_sector_size: 512,
                physical_sector_size: 512,
                parent_locator: None,
            },
            bat: VhdxBat::new(BatShape::of(0, 1 << 20, 512, false)),
            replay,
            bitmaps: RwLock::new(HashMap::new()),
            parent: None,
            parent_resolution: None,
            missing_parent: None,
            findings: Vec::new(),
            appending: None,
            pending_bitmaps: std::collections::BTreeMap::new(),
            new_identity: crate::vhd::identity::Identity::Fresh,
            reserved: false,
            session: None,
            broken_blocks: BTreeSet::new(),
        };
        vhdx.header_findings();
        vhdx.read_regions()?;
        vhdx.read_metadata()?;
        vhdx.read_bat(opts.strict)?;
        if vhdx.params.has_parent {
            vhdx.attach_parent(opts, chain)?;
        }
        Ok(vhdx)
    }

    /// Reads a valid copy of the region table (the first preferred).
    fn read_regions(&mut self) -> Result<()> {
        let mut why = Vec::new();
        for (copy, at) in REGION_TABLE_OFFSETS.iter().enumerate() {
            let mut b = vec![0u8; REGION_TABLE_SIZE];
            self.read_meta(*at, &mut b, "VHDX region table")?;
            match RegionTable::parse(&b) {
                Ok(t) => {
                    if let Some(problem) = t.problem(self.file_len) {
                        return Err(self.corrupt("VHDX region table", *at, problem));
                    }
                    if copy == 1 {
                        self.findings.push(Finding::new(
                            self.file.path(),
                            "VHDX region table 1",
                            Space::File,
                            REGION_TABLE_OFFSETS[0],
                            format!("not valid ({}): the second copy is used", why.join("")),
                        ));
                    }
                    self.regions = t;
                    self.region_copy = copy as u8 + 1;
                    return Ok(());
                }
                Err(e) => why.push(e),
            }
        }
        Err(self.corrupt("VHDX region tables", REGION_TABLE_OFFSETS[0], why.join("; ")))
    }

    /// Reads the metadata table and the disk parameters.
    fn read_metadata(&mut self) -> Result<()> {
        let region = *self.regions.find(METADATA_REGION).ok_or_else(|| self.internal("no metadata region"))?;
        let mut b = vec![0u8; region.length as usize];
        self.read_meta(region.file_offset, &mut b, "VHDX metadata region")?;
        self.metadata = metadata::parse_table(&b, region.length)
            .map_err(|why| self.corrupt("VHDX metadata table", region.file_offset, why))?;
        self.params = metadata::disk_parameters(&b, &self.metadata)
            .map_err(|why| self.corrupt("VHDX metadata", region.file_offset, why))?;
        Ok(())
    }

    /// Notes a header slot that is not valid. (A log not yet applied is no problem: it is how
    /// an interrupted writer leaves a file, and `dump` shows it.)
    fn header_findings(&mut self) {
        for (i, h) in self.headers.iter().enumerate() {
            if let Err(why) = h {
                let problem = format!("not valid ({why}): header {} is used", self.header.slot);
                self.findings.push(Finding::new(
                    self.file.path(),
                    format!("VHDX header {}", i + 1),
                    Space::File,
                    HEADER_OFFSETS[i],
                    problem,
                ));
            }
        }
    }

    /// Reads the BAT and checks every stored block lies inside the file, past the headers. A
    /// broken entry is an error when `strict`, else a hazardous finding and a block whose every
    /// read fails.
    fn read_bat(&mut self, strict: bool) -> Result<()> {
        let p = &self.params;
        let shape = BatShape::of(p.virtual_disk_size, p.block_size, p.logical_sector_size, p.has_parent);
        let region = *self.regions.find(BAT_REGION).ok_or_else(|| self.internal("no BAT region"))?;
        let bytes = shape.entries * 8;
        if bytes > region.length as u64 || bytes > MAX_BAT {
            return Err(self.corrupt(
                "VHDX BAT region",
                region.file_offset,
                format!("{} entries need {bytes} bytes; the region holds {}", shape.entries, region.length),
            ));
        }
        if region.file_offset.saturating_add(bytes) > self.file_len {
            return Err(self.corrupt(
                "VHDX BAT",
                region.file_offset,
                format!("reaches past the file's end ({:#x})", self.file_len),
            ));
        }
        self.bat = VhdxBat::read(shape, |table| self.read_meta(region.file_offset, table, "VHDX BAT"))?;
        let mut broken = BTreeSet::new();
        let mut findings = FindingsOfAKind::default();
        let mut first_error = None;
        self.bat.for_each_payload(|k, e| {
            if !VhdxBat::points_or_reserved(e) {
                return;
            }
            if let Some(problem) = self.entry_problem(k, e) {
                let entry_at = region.file_offset + 8 * self.bat.payload_index(k) as u64;
                if strict && first_error.is_none() {
                    first_error = Some((entry_at, problem.clone()));
                }
                findings.push(|| {
                    Finding::new(self.file.path(), "VHDX BAT entry", Space::File, entry_at, problem).hazardous()
                });
                broken.insert(k);
            }
        });
        if let Some((entry_at, problem)) = first_error {
            return Err(self.corrupt("VHDX BAT entry", entry_at, problem));
        }
        self.findings.extend(findings.finish(|more| {
            let problem = format!("{more} more entries are broken like the ones before");
            Finding::new(self.file.path(), "VHDX BAT", Space::File, region.file_offset, problem).hazardous()
        }));
        self.broken_blocks = broken;
        Ok(())
    }

    /// What is wrong with block `k`'s BAT entry `e`, if anything.
    fn entry_problem(&self, k: u64, e: u64) -> Option<String> {
        let block = self.params.block_size as u64;
        match VhdxBat::decode_payload(e) {
            Err(raw) => Some(format!("block {k}: reserved state {}", raw & 7)),
            Ok((s, at)) if s.stored() && (at < 1 << 20 || at + block > self.file_len) => {
                Some(format!("block {k} at {at:#x} lies outside the file's data ({:#x} bytes)", self.file_len))
            }
            Ok((PayloadState::PartiallyPresent, _)) if !self.params.has_parent => {
                Some(format!("block {k} is partially present in a disk without a parent"))
            }
            Ok((PayloadState::PartiallyPresent, _)) if self.bat.bitmap(k / self.bat.chunk_ratio()).is_none() => {
                Some(format!("block {k} is partially present, its chunk has no sector bitmap"))
            }
            _ => None,
        }
    }

    /// Finds, checks and opens the parent of a differencing VHDX.
    fn attach_parent(&mut self, opts: &OpenOptions, chain: &mut Vec<FileId>) -> Result<()> {
        let path = self.file.path().to_path_buf();
        let locator = self.params.parent_locator.clone().unwrap_or_default();
        let want: Vec<Guid> = ["parent_linkage", "parent_linkage2"]
            .iter()
            .filter_map(|k| locator.get(k))
            .filter_map(Guid::parse)
            .collect();
        if want.is_empty() {
            return Err(self.corrupt("VHDX parent locator", 0, "no parent_linkage GUID".into()));
        }
        if opts.detached {
            self.missing_parent = Some(ParentSearch::default());
            return Ok(());
        }
        let identity = |p: &Path, wait, chain: &[FileId]| data_write_guid(p, wait, chain);
        let found = match &opts.parent {
            Some(p) => crate::vhd::parent::resolve_by(
                &path,
                &want_texts(&want),
                &[Candidate { via: "given parent".into(), path: p.clone() }],
                opts.wait,
                chain,
                &identity,
            ),
            None => crate::vhd::parent::resolve_by(
                &path,
                &want_texts(&want),
                &candidates(&path, &locator),
                opts.wait,
                chain,
                &identity,
            ),
        };
        let (parent_path, via) = match found {
            Ok(f) => f,
            Err(Error::ParentNotFound { search, .. }) if opts.allow_missing_parent => {
                self.missing_parent = Some(search);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let parent = DiskImage::open_in_chain(&parent_path, &OpenOptions { parent: None, ..opts.clone() }, chain)?;
        if parent.len() > self.len() {
            self.findings.push(Finding::new(
                &path,
                "VHDX virtual disk size",
                Space::File,
                0,
                format!("{} bytes, the parent {} has {}", self.len(), parent_path.display(), parent.len()),
            ));
        }
        self.parent_resolution = Some(ParentResolution { path: parent_path.display().to_string(), resolved_by: via });
        self.parent = Some(Box::new(parent));
        Ok(())
    }

    /// Reads metadata bytes at file offset `at`, with the log's writes replayed over them.
    fn read_meta(&self, at: u64, buf: &mut [u8], what: &'static str) -> Result<()> {
        let end = at + buf.len() as u64;
        let on_disk = self.file.file_len()?;
        let have = on_disk.saturating_sub(at).min(buf.len() as u64) as usize;
        if end > self.file_len {
            return Err(self.corrupt(what, at, format!("reaches past the file's end ({:#x})", self.file_len)));
        }
        self.file.read_exact_at(at, &mut buf[..have], what)?;
        buf[have..].fill(0);
        for w in self.replay.iter().flat_map(|r| &r.writes) {
            let (o, n) = w.span();
            let (a, b) = (o.max(at), (o + n).min(end));
            if a >= b {
                continue;
            }
            let out = &mut buf[(a - at) as usize..(b - at) as usize];
            match w {
                LogWrite::Data { bytes, .. } => out.copy_from_slice(&bytes[(a - o) as usize..(b - o) as usize]),
                LogWrite::Zero { .. } => out.fill(0),
            }
        }
        Ok(())
    }

    fn corrupt(&self, structure: &str, offset: u64, problem: String) -> Error {
        Error::corrupt(self.file.path(), structure, Space::File, offset, problem)
    }

    fn internal(&self, what: &str) -> Error {
        Error::internal(format!("{}: {what}", self.file.path().display()))
    }

    /// The disk parameters from the metadata.
    pub fn parameters(&self) -> &DiskParameters {
        &self.params
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.params.block_size as u64
    }

    /// The BAT.
    pub fn bat(&self) -> &VhdxBat {
        &self.bat
    }

    /// The current header.
    pub fn header(&self) -> &VhdxHeader {
        &self.header
    }

    /// The image file.
    pub fn file(&self) -> &ImageFile {
        &self.file
    }

    /// The image file, to stage writes.
    pub fn file_mut(&mut self) -> &mut ImageFile {
        &mut self.file
    }

    /// The parent of a differencing disk.
    pub fn parent(&self) -> Option<&DiskImage> {
        self.parent.as_deref()
    }

    /// How the parent was found.
    pub fn parent_resolution(&self) -> Option<&ParentResolution> {
        self.parent_resolution.as_ref()
    }

    /// Paths tried for a parent that was not found.
    pub fn missing_parent(&self) -> Option<&ParentSearch> {
        self.missing_parent.as_ref()
    }

    /// Problems noticed while opening.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// Whether the disk is fixed (every block allocated), dynamic or differencing.
    pub fn is_fixed(&self) -> bool {
        self.params.leave_blocks_allocated
    }

    /// Whether the log was replayed in memory.
    pub fn replayed(&self) -> bool {
        self.replay.is_some()
    }

    /// Structural problems: blocks (payload and sector bitmap) that overlap each other, the
    /// log, a region or the first megabyte; and a disk size the BAT cannot cover.
    pub fn layout_findings(&self) -> Vec<Finding> {
        let path = self.file.path();
        let mut spans: Vec<(u64, u64, Span)> = vec![(0, 1 << 20, Span::Headers)];
        if !self.header.log_guid.is_zero() || self.header.log_length > 0 {
            let (a, n) = (self.header.log_offset, self.header.log_length as u64);
            spans.push((a, a + n, Span::Log));
        }
        for (i, r) in self.regions.entries.iter().enumerate() {
            spans.push((r.file_offset, r.file_offset + r.length as u64, Span::Region(i)));
        }
        let bs = self.block_size();
        for (k, _, at) in self.bat.stored() {
            spans.push((at, at + bs, Span::Block(k)));
        }
        for c in 0..self.bat.payload_blocks().div_ceil(self.bat.chunk_ratio()) {
            if let Some(at) = self.bat.bitmap(c) {
                spans.push((at, at + (1 << 20), Span::Bitmap(c)));
            }
        }
        spans.sort_unstable_by_key(|&(a, b, _)| (a, b));
        let name = |s: Span| match s {
            Span::Headers => "the header section".to_string(),
            Span::Log => "the log".to_string(),
            Span::Region(i) => format!("region {}", self.regions.entries[i].guid),
            Span::Block(k) => format!("block {k}"),
            Span::Bitmap(c) => format!("sector bitmap {c}"),
        };
        let mut overlaps = FindingsOfAKind::default();
        let mut reach: Option<(u64, Span)> = None;
        for (a, b, what) in spans {
            if let Some((end, other)) = reach
                && a < end
            {
                overlaps.push(|| {
                    let problem = format!("{} overlaps {}", name(what), name(other));
                    Finding::new(path, "VHDX layout", Space::File, a, problem).hazardous()
                });
            }
            if reach.is_none_or(|(end, _)| b > end) {
                reach = Some((b, what));
            }
        }
        overlaps.finish(|more| {
            let problem = format!("{more} more blocks or bitmaps overlap others");
            Finding::new(path, "VHDX layout", Space::File, 0, problem).hazardous()
        })
    }

    /// The sector bits of partially present block `k` (one bit per logical sector, LSB first),
    /// cached.
    fn block_bits(&self, k: u64) -> Result<Arc<Vec<u8>>> {
        if let Some(b) = self.bitmaps.read().map_err(|_| self.internal("bitmap cache poisoned"))?.get(&k) {
            return Ok(b.clone());
        }
        let chunk = k / self.bat.chunk_ratio();
        let at = self.bat.bitmap(chunk).ok_or_else(|| self.internal("a partially present block without a bitmap"))?;
        let per_block = self.block_size() / self.params.logical_sector_size as u64 / 8;
        let mut bits = vec![0u8; per_block as usize];
        self.read_meta(at + (k % self.bat.chunk_ratio()) * per_block, &mut bits, "VHDX sector bitmap")?;
        let bits = Arc::new(bits);
        self.bitmaps.write().map_err(|_| self.internal("bitmap cache poisoned"))?.insert(k, bits.clone());
        Ok(bits)
    }

    /// Fails, as reading them would, when a block of `[start, end)` has a broken BAT entry;
    /// reads nothing.
    pub fn require_readable(&self, start: u64, end: u64) -> Result<()> {
        let bs = self.block_size();
        if start >= end {
            return Ok(());
        }
        match self.broken_blocks.range(start / bs..end.div_ceil(bs)).next() {
            Some(&k) => self.require_intact(k),
            None => Ok(()),
        }
    }

    /// The error of block `k`'s broken BAT entry, if it is broken.
    fn require_intact(&self, k: u64) -> Result<()> {
        if !self.broken_blocks.contains(&k) {
            return Ok(());
        }
        let region = self.regions.find(BAT_REGION).ok_or_else(|| self.internal("no BAT region"))?;
        let entry_at = region.file_offset + 8 * self.bat.payload_index(k) as u64;
        let entry = self.bat.entries().get(self.bat.payload_index(k)).copied();
        let problem = entry.and_then(|e| self.entry_problem(k, e));
        Err(self.corrupt("VHDX BAT entry", entry_at, problem.unwrap_or_else(|| "broken".into())))
    }

    /// Which 512-byte sectors of block `k` this file holds: `None` when it stores none of them.
    pub fn block_sectors(&self, k: u64) -> Result<Option<SectorBitmap>> {
        self.require_intact(k)?;
        let sectors = (self.block_size() / 512) as u32;
        match self.bat.payload(k) {
            Ok((PayloadState::FullyPresent, _)) => Ok(Some(SectorBitmap::full(sectors))),
            Ok((PayloadState::PartiallyPresent, _)) => {
                let bits = self.block_bits(k)?;
                let per = self.params.logical_sector_size / 512;
                let mut map = SectorBitmap::empty(sectors);
                for s in 0..sectors / per {
                    if bits[(s / 8) as usize] & (1 << (s % 8)) != 0 {
                        map.set_range(s * per, (s + 1) * per, true);
                    }
                }
                Ok(Some(map))
            }
            _ => Ok(None),
        }
    }

    /// Reads bytes this file does not hold: the parent's, or zeros.
    fn read_absent(&self, offset: u64, buf: &mut [u8], from_parent: bool) -> Result<()> {
        match (&self.parent, from_parent) {
            (Some(p), true) => {
                let have = p.len().saturating_sub(offset).min(buf.len() as u64) as usize;
                if have > 0 {
                    p.read_at(offset, &mut buf[..have])?;
                }
                buf[have..].fill(0);
            }
            _ if from_parent && self.params.has_parent => {
                let search = self.missing_parent.clone().unwrap_or_default();
                return Err(Error::ParentNotFound { file: self.file.path().to_path_buf(), search });
            }
            _ => buf.fill(0),
        }
        Ok(())
    }

    /// Reads `buf` from block `k`, `within` bytes into it.
    fn read_in_block(&self, k: u64, within: u64, buf: &mut [u8]) -> Result<()> {
        self.require_intact(k)?;
        let disk_at = k * self.block_size() + within;
        let Ok((state, at)) = self.bat.payload(k) else {
            return Err(self.internal("a reserved BAT state passed the open"));
        };
        match state {
            PayloadState::FullyPresent => self.file.read_exact_at(at + within, buf, "VHDX payload block"),
            PayloadState::NotPresent => self.read_absent(disk_at, buf, true),
            PayloadState::Zero | PayloadState::Undefined | PayloadState::Unmapped => {
                buf.fill(0);
                Ok(())
            }
            PayloadState::PartiallyPresent => {
                let bits = self.block_bits(k)?;
                let ss = self.params.logical_sector_size as u64;
                let end = within + buf.len() as u64;
                let mut pos = within;
                while pos < end {
                    let sector = pos / ss;
                    let present = bits[(sector / 8) as usize] & (1 << (sector % 8)) != 0;
                    let mut run_end = (sector + 1) * ss;
                    while run_end < end {
                        let s = run_end / ss;
                        if (bits[(s / 8) as usize] & (1 << (s % 8)) != 0) != present {
                            break;
                        }
                        run_end += ss;
                    }
                    let run_end = run_end.min(end);
                    let part = &mut buf[(pos - within) as usize..(run_end - within) as usize];
                    if present {
                        self.file.read_exact_at(at + pos, part, "VHDX payload block")?;
                    } else {
                        self.read_absent(k * self.block_size() + pos, part, true)?;
                    }
                    pos = run_end;
                }
                Ok(())
            }
        }
    }
}

impl BlockDevice for Vhdx {
    fn len(&self) -> u64 {
        self.params.virtual_disk_size
    }

    fn sector_size(&self) -> SectorSize {
        SectorSize::new(self.params.logical_sector_size).unwrap_or_default()
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

    /// Stored blocks (and, where a differencing disk holds none, the parent's data ranges).
    fn data_ranges(&self, start: u64, end: u64) -> Result<Vec<(u64, u64)>> {
        let end = end.min(self.len());
        if start >= end {
            return Ok(Vec::new());
        }
        let bs = self.block_size();
        let mut own = Vec::new();
        let mut from_parent = Vec::new();
        for k in start / bs..end.div_ceil(bs) {
            let (a, b) = ((k * bs).max(start), ((k + 1) * bs).min(end));
            match self.bat.payload(k) {
                Ok((s, _)) if s.stored() => own.push((a, b)),
                Ok((PayloadState::NotPresent, _)) if self.parent.is_some() => from_parent.push((a, b)),
                _ => {}
            }
        }
        let mut out = merge_ranges(own);
        if let Some(p) = &self.parent {
            for (a, b) in merge_ranges(from_parent) {
                out.extend(p.data_ranges(a, b.min(p.len()))?);
            }
            out.sort_unstable();
            out = merge_ranges(out);
        }
        Ok(out)
    }
}

/// What an extent of a VHDX file is, for the overlap check.
#[derive(Clone, Copy)]
enum Span {
    Headers,
    Log,
    Region(usize),
    Block(u64),
    Bitmap(u64),
}

/// Where the header's slot is.
fn header_offset(h: &VhdxHeader) -> u64 {
    HEADER_OFFSETS[(h.slot as usize).saturating_sub(1).min(1)]
}

/// The log's active sequence when the header names a log; a log that cannot be replayed, or
/// that says the file was longer than it is, is an error.
fn read_replay(file: &ImageFile, h: &VhdxHeader, file_len: u64) -> Result<Option<Replay>> {
    if h.log_guid.is_zero() {
        return Ok(None);
    }
    let corrupt = |problem: String| Error::corrupt(file.path(), "VHDX log", Space::File, h.log_offset, problem);
    let len = h.log_length as u64;
    if len == 0 || len > MAX_LOG || h.log_offset < 1 << 20 || h.log_offset.checked_add(len).is_none_or(|e| e > file_len)
    {
        return Err(corrupt(format!(
            "a log of {len} bytes at {:#x} does not fit the file ({file_len:#x} bytes)",
            h.log_offset
        )));
    }
    let mut ring = vec![0u8; len as usize];
    file.read_exact_at(h.log_offset, &mut ring, "VHDX log")?;
    let replay = log::active_sequence(&ring, h.log_guid).map_err(corrupt)?;
    if file_len < replay.flushed_file_offset {
        return Err(corrupt(format!(
            "the log says the file had {:#x} bytes; it has {file_len:#x} (truncated)",
            replay.flushed_file_offset
        )));
    }
    Ok(Some(replay))
}

/// A NUL-terminated UTF-16LE string.
fn utf16z(b: &[u8]) -> String {
    let units: Vec<u16> = b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&u| u != 0).collect();
    String::from_utf16_lossy(&units)
}

fn want_texts(want: &[Guid]) -> Vec<String> {
    want.iter().map(Guid::to_string).collect()
}

/// Every place the parent may be, in the specification's order: `relative_path`,
/// `volume_path`, `absolute_win32_path` (each mapped to local candidates).
fn candidates(child: &Path, locator: &metadata::ParentLocator) -> Vec<Candidate> {
    let dir = child
        .parent()
        .map(Path::to_path_buf)
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let mut out: Vec<Candidate> = Vec::new();
    for key in ["relative_path", "volume_path", "absolute_win32_path"] {
        let Some(raw) = locator.get(key) else { continue };
        let stripped = raw.trim_start_matches("\\\\?\\");
        let encoding =
            if key == "relative_path" { LocatorEncoding::Utf16Relative } else { LocatorEncoding::Utf16Absolute };
        for path in crate::vhd::parent::local_paths(stripped, encoding, &dir) {
            if !out.iter().any(|c| c.path == path) {
                out.push(Candidate { via: key.to_string(), path });
            }
        }
    }
    out
}

/// The data write GUID of the VHDX at `path` (what a child's `parent_linkage` names).
fn data_write_guid(path: &Path, wait: crate::host::LockWait, chain: &[FileId]) -> std::result::Result<String, String> {
    if FileId::of_path(path).is_some_and(|id| chain.contains(&id)) {
        return Err("is a file of this very chain (the parent chain would loop)".into());
    }
    let file = ImageFile::open(path, false, wait).map_err(|e| e.to_string())?;
    let mut ident = [0u8; 8];
    file.read_exact_at(0, &mut ident, "file type identifier").map_err(|e| e.to_string())?;
    if &ident != FILE_SIGNATURE {
        return Err("not a VHDX (a VHDX child needs a VHDX parent: Hyper-V allows no VHD parent)".into());
    }
    let headers = HEADER_OFFSETS.map(|at| {
        let mut b = vec![0u8; HEADER_SIZE];
        file.read_exact_at(at, &mut b, "VHDX header").map_err(|e| e.to_string()).and_then(|()| VhdxHeader::parse(&b, 1))
    });
    header::current(&headers[0], &headers[1]).map(|h| h.data_write_guid.to_string())
}
