//! The master boot record and the extended boot records of logical partitions.

use serde::Serialize;

/// Offset of the partition table in an MBR or EBR sector.
pub const TABLE_OFFSET: usize = 446;
/// Size of one partition entry.
pub const ENTRY_SIZE: usize = 16;
/// Offset of the 32-bit disk signature in the MBR.
pub const DISK_SIGNATURE_OFFSET: usize = 440;
/// The type of an extended partition (CHS-addressed; 0x0F and 0x85 are its other forms), and
/// of an EBR's link to the next EBR.
pub const EXTENDED: u8 = 0x05;
/// Most CHS values an MBR entry can express: cylinder 1023, head 254, sector 63.
pub const CHS_MAX: Chs = Chs { cylinder: 1023, head: 254, sector: 63 };

/// A cylinder/head/sector address as the 3-byte MBR encoding holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Chs {
    pub cylinder: u16,
    pub head: u8,
    pub sector: u8,
}

impl Chs {
    /// Decodes head, sector (+ cylinder bits 8-9), cylinder bits 0-7.
    pub fn decode(b: [u8; 3]) -> Self {
        Chs { head: b[0], sector: b[1] & 0x3F, cylinder: ((b[1] as u16 & 0xC0) << 2) | b[2] as u16 }
    }

    /// Encodes to the 3-byte form.
    pub fn encode(self) -> [u8; 3] {
        [self.head, (self.sector & 0x3F) | ((self.cylinder >> 2) & 0xC0) as u8, self.cylinder as u8]
    }

    /// The CHS address of `lba` on a disk with `heads` heads and `spt` sectors per track,
    /// clamped to 1023/254/63 as Windows writes addresses it cannot express.
    pub fn from_lba(lba: u64, heads: u8, spt: u8) -> Self {
        let (heads, spt) = (heads.max(1) as u64, spt.max(1) as u64);
        let cylinder = lba / (heads * spt);
        if cylinder > CHS_MAX.cylinder as u64 {
            return CHS_MAX;
        }
        Chs { cylinder: cylinder as u16, head: ((lba / spt) % heads) as u8, sector: (lba % spt + 1) as u8 }
    }
}

/// The BIOS geometry a partition table's CHS addresses were written with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BiosGeometry {
    pub heads: u8,
    pub sectors_per_track: u8,
}

impl BiosGeometry {
    /// What Windows (and every BIOS with LBA translation) uses: 255 heads, 63 sectors.
    pub const WINDOWS: BiosGeometry = BiosGeometry { heads: 255, sectors_per_track: 63 };

    /// Whether `chs` is the address of `lba` in this geometry.
    fn explains(self, lba: u64, chs: Chs) -> bool {
        let (h, s) = (self.heads as u64, self.sectors_per_track as u64);
        chs.sector >= 1
            && (chs.sector as u64) <= s
            && (chs.head as u64) < h
            && (chs.cylinder as u64 * h + chs.head as u64) * s + chs.sector as u64 - 1 == lba
    }

    /// The geometry that explains every address of `pairs` (absolute LBA, CHS) below the
    /// 1024-cylinder limit: 255 x 63 when it does, else `hint` (the VHD's), else the first
    /// that does. When no address constrains it, `hint` (or 255 x 63); when none explains
    /// them all, 255 x 63.
    pub fn of_table(pairs: &[(u64, Chs)], hint: Option<BiosGeometry>) -> BiosGeometry {
        let usable: Vec<(u64, Chs)> =
            pairs.iter().copied().filter(|(_, c)| c.cylinder < 1023 && c.sector > 0).collect();
        if usable.is_empty() {
            return hint.unwrap_or(BiosGeometry::WINDOWS);
        }
        let fits = |g: BiosGeometry| usable.iter().all(|&(lba, c)| g.explains(lba, c));
        let preferred = [Some(BiosGeometry::WINDOWS), hint].into_iter().flatten();
        let search = (1..=255u8)
            .rev()
            .flat_map(|heads| (1..=63u8).rev().map(move |spt| BiosGeometry { heads, sectors_per_track: spt }));
        preferred.chain(search).find(|g| fits(*g)).unwrap_or(BiosGeometry::WINDOWS)
    }
}

/// One 16-byte partition entry of an MBR or EBR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MbrEntry {
    pub raw: [u8; ENTRY_SIZE],
}

impl MbrEntry {
    /// The entry at slot `i` (0-3) of a boot sector.
    pub fn from_sector(sector: &[u8], i: usize) -> Self {
        let mut raw = [0u8; ENTRY_SIZE];
        raw.copy_from_slice(&sector[TABLE_OFFSET + i * ENTRY_SIZE..][..ENTRY_SIZE]);
        MbrEntry { raw }
    }

    /// Boot indicator byte (0x80 = active).
    pub fn boot_indicator(&self) -> u8 {
        self.raw[0]
    }

    /// Whether the partition is marked active.
    pub fn bootable(&self) -> bool {
        self.raw[0] == 0x80
    }

    /// CHS address of the first sector.
    pub fn first_chs(&self) -> Chs {
        Chs::decode([self.raw[1], self.raw[2], self.raw[3]])
    }

    /// Partition type byte.
    pub fn kind(&self) -> u8 {
        self.raw[4]
    }

    /// Sets the partition type byte.
    pub fn set_kind(&mut self, kind: u8) {
        self.raw[4] = kind;
    }

    /// CHS address of the last sector.
    pub fn last_chs(&self) -> Chs {
        Chs::decode([self.raw[5], self.raw[6], self.raw[7]])
    }

    /// First sector, relative to what the table's kind says (disk, EBR or extended start).
    pub fn start_lba(&self) -> u32 {
        u32::from_le_bytes([self.raw[8], self.raw[9], self.raw[10], self.raw[11]])
    }

    /// Number of sectors.
    pub fn sectors(&self) -> u32 {
        u32::from_le_bytes([self.raw[12], self.raw[13], self.raw[14], self.raw[15]])
    }

    /// Whether the slot is unused.
    pub fn is_empty(&self) -> bool {
        self.kind() == 0 || self.sectors() == 0
    }

    /// Whether this entry describes an extended partition (a chain of EBRs).
    pub fn is_extended(&self) -> bool {
        matches!(self.kind(), 0x05 | 0x0F | 0x85)
    }

    /// The entry with a new start, length and CHS addresses for the given disk geometry.
    pub fn relocated(&self, start_lba: u32, sectors: u32, g: BiosGeometry) -> Self {
        self.placed(start_lba as u64, start_lba, sectors, g)
    }

    /// The entry for a partition at absolute sector `absolute` (the CHS fields), stored as
    /// `relative` (EBR entries count from their EBR or from the extended partition). A CHS
    /// field that already held the "beyond 1024 cylinders" marker keeps its bytes when the
    /// new address is beyond too.
    pub fn placed(&self, absolute: u64, relative: u32, sectors: u32, g: BiosGeometry) -> Self {
        let mut raw = self.raw;
        let (heads, spt) = (g.heads, g.sectors_per_track);
        let last = (absolute + sectors as u64).saturating_sub(1);
        for (at, lba) in [(1, absolute), (5, last)] {
            let new = Chs::from_lba(lba, heads, spt);
            let old = Chs::decode([raw[at], raw[at + 1], raw[at + 2]]);
            if !(new == CHS_MAX && old.cylinder == CHS_MAX.cylinder) {
                raw[at..at + 3].copy_from_slice(&new.encode());
            }
        }
        raw[8..12].copy_from_slice(&relative.to_le_bytes());
        raw[12..16].copy_from_slice(&sectors.to_le_bytes());
        MbrEntry { raw }
    }

    /// The 16 bytes in hex, `8001010007...`.
    pub fn hex(&self) -> String {
        hex::encode(self.raw)
    }
}

/// The protective MBR `sector` with its GPT entry covering a disk whose last sector is
/// `last_lba` (as far as 32 bits reach, as the UEFI specification asks).
pub fn protective_for(sector: &[u8; 512], last_lba: u64) -> [u8; 512] {
    let mut out = *sector;
    for slot in 0..4 {
        let at = TABLE_OFFSET + slot * ENTRY_SIZE;
        if out[at + 4] == 0xEE {
            let sectors = u32::try_from(last_lba).unwrap_or(u32::MAX);
            out[at + 12..at + 16].copy_from_slice(&sectors.to_le_bytes());
            out[at + 5..at + 8].copy_from_slice(&CHS_MAX.encode());
        }
    }
    out
}

/// A human name for an MBR partition type byte.
pub fn type_name(kind: u8) -> &'static str {
    match kind {
        0x00 => "empty",
        0x01 => "FAT12",
        0x04 | 0x06 | 0x0E => "FAT16",
        0x05 | 0x0F | 0x85 => "extended",
        0x07 => "NTFS/exFAT",
        0x0B | 0x0C => "FAT32",
        0x27 => "Windows recovery",
        0x42 => "Windows dynamic",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x8E => "Linux LVM",
        0xEE => "GPT protective",
        0xEF => "EFI system",
        0xFD => "Linux RAID",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_xp_style_entry() {
        // 80 01 01 00 07 FE FF FF 3F 00 00 00 B5 98 70 02: active NTFS at sector 63.
        let raw = [0x80, 0x01, 0x01, 0x00, 0x07, 0xFE, 0xFF, 0xFF, 0x3F, 0, 0, 0, 0xB5, 0x98, 0x70, 0x02];
        let e = MbrEntry { raw };
        assert!(e.bootable());
        assert_eq!(e.kind(), 7);
        assert_eq!(e.start_lba(), 63);
        assert_eq!(e.sectors(), 0x027098B5);
        assert_eq!(e.first_chs(), Chs { cylinder: 0, head: 1, sector: 1 });
        assert_eq!(e.last_chs(), Chs { cylinder: 1023, head: 254, sector: 63 });
        assert_eq!(e.hex(), "8001010007feffff3f000000b5987002");
    }

    #[test]
    fn chs_from_lba_matches_windows_and_clamps() {
        assert_eq!(Chs::from_lba(63, 255, 63), Chs { cylinder: 0, head: 1, sector: 1 });
        assert_eq!(Chs::from_lba(2048, 255, 63), Chs { cylinder: 0, head: 32, sector: 33 });
        assert_eq!(Chs::from_lba(1 << 30, 255, 63), CHS_MAX);
        let c = Chs { cylinder: 1023, head: 254, sector: 63 };
        assert_eq!(Chs::decode(c.encode()), c);
    }

    #[test]
    fn the_geometry_comes_from_the_table() {
        let chs = |cylinder, head, sector| Chs { cylinder, head, sector };
        // The XP corpus image: 0/1/1 - 8/40/32 for sectors 63..131071 is 255 x 63, not the
        // 41 x 32 its last address alone would suggest.
        let xp = [(63, chs(0, 1, 1)), (131_071, chs(8, 40, 32))];
        assert_eq!(BiosGeometry::of_table(&xp, None), BiosGeometry::WINDOWS);
        // A table written with 16 heads.
        let old = [(63, chs(0, 1, 1)), (131_071, chs(130, 0, 32))];
        assert_eq!(BiosGeometry::of_table(&old, None), BiosGeometry { heads: 16, sectors_per_track: 63 });
        // Only markers: the hint decides.
        let hint = BiosGeometry { heads: 16, sectors_per_track: 63 };
        assert_eq!(BiosGeometry::of_table(&[(1 << 30, CHS_MAX)], Some(hint)), hint);
        assert_eq!(BiosGeometry::of_table(&[], None), BiosGeometry::WINDOWS);
    }

    #[test]
    fn a_beyond_1024_marker_is_kept() {
        // Last CHS FE FF FF (1023/254/63) as Windows writes; a marker with head 255 stays too.
        let mut raw = [0x80, 0x01, 0x01, 0x00, 0x07, 0xFF, 0xFF, 0xFF, 0x3F, 0, 0, 0, 0, 0, 0, 0x10];
        raw[12..16].copy_from_slice(&0x1000_0000u32.to_le_bytes());
        let moved = MbrEntry { raw }.relocated(2048, 0x1000_0000, BiosGeometry::WINDOWS);
        assert_eq!(moved.raw[5..8], [0xFF, 0xFF, 0xFF]);
        assert_eq!(moved.first_chs(), chs_of(2048));
        fn chs_of(lba: u64) -> Chs {
            Chs::from_lba(lba, 255, 63)
        }
    }
}
