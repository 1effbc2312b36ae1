//! The GUID partition table: header, entry array, their CRCs and the backup copy.

use serde::Serialize;

use crate::bytes::{le32, le64};
use crate::disk::lba::{Lba, SectorSize};

/// The header signature.
pub const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// Most entry-array bytes read (the usual array is 16 KiB; this bounds untrusted headers).
pub const MAX_ENTRY_ARRAY: u64 = 1 << 20;
/// A GUID as text from its mixed-endian on-disk bytes.
pub fn guid_text(g: &[u8; 16]) -> String {
    crate::bytes::Guid(*g).to_string()
}

/// A name for well-known partition type GUIDs.
pub fn type_name(g: &[u8; 16]) -> &'static str {
    const KNOWN: &[(&str, &str)] = &[
        ("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "Microsoft basic data"),
        ("E3C9E316-0B5C-4DB8-817D-F92DF00215AE", "Microsoft reserved"),
        ("DE94BBA4-06D1-4D40-A16A-BFD50179D6AC", "Windows recovery"),
        ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "EFI system"),
        ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", "Linux filesystem"),
        ("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "Linux swap"),
        ("E6D6D379-F507-44C2-A23C-238F2A3DF928", "Linux LVM"),
        ("21686148-6449-6E6F-744E-656564454649", "BIOS boot"),
    ];
    let text = guid_text(g);
    KNOWN.iter().find(|(k, _)| *k == text).map_or("unknown", |(_, n)| n)
}

/// A valid GPT as read from the disk (its header sector and entry array), to be rewritten for
/// moved partitions or a resized disk.
#[derive(Clone, Debug)]
pub struct GptTable {
    /// The primary header.
    pub header: GptHeader,
    sector: [u8; 512],
    array: Vec<u8>,
    sector_size: SectorSize,
}

impl GptTable {
    /// The table of a primary header `sector` (decoded as `header`) and its entry array, on a
    /// disk of `sector_size` sectors.
    pub fn new(sector: [u8; 512], header: GptHeader, array: Vec<u8>, sector_size: SectorSize) -> Self {
        GptTable { header, sector, array, sector_size }
    }

    /// Sectors the entry array occupies.
    pub fn array_sectors(&self) -> u64 {
        self.sector_size.sectors_for(self.array.len() as u64)
    }

    /// Moves entry `index` (1-based) to start at `first_lba`, keeping its `sectors`.
    pub fn move_entry(&mut self, index: u32, first_lba: Lba, sectors: u64) {
        let at = (index as usize - 1) * self.header.entry_size as usize;
        if let Some(e) = self.array.get_mut(at..at + 48) {
            e[32..40].copy_from_slice(&first_lba.0.to_le_bytes());
            e[40..48].copy_from_slice(&(first_lba + sectors - 1).0.to_le_bytes());
        }
    }

    /// The table's sectors on a disk whose last sector is `last_lba`, as (disk offset, bytes,
    /// what): the primary header and entry array where they were, the backup array just
    /// before the last sector and the backup header on it; the last usable sector moves to
    /// just before the backup array; both CRCs recomputed.
    pub fn encode(&self, last_lba: Lba) -> Vec<(u64, Vec<u8>, &'static str)> {
        let mut array = self.array.clone();
        let crc = crc32fast::hash(&array);
        let ss = self.sector_size;
        array.resize(ss.bytes_of(self.array_sectors()) as usize, 0);
        let backup_array = last_lba - self.array_sectors();
        let header = |current: Lba, backup: Lba, entries: Lba| {
            let mut h = self.sector;
            h[24..32].copy_from_slice(&current.0.to_le_bytes());
            h[32..40].copy_from_slice(&backup.0.to_le_bytes());
            h[48..56].copy_from_slice(&(backup_array - 1).0.to_le_bytes());
            h[72..80].copy_from_slice(&entries.0.to_le_bytes());
            h[88..92].copy_from_slice(&crc.to_le_bytes());
            h[16..20].fill(0);
            let size = (self.header.header_size as usize).clamp(92, 512);
            let header_crc = crc32fast::hash(&h[..size]);
            h[16..20].copy_from_slice(&header_crc.to_le_bytes());
            let mut sector = h.to_vec();
            sector.resize(ss.bytes() as usize, 0);
            sector
        };
        vec![
            (Lba(1).offset(ss), header(Lba(1), last_lba, self.header.entries_lba), "primary GPT header"),
            (self.header.entries_lba.offset(ss), array.clone(), "primary GPT entries"),
            (backup_array.offset(ss), array, "backup GPT entries"),
            (last_lba.offset(ss), header(last_lba, Lba(1), backup_array), "backup GPT header"),
        ]
    }
}

/// A decoded GPT header.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct GptHeader {
    pub revision: u32,
    pub header_size: u32,
    pub header_crc: u32,
    #[serde(skip)]
    pub computed_header_crc: u32,
    pub current_lba: Lba,
    pub backup_lba: Lba,
    pub first_usable_lba: Lba,
    pub last_usable_lba: Lba,
    pub disk_guid: crate::bytes::Guid,
    pub entries_lba: Lba,
    pub entry_count: u32,
    pub entry_size: u32,
    pub entries_crc: u32,
}

impl GptHeader {
    /// Decodes a header sector; `None` if the signature is missing or the sizes are absurd.
    pub fn parse(sector: &[u8]) -> Option<Self> {
        if sector.len() < 92 || &sector[..8] != GPT_SIGNATURE {
            return None;
        }
        let header_size = le32(sector, 12);
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&sector[56..72]);
        let computed = if (92..=sector.len() as u32).contains(&header_size) {
            let mut h = sector[..header_size as usize].to_vec();
            h[16..20].fill(0);
            crc32fast::hash(&h)
        } else {
            0
        };
        Some(GptHeader {
            revision: le32(sector, 8),
            header_size,
            header_crc: le32(sector, 16),
            computed_header_crc: computed,
            current_lba: Lba(le64(sector, 24)),
            backup_lba: Lba(le64(sector, 32)),
            first_usable_lba: Lba(le64(sector, 40)),
            last_usable_lba: Lba(le64(sector, 48)),
            disk_guid: crate::bytes::Guid(guid),
            entries_lba: Lba(le64(sector, 72)),
            entry_count: le32(sector, 80),
            entry_size: le32(sector, 84),
            entries_crc: le32(sector, 88),
        })
    }

    /// Whether the header's CRC matches its bytes.
    pub fn header_crc_valid(&self) -> bool {
        self.header_crc == self.computed_header_crc
    }

    /// Bytes of the entry array, if the sizes are sane.
    pub fn entry_array_bytes(&self) -> Option<u64> {
        let bytes = self.entry_count as u64 * self.entry_size as u64;
        (self.entry_size >= 128 && self.entry_size.is_multiple_of(8) && bytes <= MAX_ENTRY_ARRAY).then_some(bytes)
    }
}

/// One used GPT entry.
#[derive(Clone, Debug)]
pub struct GptEntry {
    /// 1-based slot in the array.
    pub index: u32,
    pub type_guid: [u8; 16],
    pub unique_guid: [u8; 16],
    pub first_lba: Lba,
    pub last_lba: Lba,
    pub attributes: u64,
    pub name: String,
}

/// Decodes the used entries of an entry array.
pub fn parse_entries(array: &[u8], entry_size: u32) -> Vec<GptEntry> {
    array
        .chunks_exact(entry_size as usize)
        .enumerate()
        .filter(|(_, e)| e[..16].iter().any(|&b| b != 0))
        .map(|(i, e)| {
            let mut type_guid = [0u8; 16];
            type_guid.copy_from_slice(&e[..16]);
            let mut unique_guid = [0u8; 16];
            unique_guid.copy_from_slice(&e[16..32]);
            let units: Vec<u16> =
                e[56..128].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&u| u != 0).collect();
            GptEntry {
                index: i as u32 + 1,
                type_guid,
                unique_guid,
                first_lba: Lba(le64(e, 32)),
                last_lba: Lba(le64(e, 40)),
                attributes: le64(e, 48),
                name: String::from_utf16_lossy(&units),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_render_mixed_endian() {
        let basic_data =
            [0xA2, 0xA0, 0xD0, 0xEB, 0xE5, 0xB9, 0x33, 0x44, 0x87, 0xC0, 0x68, 0xB6, 0xB7, 0x26, 0x99, 0xC7];
        assert_eq!(guid_text(&basic_data), "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7");
        assert_eq!(type_name(&basic_data), "Microsoft basic data");
    }
}
