//! `$Bitmap`: one bit per cluster, least significant bit first, set when allocated.

/// The allocation state of every cluster of a volume.
#[derive(Clone, Debug)]
pub struct ClusterBitmap {
    bits: Vec<u8>,
    clusters: u64,
}

impl ClusterBitmap {
    /// A bitmap of `clusters` clusters from `$Bitmap`'s bytes (missing bytes read as free).
    pub fn new(mut bits: Vec<u8>, clusters: u64) -> Self {
        bits.resize(clusters.div_ceil(8) as usize, 0);
        ClusterBitmap { bits, clusters }
    }

    /// Number of clusters covered.
    pub fn clusters(&self) -> u64 {
        self.clusters
    }

    /// Whether cluster `c` is allocated (clusters past the volume are not).
    pub fn is_allocated(&self, c: u64) -> bool {
        c < self.clusters && self.bits[(c / 8) as usize] & (1 << (c % 8)) != 0
    }

    /// Number of allocated clusters in `[start, end)`.
    pub fn count(&self, start: u64, end: u64) -> u64 {
        let end = end.min(self.clusters);
        if start >= end {
            return 0;
        }
        let (first_full, last_full) = (start.div_ceil(8), end / 8);
        if first_full >= last_full {
            return (start..end).filter(|&c| self.is_allocated(c)).count() as u64;
        }
        let head = (start..first_full * 8).filter(|&c| self.is_allocated(c)).count() as u64;
        let tail = (last_full * 8..end).filter(|&c| self.is_allocated(c)).count() as u64;
        let body: u64 = self.bits[first_full as usize..last_full as usize].iter().map(|b| b.count_ones() as u64).sum();
        head + body + tail
    }

    /// Maximal allocated ranges `[start, end)` inside `[from, to)`.
    pub fn allocated_ranges(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        let to = to.min(self.clusters);
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut c = from;
        while c < to {
            if c.is_multiple_of(8) && c + 8 <= to && self.bits[(c / 8) as usize] == 0 {
                c += 8;
                continue;
            }
            if self.is_allocated(c) {
                match out.last_mut() {
                    Some(last) if last.1 == c => last.1 = c + 1,
                    _ => out.push((c, c + 1)),
                }
            }
            c += 1;
        }
        out
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_ranges() {
        let b = ClusterBitmap::new(vec![0b0000_0110, 0xFF, 0x00, 0x01], 30);
        assert!(b.is_allocated(1) && b.is_allocated(2) && !b.is_allocated(0));
        assert_eq!(b.count(0, 30), 2 + 8 + 1);
        assert_eq!(b.count(2, 12), 1 + 4);
        assert_eq!(b.allocated_ranges(0, 30), vec![(1, 3), (8, 16), (24, 25)]);
        assert!(!b.is_allocated(31));
    }
}
