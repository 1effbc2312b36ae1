//! Key and value names: the compressed (Latin-1) and UTF-16 encodings, case-insensitive
//! comparison as Windows does it (one UTF-16 code unit at a time), and the hints and hashes
//! subkey lists carry.

use std::cmp::Ordering;

/// Upper-cases one UTF-16 code unit the way `RtlUpcaseUnicodeChar` does: a unit whose upper
/// case is a single BMP character maps to it; everything else (`ß`, surrogates) stays.
pub fn upcase_unit(u: u16) -> u16 {
    match char::from_u32(u as u32) {
        Some(c) => {
            let mut up = c.to_uppercase();
            match (up.next(), up.next()) {
                (Some(x), None) if (x as u32) < 0x10000 => x as u32 as u16,
                _ => u,
            }
        }
        None => u,
    }
}

/// Compares two names case-insensitively, code unit by code unit (the order subkey lists are
/// kept in).
pub fn compare(a: &str, b: &str) -> Ordering {
    a.encode_utf16().map(upcase_unit).cmp(b.encode_utf16().map(upcase_unit))
}

/// Whether two names are equal ignoring case.
pub fn eq(a: &str, b: &str) -> bool {
    compare(a, b) == Ordering::Equal
}

/// The hash of a hash-leaf (`lh`) entry: 37 * h + upper-cased code unit.
pub fn lh_hash(name: &str) -> u32 {
    name.encode_utf16().fold(0u32, |h, u| h.wrapping_mul(37).wrapping_add(upcase_unit(u) as u32))
}

/// The 4-byte hint of a fast-leaf (`lf`) entry: the first four characters, as bytes.
pub fn lf_hint(name: &str) -> [u8; 4] {
    let mut hint = [0u8; 4];
    for (i, u) in name.encode_utf16().take(4).enumerate() {
        hint[i] = if u < 0x100 { u as u8 } else { 0 };
    }
    hint
}

/// Decodes a stored name: Latin-1 when `compressed`, else UTF-16LE.
pub fn decode(bytes: &[u8], compressed: bool) -> String {
    if compressed {
        bytes.iter().map(|&b| b as char).collect()
    } else {
        let units = bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
        char::decode_utf16(units).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)).collect()
    }
}

/// Encodes a name for storage: Latin-1 (compressed) when every character fits, else UTF-16LE.
pub fn encode(name: &str) -> (Vec<u8>, bool) {
    if name.chars().all(|c| (c as u32) < 0x100) {
        (name.chars().map(|c| c as u32 as u8).collect(), true)
    } else {
        (name.encode_utf16().flat_map(u16::to_le_bytes).collect(), false)
    }
}

/// Length of a name in bytes of UTF-16 (what the key node's "largest name" fields count).
pub fn utf16_len(name: &str) -> u32 {
    name.encode_utf16().count() as u32 * 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_folding_is_per_code_unit() {
        assert!(eq("ControlSet001", "CONTROLSET001"));
        assert!(eq("ëigenaardig", "ËIGENAARDIG"));
        // ß has no single-unit upper case: it stays, and sorts after the ASCII letters.
        assert_eq!(upcase_unit('ß' as u16), 'ß' as u16);
        assert_eq!(compare("SS3", "ß2"), Ordering::Less);
        assert_eq!(compare("ss1", "SS3"), Ordering::Less);
        // The Windows order of "1".."100" is by code unit.
        assert_eq!(compare("10", "100"), Ordering::Less);
        assert_eq!(compare("100", "11"), Ordering::Less);
    }

    #[test]
    fn names_round_trip_both_encodings() {
        assert_eq!(encode("abc"), (b"abc".to_vec(), true));
        let (bytes, compressed) = encode("Привет");
        assert!(!compressed);
        assert_eq!(decode(&bytes, false), "Привет");
        assert_eq!(decode(&[0xEB, b'x'], true), "ëx");
        assert_eq!(lf_hint("ab"), [b'a', b'b', 0, 0]);
        assert_eq!(lh_hash("a"), 'A' as u32);
        assert_eq!(lh_hash("ab"), 'A' as u32 * 37 + 'B' as u32);
    }
}
