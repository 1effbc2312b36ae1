//! What each partition's boot sector says: the file system and, for NTFS, the BPB and whether
//! the backup boot sector at the volume's end agrees.

use serde::Serialize;

use crate::disk::FileSystem;
use crate::disk::boot_sector::{FsKind, NtfsBootSector, hidden_sectors, identify};
use crate::disk::partition::{Partition, PartitionView};
use crate::error::Result;
use crate::vhd::device::BlockDevice;

/// State of the NTFS backup boot sector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum BackupState {
    /// Identical to the boot sector.
    Matches,
    /// Present but different.
    Differs,
    /// Not an NTFS boot sector, or outside the partition.
    Missing,
}

/// The boot sector summary of one partition.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VolumeInfo {
    pub partition: u32,
    /// "ntfs" for NTFS volumes, null otherwise (see `detected`).
    pub filesystem: Option<&'static str>,
    /// The file system recognised from the volume's first sectors (ntfs, fat32, exfat, refs,
    /// bitlocker, ext4, linux_swap... or unknown); null for a partition under one sector.
    pub detected: Option<FileSystem>,
    pub cluster_size: Option<u32>,
    pub hidden_sectors: Option<u32>,
    /// The decoded NTFS BPB.
    pub ntfs: Option<NtfsBootSector>,
    pub backup_boot_sector: Option<BackupState>,
    /// Partition offset where the backup boot sector was looked for.
    pub backup_boot_sector_offset: Option<u64>,
    /// Why an NTFS boot sector could not be decoded.
    pub problem: Option<String>,
    /// The first 512 bytes of the partition in hex.
    pub boot_sector_hex: String,
}

/// Reads the boot sector of `partition` on `disk`.
pub fn probe<D: BlockDevice>(disk: D, partition: &Partition) -> Result<VolumeInfo> {
    let view = PartitionView::new(disk, partition);
    let mut info = VolumeInfo {
        partition: partition.index,
        filesystem: None,
        detected: None,
        cluster_size: None,
        hidden_sectors: None,
        ntfs: None,
        backup_boot_sector: None,
        backup_boot_sector_offset: None,
        problem: None,
        boot_sector_hex: String::new(),
    };
    if view.len() < 512 {
        info.problem = Some("partition is shorter than one sector".into());
        return Ok(info);
    }
    let mut boot = [0u8; 512];
    view.read_at(0, &mut boot)?;
    info.boot_sector_hex = hex::encode(boot);
    info.detected = Some(FileSystem::detect(&view)?);
    let Some(kind) = identify(&boot) else {
        return Ok(info);
    };
    info.hidden_sectors = hidden_sectors(&boot, kind);
    match kind {
        FsKind::Ntfs => {
            info.filesystem = Some("ntfs");
            match NtfsBootSector::parse(&boot) {
                Ok(bpb) => {
                    info.cluster_size = Some(bpb.cluster_size);
                    let (state, at) = backup_state(&view, &bpb, &boot)?;
                    info.backup_boot_sector = Some(state);
                    info.backup_boot_sector_offset = at;
                    info.ntfs = Some(bpb);
                }
                Err(problem) => info.problem = Some(problem),
            }
        }
        FsKind::Fat12 | FsKind::Fat16 | FsKind::Fat32 => {
            info.cluster_size = Some(u16::from_le_bytes([boot[11], boot[12]]) as u32 * boot[13] as u32);
        }
        FsKind::Exfat => {
            let (bps_shift, spc_shift) = (boot[108] as u32, boot[109] as u32);
            info.cluster_size = 1u32.checked_shl(bps_shift + spc_shift);
        }
    }
    Ok(info)
}

/// Where the NTFS backup boot sector should be: just past the volume's last sector, or else
/// the partition's last sector. Compares it with the boot sector.
fn backup_state<D: BlockDevice>(
    view: &PartitionView<D>,
    bpb: &NtfsBootSector,
    boot: &[u8; 512],
) -> Result<(BackupState, Option<u64>)> {
    let bps = bpb.bytes_per_sector as u64;
    let at_volume_end = bpb.volume_bytes();
    let at = if at_volume_end + 512 <= view.len() {
        at_volume_end
    } else if view.len() >= bps {
        view.len() - bps
    } else {
        return Ok((BackupState::Missing, None));
    };
    let mut backup = [0u8; 512];
    view.read_at(at, &mut backup)?;
    let state = if &backup == boot {
        BackupState::Matches
    } else if identify(&backup) == Some(FsKind::Ntfs) {
        BackupState::Differs
    } else {
        BackupState::Missing
    };
    Ok((state, Some(at)))
}
