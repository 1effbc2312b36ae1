//! Disk addresses. Partition tables count in sectors (logical block addresses), reads and
//! writes in bytes; [`Lba`] keeps the two apart, so a sector number is never used as an
//! offset or the other way round, and every conversion names the disk's sector size.

use std::fmt;
use std::ops::{Add, Sub};

use serde::Serialize;

pub use crate::vhd::device::SectorSize;

/// A logical block address: a sector number on the disk. Its byte offset depends on the
/// disk's [`SectorSize`], so every conversion names one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct Lba(pub u64);

impl Lba {
    /// The disk byte offset where the sector starts.
    pub fn offset(self, ss: SectorSize) -> u64 {
        ss.bytes_of(self.0)
    }

    /// The sector holding disk byte `offset`.
    pub fn containing(offset: u64, ss: SectorSize) -> Lba {
        Lba(offset / ss.bytes())
    }

    /// The last whole sector of a disk of `len` bytes, if it has one.
    pub fn last_of(len: u64, ss: SectorSize) -> Option<Lba> {
        (len / ss.bytes()).checked_sub(1).map(Lba)
    }

    /// The sector `n` sectors further, if there is one.
    pub fn checked_add(self, n: u64) -> Option<Lba> {
        self.0.checked_add(n).map(Lba)
    }
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
        let legacy = SectorSize::LEGACY;
        assert_eq!(Lba(63).offset(legacy), 32256);
        assert_eq!(Lba::containing(32767, legacy), Lba(63));
        assert_eq!(Lba::last_of(1 << 20, legacy), Some(Lba(2047)));
        assert_eq!(Lba::last_of(511, legacy), None);
        assert_eq!(Lba(2048) - Lba(63), 1985);
        assert_eq!(legacy.sectors_for(513), 2);
        assert_eq!(legacy.bytes_of(8), 4096);
        assert_eq!(Lba(u64::MAX).offset(legacy), u64::MAX, "saturates instead of wrapping");
    }

    #[test]
    fn a_4kn_disk_counts_in_4096_byte_sectors() {
        let native = SectorSize::NATIVE_4K;
        assert_eq!(Lba(1).offset(native), 4096, "the GPT header of a 4Kn disk");
        assert_eq!(Lba::containing(1 << 20, native), Lba(256));
        assert_eq!(Lba::last_of(1 << 20, native), Some(Lba(255)));
        assert_eq!(native.sectors_for(4097), 2);
        assert_eq!(SectorSize::new(4096), Some(native));
        assert_eq!(SectorSize::new(1024), None);
    }
}
