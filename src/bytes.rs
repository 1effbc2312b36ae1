//! Fixed-width integers at an offset of a byte slice, as on-disk structures store them: little
//! endian (NTFS, MBR/GPT, regf) and big endian (VHD footer and header). The caller has checked
//! that `at` and the width lie inside the slice.

/// The little-endian u16 at `at`.
pub fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// The little-endian u32 at `at`.
pub fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The little-endian u64 at `at`.
pub fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// The big-endian u32 at `at`.
pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The big-endian u64 at `at`.
pub fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// A GUID as Windows stores it: the first three fields little endian, the last eight bytes as
/// they are (GPT, VHDX).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The GUID written `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX`, at compile time (for the
    /// well-known GUIDs of on-disk formats; a malformed constant fails the build).
    pub const fn from_text(s: &str) -> Guid {
        let b = s.as_bytes();
        let mut hex = [0u8; 16];
        let (mut i, mut n) = (0, 0);
        while i < b.len() {
            if b[i] != b'-' {
                let v = match b[i] {
                    b'0'..=b'9' => b[i] - b'0',
                    b'a'..=b'f' => b[i] - b'a' + 10,
                    b'A'..=b'F' => b[i] - b'A' + 10,
                    _ => panic!("not a GUID"),
                };
                hex[n / 2] |= if n % 2 == 0 { v << 4 } else { v };
                n += 1;
            }
            i += 1;
        }
        assert!(n == 32, "not a GUID");
        Guid([
            hex[3], hex[2], hex[1], hex[0], hex[5], hex[4], hex[7], hex[6], hex[8], hex[9], hex[10], hex[11], hex[12],
            hex[13], hex[14], hex[15],
        ])
    }

    /// Parses a GUID as text, with or without braces, in either case.
    pub fn parse(s: &str) -> Option<Guid> {
        let t = s.trim().trim_start_matches('{').trim_end_matches('}');
        let dashes: Vec<usize> = t.match_indices('-').map(|(i, _)| i).collect();
        let digits = t.chars().filter(|c| *c != '-').count();
        if dashes != [8, 13, 18, 23] || digits != 32 || !t.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) {
            return None;
        }
        Some(Guid::from_text(t))
    }

    /// The 16 bytes at `at`.
    pub fn read(b: &[u8], at: usize) -> Guid {
        let mut g = [0u8; 16];
        g.copy_from_slice(&b[at..at + 16]);
        Guid(g)
    }

    /// Whether every byte is zero (the "none" GUID).
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = &self.0;
        write!(
            f,
            "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
            g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]
        )
    }
}

impl std::fmt::Debug for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl serde::Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// In JSON a GUID is its registry-form text, upper case, without braces.
#[cfg(feature = "schema")]
impl schemars::JsonSchema for Guid {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Guid".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_mixed_endian_on_disk() {
        let bat = Guid::from_text("2DC27766-F623-4200-9D64-115E9BFD4A08");
        assert_eq!(
            bat.0,
            [0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08]
        );
        assert_eq!(bat.to_string(), "2DC27766-F623-4200-9D64-115E9BFD4A08");
        assert_eq!(Guid::parse("{2dc27766-f623-4200-9d64-115e9bfd4a08}"), Some(bat));
        assert_eq!(Guid::parse("2dc27766f62342009d64115e9bfd4a08"), None);
    }
}
