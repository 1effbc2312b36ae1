//! Compaction of an image in place, in an order of writes that survives a crash at any point:
//!
//! 1. Inside kept blocks, only free sectors change (zeroed, or their bitmap bits cleared).
//! 2. The BAT is rewritten with the dropped blocks unallocated. Each entry is either old (its
//!    block is still intact) or new (unallocated: the block held no needed byte, or only zeros
//!    in a dynamic image), so any mix reads the same files.
//! 3. Blocks at the end of the file are copied into the slots the dropped blocks freed; only
//!    after the copies are flushed does the BAT point at them.
//! 4. The footer is written at the new end, then the file is truncated after it.
//!
//! Every slot written in steps 3 and 4 is referenced by no BAT entry at that moment.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::map::ImageMap;
use crate::map::blocks::NeedKind;
use crate::pass::compact::{self, CompactOptions, CompactionPlan, OutputFormat, StoredBlock};
use crate::vhd::bat::UNALLOCATED;
use crate::vhd::device::{BlockDevice, ImageFile};
use crate::vhd::footer::FOOTER_SIZE;
use crate::vhd::header::HEADER_SIZE;
use crate::vhd::image::{DiskImage, ImageKind};
use crate::vhd::sparse::SparseVhd;

/// Blocks moved between two flushes of the BAT.
const MOVE_BATCH: usize = 64;

/// What an in-place run did.
#[derive(Clone, Debug, Default)]
pub struct InPlaceStats {
    /// Blocks dropped because no byte of them is needed.
    pub dropped_blocks: u64,
    /// Blocks dropped because they read as zeros (dynamic images).
    pub zero_blocks_dropped: u64,
    /// Blocks copied towards the start of the file to let it shrink.
    pub moved_blocks: u64,
    /// Blocks the image still holds.
    pub stored_blocks: u64,
    pub zeroed_bytes: u64,
}

/// Plans and carries out compaction of `map`'s image in place (`map` was built from an image
/// opened for writing). A run that would write nothing is refused before anything happens.
pub fn compact_in_place(map: &ImageMap<'_>, opts: &CompactOptions) -> Result<(CompactionPlan, InPlaceStats)> {
    let input = map.image.kind();
    let kind = match input {
        ImageKind::Dynamic => OutputFormat::Dynamic,
        ImageKind::Differencing => OutputFormat::Differencing,
        ImageKind::Raw | ImageKind::Fixed => OutputFormat::Fixed,
    };
    if opts.to.is_some_and(|t| t != kind) || opts.azure || opts.merge || opts.block_size.is_some() {
        return Err(Error::Usage(
            "in place, an image keeps its kind and block size: no output format, Azure rounding, merge or block size can be asked for".into(),
        ));
    }
    if kind == OutputFormat::Fixed && !opts.zero_free {
        return Err(Error::unsupported(
            map.image.source(),
            format!(
                "is a {input} image, whose blocks stay where they are: in place, only its free space can be zeroed"
            ),
        ));
    }
    let plan = compact::plan(map, &CompactOptions { to: Some(kind), ..opts.clone() })?;
    let file = map.image.file();
    if !file.writable() {
        return Err(Error::internal("in-place compaction of an image opened read-only"));
    }
    let stats = match map.image {
        DiskImage::Sparse(s) => compact_sparse(map, s, &plan, file, opts.zero_free)?,
        _ => zero_free_in_place(map, file)?,
    };
    Ok((plan, stats))
}

/// Bytes examined per step when looking for free space to zero.
const ZERO_WINDOW: u64 = 64 << 20;

/// Every range of free NTFS clusters of the disk that holds a non-zero byte, in file offsets
/// of a fixed or raw image (whose data starts at offset 0). Holes of a sparse host file are
/// skipped without reading them.
fn free_ranges_to_zero(map: &ImageMap<'_>, file: &ImageFile) -> Result<Vec<(u64, u64)>> {
    let len = map.image.len();
    let windows: Vec<u64> = (0..len.div_ceil(ZERO_WINDOW)).collect();
    let per_window: Vec<Vec<(u64, u64)>> = windows
        .par_iter()
        .map(|&w| {
            let (a, b) = (w * ZERO_WINDOW, ((w + 1) * ZERO_WINDOW).min(len));
            let mut out = Vec::new();
            for n in map.needs(a, b).into_iter().filter(|n| n.kind == NeedKind::FreeCluster) {
                for (x, y) in file.data_ranges(n.start, n.end) {
                    nonzero_pieces(file, x, y, &mut out)?;
                }
            }
            Ok(out)
        })
        .collect::<Result<_>>()?;
    Ok(per_window.into_iter().flatten().collect())
}

/// Appends the 4 KiB-aligned pieces of file range `[a, b)` that hold a non-zero byte.
fn nonzero_pieces(file: &ImageFile, a: u64, b: u64, out: &mut Vec<(u64, u64)>) -> Result<()> {
    const STEP: u64 = 1 << 20;
    let mut buf = vec![0u8; STEP.min(b - a) as usize];
    let mut at = a;
    while at < b {
        let n = STEP.min(b - at) as usize;
        file.read_exact_at(at, &mut buf[..n], "free space")?;
        for (i, piece) in buf[..n].chunks(4096).enumerate() {
            if piece.iter().any(|&x| x != 0) {
                let s = at + i as u64 * 4096;
                let e = s + piece.len() as u64;
                match out.last_mut() {
                    Some(last) if last.1 == s => last.1 = e,
                    _ => out.push((s, e)),
                }
            }
        }
        at += n as u64;
    }
    Ok(())
}

/// Fixed and raw images keep every block (their data starts at file offset 0): every free
/// cluster of every NTFS volume that is not already zero is zeroed.
fn zero_free_in_place(map: &ImageMap<'_>, file: &ImageFile) -> Result<InPlaceStats> {
    let ranges = free_ranges_to_zero(map, file)?;
    if ranges.is_empty() {
        return Err(Error::unsupported(file.path(), "nothing to do: its free space is already zero"));
    }
    let mut stats = InPlaceStats { stored_blocks: map.block_count(), ..InPlaceStats::default() };
    for (a, z) in ranges {
        write_zeros(file, a, z - a)?;
        stats.zeroed_bytes += z - a;
    }
    file.sync()?;
    Ok(stats)
}

fn write_zeros(file: &ImageFile, at: u64, len: u64) -> Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done);
        file.write_all_at(at + done, &zeros[..n as usize])?;
        done += n;
    }
    Ok(())
}

/// Whether a kept block of a dynamic image reads as all zeros once its free ranges are.
fn reads_as_zeros(map: &ImageMap<'_>, plan: &CompactionPlan, b: u64) -> Result<bool> {
    let Some(stored) = plan.stored_block(b).filter(|s| s.bitmap.is_none()) else {
        return Ok(false);
    };
    let zero = &stored.zero;
    let start = b * plan.block_size;
    let end = (start + plan.block_size).min(map.image.len());
    let mut buf = vec![0u8; COPY_CHUNK.min(end - start) as usize];
    let mut at = start;
    while at < end {
        let n = COPY_CHUNK.min(end - at) as usize;
        map.image.read_at(at, &mut buf[..n])?;
        for &(a, z) in zero {
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

/// Bytes read or copied at once: memory stays fixed whatever the block size.
const COPY_CHUNK: u64 = 4 << 20;

/// Copies `len` bytes of the file from `from` to `to` (ranges that do not overlap).
fn copy_within(file: &ImageFile, from: u64, to: u64, len: u64, buf: &mut [u8]) -> Result<()> {
    let mut done = 0;
    while done < len {
        let n = (buf.len() as u64).min(len - done) as usize;
        file.read_exact_at(from + done, &mut buf[..n], "block")?;
        file.write_all_at(to + done, &buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

/// What happens to one allocated block of a dynamic or differencing image.
enum Decision {
    Drop,
    DropZero,
    /// Kept: file ranges to zero (only those holding non-zero bytes) and a new sector bitmap.
    Keep {
        zero: Vec<(u64, u64)>,
        bitmap: Option<crate::vhd::bitmap::SectorBitmap>,
    },
}

fn decide(
    map: &ImageMap<'_>,
    s: &SparseVhd,
    plan: &CompactionPlan,
    b: u64,
    sector: u64,
    zero_free: bool,
) -> Result<Decision> {
    let bitmap_size = s.header().bitmap_size();
    match plan.stored_block(b) {
        None => Ok(Decision::Drop),
        Some(_) if s.parent().is_none() && reads_as_zeros(map, plan, b)? => Ok(Decision::DropZero),
        Some(StoredBlock { bitmap, zero, .. }) => {
            let data_at = sector * 512 + bitmap_size;
            let mut to_zero = Vec::new();
            if zero_free {
                for &(a, z) in zero {
                    nonzero_pieces(s.file(), data_at + a, data_at + z, &mut to_zero)?;
                }
            }
            let current = s.block_bitmap(b)?;
            let bitmap = bitmap.clone().filter(|bm| Some(bm) != current.as_ref());
            Ok(Decision::Keep { zero: to_zero, bitmap })
        }
    }
}

fn compact_sparse(
    map: &ImageMap<'_>,
    s: &SparseVhd,
    plan: &CompactionPlan,
    file: &ImageFile,
    zero_free: bool,
) -> Result<InPlaceStats> {
    let h = s.header();
    let span = h.bitmap_size() + s.block_size();
    let bitmap_size = h.bitmap_size() as usize;
    let allocated: Vec<(u64, u64)> = s.bat().allocated().collect();
    // Decide first, from reads only: nothing is written until every block is classified.
    let decisions: Vec<Decision> =
        allocated.par_iter().map(|&(b, sector)| decide(map, s, plan, b, sector, zero_free)).collect::<Result<_>>()?;
    let changes = decisions.iter().any(|d| match d {
        Decision::Drop | Decision::DropZero => true,
        Decision::Keep { zero, bitmap } => !zero.is_empty() || bitmap.is_some(),
    });
    if !changes {
        return Err(Error::unsupported(
            file.path(),
            "nothing to do: every allocated block holds needed data and no free space needs zeroing",
        ));
    }
    let mut stats = InPlaceStats::default();
    let mut bat = s.bat().clone();
    let mut kept: Vec<(u64, u64)> = Vec::new();
    for (&(b, sector), decision) in allocated.iter().zip(&decisions) {
        match decision {
            Decision::Drop => {
                stats.dropped_blocks += 1;
                bat.set(b, UNALLOCATED);
            }
            Decision::DropZero => {
                stats.zero_blocks_dropped += 1;
                bat.set(b, UNALLOCATED);
            }
            Decision::Keep { zero, bitmap } => {
                // Step 1: only free sectors change.
                for &(a, z) in zero {
                    write_zeros(file, a, z - a)?;
                    stats.zeroed_bytes += z - a;
                }
                if let Some(bm) = bitmap {
                    file.write_all_at(sector * 512, &bm.encode(bitmap_size))?;
                }
                kept.push((b, sector));
            }
        }
    }
    file.sync()?;
    if bat.allocated_count() == s.bat().allocated_count() {
        stats.stored_blocks = bat.allocated_count();
        return Ok(stats);
    }
    // Step 2: the dropped blocks leave the BAT in one write.
    file.write_all_at(h.table_offset, &bat.encode())?;
    file.sync()?;
    // Step 3: fill the freed slots from the end of the file.
    let metadata_end = metadata_end(s);
    let mut free: Vec<u64> = allocated
        .iter()
        .filter(|(b, _)| bat.sector(*b).is_none())
        .map(|&(_, sector)| sector * 512)
        .filter(|&at| at >= metadata_end)
        .collect();
    free.sort_unstable();
    kept.sort_by_key(|&(_, sector)| std::cmp::Reverse(sector));
    let mut moves: Vec<(u64, u64, u64)> = Vec::new();
    let mut free_iter = free.into_iter();
    for &(b, sector) in &kept {
        let Some(slot) = free_iter.next() else { break };
        if slot >= sector * 512 {
            break;
        }
        moves.push((b, sector * 512, slot));
    }
    let mut buf = vec![0u8; COPY_CHUNK.min(span) as usize];
    for batch in moves.chunks(MOVE_BATCH) {
        for &(_, from, to) in batch {
            copy_within(file, from, to, span, &mut buf)?;
        }
        file.sync()?;
        for &(b, _, to) in batch {
            bat.set(b, (to / 512) as u32);
        }
        file.write_all_at(h.table_offset, &bat.encode())?;
        file.sync()?;
        stats.moved_blocks += batch.len() as u64;
    }
    // Step 4: footer at the new end, then truncate.
    let new_end =
        bat.allocated().map(|(_, sector)| sector * 512 + span).max().unwrap_or(0).max(metadata_end).div_ceil(512) * 512;
    if new_end < s.data_end() {
        file.write_all_at(new_end, s.footer().raw())?;
        file.sync()?;
        file.set_len(new_end + FOOTER_SIZE as u64)?;
        file.sync()?;
    }
    stats.stored_blocks = bat.allocated_count();
    Ok(stats)
}

/// End of the metadata in front of the blocks: header, BAT and parent locator data.
fn metadata_end(s: &SparseVhd) -> u64 {
    let h = s.header();
    let table_end = h.table_offset + crate::vhd::bat::table_bytes(h.max_table_entries);
    let locators = h.parent_locators.iter().map(|(_, l)| l.data_offset + l.data_length as u64).max().unwrap_or(0);
    (s.header_offset() + HEADER_SIZE as u64).max(table_end).max(locators).max(FOOTER_SIZE as u64)
}
