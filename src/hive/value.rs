//! Value types and data: names of the types, decoding data for people and JSON, and encoding
//! data given on the command line or in a .reg file.

use serde::Serialize;

use crate::bytes::{le32, le64};
use crate::error::{Error, Result};

/// Value type numbers.
pub mod reg_type {
    pub const NONE: u32 = 0;
    pub const SZ: u32 = 1;
    pub const EXPAND_SZ: u32 = 2;
    pub const BINARY: u32 = 3;
    pub const DWORD: u32 = 4;
    pub const DWORD_BIG_ENDIAN: u32 = 5;
    pub const LINK: u32 = 6;
    pub const MULTI_SZ: u32 = 7;
    pub const RESOURCE_LIST: u32 = 8;
    pub const FULL_RESOURCE_DESCRIPTOR: u32 = 9;
    pub const RESOURCE_REQUIREMENTS_LIST: u32 = 10;
    pub const QWORD: u32 = 11;
}

const NAMES: [(u32, &str); 12] = [
    (reg_type::NONE, "REG_NONE"),
    (reg_type::SZ, "REG_SZ"),
    (reg_type::EXPAND_SZ, "REG_EXPAND_SZ"),
    (reg_type::BINARY, "REG_BINARY"),
    (reg_type::DWORD, "REG_DWORD"),
    (reg_type::DWORD_BIG_ENDIAN, "REG_DWORD_BIG_ENDIAN"),
    (reg_type::LINK, "REG_LINK"),
    (reg_type::MULTI_SZ, "REG_MULTI_SZ"),
    (reg_type::RESOURCE_LIST, "REG_RESOURCE_LIST"),
    (reg_type::FULL_RESOURCE_DESCRIPTOR, "REG_FULL_RESOURCE_DESCRIPTOR"),
    (reg_type::RESOURCE_REQUIREMENTS_LIST, "REG_RESOURCE_REQUIREMENTS_LIST"),
    (reg_type::QWORD, "REG_QWORD"),
];

/// `REG_SZ`, ..., or `0x...` for a type Windows does not name.
pub fn type_name(ty: u32) -> String {
    known_type_name(ty).map_or_else(|| format!("{ty:#x}"), str::to_string)
}

/// `REG_SZ`, ..., or `None` for a type Windows does not name.
pub fn known_type_name(ty: u32) -> Option<&'static str> {
    NAMES.iter().find(|(n, _)| *n == ty).map(|(_, s)| *s)
}

/// Parses a type name (`REG_SZ`, `sz`, `4`, `0xffff0011`).
pub fn parse_type(text: &str) -> Result<u32> {
    let t = text.trim();
    let upper = t.to_ascii_uppercase();
    let with_prefix = if upper.starts_with("REG_") { upper.clone() } else { format!("REG_{upper}") };
    if let Some((n, _)) = NAMES.iter().find(|(_, s)| *s == with_prefix) {
        return Ok(*n);
    }
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    };
    parsed.ok_or_else(|| Error::Usage(format!("unknown value type {text:?}")))
}

/// UTF-16LE code units of `s` with a terminating NUL.
pub fn utf16z(s: &str) -> Vec<u8> {
    s.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect()
}

/// Text of a REG_SZ-like value: UTF-16LE up to the first NUL (odd trailing bytes ignored).
pub fn decode_string(data: &[u8]) -> String {
    let units: Vec<u16> =
        data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&u| u != 0).collect();
    String::from_utf16_lossy(&units)
}

/// The strings of a REG_MULTI_SZ value (the empty string that terminates the list dropped).
pub fn decode_multi(data: &[u8]) -> Vec<String> {
    let units: Vec<u16> = data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    let mut out: Vec<String> = units.split(|&u| u == 0).map(String::from_utf16_lossy).collect();
    while out.last().is_some_and(String::is_empty) {
        out.pop();
    }
    out
}

/// REG_MULTI_SZ bytes: each string NUL-terminated, then one more NUL.
pub fn encode_multi(items: &[String]) -> Vec<u8> {
    let mut out: Vec<u8> = items.iter().flat_map(|s| utf16z(s)).collect();
    out.extend_from_slice(&[0, 0]);
    out
}

/// A value's data decoded by its type: strings as text, DWORD/QWORD as numbers, lists as
/// lists, everything else (and anything malformed for its type) as hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum ValueData {
    Text(String),
    Number(u64),
    Strings(Vec<String>),
    Hex(String),
}

impl ValueData {
    /// Decodes the data of a value of type `ty`.
    pub fn decode(ty: u32, data: &[u8]) -> Self {
        match (ty, data.len()) {
            (reg_type::SZ | reg_type::EXPAND_SZ | reg_type::LINK, _) if data.len().is_multiple_of(2) => {
                ValueData::Text(decode_string(data))
            }
            (reg_type::DWORD, 4) => ValueData::Number(le32(data, 0) as u64),
            (reg_type::DWORD_BIG_ENDIAN, 4) => ValueData::Number(crate::bytes::be32(data, 0) as u64),
            (reg_type::QWORD, 8) => ValueData::Number(le64(data, 0)),
            (reg_type::MULTI_SZ, _) if data.len().is_multiple_of(2) => ValueData::Strings(decode_multi(data)),
            _ => ValueData::Hex(hex::encode(data)),
        }
    }
}

/// One line of text: strings as they are, numbers in decimal and hex, REG_MULTI_SZ items
/// joined by ` | `.
impl std::fmt::Display for ValueData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueData::Text(s) | ValueData::Hex(s) => f.write_str(s),
            ValueData::Number(n) => write!(f, "{n} ({n:#x})"),
            ValueData::Strings(items) => f.write_str(&items.join(" | ")),
        }
    }
}

fn parse_number(text: &str) -> Option<u64> {
    let t = text.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    }
}

/// Hex text (`01 02 ff`, `01,02`, `0102ff`) to bytes.
pub fn parse_hex(text: &str) -> Result<Vec<u8>> {
    let digits: String = text.chars().filter(|c| !matches!(c, ' ' | ',' | ':' | '\n' | '\r' | '\t')).collect();
    hex::decode(&digits).map_err(|e| Error::Usage(format!("{text:?} is not hex bytes: {e}")))
}

/// Encodes command-line data for a value of type `ty`: text for strings, numbers for
/// DWORD/QWORD (decimal or 0x-hex), one item per `parts` entry for REG_MULTI_SZ, hex for the
/// rest.
pub fn encode(ty: u32, parts: &[String]) -> Result<Vec<u8>> {
    let one = || -> Result<&String> {
        match parts {
            [one] => Ok(one),
            _ => Err(Error::Usage(format!("{} takes exactly one data item", type_name(ty)))),
        }
    };
    let number = |max: u64| -> Result<u64> {
        let t = one()?;
        parse_number(t)
            .filter(|&n| n <= max)
            .ok_or_else(|| Error::Usage(format!("{t:?} is not a {} (decimal or 0x-hex)", type_name(ty))))
    };
    Ok(match ty {
        reg_type::SZ | reg_type::EXPAND_SZ | reg_type::LINK => utf16z(one()?),
        reg_type::MULTI_SZ => encode_multi(parts),
        reg_type::DWORD => (number(u32::MAX as u64)? as u32).to_le_bytes().to_vec(),
        reg_type::DWORD_BIG_ENDIAN => (number(u32::MAX as u64)? as u32).to_be_bytes().to_vec(),
        reg_type::QWORD => number(u64::MAX)?.to_le_bytes().to_vec(),
        _ => parse_hex(&parts.join(""))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_by_name_and_number() {
        assert_eq!(parse_type("REG_SZ").unwrap(), 1);
        assert_eq!(parse_type("dword").unwrap(), 4);
        assert_eq!(parse_type("0xffff0011").unwrap(), 0xffff0011);
        assert_eq!(type_name(0xffff0011), "0xffff0011");
        assert!(parse_type("REG_FOO").is_err());
    }

    #[test]
    fn data_encodes_and_decodes() {
        assert_eq!(encode(reg_type::DWORD, &["0x2a".into()]).unwrap(), vec![42, 0, 0, 0]);
        assert_eq!(encode(reg_type::SZ, &["A".into()]).unwrap(), vec![b'A', 0, 0, 0]);
        let multi = encode(reg_type::MULTI_SZ, &["a".into(), "b".into()]).unwrap();
        assert_eq!(decode_multi(&multi), vec!["a", "b"]);
        assert_eq!(ValueData::decode(reg_type::QWORD, &5u64.to_le_bytes()), ValueData::Number(5));
        assert_eq!(ValueData::decode(reg_type::BINARY, &[1, 0xff]), ValueData::Hex("01ff".into()));
        assert!(encode(reg_type::DWORD, &["4294967296".into()]).is_err());
        assert_eq!(parse_hex("01,02 ff").unwrap(), vec![1, 2, 0xff]);
    }
}
