//! Disk addresses. Partition tables count in sectors (logical block addresses), reads and
//! writes in bytes; [`Lba`] keeps the two apart, so a sector number is never used as an
//! offset or the other way round.

use std::fmt;
use std::ops::{Add, Sub};

use serde::Serialize;

/// Bytes per logical sector of the disks vhdkit reads (VHD disks always have 512).
pub const SECTOR_SIZE: u64 = 512;

/// A logical block address: a sector number on the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Lba(pub u64);

impl Lba {
    /// The disk byte offset where the sector starts.
    pub fn offset(self) -> u64 {
        self.0.saturating_mul(SECTOR_SIZE)
    }

    /// The sector holding disk byte `offset`.
    pub fn containing(offset: u64) -> Lba {
        Lba(offset / SECTOR_SIZE)
    }

    /// The last whole sector of a disk of `len` bytes, if it has one.
    pub fn last_of(len: u64) -> Option<Lba> {
        (len / SECTOR_SIZE).checked_sub(1).map(Lba)
    }

    /// The sector `n` sectors further, if there is one.
    pub fn checked_add(self, n: u64) -> Option<Lba> {
        self.0.checked_add(n).map(Lba)
    }
}

/// Bytes of `n` sectors.
pub fn sectors_to_bytes(n: u64) -> u64 {
    n.saturating_mul(SECTOR_SIZE)
}

/// Whole sectors needed to hold `bytes`.
pub fn bytes_to_sectors(bytes: u64) -> u64 {
    bytes.div_ceil(SECTOR_SIZE)
}

impl Add<u64> for Lba {
    type Output = Lba;
    fn add(self, n: u64) -> Lba {
        Lba(self.0 + n)
    }
}

impl Sub<u64> for Lba {
    type Output = Lba;
    fn sub(self, n: u64) -> Lba {
        Lba(self.0 - n)
    }
}

/// The number of sectors from `other` to `self`.
impl Sub<Lba> for Lba {
    type Output = u64;
    fn sub(self, other: Lba) -> u64 {
        self.0 - other.0
    }
}

impl fmt::Display for Lba {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectors_and_bytes_do_not_mix() {
        assert_eq!(Lba(63).offset(), 32256);
        assert_eq!(Lba::containing(32767), Lba(63));
        assert_eq!(Lba::last_of(1 << 20), Some(Lba(2047)));
        assert_eq!(Lba::last_of(511), None);
        assert_eq!(Lba(2048) - Lba(63), 1985);
        assert_eq!(bytes_to_sectors(513), 2);
        assert_eq!(sectors_to_bytes(8), 4096);
        assert_eq!(Lba(u64::MAX).offset(), u64::MAX, "saturates instead of wrapping");
    }
}
