//! The write side: setting values (inline, one cell, or big data), creating keys (sorted
//! subkey lists, shared security), deleting values and keys (every cell freed), and sealing
//! the base block.

use crate::bytes::{le16, le32};
use crate::error::{Error, Result};
use crate::hive::base::{filetime_now, seal, unix_to_filetime};
use crate::hive::keys::{BIG_DATA_SEGMENT, KEY_COMP_NAME, KeyNode, NONE, VALUE_COMP_NAME, split_path};
use crate::hive::{BINS_START, Hive, names};

/// Entries per subkey list leaf; a longer list becomes an `ri` of leaves this size.
const LEAF_MAX: usize = 512;

/// Field offsets inside a key node's data.
mod nk {
    pub const TIMESTAMP: usize = 4;
    pub const SUBKEY_COUNT: usize = 20;
    pub const SUBKEYS: usize = 28;
    pub const VALUE_COUNT: usize = 36;
    pub const VALUES: usize = 40;
    pub const MAX_SUBKEY_NAME: usize = 52;
    pub const MAX_VALUE_NAME: usize = 60;
    pub const MAX_VALUE_DATA: usize = 64;
}

impl Hive {
    /// Absolute offset of field `at` of the cell at `off`.
    fn field(off: u32, at: usize) -> usize {
        BINS_START + off as usize + 4 + at
    }

    fn set_field(&mut self, off: u32, at: usize, v: u32) {
        self.put_u32(Self::field(off, at), v);
    }

    fn touch(&mut self, key: u32) {
        let abs = Self::field(key, nk::TIMESTAMP);
        let now = self.now();
        self.data[abs..abs + 8].copy_from_slice(&now.to_le_bytes());
    }

    /// Raises a "largest ..." field of a key node to at least `v` (keeping the flag bits some
    /// Windows versions keep above bit 15 of the subkey name field).
    fn raise_max(&mut self, key: u32, at: usize, v: u32) {
        let abs = Self::field(key, at);
        let old = self.u32_at(abs);
        let (flags, len) = if at == nk::MAX_SUBKEY_NAME { (old & 0xFFFF_0000, old & 0xFFFF) } else { (0, old) };
        if v > len {
            self.put_u32(abs, flags | v);
        }
    }

    /// Writes `bytes` into a new cell.
    fn alloc_with(&mut self, bytes: &[u8]) -> Result<u32> {
        let off = self.alloc(bytes.len())?;
        self.cell_mut(off, "new cell")?[..bytes.len()].copy_from_slice(bytes);
        Ok(off)
    }

    /// Stores value data; returns the (size field, data field) of the value key.
    fn store_data(&mut self, data: &[u8]) -> Result<(u32, u32)> {
        if data.len() > 0x7FFF_FFFF {
            return Err(Error::Usage(format!("{} bytes of data is more than a value can hold", data.len())));
        }
        if data.len() <= 4 {
            let mut inline = [0u8; 4];
            inline[..data.len()].copy_from_slice(data);
            return Ok((data.len() as u32 | 0x8000_0000, u32::from_le_bytes(inline)));
        }
        if self.minor() >= 4 && data.len() > BIG_DATA_SEGMENT {
            let segments =
                data.chunks(BIG_DATA_SEGMENT).map(|chunk| self.alloc_with(chunk)).collect::<Result<Vec<u32>>>()?;
            let list: Vec<u8> = segments.iter().flat_map(|s| s.to_le_bytes()).collect();
            let list = self.alloc_with(&list)?;
            let mut db = Vec::with_capacity(8);
            db.extend_from_slice(b"db");
            db.extend_from_slice(&(segments.len() as u16).to_le_bytes());
            db.extend_from_slice(&list.to_le_bytes());
            return Ok((data.len() as u32, self.alloc_with(&db)?));
        }
        Ok((data.len() as u32, self.alloc_with(data)?))
    }

    /// Frees the data cells of a value key (nothing for inline data).
    fn free_data(&mut self, size: u32, data: u32) -> Result<()> {
        let len = (size & 0x7FFF_FFFF) as usize;
        if size & 0x8000_0000 != 0 || len == 0 || data == NONE {
            return Ok(());
        }
        let c = self.cell(data, "value data")?.to_vec();
        if self.minor() >= 4 && len > BIG_DATA_SEGMENT && c.len() >= 8 && &c[..2] == b"db" {
            let list_off = le32(&c, 4);
            let count = le16(&c, 2) as usize;
            let list = self.cell(list_off, "big data segment list")?.to_vec();
            for i in 0..count.min(list.len() / 4) {
                self.free_cell(le32(&list, 4 * i))?;
            }
            self.free_cell(list_off)?;
        }
        self.free_cell(data)
    }

    /// Sets value `name` of the key at `path` (created with its missing parents).
    pub fn set_value(&mut self, path: &str, name: &str, ty: u32, data: &[u8]) -> Result<()> {
        self.require_editable()?;
        let key = self.create_key(path)?;
        let (size, cell) = self.store_data(data)?;
        match self.find_value(&key, name)? {
            Some(v) => {
                self.free_data(v.size, v.data)?;
                self.set_field(v.off, 4, size);
                self.set_field(v.off, 8, cell);
                self.set_field(v.off, 12, ty);
            }
            None => {
                let (encoded, compressed) = names::encode(name);
                let mut vk = vec![0u8; 20 + encoded.len()];
                vk[..2].copy_from_slice(b"vk");
                vk[2..4].copy_from_slice(&(encoded.len() as u16).to_le_bytes());
                vk[4..8].copy_from_slice(&size.to_le_bytes());
                vk[8..12].copy_from_slice(&cell.to_le_bytes());
                vk[12..16].copy_from_slice(&ty.to_le_bytes());
                let flags = if compressed && !name.is_empty() { VALUE_COMP_NAME } else { 0 };
                vk[16..18].copy_from_slice(&flags.to_le_bytes());
                vk[20..].copy_from_slice(&encoded);
                let vk = self.alloc_with(&vk)?;
                let mut list: Vec<u32> = self.value_offsets(&key)?;
                list.push(vk);
                self.replace_value_list(&key, &list)?;
                self.raise_max(key.off, nk::MAX_VALUE_NAME, names::utf16_len(name));
            }
        }
        self.raise_max(key.off, nk::MAX_VALUE_DATA, data.len() as u32);
        self.touch(key.off);
        Ok(())
    }

    /// Writes `list` as `key`'s value list (a new cell; the old one is freed).
    fn replace_value_list(&mut self, key: &KeyNode, list: &[u32]) -> Result<()> {
        let old = (key.value_count > 0 && key.values != NONE).then_some(key.values);
        let new = if list.is_empty() {
            NONE
        } else {
            let bytes: Vec<u8> = list.iter().flat_map(|o| o.to_le_bytes()).collect();
            self.alloc_with(&bytes)?
        };
        if let Some(old) = old {
            self.free_cell(old)?;
        }
        self.set_field(key.off, nk::VALUES, new);
        self.set_field(key.off, nk::VALUE_COUNT, list.len() as u32);
        Ok(())
    }

    /// Deletes value `name` of the key at `path`; returns whether it existed.
    pub fn delete_value(&mut self, path: &str, name: &str) -> Result<bool> {
        self.require_editable()?;
        let Some(key) = self.find(path)? else { return Ok(false) };
        let Some(v) = self.find_value(&key, name)? else { return Ok(false) };
        let list: Vec<u32> = self.value_offsets(&key)?.into_iter().filter(|&o| o != v.off).collect();
        self.replace_value_list(&key, &list)?;
        self.free_data(v.size, v.data)?;
        self.free_cell(v.off)?;
        self.touch(key.off);
        Ok(true)
    }

    /// The key at `path`, created (with its missing parents) if needed.
    pub fn create_key(&mut self, path: &str) -> Result<KeyNode> {
        self.require_editable()?;
        let mut key = self.root()?;
        for part in split_path(path) {
            key = match self.find_subkey(&key, part)? {
                Some(k) => k,
                None => self.add_subkey(&key, part)?,
            };
        }
        Ok(key)
    }

    /// Creates subkey `name` of `parent`, sharing its security descriptor.
    fn add_subkey(&mut self, parent: &KeyNode, name: &str) -> Result<KeyNode> {
        if name.len() > 255 {
            return Err(Error::Usage(format!("key name {name:?} is longer than 255 characters")));
        }
        let (encoded, compressed) = names::encode(name);
        let mut nk = vec![0u8; 76 + encoded.len()];
        nk[..2].copy_from_slice(b"nk");
        nk[2..4].copy_from_slice(&(if compressed { KEY_COMP_NAME } else { 0 }).to_le_bytes());
        nk[4..12].copy_from_slice(&self.now().to_le_bytes());
        nk[16..20].copy_from_slice(&parent.off.to_le_bytes());
        for at in [28, 32, 40, 48] {
            nk[at..at + 4].copy_from_slice(&NONE.to_le_bytes());
        }
        nk[44..48].copy_from_slice(&parent.security.to_le_bytes());
        nk[72..74].copy_from_slice(&(encoded.len() as u16).to_le_bytes());
        nk[76..].copy_from_slice(&encoded);
        let off = self.alloc_with(&nk)?;
        if parent.security != NONE {
            let refs = self.cell(parent.security, "security")?;
            if refs.len() < 20 || &refs[..2] != b"sk" {
                return Err(self.corrupt("security", parent.security, "no \"sk\" signature"));
            }
            let abs = Self::field(parent.security, 12);
            let count = self.u32_at(abs);
            self.put_u32(abs, count.saturating_add(1));
        }
        let mut children = self.subkey_offsets(parent.subkeys)?;
        let named: Vec<String> = children.iter().map(|&o| self.key(o).map(|k| k.name)).collect::<Result<_>>()?;
        let at = named.partition_point(|n| names::compare(n, name).is_lt());
        children.insert(at, off);
        self.replace_subkey_list(parent, &children)?;
        self.raise_max(parent.off, nk::MAX_SUBKEY_NAME, names::utf16_len(name));
        self.touch(parent.off);
        self.key(off)
    }

    /// The leaf list kind new lists of this hive use: `lh` from format 1.5, else `lf`.
    fn leaf_kind(&self, existing: u32) -> [u8; 2] {
        let sig = |off: u32| self.cell(off, "subkey list").ok().and_then(|c| c.get(..2).map(|s| [s[0], s[1]]));
        match sig(existing) {
            Some(s) if &s == b"ri" => {
                let first = self.cell(existing, "subkey list").ok().filter(|c| c.len() >= 8).map(|c| le32(c, 4));
                first.and_then(sig).unwrap_or(if self.minor() >= 5 { *b"lh" } else { *b"lf" })
            }
            Some(s) if matches!(&s, b"li" | b"lf" | b"lh") => s,
            _ if self.minor() >= 5 => *b"lh",
            _ => *b"lf",
        }
    }

    /// Writes a leaf list of `kind` naming `children` (in order).
    fn write_leaf(&mut self, kind: [u8; 2], children: &[u32]) -> Result<u32> {
        let stride = if &kind == b"li" { 4 } else { 8 };
        let mut bytes = vec![0u8; 4 + stride * children.len()];
        bytes[..2].copy_from_slice(&kind);
        bytes[2..4].copy_from_slice(&(children.len() as u16).to_le_bytes());
        for (i, &c) in children.iter().enumerate() {
            let at = 4 + stride * i;
            bytes[at..at + 4].copy_from_slice(&c.to_le_bytes());
            if stride == 8 {
                let name = self.key(c)?.name;
                let extra = if &kind == b"lh" { names::lh_hash(&name).to_le_bytes() } else { names::lf_hint(&name) };
                bytes[at + 4..at + 8].copy_from_slice(&extra);
            }
        }
        self.alloc_with(&bytes)
    }

    /// Frees a subkey list and, for an `ri`, its leaves.
    fn free_subkey_list(&mut self, list: u32) -> Result<()> {
        if list == NONE {
            return Ok(());
        }
        let c = self.cell(list, "subkey list")?.to_vec();
        if &c[..2] == b"ri" {
            let count = le16(&c, 2) as usize;
            for i in 0..count.min((c.len() - 4) / 4) {
                self.free_cell(le32(&c, 4 + 4 * i))?;
            }
        }
        self.free_cell(list)
    }

    /// Rewrites `parent`'s subkey list as `children` (sorted), keeping the list kind; long
    /// lists become an `ri` of leaves.
    fn replace_subkey_list(&mut self, parent: &KeyNode, children: &[u32]) -> Result<()> {
        let kind = self.leaf_kind(parent.subkeys);
        let new = if children.is_empty() {
            NONE
        } else if children.len() <= LEAF_MAX {
            self.write_leaf(kind, children)?
        } else {
            let leaves =
                children.chunks(LEAF_MAX).map(|chunk| self.write_leaf(kind, chunk)).collect::<Result<Vec<u32>>>()?;
            let mut ri = vec![0u8; 4 + 4 * leaves.len()];
            ri[..2].copy_from_slice(b"ri");
            ri[2..4].copy_from_slice(&(leaves.len() as u16).to_le_bytes());
            for (i, l) in leaves.iter().enumerate() {
                ri[4 + 4 * i..8 + 4 * i].copy_from_slice(&l.to_le_bytes());
            }
            self.alloc_with(&ri)?
        };
        self.free_subkey_list(parent.subkeys)?;
        self.set_field(parent.off, nk::SUBKEYS, new);
        self.set_field(parent.off, nk::SUBKEY_COUNT, children.len() as u32);
        Ok(())
    }

    /// Deletes the key at `path` and everything under it; returns whether it existed.
    pub fn delete_key(&mut self, path: &str) -> Result<bool> {
        self.require_editable()?;
        if split_path(path).next().is_none() {
            return Err(Error::Usage("the root key cannot be deleted".into()));
        }
        let Some(key) = self.find(path)? else { return Ok(false) };
        let parent = self.key(key.parent)?;
        let children: Vec<u32> = self.subkey_offsets(parent.subkeys)?.into_iter().filter(|&o| o != key.off).collect();
        self.replace_subkey_list(&parent, &children)?;
        self.touch(parent.off);
        self.free_tree(key.off, 0)?;
        Ok(true)
    }

    /// Frees a key, its values, its class name, its subkeys (recursively) and its share of its
    /// security descriptor.
    fn free_tree(&mut self, off: u32, depth: usize) -> Result<()> {
        if depth > crate::hive::keys::MAX_DEPTH {
            return Err(self.corrupt("key node", off, "keys nested too deep (a loop?)"));
        }
        let key = self.key(off)?;
        for child in self.subkey_offsets(key.subkeys)? {
            self.free_tree(child, depth + 1)?;
        }
        self.free_subkey_list(key.subkeys)?;
        for v in self.values(&key)? {
            self.free_data(v.size, v.data)?;
            self.free_cell(v.off)?;
        }
        if key.value_count > 0 && key.values != NONE {
            self.free_cell(key.values)?;
        }
        if key.class != NONE && key.class_len > 0 {
            self.free_cell(key.class)?;
        }
        self.release_security(key.security)?;
        self.free_cell(off)
    }

    /// Drops one reference to a security cell, unlinking and freeing it at zero.
    fn release_security(&mut self, sk: u32) -> Result<()> {
        if sk == NONE {
            return Ok(());
        }
        let c = self.cell(sk, "security")?;
        if c.len() < 20 || &c[..2] != b"sk" {
            return Err(self.corrupt("security", sk, "no \"sk\" signature"));
        }
        let (flink, blink, refs) =
            (self.u32_at(Self::field(sk, 4)), self.u32_at(Self::field(sk, 8)), self.u32_at(Self::field(sk, 12)));
        if refs > 1 {
            self.put_u32(Self::field(sk, 12), refs - 1);
            return Ok(());
        }
        if flink != sk {
            self.cell(flink, "security")?;
            self.cell(blink, "security")?;
            self.set_field(blink, 4, flink);
            self.set_field(flink, 8, blink);
        }
        self.free_cell(sk)
    }

    /// Makes the edits durable in the bytes: sequence numbers, timestamp, size, checksum.
    pub fn seal(&mut self) {
        let (size, now) = (self.bins_size(), self.now());
        seal(&mut self.data, size, now);
    }

    /// Stamps every later edit with `unix_seconds` (seconds since 1970) instead of the
    /// current time, so a reproducible output gets reproducible key timestamps.
    pub fn set_clock(&mut self, unix_seconds: u64) {
        self.clock = Some(unix_to_filetime(unix_seconds));
    }

    /// The time edits stamp, as a FILETIME.
    fn now(&self) -> u64 {
        self.clock.unwrap_or_else(filetime_now)
    }

    /// The reference count of the security cell at `sk`.
    pub fn security_refs(&self, sk: u32) -> Result<u32> {
        self.cell(sk, "security")?;
        Ok(self.u32_at(Self::field(sk, 12)))
    }
}
