//! A VHDX child's parent locator rewritten in place, through the log: the item where it was
//! when the new one fits, else after the last item of the metadata region (its table entry
//! updated in the same log entry).

use crate::error::{Error, Result};
use crate::vhdx::Vhdx;
use crate::vhdx::log::{LogWrite, SECTOR};
use crate::vhdx::metadata::{self, PARENT_LOCATOR, ParentLocator};
use crate::vhdx::region::METADATA_REGION;

/// Where metadata items start in their region: after the 64 KiB table.
const ITEMS_START: u32 = 64 << 10;

impl Vhdx {
    /// Replaces the parent locator of this differencing VHDX with `locator`.
    pub fn set_parent_locator(&mut self, locator: &ParentLocator) -> Result<()> {
        let path = self.file.path().to_path_buf();
        let region = *self.regions.find(METADATA_REGION).ok_or_else(|| Error::internal("no metadata region"))?;
        let index = self
            .metadata
            .iter()
            .position(|m| m.item == PARENT_LOCATOR)
            .ok_or_else(|| Error::unsupported(&path, "not a differencing disk: it has no parent locator"))?;
        let value = locator.encode();
        let mut entries = self.metadata.clone();
        let old = entries[index];
        if value.len() as u32 > old.length {
            // After every item, on a 4 KiB boundary, within the region.
            let end = entries.iter().map(|m| m.offset + m.length).max().unwrap_or(ITEMS_START).max(ITEMS_START);
            let at = end.div_ceil(SECTOR as u32) * SECTOR as u32;
            if at as u64 + value.len() as u64 > region.length as u64 {
                return Err(Error::unsupported(&path, "the metadata region has no room for the new parent locator"));
            }
            entries[index].offset = at;
        }
        entries[index].length = value.len() as u32;
        let mut writes = Vec::new();
        let item_at = region.file_offset + entries[index].offset as u64;
        // The item's sectors as they are, the new value over them.
        let first = item_at / SECTOR * SECTOR;
        let last = (item_at + value.len() as u64).div_ceil(SECTOR) * SECTOR;
        let mut sectors = vec![0u8; (last - first) as usize];
        self.file.read_exact_at(first, &mut sectors, "VHDX metadata")?;
        let within = (item_at - first) as usize;
        sectors[within..within + value.len()].copy_from_slice(&value);
        for (i, chunk) in sectors.chunks(SECTOR as usize).enumerate() {
            writes.push(LogWrite::Data { offset: first + i as u64 * SECTOR, bytes: chunk.to_vec() });
        }
        // The table's sector that holds the item's entry.
        let table = metadata::encode_table(&entries);
        let s = (32 + 32 * index) / SECTOR as usize;
        let bytes = table[s * SECTOR as usize..(s + 1) * SECTOR as usize].to_vec();
        writes.push(LogWrite::Data { offset: region.file_offset + s as u64 * SECTOR, bytes });
        self.begin(false)?;
        self.log_and_apply(writes)?;
        self.end()?;
        self.metadata = entries;
        self.params.parent_locator = Some(locator.clone());
        Ok(())
    }
}
