//! The 512-byte hard disk footer that ends every VHD (and starts dynamic ones).

use std::path::Path;

use serde::Serialize;

use crate::bytes::{be32, be64};
use crate::error::{Error, Result, Space};
use crate::vhd::geometry::Geometry;
use crate::vhd::identity::Identity;

/// Size of a footer as written since 2004.
pub const FOOTER_SIZE: usize = 512;
/// Virtual PC before 2004 wrote footers one byte shorter.
pub const LEGACY_FOOTER_SIZE: usize = 511;
/// The cookie that opens a footer.
pub const FOOTER_COOKIE: &[u8; 8] = b"conectix";
/// `data_offset` of a fixed disk: there is no dynamic header.
pub const NO_DATA_OFFSET: u64 = u64::MAX;
/// Seconds from the Unix epoch to 2000-01-01 00:00:00 UTC, the VHD epoch.
pub const VHD_EPOCH_UNIX: u64 = 946_684_800;

const CHECKSUM_FIELD: std::ops::Range<usize> = 64..68;

/// What kind of image a footer describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum DiskType {
    Fixed,
    Dynamic,
    Differencing,
}

impl DiskType {
    /// The footer's numeric code.
    pub fn code(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            2 => Some(DiskType::Fixed),
            3 => Some(DiskType::Dynamic),
            4 => Some(DiskType::Differencing),
            _ => None,
        }
    }

    /// Name as users and JSON see it.
    pub fn name(self) -> &'static str {
        match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
        }
    }
}

/// One's complement of the byte sum of `bytes`, skipping the checksum field itself.
pub fn vhd_checksum(bytes: &[u8], field: std::ops::Range<usize>) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !field.contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(b as u32));
    !sum
}

/// A decoded hard disk footer, with the bytes it was decoded from.
#[derive(Clone, Debug)]
pub struct Footer {
    pub features: u32,
    pub format_version: u32,
    pub data_offset: u64,
    pub timestamp: u32,
    pub creator_app: [u8; 4],
    pub creator_version: u32,
    pub creator_host_os: [u8; 4],
    pub original_size: u64,
    pub current_size: u64,
    pub geometry: Geometry,
    pub disk_type: DiskType,
    pub checksum: u32,
    pub uuid: [u8; 16],
    pub saved_state: u8,
    raw: [u8; FOOTER_SIZE],
}

impl Footer {
    /// Decodes a footer; `bytes` may be 511 bytes long (legacy) or 512.
    ///
    /// `offset` is where the footer sits in `file`, for error messages.
    pub fn parse(bytes: &[u8], file: &Path, offset: u64) -> Result<Self> {
        let corrupt = |problem: String| Error::corrupt(file, "VHD footer", Space::File, offset, problem);
        if bytes.len() < LEGACY_FOOTER_SIZE {
            return Err(corrupt(format!("only {} bytes", bytes.len())));
        }
        let mut raw = [0u8; FOOTER_SIZE];
        let n = bytes.len().min(FOOTER_SIZE);
        raw[..n].copy_from_slice(&bytes[..n]);
        if &raw[..8] != FOOTER_COOKIE {
            return Err(corrupt(format!("cookie is {:?}, expected \"conectix\"", String::from_utf8_lossy(&raw[..8]))));
        }
        let type_code = be32(&raw, 60);
        let disk_type =
            DiskType::from_code(type_code).ok_or_else(|| corrupt(format!("unknown disk type {type_code}")))?;
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&raw[68..84]);
        Ok(Footer {
            features: be32(&raw, 8),
            format_version: be32(&raw, 12),
            data_offset: be64(&raw, 16),
            timestamp: be32(&raw, 24),
            creator_app: [raw[28], raw[29], raw[30], raw[31]],
            creator_version: be32(&raw, 32),
            creator_host_os: [raw[36], raw[37], raw[38], raw[39]],
            original_size: be64(&raw, 40),
            current_size: be64(&raw, 48),
            geometry: Geometry::from_bytes([raw[56], raw[57], raw[58], raw[59]]),
            disk_type,
            checksum: be32(&raw, 64),
            uuid,
            saved_state: raw[84],
            raw,
        })
    }

    /// A new footer for a disk of `size` bytes made by vhdkit, its UUID and time from
    /// `identity`.
    pub fn new(disk_type: DiskType, size: u64, identity: &Identity) -> Self {
        let uuid = identity.uuid("vhd uuid");
        let mut f = Footer {
            features: 2,
            format_version: 0x0001_0000,
            data_offset: match disk_type {
                DiskType::Fixed => NO_DATA_OFFSET,
                _ => FOOTER_SIZE as u64,
            },
            timestamp: vhd_timestamp(identity.unix_seconds()),
            creator_app: *b"vhdk",
            creator_version: 0x0001_0000,
            creator_host_os: *b"Wi2k",
            original_size: size,
            current_size: size,
            geometry: Geometry::for_size(size),
            disk_type,
            checksum: 0,
            uuid,
            saved_state: 0,
            raw: [0; FOOTER_SIZE],
        };
        f.raw = f.encode();
        f
    }

    /// Encodes the fields, with a freshly computed checksum.
    pub fn encode(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[..8].copy_from_slice(FOOTER_COOKIE);
        b[8..12].copy_from_slice(&self.features.to_be_bytes());
        b[12..16].copy_from_slice(&self.format_version.to_be_bytes());
        b[16..24].copy_from_slice(&self.data_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.timestamp.to_be_bytes());
        b[28..32].copy_from_slice(&self.creator_app);
        b[32..36].copy_from_slice(&self.creator_version.to_be_bytes());
        b[36..40].copy_from_slice(&self.creator_host_os);
        b[40..48].copy_from_slice(&self.original_size.to_be_bytes());
        b[48..56].copy_from_slice(&self.current_size.to_be_bytes());
        b[56..60].copy_from_slice(&self.geometry.to_bytes());
        b[60..64].copy_from_slice(&self.disk_type.code().to_be_bytes());
        b[68..84].copy_from_slice(&self.uuid);
        b[84] = self.saved_state;
        let sum = vhd_checksum(&b, CHECKSUM_FIELD);
        b[64..68].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// The bytes the footer was decoded from (zero-padded to 512 for a legacy footer).
    pub fn raw(&self) -> &[u8; FOOTER_SIZE] {
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

    /// Creator application as text (`vpc `, `win `, `qemu`...).
    pub fn creator_app_text(&self) -> String {
        fourcc_text(&self.creator_app)
    }

    /// Creator host OS as text (`Wi2k`, `Mac `...).
    pub fn creator_host_os_text(&self) -> String {
        fourcc_text(&self.creator_host_os)
    }

    /// Whether qemu and Virtual PC take this image's size from its CHS geometry instead of
    /// `current_size` (their rule for images created by Virtual PC and old qemu).
    pub fn size_from_chs_in_qemu(&self) -> bool {
        matches!(&self.creator_app, b"vpc " | b"qemu")
    }
}

/// A four-character code as text, control bytes shown as `.`.
pub fn fourcc_text(code: &[u8; 4]) -> String {
    code.iter().map(|&c| if c.is_ascii_graphic() || c == b' ' { c as char } else { '.' }).collect()
}

/// Seconds since the VHD epoch for `unix` seconds since 1970 (0 before 2000).
pub fn vhd_timestamp(unix: u64) -> u32 {
    unix.saturating_sub(VHD_EPOCH_UNIX).min(u32::MAX as u64) as u32
}

/// A VHD timestamp as an ISO-8601 UTC string.
pub fn vhd_timestamp_text(ts: u32) -> String {
    unix_time_text(VHD_EPOCH_UNIX + ts as u64)
}

/// Seconds since 1970 as ISO 8601 UTC.
pub fn unix_time_text(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A UUID in the usual 8-4-4-4-12 form, bytes in stored order.
pub fn uuid_text(u: &[u8; 16]) -> String {
    let h = hex::encode_upper(u);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_footer_parses_back_with_valid_checksum() {
        let f = Footer::new(DiskType::Dynamic, 64 << 20, &Identity::Fresh);
        let g = Footer::parse(&f.encode(), Path::new("t"), 0).unwrap();
        assert!(g.checksum_valid());
        assert_eq!(g.current_size, 64 << 20);
        assert_eq!(g.disk_type, DiskType::Dynamic);
        assert_eq!(g.data_offset, 512);
        assert_eq!(g.creator_app_text(), "vhdk");
    }

    #[test]
    fn a_flipped_byte_breaks_the_checksum_and_a_bad_cookie_is_named() {
        let mut b = Footer::new(DiskType::Fixed, 1 << 20, &Identity::Fresh).encode();
        b[100] ^= 1;
        assert!(!Footer::parse(&b, Path::new("t"), 0).unwrap().checksum_valid());
        b[0] = b'X';
        let e = Footer::parse(&b, Path::new("t.vhd"), 0x1000).unwrap_err().to_string();
        assert_eq!(e, "t.vhd: VHD footer at file offset 0x1000: cookie is \"Xonectix\", expected \"conectix\"");
    }

    #[test]
    fn timestamps_render_in_utc() {
        assert_eq!(vhd_timestamp_text(0), "2000-01-01T00:00:00Z");
        assert_eq!(vhd_timestamp_text(86_400 * 366 + 3661), "2001-01-01T01:01:01Z");
    }
}
