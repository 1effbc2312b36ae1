//! What a file holds when it has no VHD footer: another container format, a compressed file,
//! a raw disk, or nothing vhdkit should read. Formats are recognised by their magic numbers,
//! never guessed from a file name; a file is a raw disk only when its first sectors look like
//! one (an MBR or boot sector signature, or a GPT header).

use std::fmt;

/// A file format recognised by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recognised {
    Vhdx,
    Qcow,
    VmdkSparse,
    VmdkDescriptor,
    Vdi,
    Iso9660,
    Gzip,
    Xz,
    Zstd,
    Bzip2,
    RegistryHive,
    /// An MBR or volume boot sector signature, or a GPT header: a raw disk.
    RawDisk,
    /// None of the above.
    Unknown,
}

impl fmt::Display for Recognised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Recognised::Vhdx => "a VHDX image",
            Recognised::Qcow => "a QEMU qcow image",
            Recognised::VmdkSparse => "a VMware VMDK sparse extent",
            Recognised::VmdkDescriptor => "a VMware VMDK descriptor",
            Recognised::Vdi => "a VirtualBox VDI image",
            Recognised::Iso9660 => "an ISO 9660 CD/DVD image",
            Recognised::Gzip => "a gzip-compressed file",
            Recognised::Xz => "an xz-compressed file",
            Recognised::Zstd => "a zstd-compressed file",
            Recognised::Bzip2 => "a bzip2-compressed file",
            Recognised::RegistryHive => "a Windows registry hive",
            Recognised::RawDisk => "a raw disk",
            Recognised::Unknown => "not a disk image",
        })
    }
}

/// Bytes [`recognise`] looks at: the ISO 9660 volume descriptor lies at 32 KiB + 1.
pub const PROBE_BYTES: usize = 0x8006;

/// Recognises a file from its first bytes (up to [`PROBE_BYTES`], fewer for a short file).
pub fn recognise(head: &[u8]) -> Recognised {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    let text_head = &head[..head.len().min(1024)];
    if at(0, b"vhdxfile") {
        Recognised::Vhdx
    } else if at(0, b"QFI\xfb") {
        Recognised::Qcow
    } else if at(0, b"KDMV") || at(0, b"COWD") {
        Recognised::VmdkSparse
    } else if text_head.windows(21).any(|w| w == b"# Disk DescriptorFile") {
        Recognised::VmdkDescriptor
    } else if at(0x40, &0xbeda_107fu32.to_le_bytes()) {
        Recognised::Vdi
    } else if at(0, &[0x1f, 0x8b]) {
        Recognised::Gzip
    } else if at(0, &[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Recognised::Xz
    } else if at(0, &[0x28, 0xb5, 0x2f, 0xfd]) {
        Recognised::Zstd
    } else if at(0, b"BZh") && head.get(3).is_some_and(|d| (b'1'..=b'9').contains(d)) {
        Recognised::Bzip2
    } else if at(0, b"regf") {
        Recognised::RegistryHive
    } else if at(510, &[0x55, 0xaa]) || at(512, b"EFI PART") || at(4096, b"EFI PART") {
        // An ISO with an MBR (isohybrid) is a disk too.
        Recognised::RawDisk
    } else if at(0x8001, b"CD001") {
        Recognised::Iso9660
    } else {
        Recognised::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_are_recognised() {
        let mut b = vec![0u8; PROBE_BYTES];
        assert_eq!(recognise(&b), Recognised::Unknown);
        b[510..512].copy_from_slice(&[0x55, 0xaa]);
        assert_eq!(recognise(&b), Recognised::RawDisk);
        b[..8].copy_from_slice(b"vhdxfile");
        assert_eq!(recognise(&b), Recognised::Vhdx);
        assert_eq!(recognise(b"QFI\xfb\0\0\0\x03"), Recognised::Qcow);
        assert_eq!(recognise(b"# Disk DescriptorFile\nversion=1\n"), Recognised::VmdkDescriptor);
        assert_eq!(recognise(b"hello world\n"), Recognised::Unknown);
        assert_eq!(recognise(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Recognised::Zstd);
        let mut iso = vec![0u8; PROBE_BYTES];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        assert_eq!(recognise(&iso), Recognised::Iso9660);
    }
}
