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
use crate::pass::compact::{self, BlockAction, CompactOptions, CompactionPlan, OutputFormat};
use crate::vhd::bat::UNALLOCATED;
use crate::vhd::device::{BlockDevice, ImageFile};
use crate::vhd::footer::FOOTER_SIZE;
use crate::vhd::header::HEADER_SIZE;
use crate::vhd::image::DiskImage;
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
/// opened for writing).
pub fn compact_in_place(map: &ImageMap<'_>, opts: &CompactOptions) -> Result<(CompactionPlan, InPlaceStats)> {
    let input = map.image.format();
    let same_kind = match opts.to {
        None => true,
        Some(OutputFormat::Fixed) => input == "fixed",
        Some(OutputFormat::Dynamic) => input == "dynamic",
        Some(OutputFormat::Differencing) => input == "differencing",
    };
    if !same_kind || opts.azure || opts.merge || opts.block_size.is_some() {
        return Err(Error::Usage(
            "--in-place keeps the image's kind and block size: drop --to, --azure, --merge and --block-size".into(),
        ));
    }
    let plan = compact::plan(map, opts)?;
    let file = map.image.file();
    if !file.writable() {
        return Err(Error::unsupported(file.path(), "image opened read-only"));
    }
    let stats = match map.image {
        DiskImage::Sparse(s) => compact_sparse(map, s, &plan, file)?,
        _ => zero_free_in_place(&plan, file)?,
    };
    Ok((plan, stats))
}

/// Fixed and raw images keep every block (their data starts at file offset 0): only free
/// clusters can be zeroed.
fn zero_free_in_place(plan: &CompactionPlan, file: &ImageFile) -> Result<InPlaceStats> {
    let mut stats = InPlaceStats { stored_blocks: plan.actions.len() as u64, ..InPlaceStats::default() };
    for (b, action) in plan.actions.iter().enumerate() {
        if let BlockAction::Store { zero, .. } = action {
            for &(a, z) in zero {
                write_zeros(file, b as u64 * plan.block_size + a, z - a)?;
                stats.zeroed_bytes += z - a;
            }
        }
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
    let BlockAction::Store { zero, bitmap: None } = &plan.actions[b as usize] else {
        return Ok(false);
    };
    let start = b * plan.block_size;
    let end = (start + plan.block_size).min(map.image.len());
    let mut data = vec![0u8; (end - start) as usize];
    map.image.read_at(start, &mut data)?;
    for &(a, z) in zero {
        data[a as usize..(z.min(end - start)) as usize].fill(0);
    }
    Ok(data.iter().all(|&x| x == 0))
}

fn compact_sparse(map: &ImageMap<'_>, s: &SparseVhd, plan: &CompactionPlan, file: &ImageFile) -> Result<InPlaceStats> {
    let h = s.header();
    let span = h.bitmap_size() + s.block_size();
    let bitmap_size = h.bitmap_size() as usize;
    let allocated: Vec<(u64, u64)> = s.bat().allocated().collect();
    // Decide first, from reads only: nothing is written until every block is classified.
    let zero_blocks: Vec<bool> = allocated
        .par_iter()
        .map(|&(b, _)| if s.parent().is_none() { reads_as_zeros(map, plan, b) } else { Ok(false) })
        .collect::<Result<_>>()?;
    let mut stats = InPlaceStats::default();
    let mut bat = s.bat().clone();
    let mut kept: Vec<(u64, u64)> = Vec::new();
    for (&(b, sector), &zero) in allocated.iter().zip(&zero_blocks) {
        match &plan.actions[b as usize] {
            BlockAction::Drop => {
                stats.dropped_blocks += 1;
                bat.set(b, UNALLOCATED);
            }
            BlockAction::Store { .. } if zero => {
                stats.zero_blocks_dropped += 1;
                bat.set(b, UNALLOCATED);
            }
            BlockAction::Store { bitmap, zero } => {
                // Step 1: only free sectors change.
                let at = sector * 512;
                for &(a, z) in zero {
                    write_zeros(file, at + bitmap_size as u64 + a, z - a)?;
                    stats.zeroed_bytes += z - a;
                }
                if let Some(bm) = bitmap {
                    file.write_all_at(at, &bm.encode(bitmap_size))?;
                }
                kept.push((b, sector));
            }
        }
    }
    file.sync()?;
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
    let mut buf = vec![0u8; span as usize];
    for batch in moves.chunks(MOVE_BATCH) {
        for &(_, from, to) in batch {
            file.read_exact_at(from, &mut buf, "block")?;
            file.write_all_at(to, &buf)?;
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
