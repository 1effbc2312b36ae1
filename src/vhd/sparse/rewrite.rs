//! Rewriting a dynamic or differencing image in place (compaction), in an order of writes and
//! flushes that survives a crash at any point:
//!
//! 1. Inside kept blocks, only free sectors change (zeroed, or their bitmap bits cleared).
//! 2. The BAT is rewritten with the dropped blocks unallocated. Each entry is either old (its
//!    block is still intact) or new (unallocated: the caller found no needed byte in it), so
//!    any mix reads the same files.
//! 3. Blocks at the end of the file are copied into the slots the dropped blocks freed; only
//!    after the copies are flushed does the BAT point at them.
//! 4. The footer is written at the new end, then the file is truncated after it.
//!
//! Every slot written in steps 3 and 4 is referenced by no BAT entry at that moment.

use std::sync::Arc;

use super::{SparseVhd, StoredSectors};
use crate::error::{Error, Result};
use crate::vhd::bat::{BlockAllocationTable, FileSector, table_bytes};
use crate::vhd::bitmap::SectorBitmap;
use crate::vhd::device;
use crate::vhd::footer::FOOTER_SIZE;
use crate::vhd::header::HEADER_SIZE;

/// Blocks moved between two flushes of the BAT.
const MOVE_BATCH: usize = 64;
/// Bytes copied at once when a block moves: memory stays fixed whatever the block size.
const COPY_CHUNK: u64 = 4 << 20;

/// What happens to one allocated block when the image is rewritten in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockRewrite {
    /// The block leaves the image.
    Drop,
    /// The block stays: `zero` are ranges of its data (offsets inside the block) written as
    /// zeros, and `bitmap` replaces its sector bitmap when given.
    Keep { zero: Vec<(u64, u64)>, bitmap: Option<SectorBitmap> },
}

/// What an in-place rewrite did to the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RewriteOutcome {
    /// Blocks copied towards the start of the file to let it shrink.
    pub moved_blocks: u64,
    /// Bytes of kept blocks written as zeros.
    pub zeroed_bytes: u64,
    /// Blocks the image still holds.
    pub stored_blocks: u64,
}

impl SparseVhd {
    #[doc(hidden)]
    /// The ranges of `[a, z)` (offsets inside allocated `block`) whose stored bytes are not all
    /// zero, in 4 KiB steps: what zeroing them must write.
    pub fn stored_nonzero(&self, block: u64, a: u64, z: u64) -> Result<Vec<(u64, u64)>> {
        let Some(sector) = self.bat.sector(block) else { return Ok(Vec::new()) };
        self.check_block_inside(block, sector)?;
        let data_at = sector.offset() + self.header.bitmap_size();
        let z = z.min(self.block_size());
        let found = device::nonzero_ranges(data_at + a.min(z), data_at + z, &|at, buf| {
            self.file.read_exact_at(at, buf, "block data")
        })?;
        Ok(found.into_iter().map(|(x, y)| (x - data_at, y - data_at)).collect())
    }

    #[doc(hidden)]
    /// Rewrites the image in place: each allocated block named in `rewrites` is dropped or
    /// kept with its changes; blocks not named stay as they are. Kept blocks move down into
    /// the freed slots and the file is cut after the last one.
    pub fn rewrite_in_place(&mut self, rewrites: &[(u64, BlockRewrite)]) -> Result<RewriteOutcome> {
        self.require_writable()?;
        // Blocks that overlap metadata or each other would be copied over live data.
        if let Some(f) = crate::vhd::check::sparse_hazards(self).into_iter().next() {
            return Err(crate::vhd::check::hazard_error(&f));
        }
        let mut outcome = RewriteOutcome::default();
        let mut bat = self.bat.clone();
        let old = self.bat.clone();
        for (block, rewrite) in rewrites {
            let Some(sector) = old.sector(*block) else {
                return Err(Error::internal(format!("in-place rewrite of unallocated block {block}")));
            };
            self.check_block_inside(*block, sector)?;
            match rewrite {
                BlockRewrite::Drop => {
                    bat.set(*block, None);
                    self.presence_map().remove(block);
                }
                BlockRewrite::Keep { zero, bitmap } => {
                    outcome.zeroed_bytes += self.change_block(*block, sector, zero, bitmap.as_ref())?
                }
            }
        }
        // Step 1 is durable before any BAT entry changes.
        self.file.sync()?;
        if bat.allocated_count() < old.allocated_count() {
            // Step 2: the dropped blocks leave the BAT in one write.
            self.write_bat(&bat)?;
            let freed: Vec<FileSector> =
                old.allocated().filter(|(b, _)| bat.sector(*b).is_none()).map(|(_, s)| s).collect();
            outcome.moved_blocks = self.fill_freed_slots(&mut bat, freed)?;
            self.cut_after_last_block()?;
        }
        outcome.stored_blocks = self.bat.allocated_count();
        Ok(outcome)
    }

    /// Step 1 for one kept block: zeros over `zero` (data offsets) and the new bitmap.
    /// Returns the bytes zeroed.
    fn change_block(
        &mut self,
        block: u64,
        sector: FileSector,
        zero: &[(u64, u64)],
        bitmap: Option<&SectorBitmap>,
    ) -> Result<u64> {
        let data_at = sector.offset() + self.header.bitmap_size();
        let mut zeroed = 0;
        for &(a, z) in zero {
            let z = z.min(self.block_size());
            if a < z {
                device::write_zeros_with(data_at + a, z - a, &mut |at, zeros| self.file.write_all_at(at, zeros))?;
                zeroed += z - a;
            }
        }
        if let Some(bm) = bitmap {
            if bm.sectors() != self.block_sectors() {
                return Err(Error::internal(format!("block {block}: a sector bitmap of the wrong size")));
            }
            self.file.write_all_at(sector.offset(), &bm.encode(self.header.bitmap_size() as usize))?;
            self.presence_map().insert(block, Arc::new(StoredSectors::of(bm.clone())));
        }
        Ok(zeroed)
    }

    /// Writes `bat` over the table, durably, and makes it the image's.
    fn write_bat(&mut self, bat: &BlockAllocationTable) -> Result<()> {
        self.file.write_all_at(self.header.table_offset, &bat.encode())?;
        self.file.sync()?;
        self.bat = bat.clone();
        Ok(())
    }

    /// Step 3: the last blocks of the file are copied into the `freed` slots (sectors) below
    /// them, a batch at a time, each batch durable before the BAT points at it. Returns the
    /// number of blocks moved.
    fn fill_freed_slots(&mut self, bat: &mut BlockAllocationTable, freed: Vec<FileSector>) -> Result<u64> {
        let span = self.header.bitmap_size() + self.block_size();
        let metadata_end = self.metadata_end();
        let mut free: Vec<FileSector> = freed.into_iter().filter(|s| s.offset() >= metadata_end).collect();
        free.sort_unstable();
        let mut kept: Vec<(u64, FileSector)> = bat.allocated().collect();
        kept.sort_by_key(|&(_, sector)| std::cmp::Reverse(sector));
        let moves: Vec<(u64, FileSector, FileSector)> = kept
            .iter()
            .zip(free)
            .take_while(|&(&(_, sector), slot)| slot < sector)
            .map(|(&(b, sector), slot)| (b, sector, slot))
            .collect();
        let mut buf = vec![0u8; COPY_CHUNK.min(span) as usize];
        for batch in moves.chunks(MOVE_BATCH) {
            for &(_, from, to) in batch {
                self.copy_within(from.offset(), to.offset(), span, &mut buf)?;
            }
            self.file.sync()?;
            for &(b, _, to) in batch {
                bat.set(b, Some(to));
            }
            self.write_bat(bat)?;
        }
        Ok(moves.len() as u64)
    }

    /// Copies `len` bytes of the file from `from` to `to` (ranges that do not overlap).
    fn copy_within(&self, from: u64, to: u64, len: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0;
        while done < len {
            let n = (buf.len() as u64).min(len - done) as usize;
            self.file.read_exact_at(from + done, &mut buf[..n], "block")?;
            self.file.write_all_at(to + done, &buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    /// Step 4: the footer at the end of the last block, then the file cut after it.
    fn cut_after_last_block(&mut self) -> Result<()> {
        let span = self.header.bitmap_size() + self.block_size();
        let last = self.bat.allocated().map(|(_, sector)| sector.offset() + span).max().unwrap_or(0);
        let new_end = last.max(self.metadata_end()).div_ceil(512) * 512;
        if new_end < self.data_end {
            self.file.write_all_at(new_end, self.footer.raw())?;
            self.file.sync()?;
            self.file.set_len(new_end + FOOTER_SIZE as u64)?;
            self.file.sync()?;
            self.data_end = new_end;
        }
        Ok(())
    }

    /// End of the metadata in front of the blocks: header, BAT and parent locator data.
    fn metadata_end(&self) -> u64 {
        let h = &self.header;
        let table_end = h.table_offset + table_bytes(h.max_table_entries);
        let locators = h.parent_locators.iter().map(|(_, l)| l.data_offset + l.data_length as u64).max().unwrap_or(0);
        (self.header_offset + HEADER_SIZE as u64).max(table_end).max(locators).max(FOOTER_SIZE as u64)
    }
}
