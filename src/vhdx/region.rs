//! The region table (MS-VHDX 2.2.3): where the BAT and the metadata live. Two copies of 64 KiB;
//! a region vhdkit does not know that is marked required makes the file unreadable.

use serde::Serialize;

use crate::bytes::{Guid, le32, le64};
use crate::vhdx::header::checksum;

/// Where the two copies are.
pub const REGION_TABLE_OFFSETS: [u64; 2] = [192 << 10, 256 << 10];
/// Bytes of a copy.
pub const REGION_TABLE_SIZE: usize = 64 << 10;
/// The BAT region.
pub const BAT_REGION: Guid = Guid::from_text("2DC27766-F623-4200-9D64-115E9BFD4A08");
/// The metadata region.
pub const METADATA_REGION: Guid = Guid::from_text("8B7CA206-4790-4B9A-B8FE-575F050F886E");
const SIGNATURE: &[u8; 4] = b"regi";
const MAX_ENTRIES: u32 = 2047;
/// Everything is placed at multiples of 1 MiB.
pub const ALIGNMENT: u64 = 1 << 20;

/// The name of a region the specification defines.
pub fn region_name(guid: Guid) -> Option<&'static str> {
    match guid {
        BAT_REGION => Some("BAT"),
        METADATA_REGION => Some("metadata"),
        _ => None,
    }
}

/// One region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RegionEntry {
    pub guid: Guid,
    pub file_offset: u64,
    pub length: u32,
    pub required: bool,
}

/// A decoded region table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RegionTable {
    pub entries: Vec<RegionEntry>,
}

impl RegionTable {
    /// Decodes a copy, or says why it is not valid.
    pub fn parse(b: &[u8]) -> Result<Self, String> {
        if b.len() < REGION_TABLE_SIZE || &b[..4] != SIGNATURE {
            return Err("no `regi` signature".into());
        }
        let (stored, computed) = (le32(b, 4), checksum(&b[..REGION_TABLE_SIZE], 4));
        if stored != computed {
            return Err(format!("CRC-32C {stored:#010x} stored, {computed:#010x} computed"));
        }
        let count = le32(b, 8);
        if count > MAX_ENTRIES {
            return Err(format!("{count} entries, more than {MAX_ENTRIES}"));
        }
        let entries = (0..count as usize)
            .map(|i| {
                let at = 16 + 32 * i;
                RegionEntry {
                    guid: Guid::read(b, at),
                    file_offset: le64(b, at + 16),
                    length: le32(b, at + 24),
                    required: le32(b, at + 28) & 1 != 0,
                }
            })
            .collect();
        Ok(RegionTable { entries })
    }

    /// The table's 64 KiB, checksummed.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; REGION_TABLE_SIZE];
        b[..4].copy_from_slice(SIGNATURE);
        b[8..12].copy_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (i, e) in self.entries.iter().enumerate() {
            let at = 16 + 32 * i;
            b[at..at + 16].copy_from_slice(&e.guid.0);
            b[at + 16..at + 24].copy_from_slice(&e.file_offset.to_le_bytes());
            b[at + 24..at + 28].copy_from_slice(&e.length.to_le_bytes());
            b[at + 28..at + 32].copy_from_slice(&u32::from(e.required).to_le_bytes());
        }
        let crc = checksum(&b, 4);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The entry of region `guid`.
    pub fn find(&self, guid: Guid) -> Option<&RegionEntry> {
        self.entries.iter().find(|e| e.guid == guid)
    }

    /// Why the table cannot describe a file of `file_len` bytes: an unknown required region,
    /// a misplaced or overlapping region, a missing BAT or metadata region.
    pub fn problem(&self, file_len: u64) -> Option<String> {
        if let Some(e) = self.entries.iter().find(|e| e.required && e.guid != BAT_REGION && e.guid != METADATA_REGION) {
            return Some(format!("region {} is required and unknown to vhdkit", e.guid));
        }
        for (name, guid) in [("BAT", BAT_REGION), ("metadata", METADATA_REGION)] {
            match self.find(guid) {
                None => return Some(format!("no {name} region")),
                Some(e) if e.file_offset < ALIGNMENT || e.file_offset % ALIGNMENT != 0 || e.length == 0 => {
                    return Some(format!(
                        "the {name} region at {:#x} of {} bytes is not a 1 MiB-aligned space after the headers",
                        e.file_offset, e.length
                    ));
                }
                Some(e) if e.file_offset.checked_add(e.length as u64).is_none_or(|end| end > file_len) => {
                    return Some(format!(
                        "the {name} region at {:#x} of {} bytes reaches past the file's end ({file_len:#x})",
                        e.file_offset, e.length
                    ));
                }
                _ => {}
            }
        }
        let mut spans: Vec<(u64, u64)> =
            self.entries.iter().map(|e| (e.file_offset, e.file_offset.saturating_add(e.length as u64))).collect();
        spans.sort_unstable();
        spans
            .windows(2)
            .find(|w| w[1].0 < w[0].1)
            .map(|w| format!("regions at {:#x} and {:#x} overlap", w[0].0, w[1].0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RegionTable {
        RegionTable {
            entries: vec![
                RegionEntry { guid: BAT_REGION, file_offset: 2 << 20, length: 1 << 20, required: true },
                RegionEntry { guid: METADATA_REGION, file_offset: 3 << 20, length: 1 << 20, required: true },
            ],
        }
    }

    #[test]
    fn a_table_round_trips() {
        let t = table();
        assert_eq!(RegionTable::parse(&t.encode()).unwrap(), t);
        assert_eq!(t.problem(4 << 20), None);
    }

    #[test]
    fn unknown_required_overlapping_and_outside_regions_are_problems() {
        let mut t = table();
        t.entries.push(RegionEntry { guid: Guid([9; 16]), file_offset: 8 << 20, length: 1 << 20, required: true });
        assert!(t.problem(16 << 20).unwrap().contains("required and unknown"));
        let mut t = table();
        t.entries[1].file_offset = 2 << 20;
        assert!(t.problem(16 << 20).unwrap().contains("overlap"));
        assert!(table().problem(3 << 20).unwrap().contains("past the file's end"));
    }
}
