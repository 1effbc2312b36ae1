//! The 1024-byte dynamic disk header of dynamic and differencing images, with its parent
//! locators.

use std::path::Path;

use crate::bytes::{be32, be64};
use crate::error::{Error, Result, Space};
use crate::vhd::footer::vhd_checksum;

/// Size of the dynamic disk header.
pub const HEADER_SIZE: usize = 1024;
/// The cookie that opens the header.
pub const HEADER_COOKIE: &[u8; 8] = b"cxsparse";
/// Number of parent locator entries in the header.
pub const LOCATOR_COUNT: usize = 8;
/// Longest locator path we read: 32767 UTF-16 code units, the Windows path limit.
pub const MAX_LOCATOR_LEN: u32 = 65_536;

const CHECKSUM_FIELD: std::ops::Range<usize> = 36..40;
const PARENT_NAME: std::ops::Range<usize> = 64..576;
const LOCATORS_AT: usize = 576;
const LOCATOR_SIZE: usize = 24;

/// One parent locator entry: where a platform-specific path to the parent is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentLocator {
    /// Four-character platform code: `W2ru`, `W2ku`, `Wi2r`, `Wi2k`, `Mac `, `MacX`.
    pub platform_code: [u8; 4],
    /// Space reserved for the data; writers disagree on its unit, so it is only reported.
    pub data_space: u32,
    /// Length of the path data in bytes.
    pub data_length: u32,
    /// Absolute file offset of the path data.
    pub data_offset: u64,
}

impl ParentLocator {
    /// How the locator's bytes encode a path.
    pub fn encoding(&self) -> LocatorEncoding {
        match &self.platform_code {
            b"W2ru" | b"Wi2r" => LocatorEncoding::Utf16Relative,
            b"W2ku" | b"Wi2k" => LocatorEncoding::Utf16Absolute,
            b"MacX" => LocatorEncoding::FileUrl,
            _ => LocatorEncoding::Opaque,
        }
    }

    /// Decodes the path stored in this locator's bytes, or `None` for formats that hold no
    /// readable path (a Mac alias record).
    pub fn decode_path(&self, data: &[u8]) -> Option<String> {
        match self.encoding() {
            LocatorEncoding::Utf16Relative | LocatorEncoding::Utf16Absolute => {
                let units: Vec<u16> =
                    data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&u| u != 0).collect();
                Some(String::from_utf16_lossy(&units))
            }
            LocatorEncoding::FileUrl => {
                let text = String::from_utf8_lossy(data);
                let text = text.trim_end_matches('\0');
                let path = text.strip_prefix("file://").unwrap_or(text);
                Some(percent_decode(path))
            }
            LocatorEncoding::Opaque => None,
        }
    }
}

/// The path encodings locators use, in the order parent resolution tries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LocatorEncoding {
    Utf16Relative,
    Utf16Absolute,
    FileUrl,
    Opaque,
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = (b[i] == b'%' && i + 2 < b.len()).then(|| Some(hex(b[i + 1])? << 4 | hex(b[i + 2])?)).flatten();
        match escaped {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A decoded dynamic disk header.
#[derive(Clone, Debug)]
pub struct DynamicHeader {
    pub data_offset: u64,
    pub table_offset: u64,
    pub header_version: u32,
    pub max_table_entries: u32,
    pub block_size: u32,
    pub checksum: u32,
    pub parent_uuid: [u8; 16],
    pub parent_timestamp: u32,
    pub parent_unicode_name: String,
    pub parent_locators: Vec<(usize, ParentLocator)>,
    raw: [u8; HEADER_SIZE],
}

impl DynamicHeader {
    /// Decodes the header read from `offset` of `file`.
    pub fn parse(raw: &[u8; HEADER_SIZE], file: &Path, offset: u64) -> Result<Self> {
        if &raw[..8] != HEADER_COOKIE {
            return Err(Error::corrupt(
                file,
                "dynamic disk header",
                Space::File,
                offset,
                format!("cookie is {:?}, expected \"cxsparse\"", String::from_utf8_lossy(&raw[..8])),
            ));
        }
        let name_units: Vec<u16> = raw[PARENT_NAME]
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let parent_locators = (0..LOCATOR_COUNT)
            .filter_map(|i| {
                let e = &raw[LOCATORS_AT + i * LOCATOR_SIZE..][..LOCATOR_SIZE];
                let code = [e[0], e[1], e[2], e[3]];
                (code != [0; 4]).then(|| {
                    (
                        i,
                        ParentLocator {
                            platform_code: code,
                            data_space: be32(e, 4),
                            data_length: be32(e, 8),
                            data_offset: be64(e, 16),
                        },
                    )
                })
            })
            .collect();
        let mut parent_uuid = [0u8; 16];
        parent_uuid.copy_from_slice(&raw[40..56]);
        Ok(DynamicHeader {
            data_offset: be64(raw, 8),
            table_offset: be64(raw, 16),
            header_version: be32(raw, 24),
            max_table_entries: be32(raw, 28),
            block_size: be32(raw, 32),
            checksum: be32(raw, 36),
            parent_uuid,
            parent_timestamp: be32(raw, 56),
            parent_unicode_name: String::from_utf16_lossy(&name_units),
            parent_locators,
            raw: *raw,
        })
    }

    /// A header for a new image whose BAT sits at `table_offset`.
    pub fn new(table_offset: u64, max_table_entries: u32, block_size: u32) -> Self {
        let mut h = DynamicHeader {
            data_offset: u64::MAX,
            table_offset,
            header_version: 0x0001_0000,
            max_table_entries,
            block_size,
            checksum: 0,
            parent_uuid: [0; 16],
            parent_timestamp: 0,
            parent_unicode_name: String::new(),
            parent_locators: Vec::new(),
            raw: [0; HEADER_SIZE],
        };
        h.raw = h.encode();
        h
    }

    /// Encodes the fields, with a freshly computed checksum.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..8].copy_from_slice(HEADER_COOKIE);
        b[8..16].copy_from_slice(&self.data_offset.to_be_bytes());
        b[16..24].copy_from_slice(&self.table_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.header_version.to_be_bytes());
        b[28..32].copy_from_slice(&self.max_table_entries.to_be_bytes());
        b[32..36].copy_from_slice(&self.block_size.to_be_bytes());
        b[40..56].copy_from_slice(&self.parent_uuid);
        b[56..60].copy_from_slice(&self.parent_timestamp.to_be_bytes());
        for (i, unit) in self.parent_unicode_name.encode_utf16().take(256).enumerate() {
            b[PARENT_NAME.start + 2 * i..][..2].copy_from_slice(&unit.to_be_bytes());
        }
        for (i, loc) in &self.parent_locators {
            let e = &mut b[LOCATORS_AT + i * LOCATOR_SIZE..][..LOCATOR_SIZE];
            e[..4].copy_from_slice(&loc.platform_code);
            e[4..8].copy_from_slice(&loc.data_space.to_be_bytes());
            e[8..12].copy_from_slice(&loc.data_length.to_be_bytes());
            e[16..24].copy_from_slice(&loc.data_offset.to_be_bytes());
        }
        let sum = vhd_checksum(&b, CHECKSUM_FIELD);
        b[36..40].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// The bytes the header was decoded from.
    pub fn raw(&self) -> &[u8; HEADER_SIZE] {
        &self.raw
    }

    /// The checksum the stored bytes should carry.
    pub fn computed_checksum(&self) -> u32 {
        vhd_checksum(&self.raw, CHECKSUM_FIELD)
    }

    /// Whether the stored checksum matches the stored bytes.
    pub fn checksum_valid(&self) -> bool {
        self.computed_checksum() == self.checksum
    }

    /// Size of each block's sector bitmap on disk: one bit per sector, padded to 512 bytes.
    pub fn bitmap_size(&self) -> u64 {
        bitmap_size_for(self.block_size)
    }
}

/// Size of the sector bitmap in front of a block of `block_size` bytes.
pub fn bitmap_size_for(block_size: u32) -> u64 {
    (block_size as u64 / 512).div_ceil(8).div_ceil(512) * 512
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_sizes_follow_the_spec() {
        assert_eq!(bitmap_size_for(2 << 20), 512);
        assert_eq!(bitmap_size_for(512 << 10), 512);
        assert_eq!(bitmap_size_for(4 << 20), 1024);
        assert_eq!(bitmap_size_for(4096), 512);
    }

    #[test]
    fn header_round_trips_with_locators_and_name() {
        let mut h = DynamicHeader::new(1536, 32, 2 << 20);
        h.parent_uuid = [9; 16];
        h.parent_unicode_name = "C:\\parent.vhd".into();
        h.parent_locators
            .push((0, ParentLocator { platform_code: *b"W2ru", data_space: 512, data_length: 26, data_offset: 2048 }));
        let raw = h.encode();
        let back = DynamicHeader::parse(&raw, Path::new("t"), 512).unwrap();
        assert!(back.checksum_valid());
        assert_eq!(back.parent_unicode_name, "C:\\parent.vhd");
        assert_eq!(back.parent_locators, h.parent_locators);
        assert_eq!(back.max_table_entries, 32);
    }

    #[test]
    fn locator_paths_decode_per_platform() {
        let w = ParentLocator { platform_code: *b"W2ru", data_space: 0, data_length: 0, data_offset: 0 };
        let data: Vec<u8> = ".\\p.vhd".encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        assert_eq!(w.decode_path(&data).as_deref(), Some(".\\p.vhd"));
        let m = ParentLocator { platform_code: *b"MacX", ..w.clone() };
        assert_eq!(m.decode_path(b"file:///Users/a%20b/p.vhd").as_deref(), Some("/Users/a b/p.vhd"));
        let a = ParentLocator { platform_code: *b"Mac ", ..w };
        assert_eq!(a.decode_path(b"alias"), None);
    }
}
