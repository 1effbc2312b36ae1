//! Writing into an existing dynamic or differencing image: a block is allocated at the end of
//! the file in an order that survives a crash, partial sectors keep their content (the
//! parent's included), and writing zeros never drops a block.

use std::sync::Arc;

use super::{SparseVhd, StoredSectors};
use crate::error::{Error, Result, Space};
use crate::vhd::bat::FileSector;
use crate::vhd::bitmap::SectorBitmap;
use crate::vhd::device::{BlockDevice, WritableDevice, block_pieces, check_range};

impl SparseVhd {
    /// Appends a new block for `block` at the end of the file and points the BAT at it.
    ///
    /// The order survives a crash: the footer moves first, then the block is written, and
    /// only then does the BAT entry make it visible.
    fn allocate_block(&mut self, block: u64, content: Option<(&SectorBitmap, &[u8])>) -> Result<()> {
        let sector = self.next_block_sector()?;
        let start = sector.offset();
        let bitmap_size = self.header.bitmap_size() as usize;
        let new_end = start + bitmap_size as u64 + self.block_size();
        self.write_footers(new_end)?;
        match content {
            Some((bitmap, data)) => {
                self.file.write_all_at(start, &bitmap.encode(bitmap_size))?;
                self.file.write_all_at(start + bitmap_size as u64, data)?;
            }
            None => self.file.write_all_at(start, &vec![0u8; bitmap_size + self.block_size() as usize])?,
        }
        self.file.write_all_at(self.header.table_offset + 4 * block, &sector.0.to_be_bytes())?;
        self.bat.set(block, Some(sector));
        let presence = StoredSectors::of(match content {
            Some((b, _)) => b.clone(),
            None => SectorBitmap::empty(self.block_sectors()),
        });
        self.presence_map().insert(block, Arc::new(presence));
        self.data_end = new_end;
        Ok(())
    }

    /// Where the next block appended to the file starts: the first whole sector after the
    /// data, which a 32-bit BAT entry must be able to name.
    pub(super) fn next_block_sector(&self) -> Result<FileSector> {
        FileSector::at_or_after(self.data_end)
            .ok_or_else(|| Error::unsupported(self.file.path(), "image file too large for 32-bit BAT sector numbers"))
    }

    /// Writes the footer at `end` (and refreshes the copy at 0 if it was stale).
    fn write_footers(&mut self, end: u64) -> Result<()> {
        self.put_footers(end)?;
        self.footers_current = true;
        Ok(())
    }

    /// The writes of [`Self::write_footers`], leaving the caller to record that the copies are
    /// current once they are made.
    fn put_footers(&self, end: u64) -> Result<()> {
        let bytes = self.footer.encode();
        self.file.write_all_at(end, &bytes)?;
        if !self.footers_current {
            self.file.write_all_at(0, &bytes)?;
        }
        Ok(())
    }

    #[doc(hidden)]
    /// Stores a whole block with the given presence bits in one go. An allocated block is
    /// overwritten in place.
    pub fn put_block(&mut self, block: u64, bitmap: &SectorBitmap, data: &[u8]) -> Result<()> {
        if data.len() as u64 != self.block_size() || bitmap.sectors() != self.block_sectors() {
            return Err(Error::Usage(format!("block {block}: buffer does not match the block size")));
        }
        self.require_writable()?;
        match self.bat.sector(block) {
            None => self.allocate_block(block, Some((bitmap, data))),
            Some(sector) => {
                self.check_block_inside(block, sector)?;
                let at = sector.offset();
                self.file.write_all_at(at + self.header.bitmap_size(), data)?;
                self.file.write_all_at(at, &bitmap.encode(self.header.bitmap_size() as usize))?;
                self.presence_map().insert(block, Arc::new(StoredSectors::of(bitmap.clone())));
                Ok(())
            }
        }
    }

    /// Stores new blocks (`blocks`: each unallocated, with the sectors it will hold) in one
    /// journaled step whose journal holds only the BAT entries, the bitmaps and the footer:
    /// `fill` puts each block's data in a zeroed buffer, which is written straight past the
    /// file's end, so memory holds one block of data (and the step's bitmaps) whatever the
    /// number of blocks. A crash at any point leaves the image as it was (the journal cuts the
    /// file back); so does an error of `fill`.
    pub fn append_blocks(
        &mut self,
        blocks: &[(u64, SectorBitmap)],
        mut fill: impl FnMut(u64, &mut [u8]) -> Result<()>,
    ) -> Result<()> {
        self.require_writable()?;
        let bitmap_size = self.header.bitmap_size();
        let mut placed = Vec::with_capacity(blocks.len());
        let mut end = self.data_end;
        for (block, bitmap) in blocks {
            if *block >= self.block_count()
                || self.bat.sector(*block).is_some()
                || bitmap.sectors() != self.block_sectors()
            {
                return Err(Error::internal(format!("block {block} cannot be appended")));
            }
            let sector = FileSector::at_or_after(end).ok_or_else(|| {
                Error::unsupported(self.file.path(), "image file too large for 32-bit BAT sector numbers")
            })?;
            placed.push(sector);
            end = sector.offset() + bitmap_size + self.block_size();
        }
        self.file.begin_staging()?;
        let collected = (|| {
            // The footer at the new end makes the journal allow every appended byte.
            self.put_footers(end)?;
            for ((block, bitmap), sector) in blocks.iter().zip(&placed) {
                self.file.write_all_at(sector.offset(), &bitmap.encode(bitmap_size as usize))?;
                self.file.write_all_at(self.header.table_offset + 4 * block, &sector.0.to_be_bytes())?;
            }
            Ok::<(), Error>(())
        })();
        let staged = self.file.take_staged();
        collected?;
        let mut data = vec![0u8; self.block_size() as usize];
        crate::host::journal::commit_appending(self.file.path(), self.file.raw(), &staged, |out| {
            for ((block, _), sector) in blocks.iter().zip(&placed) {
                data.fill(0);
                fill(*block, &mut data)?;
                out.write(sector.offset() + bitmap_size, &data)?;
            }
            Ok(())
        })?;
        for ((block, bitmap), sector) in blocks.iter().zip(&placed) {
            self.bat.set(*block, Some(*sector));
            self.presence_map().insert(*block, Arc::new(StoredSectors::of(bitmap.clone())));
        }
        self.data_end = end;
        self.footers_current = true;
        Ok(())
    }

    pub(super) fn require_writable(&self) -> Result<()> {
        if self.file.writable() { Ok(()) } else { Err(Error::unsupported(self.file.path(), "image opened read-only")) }
    }

    /// Writes `data` into `block` at `within`, keeping sector bitmap semantics.
    fn write_in_block(&mut self, block: u64, within: u64, data: &[u8]) -> Result<()> {
        let bs = self.block_size();
        if self.bat.sector(block).is_none() {
            if within == 0 && data.len() as u64 == bs {
                return self.allocate_block(block, Some((&SectorBitmap::full(self.block_sectors()), data)));
            }
            self.allocate_block(block, None)?;
        }
        let sector = self.bat.sector(block).ok_or_else(|| self.poisoned())?;
        let end = within + data.len() as u64;
        let aligned_start = within / 512 * 512;
        let aligned_end = end.div_ceil(512) * 512;
        let data_at = sector.offset() + self.header.bitmap_size();
        if aligned_start == within && aligned_end == end {
            self.file.write_all_at(data_at + within, data)?;
        } else {
            // Partial sectors keep their current content around the new bytes.
            let mut buf = vec![0u8; (aligned_end - aligned_start) as usize];
            let head = &mut buf[..512];
            self.read_in_block(block, aligned_start, head)?;
            let tail_at = buf.len() - 512;
            self.read_in_block(block, aligned_end - 512, &mut buf[tail_at..])?;
            buf[(within - aligned_start) as usize..][..data.len()].copy_from_slice(data);
            self.file.write_all_at(data_at + aligned_start, &buf)?;
        }
        let (first, last) = SectorBitmap::bits_of(aligned_start, aligned_end);
        let current = self.presence(block, sector)?;
        if let StoredSectors::Some(bitmap) = &*current
            && bitmap.runs(first, last).iter().any(|r| !r.2)
        {
            let mut bitmap = bitmap.clone();
            bitmap.set_range(first, last, true);
            self.file.write_all_at(sector.offset(), &bitmap.encode(self.header.bitmap_size() as usize))?;
            self.presence_map().insert(block, Arc::new(StoredSectors::of(bitmap)));
        }
        Ok(())
    }
}

impl WritableDevice for SparseVhd {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<()> {
        self.require_writable()?;
        check_range(self.file.path(), Space::Disk, offset, buf.len(), self.len())?;
        for (block, within, range) in block_pieces(offset, buf.len(), self.block_size()) {
            self.write_in_block(block, within, &buf[range])?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.file.sync()
    }
}
