//! New VHDX files: fixed (every block allocated, in order), dynamic, or a differencing child of
//! a VHDX parent; and a fresh file filled by appending blocks (the compaction writer's way:
//! nobody sees the file before it is committed, so the BAT and headers are written last).
//!
//! Layout, as Microsoft's own implementation writes it: the 1 MiB header section, a 1 MiB log
//! (empty: no log GUID), the metadata region at 2 MiB, the BAT at 3 MiB, then the blocks.

use std::collections::BTreeMap;
use std::path::Path;

use crate::bytes::Guid;
use crate::error::{Error, Result};
use crate::host::FileId;
use crate::vhd::device::{BlockDevice, ImageFile, block_pieces};
use crate::vhd::identity::Identity;
use crate::vhd::image::{DiskImage, ImageFormat, OpenOptions};
use crate::vhdx::Vhdx;
use crate::vhdx::bat::{BatShape, PayloadState, VhdxBat};
use crate::vhdx::header::{FILE_SIGNATURE, HEADER_OFFSETS, VhdxHeader};
use crate::vhdx::metadata::{self, MetadataEntry, ParentLocator};
use crate::vhdx::region::{ALIGNMENT, BAT_REGION, METADATA_REGION, REGION_TABLE_OFFSETS, RegionEntry, RegionTable};

const LOG_OFFSET: u64 = 1 << 20;
const LOG_LENGTH: u32 = 1 << 20;
const METADATA_OFFSET: u64 = 2 << 20;
const METADATA_LENGTH: u32 = 1 << 20;
const BAT_OFFSET: u64 = 3 << 20;

/// What kind of VHDX to make.
pub enum NewKind<'a> {
    /// Every block allocated, in disk order.
    Fixed,
    /// Blocks allocated as they are written.
    Dynamic,
    /// A child of the VHDX at `path`, opened as `image`.
    Differencing {
        /// The parent, opened.
        image: &'a DiskImage,
        /// The parent's file.
        path: &'a Path,
    },
}

/// The shape of a new VHDX.
pub struct NewVhdx<'a> {
    /// Disk size in bytes (a differencing child takes its parent's).
    pub size: u64,
    /// A power of two from 1 MiB to 256 MiB.
    pub block_size: u32,
    /// 512 or 4096 (a differencing child takes its parent's).
    pub logical_sector_size: u32,
    /// Fixed, dynamic or differencing.
    pub kind: NewKind<'a>,
    /// Where its GUIDs come from.
    pub identity: Identity,
}

/// The parts of a new file computed before anything is written.
struct Plan {
    size: u64,
    block_size: u32,
    sector: u32,
    shape: BatShape,
    bat_length: u64,
    data_start: u64,
    differencing: bool,
    fixed: bool,
    locator: Option<ParentLocator>,
}

impl Vhdx {
    /// Creates a new VHDX at `path`, which must not exist.
    pub fn create(path: &Path, spec: NewVhdx<'_>) -> Result<Self> {
        Vhdx::create_in(ImageFile::create_new(path)?, spec)
    }

    /// Writes a new VHDX into the empty, writable `file`. A fixed disk's blocks are allocated
    /// but not written: the caller writes every byte (the file is extended, so unwritten ranges
    /// read as zeros).
    pub fn create_in(file: ImageFile, mut spec: NewVhdx<'_>) -> Result<Self> {
        // Every GUID of the new file comes from one settled identity, so headers written
        // again at the end repeat the first ones.
        spec.identity = spec.identity.settled();
        let path = file.path().to_path_buf();
        let plan = plan(&path, &spec)?;
        let mut bat = VhdxBat::new(plan.shape);
        if plan.fixed {
            for k in 0..plan.shape.payload_blocks {
                bat.set_payload(k, PayloadState::FullyPresent, plan.data_start + k * plan.block_size as u64);
            }
        }
        let end = if plan.fixed {
            plan.data_start + plan.shape.payload_blocks * plan.block_size as u64
        } else {
            plan.data_start
        };
        write_metadata(&file, &plan, &spec.identity)?;
        file.write_all_at(BAT_OFFSET, &bat.encode())?;
        file.set_len(end)?;
        write_headers(&file, &spec.identity)?;
        let own = FileId::of(&file.raw().metadata().map_err(|e| Error::open(&path, "stat", e))?);
        let parent = match &spec.kind {
            NewKind::Differencing { path, .. } => Some(path.to_path_buf()),
            _ => None,
        };
        let opts = OpenOptions { parent, format: Some(ImageFormat::Vhdx), ..OpenOptions::default() };
        let mut vhdx = Vhdx::open(file, &opts, &mut vec![own])?;
        vhdx.new_identity = spec.identity;
        Ok(vhdx)
    }

    /// Starts block `k` of a VHDX being written from scratch into a temporary file: its data
    /// goes at the end of the file through [`Self::append_data`]; `present` (one bit per
    /// logical sector, LSB first) marks a differencing block's own sectors, `None` all of them.
    pub fn append_begin(&mut self, k: u64, present: Option<Vec<u8>>) -> Result<()> {
        let stored = match self.bat.payload(k) {
            Ok((s, at)) if s.stored() => Some(at),
            _ => None,
        };
        if self.appending.is_some() || stored.is_some() != self.reserved {
            return Err(Error::internal(format!("VHDX block {k}: not a fresh block of this image")));
        }
        let at = stored.unwrap_or(self.file_len.div_ceil(ALIGNMENT) * ALIGNMENT);
        self.appending = Some((k, at, present));
        Ok(())
    }

    /// Writes `data` at `within` bytes into the block being appended.
    pub fn append_data(&mut self, within: u64, data: &[u8]) -> Result<()> {
        let Some((k, at, _)) = &self.appending else {
            return Err(Error::internal("VHDX block data written with no block begun"));
        };
        if within + data.len() as u64 > self.block_size() {
            return Err(Error::internal(format!("VHDX block {k}: data past the block's end")));
        }
        self.file.write_all_at(*at + within, data)
    }

    /// Ends the block being appended: with `keep`, the BAT will point at it; otherwise its
    /// space is taken by the next block (and cut off by [`Self::finish_appends`]).
    pub fn append_end(&mut self, keep: bool) -> Result<()> {
        let (k, at, present) =
            self.appending.take().ok_or_else(|| Error::internal("VHDX block ended with none begun"))?;
        if self.reserved {
            if !keep || present.is_some() {
                return Err(Error::internal(format!("VHDX block {k}: reserved, so it must be kept whole")));
            }
            self.file_len = self.file_len.max(at + self.block_size());
            return Ok(());
        }
        if !keep {
            return Ok(());
        }
        let full = present.as_ref().is_none_or(|bits| all_set(bits, self.logical_sectors_per_block()));
        if full {
            self.bat.set_payload(k, PayloadState::FullyPresent, at);
        } else {
            self.bat.set_payload(k, PayloadState::PartiallyPresent, at);
            let per_block = (self.logical_sectors_per_block() / 8) as usize;
            let chunk = k / self.bat.chunk_ratio();
            let bitmap = self.pending_bitmaps.entry(chunk).or_insert_with(|| vec![0u8; ALIGNMENT as usize]);
            let from = (k % self.bat.chunk_ratio()) as usize * per_block;
            if let Some(bits) = present {
                bitmap[from..from + per_block].copy_from_slice(&bits[..per_block]);
            }
        }
        self.file_len = at + self.block_size();
        Ok(())
    }

    /// Names in the BAT, before any block is appended, where each of `blocks` (in the order
    /// they will be appended, every block of a fixed disk) goes, writes the BAT, and so makes
    /// the file's metadata final: a stream can start to flow. Each block must then be appended
    /// whole and kept. Not for a differencing disk, whose sector bitmaps follow its blocks.
    pub fn reserve_appends(&mut self, blocks: &[u64]) -> Result<()> {
        if self.params.has_parent {
            return Err(Error::internal("a differencing VHDX cannot reserve its blocks"));
        }
        let bs = self.block_size();
        let fixed = self.params.leave_blocks_allocated;
        let mut at = self.file_len.div_ceil(ALIGNMENT) * ALIGNMENT;
        let data_start = if fixed { self.bat.payload(0).map_or(at, |(_, o)| o) } else { at };
        for &k in blocks {
            if !fixed {
                self.bat.set_payload(k, PayloadState::FullyPresent, at);
                at += bs;
            }
        }
        let region =
            *self.regions.find(BAT_REGION).ok_or_else(|| Error::internal("a new VHDX without its BAT region"))?;
        self.file.write_all_at(region.file_offset, &self.bat.encode())?;
        self.reserved = true;
        self.file.start_stream(data_start)
    }

    /// Writes `data` at disk offset `offset` of a fixed VHDX being written from scratch, after
    /// [`Self::reserve_appends`]: straight to the blocks the BAT names, no log session (nobody
    /// sees the file before it is committed).
    pub fn write_fresh(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let bs = self.block_size();
        for (k, within, range) in block_pieces(offset, data.len(), bs) {
            let at = match (self.reserved, self.bat.payload(k)) {
                (true, Ok((PayloadState::FullyPresent, at))) => at,
                _ => return Err(Error::internal(format!("VHDX block {k}: not a reserved block of a fixed disk"))),
            };
            self.file.write_all_at(at + within, &data[range])?;
            self.file_len = self.file_len.max(at + bs);
        }
        Ok(())
    }

    /// Writes the sector bitmaps of partially present blocks, the BAT and new headers after
    /// the appends, and cuts the file after the last block.
    pub fn finish_appends(&mut self) -> Result<()> {
        let bitmaps: BTreeMap<u64, Vec<u8>> = std::mem::take(&mut self.pending_bitmaps);
        for (chunk, bits) in bitmaps {
            let at = self.file_len.div_ceil(ALIGNMENT) * ALIGNMENT;
            self.file.write_all_at(at, &bits)?;
            self.bat.set_bitmap(chunk, Some(at));
            self.file_len = at + ALIGNMENT;
        }
        let region =
            *self.regions.find(BAT_REGION).ok_or_else(|| Error::internal("a new VHDX without its BAT region"))?;
        self.file.write_all_at(region.file_offset, &self.bat.encode())?;
        self.file.set_len(self.file_len)?;
        write_headers(&self.file, &self.new_identity)?;
        self.bitmaps.write().map_err(|_| Error::internal("bitmap cache poisoned"))?.clear();
        Ok(())
    }

    /// Logical sectors per block.
    fn logical_sectors_per_block(&self) -> u64 {
        self.block_size() / self.params.logical_sector_size as u64
    }
}

/// Whether the first `n` bits of `bits` are all set.
fn all_set(bits: &[u8], n: u64) -> bool {
    (0..n).all(|i| bits.get((i / 8) as usize).is_some_and(|b| b & (1 << (i % 8)) != 0))
}

/// Checks the request and computes the layout.
fn plan(path: &Path, spec: &NewVhdx<'_>) -> Result<Plan> {
    let refuse = |why: String| Err(Error::unsupported(path, why));
    let (size, sector, locator, differencing) = match &spec.kind {
        NewKind::Differencing { image, path: parent_path } => {
            let Some(parent) = image.as_vhdx() else {
                return refuse(format!(
                    "{} is not a VHDX: a VHDX child needs a VHDX parent (Hyper-V allows no VHD parent)",
                    parent_path.display()
                ));
            };
            let paths = crate::vhd::sparse::create::parent_paths(path, parent_path)?;
            let locator = ParentLocator {
                locator_type: metadata::VHDX_LOCATOR_TYPE,
                entries: vec![
                    (
                        "parent_linkage".into(),
                        format!("{{{}}}", parent.header().data_write_guid.to_string().to_lowercase()),
                    ),
                    ("relative_path".into(), paths.relative),
                ],
            };
            (image.len(), parent.parameters().logical_sector_size, Some(locator), true)
        }
        _ => (spec.size, spec.logical_sector_size, None, false),
    };
    if sector != 512 && sector != 4096 {
        return refuse(format!("logical sector size {sector} is neither 512 nor 4096"));
    }
    if size == 0 || size % sector as u64 != 0 || size > metadata::MAX_DISK_SIZE {
        return refuse(format!("disk size {size} must be a non-zero multiple of {sector} up to 64 TiB"));
    }
    let block_size = spec.block_size;
    if !block_size.is_power_of_two() || !(1 << 20..=256 << 20).contains(&block_size) {
        return refuse(format!("VHDX block size {block_size} must be a power of two from 1 MiB to 256 MiB"));
    }
    let shape = BatShape::of(size, block_size, sector, differencing);
    let bat_length = (shape.entries * 8).div_ceil(ALIGNMENT) * ALIGNMENT;
    Ok(Plan {
        size,
        block_size,
        sector,
        shape,
        bat_length,
        data_start: BAT_OFFSET + bat_length,
        differencing,
        fixed: matches!(spec.kind, NewKind::Fixed),
        locator,
    })
}

/// The identifier, the region tables and the metadata region.
fn write_metadata(file: &ImageFile, p: &Plan, identity: &Identity) -> Result<()> {
    let mut ident = vec![0u8; 520];
    ident[..8].copy_from_slice(FILE_SIGNATURE);
    let creator: Vec<u8> =
        format!("vhdkit {}", env!("CARGO_PKG_VERSION")).encode_utf16().flat_map(u16::to_le_bytes).collect();
    ident[8..8 + creator.len()].copy_from_slice(&creator);
    file.write_all_at(0, &ident)?;
    let regions = RegionTable {
        entries: vec![
            RegionEntry {
                guid: METADATA_REGION,
                file_offset: METADATA_OFFSET,
                length: METADATA_LENGTH,
                required: true,
            },
            RegionEntry { guid: BAT_REGION, file_offset: BAT_OFFSET, length: p.bat_length as u32, required: true },
        ],
    };
    let table = regions.encode();
    for at in REGION_TABLE_OFFSETS {
        file.write_all_at(at, &table)?;
    }
    let flags = u32::from(p.fixed) | u32::from(p.differencing) << 1;
    let mut items: Vec<(MetadataEntry, Vec<u8>)> = vec![
        (entry(metadata::FILE_PARAMETERS, false), [p.block_size.to_le_bytes(), flags.to_le_bytes()].concat()),
        (entry(metadata::VIRTUAL_DISK_SIZE, true), p.size.to_le_bytes().to_vec()),
        (entry(metadata::VIRTUAL_DISK_ID, true), identity.guid("vhdx virtual disk id").0.to_vec()),
        (entry(metadata::LOGICAL_SECTOR_SIZE, true), p.sector.to_le_bytes().to_vec()),
        (entry(metadata::PHYSICAL_SECTOR_SIZE, true), p.sector.to_le_bytes().to_vec()),
    ];
    if let Some(l) = &p.locator {
        items.push((entry(metadata::PARENT_LOCATOR, false), l.encode()));
    }
    let mut region = vec![0u8; METADATA_LENGTH as usize];
    let mut at = metadata::TABLE_SIZE as u32;
    let mut entries = Vec::new();
    for (mut e, value) in items {
        e.offset = at;
        e.length = value.len() as u32;
        region[at as usize..at as usize + value.len()].copy_from_slice(&value);
        at += value.len() as u32;
        entries.push(e);
    }
    region[..metadata::TABLE_SIZE].copy_from_slice(&metadata::encode_table(&entries));
    file.write_all_at(METADATA_OFFSET, &region)
}

/// A required system metadata entry (offset and length filled in later).
fn entry(item: Guid, is_virtual_disk: bool) -> MetadataEntry {
    MetadataEntry { item, offset: 0, length: 0, is_user: false, is_virtual_disk, is_required: true }
}

/// Both headers, the second current, with no log and write GUIDs from `identity`.
fn write_headers(file: &ImageFile, identity: &Identity) -> Result<()> {
    let file_write_guid = identity.guid("vhdx file write guid");
    let data_write_guid = identity.guid("vhdx data write guid");
    for (i, at) in HEADER_OFFSETS.iter().enumerate() {
        let h = VhdxHeader {
            slot: i as u8 + 1,
            sequence_number: i as u64 + 1,
            file_write_guid,
            data_write_guid,
            log_guid: Guid::default(),
            log_version: 0,
            version: 1,
            log_length: LOG_LENGTH,
            log_offset: LOG_OFFSET,
            checksum: 0,
        };
        file.write_all_at(*at, &h.encode())?;
    }
    Ok(())
}
