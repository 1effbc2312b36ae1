//! The metadata region (MS-VHDX 2.6): a 64 KiB table of items, then the items. vhdkit reads the
//! system items that describe the disk and refuses a required item it does not know.

use serde::Serialize;

use crate::bytes::{Guid, le16, le32, le64};

const SIGNATURE: &[u8; 8] = b"metadata";
/// Bytes of the table at the start of the region.
pub const TABLE_SIZE: usize = 64 << 10;
const MAX_ENTRIES: u16 = 2047;
/// Largest item.
const MAX_ITEM: u32 = 1 << 20;

/// Block size and flags.
pub const FILE_PARAMETERS: Guid = Guid::from_text("CAA16737-FA36-4D43-B3B6-33F0AA44E76B");
/// The disk's size in bytes.
pub const VIRTUAL_DISK_SIZE: Guid = Guid::from_text("2FA54224-CD1B-4876-B211-5DBED83BF4B8");
/// The disk's identity (SCSI page 83 data).
pub const VIRTUAL_DISK_ID: Guid = Guid::from_text("BECA12AB-B2E6-4523-93EF-C309E000C746");
/// 512 or 4096.
pub const LOGICAL_SECTOR_SIZE: Guid = Guid::from_text("8141BF1D-A96F-4709-BA47-F233A8FAAB5F");
/// 512 or 4096.
pub const PHYSICAL_SECTOR_SIZE: Guid = Guid::from_text("CDA348C7-445D-4471-9CC9-E9885251C556");
/// Where a differencing disk's parent is.
pub const PARENT_LOCATOR: Guid = Guid::from_text("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C");
/// The VHDX parent locator type.
pub const VHDX_LOCATOR_TYPE: Guid = Guid::from_text("B04AEFB7-D19E-4A81-B789-25B8E9445913");

/// Largest disk the format describes (64 TiB).
pub const MAX_DISK_SIZE: u64 = 64 << 40;

/// The name of a system metadata item.
pub fn item_name(guid: Guid) -> Option<&'static str> {
    Some(match guid {
        FILE_PARAMETERS => "file parameters",
        VIRTUAL_DISK_SIZE => "virtual disk size",
        VIRTUAL_DISK_ID => "virtual disk id",
        LOGICAL_SECTOR_SIZE => "logical sector size",
        PHYSICAL_SECTOR_SIZE => "physical sector size",
        PARENT_LOCATOR => "parent locator",
        _ => return None,
    })
}

/// One entry of the metadata table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MetadataEntry {
    pub item: Guid,
    /// From the region's start.
    pub offset: u32,
    pub length: u32,
    pub is_user: bool,
    pub is_virtual_disk: bool,
    pub is_required: bool,
}

/// Decodes the table (the region's first 64 KiB), or says why it is not valid.
pub fn parse_table(b: &[u8], region_length: u32) -> Result<Vec<MetadataEntry>, String> {
    if b.len() < TABLE_SIZE || &b[..8] != SIGNATURE {
        return Err("no `metadata` signature".into());
    }
    let count = le16(b, 10);
    if count > MAX_ENTRIES {
        return Err(format!("{count} entries, more than {MAX_ENTRIES}"));
    }
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        let at = 32 + 32 * i;
        let flags = le32(b, at + 24);
        let e = MetadataEntry {
            item: Guid::read(b, at),
            offset: le32(b, at + 16),
            length: le32(b, at + 20),
            is_user: flags & 1 != 0,
            is_virtual_disk: flags & 2 != 0,
            is_required: flags & 4 != 0,
        };
        let inside = (e.offset as u64 + e.length as u64) <= region_length as u64;
        if e.length > MAX_ITEM || !inside || (e.length > 0 && (e.offset as usize) < TABLE_SIZE) {
            return Err(format!(
                "item {} at {:#x} of {} bytes lies outside the region's item space",
                e.item, e.offset, e.length
            ));
        }
        out.push(e);
    }
    Ok(out)
}

/// Encodes a table of `entries`.
pub fn encode_table(entries: &[MetadataEntry]) -> Vec<u8> {
    let mut b = vec![0u8; TABLE_SIZE];
    b[..8].copy_from_slice(SIGNATURE);
    b[10..12].copy_from_slice(&(entries.len() as u16).to_le_bytes());
    for (i, e) in entries.iter().enumerate() {
        let at = 32 + 32 * i;
        b[at..at + 16].copy_from_slice(&e.item.0);
        b[at + 16..at + 20].copy_from_slice(&e.offset.to_le_bytes());
        b[at + 20..at + 24].copy_from_slice(&e.length.to_le_bytes());
        let flags = u32::from(e.is_user) | u32::from(e.is_virtual_disk) << 1 | u32::from(e.is_required) << 2;
        b[at + 24..at + 28].copy_from_slice(&flags.to_le_bytes());
    }
    b
}

/// What the system items say about the disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DiskParameters {
    pub block_size: u32,
    /// Every block stays allocated (a fixed VHDX).
    pub leave_blocks_allocated: bool,
    pub has_parent: bool,
    pub virtual_disk_size: u64,
    pub virtual_disk_id: Guid,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    /// The parent locator's keys and values, for a differencing disk.
    pub parent_locator: Option<ParentLocator>,
}

/// A parent locator: its type and key/value pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ParentLocator {
    pub locator_type: Guid,
    pub entries: Vec<(String, String)>,
}

impl ParentLocator {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Decodes a locator item.
    pub fn parse(b: &[u8]) -> Result<Self, String> {
        if b.len() < 20 {
            return Err(format!("{} bytes, too short for a locator", b.len()));
        }
        let count = le16(b, 18) as usize;
        if 20 + 12 * count > b.len() {
            return Err(format!("{count} key/value pairs do not fit in {} bytes", b.len()));
        }
        let text = |offset: u32, len: u16| -> Result<String, String> {
            let (a, z) = (offset as usize, offset as usize + len as usize);
            let bytes = b
                .get(a..z)
                .filter(|s| s.len() % 2 == 0)
                .ok_or_else(|| format!("a string at {a}..{z} lies outside the locator"))?;
            Ok(String::from_utf16_lossy(
                &bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect::<Vec<u16>>(),
            ))
        };
        let entries = (0..count)
            .map(|i| {
                let at = 20 + 12 * i;
                Ok((text(le32(b, at), le16(b, at + 8))?, text(le32(b, at + 4), le16(b, at + 10))?))
            })
            .collect::<Result<_, String>>()?;
        Ok(ParentLocator { locator_type: Guid::read(b, 0), entries })
    }

    /// Encodes the locator item.
    pub fn encode(&self) -> Vec<u8> {
        let utf16 = |s: &str| s.encode_utf16().flat_map(u16::to_le_bytes).collect::<Vec<u8>>();
        let mut head = vec![0u8; 20 + 12 * self.entries.len()];
        head[..16].copy_from_slice(&self.locator_type.0);
        head[18..20].copy_from_slice(&(self.entries.len() as u16).to_le_bytes());
        let mut strings = Vec::new();
        for (i, (k, v)) in self.entries.iter().enumerate() {
            let (k, v) = (utf16(k), utf16(v));
            let key_at = head.len() + strings.len();
            strings.extend_from_slice(&k);
            let value_at = head.len() + strings.len();
            strings.extend_from_slice(&v);
            let at = 20 + 12 * i;
            head[at..at + 4].copy_from_slice(&(key_at as u32).to_le_bytes());
            head[at + 4..at + 8].copy_from_slice(&(value_at as u32).to_le_bytes());
            head[at + 8..at + 10].copy_from_slice(&(k.len() as u16).to_le_bytes());
            head[at + 10..at + 12].copy_from_slice(&(v.len() as u16).to_le_bytes());
        }
        head.extend(strings);
        head
    }
}

/// The disk parameters from the region's bytes `region` (table and items), refusing unknown
/// required items and values outside what the format allows.
pub fn disk_parameters(region: &[u8], entries: &[MetadataEntry]) -> Result<DiskParameters, String> {
    let known = [
        FILE_PARAMETERS,
        VIRTUAL_DISK_SIZE,
        VIRTUAL_DISK_ID,
        LOGICAL_SECTOR_SIZE,
        PHYSICAL_SECTOR_SIZE,
        PARENT_LOCATOR,
    ];
    if let Some(e) = entries.iter().find(|e| e.is_required && (e.is_user || !known.contains(&e.item))) {
        return Err(format!("item {} is required and unknown to vhdkit", e.item));
    }
    let item = |guid: Guid, min: u32| -> Result<&[u8], String> {
        let e = entries.iter().find(|e| e.item == guid && !e.is_user).ok_or_else(|| format!("no item {guid}"))?;
        if e.length < min {
            return Err(format!("item {guid} has {} bytes, fewer than {min}", e.length));
        }
        Ok(&region[e.offset as usize..(e.offset + e.length) as usize])
    };
    let fp = item(FILE_PARAMETERS, 8)?;
    let (block_size, flags) = (le32(fp, 0), le32(fp, 4));
    if !block_size.is_power_of_two() || !(1 << 20..=256 << 20).contains(&block_size) {
        return Err(format!("block size {block_size} is not a power of two from 1 MiB to 256 MiB"));
    }
    let logical_sector_size = le32(item(LOGICAL_SECTOR_SIZE, 4)?, 0);
    let physical_sector_size = le32(item(PHYSICAL_SECTOR_SIZE, 4)?, 0);
    for (name, v) in [("logical", logical_sector_size), ("physical", physical_sector_size)] {
        if v != 512 && v != 4096 {
            return Err(format!("{name} sector size {v} is neither 512 nor 4096"));
        }
    }
    let virtual_disk_size = le64(item(VIRTUAL_DISK_SIZE, 8)?, 0);
    if virtual_disk_size == 0
        || virtual_disk_size > MAX_DISK_SIZE
        || !virtual_disk_size.is_multiple_of(logical_sector_size as u64)
    {
        return Err(format!(
            "virtual disk size {virtual_disk_size} is not a multiple of {logical_sector_size}-byte sectors up to 64 TiB"
        ));
    }
    let has_parent = flags & 2 != 0;
    let parent_locator = if has_parent {
        let locator = ParentLocator::parse(item(PARENT_LOCATOR, 20)?)?;
        if locator.locator_type != VHDX_LOCATOR_TYPE {
            return Err(format!("parent locator type {} is not the VHDX one", locator.locator_type));
        }
        Some(locator)
    } else {
        None
    };
    Ok(DiskParameters {
        block_size,
        leave_blocks_allocated: flags & 1 != 0 && !has_parent,
        has_parent,
        virtual_disk_size,
        virtual_disk_id: Guid::read(item(VIRTUAL_DISK_ID, 16)?, 0),
        logical_sector_size,
        physical_sector_size,
        parent_locator,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locator_round_trips() {
        let l = ParentLocator {
            locator_type: VHDX_LOCATOR_TYPE,
            entries: vec![
                ("parent_linkage".into(), "{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}".into()),
                ("relative_path".into(), "..\\base.vhdx".into()),
            ],
        };
        let back = ParentLocator::parse(&l.encode()).unwrap();
        assert_eq!(back, l);
        assert_eq!(back.get("relative_path"), Some("..\\base.vhdx"));
    }

    #[test]
    fn a_string_outside_the_locator_is_an_error() {
        let mut b = ParentLocator { locator_type: VHDX_LOCATOR_TYPE, entries: vec![("k".into(), "v".into())] }.encode();
        b[20..24].copy_from_slice(&1000u32.to_le_bytes());
        assert!(ParentLocator::parse(&b).unwrap_err().contains("outside"));
    }
}
