//! The upload plan for a page blob: 512-byte-aligned ranges holding needed, non-zero data, so
//! an uploader skips zero pages and NTFS free space. Ranges are merged up to 4 MiB, the
//! largest single page write Azure accepts.

use rayon::prelude::*;

use crate::error::Result;
use crate::map::ImageMap;
use crate::map::blocks::NeedKind;
use crate::vhd::device::BlockDevice;

/// Largest range in the plan.
pub const MAX_RANGE: u64 = 4 << 20;

impl ImageMap<'_> {
    /// Non-zero sectors of needed bytes in block `b`, as merged `[start, end)` disk ranges.
    fn data_ranges_in_block(&self, b: u64) -> Result<Vec<(u64, u64)>> {
        let bs = self.block_size();
        let (start, end) = (b * bs, ((b + 1) * bs).min(self.image.len()));
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut buf = Vec::new();
        let data = self.image.data_ranges(start, end)?;
        for n in self.needs(start, end).into_iter().filter(|n| n.kind != NeedKind::Unneeded) {
            for &(x, y) in data.iter().filter(|(x, y)| *x < n.end && *y > n.start) {
                let (a, z) = (n.start.max(x) / 512 * 512, n.end.min(y).div_ceil(512) * 512);
                buf.resize((z - a) as usize, 0);
                self.image.read_at(a, &mut buf)?;
                self.push_nonzero_sectors(a, &buf, &mut out);
            }
        }
        Ok(out)
    }

    /// Appends the non-zero sectors of `buf` (read at disk offset `a`) to `out`, merged.
    fn push_nonzero_sectors(&self, a: u64, buf: &[u8], out: &mut Vec<(u64, u64)>) {
        for (i, sector) in buf.chunks(512).enumerate() {
            if sector.iter().any(|&x| x != 0) {
                let s = a + i as u64 * 512;
                match out.last_mut() {
                    Some(last) if last.1 >= s => last.1 = last.1.max(s + 512),
                    _ => out.push((s, s + 512)),
                }
            }
        }
    }

    /// Every range of needed non-zero data, merged across blocks and cut at `MAX_RANGE`.
    pub fn data_ranges(&self) -> Result<Vec<(u64, u64)>> {
        let per_block: Vec<Vec<(u64, u64)>> =
            self.data_blocks()?.into_par_iter().map(|b| self.data_ranges_in_block(b)).collect::<Result<_>>()?;
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (a, z) in per_block.into_iter().flatten() {
            match merged.last_mut() {
                Some(last) if last.1 >= a && z - last.0 <= MAX_RANGE => last.1 = last.1.max(z),
                _ => {
                    let mut at = a;
                    while z - at > MAX_RANGE {
                        merged.push((at, at + MAX_RANGE));
                        at += MAX_RANGE;
                    }
                    merged.push((at, z));
                }
            }
        }
        Ok(merged)
    }
}
