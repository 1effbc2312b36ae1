//! Transaction logs: replaying new-format logs (`HvLE` entries, Windows 8.1 and later) into a
//! dirty hive as Windows does at load, and resetting them afterwards. Old-format logs (a dirty
//! vector) are recognised and refused: a dirty hive is never edited without its logs applied.
//!
//! Rules (regf specification, "New format" and "Multiple transaction log files"): a log's
//! first sector is a copy of the base block with file type 6; entries follow at sector
//! boundaries, each checked by two Marvin32 hashes; replay starts at the primary file's
//! secondary sequence number and applies entries of consecutive sequence numbers from either
//! log until one is missing or bogus.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::bytes::{le32, le64};
use crate::error::{Error, Result, Space};
use crate::hive::BINS_START;
use crate::hive::base::{self, BaseBlock, CHECKSUM_AT};
use crate::hive::marvin::{LOG_SEED, marvin32};

/// File type of a new-format log.
pub const NEW_LOG: u32 = 6;
const HEADER: usize = 512;
const ENTRY_HEADER: usize = 40;

/// A log file's name and bytes.
pub struct LogFile<'a> {
    pub name: &'a Path,
    pub data: &'a [u8],
}

/// One valid log entry.
struct Entry<'a> {
    log: usize,
    sequence: u32,
    flags: u32,
    bins_size: u32,
    pages: Vec<(u32, &'a [u8])>,
}

/// What a replay did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplayReport {
    /// The logs that held applied entries.
    pub logs_used: Vec<String>,
    /// Sequence numbers applied, in order.
    pub applied: Vec<u32>,
    /// Whether the primary's base block was restored from a log (its checksum was wrong).
    pub base_block_restored: bool,
}

/// The valid base block of a log, if any; an error for an old-format log.
fn log_base(log: &LogFile<'_>) -> Result<Option<BaseBlock>> {
    if log.data.len() < HEADER || &log.data[..4] != b"regf" {
        return Ok(None);
    }
    let file_type = le32(log.data, 28);
    if file_type != NEW_LOG {
        return Err(Error::unsupported(
            log.name,
            format!(
                "transaction log of type {file_type} (the old format with a dirty vector): vhdkit replays only new-format logs, so it refuses to edit the dirty hive"
            ),
        ));
    }
    let mut block = vec![0u8; 4096];
    block[..HEADER].copy_from_slice(&log.data[..HEADER]);
    Ok(BaseBlock::parse(&block, log.name).ok().filter(|b| b.checksum_valid))
}

/// The entries of a log, in order, up to the first one that is not whole and valid.
fn entries<'a>(index: usize, log: &LogFile<'a>) -> Vec<Entry<'a>> {
    let d = log.data;
    let mut out = Vec::new();
    let mut at = HEADER;
    while at + ENTRY_HEADER <= d.len() && &d[at..at + 4] == b"HvLE" {
        let size = le32(d, at + 4) as usize;
        if size < ENTRY_HEADER || !size.is_multiple_of(512) || at + size > d.len() {
            break;
        }
        let e = &d[at..at + size];
        let (h1, h2) = (le64(e, 24), le64(e, 32));
        let bins_size = le32(e, 16);
        if marvin32(LOG_SEED, &e[ENTRY_HEADER..]) != h1
            || marvin32(LOG_SEED, &e[..32]) != h2
            || !bins_size.is_multiple_of(4096)
        {
            break;
        }
        let count = le32(e, 20) as usize;
        let refs_end = ENTRY_HEADER + 8 * count;
        if refs_end > size {
            break;
        }
        let mut pages = Vec::with_capacity(count);
        let mut data_at = refs_end;
        let mut whole = true;
        for i in 0..count {
            let (off, len) = (le32(e, ENTRY_HEADER + 8 * i), le32(e, ENTRY_HEADER + 8 * i + 4) as usize);
            if data_at + len > size || off as u64 + len as u64 > bins_size as u64 {
                whole = false;
                break;
            }
            pages.push((off, &e[data_at..data_at + len]));
            data_at += len;
        }
        if !whole {
            break;
        }
        out.push(Entry { log: index, sequence: le32(e, 12), flags: le32(e, 8), bins_size, pages });
        at += size;
    }
    out
}

/// Replays `logs` into the dirty hive `primary`; returns the recovered hive bytes (sequence
/// numbers equal, checksum valid) and what was done. Fails when the hive is dirty and no log
/// entry can be applied.
pub fn replay(primary: &[u8], name: &Path, logs: &[LogFile<'_>]) -> Result<(Vec<u8>, ReplayReport)> {
    let mut report = ReplayReport::default();
    let mut hive = primary.to_vec();
    let bases: Vec<Option<BaseBlock>> = logs.iter().map(log_base).collect::<Result<_>>()?;
    let all: Vec<Entry<'_>> =
        logs.iter().enumerate().filter(|(i, _)| bases[*i].is_some()).flat_map(|(i, l)| entries(i, l)).collect();
    let mut primary_base = BaseBlock::parse(&hive, name)?;
    if !primary_base.checksum_valid {
        // The base block is restored from the log with the latest entries.
        let latest = all.iter().max_by_key(|e| e.sequence).map(|e| e.log).ok_or_else(|| {
            Error::corrupt(
                name,
                "base block",
                Space::Hive,
                CHECKSUM_AT as u64,
                "wrong checksum and no transaction log to restore it from",
            )
        })?;
        hive[..HEADER].copy_from_slice(&logs[latest].data[..HEADER]);
        hive[28..32].copy_from_slice(&0u32.to_le_bytes());
        report.base_block_restored = true;
        primary_base = BaseBlock::parse(&hive, name)?;
    }
    let by_sequence: BTreeMap<u32, &Entry<'_>> =
        all.iter().filter(|e| e.sequence >= primary_base.secondary_sequence).map(|e| (e.sequence, e)).collect();
    let mut expected = primary_base.secondary_sequence;
    if !by_sequence.contains_key(&expected) {
        expected = by_sequence.keys().next().copied().unwrap_or(expected);
    }
    while let Some(e) = by_sequence.get(&expected) {
        let size = BINS_START + e.bins_size as usize;
        hive.resize(size, 0);
        for (off, page) in &e.pages {
            let at = BINS_START + *off as usize;
            hive[at..at + page.len()].copy_from_slice(page);
        }
        hive[40..44].copy_from_slice(&e.bins_size.to_le_bytes());
        let flags = le32(&hive, 0x90) & !1 | (e.flags & 1);
        hive[0x90..0x94].copy_from_slice(&flags.to_le_bytes());
        report.applied.push(e.sequence);
        let used = logs[e.log].name.display().to_string();
        if !report.logs_used.contains(&used) {
            report.logs_used.push(used);
        }
        expected = expected.wrapping_add(1);
    }
    if report.applied.is_empty() && primary_base.dirty() {
        return Err(Error::unsupported(
            name,
            format!(
                "the hive is dirty (sequence numbers {} and {}) and no transaction log entry applies{}; refusing to edit it",
                primary_base.primary_sequence,
                primary_base.secondary_sequence,
                if logs.is_empty() {
                    " (no .LOG1/.LOG2 found)".to_string()
                } else {
                    format!(
                        " (logs found: {})",
                        logs.iter().map(|l| l.name.display().to_string()).collect::<Vec<_>>().join(", ")
                    )
                }
            ),
        ));
    }
    let last = report.applied.last().copied().unwrap_or(primary_base.primary_sequence);
    hive[4..8].copy_from_slice(&last.to_le_bytes());
    hive[8..12].copy_from_slice(&last.to_le_bytes());
    let sum = base::checksum(&hive);
    hive[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&sum.to_le_bytes());
    Ok((hive, report))
}

/// The first sector a log gets when reset after its hive was written clean: a copy of the
/// hive's base block with file type 6. Entries behind it carry older sequence numbers, so
/// Windows will not apply them again.
pub fn reset_header(hive: &[u8]) -> Vec<u8> {
    let mut h = hive[..4096].to_vec();
    h[28..32].copy_from_slice(&NEW_LOG.to_le_bytes());
    let sum = base::checksum(&h);
    h[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&sum.to_le_bytes());
    h.truncate(HEADER);
    h
}
