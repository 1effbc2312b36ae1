//! Volume boot sectors: recognising NTFS, FAT and exFAT, and decoding the NTFS BPB by hand so
//! a damaged volume still shows its geometry.

use serde::Serialize;

use crate::bytes::{le16, le32, le64};

/// Offset of the hidden-sectors field (partition start LBA) in NTFS and FAT BPBs.
const HIDDEN_SECTORS_OFFSET: usize = 0x1C;

/// The hidden-sectors field (the partition's start, as the volume believes it) of a boot
/// sector of `kind`; none for exFAT, whose BPB has no such field.
pub fn hidden_sectors(sector: &[u8], kind: FsKind) -> Option<u32> {
    kind.has_hidden_sectors().then(|| le32(sector, HIDDEN_SECTORS_OFFSET))
}

/// Sets the hidden-sectors field of an NTFS or FAT boot sector.
pub fn set_hidden_sectors(sector: &mut [u8], hidden: u32) {
    sector[HIDDEN_SECTORS_OFFSET..HIDDEN_SECTORS_OFFSET + 4].copy_from_slice(&hidden.to_le_bytes());
}

/// Offset of an NTFS BPB's total-sectors field (the volume's size, its backup boot sector
/// after it).
const NTFS_TOTAL_SECTORS_OFFSET: usize = 0x28;

/// Sets an NTFS boot sector's total-sectors field.
pub fn set_ntfs_total_sectors(sector: &mut [u8], sectors: u64) {
    sector[NTFS_TOTAL_SECTORS_OFFSET..NTFS_TOTAL_SECTORS_OFFSET + 8].copy_from_slice(&sectors.to_le_bytes());
}

/// Where the volume keeps a copy of this boot sector, in sectors from its start: NTFS past its
/// last sector (its total-sectors count), FAT32 where its BPB says (none when 0).
pub fn backup_sector(sector: &[u8], kind: FsKind) -> Option<u64> {
    match kind {
        FsKind::Ntfs => Some(le64(sector, NTFS_TOTAL_SECTORS_OFFSET)),
        FsKind::Fat32 => Some(le16(sector, 0x32) as u64).filter(|&s| s > 0),
        _ => None,
    }
}

/// The file system a boot sector announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    Ntfs,
    Fat12,
    Fat16,
    Fat32,
    Exfat,
}

impl FsKind {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Ntfs => "ntfs",
            FsKind::Fat12 => "fat12",
            FsKind::Fat16 => "fat16",
            FsKind::Fat32 => "fat32",
            FsKind::Exfat => "exfat",
        }
    }

    /// Whether the BPB has a hidden-sectors field at 0x1C (not exFAT).
    pub fn has_hidden_sectors(self) -> bool {
        self != FsKind::Exfat
    }
}

/// Recognises a volume boot sector by its OEM ID or FAT type string. An NTFS boot sector also
/// ends in 55AA, so this runs before a sector is taken for an MBR.
pub fn identify(sector: &[u8]) -> Option<FsKind> {
    if sector.len() < 512 || sector[510..512] != [0x55, 0xAA] {
        return None;
    }
    match &sector[3..11] {
        b"NTFS    " => return Some(FsKind::Ntfs),
        b"EXFAT   " => return Some(FsKind::Exfat),
        _ => {}
    }
    let bps = u16::from_le_bytes([sector[11], sector[12]]);
    let sane_bpb = bps.is_power_of_two() && (512..=4096).contains(&bps) && sector[13] != 0;
    if !sane_bpb {
        return None;
    }
    match (&sector[0x36..0x3E], &sector[0x52..0x5A]) {
        (_, b"FAT32   ") => Some(FsKind::Fat32),
        (b"FAT12   ", _) => Some(FsKind::Fat12),
        (b"FAT16   ", _) | (b"FAT     ", _) => Some(FsKind::Fat16),
        _ => None,
    }
}

/// The NTFS BIOS parameter block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NtfsBootSector {
    pub oem_id: String,
    pub bytes_per_sector: u32,
    pub sectors_per_cluster: u32,
    pub cluster_size: u32,
    pub sectors_per_track: u16,
    pub heads: u16,
    pub hidden_sectors: u32,
    pub total_sectors: u64,
    pub mft_lcn: u64,
    pub mft_mirror_lcn: u64,
    pub file_record_size: u32,
    pub index_record_size: u32,
    pub serial_number: String,
}

/// A record size from its BPB byte: positive = clusters, negative = 2^-n bytes.
fn record_size(code: u8, cluster_size: u32) -> Result<u32, String> {
    let v = code as i8;
    let size = if v > 0 { (v as u32).checked_mul(cluster_size) } else { 1u32.checked_shl(v.unsigned_abs() as u32) };
    size.filter(|s| (256..=65_536).contains(s))
        .ok_or_else(|| format!("record size code {code:#04x} gives no size between 256 bytes and 64 KiB"))
}

impl NtfsBootSector {
    /// Decodes the BPB of an NTFS boot sector, or says which field is impossible.
    pub fn parse(b: &[u8]) -> Result<Self, String> {
        if b.len() < 512 || &b[3..11] != b"NTFS    " {
            return Err("OEM ID is not \"NTFS    \"".into());
        }
        let bps = le16(b, 0x0B) as u32;
        if !bps.is_power_of_two() || !(256..=4096).contains(&bps) {
            return Err(format!("bytes per sector {bps} is not a power of two from 256 to 4096"));
        }
        let spc_code = b[0x0D];
        let spc = if spc_code <= 0x80 { spc_code as u32 } else { 1u32.checked_shl(256 - spc_code as u32).unwrap_or(0) };
        if spc == 0 || !spc.is_power_of_two() {
            return Err(format!("sectors per cluster code {spc_code:#04x} is invalid"));
        }
        let cluster_size = bps * spc;
        if cluster_size > 2 << 20 {
            return Err(format!("cluster size {cluster_size} exceeds 2 MiB"));
        }
        let total_sectors = le64(b, NTFS_TOTAL_SECTORS_OFFSET);
        let total_clusters = total_sectors / spc as u64;
        let mft_lcn = le64(b, 0x30);
        let mft_mirror_lcn = le64(b, 0x38);
        if mft_lcn == 0 || mft_lcn >= total_clusters || mft_mirror_lcn >= total_clusters {
            return Err(format!(
                "MFT LCN {mft_lcn} or MFT mirror LCN {mft_mirror_lcn} lies outside the {total_clusters} clusters"
            ));
        }
        Ok(NtfsBootSector {
            oem_id: String::from_utf8_lossy(&b[3..11]).into_owned(),
            bytes_per_sector: bps,
            sectors_per_cluster: spc,
            cluster_size,
            sectors_per_track: le16(b, 0x18),
            heads: le16(b, 0x1A),
            hidden_sectors: le32(b, HIDDEN_SECTORS_OFFSET),
            total_sectors,
            mft_lcn,
            mft_mirror_lcn,
            file_record_size: record_size(b[0x40], cluster_size)?,
            index_record_size: record_size(b[0x44], cluster_size)?,
            serial_number: format!("{:016x}", le64(b, 0x48)),
        })
    }

    /// Bytes the file system spans (the backup boot sector lies just past them).
    pub fn volume_bytes(&self) -> u64 {
        self.total_sectors * self.bytes_per_sector as u64
    }

    /// Number of clusters.
    pub fn total_clusters(&self) -> u64 {
        self.total_sectors / self.sectors_per_cluster as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn realdata(name: &str) -> Option<Vec<u8>> {
        let p =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/realdata/dfir_ntfs/test_data").join(name);
        match std::fs::read(&p) {
            Ok(b) => Some(b),
            Err(_) => {
                eprintln!("skipped: {} is absent", p.display());
                None
            }
        }
    }

    #[test]
    fn decodes_windows_boot_sectors_of_every_cluster_size() {
        for (name, cluster) in [("512.boot", 512), ("4k.boot", 4096), ("64k.boot", 65536), ("128k.boot", 131072)] {
            let Some(b) = realdata(name) else { return };
            assert_eq!(identify(&b), Some(FsKind::Ntfs), "{name}");
            let bs = NtfsBootSector::parse(&b).unwrap();
            assert_eq!(bs.cluster_size, cluster, "{name}");
            assert_eq!(bs.file_record_size, 1024, "{name}");
        }
        let Some(b) = realdata("4kn.boot") else { return };
        let bs = NtfsBootSector::parse(&b).unwrap();
        assert_eq!(bs.bytes_per_sector, 4096);
        assert_eq!(bs.file_record_size, 4096);
    }

    #[test]
    fn rejects_impossible_fields() {
        let Some(mut b) = realdata("4k.boot") else { return };
        b[0x0D] = 3;
        assert!(NtfsBootSector::parse(&b).unwrap_err().contains("sectors per cluster"));
        b[3] = b'X';
        assert_eq!(identify(&b), None);
    }
}
