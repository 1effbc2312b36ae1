//! The compaction plan: for every output block, whether it is stored, which of its sectors are
//! present, and which byte ranges are zeroed. Pure: it reads the map, never the data, and never
//! writes.
//!
//! A block is dropped only when no byte of it is needed (see [`crate::map::blocks`]): no
//! cluster allocated in `$Bitmap` or owned by any attribute of any file, no backup boot
//! sector, nothing outside readable NTFS volumes that holds data. Unreadable NTFS partitions
//! and other file systems count as "outside": only their zero blocks are dropped.

use std::path::PathBuf;

use rayon::prelude::*;
use serde::Serialize;

use crate::disk::Scheme;
use crate::error::{Error, Remedy, Result};
use crate::map::ImageMap;
use crate::map::blocks::{Need, NeedKind, Presence, blocks_touched};
use crate::pass::align::{self, RealignedDisk, Realignment};
use crate::vhd::bitmap::SectorBitmap;
use crate::vhd::device::BlockDevice;
use crate::vhd::fixed::MAX_FIXED_SIZE;
use crate::vhd::image::ImageKind;
use crate::vhd::sparse::{DEFAULT_BLOCK_SIZE, MAX_DISK_SIZE};

/// Smallest disk Azure accepts.
pub const AZURE_MIN_SIZE: u64 = 20 << 20;
/// Largest disk Azure accepts (32 TiB, footer included).
pub const AZURE_MAX_SIZE: u64 = MAX_FIXED_SIZE;

/// The kinds of image compaction writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// Raw data then a footer, every byte written.
    Fixed,
    /// Only needed blocks stored.
    Dynamic,
    /// A child of the input's parent holding only the input's needed sectors.
    Differencing,
}

/// What the user asked for.
#[derive(Clone, Debug, Default)]
pub struct CompactOptions {
    /// Output kind; `None` keeps the input's (raw input becomes dynamic).
    pub to: Option<OutputFormat>,
    /// Fixed output, size rounded up to a whole MiB, CHS recomputed, Azure's limits checked.
    pub azure: bool,
    /// Block size of a dynamic output.
    pub block_size: Option<u32>,
    /// Write zeros over free clusters of kept blocks.
    pub zero_free: bool,
    /// Make a standalone image of a differencing chain.
    pub merge: bool,
    /// Compact dirty or hibernated volumes anyway (and realign when a Windows record of a
    /// partition offset cannot be patched).
    pub force: bool,
    /// Move misaligned partitions to this boundary (bytes) in the output.
    pub realign: Option<u64>,
}

/// A block the output stores; every other block is dropped (reads as zeros, or in a
/// differencing output from the parent; a fixed output writes zeros there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBlock {
    pub index: u64,
    /// Which sectors are present (differencing output only).
    pub bitmap: Option<SectorBitmap>,
    /// Byte ranges inside the block written as zeros (free clusters, with --zero-free).
    pub zero: Vec<(u64, u64)>,
}

/// A partition's share of the plan, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionPlan {
    pub index: u32,
    /// "ntfs", "unreadable ntfs" (kept but for zero blocks), or the file system found
    /// ("fat32", "bitlocker", "ext4", "unknown"...).
    pub contents: &'static str,
    /// Every byte is kept, zero blocks included (encrypted volumes, ReFS).
    pub kept_whole: bool,
    pub problem: Option<String>,
    /// Blocks overlapping the partition that the input holds and the plan drops.
    pub dropped_blocks: u64,
}

/// The whole plan. Only blocks that may hold data are looked at: work and memory grow with
/// the data, not with the disk's size.
#[derive(Clone, Debug)]
pub struct CompactionPlan {
    pub format: OutputFormat,
    /// Length of the output disk (Azure rounding may grow it past the input's).
    pub disk_size: u64,
    pub block_size: u64,
    /// For a differencing output: the parent the child keeps.
    pub parent: Option<PathBuf>,
    /// The blocks stored, in order.
    pub stored: Vec<StoredBlock>,
    /// Blocks that held data in the input and are dropped, in order.
    pub dropped: Vec<u64>,
    pub partitions: Vec<PartitionPlan>,
    /// With --realign: where the partitions go; the output is the realigned disk.
    pub realignment: Option<Realignment>,
}

impl CompactionPlan {
    /// Number of blocks of the output disk.
    pub fn blocks(&self) -> u64 {
        self.disk_size.div_ceil(self.block_size)
    }

    /// Blocks the writer writes: every block of a fixed output, the stored ones otherwise.
    pub fn blocks_written(&self) -> u64 {
        match self.format {
            OutputFormat::Fixed => self.blocks(),
            _ => self.stored.len() as u64,
        }
    }

    /// Blocks the input holds that the plan drops.
    pub fn dropped(&self) -> u64 {
        self.dropped.len() as u64
    }

    /// The plan for block `b`, if it is stored.
    pub fn stored_block(&self, b: u64) -> Option<&StoredBlock> {
        self.stored.binary_search_by_key(&b, |s| s.index).ok().map(|i| &self.stored[i])
    }

    /// Bytes the plan zeroes inside stored blocks.
    pub fn zeroed_bytes(&self) -> u64 {
        self.stored.iter().flat_map(|s| &s.zero).map(|(a, b)| b - a).sum()
    }
}

/// The output kind and block size for `opts` on this input.
fn output_kind(map: &ImageMap<'_>, opts: &CompactOptions) -> Result<(OutputFormat, u64)> {
    let input = map.image.kind();
    let differencing_in = input == ImageKind::Differencing;
    let format = match (opts.to, opts.azure) {
        (Some(OutputFormat::Dynamic | OutputFormat::Differencing), true) => {
            return Err(Error::Usage(
                "Azure output is a fixed image: it cannot also be dynamic or differencing".into(),
            ));
        }
        (_, true) => OutputFormat::Fixed,
        (Some(f), false) => f,
        // Compaction shrinks: a fixed or raw input becomes dynamic unless fixed is asked for.
        (None, false) if differencing_in && !opts.merge => OutputFormat::Differencing,
        (None, false) => OutputFormat::Dynamic,
    };
    if format == OutputFormat::Differencing && (!differencing_in || opts.merge) {
        return Err(Error::Usage(if opts.merge {
            "merging makes a standalone image: choose a dynamic or fixed output".into()
        } else {
            format!("a differencing output needs a differencing input ({} is {input})", map.image.source().display())
        }));
    }
    if differencing_in && format != OutputFormat::Differencing && !opts.merge {
        return Err(Error::Refused {
            file: map.image.source().to_path_buf(),
            problem: "is a differencing image: a standalone output holds the whole chain merged".into(),
            remedy: Remedy::Merge,
        });
    }
    let input_block = map.image.as_sparse().map(|s| s.block_size());
    let block_size = match (format, opts.block_size) {
        (OutputFormat::Differencing, Some(b)) if Some(b as u64) != input_block => {
            return Err(Error::Usage("a differencing output keeps the input's block size".into()));
        }
        (_, Some(b)) => b as u64,
        (OutputFormat::Fixed, None) => crate::map::blocks::RAW_BLOCK_SIZE,
        (_, None) => input_block.unwrap_or(DEFAULT_BLOCK_SIZE as u64),
    };
    Ok((format, block_size))
}

/// The output disk size: `size` (the input's, or the realigned disk's) in whole sectors (a raw
/// input's last partial sector is padded with zeros), or for Azure rounded up to a whole MiB
/// within limits.
fn output_size(map: &ImageMap<'_>, size: u64, opts: &CompactOptions, format: OutputFormat) -> Result<u64> {
    let size = size.div_ceil(512) * 512;
    let limit = if format == OutputFormat::Fixed { MAX_FIXED_SIZE } else { MAX_DISK_SIZE };
    if !opts.azure {
        if size > limit {
            return Err(Error::unsupported(
                map.image.source(),
                format!("a {format:?} VHD holds at most {limit} bytes; the disk has {size}").to_lowercase(),
            ));
        }
        return Ok(size);
    }
    let rounded = size.div_ceil(1 << 20) << 20;
    if !(AZURE_MIN_SIZE..=AZURE_MAX_SIZE).contains(&rounded) {
        return Err(Error::unsupported(
            map.image.source(),
            format!(
                "Azure accepts disks of {AZURE_MIN_SIZE} to {AZURE_MAX_SIZE} bytes; this one is {rounded} (rounded to a whole MiB)"
            ),
        ));
    }
    Ok(rounded)
}

/// The realignment asked for (or, on a GPT disk that grows, the backup table moved to the new
/// end), refused when a Windows record of a partition offset cannot be patched (Windows would
/// not boot) unless forced.
fn plan_realignment(map: &ImageMap<'_>, opts: &CompactOptions, min_size: u64) -> Result<Option<Realignment>> {
    let grows_gpt = min_size > map.image.len() && map.layout.scheme == Scheme::Gpt;
    if opts.realign.is_none() && !grows_gpt {
        return Ok(None);
    }
    let r = align::plan(map, opts.realign, min_size)?;
    if let (Some(first), false) = (r.impossible.first(), opts.force) {
        return Err(Error::Refused {
            file: map.image.source().to_path_buf(),
            problem: format!(
                "cannot realign safely: {first}{}",
                if r.impossible.len() > 1 { format!(" (and {} more)", r.impossible.len() - 1) } else { String::new() }
            ),
            remedy: Remedy::Force,
        });
    }
    Ok(Some(r))
}

/// Plans the compaction of `map`'s image.
pub fn plan(map: &ImageMap<'_>, opts: &CompactOptions) -> Result<CompactionPlan> {
    crate::pass::refuse_untrusted_volumes(map, None, opts.force)?;
    if opts.merge && map.image.as_sparse().is_none_or(|s| s.parent().is_none()) {
        return Err(Error::unsupported(
            map.image.source(),
            format!("is a {} image, not a differencing one: there is no chain to merge", map.image.kind()),
        ));
    }
    let mut realignment = plan_realignment(map, opts, 0)?;
    // Realigning moves every sector: a differencing input becomes a standalone image.
    let merged;
    let opts = match &realignment {
        Some(_) => {
            merged = CompactOptions { merge: true, ..opts.clone() };
            &merged
        }
        None => opts,
    };
    let (format, block_size) = output_kind(map, opts)?;
    let source_size = realignment.as_ref().map_or(map.image.len(), |r| r.disk_size);
    let disk_size = output_size(map, source_size, opts, format)?;
    if disk_size > source_size && map.layout.scheme == Scheme::Gpt {
        // The backup GPT belongs on the last sector of the grown disk.
        realignment = plan_realignment(map, opts, disk_size)?;
    }
    let needs = |a: u64, b: u64| match &realignment {
        Some(r) => r.needs(map, a, b),
        None => map.needs(a, b),
    };
    // Candidates: the blocks that may hold data (a differencing child: its own blocks).
    let candidates: Vec<u64> = match (format, map.image.as_sparse()) {
        (OutputFormat::Differencing, Some(s)) => s.bat().allocated().map(|(b, _)| b).collect(),
        _ => {
            let ranges = match &realignment {
                Some(r) => RealignedDisk { input: map.image, plan: r }.data_ranges(0, source_size)?,
                None => map.image.data_ranges(0, source_size)?,
            };
            blocks_touched(&ranges, block_size)
        }
    };
    let planned: Vec<(u64, Option<StoredBlock>)> = candidates
        .into_par_iter()
        .map(|b| {
            let stored = match format {
                OutputFormat::Differencing => plan_child_block(map, b, opts.zero_free)?,
                _ => plan_standalone_block(
                    &needs,
                    b * block_size,
                    ((b + 1) * block_size).min(source_size),
                    opts.zero_free,
                ),
            };
            Ok((b, stored.map(|(bitmap, zero)| StoredBlock { index: b, bitmap, zero })))
        })
        .collect::<Result<_>>()?;
    let mut stored = Vec::new();
    let mut dropped = Vec::new();
    for (b, s) in planned {
        match s {
            Some(s) => stored.push(s),
            None => dropped.push(b),
        }
    }
    let partitions = map
        .partitions
        .iter()
        .map(|pm| {
            let (start, end) = (pm.partition.start(), pm.partition.end());
            let dropped =
                dropped.iter().filter(|&&b| b * block_size < end && (b + 1) * block_size > start).count() as u64;
            PartitionPlan {
                index: pm.partition.index,
                contents: pm.contents_name(),
                kept_whole: pm.kept_whole(),
                problem: pm.problem(),
                dropped_blocks: dropped,
            }
        })
        .collect();
    Ok(CompactionPlan {
        format,
        disk_size,
        block_size,
        parent: match format {
            OutputFormat::Differencing => {
                map.image.as_sparse().and_then(|s| s.parent_resolution()).map(|r| PathBuf::from(&r.path))
            }
            _ => None,
        },
        stored,
        dropped,
        partitions,
        realignment,
    })
}

/// What a stored block holds besides the input's bytes: its sector bitmap (differencing output)
/// and the ranges written as zeros.
type BlockContent = (Option<SectorBitmap>, Vec<(u64, u64)>);

/// A block of a standalone output covering disk range `[start, end)` of the (merged, or
/// realigned) input, whose needed bytes `needs` tells. Needed blocks are stored; the writer
/// still drops those that read as zeros.
fn plan_standalone_block(
    needs: &(dyn Fn(u64, u64) -> Vec<Need> + Sync),
    start: u64,
    end: u64,
    zero_free: bool,
) -> Option<BlockContent> {
    if start >= end {
        return None;
    }
    let needs = needs(start, end);
    let needed = needs.iter().any(|n| n.kind != NeedKind::FreeCluster);
    if !needed {
        return None;
    }
    let zero = if zero_free {
        needs.iter().filter(|n| n.kind == NeedKind::FreeCluster).map(|n| (n.start - start, n.end - start)).collect()
    } else {
        Vec::new()
    };
    Some((None, zero))
}

/// A block of a differencing output: the input child's block `b`, with the bits of sectors
/// that lie wholly in free clusters cleared (or, with --zero-free, kept and zeroed so the
/// parent's stale data stays hidden).
fn plan_child_block(map: &ImageMap<'_>, b: u64, zero_free: bool) -> Result<Option<BlockContent>> {
    let presence: Presence = map.presence(b)?;
    let bs = map.block_size();
    let start = b * bs;
    let end = (start + bs).min(map.image.len());
    let Some(mut bitmap) = map.image.as_sparse().and_then(|s| s.block_bitmap(b).transpose()).transpose()? else {
        return Ok(None);
    };
    let needs = map.needs(start, end);
    let mut any = false;
    let mut zero = Vec::new();
    for n in &needs {
        let present = presence.any(n.start, n.end);
        if n.kind != NeedKind::FreeCluster {
            any |= present;
        } else if zero_free {
            // Zeroed sectors stay present: dropping them would show the parent's stale data.
            if present {
                zero.push((n.start - start, n.end - start));
                any = true;
            }
        } else {
            // Sectors wholly in free clusters (cluster boundaries are sector boundaries) may
            // read the parent instead.
            bitmap.set_range(((n.start - start) / 512) as u32, (n.end - start).div_ceil(512) as u32, false);
        }
    }
    if !any {
        return Ok(None);
    }
    Ok(Some((Some(bitmap), zero)))
}
