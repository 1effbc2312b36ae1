//! Transaction logs: replaying them into a dirty hive as Windows does at load, and resetting
//! them afterwards. New-format logs (`HvLE` entries, Windows 8.1 and later) and old-format
//! ones (a dirty vector and dirty pages, Windows 2000 to 8.0) are both replayed; a dirty hive
//! is never edited without its logs applied.
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
use crate::error::{Error, Result};
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

/// Which transaction log format a replay used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `HvLE` entries (Windows 8.1 and later).
    #[default]
    New,
    /// A dirty vector and dirty pages (Windows 2000 to 8.0).
    Old,
}

/// What a replay did.
#[derive(Clone, Debug, Default, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ReplayReport {
    /// The format of the logs replayed.
    pub format: LogFormat,
    /// The logs that held applied entries.
    pub logs_used: Vec<String>,
    /// Sequence numbers applied, in order (new format).
    pub applied: Vec<u32>,
    /// 512-byte pages written from the log (old format).
    pub dirty_pages: u64,
    /// Whether the primary's base block was restored from a log (its checksum was wrong).
    pub base_block_restored: bool,
}

/// File types of old-format logs: Windows XP to 8.0, and 2000 and older.
const OLD_LOG_TYPES: [u32; 2] = [1, 2];

/// An old-format log: a copy of the base block's first sector, the dirty vector (one bit per
/// 512-byte page of the hive bins data) and the dirty pages packed in bit order.
struct OldLog<'a> {
    index: usize,
    base: BaseBlock,
    header: &'a [u8],
    /// Indexes of the dirty pages, in order, with each page's bytes.
    pages: Vec<(u64, &'a [u8])>,
}

/// What one log file is good for.
enum LogKind<'a> {
    New,
    Old(OldLog<'a>),
    Unusable(String),
}

/// The base block copy in a log's first sector, if it is valid (checksum right, sequence
/// numbers equal as a finished log leaves them).
fn log_base(data: &[u8], name: &Path) -> std::result::Result<BaseBlock, String> {
    if data.is_empty() {
        return Err("empty".into());
    }
    if data.len() < HEADER || &data[..4] != b"regf" {
        return Err("no \"regf\" base block copy".into());
    }
    let mut block = vec![0u8; 4096];
    block[..HEADER].copy_from_slice(&data[..HEADER]);
    let b = BaseBlock::parse(&block, name).map_err(|e| e.to_string())?;
    if !b.checksum_valid {
        return Err("its base block copy has a wrong checksum".into());
    }
    Ok(b)
}

/// Decodes an old-format log after its base block.
fn old_log<'a>(index: usize, data: &'a [u8], base: BaseBlock) -> std::result::Result<OldLog<'a>, String> {
    if base.primary_sequence != base.secondary_sequence {
        return Err("it was cut short while being written (sequence numbers differ)".into());
    }
    if data.get(HEADER..HEADER + 4) != Some(b"DIRT".as_slice()) {
        return Err("no \"DIRT\" dirty vector after the base block".into());
    }
    let bitmap_len = base.hive_bins_size as usize / 4096;
    let bitmap = data.get(HEADER + 4..HEADER + 4 + bitmap_len).ok_or("its dirty vector runs past the end")?;
    let pages_at = (HEADER + 4 + bitmap_len).div_ceil(HEADER) * HEADER;
    let mut pages = Vec::new();
    for bit in 0..bitmap_len as u64 * 8 {
        if bitmap[(bit / 8) as usize] & (1 << (bit % 8)) != 0 {
            let at = pages_at + pages.len() * 512;
            let page = data.get(at..at + 512).ok_or("its dirty pages run past the end")?;
            pages.push((bit, page));
        }
    }
    Ok(OldLog { index, base, header: &data[..HEADER], pages })
}

fn classify<'a>(index: usize, log: &LogFile<'a>) -> LogKind<'a> {
    let base = match log_base(log.data, log.name) {
        Ok(b) => b,
        Err(why) => return LogKind::Unusable(why),
    };
    match base.file_type {
        NEW_LOG => LogKind::New,
        t if OLD_LOG_TYPES.contains(&t) => match old_log(index, log.data, base) {
            Ok(l) => LogKind::Old(l),
            Err(why) => LogKind::Unusable(why),
        },
        t => LogKind::Unusable(format!("file type {t} is not a transaction log")),
    }
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

/// The timestamp a log must not be older than: the base block's, or, when the base block is
/// damaged, the first hive bin's copy of it.
fn primary_timestamp(hive: &[u8], base: &BaseBlock) -> u64 {
    let bin = hive.get(BINS_START..BINS_START + 28);
    match bin {
        Some(b) if !base.checksum_valid && &b[..4] == b"hbin" => le64(b, 20),
        _ => base.timestamp,
    }
}

/// Replays `logs` into the dirty hive `primary`; returns the recovered hive bytes (sequence
/// numbers equal, checksum valid) and what was done. New-format entries are applied when a
/// log holds them, else the most recent old-format log that is not older than the hive.
/// Fails, naming each log and why it does not apply, when nothing does.
pub fn replay(primary: &[u8], name: &Path, logs: &[LogFile<'_>]) -> Result<(Vec<u8>, ReplayReport)> {
    let primary_base = BaseBlock::parse(primary, name)?;
    let kinds: Vec<LogKind<'_>> = logs.iter().enumerate().map(|(i, l)| classify(i, l)).collect();
    let budget = primary.len() + logs.iter().map(|l| l.data.len()).sum::<usize>();
    if let Some(done) = replay_new(primary, name, &primary_base, logs, &kinds, budget)? {
        return Ok(done);
    }
    let not_before = primary_timestamp(primary, &primary_base);
    let mut why: Vec<String> = Vec::new();
    let mut best: Option<&OldLog<'_>> = None;
    for (log, kind) in logs.iter().zip(&kinds) {
        match kind {
            LogKind::Old(l) if l.base.timestamp < not_before => {
                why.push(format!("{}: older than the hive", log.name.display()));
            }
            LogKind::Old(l) if (HEADER + l.base.hive_bins_size as usize) > budget => {
                why.push(format!(
                    "{}: its hive bins size is larger than the hive and the log hold",
                    log.name.display()
                ));
            }
            LogKind::Old(l) => {
                if best.is_none_or(|b| l.base.timestamp > b.base.timestamp) {
                    best = Some(l);
                }
            }
            LogKind::New => why.push(format!("{}: no entry continues the hive's sequence", log.name.display())),
            LogKind::Unusable(reason) => why.push(format!("{}: {reason}", log.name.display())),
        }
    }
    match best {
        Some(l) => Ok(replay_old(primary, &primary_base, l, logs[l.index].name)),
        None => Err(refusal(name, &primary_base, &why)),
    }
}

/// Why a dirty hive cannot be recovered, with each log's reason.
fn refusal(name: &Path, base: &BaseBlock, why: &[String]) -> Error {
    let state = if base.checksum_valid {
        format!("the hive is dirty (sequence numbers {} and {})", base.primary_sequence, base.secondary_sequence)
    } else {
        format!(
            "the hive's base block is damaged (checksum {:#010x} stored, {:#010x} computed)",
            base.checksum, base.computed_checksum
        )
    };
    let logs = if why.is_empty() { "no .LOG1, .LOG2 or .LOG found".to_string() } else { why.join("; ") };
    Error::unsupported(name, format!("{state} and no transaction log applies ({logs})"))
}

/// The new-format replay: entries of consecutive sequence numbers from the hive's secondary
/// sequence number on; `None` when no entry applies.
fn replay_new(
    primary: &[u8],
    name: &Path,
    primary_base: &BaseBlock,
    logs: &[LogFile<'_>],
    kinds: &[LogKind<'_>],
    budget: usize,
) -> Result<Option<(Vec<u8>, ReplayReport)>> {
    let all: Vec<Entry<'_>> = logs
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(kinds[*i], LogKind::New))
        .flat_map(|(i, l)| entries(i, l))
        .collect();
    if all.is_empty() {
        return Ok(None);
    }
    let mut report = ReplayReport::default();
    let mut hive = primary.to_vec();
    let mut base = primary_base.clone();
    if !base.checksum_valid {
        // The base block is restored from the log with the latest entries.
        let latest = all.iter().max_by_key(|e| e.sequence).map(|e| e.log).unwrap_or(0);
        hive[..HEADER].copy_from_slice(&logs[latest].data[..HEADER]);
        hive[28..32].copy_from_slice(&0u32.to_le_bytes());
        report.base_block_restored = true;
        base = BaseBlock::parse(&hive, name)?;
    }
    let by_sequence: BTreeMap<u32, &Entry<'_>> =
        all.iter().filter(|e| e.sequence >= base.secondary_sequence).map(|e| (e.sequence, e)).collect();
    let mut expected = base.secondary_sequence;
    if !by_sequence.contains_key(&expected) {
        expected = by_sequence.keys().next().copied().unwrap_or(expected);
    }
    while let Some(e) = by_sequence.get(&expected) {
        // A log can only add what it holds: a larger claimed size is bogus, not an allocation.
        let size = BINS_START + e.bins_size as usize;
        if size > budget {
            break;
        }
        if hive.len() < size {
            hive.resize(size, 0);
        }
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
    if report.applied.is_empty() {
        return Ok(None);
    }
    let last = report.applied.last().copied().unwrap_or(base.primary_sequence);
    finish(&mut hive, last);
    Ok(Some((hive, report)))
}

/// The old-format replay of `log`: each dirty page written at its place in the hive bins data
/// (the hive grows when the log's hive bins data does), the base block taken from the log when
/// the hive's is damaged, else the log's size, root cell and version over the hive's.
fn replay_old(primary: &[u8], primary_base: &BaseBlock, log: &OldLog<'_>, log_name: &Path) -> (Vec<u8>, ReplayReport) {
    let mut hive = primary.to_vec();
    let mut report =
        ReplayReport { format: LogFormat::Old, logs_used: vec![log_name.display().to_string()], ..Default::default() };
    if primary_base.checksum_valid {
        for field in [20..28, 36..44] {
            hive[field.clone()].copy_from_slice(&log.header[field]);
        }
    } else {
        hive[..HEADER].copy_from_slice(log.header);
        report.base_block_restored = true;
    }
    hive[28..32].copy_from_slice(&0u32.to_le_bytes());
    for &(bit, page) in &log.pages {
        let at = BINS_START + bit as usize * 512;
        if hive.len() < at + 512 {
            hive.resize(at + 512, 0);
        }
        hive[at..at + 512].copy_from_slice(page);
    }
    report.dirty_pages = log.pages.len() as u64;
    finish(&mut hive, log.base.primary_sequence);
    (hive, report)
}

/// Marks a recovered hive clean: both sequence numbers `sequence`, the checksum recomputed.
fn finish(hive: &mut [u8], sequence: u32) {
    hive[4..8].copy_from_slice(&sequence.to_le_bytes());
    hive[8..12].copy_from_slice(&sequence.to_le_bytes());
    let sum = base::checksum(hive);
    hive[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&sum.to_le_bytes());
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
