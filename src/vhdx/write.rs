//! Changing an existing VHDX as the specification requires (MS-VHDX 2.2.2.1, 2.3): before the
//! first change of a session, the headers get a new file write GUID (and, before the first
//! change a reader could see, a new data write GUID) and a new log GUID; every metadata write
//! (BAT, sector bitmaps) goes through the log: an entry is written and flushed, then applied
//! and flushed; payload is written in place before the BAT entry that shows it. A crash at any
//! write leaves a file that replays (here, or in Hyper-V) to the state before or after each
//! step. The session ends by clearing the log GUID.
//!
//! A writer that opens a file with a pending log replays it on disk first.

use std::sync::Arc;

use crate::bytes::Guid;
use crate::error::{Error, Result, Space};
use crate::vhd::device::{self, BlockDevice, WritableDevice, block_pieces, check_range};
use crate::vhdx::Vhdx;
use crate::vhdx::bat::PayloadState;
use crate::vhdx::header::{HEADER_OFFSETS, VhdxHeader};
use crate::vhdx::log::{self, LogWrite, SECTOR};
use crate::vhdx::region::{ALIGNMENT, BAT_REGION};

/// A write session: the log's next sequence number and where the next entry goes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Session {
    sequence: u64,
    next_entry: u64,
    /// Whether the data write GUID has changed in this session.
    data_changed: bool,
}

impl Vhdx {
    /// Replays a pending log on disk (a writer's open): a new file write GUID first, then the
    /// log's writes, the file extended to the size the log names, then the log cleared.
    pub(crate) fn replay_on_disk(&mut self) -> Result<()> {
        let Some(replay) = self.replay.take() else { return Ok(()) };
        self.require_writable()?;
        let mut h = self.header.clone();
        h.file_write_guid = self.new_identity.guid(&format!("vhdx replay {}", self.header.sequence_number));
        self.write_header(h)?;
        for w in &replay.writes {
            self.apply(w)?;
        }
        if self.file.file_len()? < replay.last_file_offset {
            self.file.set_len(replay.last_file_offset)?;
        }
        self.file.sync()?;
        let mut h = self.header.clone();
        h.log_guid = Guid::default();
        self.write_header(h)?;
        self.file_len = self.file.file_len()?;
        Ok(())
    }

    fn require_writable(&self) -> Result<()> {
        if self.file.writable() { Ok(()) } else { Err(Error::unsupported(self.file.path(), "image opened read-only")) }
    }

    /// Writes `h` over the header that is not current, with the next sequence number, and
    /// flushes: it becomes current.
    fn write_header(&mut self, mut h: VhdxHeader) -> Result<()> {
        h.sequence_number = self.header.sequence_number + 1;
        h.slot = if self.header.slot == 1 { 2 } else { 1 };
        self.file.write_all_at(HEADER_OFFSETS[h.slot as usize - 1], &h.encode())?;
        self.file.sync()?;
        self.header = h;
        Ok(())
    }

    /// Starts a session if none is open: new file write and log GUIDs (and a new data write
    /// GUID when `visible`, the change being one a reader could see).
    pub(crate) fn begin(&mut self, visible: bool) -> Result<()> {
        self.require_writable()?;
        match &mut self.session {
            Some(s) if s.data_changed || !visible => return Ok(()),
            Some(_) => {}
            None => {}
        }
        if self.header.log_length < (2 * SECTOR * 2) as u32 {
            return Err(Error::unsupported(
                self.file.path(),
                format!("a log of {} bytes is too small to write through", self.header.log_length),
            ));
        }
        let mut h = self.header.clone();
        let mut first_entry = None;
        // Fresh GUIDs, or for a file this run creates reproducibly, ones derived per header
        // sequence number (so no two sessions share a log GUID).
        let guid = |what: &str| self.new_identity.guid(&format!("vhdx session {what} {}", self.header.sequence_number));
        if self.session.is_none() {
            h.file_write_guid = guid("file write");
            h.log_guid = guid("log");
            // An empty entry of the new log first, flushed, as Microsoft's own implementation
            // does: once the header names the log, a crash must leave a log that replays.
            let empty = log::encode_entry(
                h.log_guid,
                1,
                0,
                (self.file.file_len()? / ALIGNMENT * ALIGNMENT, self.file_len.div_ceil(ALIGNMENT) * ALIGNMENT),
                &[],
            );
            self.file.write_all_at(self.header.log_offset, &empty)?;
            self.file.sync()?;
            first_entry = Some((2, empty.len() as u64));
        }
        if visible {
            h.data_write_guid = guid("data write");
        }
        self.write_header(h)?;
        let (sequence, next_entry) = first_entry.or(self.session.map(|s| (s.sequence, s.next_entry))).unwrap_or((1, 0));
        self.session = Some(Session {
            sequence,
            next_entry,
            data_changed: visible || self.session.is_some_and(|s| s.data_changed),
        });
        Ok(())
    }

    /// Ends the session: the log is cleared (its entries are all applied and flushed).
    pub(crate) fn end(&mut self) -> Result<()> {
        if self.session.take().is_none() {
            return Ok(());
        }
        self.file.sync()?;
        let mut h = self.header.clone();
        h.log_guid = Guid::default();
        self.write_header(h)
    }

    /// Makes metadata `writes` (whole 4 KiB sectors or zero ranges) through the log: an entry
    /// written and flushed, then applied and flushed, as many entries as the log's half holds
    /// (an entry never overwrites the one before it, which stays replayable until the next
    /// is whole).
    pub(crate) fn log_and_apply(&mut self, writes: Vec<LogWrite>) -> Result<()> {
        let log_len = self.header.log_length as u64;
        let per_entry = ((log_len / 2) / SECTOR).saturating_sub(2).max(1) as usize;
        for batch in writes.chunks(per_entry) {
            self.log_entry(batch)?;
        }
        Ok(())
    }

    /// Writes one entry and applies it.
    fn log_entry(&mut self, writes: &[LogWrite]) -> Result<()> {
        let durable = self.file.file_len()? / ALIGNMENT * ALIGNMENT;
        self.log_entry_flushed(writes, durable)
    }

    /// Writes one entry naming `durable` as the file size already on disk, and applies it.
    fn log_entry_flushed(&mut self, writes: &[LogWrite], durable: u64) -> Result<()> {
        let Some(session) = self.session else { return Err(Error::internal("a VHDX log write outside a session")) };
        let log_len = self.header.log_length as u64;
        let last = self.file_len.max(durable).div_ceil(ALIGNMENT) * ALIGNMENT;
        let mut at = session.next_entry;
        let probe = log::encode_entry(self.header.log_guid, session.sequence, 0, (durable, last), writes);
        if at + probe.len() as u64 > log_len {
            at = 0;
        }
        let entry = log::encode_entry(self.header.log_guid, session.sequence, at, (durable, last), writes);
        self.file.write_all_at(self.header.log_offset + at, &entry)?;
        self.file.sync()?;
        for w in writes {
            self.apply(w)?;
        }
        self.file.sync()?;
        self.session = Some(Session {
            sequence: session.sequence + 1,
            next_entry: (at + entry.len() as u64) % log_len,
            ..session
        });
        Ok(())
    }

    /// Prepares the log for the file to shrink to `end`: one entry naming `end` as the file's
    /// size, alone at the log's start (its sequence number not following the others', so no
    /// reader chains it to entries naming the larger size), then the rest of the log cleared.
    /// Every entry before it is applied and flushed already.
    pub(crate) fn log_shrink(&mut self, end: u64) -> Result<()> {
        let Some(session) = self.session else { return Err(Error::internal("a VHDX log write outside a session")) };
        let log_len = self.header.log_length as u64;
        let sequence = session.sequence + 1;
        let entry = log::encode_entry(self.header.log_guid, sequence, 0, (end, end), &[]);
        self.file.write_all_at(self.header.log_offset, &entry)?;
        self.file.sync()?;
        let rest = entry.len() as u64;
        device::write_zeros_with(self.header.log_offset + rest, log_len - rest, &mut |at, z| {
            self.file.write_all_at(at, z)
        })?;
        self.file.sync()?;
        self.session = Some(Session { sequence: sequence + 1, next_entry: rest, ..session });
        Ok(())
    }

    /// Makes one write of the log at its place in the file.
    fn apply(&mut self, w: &LogWrite) -> Result<()> {
        match w {
            LogWrite::Data { offset, bytes } => self.file.write_all_at(*offset, bytes),
            LogWrite::Zero { offset, length } => {
                device::write_zeros_with(*offset, *length, &mut |at, z| self.file.write_all_at(at, z))
            }
        }
    }

    /// The 4 KiB sectors of the BAT holding entries `indexes`, as they now are in memory.
    pub(crate) fn bat_sectors(&self, indexes: impl IntoIterator<Item = usize>) -> Result<Vec<LogWrite>> {
        let region = *self.regions.find(BAT_REGION).ok_or_else(|| Error::internal("no BAT region"))?;
        let encoded = self.bat.encode();
        let mut sectors: Vec<u64> = indexes.into_iter().map(|i| (i as u64 * 8) / SECTOR).collect();
        sectors.sort_unstable();
        sectors.dedup();
        Ok(sectors
            .into_iter()
            .map(|s| {
                let mut bytes = vec![0u8; SECTOR as usize];
                let from = (s * SECTOR) as usize;
                let n = encoded.len().saturating_sub(from).min(SECTOR as usize);
                bytes[..n].copy_from_slice(&encoded[from..from + n]);
                // Bytes of the sector past the table keep what the file holds there.
                if n < SECTOR as usize {
                    let mut tail = vec![0u8; SECTOR as usize - n];
                    if self
                        .file
                        .read_exact_at(region.file_offset + from as u64 + n as u64, &mut tail, "VHDX BAT")
                        .is_ok()
                    {
                        bytes[n..].copy_from_slice(&tail);
                    }
                }
                LogWrite::Data { offset: region.file_offset + s * SECTOR, bytes }
            })
            .collect())
    }

    /// Allocates block `k` at the end of the file with `content` (a whole block), then shows
    /// it through the BAT (logged).
    fn allocate(&mut self, k: u64, content: &[u8]) -> Result<()> {
        self.begin(true)?;
        let at = self.file_len.div_ceil(ALIGNMENT) * ALIGNMENT;
        self.file.write_all_at(at, content)?;
        self.file.sync()?;
        self.file_len = at + self.block_size();
        self.bat.set_payload(k, PayloadState::FullyPresent, at);
        let writes = self.bat_sectors([self.bat.payload_index(k)])?;
        self.log_and_apply(writes)?;
        self.bitmaps.write().map_err(|_| Error::internal("bitmap cache poisoned"))?.remove(&k);
        Ok(())
    }

    /// Writes `data` into block `k` at `within`: in place where the block is stored whole; a
    /// block not stored gets its current bytes (zeros, or the parent's) with `data` over them,
    /// allocated whole; in a partially present block, the data then the sector bits (logged).
    fn write_in_block(&mut self, k: u64, within: u64, data: &[u8]) -> Result<()> {
        let (state, at) = self
            .bat
            .payload(k)
            .map_err(|raw| self.corrupt("VHDX BAT entry", 0, format!("block {k}: reserved state {}", raw & 7)))?;
        match state {
            PayloadState::FullyPresent => {
                self.begin(true)?;
                self.file.write_all_at(at + within, data)
            }
            PayloadState::PartiallyPresent => {
                self.begin(true)?;
                let ss = self.params.logical_sector_size as u64;
                let (first, end) = (within / ss * ss, (within + data.len() as u64).div_ceil(ss) * ss);
                let mut buf = vec![0u8; (end - first) as usize];
                self.read_in_block(k, first, &mut buf)?;
                buf[(within - first) as usize..][..data.len()].copy_from_slice(data);
                self.file.write_all_at(at + first, &buf)?;
                self.file.sync()?;
                self.set_sector_bits(k, first / ss, end / ss)
            }
            _ => {
                let mut block = vec![0u8; self.block_size() as usize];
                let end = (k * self.block_size() + self.block_size()).min(self.len()) - k * self.block_size();
                self.read_in_block(k, 0, &mut block[..end as usize])?;
                block[within as usize..][..data.len()].copy_from_slice(data);
                self.allocate(k, &block)
            }
        }
    }

    /// Sets the bits of sectors `[first, last)` of partially present block `k` (logged).
    fn set_sector_bits(&mut self, k: u64, first: u64, last: u64) -> Result<()> {
        let chunk = k / self.bat.chunk_ratio();
        let sb = self.bat.bitmap(chunk).ok_or_else(|| Error::internal("a partially present block without a bitmap"))?;
        let per_block = self.block_size() / self.params.logical_sector_size as u64 / 8;
        let block_at = sb + (k % self.bat.chunk_ratio()) * per_block;
        let mut bits = self.block_bits(k)?.as_ref().clone();
        for s in first..last {
            bits[(s / 8) as usize] |= 1 << (s % 8);
        }
        let mut writes = Vec::new();
        let (from, to) = (block_at / SECTOR * SECTOR, (block_at + per_block).div_ceil(SECTOR) * SECTOR);
        let mut sectors = vec![0u8; (to - from) as usize];
        self.read_meta(from, &mut sectors, "VHDX sector bitmap")?;
        sectors[(block_at - from) as usize..][..per_block as usize].copy_from_slice(&bits);
        for (i, s) in sectors.chunks(SECTOR as usize).enumerate() {
            writes.push(LogWrite::Data { offset: from + i as u64 * SECTOR, bytes: s.to_vec() });
        }
        self.log_and_apply(writes)?;
        self.bitmaps.write().map_err(|_| Error::internal("bitmap cache poisoned"))?.insert(k, Arc::new(bits));
        Ok(())
    }
}

/// Writes into the disk: stored blocks in place, others allocated whole (zeros or the parent's
/// bytes under the new ones), every BAT and sector bitmap change through the log. `flush`
/// ends the session (the log cleared).
impl WritableDevice for Vhdx {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<()> {
        check_range(self.file.path(), Space::Disk, offset, buf.len(), self.len())?;
        for (k, within, range) in block_pieces(offset, buf.len(), self.block_size()) {
            self.write_in_block(k, within, &buf[range])?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.file.sync()?;
        self.end()
    }
}
