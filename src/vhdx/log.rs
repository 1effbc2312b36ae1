//! The VHDX log (MS-VHDX 2.3): a ring of entries, each a set of 4 KiB metadata writes. A file
//! whose header names a log is replayed before anything else is read: the active sequence is
//! found as the specification says (the longest run of valid, consecutive entries whose head
//! names a tail inside it, the highest sequence number winning), and its writes are applied in
//! order. A log that holds no such sequence, or that says the file was longer, is an error.

use crate::bytes::{Guid, le32, le64};
use crate::vhdx::header::checksum;

/// Bytes of a log sector.
pub const SECTOR: u64 = 4096;
/// Writes below this offset (the identifier, headers, region tables' start) are refused.
const FIRST_LOGGED_OFFSET: u64 = 192 << 10;

/// One write of a log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogWrite {
    /// A 4 KiB sector.
    Data { offset: u64, bytes: Vec<u8> },
    /// `length` bytes of zeros.
    Zero { offset: u64, length: u64 },
}

impl LogWrite {
    /// Where the write lands, and how long it is.
    pub fn span(&self) -> (u64, u64) {
        match self {
            LogWrite::Data { offset, bytes } => (*offset, bytes.len() as u64),
            LogWrite::Zero { offset, length } => (*offset, *length),
        }
    }
}

/// A valid entry.
#[derive(Clone, Debug)]
struct Entry {
    /// Where it starts in the log.
    at: u64,
    length: u64,
    tail: u64,
    sequence: u64,
    flushed_file_offset: u64,
    last_file_offset: u64,
    writes: Vec<LogWrite>,
}

/// What a log replay does.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    /// The writes, in the order they apply.
    pub writes: Vec<LogWrite>,
    /// The file must be at least this long, or it was truncated after the log was written.
    pub flushed_file_offset: u64,
    /// The file is extended to at least this length.
    pub last_file_offset: u64,
    /// Entries replayed, and the head's sequence number.
    pub entries: usize,
    pub sequence: u64,
}

/// The entry at `at` of the ring `log` if it is valid for `guid`.
fn entry_at(log: &[u8], at: u64, guid: Guid) -> Option<Entry> {
    let len = log.len() as u64;
    let read = |from: u64, n: u64| -> Vec<u8> { (0..n).map(|i| log[((from + i) % len) as usize]).collect() };
    let head = read(at, 64);
    if &head[..4] != b"loge" {
        return None;
    }
    let (length, tail, sequence, count) =
        (le32(&head, 8) as u64, le32(&head, 12) as u64, le64(&head, 16), le32(&head, 24) as u64);
    if length < SECTOR || length % SECTOR != 0 || length > len || tail >= len || tail % SECTOR != 0 || sequence == 0 {
        return None;
    }
    if Guid::read(&head, 32) != guid {
        return None;
    }
    let descriptor_sectors = (64 + 32 * count).div_ceil(SECTOR);
    if descriptor_sectors * SECTOR > length {
        return None;
    }
    let bytes = read(at, length);
    if le32(&bytes, 4) != checksum(&bytes, 4) {
        return None;
    }
    let mut writes = Vec::with_capacity(count as usize);
    let mut data_sector = descriptor_sectors;
    for i in 0..count {
        let d = &bytes[(64 + 32 * i) as usize..(96 + 32 * i) as usize];
        let (offset, seq) = (le64(d, 16), le64(d, 24));
        if seq != sequence || offset % SECTOR != 0 || offset < FIRST_LOGGED_OFFSET {
            return None;
        }
        match &d[..4] {
            b"zero" => {
                let length = le64(d, 8);
                if !length.is_multiple_of(SECTOR) {
                    return None;
                }
                writes.push(LogWrite::Zero { offset, length });
            }
            b"desc" => {
                let at = (data_sector * SECTOR) as usize;
                let s = bytes.get(at..at + SECTOR as usize)?;
                let seq_of_sector = (le32(s, 4) as u64) << 32 | le32(s, 4092) as u64;
                if &s[..4] != b"data" || seq_of_sector != sequence {
                    return None;
                }
                let mut sector = Vec::with_capacity(SECTOR as usize);
                sector.extend_from_slice(&d[8..16]);
                sector.extend_from_slice(&s[8..4092]);
                sector.extend_from_slice(&d[4..8]);
                writes.push(LogWrite::Data { offset, bytes: sector });
                data_sector += 1;
            }
            _ => return None,
        }
    }
    if data_sector * SECTOR != length {
        return None;
    }
    Some(Entry {
        at,
        length,
        tail,
        sequence,
        flushed_file_offset: le64(&head, 48),
        last_file_offset: le64(&head, 56),
        writes,
    })
}

/// Whether `x` lies in the ring span from `from` for `span` bytes.
fn in_span(x: u64, from: u64, span: u64, len: u64) -> bool {
    (x + len - from) % len < span
}

/// The active sequence of the ring `log` for `guid`, as the writes to replay; an error when
/// the log holds none.
pub fn active_sequence(log: &[u8], guid: Guid) -> Result<Replay, String> {
    let len = log.len() as u64;
    if len == 0 || !len.is_multiple_of(SECTOR) {
        return Err(format!("a log of {len} bytes is not whole 4 KiB sectors"));
    }
    let mut best: Option<Vec<Entry>> = None;
    let (mut cur_tail, mut old_tail) = (0u64, 0u64);
    loop {
        let mut current: Vec<Entry> = Vec::new();
        let (mut head, mut span) = (cur_tail, 0u64);
        while let Some(e) = entry_at(log, head, guid) {
            if current.last().is_some_and(|l| e.sequence != l.sequence + 1) || span + e.length > len {
                break;
            }
            head = (head + e.length) % len;
            span += e.length;
            current.push(e);
        }
        let valid = current.last().is_some_and(|h| in_span(h.tail, cur_tail, span, len));
        if valid && current.last().map(|h| h.sequence) > best.as_ref().and_then(|b| b.last()).map(|h| h.sequence) {
            best = Some(current);
        }
        cur_tail = if valid { head } else { (cur_tail + SECTOR) % len };
        // The scan ends once it wraps around the ring.
        if cur_tail <= old_tail {
            break;
        }
        old_tail = cur_tail;
    }
    let entries = best.ok_or("no valid sequence of log entries: the log cannot be replayed")?;
    let head = entries.last().ok_or("an empty log sequence")?;
    let from = entries.iter().position(|e| e.at == head.tail).unwrap_or(0);
    Ok(Replay {
        writes: entries[from..].iter().flat_map(|e| e.writes.iter().cloned()).collect(),
        flushed_file_offset: head.flushed_file_offset,
        last_file_offset: head.last_file_offset,
        entries: entries.len() - from,
        sequence: head.sequence,
    })
}

/// Encodes one log entry at ring offset `at` (for writers): `writes` are whole 4 KiB sectors
/// or zero ranges.
pub fn encode_entry(guid: Guid, sequence: u64, tail: u64, file_offsets: (u64, u64), writes: &[LogWrite]) -> Vec<u8> {
    let count = writes.len() as u64;
    let descriptor_sectors = (64 + 32 * count).div_ceil(SECTOR);
    let data: Vec<&Vec<u8>> = writes
        .iter()
        .filter_map(|w| match w {
            LogWrite::Data { bytes, .. } => Some(bytes),
            LogWrite::Zero { .. } => None,
        })
        .collect();
    let length = (descriptor_sectors + data.len() as u64) * SECTOR;
    let mut b = vec![0u8; length as usize];
    b[..4].copy_from_slice(b"loge");
    b[8..12].copy_from_slice(&(length as u32).to_le_bytes());
    b[12..16].copy_from_slice(&(tail as u32).to_le_bytes());
    b[16..24].copy_from_slice(&sequence.to_le_bytes());
    b[24..28].copy_from_slice(&(count as u32).to_le_bytes());
    b[32..48].copy_from_slice(&guid.0);
    b[48..56].copy_from_slice(&file_offsets.0.to_le_bytes());
    b[56..64].copy_from_slice(&file_offsets.1.to_le_bytes());
    let mut data_sector = descriptor_sectors as usize;
    for (i, w) in writes.iter().enumerate() {
        let d = 64 + 32 * i;
        match w {
            LogWrite::Zero { offset, length } => {
                b[d..d + 4].copy_from_slice(b"zero");
                b[d + 8..d + 16].copy_from_slice(&length.to_le_bytes());
                b[d + 16..d + 24].copy_from_slice(&offset.to_le_bytes());
            }
            LogWrite::Data { offset, bytes } => {
                b[d..d + 4].copy_from_slice(b"desc");
                b[d + 4..d + 8].copy_from_slice(&bytes[4092..4096]);
                b[d + 8..d + 16].copy_from_slice(&bytes[..8]);
                b[d + 16..d + 24].copy_from_slice(&offset.to_le_bytes());
                let s = data_sector * SECTOR as usize;
                b[s..s + 4].copy_from_slice(b"data");
                b[s + 4..s + 8].copy_from_slice(&((sequence >> 32) as u32).to_le_bytes());
                b[s + 8..s + 4092].copy_from_slice(&bytes[8..4092]);
                b[s + 4092..s + 4096].copy_from_slice(&(sequence as u32).to_le_bytes());
                data_sector += 1;
            }
        }
        b[d + 24..d + 32].copy_from_slice(&sequence.to_le_bytes());
    }
    let crc = checksum(&b, 4);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sector(fill: u8) -> Vec<u8> {
        (0..4096u32).map(|i| fill ^ (i as u8)).collect()
    }

    fn ring_with(entries: &[(u64, u64, u64, Vec<LogWrite>)], guid: Guid) -> Vec<u8> {
        let mut log = vec![0u8; 1 << 20];
        for (at, seq, tail, writes) in entries {
            let e = encode_entry(guid, *seq, *tail, (4 << 20, 4 << 20), writes);
            for (i, b) in e.iter().enumerate() {
                let n = log.len();
                log[(*at as usize + i) % n] = *b;
            }
        }
        log
    }

    #[test]
    fn the_active_sequence_replays_in_order() {
        let g = Guid([7; 16]);
        let w1 = vec![LogWrite::Data { offset: 2 << 20, bytes: sector(1) }];
        let w2 = vec![
            LogWrite::Zero { offset: 3 << 20, length: 8192 },
            LogWrite::Data { offset: 2 << 20, bytes: sector(2) },
        ];
        let log = ring_with(&[(0, 10, 0, w1.clone()), (8192, 11, 0, w2.clone())], g);
        let r = active_sequence(&log, g).unwrap();
        assert_eq!((r.entries, r.sequence, r.last_file_offset), (2, 11, 4 << 20));
        assert_eq!(r.writes, [w1, w2].concat());
    }

    #[test]
    fn the_tail_skips_entries_already_applied_and_a_wrapped_entry_is_read_whole() {
        let g = Guid([7; 16]);
        let old = vec![LogWrite::Data { offset: 2 << 20, bytes: sector(1) }];
        let new = vec![LogWrite::Data { offset: 5 << 20, bytes: sector(3) }];
        // The newer entry starts 4 KiB before the ring's end and wraps; its tail names itself.
        let at = (1 << 20) - 4096;
        let log = ring_with(&[(at - 8192, 4, at - 8192, old), (at, 5, at, new.clone())], g);
        let r = active_sequence(&log, g).unwrap();
        assert_eq!((r.entries, r.sequence), (1, 5));
        assert_eq!(r.writes, new);
    }

    #[test]
    fn damage_or_another_log_guid_leaves_nothing_to_replay() {
        let g = Guid([7; 16]);
        let log = ring_with(&[(0, 3, 0, vec![LogWrite::Data { offset: 2 << 20, bytes: sector(9) }])], g);
        assert!(active_sequence(&log, Guid([8; 16])).is_err(), "a stale log of another GUID");
        let mut torn = log.clone();
        torn[4096 + 100] ^= 1;
        assert!(active_sequence(&torn, g).is_err(), "a torn data sector");
    }
}
