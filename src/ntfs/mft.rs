//! The master file table: where its records are (its own `$DATA` runs, followed through its
//! attribute list when it has one), and the parallel pass that reads every record.
//!
//! The pass splits the MFT's runs into 1 MiB chunks; each rayon worker reads its chunk with one
//! positional read and parses the records in it. This replaces one `Ntfs::file` call per
//! record, each of which re-walks `$MFT`'s runs.

use rayon::prelude::*;
use serde::Serialize;

use crate::disk::boot_sector::NtfsBootSector;
use crate::error::{Error, Result, Space};
use crate::ntfs::file::{FileEntry, Stream};
use crate::ntfs::record::VOLUME_RECORD;
use crate::ntfs::record::{
    self, AttributeBody, FileName, FileRecord, ListEntry, Slot, attr_type, parse_attribute_list,
};
use crate::ntfs::runs::Run;
use crate::ntfs::stream::read_runs;
use crate::vhd::device::BlockDevice;

/// Bytes of MFT read per worker task.
const CHUNK_BYTES: u64 = 1 << 20;
/// Chunks parsed together before their results are handed on in order (64 MiB of records).
const WINDOW_CHUNKS: usize = 64;
/// Largest non-resident attribute list read (Windows keeps them far smaller).
pub const MAX_ATTRIBUTE_LIST: u64 = 16 << 20;
/// Names and streams of one file an index tells apart (they are numbered in 16 bits).
pub const MAX_INDEXED: usize = 1 << 16;

/// A record that could not be used, with where it is.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RecordProblem {
    pub record: u64,
    /// Partition offset of the bad structure.
    pub offset: u64,
    pub problem: String,
}

/// What the index needs from one in-use record.
#[derive(Clone, Debug)]
pub struct RecordSummary {
    pub number: u64,
    pub sequence: u16,
    pub flags: u16,
    pub base: Option<u64>,
    pub names: Vec<FileName>,
    /// `$STANDARD_INFORMATION` file attributes.
    pub file_attributes: Option<u32>,
    /// Each attribute extent of the record (resident values other than data are dropped).
    pub extents: Vec<Stream>,
    /// Entries of a resident attribute list.
    pub list: Vec<ListEntry>,
    /// Whether the record has an `$ATTRIBUTE_LIST` (resident or not): its file continues in
    /// extension records.
    pub has_attribute_list: bool,
    /// `$VOLUME_INFORMATION` (major, minor, flags), in `$Volume`.
    pub volume_information: Option<(u8, u8, u16)>,
    /// `$VOLUME_NAME`, in `$Volume`.
    pub volume_name: Option<String>,
}

impl RecordSummary {
    /// Keeps what the index needs of a parsed record.
    pub fn from_record(number: u64, r: FileRecord<'_>) -> Self {
        // Exact capacities: the vectors become boxed slices without reallocating.
        let count = |f: &dyn Fn(&record::Attribute<'_>) -> bool| r.attributes.iter().filter(|a| f(a)).count();
        let names = count(&|a| a.ty == attr_type::FILE_NAME);
        let kept = count(&|a| {
            !matches!(a.body, AttributeBody::Resident { .. })
                || matches!(a.ty, attr_type::DATA | attr_type::REPARSE_POINT | attr_type::ATTRIBUTE_LIST)
        });
        let mut s = RecordSummary {
            number,
            sequence: r.sequence,
            flags: r.flags,
            base: r.base.filter(|&b| b != number),
            names: Vec::with_capacity(names),
            file_attributes: None,
            extents: Vec::with_capacity(kept),
            list: Vec::new(),
            has_attribute_list: false,
            volume_information: None,
            volume_name: None,
        };
        for a in r.attributes {
            s.has_attribute_list |= a.ty == attr_type::ATTRIBUTE_LIST;
            let mut compression_unit = 0;
            let (resident, lowest_vcn, data_size, allocated_size, initialized_size, runs) = match a.body {
                AttributeBody::Resident { value } => {
                    match a.ty {
                        attr_type::FILE_NAME => s.names.extend(FileName::parse(value)),
                        attr_type::STANDARD_INFORMATION if value.len() >= 36 => {
                            s.file_attributes = Some(u32::from_le_bytes([value[32], value[33], value[34], value[35]]));
                        }
                        attr_type::ATTRIBUTE_LIST => s.list = parse_attribute_list(value).0,
                        attr_type::VOLUME_INFORMATION if value.len() >= 12 => {
                            s.volume_information =
                                Some((value[8], value[9], u16::from_le_bytes([value[10], value[11]])));
                        }
                        attr_type::VOLUME_NAME => {
                            let units: Vec<u16> =
                                value.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
                            s.volume_name = Some(String::from_utf16_lossy(&units));
                        }
                        _ => {}
                    }
                    // Other resident attributes own no clusters and are not listed: skip them
                    // to keep the index small.
                    if !matches!(a.ty, attr_type::DATA | attr_type::REPARSE_POINT | attr_type::ATTRIBUTE_LIST) {
                        continue;
                    }
                    let n = value.len() as u64;
                    (true, 0, n, n, n, Vec::new())
                }
                AttributeBody::NonResident(nr) => {
                    compression_unit = nr.compression_unit.min(u8::MAX as u16) as u8;
                    (false, nr.lowest_vcn, nr.data_size, nr.allocated_size, nr.initialized_size, nr.runs)
                }
            };
            s.extents.push(Stream {
                ty: a.ty,
                name: a.name.into_boxed_str(),
                flags: a.flags,
                resident,
                lowest_vcn,
                data_size,
                allocated_size,
                initialized_size,
                runs,
                compression_unit,
                record: number,
            });
        }
        s
    }
}

/// `$Volume`'s `$VOLUME_INFORMATION` (major, minor, flags) and `$VOLUME_NAME`.
pub type VolumeRecord = (Option<(u8, u8, u16)>, Option<String>);

/// How much of each file an index keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IndexDetail {
    /// Every file with its names and streams (listing, extraction, registry access).
    #[default]
    Files,
    /// Which file owns each cluster, without the names and streams of plain files (not
    /// directories nor metadata): what compaction and the block map need, in a few bytes per
    /// record; a plain file's name is read from its record when a report shows it.
    Clusters,
}

/// A cluster run of a plain file an index at [`IndexDetail::Clusters`] does not keep: 24
/// bytes, as millions of them may be held at once.
#[derive(Clone, Copy, Debug)]
pub struct OwnedRun {
    pub lcn: u64,
    pub clusters: u64,
    /// The file's base record (48 bits, as a file reference holds it) and the stream's place
    /// among the file's streams (16 bits).
    owner: u64,
}

impl OwnedRun {
    fn new(lcn: u64, clusters: u64, record: u64, stream: u16) -> Self {
        OwnedRun { lcn, clusters, owner: (record & RECORD_MASK) << 16 | stream as u64 }
    }

    /// The file's base record.
    pub fn record(&self) -> u64 {
        self.owner >> 16
    }

    /// The stream's place among the file's streams.
    pub fn stream(&self) -> u16 {
        self.owner as u16
    }
}

/// The record number bits of a file reference.
const RECORD_MASK: u64 = (1 << 48) - 1;

/// What the parallel pass found.
#[derive(Default)]
pub struct ScanResult {
    /// Files held in one record (no attribute list), in record order; at
    /// [`IndexDetail::Clusters`], only directories and metadata files.
    pub files: Vec<FileEntry>,
    /// At [`IndexDetail::Clusters`], the runs of the plain files not kept, and their number.
    pub owned: Vec<OwnedRun>,
    pub plain_files: u64,
    /// Records that must be merged with others: bases with an attribute list, extensions.
    pub pending: Vec<RecordSummary>,
    pub problems: Vec<RecordProblem>,
    /// What `$Volume` says of the volume.
    pub volume: Option<VolumeRecord>,
}

impl ScanResult {
    fn append(&mut self, other: ScanResult) {
        self.files.extend(other.files);
        self.owned.extend(other.owned);
        self.plain_files += other.plain_files;
        self.pending.extend(other.pending);
        self.problems.extend(other.problems);
        self.volume = self.volume.take().or(other.volume);
    }
}

/// Where the MFT's records are.
#[derive(Clone, Debug)]
pub struct MftLayout {
    pub record_size: u64,
    pub cluster_size: u64,
    pub total_clusters: u64,
    /// The MFT's `$DATA` runs, VCN order, extents from every record merged.
    pub runs: Vec<Run>,
    /// Number of record slots the MFT holds.
    pub record_count: u64,
    /// The attribute list entries of `$MFT`, if it has one.
    pub attribute_list: Vec<ListEntry>,
}

impl MftLayout {
    /// Partition byte ranges `(offset, length)` holding MFT bytes `[start, start + len)`, or
    /// `None` where a run does not map them (sparse or past the runs).
    pub fn pieces(&self, start: u64, len: u64) -> Option<Vec<(u64, u64)>> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut at = start;
        let end = start.checked_add(len)?;
        while at < end {
            let vcn = at / self.cluster_size;
            let run = self.runs.iter().find(|r| r.vcn <= vcn && vcn < r.vcn + r.length)?;
            let run_end = (run.vcn + run.length) * self.cluster_size;
            let n = run_end.min(end) - at;
            let offset = run.lcn? * self.cluster_size + (at - run.vcn * self.cluster_size);
            match out.last_mut() {
                Some(last) if last.0 + last.1 == offset => last.1 += n,
                _ => out.push((offset, n)),
            }
            at += n;
        }
        Some(out)
    }

    /// The records with a byte in partition range `[start, end)`, with how many of their bytes
    /// lie there.
    pub fn records_in(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for run in &self.runs {
            let Some(lcn) = run.lcn else { continue };
            let (run_start, run_end) = (lcn * self.cluster_size, (lcn + run.length) * self.cluster_size);
            let (a, b) = (start.max(run_start), end.min(run_end));
            if a >= b {
                continue;
            }
            // MFT byte offsets of the overlap.
            let (x, y) = (run.vcn * self.cluster_size + (a - run_start), run.vcn * self.cluster_size + (b - run_start));
            let mut at = x;
            while at < y {
                let record = at / self.record_size;
                let next = ((record + 1) * self.record_size).min(y);
                match out.last_mut() {
                    Some(last) if last.0 == record => last.1 += next - at,
                    _ => out.push((record, next - at)),
                }
                at = next;
            }
        }
        out
    }

    /// Partition offset of record `n` when it lies in one piece.
    pub fn record_offset(&self, n: u64) -> Option<u64> {
        match self.pieces(n.checked_mul(self.record_size)?, self.record_size)?.as_slice() {
            [(offset, _)] => Some(*offset),
            _ => None,
        }
    }

    /// The raw bytes of record `n`, gathered across runs when it straddles two of them.
    pub fn read_record_bytes(&self, view: &dyn BlockDevice, n: u64) -> Result<Vec<u8>, record::RecordError> {
        let missing = || record::RecordError { at: 0, problem: format!("no $MFT run maps record {n}") };
        let pieces =
            self.pieces(n.checked_mul(self.record_size).ok_or_else(missing)?, self.record_size).ok_or_else(missing)?;
        let mut b = vec![0u8; self.record_size as usize];
        let mut at = 0usize;
        for (offset, len) in pieces {
            view.read_at(offset, &mut b[at..at + len as usize])
                .map_err(|e| record::RecordError { at, problem: e.to_string() })?;
            at += len as usize;
        }
        Ok(b)
    }

    /// The names of in-use record `n` (DOS aliases left out when it has others), read from
    /// the volume: what an index at [`IndexDetail::Clusters`] did not keep.
    pub fn read_names(&self, view: &dyn BlockDevice, n: u64) -> Result<Vec<FileName>, record::RecordError> {
        let mut b = self.read_record_bytes(view, n)?;
        let r = parse_fixed(&mut b, self.total_clusters)?;
        if !r.in_use() {
            return Err(record::RecordError { at: 0, problem: format!("record {n} is not in use") });
        }
        Ok(merge_file(vec![RecordSummary::from_record(n, r)]).names.into_vec())
    }

    /// Reads $MFT's record 0 and, through its attribute list, every extent of its `$DATA`.
    pub fn read(view: &dyn BlockDevice, partition: u32, bpb: &NtfsBootSector) -> Result<Self> {
        let cluster_size = bpb.cluster_size as u64;
        let total_clusters = bpb.total_clusters();
        let record_size = bpb.file_record_size as u64;
        let corrupt = |offset: u64, problem: String| {
            Error::corrupt(view.source(), "$MFT record 0", Space::Partition(partition), offset, problem)
        };
        let mft_at = bpb.mft_lcn * cluster_size;
        let record0_bytes =
            read_record(view, mft_at, record_size).map_err(|e| corrupt(mft_at + e.at as u64, e.problem))?;
        let record0 =
            record::parse(&record0_bytes, total_clusters).map_err(|e| corrupt(mft_at + e.at as u64, e.problem))?;
        let mut layout = MftLayout {
            record_size,
            cluster_size,
            total_clusters,
            runs: Vec::new(),
            record_count: 0,
            attribute_list: Vec::new(),
        };
        let mut extents: Vec<(u64, u64, Vec<Run>)> = Vec::new();
        let mut data_size = None;
        let mut collect = |r: &FileRecord<'_>, extents: &mut Vec<(u64, u64, Vec<Run>)>| {
            for a in &r.attributes {
                if let (attr_type::DATA, true, AttributeBody::NonResident(nr)) = (a.ty, a.name.is_empty(), &a.body) {
                    if nr.lowest_vcn == 0 {
                        data_size = Some(nr.data_size);
                    }
                    if !extents.iter().any(|e| e.0 == nr.lowest_vcn) {
                        extents.push((nr.lowest_vcn, nr.highest_vcn, nr.runs.clone()));
                    }
                }
            }
        };
        collect(&record0, &mut extents);
        // An attribute list on $MFT itself: its $DATA continues in other records, which the
        // runs known so far must reach. Repeat while that finds new extents.
        if let Some(list) = record0.attributes.iter().find(|a| a.ty == attr_type::ATTRIBUTE_LIST) {
            let value = match &list.body {
                AttributeBody::Resident { value } => value.to_vec(),
                AttributeBody::NonResident(nr) => {
                    if nr.data_size > MAX_ATTRIBUTE_LIST {
                        return Err(corrupt(
                            mft_at + list.offset as u64,
                            format!("attribute list of {} bytes", nr.data_size),
                        ));
                    }
                    read_runs(view, partition, cluster_size, &nr.runs, nr.data_size, nr.initialized_size)?
                }
            };
            let (entries, bad) = parse_attribute_list(&value);
            if let Some(e) = bad {
                return Err(corrupt(mft_at + list.offset as u64, format!("attribute list: {}", e.problem)));
            }
            layout.attribute_list = entries.clone();
            let wanted: Vec<&ListEntry> =
                entries.iter().filter(|e| e.ty == attr_type::DATA && e.name.is_empty() && e.record != 0).collect();
            let mut pending: Vec<&ListEntry> = wanted;
            while !pending.is_empty() {
                layout.runs = merged(&extents);
                let before = pending.len();
                let mut still = Vec::new();
                for e in pending {
                    if layout.pieces(e.record * record_size, record_size).is_none() {
                        still.push(e);
                        continue;
                    }
                    let bad = |err: record::RecordError| {
                        let at = layout.record_offset(e.record).unwrap_or(0);
                        Error::corrupt(
                            view.source(),
                            format!("$MFT extension record {}", e.record),
                            Space::Partition(partition),
                            at + err.at as u64,
                            err.problem,
                        )
                    };
                    let mut bytes = layout.read_record_bytes(view, e.record).map_err(bad)?;
                    let r = parse_fixed(&mut bytes, total_clusters).map_err(bad)?;
                    collect(&r, &mut extents);
                }
                if still.len() == before {
                    return Err(corrupt(
                        mft_at,
                        format!("attribute list names record {} that no known $MFT run reaches", still[0].record),
                    ));
                }
                pending = still;
            }
        }
        layout.runs = merged(&extents);
        let mapped = layout.runs.iter().map(|r| r.vcn + r.length).max().unwrap_or(0) * cluster_size;
        let data_size = data_size.ok_or_else(|| corrupt(mft_at, "no unnamed non-resident $DATA".into()))?;
        layout.record_count = data_size.min(mapped) / record_size;
        if layout.record_count < 16 {
            return Err(corrupt(mft_at, format!("$MFT holds only {} records", layout.record_count)));
        }
        Ok(layout)
    }

    /// Reads every record slot in parallel. Records complete in themselves become files right
    /// away in the worker; the few that span several records wait for the merge.
    pub fn scan(&self, view: &dyn BlockDevice, detail: IndexDetail) -> ScanResult {
        let mut parts = Vec::new();
        let Ok(()) = self.scan_in_order::<std::convert::Infallible>(view, detail, &mut |part| {
            parts.push(part);
            Ok(())
        });
        // Sized once: the parts are moved in without the vectors doubling as they grow.
        let mut all = ScanResult {
            files: Vec::with_capacity(parts.iter().map(|p| p.files.len()).sum()),
            owned: Vec::with_capacity(parts.iter().map(|p| p.owned.len()).sum()),
            ..ScanResult::default()
        };
        for p in parts {
            all.append(p);
        }
        all
    }

    /// Reads every record slot, a window of chunks at a time parsed in parallel, and hands
    /// each chunk's result to `each` in record order, as soon as its window is done: a caller
    /// can start on the first files while later ones are read.
    pub fn scan_in_order<E>(
        &self,
        view: &dyn BlockDevice,
        detail: IndexDetail,
        each: &mut dyn FnMut(ScanResult) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        thread_local! {
            // One read buffer per worker thread, reused for every chunk it takes (rayon's
            // map_init would make a fresh, zero-filled buffer per split).
            static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        for window in self.chunks().chunks(WINDOW_CHUNKS) {
            let parts: Vec<ScanResult> = window
                .par_iter()
                .map(|chunk| {
                    let mut out = ScanResult::default();
                    match *chunk {
                        Chunk::Contiguous { first, at, count } => BUFFER
                            .with(|b| self.scan_chunk(view, &mut b.borrow_mut(), (first, at, count), detail, &mut out)),
                        Chunk::Straddling(n) => match self.read_record_bytes(view, n) {
                            Ok(mut b) => {
                                let at = self.pieces(n * self.record_size, self.record_size).map_or(0, |p| p[0].0);
                                self.scan_record(n, &mut b, at, detail, &mut out)
                            }
                            Err(e) => out.problems.push(RecordProblem { record: n, offset: 0, problem: e.problem }),
                        },
                    }
                    out
                })
                .collect();
            for part in parts {
                each(part)?;
            }
        }
        Ok(())
    }

    /// Pieces of work in record order: runs of at most [`CHUNK_BYTES`] of records contiguous on
    /// disk, and single records that straddle two runs (small clusters, fragmented $MFT).
    fn chunks(&self) -> Vec<Chunk> {
        let per_chunk = (CHUNK_BYTES / self.record_size).max(1);
        let mut out = Vec::new();
        let mut n = 0;
        while n < self.record_count {
            let Some(pieces) = self.pieces(n * self.record_size, self.record_size) else {
                n += 1;
                continue;
            };
            if pieces.len() > 1 {
                out.push(Chunk::Straddling(n));
                n += 1;
                continue;
            }
            // Extend while the next records follow on disk in the same run.
            let at = pieces[0].0;
            let vcn = n * self.record_size / self.cluster_size;
            let run = self.runs.iter().find(|r| r.vcn <= vcn && vcn < r.vcn + r.length);
            let run_end = run.map_or(0, |r| (r.vcn + r.length) * self.cluster_size);
            let fit = (run_end / self.record_size).min(self.record_count).saturating_sub(n).max(1);
            let count = fit.min(per_chunk);
            out.push(Chunk::Contiguous { first: n, at, count });
            n += count;
        }
        out
    }

    /// Parses `count` records from record `first`, contiguous at partition offset `at`.
    fn scan_chunk(
        &self,
        view: &dyn BlockDevice,
        buf: &mut Vec<u8>,
        (first, at, count): (u64, u64, u64),
        detail: IndexDetail,
        out: &mut ScanResult,
    ) {
        let rs = self.record_size as usize;
        buf.resize(count as usize * rs, 0);
        if let Err(e) = view.read_at(at, buf) {
            out.problems.push(RecordProblem {
                record: first,
                offset: at,
                problem: format!("cannot read {count} records: {e}"),
            });
            return;
        }
        for i in 0..count as usize {
            self.scan_record(first + i as u64, &mut buf[i * rs..(i + 1) * rs], at + (i * rs) as u64, detail, out);
        }
    }

    /// Parses one record slot found at partition offset `offset`.
    fn scan_record(&self, number: u64, slot: &mut [u8], offset: u64, detail: IndexDetail, out: &mut ScanResult) {
        match record::slot_kind(slot) {
            Slot::Empty => return,
            Slot::Bad => {
                out.problems.push(RecordProblem { record: number, offset, problem: "record marked BAAD".into() });
                return;
            }
            Slot::File => {}
        }
        // An unused record with a torn update sequence is harmless.
        let in_use = u16::from_le_bytes([slot[22], slot[23]]) & record::FLAG_IN_USE != 0;
        match parse_fixed(slot, self.total_clusters) {
            Ok(r) if r.in_use() => {
                let mut summary = RecordSummary::from_record(number, r);
                if number == VOLUME_RECORD {
                    out.volume = Some((summary.volume_information, summary.volume_name.take()));
                }
                if summary.base.is_none() && !summary.has_attribute_list {
                    let file = merge_file(vec![summary]);
                    if detail == IndexDetail::Clusters && is_plain(&file) {
                        out.plain_files += 1;
                        out.owned.extend(owned_runs(&file));
                    } else {
                        out.files.push(file);
                    }
                } else {
                    out.pending.push(summary);
                }
            }
            Ok(_) => {}
            Err(e) if in_use => {
                out.problems.push(RecordProblem { record: number, offset: offset + e.at as u64, problem: e.problem })
            }
            Err(_) => {}
        }
    }
}

/// Files of the root an index reads whatever its detail (`hiberfil.sys` tells whether the
/// volume is hibernated), kept with the system files.
const SYSTEM_ROOT_FILES: [&str; 3] = ["hiberfil.sys", "pagefile.sys", "swapfile.sys"];

/// Whether a file is neither a directory, metadata nor a system file of the root (records
/// below 24 are reserved; `$`-names are metadata in the root and `$Extend`, and kept anywhere
/// to be safe).
fn is_plain(f: &FileEntry) -> bool {
    let system =
        |n: &FileName| n.parent == record::ROOT && SYSTEM_ROOT_FILES.iter().any(|s| n.name.eq_ignore_ascii_case(s));
    f.record >= 24 && !f.directory && !f.names.iter().any(|n| n.name.starts_with('$') || system(n))
}

/// The cluster runs of a file's streams.
fn owned_runs(f: &FileEntry) -> impl Iterator<Item = OwnedRun> + '_ {
    f.streams.iter().enumerate().take(MAX_INDEXED).flat_map(move |(si, s)| {
        s.runs.iter().filter_map(move |r| r.lcn.map(|lcn| OwnedRun::new(lcn, r.length, f.record, si as u16)))
    })
}

/// A piece of the parallel pass.
enum Chunk {
    /// `count` records from `first`, contiguous at partition offset `at`.
    Contiguous { first: u64, at: u64, count: u64 },
    /// One record split across two runs.
    Straddling(u64),
}

/// Runs of several extents in VCN order.
fn merged(extents: &[(u64, u64, Vec<Run>)]) -> Vec<Run> {
    let mut sorted: Vec<&(u64, u64, Vec<Run>)> = extents.iter().collect();
    sorted.sort_by_key(|e| e.0);
    sorted.iter().flat_map(|e| e.2.iter().copied()).collect()
}

/// Reads, fixes up and parses the record at partition offset `at`.
fn read_record(view: &dyn BlockDevice, at: u64, size: u64) -> Result<Vec<u8>, record::RecordError> {
    let mut b = vec![0u8; size as usize];
    view.read_at(at, &mut b).map_err(|e| record::RecordError { at: 0, problem: e.to_string() })?;
    record::apply_fixups(&mut b)?;
    Ok(b)
}

/// Applies fixups to a record's bytes and parses it.
fn parse_fixed(b: &mut [u8], total_clusters: u64) -> Result<FileRecord<'_>, record::RecordError> {
    record::apply_fixups(b)?;
    record::parse(b, total_clusters)
}

/// One file from its base record (first) and extension records.
pub fn merge_file(parts: Vec<RecordSummary>) -> FileEntry {
    let (record, sequence, flags, file_attributes) =
        (parts[0].number, parts[0].sequence, parts[0].flags, parts[0].file_attributes);
    let mut parts = parts.into_iter();
    let first = parts.next().map(|p| (p.names, p.extents));
    let (mut names, mut extents) = first.unwrap_or_default();
    for p in parts {
        names.extend(p.names);
        extents.extend(p.extents);
    }
    if names.iter().any(|n| !n.is_dos_alias()) {
        names.retain(|n| !n.is_dos_alias());
    }
    names.dedup_by(|a, b| a.parent == b.parent && a.name == b.name);
    extents.sort_by(|a, b| (a.ty, &a.name, a.lowest_vcn).cmp(&(b.ty, &b.name, b.lowest_vcn)));
    let mut streams: Vec<Stream> = Vec::with_capacity(extents.len());
    for e in extents {
        match streams.last_mut() {
            Some(s) if s.ty == e.ty && s.name == e.name && !e.resident && !s.resident && e.lowest_vcn > 0 => {
                s.runs.extend(e.runs);
            }
            _ => streams.push(e),
        }
    }
    FileEntry {
        record,
        sequence,
        directory: flags & record::FLAG_DIRECTORY != 0,
        file_attributes: file_attributes.unwrap_or(0),
        names: names.into_boxed_slice(),
        streams: streams.into_boxed_slice(),
    }
}
