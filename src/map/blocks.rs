//! Which disk bytes are needed, and which VHD blocks may therefore be dropped.
//!
//! A byte is needed when it lies in an NTFS cluster that `$Bitmap` marks allocated or any file
//! owns, in an NTFS backup boot sector, or outside every readable NTFS volume's clusters (MBR,
//! gaps, boot loaders, other partitions) and is not zero. In a differencing image a present
//! sector outside NTFS clusters is needed even when zero: dropping it would expose the parent.

use std::collections::HashMap;

use rayon::prelude::*;
use serde::Serialize;

use crate::disk::PartitionView;
use crate::error::Result;
use crate::map::{Contents, ImageMap};
use crate::vhd::bitmap::SectorBitmap;
use crate::vhd::device::BlockDevice;
use crate::vhd::image::DiskImage;

/// Blocks of fixed and raw images are counted in 2 MiB units, like dynamic ones.
pub const RAW_BLOCK_SIZE: u64 = 2 << 20;
/// The smallest block any output can have (a VHDX's 1 MiB): data outside NTFS is judged in
/// pieces this size, so what a smaller block size would keep is exact.
pub const SMALLEST_BLOCK: u64 = 1 << 20;

/// What decides whether a byte range is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeedKind {
    /// NTFS clusters allocated in `$Bitmap` or owned by a file: always needed.
    NeededCluster,
    /// Never needed: free NTFS clusters, and the gaps a realignment opens between partitions.
    Unneeded,
    /// An NTFS backup boot sector: always needed.
    BackupBootSector,
    /// Outside every readable volume's clusters: needed when it holds data.
    Outside,
    /// A volume vhdkit keeps whole (encrypted, ReFS): always needed.
    KeptWhole,
}

/// A disk byte range `[start, end)` of one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    pub start: u64,
    pub end: u64,
    pub kind: NeedKind,
}

/// How a block looks at a glance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum BlockState {
    /// Not present in the container (reads as zeros or from the parent).
    Unallocated,
    /// Present, but no byte of it is needed.
    Droppable,
    /// Every cluster touching it is needed.
    Used,
    /// Some clusters needed, some free.
    Partial,
    /// Needed only for NTFS metadata ($MFT, $LogFile..., the backup boot sector).
    Metadata,
    /// Needed only for bytes outside NTFS clusters (MBR, boot loader, other partitions).
    OutsideNtfs,
    /// Part of a volume kept whole (encrypted, ReFS).
    KeptWhole,
}

/// A file owning clusters of a block.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BlockOwner {
    pub partition: u32,
    pub mft_record: u64,
    pub path: String,
    pub clusters: u64,
}

/// One block's classification.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BlockInfo {
    #[serde(rename = "block")]
    pub index: u64,
    /// Disk offset of the block.
    pub offset: u64,
    /// Present in the container.
    pub allocated: bool,
    pub sectors_present: u32,
    /// Needed NTFS clusters touching the block.
    pub used_clusters: u64,
    /// All NTFS clusters touching the block.
    pub ntfs_clusters: u64,
    /// Needed bytes outside NTFS clusters (non-zero, or present in a differencing child).
    pub outside_ntfs_needed: bool,
    /// Holds an NTFS backup boot sector (`dump` says whether it matches).
    pub holds_backup_boot_sector: bool,
    pub droppable: bool,
    pub state: BlockState,
    /// Bytes of the block compaction must keep, and their share of the block.
    pub needed_bytes: u64,
    pub used_fraction: f64,
    /// Up to three files owning the most clusters of the block.
    pub top_owners: Vec<BlockOwner>,
    /// The kept byte ranges (disk offsets), for what smaller blocks would keep.
    #[serde(skip)]
    pub kept: Vec<(u64, u64)>,
}

/// What compaction would keep with blocks of one size: an upper bound, as compaction also
/// drops the blocks whose needed bytes all read as zeros, and this reads no cluster data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct KeptAtBlockSize {
    /// The block size.
    pub block_size: u64,
    /// Blocks of that size holding a needed byte.
    pub kept_blocks: u64,
    /// Their bytes.
    pub kept_bytes: u64,
    /// Bytes the image stores now, less the kept bytes.
    pub freed_bytes: u64,
}

/// The block sizes worth comparing with `block_size`: itself, then each smaller power of two
/// down to [`SMALLEST_BLOCK`].
pub fn smaller_block_sizes(block_size: u64) -> Vec<u64> {
    std::iter::successors(Some(block_size), |&b| (b / 2 >= SMALLEST_BLOCK && b % 2 == 0).then_some(b / 2)).collect()
}

/// What blocks of each of `sizes` (each dividing the image's block size) would keep, given
/// the kept ranges of every stored block, and the bytes stored now.
pub fn kept_at_sizes<'a>(
    kept: impl Iterator<Item = &'a [(u64, u64)]>,
    sizes: &[u64],
    stored_bytes: u64,
) -> Vec<KeptAtBlockSize> {
    let mut blocks = vec![0u64; sizes.len()];
    for ranges in kept {
        for (count, &size) in blocks.iter_mut().zip(sizes) {
            *count += blocks_touched(ranges, size).len() as u64;
        }
    }
    sizes
        .iter()
        .zip(blocks)
        .map(|(&block_size, kept_blocks)| KeptAtBlockSize {
            block_size,
            kept_blocks,
            kept_bytes: kept_blocks * block_size,
            freed_bytes: stored_bytes.saturating_sub(kept_blocks * block_size),
        })
        .collect()
}

/// The clusters `[first, last)` of partition map entry `part` inside a disk range.
struct ClusterSpan {
    part: usize,
    start: u64,
    end: u64,
    first: u64,
    last: u64,
}

/// Which sectors of a disk range the container holds.
pub struct Presence {
    start: u64,
    allocated: bool,
    bitmap: Option<SectorBitmap>,
}

impl Presence {
    /// Whether any sector of disk range `[a, b)` is present.
    pub fn any(&self, a: u64, b: u64) -> bool {
        match &self.bitmap {
            None => self.allocated,
            Some(bm) => {
                let (first, last) = SectorBitmap::bits_of(a - self.start, b - self.start);
                bm.runs(first, last).iter().any(|r| r.2)
            }
        }
    }
}

impl ImageMap<'_> {
    /// Block size used for classification.
    pub fn block_size(&self) -> u64 {
        self.image.block_size().unwrap_or(RAW_BLOCK_SIZE)
    }

    /// Number of blocks the disk spans.
    pub fn block_count(&self) -> u64 {
        self.image.len().div_ceil(self.block_size())
    }

    /// Whether the image is a differencing one (absent sectors read the parent).
    pub fn differencing(&self) -> bool {
        self.image.differencing()
    }

    /// The readable NTFS cluster spans inside `[start, end)`.
    fn cluster_spans(&self, start: u64, end: u64) -> Vec<ClusterSpan> {
        let mut out = Vec::new();
        for (part, pm) in self.partitions.iter().enumerate() {
            let Contents::Ntfs(idx) = &pm.contents else { continue };
            let p0 = pm.partition.start();
            let cs = idx.cluster_size();
            let (a, b) = (start.max(p0), end.min(p0 + idx.total_clusters() * cs));
            if a < b {
                out.push(ClusterSpan { part, start: a, end: b, first: (a - p0) / cs, last: (b - p0).div_ceil(cs) });
            }
        }
        out
    }

    /// Splits `[start, end)` into disjoint ranges by what decides whether they are needed.
    pub fn needs(&self, start: u64, end: u64) -> Vec<Need> {
        let mut cuts: Vec<Need> = Vec::new();
        for span in self.cluster_spans(start, end) {
            let pm = &self.partitions[span.part];
            let Contents::Ntfs(idx) = &pm.contents else { continue };
            let (p0, cs) = (pm.partition.start(), idx.cluster_size());
            let mut at = span.start;
            for (x, y) in idx.needed_ranges(span.first, span.last) {
                let (a, b) = ((p0 + x * cs).max(span.start), (p0 + y * cs).min(span.end));
                if a > at {
                    cuts.push(Need { start: at, end: a, kind: NeedKind::Unneeded });
                }
                cuts.push(Need { start: a, end: b, kind: NeedKind::NeededCluster });
                at = b;
            }
            if at < span.end {
                cuts.push(Need { start: at, end: span.end, kind: NeedKind::Unneeded });
            }
        }
        for pm in self.partitions.iter().filter(|pm| pm.kept_whole()) {
            let (a, b) = (start.max(pm.partition.start()), end.min(pm.partition.end()));
            if a < b {
                cuts.push(Need { start: a, end: b, kind: NeedKind::KeptWhole });
            }
        }
        for pm in &self.partitions {
            let Contents::Ntfs(idx) = &pm.contents else { continue };
            let backup = pm.partition.start() + idx.bpb.volume_bytes();
            let (a, b) = (start.max(backup), end.min(backup + idx.bpb.bytes_per_sector as u64).min(pm.partition.end()));
            if a < b {
                cuts.push(Need { start: a, end: b, kind: NeedKind::BackupBootSector });
            }
        }
        cuts.sort_by_key(|c| c.start);
        let mut out = Vec::with_capacity(cuts.len() + 2);
        let mut at = start;
        for c in cuts {
            if c.start > at {
                out.push(Need { start: at, end: c.start, kind: NeedKind::Outside });
            }
            at = at.max(c.end);
            out.push(c);
        }
        if at < end {
            out.push(Need { start: at, end, kind: NeedKind::Outside });
        }
        out
    }

    /// Which sectors of block `index` (of [`Self::block_size`]) the container holds.
    pub fn presence(&self, index: u64) -> Result<Presence> {
        let start = index * self.block_size();
        Ok(match self.image.block_size() {
            Some(_) => match self.image.block_sectors(index)? {
                Some(b) => Presence { start, allocated: true, bitmap: Some(b) },
                None => Presence { start, allocated: false, bitmap: None },
            },
            None => Presence { start, allocated: true, bitmap: None },
        })
    }

    /// Whether the container holds a needed byte of `n` (reading it, outside NTFS).
    pub fn needed(&self, n: &Need, presence: &Presence) -> Result<bool> {
        Ok(match n.kind {
            NeedKind::Unneeded => false,
            NeedKind::NeededCluster | NeedKind::BackupBootSector | NeedKind::KeptWhole => presence.any(n.start, n.end),
            NeedKind::Outside if self.differencing() => presence.any(n.start, n.end),
            NeedKind::Outside => presence.allocated && !is_zero_range(self.image, n.start, n.end)?,
        })
    }

    /// The needs of block `index` that compaction keeps, in order. Data outside NTFS is judged
    /// in pieces of [`SMALLEST_BLOCK`], so a zero piece next to a boot loader is not kept.
    pub fn kept_needs(&self, index: u64, presence: &Presence) -> Result<Vec<Need>> {
        let start = index * self.block_size();
        let end = (start + self.block_size()).min(self.image.len());
        let mut out = Vec::new();
        for n in self.needs(start, end) {
            if n.kind != NeedKind::Outside || self.differencing() {
                if self.needed(&n, presence)? {
                    out.push(n);
                }
                continue;
            }
            let mut a = n.start;
            while a < n.end {
                let b = ((a / SMALLEST_BLOCK + 1) * SMALLEST_BLOCK).min(n.end);
                let piece = Need { start: a, end: b, kind: n.kind };
                if self.needed(&piece, presence)? {
                    out.push(piece);
                }
                a = b;
            }
        }
        Ok(out)
    }

    /// What compaction would keep with each block size from the image's down to
    /// [`SMALLEST_BLOCK`], looking only at the blocks that hold data.
    pub fn kept_by_block_size(&self) -> Result<Vec<KeptAtBlockSize>> {
        let per_block: Vec<(bool, Vec<(u64, u64)>)> = self
            .data_blocks()?
            .into_par_iter()
            .map(|b| {
                let presence = self.presence(b)?;
                let kept = self.kept_needs(b, &presence)?.iter().map(|n| (n.start, n.end)).collect();
                Ok((presence.allocated, kept))
            })
            .collect::<Result<_>>()?;
        let stored = per_block.iter().filter(|(allocated, _)| *allocated).count() as u64 * self.block_size();
        Ok(kept_at_sizes(per_block.iter().map(|(_, k)| k.as_slice()), &smaller_block_sizes(self.block_size()), stored))
    }

    /// A file holding `clusters` of a block, with its path.
    fn block_owner(&self, part: usize, mft_record: u64, clusters: u64) -> BlockOwner {
        let pm = &self.partitions[part];
        let path = match &pm.contents {
            Contents::Ntfs(idx) => idx.path_of_record(&PartitionView::new(self.image, &pm.partition), mft_record),
            _ => String::new(),
        };
        BlockOwner { partition: pm.partition.index, mft_record, path, clusters }
    }

    /// Classifies block `index`.
    pub fn block_info(&self, index: u64) -> Result<BlockInfo> {
        let bs = self.block_size();
        let start = index * bs;
        let end = (start + bs).min(self.image.len());
        let presence = self.presence(index)?;
        let needs = self.needs(start, end);
        let kept_needs = self.kept_needs(index, &presence)?;
        let needed = !kept_needs.is_empty();
        let outside_ntfs_needed = kept_needs.iter().any(|n| n.kind == NeedKind::Outside);
        let kept_whole = kept_needs.iter().any(|n| n.kind == NeedKind::KeptWhole);
        let kept: Vec<(u64, u64)> = kept_needs.iter().map(|n| (n.start, n.end)).collect();
        let needed_bytes: u64 = kept.iter().map(|(a, b)| b - a).sum();
        let mut info = BlockInfo {
            index,
            offset: start,
            allocated: presence.allocated,
            sectors_present: match &presence.bitmap {
                Some(b) => b.count(),
                None if presence.allocated => ((end - start) / 512) as u32,
                None => 0,
            },
            used_clusters: 0,
            ntfs_clusters: 0,
            outside_ntfs_needed,
            holds_backup_boot_sector: needs.iter().any(|n| n.kind == NeedKind::BackupBootSector),
            droppable: !needed,
            state: BlockState::Unallocated,
            needed_bytes,
            used_fraction: if end > start { needed_bytes as f64 / (end - start) as f64 } else { 0.0 },
            top_owners: Vec::new(),
            kept,
        };
        // Clusters by (partition map, file record); names only for the three shown.
        let mut owners: HashMap<(usize, u64), u64> = HashMap::new();
        let mut metadata_only = true;
        for span in self.cluster_spans(start, end) {
            let pm = &self.partitions[span.part];
            let Contents::Ntfs(idx) = &pm.contents else { continue };
            info.ntfs_clusters += span.last - span.first;
            let used = idx.needed_count(span.first, span.last);
            info.used_clusters += used;
            for (x, y, ids) in idx.owners.segments_in(span.first, span.last) {
                for &id in ids {
                    let record = idx.owner(id).record;
                    metadata_only &= idx.file(record).is_some_and(|f| f.is_metadata());
                    *owners.entry((span.part, record)).or_default() += y - x;
                }
            }
            if used > idx.owners.owned_count(span.first, span.last) {
                metadata_only = false;
            }
        }
        let mut top: Vec<((usize, u64), u64)> = owners.into_iter().collect();
        top.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.1.cmp(&y.0.1)).then(x.0.0.cmp(&y.0.0)));
        top.truncate(3);
        info.top_owners = top
            .into_iter()
            .map(|((part, mft_record), clusters)| self.block_owner(part, mft_record, clusters))
            .collect();
        info.state = if !presence.allocated {
            BlockState::Unallocated
        } else if !needed {
            BlockState::Droppable
        } else if kept_whole && info.used_clusters == 0 {
            BlockState::KeptWhole
        } else if info.outside_ntfs_needed && info.used_clusters == 0 {
            BlockState::OutsideNtfs
        } else if metadata_only && !info.outside_ntfs_needed {
            BlockState::Metadata
        } else if info.used_clusters == info.ntfs_clusters && !info.outside_ntfs_needed {
            BlockState::Used
        } else {
            BlockState::Partial
        };
        Ok(info)
    }

    /// The blocks that may hold data (the others are unallocated, or holes of a sparse file).
    pub fn data_blocks(&self) -> Result<Vec<u64>> {
        data_blocks(self.image, self.block_size())
    }

    /// Every block, classified in parallel.
    pub fn classify_blocks(&self) -> Result<Vec<BlockInfo>> {
        (0..self.block_count()).into_par_iter().map(|b| self.block_info(b)).collect()
    }
}

/// The blocks of `block_size` bytes of `device` that may hold data (the others are
/// unallocated, or holes of a sparse file), in order.
pub fn data_blocks(device: &(impl BlockDevice + ?Sized), block_size: u64) -> Result<Vec<u64>> {
    Ok(blocks_touched(&device.data_ranges(0, device.len())?, block_size))
}

/// The blocks of `block_size` bytes that sorted `ranges` touch, in order.
pub fn blocks_touched(ranges: &[(u64, u64)], block_size: u64) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    for &(a, b) in ranges {
        let first = (a / block_size).max(out.last().map_or(0, |l| l + 1));
        out.extend(first..b.div_ceil(block_size));
    }
    out
}

/// Whether `[a, b)` of `image` reads as zeros (in 1 MiB reads of the ranges that may hold
/// data; unallocated blocks and holes are not read).
pub fn is_zero_range(image: &DiskImage, a: u64, b: u64) -> Result<bool> {
    let mut buf = Vec::new();
    for (x, y) in image.data_ranges(a, b)? {
        let mut at = x;
        while at < y {
            let n = (y - at).min(1 << 20) as usize;
            buf.resize(n, 0);
            image.read_at(at, &mut buf)?;
            if buf.iter().any(|&v| v != 0) {
                return Ok(false);
            }
            at += n as u64;
        }
    }
    Ok(true)
}
