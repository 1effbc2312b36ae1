//! The sector bitmap in front of each allocated block.
//!
//! One bit per 512-byte sector, most significant bit first: sector 0 of the block is bit 7 of
//! byte 0. In a differencing disk a set bit means the sector lives in this file and a clear bit
//! means "read the parent"; in a dynamic disk a clear bit means the sector was never written.

/// Bytes one bit stands for, whatever the disk's logical sector size.
pub const BITMAP_SECTOR: u64 = 512;

/// The presence bits of one block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectorBitmap {
    bits: Box<[u8]>,
    sectors: u32,
}

impl SectorBitmap {
    /// A bitmap for `sectors` sectors decoded from `raw` (its on-disk bytes).
    pub fn from_bytes(raw: &[u8], sectors: u32) -> Self {
        let need = (sectors as usize).div_ceil(8);
        let mut bits = vec![0u8; need];
        let n = need.min(raw.len());
        bits[..n].copy_from_slice(&raw[..n]);
        SectorBitmap { bits: bits.into_boxed_slice(), sectors }
    }

    /// All sectors absent.
    pub fn empty(sectors: u32) -> Self {
        SectorBitmap { bits: vec![0u8; (sectors as usize).div_ceil(8)].into_boxed_slice(), sectors }
    }

    /// The bitmap of a block of `block_size` bytes, every sector `present` or none.
    pub fn for_block(block_size: u64, present: bool) -> Self {
        let sectors = (block_size / BITMAP_SECTOR) as u32;
        if present { SectorBitmap::full(sectors) } else { SectorBitmap::empty(sectors) }
    }

    /// The bits `[first, last)` that cover bytes `[start, end)` of the block.
    pub fn bits_of(start: u64, end: u64) -> (u32, u32) {
        ((start / BITMAP_SECTOR) as u32, end.div_ceil(BITMAP_SECTOR) as u32)
    }

    /// The bytes `[start, end)` of the block that bits `[first, last)` stand for.
    pub fn bytes_of(first: u32, last: u32) -> (u64, u64) {
        (first as u64 * BITMAP_SECTOR, last as u64 * BITMAP_SECTOR)
    }

    /// Sets or clears the bits that cover bytes `[start, end)` of the block.
    pub fn set_bytes(&mut self, start: u64, end: u64, value: bool) {
        let (first, last) = SectorBitmap::bits_of(start, end);
        self.set_range(first, last, value);
    }

    /// All sectors present.
    pub fn full(sectors: u32) -> Self {
        let mut b = SectorBitmap::empty(sectors);
        b.set_range(0, sectors, true);
        b
    }

    /// Number of sectors covered.
    pub fn sectors(&self) -> u32 {
        self.sectors
    }

    /// Whether `sector` is present.
    pub fn is_set(&self, sector: u32) -> bool {
        sector < self.sectors && self.bits[(sector / 8) as usize] & (0x80 >> (sector % 8)) != 0
    }

    /// Sets or clears sectors `[start, end)`.
    pub fn set_range(&mut self, start: u32, end: u32, value: bool) {
        for s in start..end.min(self.sectors) {
            let mask = 0x80 >> (s % 8);
            if value {
                self.bits[(s / 8) as usize] |= mask;
            } else {
                self.bits[(s / 8) as usize] &= !mask;
            }
        }
    }

    /// Number of present sectors.
    pub fn count(&self) -> u32 {
        (0..self.sectors).filter(|&s| self.is_set(s)).count() as u32
    }

    /// Whether every sector is present.
    pub fn is_full(&self) -> bool {
        self.count() == self.sectors
    }

    /// Maximal runs `(start, end, present)` covering sectors `[start, end)`.
    pub fn runs(&self, start: u32, end: u32) -> Vec<(u32, u32, bool)> {
        let end = end.min(self.sectors);
        let mut out: Vec<(u32, u32, bool)> = Vec::new();
        for s in start..end {
            let v = self.is_set(s);
            match out.last_mut() {
                Some(last) if last.2 == v => last.1 = s + 1,
                _ => out.push((s, s + 1, v)),
            }
        }
        out
    }

    /// The on-disk bytes, zero-padded to `size`.
    pub fn encode(&self, size: usize) -> Vec<u8> {
        let mut out = self.bits.to_vec();
        out.resize(size.max(out.len()), 0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msb_first_bit_order() {
        let b = SectorBitmap::from_bytes(&[0x80, 0x01], 16);
        assert!(b.is_set(0));
        assert!(!b.is_set(1));
        assert!(b.is_set(15));
        assert_eq!(b.count(), 2);
        assert_eq!(b.runs(0, 16), vec![(0, 1, true), (1, 15, false), (15, 16, true)]);
    }

    #[test]
    fn set_and_clear_ranges() {
        let mut b = SectorBitmap::empty(4096);
        b.set_range(10, 20, true);
        assert_eq!(b.count(), 10);
        b.set_range(15, 17, false);
        assert_eq!(b.count(), 8);
        assert!(!SectorBitmap::empty(8).is_full());
        assert!(SectorBitmap::full(4096).is_full());
        assert_eq!(SectorBitmap::full(4096).encode(512), vec![0xFF; 512]);
    }
}
