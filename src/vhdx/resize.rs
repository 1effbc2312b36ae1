//! A new virtual size for a VHDX, in place, through its log: the BAT's entries reshaped for
//! the new size within its region, then the virtual disk size metadata item.

use crate::error::{Error, Result};
use crate::vhdx::Vhdx;
use crate::vhdx::bat::BatShape;
use crate::vhdx::log::{LogWrite, SECTOR};
use crate::vhdx::metadata::{MAX_DISK_SIZE, VIRTUAL_DISK_SIZE};
use crate::vhdx::region::{BAT_REGION, METADATA_REGION};

impl Vhdx {
    /// Gives the disk `new_size` bytes. Shrinking drops the entries of the blocks past the new
    /// end (the caller has checked they hold no data); growing needs the BAT region to hold the
    /// new entries (moving it is not supported).
    pub fn resize_in_place(&mut self, new_size: u64) -> Result<()> {
        let path = self.file.path().to_path_buf();
        let sector = self.params.logical_sector_size;
        if new_size == 0 || !new_size.is_multiple_of(sector as u64) || new_size > MAX_DISK_SIZE {
            return Err(Error::unsupported(
                &path,
                format!("{new_size} bytes is not a whole number of {sector}-byte sectors up to {MAX_DISK_SIZE}"),
            ));
        }
        let shape = BatShape::of(new_size, self.params.block_size, sector, self.params.has_parent);
        let bat_region = *self.regions.find(BAT_REGION).ok_or_else(|| Error::internal("no BAT region"))?;
        if shape.entries * 8 > bat_region.length as u64 {
            return Err(Error::unsupported(
                &path,
                format!(
                    "{new_size} bytes needs {} BAT entries and the BAT region holds {}: moving the region is not supported yet",
                    shape.entries,
                    bat_region.length / 8
                ),
            ));
        }
        let item = self
            .metadata
            .iter()
            .find(|m| m.item == VIRTUAL_DISK_SIZE)
            .ok_or_else(|| Error::internal("no virtual disk size item"))?;
        let meta_region = *self.regions.find(METADATA_REGION).ok_or_else(|| Error::internal("no metadata region"))?;
        let at = meta_region.file_offset + item.offset as u64;
        let sector_at = at / SECTOR * SECTOR;
        let mut bytes = vec![0u8; SECTOR as usize];
        self.file.read_exact_at(sector_at, &mut bytes, "VHDX metadata")?;
        let within = (at - sector_at) as usize;
        bytes[within..within + 8].copy_from_slice(&new_size.to_le_bytes());
        let old_entries = self.bat.entry_count();
        let (a, b) = (old_entries.min(shape.entries as usize), old_entries.max(shape.entries as usize));
        // Entries dropped by a shrink are written as zeros (not left in the file to come back
        // on a later growth); then the table takes its new length.
        self.bat.reshape(shape);
        self.bat.reshape(BatShape { entries: b as u64, ..shape });
        let mut writes = self.bat_sectors(a..b)?;
        self.bat.reshape(shape);
        writes.push(LogWrite::Data { offset: sector_at, bytes });
        self.begin(true)?;
        self.log_and_apply(writes)?;
        self.end()?;
        self.params.virtual_disk_size = new_size;
        Ok(())
    }
}
