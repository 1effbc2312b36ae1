//! The compaction plan: for every output block, whether it is stored, which of its sectors are
//! present, and which byte ranges are zeroed. Pure: it reads the map, never the data, and never
//! writes.
//!
//! A block is dropped only when no byte of it is needed (see [`crate::map::blocks`]): no
//! cluster allocated in `$Bitmap` or owned by any attribute of any file, no backup boot
//! sector, nothing outside readable NTFS volumes that holds data. Unreadable NTFS partitions
//! and other file systems count as "outside": only their zero blocks are dropped.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use super::{AZURE_MAX_SIZE, AZURE_MIN_SIZE, CompactOptions, OutputFormat};
use crate::disk::Scheme;
use crate::error::{Error, Remedy, Result};
use crate::map::ImageMap;
use crate::map::blocks::{Need, NeedKind, Presence, data_blocks};
use crate::pass::align::{self, RealignedDisk, Realignment};
use crate::pass::sanitize::Sanitization;
use crate::vhd::bitmap::SectorBitmap;
use crate::vhd::device::{BlockDevice, SectorSize};
use crate::vhd::fixed::MAX_FIXED_SIZE;
use crate::vhd::identity::Identity;
use crate::vhd::image::{ImageFormat, ImageKind};
use crate::vhd::sparse::{DEFAULT_BLOCK_SIZE, MAX_DISK_SIZE};

/// A block the output stores; every other block is dropped (reads as zeros, or in a
/// differencing output from the parent; a fixed output writes zeros there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBlock {
    pub index: u64,
    /// Which sectors are present (differencing output only).
    pub bitmap: Option<SectorBitmap>,
    /// Byte ranges inside the block whose bytes are needed: what verification compares.
    pub needed: Vec<(u64, u64)>,
    /// Byte ranges inside the block written as zeros (free clusters, when asked to zero them).
    pub zero: Vec<(u64, u64)>,
}

/// A partition's share of the plan, for the report.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PartitionPlan {
    /// The partition.
    #[serde(rename = "partition")]
    pub index: u32,
    /// "ntfs", "unreadable ntfs" (kept but for zero blocks), or the file system found
    /// ("fat32", "bitlocker", "ext4", "unknown"...).
    pub contents: &'static str,
    /// Every byte is kept, zero blocks included (encrypted volumes, ReFS).
    pub kept_whole: bool,
    /// Why an NTFS volume could not be read (it is then kept but for zero blocks).
    pub problem: Option<String>,
    /// Blocks overlapping the partition that the input holds and the plan drops.
    pub dropped_blocks: u64,
}

/// The disk the output copies, decided once by the plan: the input, or the input with its
/// partitions realigned.
pub struct PlannedSource<'a> {
    map: &'a ImageMap<'a>,
    realignment: Option<Realignment>,
    /// Patches over the input's bytes (`--sanitize`), in input coordinates.
    sanitization: Option<Sanitization>,
}

impl PlannedSource<'_> {
    /// The map of the input image.
    pub fn map(&self) -> &ImageMap<'_> {
        self.map
    }

    /// Which bytes of `[start, end)` of this disk are needed, and why.
    pub fn needs(&self, start: u64, end: u64) -> Vec<Need> {
        match &self.realignment {
            Some(r) => r.needs(self.map, start, end),
            None => self.map.needs(start, end),
        }
    }

    /// The patches `--sanitize` applies, when asked for.
    pub fn sanitization(&self) -> Option<&Sanitization> {
        self.sanitization.as_ref()
    }

    /// The realigned disk, when partitions move.
    fn realigned(&self) -> Option<RealignedDisk<'_>> {
        self.realignment.as_ref().map(|plan| RealignedDisk { input: self.map.image, plan })
    }
}

impl BlockDevice for PlannedSource<'_> {
    fn len(&self) -> u64 {
        self.realignment.as_ref().map_or(self.map.image.len(), |r| r.disk_size)
    }

    fn sector_size(&self) -> SectorSize {
        self.map.image.sector_size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match self.realigned() {
            Some(r) => r.read_at(offset, buf)?,
            None => self.map.image.read_at(offset, buf)?,
        }
        if let Some(s) = &self.sanitization {
            s.apply(self.map.image, offset, buf)?;
        }
        Ok(())
    }

    fn source(&self) -> &Path {
        self.map.image.source()
    }

    fn data_ranges(&self, start: u64, end: u64) -> Result<Vec<(u64, u64)>> {
        match self.realigned() {
            Some(r) => r.data_ranges(start, end),
            None => self.map.image.data_ranges(start, end),
        }
    }
}

/// The whole plan. Only blocks that may hold data are looked at: work and memory grow with
/// the data, not with the disk's size.
pub struct CompactionPlan<'a> {
    /// What the output copies.
    pub source: PlannedSource<'a>,
    pub format: OutputFormat,
    /// The output's container: VHD or VHDX.
    pub container: ImageFormat,
    /// The disk's sector size, kept by the output.
    pub sector_size: SectorSize,
    /// The output file's own block size (a VHDX's, or a dynamic VHD's); `block_size` is the
    /// unit the writer copies in.
    pub container_block_size: u64,
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
    /// Where the output's UUIDs and timestamps come from.
    pub identity: Identity,
    /// A hash of what decides the output's bytes: the input chain's identity, the options as
    /// decided and the blocks (an interrupted upload resumes only into the same plan).
    pub fingerprint: [u8; 32],
}

impl CompactionPlan<'_> {
    /// Where the partitions go, when the output is the realigned disk.
    pub fn realignment(&self) -> Option<&Realignment> {
        self.source.realignment.as_ref()
    }

    /// Number of blocks of the output disk.
    pub fn blocks(&self) -> u64 {
        self.disk_size.div_ceil(self.block_size)
    }

    /// Bytes the writer writes for its first `blocks` blocks (the progress of a run).
    pub fn bytes_of_blocks(&self, blocks: u64) -> u64 {
        (blocks * self.block_size).min(self.blocks_written() * self.block_size)
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

/// The output kind and block size for `opts` on an input of kind `input` and (when sparse)
/// block size `input_block`, in `file`.
fn output_kind(
    file: &Path,
    input: ImageKind,
    input_block: Option<u64>,
    opts: &CompactOptions,
) -> Result<(OutputFormat, u64)> {
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
            format!("a differencing output needs a differencing input ({} is {input})", file.display())
        }));
    }
    if differencing_in && !opts.merge && (format != OutputFormat::Differencing || opts.realign.is_some()) {
        let problem = if opts.realign.is_some() {
            "is a differencing image: realigning moves every sector, so the output holds the whole chain merged"
        } else {
            "is a differencing image: a standalone output holds the whole chain merged"
        };
        return Err(Error::Refused { file: file.to_path_buf(), problem: problem.into(), remedy: Remedy::Merge });
    }
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

/// The output's container and its block size: VHD, or VHDX (blocks a power of two from 1 MiB
/// to 256 MiB: the asked size, else the input's when it is one, else 2 MiB for a dynamic
/// output, where small blocks let more go, and Hyper-V's 32 MiB for a fixed one).
fn output_container(
    image: &crate::vhd::image::DiskImage,
    ss: SectorSize,
    format: OutputFormat,
    block_size: u64,
    opts: &CompactOptions,
) -> Result<(ImageFormat, u64)> {
    let input = image.format();
    let container = match opts.container.unwrap_or(input) {
        ImageFormat::Raw if ss != SectorSize::LEGACY => ImageFormat::Vhdx,
        ImageFormat::Raw => ImageFormat::Vhd,
        c => c,
    };
    if container == ImageFormat::Vhd && ss != SectorSize::LEGACY {
        return Err(Error::unsupported(
            image.source(),
            format!("the disk has {ss}-byte sectors and a VHD holds only disks of 512-byte sectors: keep it a VHDX"),
        ));
    }
    if container == ImageFormat::Vhdx && opts.azure {
        return Err(Error::Usage("Azure takes a fixed VHD: the output cannot be a VHDX".into()));
    }
    if format == OutputFormat::Differencing && container != input {
        return Err(Error::Usage(format!(
            "a differencing output stays a {}, like its parent: merge the chain to change the format",
            input.name()
        )));
    }
    if container == ImageFormat::Vhd {
        return Ok((container, block_size));
    }
    let valid = |b: u64| b.is_power_of_two() && (1 << 20..=256 << 20).contains(&b);
    let chosen = match (opts.block_size, image.block_size().filter(|&b| valid(b)), format) {
        (Some(b), ..) => b as u64,
        (None, Some(b), _) => b,
        (None, None, OutputFormat::Fixed) => 32 << 20,
        (None, None, _) => DEFAULT_BLOCK_SIZE as u64,
    };
    if !valid(chosen) {
        return Err(Error::Usage(format!(
            "a VHDX block size must be a power of two from 1 MiB to 256 MiB, not {chosen}"
        )));
    }
    Ok((container, chosen))
}

/// The output disk size: `size` (the input's, or the realigned disk's) in whole sectors of
/// `ss` bytes (a raw input's last partial sector is padded with zeros), or for Azure rounded
/// up to a whole MiB within limits.
fn output_size(
    file: &Path,
    size: u64,
    azure: bool,
    format: OutputFormat,
    container: ImageFormat,
    ss: SectorSize,
) -> Result<u64> {
    let size = ss.bytes_of(ss.sectors_for(size));
    let limit = match (container, format) {
        (ImageFormat::Vhdx, _) => crate::vhdx::metadata::MAX_DISK_SIZE,
        (_, OutputFormat::Fixed) => MAX_FIXED_SIZE,
        _ => MAX_DISK_SIZE,
    };
    if !azure {
        if size > limit {
            return Err(Error::unsupported(
                file,
                format!("a {format:?} {} holds at most {limit} bytes; the disk has {size}", container.name())
                    .to_lowercase(),
            ));
        }
        return Ok(size);
    }
    let rounded = size.div_ceil(1 << 20) << 20;
    if !(AZURE_MIN_SIZE..=AZURE_MAX_SIZE).contains(&rounded) {
        return Err(Error::unsupported(
            file,
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
    let r = align::plan(map, opts.realign, min_size, opts.deterministic)?;
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
pub fn plan<'a>(map: &'a ImageMap<'a>, opts: &CompactOptions) -> Result<CompactionPlan<'a>> {
    crate::pass::refuse_untrusted_volumes(map, None, opts.force)?;
    if opts.merge && map.image.parent().is_none() {
        return Err(Error::unsupported(
            map.image.source(),
            format!("is a {} image, not a differencing one: there is no chain to merge", map.image.kind()),
        ));
    }
    let input_block = map.image.block_size();
    let (format, block_size) = output_kind(map.image.source(), map.image.kind(), input_block, opts)?;
    let (container, container_block_size) =
        output_container(map.image, map.layout.sector_size, format, block_size, opts)?;
    let block_size = if format == OutputFormat::Fixed { block_size } else { container_block_size };
    let mut realignment = plan_realignment(map, opts, 0)?;
    let source_size = realignment.as_ref().map_or(map.image.len(), |r| r.disk_size);
    let disk_size =
        output_size(map.image.source(), source_size, opts.azure, format, container, map.layout.sector_size)?;
    if disk_size > source_size && map.layout.scheme == Scheme::Gpt {
        // The backup GPT belongs on the last sector of the grown disk.
        realignment = plan_realignment(map, opts, disk_size)?;
    }
    let sanitization = match (opts.sanitize, &realignment, format) {
        (false, ..) => None,
        (true, Some(_), _) => {
            return Err(Error::unsupported(
                map.image.source(),
                "sanitizing and realigning are not done in one run: realign first, then sanitize the result",
            ));
        }
        (true, None, OutputFormat::Differencing) => {
            return Err(Error::Refused {
                file: map.image.source().to_path_buf(),
                problem: "is a differencing image: sanitizing changes sectors its parent holds, so the output holds the whole chain merged".into(),
                remedy: Remedy::Merge,
            });
        }
        (true, None, _) => Some(Sanitization::plan(map)?),
    };
    let source = PlannedSource { map, realignment, sanitization };
    let zero_free = opts.zero_free || opts.sanitize;
    // Candidates: the blocks that may hold data (a differencing child: its own blocks).
    let candidates: Vec<u64> = match format {
        OutputFormat::Differencing => map.image.stored_blocks(),
        _ => data_blocks(&source, block_size)?,
    };
    let planned: Vec<(u64, Option<StoredBlock>)> = candidates
        .into_par_iter()
        .map(|b| {
            let stored = match format {
                OutputFormat::Differencing => plan_child_block(map, b, zero_free)?,
                _ => {
                    let (start, end) = (b * block_size, ((b + 1) * block_size).min(source_size));
                    let content = plan_standalone_block(&source, start, end, zero_free);
                    if content.is_some() && source.realignment.is_none() {
                        // A block the output copies but cannot read fails the run: at once, not
                        // after planning the millions of blocks a table of noise names. (A
                        // dropped one is never read: a copy salvages an image whose bad
                        // entries lie in free space.)
                        map.image.require_readable(start, end)?;
                    }
                    content
                }
            };
            Ok((b, stored.map(|c| StoredBlock { index: b, bitmap: c.bitmap, needed: c.needed, zero: c.zero })))
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
    let partitions = partition_plans(map, &dropped, block_size);
    let parent = match format {
        OutputFormat::Differencing => map.image.parent_resolution().map(|r| PathBuf::from(&r.path)),
        _ => None,
    };
    // What decides the output's bytes, as resolved (OUT's name or `-` aside).
    let decided = format!(
        "{format:?} {container:?} {container_block_size} {block_size} {disk_size} {:?} {} {} {} {:?}",
        opts.realign, opts.zero_free, opts.sanitize, opts.merge, parent
    );
    let material = identity_material(map.image, &decided, &stored);
    let identity = match opts.deterministic {
        Some(unix_seconds) => Identity::derived(&material, unix_seconds),
        None => Identity::Fresh,
    };
    let fingerprint = *blake3::hash(&material).as_bytes();
    Ok(CompactionPlan {
        source,
        format,
        container,
        sector_size: map.layout.sector_size,
        container_block_size,
        disk_size,
        block_size,
        parent,
        stored,
        dropped,
        partitions,
        identity,
        fingerprint,
    })
}

/// What a deterministic output's identifiers are derived from: the identity of every image
/// of the input's chain (a VHD's footer, a VHDX's data write GUID and disk id: each changes
/// when the image does, or names another image), the options as decided, and the plan's blocks.
fn identity_material(image: &crate::vhd::image::DiskImage, decided: &str, stored: &[StoredBlock]) -> Vec<u8> {
    let mut m = Vec::new();
    let mut link = Some(image);
    while let Some(i) = link {
        if let Some(f) = i.footer() {
            m.extend_from_slice(&f.encode());
        }
        if let Some(x) = i.as_vhdx() {
            m.extend_from_slice(&x.header().data_write_guid.0);
            m.extend_from_slice(&x.parameters().virtual_disk_id.0);
        }
        m.extend_from_slice(&i.len().to_le_bytes());
        link = i.parent();
    }
    m.extend_from_slice(decided.as_bytes());
    for s in stored {
        m.extend_from_slice(&s.index.to_le_bytes());
        for &(a, z) in s.needed.iter().chain(&s.zero) {
            m.extend_from_slice(&a.to_le_bytes());
            m.extend_from_slice(&z.to_le_bytes());
        }
        if let Some(b) = &s.bitmap {
            m.extend_from_slice(&b.encode(b.sectors().div_ceil(8) as usize));
        }
    }
    m
}

/// Each partition's share of the plan: its contents and the blocks dropped from it.
fn partition_plans(map: &ImageMap<'_>, dropped: &[u64], block_size: u64) -> Vec<PartitionPlan> {
    map.partitions
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
        .collect()
}

/// What a stored block holds besides the input's bytes (all offsets inside the block).
struct BlockContent {
    /// Its sector bitmap (differencing output).
    bitmap: Option<SectorBitmap>,
    /// The ranges of needed bytes.
    needed: Vec<(u64, u64)>,
    /// The ranges written as zeros.
    zero: Vec<(u64, u64)>,
}

/// A block of a standalone output covering disk range `[start, end)` of the source, stored
/// when any byte of it is needed. The writer still drops those that read as zeros.
fn plan_standalone_block(source: &PlannedSource<'_>, start: u64, end: u64, zero_free: bool) -> Option<BlockContent> {
    if start >= end {
        return None;
    }
    let needs = source.needs(start, end);
    let needed = ranges_of(&needs, start, |k| k != NeedKind::Unneeded);
    if needed.is_empty() {
        return None;
    }
    let zero = if zero_free { ranges_of(&needs, start, |k| k == NeedKind::Unneeded) } else { Vec::new() };
    Some(BlockContent { bitmap: None, needed, zero })
}

/// The ranges of `needs` whose kind passes `keep`, relative to `start`.
fn ranges_of(needs: &[Need], start: u64, keep: impl Fn(NeedKind) -> bool) -> Vec<(u64, u64)> {
    needs.iter().filter(|n| keep(n.kind)).map(|n| (n.start - start, n.end - start)).collect()
}

/// A block of a differencing output: the input child's block `b`, with the bits of sectors
/// that lie wholly in free clusters cleared (or, when zeroing, kept and zeroed so the parent's
/// stale data stays hidden).
fn plan_child_block(map: &ImageMap<'_>, b: u64, zero_free: bool) -> Result<Option<BlockContent>> {
    let presence: Presence = map.presence(b)?;
    let bs = map.block_size();
    let start = b * bs;
    let end = (start + bs).min(map.image.len());
    let Some(mut bitmap) = map.image.block_sectors(b)? else {
        return Ok(None);
    };
    let needs = map.needs(start, end);
    let mut any = false;
    let mut zero = Vec::new();
    for n in &needs {
        let present = presence.any(n.start, n.end);
        if n.kind != NeedKind::Unneeded {
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
            bitmap.set_bytes(n.start - start, n.end - start, false);
        }
    }
    if !any {
        return Ok(None);
    }
    let needed = ranges_of(&needs, start, |k| k != NeedKind::Unneeded);
    Ok(Some(BlockContent { bitmap: Some(bitmap), needed, zero }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn kind(input: ImageKind, block: Option<u64>, opts: CompactOptions) -> Result<(OutputFormat, u64)> {
        output_kind(Path::new("in.vhd"), input, block, &opts)
    }

    #[test]
    fn a_fixed_or_raw_input_becomes_dynamic_unless_fixed_is_asked_for() {
        for input in [ImageKind::Fixed, ImageKind::Raw] {
            assert_eq!(kind(input, None, CompactOptions::default()).unwrap(), (OutputFormat::Dynamic, 2 << 20));
            let fixed = CompactOptions { to: Some(OutputFormat::Fixed), ..Default::default() };
            assert_eq!(kind(input, None, fixed).unwrap().0, OutputFormat::Fixed);
        }
    }

    #[test]
    fn a_dynamic_input_keeps_its_block_size_unless_told() {
        assert_eq!(kind(ImageKind::Dynamic, Some(512 << 10), CompactOptions::default()).unwrap().1, 512 << 10);
        let told = CompactOptions { block_size: Some(1 << 20), ..Default::default() };
        assert_eq!(kind(ImageKind::Dynamic, Some(512 << 10), told).unwrap().1, 1 << 20);
    }

    #[test]
    fn a_differencing_input_stays_differencing_and_merges_only_when_asked() {
        let d = ImageKind::Differencing;
        assert_eq!(kind(d, Some(2 << 20), CompactOptions::default()).unwrap().0, OutputFormat::Differencing);
        let standalone = CompactOptions { to: Some(OutputFormat::Dynamic), ..Default::default() };
        assert!(matches!(kind(d, Some(2 << 20), standalone), Err(Error::Refused { remedy: Remedy::Merge, .. })));
        let realign = CompactOptions { realign: Some(1 << 20), ..Default::default() };
        assert!(matches!(kind(d, Some(2 << 20), realign), Err(Error::Refused { remedy: Remedy::Merge, .. })));
        let merged = CompactOptions { merge: true, realign: Some(1 << 20), ..Default::default() };
        assert_eq!(kind(d, Some(2 << 20), merged).unwrap().0, OutputFormat::Dynamic);
        let other_block = CompactOptions { block_size: Some(1 << 20), ..Default::default() };
        assert_eq!(kind(d, Some(2 << 20), other_block).unwrap_err().kind(), ErrorKind::Usage);
    }

    #[test]
    fn azure_output_is_fixed_and_nothing_else() {
        let azure = CompactOptions { azure: true, ..Default::default() };
        assert_eq!(kind(ImageKind::Dynamic, Some(2 << 20), azure).unwrap().0, OutputFormat::Fixed);
        let dynamic = CompactOptions { azure: true, to: Some(OutputFormat::Dynamic), ..Default::default() };
        assert_eq!(kind(ImageKind::Fixed, None, dynamic).unwrap_err().kind(), ErrorKind::Usage);
        let child = CompactOptions { to: Some(OutputFormat::Differencing), ..Default::default() };
        assert_eq!(kind(ImageKind::Dynamic, Some(2 << 20), child).unwrap_err().kind(), ErrorKind::Usage);
    }

    #[test]
    fn sizes_round_to_sectors_and_azure_to_whole_mib_within_limits() {
        let f = Path::new("in.vhd");
        let (vhd, vhdx, legacy) = (ImageFormat::Vhd, ImageFormat::Vhdx, SectorSize::LEGACY);
        assert_eq!(output_size(f, 1000, false, OutputFormat::Dynamic, vhd, legacy).unwrap(), 1024);
        assert_eq!(output_size(f, 1000, false, OutputFormat::Dynamic, vhdx, SectorSize::NATIVE_4K).unwrap(), 4096);
        assert_eq!(output_size(f, (30 << 20) + 1, true, OutputFormat::Fixed, vhd, legacy).unwrap(), 31 << 20);
        assert!(output_size(f, 1 << 20, true, OutputFormat::Fixed, vhd, legacy).is_err(), "below Azure's minimum");
        assert!(output_size(f, MAX_DISK_SIZE + 512, false, OutputFormat::Dynamic, vhd, legacy).is_err());
        assert_eq!(
            output_size(f, MAX_DISK_SIZE + 512, false, OutputFormat::Dynamic, vhdx, legacy).unwrap(),
            MAX_DISK_SIZE + 512,
            "a VHDX holds 64 TiB"
        );
        assert_eq!(
            output_size(f, MAX_DISK_SIZE + 512, false, OutputFormat::Fixed, vhd, legacy).unwrap(),
            MAX_DISK_SIZE + 512
        );
    }
}
