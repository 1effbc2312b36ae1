//! `NtfsIndex`: every file of a volume with its names, paths and streams, the
//! [`ClusterOwnerIndex`] of every run, `$Bitmap`, and the consistency between the two.

use std::collections::HashMap;

use serde::Serialize;

use crate::disk::boot_sector::NtfsBootSector;
use crate::error::{Error, Result, Space};
use crate::ntfs::bitmap::ClusterBitmap;
use crate::ntfs::mft::{MAX_ATTRIBUTE_LIST, MftLayout, RecordProblem, RecordSummary};
use crate::ntfs::owners::ClusterOwnerIndex;
use crate::ntfs::record::{self, FileName, attr_type, parse_attribute_list};
use crate::ntfs::runs::Run;
use crate::ntfs::stream::read_runs;
use crate::ntfs::volume::{self, VOLUME_DIRTY, VolumeState};
use crate::vhd::device::BlockDevice;

/// Record number of the root directory.
pub const ROOT: u64 = 5;
/// Record number of `$Bitmap`.
pub const BITMAP_RECORD: u64 = 6;
/// Record number of `$Volume`.
pub const VOLUME_RECORD: u64 = 3;
/// Record number of `$Extend`.
pub const EXTEND_RECORD: u64 = 11;
/// Where paths of files whose parent is gone are placed (as Sleuth Kit does).
pub const ORPHANS: &str = "$OrphanFiles";

/// `$STANDARD_INFORMATION` file attribute bits.
pub mod file_attr {
    pub const HIDDEN: u32 = 0x0002;
    pub const SYSTEM: u32 = 0x0004;
    pub const SPARSE: u32 = 0x0200;
    pub const REPARSE: u32 = 0x0400;
    pub const COMPRESSED: u32 = 0x0800;
    pub const ENCRYPTED: u32 = 0x4000;
}

/// One attribute of a file, its extents merged.
#[derive(Clone, Debug)]
pub struct Stream {
    pub ty: u32,
    pub name: String,
    pub resident: bool,
    pub flags: u16,
    pub data_size: u64,
    pub allocated_size: u64,
    pub initialized_size: u64,
    /// VCN-ordered runs of every extent; empty for a resident attribute.
    pub runs: Vec<Run>,
}

impl Stream {
    /// Whether this is a data stream (the default one or an ADS).
    pub fn is_data(&self) -> bool {
        self.ty == attr_type::DATA
    }

    /// Clusters on disk (sparse and compressed-away runs own none).
    pub fn physical_clusters(&self) -> u64 {
        self.runs.iter().filter(|r| r.lcn.is_some()).map(|r| r.length).sum()
    }
}

/// One file or directory.
#[derive(Clone, Debug)]
pub struct FileEntry {
    pub record: u64,
    pub sequence: u16,
    pub directory: bool,
    pub file_attributes: u32,
    /// Its names: one per hard link (DOS 8.3 aliases left out).
    pub names: Vec<FileName>,
    /// Full paths relative to the root, `/`-separated, one per name.
    pub paths: Vec<String>,
    pub streams: Vec<Stream>,
}

impl FileEntry {
    /// The unnamed `$DATA` stream.
    pub fn default_stream(&self) -> Option<&Stream> {
        self.streams.iter().find(|s| s.is_data() && s.name.is_empty())
    }

    /// Whether this is an NTFS metadata file (`$MFT`, `$Bitmap`, `$Extend\$ObjId`...).
    pub fn is_metadata(&self) -> bool {
        self.record < 16
            || self.names.iter().any(|n| n.name.starts_with('$') && (n.parent == ROOT || n.parent == EXTEND_RECORD))
    }

    fn any_stream_flag(&self, flag: u16) -> bool {
        self.streams.iter().any(|s| s.flags & flag != 0)
    }

    pub fn sparse(&self) -> bool {
        self.file_attributes & file_attr::SPARSE != 0 || self.any_stream_flag(record::ATTR_SPARSE)
    }

    pub fn compressed(&self) -> bool {
        self.file_attributes & file_attr::COMPRESSED != 0 || self.any_stream_flag(record::ATTR_COMPRESSED)
    }

    pub fn encrypted(&self) -> bool {
        self.file_attributes & file_attr::ENCRYPTED != 0 || self.any_stream_flag(record::ATTR_ENCRYPTED)
    }

    pub fn reparse(&self) -> bool {
        self.file_attributes & file_attr::REPARSE != 0 || self.streams.iter().any(|s| s.ty == attr_type::REPARSE_POINT)
    }

    pub fn system(&self) -> bool {
        self.is_metadata() || self.file_attributes & file_attr::SYSTEM != 0
    }
}

/// Who owns a cluster: a stream of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Index into [`NtfsIndex::files`].
    pub file: u32,
    /// Index into that file's streams.
    pub stream: u16,
}

/// Disagreement between `$Bitmap` and the files' runs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Consistency {
    /// Clusters some file owns although `$Bitmap` marks them free.
    pub owned_but_free: u64,
    /// Clusters `$Bitmap` marks allocated that no file owns.
    pub allocated_but_unowned: u64,
    /// Clusters owned by more than one stream.
    pub cross_linked: u64,
    /// Up to 20 ranges `[start, end)` of each kind.
    pub owned_but_free_ranges: Vec<(u64, u64)>,
    pub allocated_but_unowned_ranges: Vec<(u64, u64)>,
    pub cross_linked_ranges: Vec<(u64, u64)>,
}

/// Everything known about one NTFS volume.
#[derive(Debug)]
pub struct NtfsIndex {
    pub partition: u32,
    pub bpb: NtfsBootSector,
    pub layout: MftLayout,
    pub files: Vec<FileEntry>,
    by_record: HashMap<u64, u32>,
    /// Extension record -> its base record.
    extension_of: HashMap<u64, u64>,
    owner_table: Vec<Owner>,
    pub owners: ClusterOwnerIndex,
    pub bitmap: ClusterBitmap,
    pub problems: Vec<RecordProblem>,
    pub state: VolumeState,
}

const SAMPLE_RANGES: usize = 20;

/// `$Volume`'s `$VOLUME_INFORMATION` (major, minor, flags) and `$VOLUME_NAME`.
type VolumeRecord = (Option<(u8, u8, u16)>, Option<String>);

impl NtfsIndex {
    /// Builds the index of the NTFS volume on `view` (one partition).
    pub fn build(view: &dyn BlockDevice, partition: u32) -> Result<Self> {
        let mut boot = [0u8; 512];
        view.read_at(0, &mut boot)?;
        let bpb = NtfsBootSector::parse(&boot)
            .map_err(|p| Error::corrupt(view.source(), "NTFS boot sector", Space::Partition(partition), 0, p))?;
        if bpb.volume_bytes() > view.len() {
            return Err(Error::corrupt(
                view.source(),
                "NTFS boot sector total sectors",
                Space::Partition(partition),
                0x28,
                format!("volume of {} bytes is larger than its partition ({} bytes)", bpb.volume_bytes(), view.len()),
            ));
        }
        let layout = MftLayout::read(view, partition, &bpb)?;
        let (records, mut problems) = layout.scan(view);
        let volume_record = records
            .iter()
            .find(|r| r.number == VOLUME_RECORD)
            .map(|r| (r.volume_information, r.volume_name.clone()));
        let resident_lists: Vec<(u64, Vec<record::ListEntry>)> =
            records.iter().filter(|r| !r.list.is_empty()).map(|r| (r.base.unwrap_or(r.number), r.list.clone())).collect();
        let (files, extension_of) = group_records(records, &mut problems);
        let mut index = NtfsIndex {
            partition,
            by_record: files.iter().enumerate().map(|(i, f)| (f.record, i as u32)).collect(),
            extension_of,
            files,
            bpb,
            layout,
            owner_table: Vec::new(),
            owners: ClusterOwnerIndex::default(),
            bitmap: ClusterBitmap::new(Vec::new(), 0),
            problems,
            state: VolumeState::default(),
        };
        index.check_attribute_lists(view, &resident_lists)?;
        index.resolve_paths();
        index.build_owners();
        index.read_bitmap(view)?;
        index.read_state(view, volume_record)?;
        Ok(index)
    }

    /// The file with MFT record `n`.
    pub fn file(&self, n: u64) -> Option<&FileEntry> {
        self.by_record.get(&n).map(|&i| &self.files[i as usize])
    }

    /// The owner behind an id of [`ClusterOwnerIndex`].
    pub fn owner(&self, id: u32) -> Owner {
        self.owner_table[id as usize]
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.bpb.cluster_size as u64
    }

    /// Number of clusters.
    pub fn total_clusters(&self) -> u64 {
        self.bpb.total_clusters()
    }

    /// Whether cluster `c` is needed: allocated in `$Bitmap` or owned by any file.
    pub fn cluster_needed(&self, c: u64) -> bool {
        self.bitmap.is_allocated(c) || !self.owners.owners_of(c).is_empty()
    }

    /// Needed clusters in `[start, end)`: the union of `$Bitmap` and the owner index.
    pub fn needed_count(&self, start: u64, end: u64) -> u64 {
        let allocated = self.bitmap.count(start, end);
        let owned_free: u64 = self
            .owners
            .segments_in(start, end)
            .map(|(a, b, _)| (b - a) - self.bitmap.count(a, b))
            .sum();
        allocated + owned_free
    }

    /// Needed cluster ranges `[start, end)` inside `[from, to)`, merged.
    pub fn needed_ranges(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        let mut all = self.bitmap.allocated_ranges(from, to);
        all.extend(self.owners.segments_in(from, to).map(|(a, b, _)| (a, b)));
        all.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (a, b) in all {
            match out.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        out
    }

    /// Finds a file by a `/`- or `\`-separated path, case-insensitively.
    pub fn find_path(&self, path: &str) -> Option<(&FileEntry, usize)> {
        let want = path.trim_matches(|c| c == '/' || c == '\\').replace('\\', "/").to_lowercase();
        self.files.iter().find_map(|f| f.paths.iter().position(|p| p.to_lowercase() == want).map(|i| (f, i)))
    }

    /// Compares `$Bitmap` with the owner index.
    pub fn consistency(&self) -> Consistency {
        let mut c = Consistency::default();
        for (a, b, _) in self.owners.segments() {
            let free = (b - a) - self.bitmap.count(a, b);
            if free > 0 {
                c.owned_but_free += free;
                for (x, y) in complement(&self.bitmap.allocated_ranges(a, b), a, b) {
                    push_range(&mut c.owned_but_free_ranges, x, y);
                }
            }
        }
        let mut covered = 0u64;
        for (a, b) in self.bitmap.allocated_ranges(0, self.total_clusters()) {
            let owned: Vec<(u64, u64)> = self.owners.segments_in(a, b).map(|(x, y, _)| (x, y)).collect();
            for (x, y) in complement(&owned, a, b) {
                c.allocated_but_unowned += y - x;
                push_range(&mut c.allocated_but_unowned_ranges, x, y);
            }
            covered += b - a;
        }
        debug_assert!(covered <= self.total_clusters());
        for (a, b, ids) in self.owners.cross_links() {
            let files: Vec<u32> = ids.iter().map(|&i| self.owner(i).file).collect();
            if files.iter().any(|&f| f != files[0]) || ids.len() > 1 {
                c.cross_linked += b - a;
                push_range(&mut c.cross_linked_ranges, a, b);
            }
        }
        c
    }

    /// Verifies that every attribute list entry names this file or one of its extension
    /// records; reports the rest (a looping or foreign list) without following it.
    fn check_attribute_lists(&mut self, view: &dyn BlockDevice, resident: &[(u64, Vec<record::ListEntry>)]) -> Result<()> {
        let mut found = Vec::new();
        for (rec, entries) in resident {
            if let Some(f) = self.file(*rec) {
                found.extend(self.list_problems(f, entries));
            }
        }
        for f in &self.files {
            let Some(list) = f.streams.iter().find(|s| s.ty == attr_type::ATTRIBUTE_LIST && !s.resident) else { continue };
            let entries = if list.data_size > MAX_ATTRIBUTE_LIST {
                found.push(RecordProblem { record: f.record, offset: 0, problem: format!("attribute list of {} bytes", list.data_size) });
                continue;
            } else {
                let v = read_runs(view, self.partition, self.cluster_size(), &list.runs, list.data_size, list.initialized_size)?;
                let (entries, bad) = parse_attribute_list(&v);
                if let Some(e) = bad {
                    found.push(RecordProblem { record: f.record, offset: e.at as u64, problem: format!("attribute list: {}", e.problem) });
                }
                entries
            };
            found.extend(self.list_problems(f, &entries));
        }
        self.problems.extend(found);
        Ok(())
    }

    fn list_problems(&self, f: &FileEntry, entries: &[record::ListEntry]) -> Vec<RecordProblem> {
        entries
            .iter()
            .filter(|e| e.record != f.record && self.extension_of.get(&e.record).is_none_or(|&b| b != f.record))
            .map(|e| RecordProblem {
                record: f.record,
                offset: self.layout.record_offset(f.record).unwrap_or(0),
                problem: format!(
                    "attribute list entry for {} names record {}, which is not an extension of this file",
                    record::type_name(e.ty),
                    e.record
                ),
            })
            .collect()
    }

    /// Gives every name of every file its full path.
    fn resolve_paths(&mut self) {
        let mut dir_paths: HashMap<u64, String> = HashMap::from([(ROOT, String::new())]);
        let mut all = Vec::with_capacity(self.files.len());
        for f in &self.files {
            let paths: Vec<String> = if f.record == ROOT {
                vec![".".into()]
            } else {
                f.names.iter().map(|n| join(&self.dir_path(n.parent, n.parent_sequence, &mut dir_paths), &n.name)).collect()
            };
            all.push(paths);
        }
        for (f, p) in self.files.iter_mut().zip(all) {
            f.paths = p;
        }
    }

    /// The path of directory `record`, walking up through parents (memoised; loops and
    /// missing parents end in [`ORPHANS`]).
    fn dir_path(&self, record: u64, sequence: u16, memo: &mut HashMap<u64, String>) -> String {
        let mut chain: Vec<(u64, &str)> = Vec::new();
        let (mut rec, mut seq) = (record, sequence);
        let base = loop {
            if let Some(p) = memo.get(&rec) {
                break p.clone();
            }
            let parent = self.file(rec).filter(|d| d.directory && (seq == 0 || d.sequence == seq));
            let Some(dir) = parent else { break ORPHANS.to_string() };
            let Some(name) = dir.names.first() else { break ORPHANS.to_string() };
            if chain.len() > 4096 || chain.iter().any(|(r, _)| *r == rec) {
                break ORPHANS.to_string();
            }
            chain.push((rec, &name.name));
            (rec, seq) = (name.parent, name.parent_sequence);
        };
        let mut path = base;
        for (rec, name) in chain.into_iter().rev() {
            path = join(&path, name);
            memo.insert(rec, path.clone());
        }
        path
    }

    /// Indexes every run that holds clusters.
    fn build_owners(&mut self) {
        let mut table = Vec::new();
        let mut runs = Vec::new();
        for (fi, f) in self.files.iter().enumerate() {
            for (si, s) in f.streams.iter().enumerate() {
                if s.runs.iter().all(|r| r.lcn.is_none()) {
                    continue;
                }
                let id = table.len() as u32;
                table.push(Owner { file: fi as u32, stream: si as u16 });
                runs.extend(s.runs.iter().filter_map(|r| r.lcn.map(|l| (l, r.length, id))));
            }
        }
        self.owners = ClusterOwnerIndex::build(runs);
        self.owner_table = table;
    }

    /// Reads `$Bitmap` through its runs.
    fn read_bitmap(&mut self, view: &dyn BlockDevice) -> Result<()> {
        let total = self.total_clusters();
        let need = total.div_ceil(8);
        let corrupt = |problem: String| Error::corrupt(view.source(), "$Bitmap", Space::Partition(self.partition), 0, problem);
        let stream = self
            .file(BITMAP_RECORD)
            .and_then(FileEntry::default_stream)
            .ok_or_else(|| corrupt("record 6 has no $DATA".into()))?;
        if stream.resident || stream.data_size < need {
            return Err(corrupt(format!("{} bytes cannot describe {total} clusters", stream.data_size)));
        }
        let bytes = read_runs(view, self.partition, self.cluster_size(), &stream.runs, need, stream.initialized_size)?;
        self.bitmap = ClusterBitmap::new(bytes, total);
        Ok(())
    }

    /// Label, version, dirty flag and hibernation; `volume_record` is what the bulk pass read
    /// from `$Volume` (version and flags, name), the fallback when the crate cannot open it.
    fn read_state(&mut self, view: &dyn BlockDevice, volume_record: Option<VolumeRecord>) -> Result<()> {
        let mut state = VolumeState::default();
        match volume::probe_with_crate(view) {
            Ok((label, version, flags)) => {
                state.label = label;
                state.version = Some(version);
                state.dirty = flags & VOLUME_DIRTY != 0;
            }
            Err(problem) => state.crate_problem = Some(problem),
        }
        if let Some((info, name)) = volume_record {
            if let Some((major, minor, flags)) = info {
                state.version.get_or_insert_with(|| format!("{major}.{minor}"));
                state.dirty |= flags & VOLUME_DIRTY != 0;
            }
            if state.label.is_none() {
                state.label = name;
            }
        }
        let hiberfil = self.files.iter().find(|f| {
            f.names.iter().any(|n| n.parent == ROOT && n.name.eq_ignore_ascii_case("hiberfil.sys"))
        });
        if let Some(s) = hiberfil.and_then(FileEntry::default_stream).filter(|s| !s.resident && s.data_size >= 4) {
            let head = read_runs(view, self.partition, self.cluster_size(), &s.runs, 4, s.initialized_size)?;
            state.hibernated = volume::is_hibernation_signature(&head);
            state.hiberfil_signature = Some(String::from_utf8_lossy(&head).into_owned());
        }
        self.state = state;
        Ok(())
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") }
}

fn push_range(v: &mut Vec<(u64, u64)>, a: u64, b: u64) {
    if v.len() < SAMPLE_RANGES {
        v.push((a, b));
    }
}

/// The parts of `[from, to)` not covered by the sorted, disjoint `ranges`.
fn complement(ranges: &[(u64, u64)], from: u64, to: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = from;
    for &(a, b) in ranges {
        if a > at {
            out.push((at, a));
        }
        at = at.max(b);
    }
    if at < to {
        out.push((at, to));
    }
    out
}

/// Merges extension records into their base records and extents into streams; also returns
/// the extension -> base map.
fn group_records(records: Vec<RecordSummary>, problems: &mut Vec<RecordProblem>) -> (Vec<FileEntry>, HashMap<u64, u64>) {
    let numbers: HashMap<u64, usize> = records.iter().enumerate().map(|(i, r)| (r.number, i)).collect();
    let mut extensions: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        if let Some(base) = r.base {
            let base_ok = numbers.get(&base).is_some_and(|&b| records[b].base.is_none());
            if base_ok {
                extensions.entry(base).or_default().push(i);
            } else {
                problems.push(RecordProblem {
                    record: r.number,
                    offset: 0,
                    problem: format!("extension record names base record {base}, which is not an in-use base record"),
                });
            }
        }
    }
    let mut files = Vec::new();
    for r in &records {
        let orphan_extension = r.base.is_some_and(|b| !extensions.get(&b).is_some_and(|v| v.contains(&numbers[&r.number])));
        if r.base.is_some() && !orphan_extension {
            continue;
        }
        let mut parts: Vec<&RecordSummary> = vec![r];
        if r.base.is_none() {
            parts.extend(extensions.get(&r.number).into_iter().flatten().map(|&i| &records[i]));
        }
        files.push(merge_file(&parts));
    }
    let extension_of = extensions
        .iter()
        .flat_map(|(&base, v)| v.iter().map(move |&i| (i, base)))
        .map(|(i, base)| (records[i].number, base))
        .collect();
    (files, extension_of)
}

/// One file from its base record and extension records.
fn merge_file(parts: &[&RecordSummary]) -> FileEntry {
    let base = parts[0];
    let mut names: Vec<FileName> = parts.iter().flat_map(|p| p.names.iter().cloned()).collect();
    if names.iter().any(|n| !n.is_dos_alias()) {
        names.retain(|n| !n.is_dos_alias());
    }
    names.dedup_by(|a, b| a.parent == b.parent && a.name == b.name);
    let mut extents: Vec<&crate::ntfs::mft::Extent> = parts.iter().flat_map(|p| p.extents.iter()).collect();
    extents.sort_by(|a, b| (a.ty, &a.name, a.lowest_vcn).cmp(&(b.ty, &b.name, b.lowest_vcn)));
    let mut streams: Vec<Stream> = Vec::new();
    for e in extents {
        match streams.last_mut() {
            Some(s) if s.ty == e.ty && s.name == e.name && !e.resident && !s.resident && e.lowest_vcn > 0 => {
                s.runs.extend(e.runs.iter().copied());
            }
            _ => streams.push(Stream {
                ty: e.ty,
                name: e.name.clone(),
                resident: e.resident,
                flags: e.flags,
                data_size: e.data_size,
                allocated_size: e.allocated_size,
                initialized_size: e.initialized_size,
                runs: e.runs.clone(),
            }),
        }
    }
    FileEntry {
        record: base.number,
        sequence: base.sequence,
        directory: base.flags & record::FLAG_DIRECTORY != 0,
        file_attributes: base.file_attributes.unwrap_or(0),
        names,
        paths: Vec::new(),
        streams,
    }
}
