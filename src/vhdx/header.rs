//! The file type identifier and the two headers at the start of a VHDX file (MS-VHDX 2.2).
//! The current header is the valid one with the larger sequence number; two valid headers
//! with the same number are accepted only when identical (Disk2vhd writes them so).

use serde::Serialize;

use crate::bytes::{Guid, le16, le32, le64};

/// The signature that starts every VHDX file.
pub const FILE_SIGNATURE: &[u8; 8] = b"vhdxfile";
/// Where the two headers are.
pub const HEADER_OFFSETS: [u64; 2] = [64 << 10, 128 << 10];
/// Bytes of a header (the rest of its 64 KiB slot is reserved).
pub const HEADER_SIZE: usize = 4096;
const HEADER_SIGNATURE: &[u8; 4] = b"head";

/// One decoded header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VhdxHeader {
    /// Which slot it was read from (1 or 2).
    pub slot: u8,
    pub sequence_number: u64,
    /// Changes on every open that modifies the file.
    pub file_write_guid: Guid,
    /// Changes on every open that modifies what the disk reads: children name it.
    pub data_write_guid: Guid,
    /// Non-zero when the log holds entries to replay.
    pub log_guid: Guid,
    pub log_version: u16,
    pub version: u16,
    pub log_length: u32,
    pub log_offset: u64,
    pub checksum: u32,
}

impl VhdxHeader {
    /// Decodes the header in `b` (read from `slot`), or says why it is not valid.
    pub fn parse(b: &[u8], slot: u8) -> Result<Self, String> {
        if b.len() < HEADER_SIZE || &b[..4] != HEADER_SIGNATURE {
            return Err("no `head` signature".into());
        }
        let stored = le32(b, 4);
        let computed = checksum(&b[..HEADER_SIZE], 4);
        if stored != computed {
            return Err(format!("CRC-32C {stored:#010x} stored, {computed:#010x} computed"));
        }
        let h = VhdxHeader {
            slot,
            sequence_number: le64(b, 8),
            file_write_guid: Guid::read(b, 16),
            data_write_guid: Guid::read(b, 32),
            log_guid: Guid::read(b, 48),
            log_version: le16(b, 64),
            version: le16(b, 66),
            log_length: le32(b, 68),
            log_offset: le64(b, 72),
            checksum: stored,
        };
        if h.version != 1 {
            return Err(format!("version {} (only 1 is defined)", h.version));
        }
        Ok(h)
    }

    /// The header's 4 KiB, checksummed.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE];
        b[..4].copy_from_slice(HEADER_SIGNATURE);
        b[8..16].copy_from_slice(&self.sequence_number.to_le_bytes());
        b[16..32].copy_from_slice(&self.file_write_guid.0);
        b[32..48].copy_from_slice(&self.data_write_guid.0);
        b[48..64].copy_from_slice(&self.log_guid.0);
        b[64..66].copy_from_slice(&self.log_version.to_le_bytes());
        b[66..68].copy_from_slice(&self.version.to_le_bytes());
        b[68..72].copy_from_slice(&self.log_length.to_le_bytes());
        b[72..80].copy_from_slice(&self.log_offset.to_le_bytes());
        let crc = checksum(&b, 4);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

/// The CRC-32C of `b` with its 4-byte checksum field at `at` taken as zero.
pub fn checksum(b: &[u8], at: usize) -> u32 {
    let crc = crc32c::crc32c(&b[..at]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &b[at + 4..])
}

/// The current header of two read ones: the valid one with the larger sequence number. Two
/// valid headers with equal numbers count only when identical but for their slot.
pub fn current(first: &Result<VhdxHeader, String>, second: &Result<VhdxHeader, String>) -> Result<VhdxHeader, String> {
    match (first, second) {
        (Ok(a), Ok(b)) if a.sequence_number > b.sequence_number => Ok(a.clone()),
        (Ok(a), Ok(b)) if b.sequence_number > a.sequence_number => Ok(b.clone()),
        (Ok(a), Ok(b)) if VhdxHeader { slot: b.slot, ..a.clone() } == *b => Ok(a.clone()),
        (Ok(_), Ok(_)) => Err("both headers are valid with the same sequence number but differ".into()),
        (Ok(a), Err(_)) => Ok(a.clone()),
        (Err(_), Ok(b)) => Ok(b.clone()),
        (Err(x), Err(y)) => Err(format!("header 1: {x}; header 2: {y}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(slot: u8, sequence_number: u64) -> VhdxHeader {
        VhdxHeader {
            slot,
            sequence_number,
            file_write_guid: Guid([1; 16]),
            data_write_guid: Guid([2; 16]),
            log_guid: Guid::default(),
            log_version: 0,
            version: 1,
            log_length: 1 << 20,
            log_offset: 1 << 20,
            checksum: 0,
        }
    }

    #[test]
    fn a_header_round_trips_and_its_checksum_is_crc32c() {
        let h = header(1, 7);
        let b = h.encode();
        let back = VhdxHeader::parse(&b, 1).unwrap();
        assert_eq!(VhdxHeader { checksum: 0, ..back.clone() }, h);
        assert_eq!(back.checksum, checksum(&b, 4));
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283, "the standard CRC-32C");
        let mut bad = b.clone();
        bad[100] ^= 1;
        assert!(VhdxHeader::parse(&bad, 1).unwrap_err().contains("CRC-32C"));
    }

    #[test]
    fn the_newer_valid_header_is_current() {
        let (a, b) = (Ok(header(1, 5)), Ok(header(2, 6)));
        assert_eq!(current(&a, &b).unwrap().slot, 2);
        assert_eq!(current(&a, &Err("torn".into())).unwrap().slot, 1);
        assert_eq!(current(&Ok(header(1, 6)), &Ok(header(2, 6))).unwrap().slot, 1, "identical twins (Disk2vhd)");
        let differing = VhdxHeader { log_length: 2 << 20, ..header(2, 6) };
        assert!(current(&Ok(header(1, 6)), &Ok(differing)).is_err());
    }
}
