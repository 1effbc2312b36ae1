//! A new virtual size for a VHDX, in place, through its log: the BAT's entries reshaped for
//! the new size within its region, then the virtual disk size metadata item.

use crate::error::{Error, Result};
use crate::vhdx::Vhdx;
use crate::vhdx::bat::BatShape;
use crate::vhdx::log::{LogWrite, SECTOR};
use crate::vhdx::metadata::{MAX_DISK_SIZE, VIRTUAL_DISK_SIZE};
use crate::vhdx::region::{ALIGNMENT, BAT_REGION, METADATA_REGION, REGION_TABLE_OFFSETS};

impl Vhdx {
    /// Gives the disk `new_size` bytes. Shrinking drops the entries of the blocks past the new
    /// end (the caller has checked they hold no data); growing past what the BAT region holds
    /// moves it to the end of the file first.
    pub fn resize_in_place(&mut self, new_size: u64) -> Result<bool> {
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
        let moved = shape.entries * 8 > bat_region.length as u64;
        if moved {
            self.move_bat_region(shape.entries * 8)?;
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
        // A moved table's new region is zeros past the old table already.
        let b = if moved { b.min(bat_region.length as usize / 8) } else { b };
        let mut writes = self.bat_sectors(a..b.max(a))?;
        self.bat.reshape(shape);
        writes.push(LogWrite::Data { offset: sector_at, bytes });
        self.begin(true)?;
        self.log_and_apply(writes)?;
        self.end()?;
        self.params.virtual_disk_size = new_size;
        Ok(moved)
    }

    /// Moves the BAT to a region of at least `bytes` at the end of the file: the table is
    /// copied there (the rest zeros) and flushed while nothing points at it, then both region
    /// tables name it in one log entry. A crash before leaves the old table in use (and space
    /// past it that nothing references); after, the new one. The old region's space stays,
    /// unused.
    fn move_bat_region(&mut self, bytes: u64) -> Result<()> {
        let old = *self.regions.find(BAT_REGION).ok_or_else(|| Error::internal("no BAT region"))?;
        let length = bytes.div_ceil(ALIGNMENT) * ALIGNMENT;
        let length32 = u32::try_from(length).map_err(|_| {
            Error::unsupported(self.file.path(), format!("a BAT of {length} bytes is larger than a region may be"))
        })?;
        // Past everything the file holds or its header names: the regions and the log.
        let region_ends = self.regions.entries.iter().map(|e| e.file_offset + e.length as u64);
        let log_end = self.header.log_offset + self.header.log_length as u64;
        let end = region_ends.chain([log_end, self.file_len, self.file.file_len()?]).max().unwrap_or(0);
        let offset = end.div_ceil(ALIGNMENT) * ALIGNMENT;
        let mut chunk = vec![0u8; ALIGNMENT as usize];
        for at in (0..old.length as u64).step_by(ALIGNMENT as usize) {
            let n = (old.length as u64 - at).min(ALIGNMENT) as usize;
            self.file.read_exact_at(old.file_offset + at, &mut chunk[..n], "VHDX BAT")?;
            self.file.write_all_at(offset + at, &chunk[..n])?;
        }
        self.file.set_len(offset + length)?;
        self.file.sync()?;
        self.file_len = offset + length;
        let mut table = self.regions.clone();
        for e in table.entries.iter_mut().filter(|e| e.guid == BAT_REGION) {
            (e.file_offset, e.length) = (offset, length32);
        }
        let encoded = table.encode();
        let writes = REGION_TABLE_OFFSETS
            .iter()
            .flat_map(|&at| {
                encoded
                    .chunks(SECTOR as usize)
                    .enumerate()
                    .map(move |(i, b)| LogWrite::Data { offset: at + i as u64 * SECTOR, bytes: b.to_vec() })
            })
            .collect();
        self.begin(true)?;
        self.log_and_apply(writes)?;
        self.end()?;
        self.regions = table;
        Ok(())
    }
}
