//! The read side: key nodes (`nk`), values (`vk`), subkey lists (`li`, `lf`, `lh`, `ri`),
//! value lists, big data (`db`) and security cells (`sk`); path lookup.

use std::collections::HashSet;

use crate::bytes::{le16, le32, le64};
use crate::error::Result;
use crate::hive::{Hive, names};

/// "None" in a cell reference.
pub const NONE: u32 = u32::MAX;
/// Values longer than this are stored in big data segments (format 1.4 and later).
pub const BIG_DATA_SEGMENT: usize = 16344;
/// Key node flag: the name is Latin-1.
pub const KEY_COMP_NAME: u16 = 0x0020;
/// Value flag: the name is Latin-1.
pub const VALUE_COMP_NAME: u16 = 0x0001;
/// Deepest key path followed (Windows allows 512 levels).
pub const MAX_DEPTH: usize = 512;

/// A decoded key node.
#[derive(Clone, Debug)]
pub struct KeyNode {
    pub off: u32,
    pub flags: u16,
    pub timestamp: u64,
    pub parent: u32,
    pub subkey_count: u32,
    pub subkeys: u32,
    pub value_count: u32,
    pub values: u32,
    pub security: u32,
    pub class: u32,
    pub class_len: u16,
    pub name: String,
}

/// A decoded value key.
#[derive(Clone, Debug)]
pub struct ValueKey {
    pub off: u32,
    /// "" for the default value.
    pub name: String,
    /// The data size field (bit 31: data inline in `data`).
    pub size: u32,
    pub data: u32,
    pub ty: u32,
    pub flags: u16,
}

impl ValueKey {
    /// Whether the data sits inside the value key itself (4 bytes or less).
    pub fn inline(&self) -> bool {
        self.size & 0x8000_0000 != 0
    }

    /// Length of the data in bytes.
    pub fn len(&self) -> usize {
        (self.size & 0x7FFF_FFFF) as usize
    }

    /// Whether the value holds no data.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Hive {
    /// The format's minor version.
    pub fn minor(&self) -> u32 {
        self.u32_at(24)
    }

    /// The root key.
    pub fn root(&self) -> Result<KeyNode> {
        self.key(self.u32_at(36))
    }

    /// Decodes the key node at `off`.
    pub fn key(&self, off: u32) -> Result<KeyNode> {
        let c = self.cell(off, "key node")?;
        if c.len() < 76 || &c[..2] != b"nk" {
            return Err(self.corrupt("key node", off, "no \"nk\" signature"));
        }
        let name_len = le16(c, 72) as usize;
        if 76 + name_len > c.len() {
            return Err(self.corrupt("key node", off, format!("name of {name_len} bytes runs past the cell")));
        }
        let flags = le16(c, 2);
        Ok(KeyNode {
            off,
            flags,
            timestamp: le64(c, 4),
            parent: le32(c, 16),
            subkey_count: le32(c, 20),
            subkeys: le32(c, 28),
            value_count: le32(c, 36),
            values: le32(c, 40),
            security: le32(c, 44),
            class: le32(c, 48),
            class_len: le16(c, 74),
            name: names::decode(&c[76..76 + name_len], flags & KEY_COMP_NAME != 0),
        })
    }

    /// Decodes the value key at `off`.
    pub fn value(&self, off: u32) -> Result<ValueKey> {
        let c = self.cell(off, "value key")?;
        if c.len() < 20 || &c[..2] != b"vk" {
            return Err(self.corrupt("value key", off, "no \"vk\" signature"));
        }
        let name_len = le16(c, 2) as usize;
        if 20 + name_len > c.len() {
            return Err(self.corrupt("value key", off, format!("name of {name_len} bytes runs past the cell")));
        }
        let flags = le16(c, 16);
        Ok(ValueKey {
            off,
            name: names::decode(&c[20..20 + name_len], flags & VALUE_COMP_NAME != 0),
            size: le32(c, 4),
            data: le32(c, 8),
            ty: le32(c, 12),
            flags,
        })
    }

    /// The data of a value: inline, in one cell, or in big data segments.
    pub fn value_data(&self, v: &ValueKey) -> Result<Vec<u8>> {
        let len = v.len();
        if v.inline() {
            return Ok(v.data.to_le_bytes()[..len.min(4)].to_vec());
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        let c = self.cell(v.data, "value data")?;
        if self.minor() >= 4 && len > BIG_DATA_SEGMENT && c.len() >= 8 && &c[..2] == b"db" {
            let list = self.cell(le32(c, 4), "big data segment list")?;
            let count = le16(c, 2) as usize;
            if count * 4 > list.len() {
                return Err(self.corrupt(
                    "big data",
                    v.data,
                    format!("{count} segments, but the list holds {}", list.len() / 4),
                ));
            }
            let mut out = Vec::with_capacity(len.min(count * BIG_DATA_SEGMENT));
            for i in 0..count {
                let seg = self.cell(le32(list, 4 * i), "big data segment")?;
                let take = (len - out.len()).min(BIG_DATA_SEGMENT).min(seg.len());
                out.extend_from_slice(&seg[..take]);
            }
            return Ok(out);
        }
        Ok(c[..len.min(c.len())].to_vec())
    }

    /// Offsets of the key nodes a subkey list (and, for `ri`, its leaves) names.
    pub fn subkey_offsets(&self, list: u32) -> Result<Vec<u32>> {
        if list == NONE {
            return Ok(Vec::new());
        }
        let c = self.cell(list, "subkey list")?;
        if c.len() < 4 {
            return Err(self.corrupt("subkey list", list, "shorter than its header"));
        }
        let count = le16(c, 2) as usize;
        let sig = [c[0], c[1]];
        if &sig == b"ri" {
            if 4 + 4 * count > c.len() {
                return Err(self.corrupt("index root", list, format!("{count} entries run past the cell")));
            }
            // Distinct leaves hold distinct cells: the entries cannot outnumber what the hive
            // holds, however often a hostile root repeats a leaf.
            let mut leaves = HashSet::new();
            let mut out = Vec::new();
            for i in 0..count {
                let leaf = le32(c, 4 + 4 * i);
                if !leaves.insert(leaf) {
                    return Err(self.corrupt("index root", list, format!("names the list at {leaf:#x} twice")));
                }
                let l = self.cell(leaf, "subkey list")?;
                if l.len() >= 2 && &l[..2] == b"ri" {
                    return Err(self.corrupt("index root", leaf, "an index root inside an index root"));
                }
                out.extend(self.leaf_offsets(leaf)?);
            }
            return Ok(out);
        }
        self.leaf_offsets(list)
    }

    /// The key node offsets of one `li`, `lf` or `lh` list.
    fn leaf_offsets(&self, list: u32) -> Result<Vec<u32>> {
        let c = self.cell(list, "subkey list")?;
        let count = le16(c, 2) as usize;
        let stride = match &c[..2] {
            b"li" => 4,
            b"lf" | b"lh" => 8,
            other => {
                return Err(self.corrupt(
                    "subkey list",
                    list,
                    format!("signature {:?} is not li, lf, lh or ri", String::from_utf8_lossy(other)),
                ));
            }
        };
        if 4 + stride * count > c.len() {
            return Err(self.corrupt("subkey list", list, format!("{count} entries run past the cell")));
        }
        Ok((0..count).map(|i| le32(c, 4 + stride * i)).collect())
    }

    /// The subkeys of `key`.
    pub fn subkeys(&self, key: &KeyNode) -> Result<Vec<KeyNode>> {
        self.subkey_offsets(key.subkeys)?.into_iter().map(|o| self.key(o)).collect()
    }

    /// Offsets of `key`'s value keys.
    pub fn value_offsets(&self, key: &KeyNode) -> Result<Vec<u32>> {
        if key.value_count == 0 || key.values == NONE {
            return Ok(Vec::new());
        }
        let c = self.cell(key.values, "value list")?;
        let count = key.value_count as usize;
        if count * 4 > c.len() {
            return Err(self.corrupt(
                "value list",
                key.values,
                format!("{count} values, but the list holds {}", c.len() / 4),
            ));
        }
        Ok((0..count).map(|i| le32(c, 4 * i)).collect())
    }

    /// The values of `key`.
    pub fn values(&self, key: &KeyNode) -> Result<Vec<ValueKey>> {
        self.value_offsets(key)?.into_iter().map(|o| self.value(o)).collect()
    }

    /// The value of `key` named `name` (case-insensitively; "" is the default value).
    pub fn find_value(&self, key: &KeyNode, name: &str) -> Result<Option<ValueKey>> {
        Ok(self.values(key)?.into_iter().find(|v| names::eq(&v.name, name)))
    }

    /// The subkey of `key` named `name`, case-insensitively.
    pub fn find_subkey(&self, key: &KeyNode, name: &str) -> Result<Option<KeyNode>> {
        for off in self.subkey_offsets(key.subkeys)? {
            let k = self.key(off)?;
            if names::eq(&k.name, name) {
                return Ok(Some(k));
            }
        }
        Ok(None)
    }

    /// The key at `path` (`\`- or `/`-separated, relative to the root), if it exists.
    pub fn find(&self, path: &str) -> Result<Option<KeyNode>> {
        let mut key = self.root()?;
        for part in split_path(path) {
            match self.find_subkey(&key, part)? {
                Some(k) => key = k,
                None => return Ok(None),
            }
        }
        Ok(Some(key))
    }

    /// The class name of `key`.
    pub fn class_name(&self, key: &KeyNode) -> Result<Option<String>> {
        if key.class == NONE || key.class_len == 0 {
            return Ok(None);
        }
        let c = self.cell(key.class, "class name")?;
        Ok(Some(names::decode(&c[..(key.class_len as usize).min(c.len())], false)))
    }

    /// Visits every key under `key` (itself first), depth first, with its path relative to
    /// `key`; stops on loops and at `MAX_DEPTH`.
    pub fn walk(&self, key: &KeyNode, visit: &mut dyn FnMut(&str, &KeyNode) -> Result<()>) -> Result<()> {
        let mut seen = HashSet::new();
        self.walk_inner(key, String::new(), 0, &mut seen, visit)
    }

    fn walk_inner(
        &self,
        key: &KeyNode,
        path: String,
        depth: usize,
        seen: &mut HashSet<u32>,
        visit: &mut dyn FnMut(&str, &KeyNode) -> Result<()>,
    ) -> Result<()> {
        if !seen.insert(key.off) {
            return Err(self.corrupt("subkey list", key.off, "a key is its own descendant (a loop)"));
        }
        if depth > MAX_DEPTH {
            return Err(self.corrupt("key node", key.off, format!("keys nested deeper than {MAX_DEPTH}")));
        }
        visit(&path, key)?;
        for sub in self.subkeys(key)? {
            let p = if path.is_empty() { sub.name.clone() } else { format!("{path}\\{}", sub.name) };
            self.walk_inner(&sub, p, depth + 1, seen, visit)?;
        }
        Ok(())
    }
}

/// The components of a key path. Only `\\` separates: `/` is legal in key names
/// (`MIME\\Database\\Content Type\\text/html`).
pub fn split_path(path: &str) -> impl Iterator<Item = &str> {
    path.split('\\').filter(|p| !p.is_empty())
}
