//! What a volume holds, recognised from the signatures of its first sectors: so that every
//! report names a partition for what it is, and compaction keeps whole what it cannot read.

use serde::Serialize;

use crate::disk::boot_sector::{FsKind, identify};
use crate::error::Result;
use crate::vhd::device::BlockDevice;

/// A file system or volume format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum FileSystem {
    /// NTFS.
    Ntfs,
    /// FAT12.
    Fat12,
    /// FAT16.
    Fat16,
    /// FAT32.
    Fat32,
    /// exFAT.
    Exfat,
    /// ReFS (kept whole: vhdkit does not read it).
    Refs,
    /// A BitLocker-encrypted volume (`-FVE-FS-`).
    Bitlocker,
    /// Linux ext2.
    Ext2,
    /// Linux ext3.
    Ext3,
    /// Linux ext4.
    Ext4,
    /// XFS.
    Xfs,
    /// Btrfs.
    Btrfs,
    /// Linux swap space.
    LinuxSwap,
    /// A LUKS-encrypted volume.
    Luks,
    /// An LVM2 physical volume.
    Lvm2,
    /// Nothing vhdkit recognises.
    Unknown,
}

/// Bytes [`FileSystem::detect`] reads: the Btrfs superblock lies at 64 KiB.
const PROBE: u64 = (64 << 10) + 4096;

impl FileSystem {
    /// The name people know it by.
    pub fn name(self) -> &'static str {
        match self {
            FileSystem::Ntfs => "NTFS",
            FileSystem::Fat12 => "FAT12",
            FileSystem::Fat16 => "FAT16",
            FileSystem::Fat32 => "FAT32",
            FileSystem::Exfat => "exFAT",
            FileSystem::Refs => "ReFS",
            FileSystem::Bitlocker => "BitLocker",
            FileSystem::Ext2 => "ext2",
            FileSystem::Ext3 => "ext3",
            FileSystem::Ext4 => "ext4",
            FileSystem::Xfs => "XFS",
            FileSystem::Btrfs => "Btrfs",
            FileSystem::LinuxSwap => "Linux swap",
            FileSystem::Luks => "LUKS",
            FileSystem::Lvm2 => "LVM2",
            FileSystem::Unknown => "unknown",
        }
    }

    /// The name in JSON and machine-readable output (`ntfs`, `fat32`, `linux_swap`...).
    pub fn id(self) -> &'static str {
        match self {
            FileSystem::Ntfs => "ntfs",
            FileSystem::Fat12 => "fat12",
            FileSystem::Fat16 => "fat16",
            FileSystem::Fat32 => "fat32",
            FileSystem::Exfat => "exfat",
            FileSystem::Refs => "refs",
            FileSystem::Bitlocker => "bitlocker",
            FileSystem::Ext2 => "ext2",
            FileSystem::Ext3 => "ext3",
            FileSystem::Ext4 => "ext4",
            FileSystem::Xfs => "xfs",
            FileSystem::Btrfs => "btrfs",
            FileSystem::LinuxSwap => "linux_swap",
            FileSystem::Luks => "luks",
            FileSystem::Lvm2 => "lvm2",
            FileSystem::Unknown => "unknown",
        }
    }

    /// Whether vhdkit cannot tell used from free space in it and keeps it whole (encrypted
    /// volumes and ReFS, whose free space cannot be told from its data).
    pub fn kept_whole(self) -> bool {
        matches!(self, FileSystem::Refs | FileSystem::Bitlocker | FileSystem::Luks)
    }

    /// Recognises the volume on `view` (a partition, or a whole disk without a table).
    pub fn detect<D: BlockDevice + ?Sized>(view: &D) -> Result<FileSystem> {
        let len = view.len().min(PROBE) as usize;
        let mut head = vec![0u8; len];
        view.read_at(0, &mut head)?;
        Ok(FileSystem::recognise(&head))
    }

    /// Recognises a volume from its first bytes (up to 68 KiB; fewer for a small volume).
    pub fn recognise(head: &[u8]) -> FileSystem {
        let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
        if at(3, b"-FVE-FS-") {
            return FileSystem::Bitlocker;
        }
        if at(3, b"ReFS\0\0\0\0") {
            return FileSystem::Refs;
        }
        match identify(head) {
            Some(FsKind::Ntfs) => return FileSystem::Ntfs,
            Some(FsKind::Fat12) => return FileSystem::Fat12,
            Some(FsKind::Fat16) => return FileSystem::Fat16,
            Some(FsKind::Fat32) => return FileSystem::Fat32,
            Some(FsKind::Exfat) => return FileSystem::Exfat,
            None => {}
        }
        if at(0, b"LUKS\xba\xbe") {
            return FileSystem::Luks;
        }
        if at(512, b"LABELONE") && at(536, b"LVM2 001") {
            return FileSystem::Lvm2;
        }
        if at(0, b"XFSB") {
            return FileSystem::Xfs;
        }
        if at(0x10040, b"_BHRfS_M") {
            return FileSystem::Btrfs;
        }
        if at(1024 + 56, &[0x53, 0xef]) {
            return ext_kind(&head[1024..]);
        }
        for page in [4096usize, 8192, 16384, 65536] {
            if at(page - 10, b"SWAPSPACE2") || at(page - 10, b"SWAP-SPACE") {
                return FileSystem::LinuxSwap;
            }
        }
        FileSystem::Unknown
    }
}

/// ext2, ext3 or ext4, from the superblock's feature flags.
fn ext_kind(sb: &[u8]) -> FileSystem {
    let le32 = |o: usize| sb.get(o..o + 4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let (compat, incompat) = (le32(0x5C), le32(0x60));
    // extents, 64bit, flex_bg, mmp, inline data...: features ext3 never had.
    if incompat & !0x1F != 0 {
        FileSystem::Ext4
    } else if compat & 0x4 != 0 {
        FileSystem::Ext3
    } else {
        FileSystem::Ext2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_recognised() {
        let mut b = vec![0u8; PROBE as usize];
        assert_eq!(FileSystem::recognise(&b), FileSystem::Unknown);
        b[510] = 0x55;
        b[511] = 0xaa;
        b[3..11].copy_from_slice(b"-FVE-FS-");
        assert_eq!(FileSystem::recognise(&b), FileSystem::Bitlocker);
        b[3..11].copy_from_slice(b"ReFS\0\0\0\0");
        assert_eq!(FileSystem::recognise(&b), FileSystem::Refs);
        let mut e = vec![0u8; 4096];
        e[1024 + 56..1024 + 58].copy_from_slice(&[0x53, 0xef]);
        assert_eq!(FileSystem::recognise(&e), FileSystem::Ext2);
        e[1024 + 0x5C] = 0x4;
        assert_eq!(FileSystem::recognise(&e), FileSystem::Ext3);
        e[1024 + 0x60] = 0x40;
        assert_eq!(FileSystem::recognise(&e), FileSystem::Ext4);
        let mut s = vec![0u8; 4096];
        s[4086..].copy_from_slice(b"SWAPSPACE2");
        assert_eq!(FileSystem::recognise(&s), FileSystem::LinuxSwap);
        assert!(FileSystem::Bitlocker.kept_whole() && !FileSystem::Fat32.kept_whole());
    }
}
