//! `NtfsIndex`: every file of a volume with its names, paths and streams, the
//! [`ClusterOwnerIndex`] of every run, `$Bitmap`, and the consistency between the two.

use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};

use serde::Serialize;

use crate::disk::boot_sector::NtfsBootSector;
use crate::error::{Error, Result, Space};
use crate::ntfs::bitmap::ClusterBitmap;
use crate::ntfs::file::FileEntry;
use crate::ntfs::mft::{
    IndexDetail, MAX_ATTRIBUTE_LIST, MAX_INDEXED, MftLayout, OwnedRun, RecordProblem, RecordSummary, VolumeRecord,
    merge_file,
};
use crate::ntfs::owners::ClusterOwnerIndex;
use crate::ntfs::record::{self, BITMAP_RECORD, ROOT, attr_type, parse_attribute_list};
use crate::ntfs::stream::read_runs;
use crate::ntfs::volume::{self, VOLUME_DIRTY, VolumeState};
use crate::vhd::device::BlockDevice;

/// Where paths of files whose parent is gone are placed (as Sleuth Kit does).
pub const ORPHANS: &str = "$OrphanFiles";

/// Who owns a cluster: a stream of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The file's base MFT record ([`NtfsIndex::file`]).
    pub record: u64,
    /// Index into that file's streams.
    pub stream: u16,
}

/// Disagreement between `$Bitmap` and the files' runs.
#[derive(Clone, Debug, Default, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
    /// The partition holding the volume.
    pub partition: u32,
    #[doc(hidden)]
    /// Its boot sector.
    pub bpb: NtfsBootSector,
    #[doc(hidden)]
    /// Where its MFT records are.
    pub layout: MftLayout,
    /// Every file in use, in record order; at [`IndexDetail::Clusters`], only directories and
    /// metadata files ([`Self::file_count`] counts them all).
    pub files: Vec<FileEntry>,
    /// Files in use that [`Self::files`] leaves out.
    plain_files: u64,
    detail: IndexDetail,
    /// Record number -> index into `files` (`u32::MAX`: none), one slot per record scanned.
    by_record: Vec<u32>,
    /// Extension record -> its base record.
    extension_of: FxHashMap<u64, u64>,
    /// Directory record -> its path ("" for the root; orphaned directories under
    /// [`ORPHANS`]).
    dir_paths: FxHashMap<u64, Box<str>>,
    owner_table: Vec<Owner>,
    #[doc(hidden)]
    /// Which stream owns each cluster.
    pub owners: ClusterOwnerIndex,
    #[doc(hidden)]
    /// `$Bitmap`: which clusters are allocated.
    pub bitmap: ClusterBitmap,
    #[doc(hidden)]
    /// Records that could not be read, and why.
    pub problems: Vec<RecordProblem>,
    #[doc(hidden)]
    /// Dirty and hibernation flags, version and label.
    pub state: VolumeState,
}

const SAMPLE_RANGES: usize = 20;

impl NtfsIndex {
    /// Builds the index of the NTFS volume on `view` (one partition), keeping `detail` of
    /// each file.
    pub fn build(view: &dyn BlockDevice, partition: u32, detail: IndexDetail) -> Result<Self> {
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
        let scan = layout.scan(view, detail);
        let mut problems = scan.problems;
        let resident_lists: Vec<(u64, Vec<record::ListEntry>)> = scan
            .pending
            .iter()
            .filter(|r| !r.list.is_empty())
            .map(|r| (r.base.unwrap_or(r.number), r.list.clone()))
            .collect();
        let (merged, extension_of) = group_records(scan.pending, &mut problems);
        let mut files = scan.files;
        files.extend(merged);
        files.sort_unstable_by_key(|f| f.record);
        let volume_record = scan.volume;
        let mut index = NtfsIndex {
            partition,
            plain_files: scan.plain_files,
            detail,
            by_record: record_slots(&files),
            extension_of,
            dir_paths: FxHashMap::default(),
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
        index.build_owners(scan.owned);
        index.read_bitmap(view)?;
        index.read_state(view, volume_record)?;
        Ok(index)
    }

    /// The files of records that span several (bases with an attribute list, and their
    /// extensions), as a scan leaves them, merged (their problems are the index's own).
    pub fn merge_pending(pending: Vec<RecordSummary>) -> Vec<FileEntry> {
        group_records(pending, &mut Vec::new()).0
    }

    /// How much of each file the index keeps.
    pub fn detail(&self) -> IndexDetail {
        self.detail
    }

    /// Files in use, those [`Self::files`] leaves out included.
    pub fn file_count(&self) -> u64 {
        self.files.len() as u64 + self.plain_files
    }

    /// The file with MFT record `n`.
    pub fn file(&self, n: u64) -> Option<&FileEntry> {
        if self.by_record.is_empty() {
            return self.files.binary_search_by_key(&n, |f| f.record).ok().map(|i| &self.files[i]);
        }
        let i = *self.by_record.get(usize::try_from(n).ok()?)?;
        self.files.get(i as usize)
    }

    /// The file whose base or extension record is record `n`.
    pub fn file_of_record(&self, n: u64) -> Option<&FileEntry> {
        self.file(*self.extension_of.get(&n).unwrap_or(&n))
    }

    #[doc(hidden)]
    /// The owner behind an id of `ClusterOwnerIndex`.
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
        let owned_free: u64 =
            self.owners.segments_in(start, end).map(|(a, b, _)| (b - a) - self.bitmap.count(a, b)).sum();
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

    /// Finds a file by a `/`- or `\`-separated path, case-insensitively; returns the file
    /// and which of its names matched.
    pub fn find_path(&self, path: &str) -> Option<(&FileEntry, usize)> {
        let want = path.trim_matches(|c| c == '/' || c == '\\').replace('\\', "/").to_lowercase();
        let last = want.rsplit('/').next().unwrap_or("");
        self.files.iter().find_map(|f| {
            f.names
                .iter()
                .enumerate()
                .filter(|(_, n)| n.name.to_lowercase() == last)
                .find(|(i, _)| self.path(f, *i).to_lowercase() == want)
                .map(|(i, _)| (f, i))
        })
    }

    /// The full path of name `name` of `f`, relative to the root, `/`-separated ("." for the
    /// root itself).
    pub fn path(&self, f: &FileEntry, name: usize) -> String {
        if f.record == ROOT {
            return ".".into();
        }
        match f.names.get(name) {
            Some(n) => join(self.parent_path(n.parent, n.parent_sequence), &n.name),
            None => format!("{ORPHANS}/record-{}", f.record),
        }
    }

    /// The path of the file with base record `record` (its first name), reading the record
    /// from `view` when the index did not keep the file.
    pub fn path_of_record(&self, view: &dyn BlockDevice, record: u64) -> String {
        if let Some(f) = self.file(record) {
            return self.path(f, 0);
        }
        match self.layout.read_names(view, record).ok().and_then(|names| names.into_iter().next()) {
            Some(n) => join(self.parent_path(n.parent, n.parent_sequence), &n.name),
            None => format!("{ORPHANS}/record-{record}"),
        }
    }

    /// Every path of `f`, one per name (none for a nameless record).
    pub fn paths(&self, f: &FileEntry) -> Vec<String> {
        if f.record == ROOT {
            return vec![".".into()];
        }
        (0..f.names.len()).map(|i| self.path(f, i)).collect()
    }

    /// Whether a nameless record is worth listing: it holds clusters (a damaged volume's
    /// orphan). The reserved records 12-15 hold none and are left out, as Sleuth Kit does.
    fn listed_nameless(f: &FileEntry) -> bool {
        f.streams.iter().any(|s| s.physical_clusters() > 0)
    }

    /// The path of a parent directory named by a `$FILE_NAME`, or [`ORPHANS`] when that
    /// directory is gone (or was reused: the sequence number differs).
    fn parent_path(&self, parent: u64, sequence: u16) -> &str {
        let current = self.file(parent).is_some_and(|d| d.directory && (sequence == 0 || d.sequence == sequence));
        match self.dir_paths.get(&parent) {
            Some(p) if current => p,
            _ => ORPHANS,
        }
    }

    /// The names under which `f` is listed: the root once, a nameless record once when it
    /// holds clusters (under `$OrphanFiles`), any other file once per name.
    pub fn listed_names(f: &FileEntry) -> std::ops::Range<usize> {
        match (f.record == ROOT, f.names.len()) {
            (true, _) => 0..1,
            (false, 0) if Self::listed_nameless(f) => 0..1,
            // Past 65,536 names (only a hostile volume merges that many) the rest are left out.
            (false, n) => 0..n.min(MAX_INDEXED),
        }
    }

    /// Every (file, name) in tree order: the root, then each directory's entries sorted by
    /// name (case-insensitively), depth first; then the entries whose parent is gone (and
    /// what those directories hold), then what directories caught in a loop of parents hold.
    /// Each of [`Self::listed_names`] comes once.
    pub fn tree_order(&self) -> Vec<(u32, u16)> {
        let mut children: FxHashMap<u64, Vec<(u32, u16)>> = FxHashMap::default();
        let mut orphans: Vec<(u32, u16)> = Vec::new();
        for (fi, f) in self.files.iter().enumerate() {
            if f.record == ROOT {
                continue;
            }
            for ni in Self::listed_names(f) {
                match f.names.get(ni) {
                    Some(n) if self.parent_path(n.parent, n.parent_sequence) != ORPHANS => {
                        children.entry(n.parent).or_default().push((fi as u32, ni as u16))
                    }
                    _ => orphans.push((fi as u32, ni as u16)),
                }
            }
        }
        let name =
            |&(fi, ni): &(u32, u16)| self.files[fi as usize].names.get(ni as usize).map_or("", |n| n.name.as_str());
        let by_name = |a: &(u32, u16), b: &(u32, u16)| {
            let fold = |s: &str| s.chars().flat_map(char::to_lowercase).collect::<Vec<char>>();
            let (x, y) = (name(a), name(b));
            if x.is_ascii() && y.is_ascii() {
                x.bytes().map(|c| c.to_ascii_lowercase()).cmp(y.bytes().map(|c| c.to_ascii_lowercase()))
            } else {
                fold(x).cmp(&fold(y))
            }
        };
        children.par_iter_mut().for_each(|(_, list)| list.sort_unstable_by(by_name));
        orphans.sort_unstable_by(by_name);
        let mut out = Vec::with_capacity(self.files.len());
        if let Ok(root) = self.files.binary_search_by_key(&ROOT, |f| f.record) {
            out.push((root as u32, 0));
        }
        let mut entered: FxHashSet<u64> = FxHashSet::default();
        entered.insert(ROOT);
        let empty = Vec::new();
        self.walk(children.get(&ROOT).unwrap_or(&empty), &children, &mut entered, &mut out);
        self.walk(&orphans, &children, &mut entered, &mut out);
        let mut looped: Vec<u64> = children.keys().filter(|d| !entered.contains(d)).copied().collect();
        looped.sort_unstable();
        for d in looped {
            if entered.insert(d) {
                self.walk(&children[&d], &children, &mut entered, &mut out);
            }
        }
        out
    }

    /// Appends `list` to `out`, each directory followed by its entries (depth first; a
    /// directory is entered once).
    fn walk(
        &self,
        list: &[(u32, u16)],
        children: &FxHashMap<u64, Vec<(u32, u16)>>,
        entered: &mut FxHashSet<u64>,
        out: &mut Vec<(u32, u16)>,
    ) {
        let mut stack = vec![list.iter()];
        while let Some(top) = stack.last_mut() {
            let Some(&entry) = top.next() else {
                stack.pop();
                continue;
            };
            out.push(entry);
            let f = &self.files[entry.0 as usize];
            if f.directory
                && entered.insert(f.record)
                && let Some(c) = children.get(&f.record)
            {
                stack.push(c.iter());
            }
        }
    }

    #[doc(hidden)]
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
            let files: Vec<u64> = ids.iter().map(|&i| self.owner(i).record).collect();
            if files.iter().any(|&f| f != files[0]) || ids.len() > 1 {
                c.cross_linked += b - a;
                push_range(&mut c.cross_linked_ranges, a, b);
            }
        }
        c
    }

    /// Verifies that every attribute list entry names this file or one of its extension
    /// records; reports the rest (a looping or foreign list) without following it.
    fn check_attribute_lists(
        &mut self,
        view: &dyn BlockDevice,
        resident: &[(u64, Vec<record::ListEntry>)],
    ) -> Result<()> {
        let mut found = Vec::new();
        for (rec, entries) in resident {
            if let Some(f) = self.file(*rec) {
                found.extend(self.list_problems(f, entries));
            }
        }
        for f in &self.files {
            let Some(list) = f.streams.iter().find(|s| s.ty == attr_type::ATTRIBUTE_LIST && !s.resident) else {
                continue;
            };
            let entries = if list.data_size > MAX_ATTRIBUTE_LIST {
                found.push(RecordProblem {
                    record: f.record,
                    offset: 0,
                    problem: format!("attribute list of {} bytes", list.data_size),
                });
                continue;
            } else {
                let v = read_runs(
                    view,
                    self.partition,
                    self.cluster_size(),
                    &list.runs,
                    list.data_size,
                    list.initialized_size,
                )?;
                let (entries, bad) = parse_attribute_list(&v);
                if let Some(e) = bad {
                    found.push(RecordProblem {
                        record: f.record,
                        offset: e.at as u64,
                        problem: format!("attribute list: {}", e.problem),
                    });
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

    /// Computes the path of every directory (files' paths are built from them on demand).
    fn resolve_paths(&mut self) {
        let mut memo: FxHashMap<u64, Box<str>> = FxHashMap::default();
        memo.insert(ROOT, Box::from(""));
        for f in self.files.iter().filter(|f| f.directory && f.record != ROOT) {
            self.dir_path(f.record, f.sequence, &mut memo);
        }
        self.dir_paths = memo;
    }

    /// The path of directory `record`, walking up through parents (memoised; loops and
    /// missing parents end in [`ORPHANS`]).
    fn dir_path(&self, record: u64, sequence: u16, memo: &mut FxHashMap<u64, Box<str>>) -> Box<str> {
        let mut chain: Vec<(u64, &str)> = Vec::new();
        let (mut rec, mut seq) = (record, sequence);
        let base: Box<str> = loop {
            if let Some(p) = memo.get(&rec) {
                break p.clone();
            }
            let parent = self.file(rec).filter(|d| d.directory && (seq == 0 || d.sequence == seq));
            let Some(name) = parent.and_then(|d| d.names.first()) else { break ORPHANS.into() };
            if chain.len() > 4096 || chain.iter().any(|(r, _)| *r == rec) {
                break ORPHANS.into();
            }
            chain.push((rec, &name.name));
            (rec, seq) = (name.parent, name.parent_sequence);
        };
        let mut path = base;
        for (rec, name) in chain.into_iter().rev() {
            path = join(&path, name).into_boxed_str();
            memo.insert(rec, path.clone());
        }
        path
    }

    /// Indexes every run that holds clusters.
    fn build_owners(&mut self, owned: Vec<OwnedRun>) {
        let mut table: Vec<Owner> = Vec::new();
        // The plain files' runs first, collected into their own allocation (ids by record and
        // stream, in scan order); then the kept files'.
        let mut runs: Vec<(u64, u64, u32)> = owned
            .into_iter()
            .map(|r| {
                if table.last().is_none_or(|o| (o.record, o.stream) != (r.record(), r.stream())) {
                    table.push(Owner { record: r.record(), stream: r.stream() });
                }
                (r.lcn, r.clusters, table.len() as u32 - 1)
            })
            .collect();
        for f in &self.files {
            for (si, s) in f.streams.iter().enumerate().take(MAX_INDEXED) {
                if s.runs.iter().all(|r| r.lcn.is_none()) {
                    continue;
                }
                let id = table.len() as u32;
                table.push(Owner { record: f.record, stream: si as u16 });
                runs.extend(s.runs.iter().filter_map(|r| r.lcn.map(|l| (l, r.length, id))));
            }
        }
        table.shrink_to_fit();
        self.owners = ClusterOwnerIndex::build(runs);
        self.owner_table = table;
    }

    /// Reads `$Bitmap` through its runs.
    fn read_bitmap(&mut self, view: &dyn BlockDevice) -> Result<()> {
        let total = self.total_clusters();
        let need = total.div_ceil(8);
        let corrupt =
            |problem: String| Error::corrupt(view.source(), "$Bitmap", Space::Partition(self.partition), 0, problem);
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

    /// Label, version, dirty flag (what the bulk pass read from `$Volume`) and hibernation.
    fn read_state(&mut self, view: &dyn BlockDevice, volume_record: Option<VolumeRecord>) -> Result<()> {
        let mut state = VolumeState::default();
        if let Some((info, name)) = volume_record {
            if let Some((major, minor, flags)) = info {
                state.version = Some(format!("{major}.{minor}"));
                state.dirty = flags & VOLUME_DIRTY != 0;
            }
            state.label = name;
        }
        let hiberfil = self
            .files
            .iter()
            .find(|f| f.names.iter().any(|n| n.parent == ROOT && n.name.eq_ignore_ascii_case("hiberfil.sys")));
        if let Some(s) = hiberfil.and_then(FileEntry::default_stream).filter(|s| !s.resident && s.data_size >= 4) {
            let head = read_runs(view, self.partition, self.cluster_size(), &s.runs, 4, s.initialized_size)?;
            state.hibernated = volume::is_hibernation_signature(&head);
            state.hiberfil_signature = Some(String::from_utf8_lossy(&head).into_owned());
        }
        self.state = state;
        Ok(())
    }
}

/// For each record number up to the last file's, its index in `files` (sorted by record):
/// one `u32` per record, when the files fill the MFT densely enough. An MFT with sparse
/// holes (a hostile one) would make the table grow with its claimed size: then it is left
/// empty and [`NtfsIndex::file`] searches `files` instead.
fn record_slots(files: &[FileEntry]) -> Vec<u32> {
    let span = files.last().map_or(0, |f| f.record.saturating_add(1));
    if span > 2 * files.len() as u64 + (1 << 20) {
        return Vec::new();
    }
    let mut slots = vec![u32::MAX; span as usize];
    for (i, f) in files.iter().enumerate() {
        slots[f.record as usize] = i as u32;
    }
    slots
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

/// Merges extension records into their base records and extents into streams (moving, not
/// copying, what the records hold); also returns the extension -> base map.
fn group_records(
    records: Vec<RecordSummary>,
    problems: &mut Vec<RecordProblem>,
) -> (Vec<FileEntry>, FxHashMap<u64, u64>) {
    let position: FxHashMap<u64, usize> = records.iter().enumerate().map(|(i, r)| (r.number, i)).collect();
    let mut extensions: Vec<Vec<usize>> = vec![Vec::new(); records.len()];
    let mut extension_of = FxHashMap::default();
    let mut is_extension = vec![false; records.len()];
    for (i, r) in records.iter().enumerate() {
        let Some(base) = r.base else { continue };
        match position.get(&base) {
            Some(&b) if records[b].base.is_none() => {
                extensions[b].push(i);
                extension_of.insert(r.number, base);
                is_extension[i] = true;
            }
            _ => problems.push(RecordProblem {
                record: r.number,
                offset: 0,
                problem: format!("extension record names base record {base}, which is not an in-use base record"),
            }),
        }
    }
    let mut slots: Vec<Option<RecordSummary>> = records.into_iter().map(Some).collect();
    let mut files = Vec::with_capacity(slots.len());
    for i in 0..slots.len() {
        if is_extension[i] {
            continue;
        }
        let Some(base) = slots[i].take() else { continue };
        let mut parts = vec![base];
        parts.extend(extensions[i].iter().filter_map(|&e| slots[e].take()));
        files.push(merge_file(parts));
    }
    (files, extension_of)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(record: u64) -> FileEntry {
        FileEntry {
            record,
            sequence: 1,
            directory: false,
            file_attributes: 0,
            names: Box::new([]),
            streams: Box::new([]),
        }
    }

    #[test]
    fn records_far_apart_get_no_table_that_grows_with_the_gap() {
        let dense: Vec<FileEntry> = (0..100).map(file).collect();
        assert_eq!(record_slots(&dense).len(), 100);
        // One file past a hole an MFT's sparse runs may claim: no table of 2^40 slots.
        let sparse = vec![file(0), file(5), file(1 << 40)];
        assert!(record_slots(&sparse).is_empty());
    }
}
