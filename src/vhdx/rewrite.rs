//! Compacting a VHDX in place: free ranges of kept blocks zeroed, blocks with no needed byte
//! made not present, the last blocks moved down into the freed slots, the file cut after the
//! last structure. Payload moves are written and flushed before the BAT entry that shows them,
//! and every BAT change goes through the log (see [`super::write`]), so a crash at any write
//! leaves a file that replays to a state reading the same needed bytes.

use crate::error::{Error, Result};
use crate::vhd::device;
use crate::vhd::sparse::{BlockRewrite, RewriteOutcome};
use crate::vhdx::Vhdx;
use crate::vhdx::bat::PayloadState;
use crate::vhdx::region::ALIGNMENT;

/// Blocks moved between two BAT log entries.
const MOVE_BATCH: usize = 64;
/// Bytes copied at once when a block moves.
const COPY_CHUNK: u64 = 4 << 20;

impl Vhdx {
    /// The ranges of `[a, z)` (offsets inside stored block `k`) whose stored bytes are not all
    /// zero, in 4 KiB steps.
    pub fn stored_nonzero(&self, k: u64, a: u64, z: u64) -> Result<Vec<(u64, u64)>> {
        let Ok((state, at)) = self.bat.payload(k) else { return Ok(Vec::new()) };
        if !state.stored() {
            return Ok(Vec::new());
        }
        let z = z.min(self.block_size());
        let found = device::nonzero_ranges(at + a.min(z), at + z, &|x, buf| {
            self.file.read_exact_at(x, buf, "VHDX payload block")
        })?;
        Ok(found.into_iter().map(|(x, y)| (x - at, y - at)).collect())
    }

    /// Rewrites the VHDX in place: each stored block named in `rewrites` is dropped or kept
    /// with its free ranges zeroed (a sector bitmap change is not made: the block keeps its
    /// sectors); blocks not named stay as they are.
    pub fn rewrite_in_place(&mut self, rewrites: &[(u64, BlockRewrite)]) -> Result<RewriteOutcome> {
        if let Some(f) = crate::vhd::check::vhdx_hazards(self).into_iter().next() {
            return Err(crate::vhd::check::hazard_error(&f));
        }
        self.begin(true)?;
        let mut outcome = RewriteOutcome::default();
        let mut dropped = Vec::new();
        for (k, rewrite) in rewrites {
            let (state, at) =
                self.bat.payload(*k).map_err(|_| Error::internal(format!("block {k}: a reserved state")))?;
            if !state.stored() {
                return Err(Error::internal(format!("in-place rewrite of block {k}, which is not stored")));
            }
            match rewrite {
                BlockRewrite::Drop => dropped.push((*k, at)),
                BlockRewrite::Keep { zero, .. } => {
                    for &(a, z) in zero {
                        let z = z.min(self.block_size());
                        if a < z {
                            device::write_zeros_with(at + a, z - a, &mut |x, b| self.file.write_all_at(x, b))?;
                            outcome.zeroed_bytes += z - a;
                        }
                    }
                }
            }
        }
        // Zeros are durable before any block leaves the BAT.
        self.file.sync()?;
        if !dropped.is_empty() {
            for &(k, _) in &dropped {
                self.bat.set_payload(k, PayloadState::NotPresent, 0);
            }
            let writes = self.bat_sectors(dropped.iter().map(|&(k, _)| self.bat.payload_index(k)))?;
            self.log_and_apply(writes)?;
            self.bitmaps.write().map_err(|_| Error::internal("bitmap cache poisoned"))?.clear();
            outcome.moved_blocks = self.fill_freed_slots(dropped.iter().map(|&(_, at)| at).collect())?;
            self.cut_after_last_structure()?;
        }
        self.end()?;
        outcome.stored_blocks = self.bat.stored().count() as u64;
        Ok(outcome)
    }

    /// Moves the last stored blocks into the `freed` slots below them, a batch at a time: the
    /// copies flushed, then the BAT through the log.
    fn fill_freed_slots(&mut self, mut freed: Vec<u64>) -> Result<u64> {
        freed.sort_unstable();
        let mut kept: Vec<(u64, PayloadState, u64)> = self.bat.stored().collect();
        kept.sort_by_key(|&(_, _, at)| std::cmp::Reverse(at));
        let moves: Vec<(u64, PayloadState, u64, u64)> = kept
            .iter()
            .zip(freed)
            .take_while(|&(&(_, _, at), slot)| slot < at)
            .map(|(&(k, s, at), slot)| (k, s, at, slot))
            .collect();
        let bs = self.block_size();
        let mut buf = vec![0u8; COPY_CHUNK.min(bs) as usize];
        for batch in moves.chunks(MOVE_BATCH) {
            for &(_, _, from, to) in batch {
                let mut done = 0;
                while done < bs {
                    let n = (buf.len() as u64).min(bs - done) as usize;
                    self.file.read_exact_at(from + done, &mut buf[..n], "VHDX payload block")?;
                    self.file.write_all_at(to + done, &buf[..n])?;
                    done += n as u64;
                }
            }
            self.file.sync()?;
            for &(k, state, _, to) in batch {
                self.bat.set_payload(k, state, to);
            }
            let writes = self.bat_sectors(batch.iter().map(|&(k, ..)| self.bat.payload_index(k)))?;
            self.log_and_apply(writes)?;
        }
        Ok(moves.len() as u64)
    }

    /// Cuts the file after its last structure (block, sector bitmap, region, log), logging the
    /// new size first as the specification asks of a shrinking file.
    fn cut_after_last_structure(&mut self) -> Result<()> {
        let bs = self.block_size();
        let mut end = 1 << 20;
        end = end.max(self.header.log_offset + self.header.log_length as u64);
        for r in &self.regions.entries {
            end = end.max(r.file_offset + r.length as u64);
        }
        for (_, _, at) in self.bat.stored() {
            end = end.max(at + bs);
        }
        for c in 0..self.bat.payload_blocks().div_ceil(self.bat.chunk_ratio()) {
            if let Some(at) = self.bat.bitmap(c) {
                end = end.max(at + ALIGNMENT);
            }
        }
        let end = end.div_ceil(ALIGNMENT) * ALIGNMENT;
        if end < self.file.file_len()? {
            self.log_shrink(end)?;
            self.file.set_len(end)?;
            self.file.sync()?;
            self.file_len = end;
        }
        Ok(())
    }
}
