//! The block allocation table of dynamic and differencing images.

/// A BAT entry that marks a block as not allocated.
pub const UNALLOCATED: u32 = u32::MAX;
/// Most BAT entries vhdkit accepts: 2040 GiB in 512 KiB blocks needs about 4.2 million, so
/// 16 million leaves room and bounds the memory an untrusted header can ask for (64 MiB).
pub const MAX_ENTRIES: u32 = 1 << 24;

/// Bytes per sector of the image file, the unit BAT entries count in.
pub const FILE_SECTOR: u64 = 512;

/// A sector of the image file, as a BAT entry names where a block starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileSector(pub u32);

impl FileSector {
    /// The file offset where the sector starts.
    pub fn offset(self) -> u64 {
        self.0 as u64 * FILE_SECTOR
    }

    /// The first sector at or after file offset `at`, if a BAT entry can name it.
    pub fn at_or_after(at: u64) -> Option<FileSector> {
        u32::try_from(at.div_ceil(FILE_SECTOR)).ok().filter(|&s| s != UNALLOCATED).map(FileSector)
    }
}

/// One big-endian sector number per block, or [`UNALLOCATED`].
#[derive(Clone, Debug)]
pub struct BlockAllocationTable {
    entries: Vec<u32>,
}

impl BlockAllocationTable {
    /// A table of `count` unallocated entries.
    pub fn new(count: u32) -> Self {
        BlockAllocationTable { entries: vec![UNALLOCATED; count as usize] }
    }

    /// Decodes `count` entries from the raw table bytes.
    pub fn parse(raw: &[u8], count: u32) -> Self {
        BlockAllocationTable {
            entries: raw
                .chunks_exact(4)
                .take(count as usize)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The file sector where `block`'s bitmap starts, or `None` when it is not allocated.
    pub fn sector(&self, block: u64) -> Option<FileSector> {
        match self.entries.get(usize::try_from(block).ok()?) {
            Some(&UNALLOCATED) | None => None,
            Some(&s) => Some(FileSector(s)),
        }
    }

    /// Points `block` at `sector`, or marks it unallocated.
    pub fn set(&mut self, block: u64, sector: Option<FileSector>) {
        self.entries[block as usize] = sector.map_or(UNALLOCATED, |s| s.0);
    }

    /// Allocated blocks as (block index, bitmap sector), in block order.
    pub fn allocated(&self) -> impl Iterator<Item = (u64, FileSector)> + '_ {
        self.entries.iter().enumerate().filter(|(_, s)| **s != UNALLOCATED).map(|(i, s)| (i as u64, FileSector(*s)))
    }

    /// Allocated blocks among `[first, last)`, in order.
    pub fn allocated_in(&self, first: u64, last: u64) -> impl Iterator<Item = u64> + '_ {
        let (a, b) = ((first as usize).min(self.entries.len()), (last as usize).min(self.entries.len()));
        self.entries[a..b].iter().enumerate().filter(|(_, s)| **s != UNALLOCATED).map(move |(i, _)| (a + i) as u64)
    }

    /// Number of allocated blocks.
    pub fn allocated_count(&self) -> u64 {
        self.entries.iter().filter(|s| **s != UNALLOCATED).count() as u64
    }

    /// The table's bytes, padded with unallocated entries to whole 512-byte sectors.
    pub fn encode(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.entries.iter().flat_map(|e| e.to_be_bytes()).collect();
        out.resize(table_bytes(self.entries.len() as u32) as usize, 0xFF);
        out
    }
}

/// Bytes a table of `count` entries occupies on disk (whole sectors).
pub fn table_bytes(count: u32) -> u64 {
    (count as u64 * 4).div_ceil(FILE_SECTOR) * FILE_SECTOR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_big_endian_padded_to_a_sector() {
        let mut t = BlockAllocationTable::new(3);
        t.set(1, Some(FileSector(0x0102_0304)));
        let b = t.encode();
        assert_eq!(b.len(), 512);
        assert_eq!(&b[..12], &[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert!(b[12..].iter().all(|&x| x == 0xFF));
        let back = BlockAllocationTable::parse(&b, 3);
        assert_eq!(back.sector(1), Some(FileSector(0x0102_0304)));
        assert_eq!(FileSector(3).offset(), 1536);
        assert_eq!(FileSector::at_or_after(1537), Some(FileSector(4)));
        assert_eq!(FileSector::at_or_after(u32::MAX as u64 * 512), None, "the unallocated marker");
        assert_eq!(back.sector(0), None);
        assert_eq!(back.sector(7), None);
        assert_eq!(back.allocated().collect::<Vec<_>>(), vec![(1, FileSector(0x0102_0304))]);
    }
}
