//! Compaction of an image in place. Everything is decided first, from reads only: which
//! blocks go, which free ranges inside kept blocks hold bytes to zero, and (when verifying)
//! the digests of every needed byte. Then the VHD layer rewrites the image in its crash-safe
//! order ([`SparseVhd::rewrite_in_place`]), or a fixed or raw image gets its free ranges
//! zeroed through the device's writer. A run that would write nothing is refused before
//! anything happens.

use std::time::Instant;

use rayon::prelude::*;

use super::verify::{self, NeededDigests};
use super::{CompactOptions, CompactReport, CompactionPlan, Event, OutputFormat, plan};
use crate::error::{Error, Result};
use crate::map::ImageMap;
use crate::map::blocks::NeedKind;
use crate::ntfs::IndexDetail;
use crate::vhd::device::{self, BlockDevice, WritableDevice};
use crate::vhd::image::{DiskImage, ImageFormat, ImageKind};
use crate::vhd::sparse::BlockRewrite;

/// Bytes read at once when checking whether a block reads as zeros.
const READ_CHUNK: u64 = 4 << 20;
/// Bytes examined per task when looking for free space to zero.
const ZERO_WINDOW: u64 = 64 << 20;

/// The writes an in-place run makes, decided before the first one.
enum Rewrite {
    /// A dynamic or differencing image: per allocated block, and whether a dropped block was
    /// dropped for reading as zeros.
    Blocks(Vec<(u64, BlockRewrite, bool)>),
    /// A fixed or raw image: disk ranges to zero.
    Zero(Vec<(u64, u64)>),
}

/// Bytes of a planned write compared with the image's at a time.
const COMPARED: usize = 1 << 20;

/// Sanitizes `image` in place before it is compacted: record rewrites and the emptied
/// `$LogFile` through the journal (each lands whole or not at all), then the zero fills
/// (slack, pagefile data) straight, where the disk does not read zeros already: a cut-short
/// fill leaves some of those bytes zeroed and the rest as they were, which is no damage.
fn sanitize(image: &mut DiskImage) -> Result<Option<crate::pass::sanitize::SanitizeSummary>> {
    let (summary, journaled, zeros) = {
        let map = ImageMap::build(image, None)?;
        let s = crate::pass::sanitize::Sanitization::plan(&map)?;
        let summary = s.summary.clone();
        let (journaled, zeros) = s.into_writes(image)?;
        (summary, journaled, zeros)
    };
    // Only what differs is written: a volume sanitized before is left as it is.
    let mut changed = Vec::new();
    let mut now = vec![0u8; COMPARED];
    for w in journaled {
        let mut differs = false;
        for (i, piece) in w.bytes.chunks(COMPARED).enumerate() {
            let current = &mut now[..piece.len()];
            image.read_at(w.offset + (i * COMPARED) as u64, current)?;
            if current != piece {
                differs = true;
                break;
            }
        }
        if differs {
            changed.push(w);
        }
    }
    let mut fills = Vec::new();
    for (at, len) in zeros {
        fills.extend(device::nonzero_ranges(at, at + len, &|x, buf| image.read_at(x, buf))?);
    }
    if changed.is_empty() && fills.is_empty() {
        return Ok(None);
    }
    crate::pass::disk_write::apply(image, &changed)?;
    for (a, z) in fills {
        image.write_zeros(a, z - a)?;
    }
    image.flush()?;
    Ok(Some(summary))
}

/// Compacts `image` (opened for writing, so its exclusive lock is held) in place: a dynamic
/// or differencing image loses the blocks that hold no needed byte and its file shrinks; a
/// fixed or raw image can only have its free space zeroed.
pub fn in_place(
    image: &mut DiskImage,
    opts: &CompactOptions,
    events: &(dyn Fn(Event<'_>) + Sync),
) -> Result<CompactReport> {
    let started = Instant::now();
    if !image.file().writable() {
        return Err(Error::internal("in-place compaction of an image opened read-only"));
    }
    crate::vhd::check::refuse_hazards(image)?;
    let sanitized = if opts.sanitize { sanitize(image)? } else { None };
    let opts = &CompactOptions {
        to: Some(kept_format(image, opts)?),
        zero_free: opts.zero_free || opts.sanitize,
        sanitize: false,
        ..opts.clone()
    };
    let (mut report, rewrite, before, uncovered) = {
        let map = ImageMap::build_with(image, None, IndexDetail::Clusters)?;
        let plan = plan(&map, opts)?;
        let blocks = image.block_size().is_some() && image.kind() != ImageKind::Fixed;
        let rewrite = match blocks {
            true => decide_blocks(&plan, image, opts.zero_free)?.map(Rewrite::Blocks),
            false => free_ranges_to_zero(&map)?.map(Rewrite::Zero),
        };
        let rewrite = match rewrite {
            Some(r) => r,
            // Sanitizing changed the image already: nothing more to do is fine.
            None if sanitized.is_some() => Rewrite::Zero(Vec::new()),
            None => return Err(nothing_to_do(image, blocks)),
        };
        let before = if opts.verify { Some(NeededDigests::of_stored(&plan)?) } else { None };
        let uncovered = match &before {
            Some(d) => verify::uncovered(&plan, d)?,
            None => Vec::new(),
        };
        (CompactReport { sanitized, ..CompactReport::before(image, &plan)? }, rewrite, before, uncovered)
    };
    match rewrite {
        Rewrite::Blocks(decisions) => {
            let bytes = decisions.len() as u64 * image.block_size().unwrap_or(0);
            events(Event::Writing { temp: None, units: bytes });
            report.dropped_blocks = decisions.iter().filter(|d| d.1 == BlockRewrite::Drop && !d.2).count() as u64;
            report.dropped_zero_blocks = decisions.iter().filter(|d| d.2).count() as u64;
            let changes: Vec<(u64, BlockRewrite)> = decisions.into_iter().map(|(b, r, _)| (b, r)).collect();
            let done = match image {
                DiskImage::Sparse(s) => s.rewrite_in_place(&changes)?,
                DiskImage::Vhdx(v) => v.rewrite_in_place(&changes)?,
                _ => return Err(Error::internal("an image without blocks to rewrite")),
            };
            events(Event::Written(bytes));
            report.blocks_after = done.stored_blocks;
            report.zeroed_bytes = done.zeroed_bytes;
        }
        Rewrite::Zero(ranges) => {
            events(Event::Writing { temp: None, units: ranges.iter().map(|(a, z)| z - a).sum() });
            for (a, z) in ranges {
                image.write_zeros(a, z - a)?;
                report.zeroed_bytes += z - a;
                events(Event::Written(report.zeroed_bytes));
            }
            image.flush()?;
            report.blocks_after = report.blocks_before;
        }
    }
    let after = image.reopened(false)?;
    if let Some(before) = &before {
        events(Event::Verifying);
        let mut checked = verify::check(&after, before)?;
        checked.mismatches.extend(uncovered);
        report.verify = Some(checked);
    }
    Ok(CompactReport {
        output: report.input.clone(),
        in_place: true,
        committed: true,
        output_bytes: after.file().file_len()?,
        output_disk_size: after.len(),
        elapsed_seconds: started.elapsed().as_secs_f64(),
        ..report
    })
}

/// In place, an image keeps its kind and block size; a fixed one keeps every block.
fn kept_format(image: &DiskImage, opts: &CompactOptions) -> Result<OutputFormat> {
    let kind = match image.kind() {
        ImageKind::Dynamic => OutputFormat::Dynamic,
        ImageKind::Differencing => OutputFormat::Differencing,
        ImageKind::Raw | ImageKind::Fixed => OutputFormat::Fixed,
    };
    if opts.to.is_some_and(|t| t != kind)
        || opts.azure
        || opts.merge
        || opts.block_size.is_some()
        || opts.realign.is_some()
    {
        return Err(Error::Usage(
            "in place, an image keeps its kind, block size and layout: no output format, Azure rounding, merge, block size or realignment can be asked for".into(),
        ));
    }

    if kind == OutputFormat::Fixed && !opts.zero_free {
        return Err(Error::unsupported(
            image.source(),
            format!(
                "is a {} image, whose blocks stay where they are: in place, only its free space can be zeroed",
                image.kind()
            ),
        ));
    }
    Ok(kind)
}

/// Every range of free NTFS clusters of the disk that holds a non-zero byte (`None`: there is
/// none). Ranges where the device holds no data (holes of a sparse host file) are skipped
/// without reading them.
fn free_ranges_to_zero(map: &ImageMap<'_>) -> Result<Option<Vec<(u64, u64)>>> {
    let image = map.image;
    let len = image.len();
    let per_window: Vec<Vec<(u64, u64)>> = (0..len.div_ceil(ZERO_WINDOW))
        .into_par_iter()
        .map(|w| {
            let (a, b) = (w * ZERO_WINDOW, ((w + 1) * ZERO_WINDOW).min(len));
            let mut out = Vec::new();
            for n in map.needs(a, b).into_iter().filter(|n| n.kind == NeedKind::Unneeded) {
                for (x, y) in image.data_ranges(n.start, n.end)? {
                    out.extend(device::nonzero_ranges(x, y, &|at, buf| image.read_at(at, buf))?);
                }
            }
            Ok(out)
        })
        .collect::<Result<_>>()?;
    let ranges: Vec<(u64, u64)> = per_window.into_iter().flatten().collect();
    Ok((!ranges.is_empty()).then_some(ranges))
}

/// The refusal of a run that would write nothing.
fn nothing_to_do(image: &DiskImage, blocks: bool) -> Error {
    Error::unsupported(
        image.source(),
        if blocks {
            "nothing to do: every allocated block holds needed data and no free space needs zeroing"
        } else {
            "nothing to do: its free space is already zero"
        },
    )
}

/// What happens to each stored block of `image`, and whether a dropped one reads as zeros
/// (`None`: nothing would change).
fn decide_blocks(
    plan: &CompactionPlan<'_>,
    image: &DiskImage,
    zero_free: bool,
) -> Result<Option<Vec<(u64, BlockRewrite, bool)>>> {
    let stored = image.stored_blocks();
    let decisions: Vec<(u64, BlockRewrite, bool)> = stored
        .par_iter()
        .map(|&b| decide(plan, image, b, zero_free).map(|(r, zero)| (b, r, zero)))
        .collect::<Result<_>>()?;
    let changes = decisions.iter().any(|(_, r, _)| match r {
        BlockRewrite::Drop => true,
        BlockRewrite::Keep { zero, bitmap } => !zero.is_empty() || bitmap.is_some(),
    });
    Ok(changes.then_some(decisions))
}

/// What happens to allocated block `b`, and whether it is dropped for reading as zeros.
fn decide(plan: &CompactionPlan<'_>, image: &DiskImage, b: u64, zero_free: bool) -> Result<(BlockRewrite, bool)> {
    let Some(stored) = plan.stored_block(b) else { return Ok((BlockRewrite::Drop, false)) };
    if !image.differencing() && reads_as_zeros(plan, b)? {
        return Ok((BlockRewrite::Drop, true));
    }
    let mut zero = Vec::new();
    if zero_free {
        for &(a, z) in &stored.zero {
            zero.extend(image.stored_nonzero(b, a, z)?);
        }
    }
    // A VHDX block keeps its sectors in place (its sector bitmap is not narrowed).
    let current = image.block_sectors(b)?;
    let bitmap = stored.bitmap.clone().filter(|bm| Some(bm) != current.as_ref() && image.format() == ImageFormat::Vhd);
    Ok((BlockRewrite::Keep { zero, bitmap }, false))
}

/// Whether a kept block of a dynamic image reads as all zeros once its free ranges are.
fn reads_as_zeros(plan: &CompactionPlan<'_>, b: u64) -> Result<bool> {
    let Some(stored) = plan.stored_block(b).filter(|s| s.bitmap.is_none()) else {
        return Ok(false);
    };
    let source = &plan.source;
    let start = b * plan.block_size;
    let end = (start + plan.block_size).min(source.len());
    let mut buf = vec![0u8; READ_CHUNK.min(end - start) as usize];
    let mut at = start;
    while at < end {
        let n = READ_CHUNK.min(end - at) as usize;
        source.read_at(at, &mut buf[..n])?;
        for &(a, z) in &stored.zero {
            let (a, z) = ((start + a).max(at), (start + z).min(at + n as u64));
            if a < z {
                buf[(a - at) as usize..(z - at) as usize].fill(0);
            }
        }
        if buf[..n].iter().any(|&x| x != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}
