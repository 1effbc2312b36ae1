//! Hive bins and cells: reading a cell by offset (checked against its bin), and the allocator
//! (best fit among free cells, split, coalesce with free neighbours, a new bin when the hive
//! must grow).

use crate::error::Result;
use crate::hive::{BINS_START, Hive};

/// Size of a hive bin header.
const BIN_HEADER: u32 = 32;

fn round8(n: u32) -> u32 {
    n.div_ceil(8) * 8
}

impl Hive {
    fn i32_at(&self, abs: usize) -> i32 {
        i32::from_le_bytes([self.data[abs], self.data[abs + 1], self.data[abs + 2], self.data[abs + 3]])
    }

    pub(crate) fn u32_at(&self, abs: usize) -> u32 {
        u32::from_le_bytes([self.data[abs], self.data[abs + 1], self.data[abs + 2], self.data[abs + 3]])
    }

    pub(crate) fn put_u32(&mut self, abs: usize, v: u32) {
        self.data[abs..abs + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn put_i32(&mut self, abs: usize, v: i32) {
        self.data[abs..abs + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Walks every hive bin and cell; a bad bin header is an error, a bad cell makes the hive
    /// read-only (its keys can still be read by offset).
    pub(crate) fn scan_bins(&mut self) -> Result<()> {
        let total = (self.data.len() - BINS_START) as u32;
        let mut at = 0u32;
        while at < total {
            let abs = BINS_START + at as usize;
            if at + BIN_HEADER > total || &self.data[abs..abs + 4] != b"hbin" {
                return Err(self.corrupt("hive bin", at, "no \"hbin\" signature"));
            }
            let (offset, size) = (self.u32_at(abs + 4), self.u32_at(abs + 8));
            if offset != at || size < 4096 || size % 4096 != 0 || size > total - at {
                return Err(self.corrupt(
                    "hive bin",
                    at,
                    format!("offset field {offset:#x} or size {size} is inconsistent"),
                ));
            }
            self.bins.push((at, size));
            if self.read_only.is_none()
                && let Err(why) = self.scan_cells(at, size)
            {
                self.read_only = Some(why);
            }
            at += size;
        }
        Ok(())
    }

    fn scan_cells(&mut self, bin: u32, size: u32) -> std::result::Result<(), String> {
        let mut at = bin + BIN_HEADER;
        while at < bin + size {
            let cell = self.i32_at(BINS_START + at as usize);
            let len = cell.unsigned_abs();
            if len < 8 || !len.is_multiple_of(8) || len > bin + size - at {
                return Err(format!("cell at {:#x} has size {cell}", BINS_START + at as usize));
            }
            if cell > 0 {
                self.free.insert(at, len);
            }
            at += len;
        }
        Ok(())
    }

    /// The hive bin holding cell offset `off`.
    pub(crate) fn bin_of(&self, off: u32) -> Option<(u32, u32)> {
        let i = self.bins.partition_point(|&(start, _)| start <= off);
        self.bins.get(i.checked_sub(1)?).copied().filter(|&(start, size)| off < start + size)
    }

    /// The data of the allocated cell at `off` (after its size field).
    pub fn cell(&self, off: u32, what: &str) -> Result<&[u8]> {
        let (start, size) = self
            .bin_of(off)
            .filter(|&(start, _)| off >= start + BIN_HEADER && off.is_multiple_of(8))
            .ok_or_else(|| self.corrupt(what, off, "offset lies outside every hive bin"))?;
        let abs = BINS_START + off as usize;
        let cell = self.i32_at(abs);
        if cell >= 0 {
            return Err(self.corrupt(what, off, format!("the cell is not allocated (size {cell})")));
        }
        let len = cell.unsigned_abs();
        if len < 8 || off + len > start + size {
            return Err(self.corrupt(what, off, format!("cell size {len} reaches past its hive bin")));
        }
        Ok(&self.data[abs + 4..abs + len as usize])
    }

    /// Mutable data of an allocated cell (checked like [`Self::cell`]).
    pub(crate) fn cell_mut(&mut self, off: u32, what: &str) -> Result<&mut [u8]> {
        let len = self.cell(off, what)?.len();
        let abs = BINS_START + off as usize + 4;
        Ok(&mut self.data[abs..abs + len])
    }

    /// Fails unless the hive may be edited.
    pub(crate) fn require_editable(&self) -> Result<()> {
        match &self.read_only {
            Some(why) => Err(crate::Error::unsupported(&self.name, format!("the hive cannot be edited: {why}"))),
            None => Ok(()),
        }
    }

    /// Allocates a cell for `len` bytes of data (zeroed); returns its offset.
    pub fn alloc(&mut self, len: usize) -> Result<u32> {
        self.require_editable()?;
        let need = round8(
            u32::try_from(len)
                .ok()
                .and_then(|l| l.checked_add(4))
                .ok_or_else(|| crate::Error::unsupported(&self.name, format!("a cell of {len} bytes is too large")))?,
        );
        let best = self
            .free
            .iter()
            .map(|(&off, &size)| (off, size))
            .filter(|&(_, size)| size >= need)
            .min_by_key(|&(off, size)| (size, off));
        let (off, size) = match best {
            Some(found) => found,
            None => self.grow(need)?,
        };
        self.free.remove(&off);
        if size - need >= 8 {
            let rest = off + need;
            self.put_i32(BINS_START + rest as usize, (size - need) as i32);
            self.free.insert(rest, size - need);
            self.put_i32(BINS_START + off as usize, -(need as i32));
        } else {
            self.put_i32(BINS_START + off as usize, -(size as i32));
        }
        let len_now = self.i32_at(BINS_START + off as usize).unsigned_abs() as usize;
        let abs = BINS_START + off as usize;
        self.data[abs + 4..abs + len_now].fill(0);
        Ok(off)
    }

    /// Appends a hive bin with one free cell of at least `need` bytes.
    fn grow(&mut self, need: u32) -> Result<(u32, u32)> {
        let size = (need + BIN_HEADER).div_ceil(4096) * 4096;
        let at = (self.data.len() - BINS_START) as u32;
        let mut bin = vec![0u8; size as usize];
        bin[..4].copy_from_slice(b"hbin");
        bin[4..8].copy_from_slice(&at.to_le_bytes());
        bin[8..12].copy_from_slice(&size.to_le_bytes());
        bin[BIN_HEADER as usize..BIN_HEADER as usize + 4].copy_from_slice(&((size - BIN_HEADER) as i32).to_le_bytes());
        self.data.extend_from_slice(&bin);
        self.bins.push((at, size));
        let cell = at + BIN_HEADER;
        self.free.insert(cell, size - BIN_HEADER);
        Ok((cell, size - BIN_HEADER))
    }

    /// Frees the cell at `off`, merging it with free neighbours in the same bin.
    pub fn free_cell(&mut self, off: u32) -> Result<()> {
        self.require_editable()?;
        let len = self.cell(off, "freed cell")?.len() as u32 + 4;
        let (bin, bin_size) = self.bin_of(off).ok_or_else(|| self.corrupt("freed cell", off, "outside every bin"))?;
        let (mut start, mut size) = (off, len);
        if let Some(&next) = self.free.get(&(off + len))
            && off + len < bin + bin_size
        {
            self.free.remove(&(off + len));
            size += next;
        }
        if let Some((&prev, &prev_size)) = self.free.range(bin..off).next_back()
            && prev + prev_size == off
        {
            self.free.remove(&prev);
            start = prev;
            size += prev_size;
        }
        self.put_i32(BINS_START + start as usize, size as i32);
        self.free.insert(start, size);
        Ok(())
    }

    /// Bytes in free cells (for reports and tests).
    pub fn free_bytes(&self) -> u64 {
        self.free.values().map(|&s| s as u64).sum()
    }

    /// Size of the hive bins data.
    pub fn bins_size(&self) -> u32 {
        (self.data.len() - BINS_START) as u32
    }
}
