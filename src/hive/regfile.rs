//! The .reg text format of regedit: export ("Windows Registry Editor Version 5.00", UTF-16LE
//! with a BOM) and import (that format and REGEDIT4, `hex(N):` forms, deletions with `-`).

use std::fmt::Write;

use crate::error::{Error, Result};
use crate::hive::Hive;
use crate::hive::keys::KeyNode;
use crate::hive::value::{decode_string, reg_type};

/// One change a .reg file asks for, in file order. Key paths are as written (with the root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegOp {
    /// `[KEY]`: the key exists (created if missing).
    Key(String),
    /// `[-KEY]`: the key and everything under it go.
    DeleteKey(String),
    /// `"name"=...` under the last `[KEY]` ("" for `@`).
    SetValue {
        /// The key (created if missing).
        key: String,
        /// The value's name ("" for the default value).
        name: String,
        /// Its registry type (`REG_SZ` = 1, `REG_DWORD` = 4...).
        ty: u32,
        /// Its data, encoded as the type stores it.
        data: Vec<u8>,
    },
    /// `"name"=-`.
    DeleteValue {
        /// The key.
        key: String,
        /// The value's name ("" for the default value).
        name: String,
    },
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Whether `data` is text regedit writes as `"..."`: UTF-16 with one terminating NUL.
fn plain_string(data: &[u8]) -> Option<String> {
    if data.len() < 2 || !data.len().is_multiple_of(2) || data[data.len() - 2..] != [0, 0] {
        return None;
    }
    let text = decode_string(data);
    (text.encode_utf16().count() * 2 + 2 == data.len()).then_some(text)
}

/// `hex:` or `hex(N):` bytes, wrapped at 80 columns like regedit.
fn hex_value(prefix: &str, data: &[u8]) -> String {
    let mut out = prefix.to_string();
    let mut column = out.len();
    for (i, b) in data.iter().enumerate() {
        let item = if i + 1 < data.len() { format!("{b:02x},") } else { format!("{b:02x}") };
        if column + item.len() > 77 && i + 1 < data.len() {
            out.push_str("\\\r\n  ");
            column = 2;
        }
        out.push_str(&item);
        column += item.len();
    }
    out
}

/// One `"name"=data` line.
fn value_line(name: &str, ty: u32, data: &[u8]) -> String {
    let lhs = if name.is_empty() { "@".to_string() } else { quote(name) };
    let rhs = match ty {
        reg_type::SZ => match plain_string(data) {
            Some(s) => quote(&s),
            None => hex_value("hex(1):", data),
        },
        reg_type::DWORD if data.len() == 4 => {
            format!("dword:{:08x}", u32::from_le_bytes([data[0], data[1], data[2], data[3]]))
        }
        reg_type::BINARY => hex_value("hex:", data),
        other => hex_value(&format!("hex({other:x}):"), data),
    };
    format!("{lhs}={rhs}")
}

/// Exports the key at `path` and everything under it; keys are named `prefix\path`.
pub fn export(hive: &Hive, key: &KeyNode, prefix: &str) -> Result<String> {
    let mut out = String::from("Windows Registry Editor Version 5.00\r\n\r\n");
    hive.walk(key, &mut |rel, k| {
        let name = if rel.is_empty() { prefix.to_string() } else { format!("{prefix}\\{rel}") };
        let _ = write!(out, "[{name}]\r\n");
        for v in hive.values(k)? {
            let data = hive.value_data(&v)?;
            let _ = write!(out, "{}\r\n", value_line(&v.name, v.ty, &data));
        }
        out.push_str("\r\n");
        Ok(())
    })?;
    Ok(out)
}

/// The bytes of an export: UTF-16LE with a BOM, as regedit writes.
pub fn to_utf16_file(text: &str) -> Vec<u8> {
    let mut out = vec![0xFF, 0xFE];
    out.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    out
}

/// Decodes a .reg file: UTF-16LE with a BOM, UTF-8, or else Latin-1 (REGEDIT4).
fn decode_file(bytes: &[u8]) -> String {
    if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE]) {
        let units = rest.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
        return char::decode_utf16(units).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)).collect();
    }
    let bytes = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => bytes.iter().map(|&b| b as char).collect(),
    }
}

/// Reads a quoted string starting at `s[0] == '"'`; returns it and the rest after the quote.
fn unquote(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?.1),
            '"' => return Some((out, &s[i + 1..])),
            c => out.push(c),
        }
    }
    None
}

/// Parses the right-hand side of a value line.
fn parse_data(rhs: &str, ansi: bool) -> Result<Option<(u32, Vec<u8>)>> {
    let rhs = rhs.trim();
    if rhs == "-" {
        return Ok(None);
    }
    if rhs.starts_with('"') {
        let (text, _) = unquote(rhs).ok_or_else(|| Error::Usage(format!("unterminated string in {rhs:?}")))?;
        return Ok(Some((reg_type::SZ, crate::hive::value::utf16z(&text))));
    }
    if let Some(hex) = rhs.strip_prefix("dword:") {
        let v =
            u32::from_str_radix(hex.trim(), 16).map_err(|_| Error::Usage(format!("{rhs:?} is not dword:XXXXXXXX")))?;
        return Ok(Some((reg_type::DWORD, v.to_le_bytes().to_vec())));
    }
    let (ty, bytes) = if let Some(rest) = rhs.strip_prefix("hex:") {
        (reg_type::BINARY, rest)
    } else if let Some(rest) = rhs.strip_prefix("hex(") {
        let (n, rest) = rest.split_once("):").ok_or_else(|| Error::Usage(format!("{rhs:?} is not hex(N):...")))?;
        (u32::from_str_radix(n, 16).map_err(|_| Error::Usage(format!("bad type in {rhs:?}")))?, rest)
    } else {
        return Err(Error::Usage(format!("cannot read value data {rhs:?}")));
    };
    let mut data = crate::hive::value::parse_hex(bytes)?;
    // REGEDIT4 files hold string types as ANSI bytes.
    if ansi && matches!(ty, reg_type::EXPAND_SZ | reg_type::MULTI_SZ) {
        data = data.iter().flat_map(|&b| [b, 0]).collect();
    }
    Ok(Some((ty, data)))
}

/// Parses a .reg file into the changes it asks for.
pub fn parse(bytes: &[u8]) -> Result<Vec<RegOp>> {
    let text = decode_file(bytes);
    let mut lines = text.lines();
    let header = lines.by_ref().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    let ansi = match header {
        "Windows Registry Editor Version 5.00" => false,
        "REGEDIT4" => true,
        other => return Err(Error::Usage(format!("not a .reg file: first line is {other:?}"))),
    };
    let mut logical = Vec::new();
    let mut pending = String::new();
    for line in lines {
        let line = line.trim_end();
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont.trim_start());
            continue;
        }
        pending.push_str(line.trim_start());
        logical.push(std::mem::take(&mut pending));
    }
    logical.push(pending);
    let mut ops = Vec::new();
    let mut key: Option<String> = None;
    for line in logical.iter().map(|l| l.trim()).filter(|l| !l.is_empty() && !l.starts_with(';')) {
        if let Some(inner) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            match inner.strip_prefix('-') {
                Some(k) => {
                    ops.push(RegOp::DeleteKey(k.to_string()));
                    key = None;
                }
                None => {
                    ops.push(RegOp::Key(inner.to_string()));
                    key = Some(inner.to_string());
                }
            }
            continue;
        }
        let current = key.clone().ok_or_else(|| Error::Usage(format!("value outside a [key]: {line:?}")))?;
        let (name, rest) = if let Some(rest) = line.strip_prefix('@') {
            (String::new(), rest)
        } else if line.starts_with('"') {
            unquote(line).ok_or_else(|| Error::Usage(format!("unterminated name in {line:?}")))?
        } else {
            return Err(Error::Usage(format!("cannot read line {line:?}")));
        };
        let rhs = rest.trim_start().strip_prefix('=').ok_or_else(|| Error::Usage(format!("no '=' in {line:?}")))?;
        match parse_data(rhs, ansi)? {
            Some((ty, data)) => ops.push(RegOp::SetValue { key: current, name, ty, data }),
            None => ops.push(RegOp::DeleteValue { key: current, name }),
        }
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_formats_and_every_form() {
        let text = "Windows Registry Editor Version 5.00\r\n\r\n[HKEY_LOCAL_MACHINE\\SOFTWARE\\Test]\r\n\
                    @=\"default \\\"q\\\"\"\r\n\"D\"=dword:0000002a\r\n\"B\"=hex:01,02,\\\r\n  03\r\n\
                    \"M\"=hex(7):61,00,00,00,00,00\r\n\"Gone\"=-\r\n\r\n[-HKEY_LOCAL_MACHINE\\SOFTWARE\\Old]\r\n";
        let ops = parse(&to_utf16_file(text)).unwrap();
        let key = "HKEY_LOCAL_MACHINE\\SOFTWARE\\Test".to_string();
        assert_eq!(ops[0], RegOp::Key(key.clone()));
        assert_eq!(
            ops[1],
            RegOp::SetValue {
                key: key.clone(),
                name: String::new(),
                ty: 1,
                data: crate::hive::value::utf16z("default \"q\"")
            }
        );
        assert_eq!(ops[2], RegOp::SetValue { key: key.clone(), name: "D".into(), ty: 4, data: vec![42, 0, 0, 0] });
        assert_eq!(ops[3], RegOp::SetValue { key: key.clone(), name: "B".into(), ty: 3, data: vec![1, 2, 3] });
        assert_eq!(
            ops[4],
            RegOp::SetValue { key: key.clone(), name: "M".into(), ty: 7, data: vec![0x61, 0, 0, 0, 0, 0] }
        );
        assert_eq!(ops[5], RegOp::DeleteValue { key, name: "Gone".into() });
        assert_eq!(ops[6], RegOp::DeleteKey("HKEY_LOCAL_MACHINE\\SOFTWARE\\Old".into()));
        let ansi = b"REGEDIT4\r\n\r\n[HKEY_CURRENT_USER\\X]\r\n\"S\"=\"caf\xe9\"\r\n\"E\"=hex(2):41,00\r\n";
        let ops = parse(ansi).unwrap();
        assert_eq!(
            ops[1],
            RegOp::SetValue {
                key: "HKEY_CURRENT_USER\\X".into(),
                name: "S".into(),
                ty: 1,
                data: crate::hive::value::utf16z("café")
            }
        );
        assert_eq!(
            ops[2],
            RegOp::SetValue { key: "HKEY_CURRENT_USER\\X".into(), name: "E".into(), ty: 2, data: vec![0x41, 0, 0, 0] }
        );
    }

    #[test]
    fn value_lines_match_regedit() {
        assert_eq!(value_line("a", reg_type::SZ, &crate::hive::value::utf16z("x\\y")), "\"a\"=\"x\\\\y\"");
        assert_eq!(value_line("", reg_type::DWORD, &[1, 0, 0, 0]), "@=dword:00000001");
        assert_eq!(value_line("q", 11, &[1, 0, 0, 0, 0, 0, 0, 0]), "\"q\"=hex(b):01,00,00,00,00,00,00,00");
        assert_eq!(value_line("s", reg_type::SZ, &[0x41, 0]), "\"s\"=hex(1):41,00", "no terminator: exact bytes");
        assert_eq!(value_line("odd", reg_type::SZ, &[0x41]), "\"odd\"=hex(1):41");
    }
}
