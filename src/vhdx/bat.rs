//! The VHDX block allocation table (MS-VHDX 2.5): one 64-bit entry per payload block, and after
//! every chunk of payload entries one entry for that chunk's sector bitmap block.

use serde::Serialize;

/// What a payload block holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum PayloadState {
    /// No data in this file: zeros, or in a differencing disk the parent's bytes.
    NotPresent,
    /// Contents undefined (read as zeros).
    Undefined,
    /// Reads as zeros, in every kind of disk.
    Zero,
    /// Trimmed (read as zeros).
    Unmapped,
    /// Every sector is in this file.
    FullyPresent,
    /// Differencing disks: the sector bitmap says which sectors are in this file.
    PartiallyPresent,
}

impl PayloadState {
    /// The state of an entry's low three bits, or `None` for a reserved value. Value 5 (an
    /// early draft's "unmapped") reads as unmapped, as qemu reads it.
    fn from_bits(bits: u64) -> Option<Self> {
        Some(match bits {
            0 => PayloadState::NotPresent,
            1 => PayloadState::Undefined,
            2 => PayloadState::Zero,
            3 | 5 => PayloadState::Unmapped,
            6 => PayloadState::FullyPresent,
            7 => PayloadState::PartiallyPresent,
            _ => return None,
        })
    }

    fn bits(self) -> u64 {
        match self {
            PayloadState::NotPresent => 0,
            PayloadState::Undefined => 1,
            PayloadState::Zero => 2,
            PayloadState::Unmapped => 3,
            PayloadState::FullyPresent => 6,
            PayloadState::PartiallyPresent => 7,
        }
    }

    /// Whether the block's data is in this file.
    pub fn stored(self) -> bool {
        matches!(self, PayloadState::FullyPresent | PayloadState::PartiallyPresent)
    }
}

/// A sector bitmap entry's "present" state.
const SB_PRESENT: u64 = 6;
/// The bits of an entry that hold the file offset (in MiB).
const OFFSET_MASK: u64 = 0xFFFF_FFFF_FFF0_0000;

/// A decoded BAT.
#[derive(Clone, Debug)]
pub struct VhdxBat {
    entries: Vec<u64>,
    chunk_ratio: u64,
    payload_blocks: u64,
}

/// The BAT's shape for a disk: chunk ratio, payload blocks, total entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatShape {
    pub chunk_ratio: u64,
    pub payload_blocks: u64,
    pub entries: u64,
}

impl BatShape {
    /// The shape for a disk of `size` bytes in blocks of `block_size`, with `sector_size`-byte
    /// sectors; a differencing disk also has an entry for its last chunk's bitmap.
    pub fn of(size: u64, block_size: u32, sector_size: u32, differencing: bool) -> Self {
        let chunk_ratio = ((1u64 << 23) * sector_size as u64) / block_size as u64;
        let payload_blocks = size.div_ceil(block_size as u64);
        let entries = if differencing {
            payload_blocks.div_ceil(chunk_ratio) * (chunk_ratio + 1)
        } else {
            payload_blocks + payload_blocks.saturating_sub(1) / chunk_ratio
        };
        BatShape { chunk_ratio, payload_blocks, entries }
    }
}

impl VhdxBat {
    /// Decodes the entries of a BAT of `shape` from `raw`.
    pub fn parse(raw: &[u8], shape: BatShape) -> Self {
        let entries = raw
            .chunks_exact(8)
            .take(shape.entries as usize)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        VhdxBat { entries, chunk_ratio: shape.chunk_ratio, payload_blocks: shape.payload_blocks }
    }

    /// Reads a BAT of `shape` through `read(buffer)` straight into the decoded table, so a
    /// large table is held once and never also as bytes.
    pub fn read<E>(shape: BatShape, read: impl FnOnce(&mut [u8]) -> Result<(), E>) -> Result<Self, E> {
        let mut entries = vec![0u64; shape.entries as usize];
        read(bytemuck::cast_slice_mut(&mut entries))?;
        for e in &mut entries {
            *e = u64::from_le(*e);
        }
        Ok(VhdxBat { entries, chunk_ratio: shape.chunk_ratio, payload_blocks: shape.payload_blocks })
    }

    /// Calls `f` with every payload block's index and raw entry, in order, walking the table
    /// once (the sector bitmap entries between chunks skipped).
    pub fn for_each_payload(&self, mut f: impl FnMut(u64, u64)) {
        let per_chunk = self.chunk_ratio as usize + 1;
        let mut k = 0u64;
        for chunk in self.entries.chunks(per_chunk) {
            for &e in &chunk[..chunk.len().min(per_chunk - 1)] {
                if k == self.payload_blocks {
                    return;
                }
                f(k, e);
                k += 1;
            }
        }
    }

    /// How many payload blocks are in each state; entries of a reserved state are left out.
    pub fn state_counts(&self) -> Vec<(PayloadState, u64)> {
        let mut by_bits = [0u64; 8];
        self.for_each_payload(|_, e| by_bits[(e & 7) as usize] += 1);
        let mut counts: Vec<(PayloadState, u64)> = Vec::new();
        for (bits, &n) in by_bits.iter().enumerate() {
            let Some(state) = PayloadState::from_bits(bits as u64) else { continue };
            match counts.iter_mut().find(|(s, _)| *s == state) {
                Some((_, c)) => *c += n,
                None if n > 0 => counts.push((state, n)),
                None => {}
            }
        }
        counts
    }

    /// A BAT of `shape` with every block not present.
    pub fn new(shape: BatShape) -> Self {
        VhdxBat {
            entries: vec![0; shape.entries as usize],
            chunk_ratio: shape.chunk_ratio,
            payload_blocks: shape.payload_blocks,
        }
    }

    /// The table for a disk of `shape` (the same chunk ratio): entries past its end dropped,
    /// new ones not present.
    pub fn reshape(&mut self, shape: BatShape) {
        self.entries.resize(shape.entries as usize, 0);
        self.payload_blocks = shape.payload_blocks;
    }

    /// Number of entries.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Payload blocks per chunk.
    pub fn chunk_ratio(&self) -> u64 {
        self.chunk_ratio
    }

    /// Number of payload blocks.
    pub fn payload_blocks(&self) -> u64 {
        self.payload_blocks
    }

    /// Where payload block `k`'s entry is.
    pub fn payload_index(&self, k: u64) -> usize {
        (k + k / self.chunk_ratio) as usize
    }

    /// Where chunk `c`'s sector bitmap entry is.
    pub fn bitmap_index(&self, c: u64) -> usize {
        (c * (self.chunk_ratio + 1) + self.chunk_ratio) as usize
    }

    /// Payload block `k`'s state and file offset (0 when not stored), or the raw entry when
    /// its state is reserved.
    pub fn payload(&self, k: u64) -> Result<(PayloadState, u64), u64> {
        Self::decode_payload(self.entries.get(self.payload_index(k)).copied().unwrap_or(0))
    }

    /// Whether a payload entry points into the file or has a reserved state: the only
    /// entries that can be wrong.
    #[inline]
    pub fn points_or_reserved(e: u64) -> bool {
        !matches!(e & 7, 0..=3 | 5)
    }

    /// A payload entry's state and file offset (0 when not stored), or the entry itself when
    /// its state is reserved.
    pub fn decode_payload(e: u64) -> Result<(PayloadState, u64), u64> {
        match PayloadState::from_bits(e & 7) {
            Some(s) if s.stored() => Ok((s, e & OFFSET_MASK)),
            Some(s) => Ok((s, 0)),
            None => Err(e),
        }
    }

    /// The file offset of chunk `c`'s sector bitmap, when present.
    pub fn bitmap(&self, c: u64) -> Option<u64> {
        let e = self.entries.get(self.bitmap_index(c)).copied()?;
        (e & 7 == SB_PRESENT).then_some(e & OFFSET_MASK)
    }

    /// Sets payload block `k`'s state and file offset (a multiple of 1 MiB, or 0).
    pub fn set_payload(&mut self, k: u64, state: PayloadState, offset: u64) {
        let i = self.payload_index(k);
        self.entries[i] = state.bits() | if state.stored() { offset & OFFSET_MASK } else { 0 };
    }

    /// Sets chunk `c`'s sector bitmap block (`None`: not present).
    pub fn set_bitmap(&mut self, c: u64, offset: Option<u64>) {
        let i = self.bitmap_index(c);
        self.entries[i] = offset.map_or(0, |o| SB_PRESENT | (o & OFFSET_MASK));
    }

    /// The raw entries.
    pub fn entries(&self) -> &[u64] {
        &self.entries
    }

    /// The table's bytes.
    pub fn encode(&self) -> Vec<u8> {
        self.entries.iter().flat_map(|e| e.to_le_bytes()).collect()
    }

    /// Every stored payload block: (index, state, file offset), in block order.
    pub fn stored(&self) -> impl Iterator<Item = (u64, PayloadState, u64)> + '_ {
        (0..self.payload_blocks).filter_map(|k| match self.payload(k) {
            Ok((s, at)) if s.stored() => Some((k, s, at)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_follow_the_specification() {
        // 512-byte sectors, 32 MiB blocks: 128 payload blocks per 4 GiB chunk.
        let s = BatShape::of(10 << 30, 32 << 20, 512, false);
        assert_eq!((s.chunk_ratio, s.payload_blocks, s.entries), (128, 320, 322));
        let d = BatShape::of(10 << 30, 32 << 20, 512, true);
        assert_eq!(d.entries, 3 * 129);
        assert_eq!(BatShape::of(1 << 30, 1 << 20, 4096, false).chunk_ratio, 32768);
    }

    #[test]
    fn payload_and_bitmap_entries_interleave() {
        let mut bat = VhdxBat::new(BatShape::of(10 << 30, 32 << 20, 512, true));
        assert_eq!(bat.payload_index(127), 127);
        assert_eq!(bat.payload_index(128), 129);
        assert_eq!(bat.bitmap_index(0), 128);
        bat.set_payload(128, PayloadState::FullyPresent, 5 << 20);
        bat.set_bitmap(1, Some(9 << 20));
        assert_eq!(bat.payload(128), Ok((PayloadState::FullyPresent, 5 << 20)));
        assert_eq!(bat.bitmap(1), Some(9 << 20));
        bat.set_payload(3, PayloadState::Zero, 7 << 20);
        assert_eq!(bat.payload(3), Ok((PayloadState::Zero, 0)), "a zero block keeps no offset");
        assert_eq!(bat.stored().count(), 1);
    }
}
