//! Sanitization: what is left of deleted and stale data once free clusters are zeroed, removed
//! in the same pass as compaction. Planned from the NTFS index as a list of disk patches that
//! the compaction source applies to what it reads (so the writer, its digests and
//! verification all see the sanitized bytes):
//!
//! - the slack of every data stream: its clusters past the valid data length;
//! - `pagefile.sys`, `swapfile.sys` and `hiberfil.sys` in the root: kept, their data zeroed
//!   (Windows recreates them);
//! - `$LogFile` of a clean volume: filled with 0xFF, the "empty log" Windows and ntfs-3g
//!   accept;
//! - FILE records: a free record becomes an empty one (its header, sequence number and update
//!   sequence kept, one end marker), a record in use loses the bytes past its used size;
//! - INDX records of directory indexes: the bytes past the entries in use.
//!
//! Records are patched with their update sequence re-applied, so every sector of a record
//! still carries its sequence number.

use rayon::prelude::*;
use serde::Serialize;

use crate::bytes::{le16, le32};
use crate::error::{Error, Result};
use crate::map::ImageMap;
use crate::ntfs::record::{self, ROOT, attr_type};
use crate::ntfs::runs::Run;
use crate::ntfs::{FileEntry, IndexDetail, NtfsIndex, Stream};
use crate::pass::disk_write::DiskWrite;
use crate::vhd::device::BlockDevice;

/// Files whose contents Windows recreates: kept, zeroed.
const RECREATED_FILES: [&str; 3] = ["pagefile.sys", "swapfile.sys", "hiberfil.sys"];
/// Record number of `$LogFile`.
const LOGFILE_RECORD: u64 = 2;
/// Byte of an empty `$LogFile`.
const EMPTY_LOG: u8 = 0xFF;
/// The first record that can hold a user's file (the ones before belong to NTFS).
const FIRST_USER_RECORD: u64 = 16;
/// Records read at once while planning.
const RECORDS_PER_READ: u64 = 256;

/// New bytes for a disk range.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Patch {
    /// `len` bytes of `byte`.
    Fill { len: u64, byte: u8 },
    /// These bytes.
    Bytes(Vec<u8>),
    /// `len` bytes of whole records of `size` bytes, each sanitized as it is read (so no
    /// copy of a large MFT is held).
    Records { len: u64, size: u64, kind: RecordKind },
}

/// Which records a [`Patch::Records`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RecordKind {
    File,
    Index,
}

impl RecordKind {
    /// The sanitized bytes of one record, when they differ.
    fn sanitize(self, disk: &[u8]) -> Option<Vec<u8>> {
        match self {
            RecordKind::File => sanitized_record(disk).map(|(b, _)| b),
            RecordKind::Index => sanitized_index_record(disk),
        }
    }
}

impl Patch {
    fn len(&self) -> u64 {
        match self {
            Patch::Fill { len, .. } | Patch::Records { len, .. } => *len,
            Patch::Bytes(b) => b.len() as u64,
        }
    }
}

/// What sanitization changes, for the report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SanitizeSummary {
    /// Bytes of stream slack zeroed (clusters past a stream's valid data).
    pub slack_bytes: u64,
    /// Bytes of `pagefile.sys`, `swapfile.sys` and `hiberfil.sys` zeroed.
    pub recreated_file_bytes: u64,
    /// Bytes of `$LogFile` emptied (0 when the volume is dirty: its log is kept).
    pub logfile_bytes: u64,
    /// Free FILE records emptied.
    pub free_records: u64,
    /// FILE records in use whose unused tail was zeroed.
    pub record_tails: u64,
    /// INDX records whose free space was zeroed.
    pub index_records: u64,
}

/// The patches, sorted by disk offset and disjoint.
#[derive(Clone, Debug, Default)]
pub struct Sanitization {
    patches: Vec<(u64, Patch)>,
    /// What they do.
    pub summary: SanitizeSummary,
}

impl Sanitization {
    /// Plans the sanitization of every NTFS volume of `map`.
    pub fn plan(map: &ImageMap<'_>) -> Result<Self> {
        let mut all = Sanitization::default();
        for (partition, index) in map.ntfs() {
            if index.detail() != IndexDetail::Files {
                return Err(Error::internal(
                    "sanitization needs every file's streams (an index of clusters was built)",
                ));
            }
            let mut volume = Volume {
                device: map.image,
                base: partition.start(),
                index,
                patches: Vec::new(),
                summary: SanitizeSummary::default(),
            };
            volume.plan()?;
            all.patches.append(&mut volume.patches);
            add(&mut all.summary, &volume.summary);
        }
        all.patches.sort_by_key(|(at, _)| *at);
        all.patches = disjoint(std::mem::take(&mut all.patches));
        Ok(all)
    }

    /// Applies the patches to `buf`, read at disk offset `offset` of `disk` (the unpatched
    /// disk, read again for a record the buffer holds only part of).
    pub fn apply(&self, disk: &dyn BlockDevice, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset + buf.len() as u64;
        let first = self.patches.partition_point(|(at, p)| at + p.len() <= offset);
        for (at, patch) in self.patches[first..].iter().take_while(|(at, _)| *at < end) {
            let (a, z) = ((*at).max(offset), (at + patch.len()).min(end));
            match patch {
                Patch::Fill { byte, .. } => buf[(a - offset) as usize..(z - offset) as usize].fill(*byte),
                Patch::Bytes(b) => buf[(a - offset) as usize..(z - offset) as usize]
                    .copy_from_slice(&b[(a - at) as usize..(z - at) as usize]),
                Patch::Records { size, kind, .. } => {
                    let mut r = at + (a - at) / size * size;
                    while r < z {
                        apply_record(disk, *kind, r, *size, offset, buf)?;
                        r += size;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Sanitization as writes to make in place: journaled writes, and zero ranges.
pub type InPlaceWrites = (Vec<DiskWrite>, Vec<(u64, u64)>);

impl Sanitization {
    /// The patches as writes to make in place: record rewrites and fills other than zeros,
    /// which must land whole (a torn record is damage), as journaled writes; fills of zeros,
    /// harmless if cut short, as ranges.
    pub fn into_writes(self, disk: &dyn BlockDevice) -> Result<InPlaceWrites> {
        let mut journaled = Vec::new();
        let mut zeros = Vec::new();
        for (at, patch) in self.patches {
            match patch {
                Patch::Records { len, size, kind } => {
                    let mut record = vec![0u8; size as usize];
                    for r in (at..at + len).step_by(size as usize) {
                        disk.read_at(r, &mut record)?;
                        if let Some(bytes) = kind.sanitize(&record) {
                            journaled.push(DiskWrite { offset: r, bytes, what: "sanitized record".into() });
                        }
                    }
                }
                Patch::Fill { len, byte: 0 } => zeros.push((at, len)),
                Patch::Fill { len, byte } => journaled.push(DiskWrite {
                    offset: at,
                    bytes: vec![byte; len as usize],
                    what: "sanitized $LogFile".into(),
                }),
                Patch::Bytes(bytes) => journaled.push(DiskWrite { offset: at, bytes, what: "sanitized record".into() }),
            }
        }
        Ok((journaled, zeros))
    }
}

/// Sanitizes the record of `size` bytes at disk offset `r` in `buf` (read at `offset`),
/// reading it whole from `disk` when `buf` holds only part of it.
fn apply_record(
    disk: &dyn BlockDevice,
    kind: RecordKind,
    r: u64,
    size: u64,
    offset: u64,
    buf: &mut [u8],
) -> Result<()> {
    let end = offset + buf.len() as u64;
    let whole = r >= offset && r + size <= end;
    let new = if whole {
        kind.sanitize(&buf[(r - offset) as usize..(r - offset + size) as usize])
    } else {
        let mut record = vec![0u8; size as usize];
        disk.read_at(r, &mut record)?;
        kind.sanitize(&record)
    };
    if let Some(new) = new {
        let (a, z) = (r.max(offset), (r + size).min(end));
        buf[(a - offset) as usize..(z - offset) as usize].copy_from_slice(&new[(a - r) as usize..(z - r) as usize]);
    }
    Ok(())
}

fn add(total: &mut SanitizeSummary, s: &SanitizeSummary) {
    total.slack_bytes += s.slack_bytes;
    total.recreated_file_bytes += s.recreated_file_bytes;
    total.logfile_bytes += s.logfile_bytes;
    total.free_records += s.free_records;
    total.record_tails += s.record_tails;
    total.index_records += s.index_records;
}

/// Sorted patches made disjoint: where two overlap, the later one keeps only what the earlier
/// one does not cover (a record patch wins over a fill planned for the same clusters).
fn disjoint(sorted: Vec<(u64, Patch)>) -> Vec<(u64, Patch)> {
    let mut out: Vec<(u64, Patch)> = Vec::with_capacity(sorted.len());
    for (at, patch) in sorted {
        let covered = out.last().map_or(0, |(a, p)| a + p.len());
        let end = at + patch.len();
        if end <= covered {
            continue;
        }
        let skip = covered.saturating_sub(at);
        let trimmed = match patch {
            Patch::Fill { byte, .. } => Patch::Fill { len: end - at - skip, byte },
            Patch::Bytes(b) => Patch::Bytes(b[skip as usize..].to_vec()),
            // Whole records only: never planned over another patch, so never trimmed.
            records @ Patch::Records { .. } if skip == 0 => records,
            Patch::Records { .. } => continue,
        };
        out.push((at + skip, trimmed));
    }
    out
}

/// One NTFS volume being planned.
struct Volume<'a> {
    device: &'a dyn BlockDevice,
    /// Disk offset of the partition.
    base: u64,
    index: &'a NtfsIndex,
    patches: Vec<(u64, Patch)>,
    summary: SanitizeSummary,
}

impl Volume<'_> {
    fn cluster(&self) -> u64 {
        self.index.layout.cluster_size
    }

    fn plan(&mut self) -> Result<()> {
        let index = self.index;
        for file in &index.files {
            for stream in file.streams.iter().filter(|s| s.is_data() && !s.resident) {
                self.plan_stream(file, stream);
            }
        }
        self.plan_records()?;
        for file in &index.files {
            for stream in file.streams.iter().filter(|s| s.ty == attr_type::INDEX_ALLOCATION && !s.resident) {
                self.plan_index(stream)?;
            }
        }
        Ok(())
    }

    /// The slack of a data stream, or all of it for a file Windows recreates or `$LogFile`.
    fn plan_stream(&mut self, file: &FileEntry, stream: &Stream) {
        let whole = (0, stream.allocated_size);
        if file.record == LOGFILE_RECORD && stream.name.is_empty() {
            if !self.index.state.dirty {
                let n = self.fill(stream, (0, stream.data_size.min(stream.allocated_size)), EMPTY_LOG);
                self.summary.logfile_bytes += n;
            }
            return;
        }
        let recreated = stream.name.is_empty()
            && file
                .names
                .iter()
                .any(|n| n.parent == ROOT && RECREATED_FILES.iter().any(|r| n.name.eq_ignore_ascii_case(r)));
        if recreated {
            let n = self.fill(stream, whole, 0);
            self.summary.recreated_file_bytes += n;
            return;
        }
        if stream.compression_unit != 0 || file.is_metadata() {
            // Compression units hold their own slack; metadata files are left as they are.
            return;
        }
        let valid = stream.initialized_size.min(stream.data_size);
        let n = self.fill(stream, (valid, stream.allocated_size), 0);
        self.summary.slack_bytes += n;
    }

    /// Fills stream bytes `[a, z)` (where clusters hold them) with `byte`; returns the bytes.
    fn fill(&mut self, stream: &Stream, (a, z): (u64, u64), byte: u8) -> u64 {
        let mut n = 0;
        for (at, len) in disk_ranges(&stream.runs, self.cluster(), a, z) {
            self.patches.push((self.base + at, Patch::Fill { len, byte }));
            n += len;
        }
        n
    }

    /// Every FILE record of the MFT from the first user record: counted now (read in batches
    /// in parallel), sanitized as they are copied (one [`Patch::Records`] per contiguous
    /// stretch); a record split between two runs is patched now.
    fn plan_records(&mut self) -> Result<()> {
        let layout = &self.index.layout;
        let size = layout.record_size;
        let batches: Vec<u64> = (0..layout.record_count.div_ceil(RECORDS_PER_READ)).collect();
        let counts: Vec<(u64, u64)> = batches
            .par_iter()
            .map(|&b| {
                let (mut emptied, mut tails) = (0, 0);
                // The first records are NTFS's own, and `$MFTMirr` mirrors some of them.
                let first = (b * RECORDS_PER_READ).max(FIRST_USER_RECORD);
                let mut bytes = vec![0u8; size as usize];
                for r in first..((b + 1) * RECORDS_PER_READ).min(layout.record_count) {
                    let Some(pieces) = layout.pieces(r * size, size) else { continue };
                    self.read_pieces(&pieces, &mut bytes)?;
                    match sanitized_record(&bytes) {
                        Some((_, RecordChange::Emptied)) => emptied += 1,
                        Some((_, RecordChange::TailZeroed)) => tails += 1,
                        None => {}
                    }
                }
                Ok((emptied, tails))
            })
            .collect::<Result<_>>()?;
        for (emptied, tails) in counts {
            self.summary.free_records += emptied;
            self.summary.record_tails += tails;
        }
        let mut stretch = Stretch::new(RecordKind::File, size);
        for r in FIRST_USER_RECORD..layout.record_count {
            match layout.pieces(r * size, size) {
                Some(pieces) if pieces.len() == 1 => stretch.add(self.base + pieces[0].0, &mut self.patches),
                Some(pieces) => {
                    stretch.close(&mut self.patches);
                    let mut bytes = vec![0u8; size as usize];
                    self.read_pieces(&pieces, &mut bytes)?;
                    if let Some((new, _)) = sanitized_record(&bytes) {
                        self.push_bytes(&pieces, new);
                    }
                }
                None => stretch.close(&mut self.patches),
            }
        }
        stretch.close(&mut self.patches);
        Ok(())
    }

    /// The INDX records of a directory index stream: counted now, sanitized as they are copied
    /// (a record split between two runs is patched now).
    fn plan_index(&mut self, stream: &Stream) -> Result<()> {
        let size = self.index.bpb.index_record_size as u64;
        if size < 512 {
            return Ok(());
        }
        let mut stretch = Stretch::new(RecordKind::Index, size);
        let mut bytes = vec![0u8; size as usize];
        for k in 0..stream.data_size.min(stream.allocated_size) / size {
            let pieces = disk_ranges(&stream.runs, self.cluster(), k * size, (k + 1) * size);
            if pieces.iter().map(|p| p.1).sum::<u64>() != size {
                stretch.close(&mut self.patches);
                continue;
            }
            self.read_pieces(&pieces, &mut bytes)?;
            let Some(new) = sanitized_index_record(&bytes) else { continue };
            self.summary.index_records += 1;
            if pieces.len() == 1 {
                stretch.add(self.base + pieces[0].0, &mut self.patches);
            } else {
                stretch.close(&mut self.patches);
                self.push_bytes(&pieces, new);
            }
        }
        stretch.close(&mut self.patches);
        Ok(())
    }

    /// Reads partition ranges `pieces` one after the other into `buf`.
    fn read_pieces(&self, pieces: &[(u64, u64)], buf: &mut [u8]) -> Result<()> {
        let mut at = 0usize;
        for &(offset, len) in pieces {
            self.device.read_at(self.base + offset, &mut buf[at..at + len as usize])?;
            at += len as usize;
        }
        Ok(())
    }

    /// Patches partition ranges `pieces` with `bytes`, split as they are.
    fn push_bytes(&mut self, pieces: &[(u64, u64)], bytes: Vec<u8>) {
        let mut at = 0usize;
        for &(offset, len) in pieces {
            self.patches.push((self.base + offset, Patch::Bytes(bytes[at..at + len as usize].to_vec())));
            at += len as usize;
        }
    }
}

/// Consecutive whole records on the disk, gathered into one [`Patch::Records`].
struct Stretch {
    kind: RecordKind,
    size: u64,
    at: u64,
    len: u64,
}

impl Stretch {
    fn new(kind: RecordKind, size: u64) -> Self {
        Stretch { kind, size, at: 0, len: 0 }
    }

    /// Adds the record at disk offset `at`, starting a new stretch when it does not follow.
    fn add(&mut self, at: u64, patches: &mut Vec<(u64, Patch)>) {
        if self.len > 0 && self.at + self.len != at {
            self.close(patches);
        }
        if self.len == 0 {
            self.at = at;
        }
        self.len += self.size;
    }

    fn close(&mut self, patches: &mut Vec<(u64, Patch)>) {
        if self.len > 0 {
            patches.push((self.at, Patch::Records { len: self.len, size: self.size, kind: self.kind }));
        }
        self.len = 0;
    }
}

/// Partition ranges `(offset, length)` holding stream bytes `[a, z)` through `runs` (sparse
/// runs hold nothing).
fn disk_ranges(runs: &[Run], cluster: u64, a: u64, z: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for run in runs {
        let (ra, rz) = (run.vcn * cluster, (run.vcn + run.length) * cluster);
        let (x, y) = (a.max(ra), z.min(rz));
        if x >= y {
            continue;
        }
        if let Some(lcn) = run.lcn {
            out.push((lcn * cluster + (x - ra), y - x));
        }
    }
    out
}

/// What sanitizing did to a FILE record.
enum RecordChange {
    /// A free record became an empty one.
    Emptied,
    /// A record in use lost the bytes past its used size.
    TailZeroed,
}

/// Offsets in a FILE record header.
const FIRST_ATTRIBUTE: usize = 0x14;
const FLAGS: usize = 0x16;
const BYTES_IN_USE: usize = 0x18;
/// The end-of-attributes marker.
const END_MARKER: [u8; 4] = [0xFF; 4];

/// The on-disk bytes of a sanitized FILE record, when they differ from `disk`: a free record
/// emptied, a record in use with its tail zeroed. Records that do not decode are left alone.
fn sanitized_record(disk: &[u8]) -> Option<(Vec<u8>, RecordChange)> {
    if disk.len() < 0x30 || &disk[..4] != b"FILE" {
        return None;
    }
    let mut b = disk.to_vec();
    record::apply_fixups(&mut b).ok()?;
    let first = le16(&b, FIRST_ATTRIBUTE) as usize;
    if first < 0x30 || first + 8 > b.len() {
        return None;
    }
    let in_use = le16(&b, FLAGS) & 1 != 0;
    let change = if in_use {
        let used = le32(&b, BYTES_IN_USE) as usize;
        if used < first + 8 || used > b.len() {
            return None;
        }
        b[used..].fill(0);
        RecordChange::TailZeroed
    } else {
        b[first..].fill(0);
        b[first..first + 4].copy_from_slice(&END_MARKER);
        b[BYTES_IN_USE..BYTES_IN_USE + 4].copy_from_slice(&((first + 8) as u32).to_le_bytes());
        RecordChange::Emptied
    };
    let mut original = disk.to_vec();
    record::apply_fixups(&mut original).ok()?;
    if b == original {
        return None;
    }
    record::protect(&mut b).ok()?;
    Some((b, change))
}

/// Offsets in an INDX record: the node header and its fields (relative to it).
const NODE_HEADER: usize = 0x18;
const INDEX_LENGTH: usize = 4;
const INDEX_ALLOCATED: usize = 8;

/// The on-disk bytes of an INDX record with the space past its entries zeroed, when they
/// differ from `disk`.
fn sanitized_index_record(disk: &[u8]) -> Option<Vec<u8>> {
    if disk.len() < NODE_HEADER + 16 || &disk[..4] != b"INDX" {
        return None;
    }
    let mut b = disk.to_vec();
    record::apply_fixups(&mut b).ok()?;
    let used = NODE_HEADER + le32(&b, NODE_HEADER + INDEX_LENGTH) as usize;
    let allocated = (NODE_HEADER + le32(&b, NODE_HEADER + INDEX_ALLOCATED) as usize).min(b.len());
    if used >= allocated || used < NODE_HEADER + 16 {
        return None;
    }
    if b[used..allocated].iter().all(|&x| x == 0) {
        return None;
    }
    b[used..allocated].fill(0);
    record::protect(&mut b).ok()?;
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk of zeros, for patches that need no read.
    struct Zeros;

    impl BlockDevice for Zeros {
        fn len(&self) -> u64 {
            1 << 20
        }
        fn read_at(&self, _offset: u64, buf: &mut [u8]) -> Result<()> {
            buf.fill(0);
            Ok(())
        }
        fn source(&self) -> &std::path::Path {
            std::path::Path::new("zeros")
        }
    }

    #[test]
    fn overlapping_patches_become_disjoint_first_one_winning() {
        let p = disjoint(vec![
            (0, Patch::Fill { len: 10, byte: 0 }),
            (5, Patch::Bytes(vec![1; 10])),
            (6, Patch::Fill { len: 2, byte: 9 }),
        ]);
        assert_eq!(p, vec![(0, Patch::Fill { len: 10, byte: 0 }), (10, Patch::Bytes(vec![1; 5]))]);
        let s = Sanitization { patches: p, summary: SanitizeSummary::default() };
        let mut buf = [7u8; 20];
        s.apply(&Zeros, 2, &mut buf).unwrap();
        assert_eq!(&buf[..10], &[0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(&buf[10..], &[1, 1, 1, 7, 7, 7, 7, 7, 7, 7]);
    }

    #[test]
    fn runs_map_stream_bytes_to_clusters() {
        let runs = [
            Run { vcn: 0, lcn: Some(100), length: 2 },
            Run { vcn: 2, lcn: None, length: 1 },
            Run { vcn: 3, lcn: Some(7), length: 1 },
        ];
        assert_eq!(disk_ranges(&runs, 4096, 5000, 4 * 4096), vec![(100 * 4096 + 5000, 8192 - 5000), (7 * 4096, 4096)]);
    }
}
