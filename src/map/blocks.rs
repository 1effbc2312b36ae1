//! Classifying VHD blocks: which hold bytes that are needed, and which may be dropped.
//!
//! A byte is needed when it lies in an NTFS cluster that `$Bitmap` marks allocated or any file
//! owns, in an NTFS backup boot sector, or outside every readable NTFS volume's clusters (MBR,
//! gaps, boot loaders, other partitions) and is not zero. In a differencing image a present
//! sector outside NTFS clusters is needed even when zero: dropping it would expose the parent.

use std::collections::HashMap;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::Result;
use crate::map::{Contents, ImageMap};
use crate::vhd::bitmap::SectorBitmap;
use crate::vhd::device::BlockDevice;
use crate::vhd::image::DiskImage;

/// Blocks of fixed and raw images are counted in 2 MiB units, like dynamic ones.
pub const RAW_BLOCK_SIZE: u64 = 2 << 20;

/// How a block looks at a glance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
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
}

/// A file owning clusters of a block.
#[derive(Clone, Debug, Serialize)]
pub struct BlockOwner {
    pub partition: u32,
    pub mft_record: u64,
    pub path: String,
    pub clusters: u64,
}

/// One block's classification.
#[derive(Clone, Debug, Serialize)]
pub struct BlockInfo {
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
    /// Holds an NTFS backup boot sector.
    pub backup_boot_sector: bool,
    pub droppable: bool,
    pub state: BlockState,
    /// Up to three files owning the most clusters of the block.
    pub top_owners: Vec<BlockOwner>,
}

/// A disk byte range and what decides whether it is needed.
enum Span {
    /// NTFS clusters `[first, last)` of partition map entry `part`.
    Clusters { part: usize, first: u64, last: u64 },
    /// An NTFS backup boot sector: always needed.
    BackupBootSector,
    /// Anything else: needed when non-zero (or present in a differencing child).
    Outside,
}

impl ImageMap<'_> {
    /// Block size used for classification.
    pub fn block_size(&self) -> u64 {
        self.image.as_sparse().map_or(RAW_BLOCK_SIZE, |s| s.block_size())
    }

    /// Number of blocks the disk spans.
    pub fn block_count(&self) -> u64 {
        self.image.len().div_ceil(self.block_size())
    }

    /// Splits disk range `[start, end)` into spans by what decides neededness.
    fn spans(&self, start: u64, end: u64) -> Vec<(u64, u64, Span)> {
        let mut cuts: Vec<(u64, u64, Span)> = Vec::new();
        for (i, pm) in self.partitions.iter().enumerate() {
            let Contents::Ntfs(idx) = &pm.contents else { continue };
            let p0 = pm.partition.start();
            let cs = idx.cluster_size();
            let clusters_end = p0 + idx.total_clusters() * cs;
            let (a, b) = (start.max(p0), end.min(clusters_end));
            if a < b {
                cuts.push((a, b, Span::Clusters { part: i, first: (a - p0) / cs, last: (b - p0).div_ceil(cs) }));
            }
            let backup = p0 + idx.bpb.volume_bytes();
            let (a, b) = (start.max(backup), end.min(backup + idx.bpb.bytes_per_sector as u64).min(pm.partition.end()));
            if a < b {
                cuts.push((a, b, Span::BackupBootSector));
            }
        }
        cuts.sort_by_key(|c| c.0);
        let mut out = Vec::new();
        let mut at = start;
        for c in cuts {
            if c.0 > at {
                out.push((at, c.0, Span::Outside));
            }
            at = at.max(c.1);
            out.push(c);
        }
        if at < end {
            out.push((at, end, Span::Outside));
        }
        out
    }

    /// Classifies block `index`.
    pub fn block_info(&self, index: u64) -> Result<BlockInfo> {
        let bs = self.block_size();
        let start = index * bs;
        let end = (start + bs).min(self.image.len());
        let sparse = self.image.as_sparse();
        let (allocated, bitmap) = match sparse {
            Some(s) => match s.block_bitmap(index)? {
                Some(b) => (true, Some(b)),
                None => (false, None),
            },
            None => (true, None),
        };
        let differencing = sparse.is_some_and(|s| s.parent().is_some() || s.missing_parent().is_some());
        let present = |a: u64, b: u64| -> bool {
            match &bitmap {
                None => allocated,
                Some(bm) => bm.runs(((a - start) / 512) as u32, (b - start).div_ceil(512) as u32).iter().any(|r| r.2),
            }
        };
        let mut info = BlockInfo {
            index,
            offset: start,
            allocated,
            sectors_present: bitmap.as_ref().map_or(if allocated { ((end - start) / 512) as u32 } else { 0 }, SectorBitmap::count),
            used_clusters: 0,
            ntfs_clusters: 0,
            outside_ntfs_needed: false,
            backup_boot_sector: false,
            droppable: false,
            state: BlockState::Unallocated,
            top_owners: Vec::new(),
        };
        let mut owners: HashMap<(u32, u64), (String, u64)> = HashMap::new();
        let mut metadata_only = true;
        let mut needed = false;
        for (a, b, span) in self.spans(start, end) {
            match span {
                Span::Clusters { part, first, last } => {
                    let pm = &self.partitions[part];
                    let Contents::Ntfs(idx) = &pm.contents else { continue };
                    info.ntfs_clusters += last - first;
                    let used = idx.needed_count(first, last);
                    info.used_clusters += used;
                    if used > 0 && allocated {
                        // Only needed clusters that a present sector touches count: an absent
                        // sector reads the same (zeros, or the parent) whether the block stays.
                        let cs = idx.cluster_size();
                        let p0 = pm.partition.start();
                        needed |= idx
                            .needed_ranges(first, last)
                            .iter()
                            .any(|&(x, y)| present((p0 + x * cs).max(a), (p0 + y * cs).min(b)));
                    }
                    for (x, y, ids) in idx.owners.segments_in(first, last) {
                        for &id in ids {
                            let f = &idx.files[idx.owner(id).file as usize];
                            metadata_only &= f.is_metadata();
                            owners
                                .entry((pm.partition.index, f.record))
                                .or_insert_with(|| (idx.path(f, 0), 0))
                                .1 += y - x;
                        }
                    }
                    if used > idx.owners.owned_count(first, last) {
                        metadata_only = false;
                    }
                }
                Span::BackupBootSector => {
                    info.backup_boot_sector = true;
                    needed |= allocated && present(a, b);
                }
                Span::Outside => {
                    let holds = if differencing { present(a, b) } else { allocated && !self.is_zero(a, b)? };
                    if holds {
                        info.outside_ntfs_needed = true;
                        needed = true;
                    }
                }
            }
        }
        let mut top: Vec<BlockOwner> = owners
            .into_iter()
            .map(|((partition, mft_record), (path, clusters))| BlockOwner { partition, mft_record, path, clusters })
            .collect();
        top.sort_by(|x, y| y.clusters.cmp(&x.clusters).then(x.mft_record.cmp(&y.mft_record)));
        top.truncate(3);
        info.top_owners = top;
        info.droppable = !needed;
        info.state = if !allocated {
            BlockState::Unallocated
        } else if !needed {
            BlockState::Droppable
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

    /// Whether disk bytes `[a, b)` are all zero.
    fn is_zero(&self, a: u64, b: u64) -> Result<bool> {
        is_zero_range(self.image, a, b)
    }

    /// Every block, classified in parallel.
    pub fn classify_blocks(&self) -> Result<Vec<BlockInfo>> {
        (0..self.block_count()).into_par_iter().map(|b| self.block_info(b)).collect()
    }
}

/// Whether `[a, b)` of `image` reads as zeros (in 1 MiB reads).
pub fn is_zero_range(image: &DiskImage, a: u64, b: u64) -> Result<bool> {
    let mut buf = vec![0u8; (b - a).min(1 << 20) as usize];
    let mut at = a;
    while at < b {
        let n = ((b - at) as usize).min(buf.len());
        image.read_at(at, &mut buf[..n])?;
        if buf[..n].iter().any(|&x| x != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}
