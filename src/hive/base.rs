//! The 4096-byte base block: signature, sequence numbers, versions, root cell, hive bins size,
//! checksum.

use std::path::Path;

use serde::Serialize;

use crate::bytes::{le32, le64};
use crate::error::{Error, Result, Space};

/// Offset of the checksum (the XOR of the 127 dwords before it).
pub const CHECKSUM_AT: usize = 0x1FC;

/// The checksum a base block should carry.
pub fn checksum(b: &[u8]) -> u32 {
    let x = b[..CHECKSUM_AT].chunks_exact(4).fold(0u32, |acc, c| acc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    match x {
        0 => 1,
        u32::MAX => u32::MAX - 1,
        x => x,
    }
}

/// The fields of a base block vhdkit uses.
#[derive(Clone, Debug, Default, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BaseBlock {
    pub primary_sequence: u32,
    pub secondary_sequence: u32,
    pub timestamp: u64,
    pub major: u32,
    pub minor: u32,
    pub file_type: u32,
    pub root_cell: u32,
    pub hive_bins_size: u32,
    pub checksum: u32,
    pub computed_checksum: u32,
    pub checksum_valid: bool,
    pub file_name: String,
}

impl BaseBlock {
    /// Decodes the base block at the start of `b`.
    pub fn parse(b: &[u8], name: &Path) -> Result<Self> {
        let bad = |at: u64, problem: String| Error::corrupt(name, "base block", Space::Hive, at, problem);
        if b.len() < 4096 {
            return Err(bad(0, format!("the file has {} bytes, a hive at least 4096", b.len())));
        }
        if &b[..4] != b"regf" {
            return Err(bad(0, format!("signature is {:?}, expected \"regf\"", String::from_utf8_lossy(&b[..4]))));
        }
        let block = BaseBlock {
            primary_sequence: le32(b, 4),
            secondary_sequence: le32(b, 8),
            timestamp: le64(b, 12),
            major: le32(b, 20),
            minor: le32(b, 24),
            file_type: le32(b, 28),
            root_cell: le32(b, 36),
            hive_bins_size: le32(b, 40),
            checksum: le32(b, CHECKSUM_AT),
            computed_checksum: checksum(b),
            checksum_valid: checksum(b) == le32(b, CHECKSUM_AT),
            file_name: crate::hive::names::decode(&b[48..112], false).trim_end_matches('\0').to_string(),
        };
        // A damaged block's fields are not trusted: it is recovered from a log, or refused.
        if block.checksum_valid {
            block.check_fields().map_err(|(at, problem)| bad(at, problem))?;
        }
        Ok(block)
    }

    /// Refuses a version vhdkit does not read or a hive bins size that cannot be.
    fn check_fields(&self) -> std::result::Result<(), (u64, String)> {
        if self.major != 1 || !(2..=6).contains(&self.minor) {
            return Err((
                20,
                format!("format version {}.{} is not one vhdkit reads (1.2 to 1.6)", self.major, self.minor),
            ));
        }
        if !self.hive_bins_size.is_multiple_of(4096) {
            return Err((40, format!("hive bins data size {} is not a multiple of 4096", self.hive_bins_size)));
        }
        Ok(())
    }

    /// Fails unless the version and sizes are ones vhdkit reads (checked at parse time only
    /// for a block with the right checksum).
    pub fn require_readable(&self, name: &Path) -> Result<()> {
        self.check_fields().map_err(|(at, problem)| {
            let problem =
                if self.checksum_valid { problem } else { format!("{problem} (and the block's checksum is wrong)") };
            Error::corrupt(name, "base block", Space::Hive, at, problem)
        })
    }

    /// Whether Windows would replay logs before using the hive: sequence numbers differ or the
    /// checksum is wrong.
    pub fn dirty(&self) -> bool {
        self.primary_sequence != self.secondary_sequence || !self.checksum_valid
    }
}

/// The current time as a FILETIME (100 ns since 1601).
pub fn filetime_now() -> u64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 / 100)
        .unwrap_or(0);
    unix + 116_444_736_000_000_000
}

/// Seconds since 1970 as a FILETIME.
pub fn unix_to_filetime(unix_seconds: u64) -> u64 {
    unix_seconds.saturating_mul(10_000_000).saturating_add(116_444_736_000_000_000)
}

/// Marks an edited hive clean: both sequence numbers one past the larger, the timestamp `now`
/// (a FILETIME), the hive bins size, and the checksum.
pub fn seal(b: &mut [u8], hive_bins_size: u32, now: u64) {
    let seq = le32(b, 4).max(le32(b, 8)).wrapping_add(1);
    b[4..8].copy_from_slice(&seq.to_le_bytes());
    b[8..12].copy_from_slice(&seq.to_le_bytes());
    b[12..20].copy_from_slice(&now.to_le_bytes());
    b[40..44].copy_from_slice(&hive_bins_size.to_le_bytes());
    let sum = checksum(b);
    b[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&sum.to_le_bytes());
}
