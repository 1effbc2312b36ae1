//! `vhdinspect files`: every file and directory of the NTFS volumes, one entry per name.

use std::fmt::Write;

use serde::Serialize;

use crate::map::ImageMap;
use crate::ntfs::index::{Consistency, FileEntry, Stream};
use crate::ntfs::mft::RecordProblem;
use crate::ntfs::record;
use crate::ntfs::runs::Run;
use crate::ntfs::volume::VolumeState;
use crate::ntfs::NtfsIndex;

/// One stream of a file.
#[derive(Serialize)]
pub struct StreamReport {
    /// `$DATA` for data streams, else the attribute type's name.
    pub attribute: &'static str,
    /// "" for the default stream.
    pub name: String,
    pub size: u64,
    pub allocated_size: u64,
    pub resident: bool,
    /// Clusters on disk (sparse and compressed-away runs own none).
    pub clusters: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs: Option<Vec<Run>>,
}

impl StreamReport {
    fn new(s: &Stream, runs: bool) -> Self {
        StreamReport {
            attribute: record::type_name(s.ty),
            name: s.name.clone(),
            size: s.data_size,
            allocated_size: if s.resident { 0 } else { s.allocated_size },
            resident: s.resident,
            clusters: s.physical_clusters(),
            runs: runs.then(|| s.runs.clone()),
        }
    }
}

/// One name of a file.
#[derive(Serialize)]
pub struct FileReport {
    pub partition: u32,
    /// Relative to the volume root, `/`-separated; the root itself is ".".
    pub path: String,
    pub mft_record: u64,
    pub sequence: u16,
    /// Size of the default data stream.
    pub size: u64,
    pub allocated_size: u64,
    pub directory: bool,
    pub system: bool,
    pub hidden: bool,
    pub sparse: bool,
    pub compressed: bool,
    pub encrypted: bool,
    pub reparse: bool,
    /// Names of the data streams: "" for the default one, then the alternate data streams.
    pub stream_names: Vec<String>,
    pub streams: Vec<StreamReport>,
    /// Every other non-resident attribute (`$INDEX_ALLOCATION`, `$BITMAP`, `$EA`...), with
    /// `--runs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Vec<StreamReport>>,
}

/// What a volume says of itself, beside its files.
#[derive(Serialize)]
pub struct VolumeReport {
    pub partition: u32,
    pub cluster_size: u64,
    pub total_clusters: u64,
    pub mft_records: u64,
    pub files: usize,
    pub state: VolumeState,
    pub consistency: Consistency,
    pub problems: Vec<RecordProblem>,
}

impl VolumeReport {
    /// Summary of one indexed volume.
    pub fn new(partition: u32, idx: &NtfsIndex) -> Self {
        VolumeReport {
            partition,
            cluster_size: idx.cluster_size(),
            total_clusters: idx.total_clusters(),
            mft_records: idx.layout.record_count,
            files: idx.files.len(),
            state: idx.state.clone(),
            consistency: idx.consistency(),
            problems: idx.problems.clone(),
        }
    }
}

/// The whole listing.
#[derive(Serialize)]
pub struct FilesReport {
    pub volumes: Vec<VolumeReport>,
    pub files: Vec<FileReport>,
}

fn file_reports(partition: u32, f: &FileEntry, runs: bool) -> impl Iterator<Item = FileReport> + '_ {
    let default = f.default_stream();
    f.paths.iter().map(move |path| FileReport {
        partition,
        path: path.clone(),
        mft_record: f.record,
        sequence: f.sequence,
        size: default.map_or(0, |s| s.data_size),
        allocated_size: default.filter(|s| !s.resident).map_or(0, |s| s.allocated_size),
        directory: f.directory,
        system: f.system(),
        hidden: f.file_attributes & crate::ntfs::index::file_attr::HIDDEN != 0,
        sparse: f.sparse(),
        compressed: f.compressed(),
        encrypted: f.encrypted(),
        reparse: f.reparse(),
        stream_names: f.streams.iter().filter(|s| s.is_data()).map(|s| s.name.clone()).collect(),
        streams: f.streams.iter().filter(|s| s.is_data()).map(|s| StreamReport::new(s, runs)).collect(),
        attributes: runs.then(|| {
            f.streams.iter().filter(|s| !s.is_data() && !s.resident).map(|s| StreamReport::new(s, true)).collect()
        }),
    })
}

/// Lists every NTFS volume of the map.
pub fn build(map: &ImageMap<'_>, runs: bool) -> FilesReport {
    let mut volumes = Vec::new();
    let mut files = Vec::new();
    for (p, idx) in map.ntfs() {
        volumes.push(VolumeReport::new(p.index, idx));
        for f in &idx.files {
            files.extend(file_reports(p.index, f, runs));
        }
    }
    files.sort_by(|a, b| (a.partition, &a.path).cmp(&(b.partition, &b.path)));
    FilesReport { volumes, files }
}

/// Flag letters: d(irectory) s(ystem) h(idden) S(parse) C(ompressed) E(ncrypted) R(eparse).
fn flags(f: &FileReport) -> String {
    [
        (f.directory, 'd'),
        (f.system, 's'),
        (f.hidden, 'h'),
        (f.sparse, 'S'),
        (f.compressed, 'C'),
        (f.encrypted, 'E'),
        (f.reparse, 'R'),
    ]
    .iter()
    .map(|&(on, c)| if on { c } else { '-' })
    .collect()
}

fn run_lines(out: &mut String, runs: &[Run]) {
    for r in runs {
        let lcn = r.lcn.map_or("sparse".to_string(), |l| l.to_string());
        let _ = writeln!(out, "{:>43}vcn {:>10}  lcn {:>10}  clusters {}", "", r.vcn, lcn, r.length);
    }
}

/// Plain aligned columns (fast for volumes with millions of files).
pub fn render(r: &FilesReport) -> String {
    let mut out = String::new();
    for v in &r.volumes {
        let _ = writeln!(
            out,
            "partition {}: NTFS {} label {:?}, {} clusters of {} bytes, {} MFT records, {} files{}{}",
            v.partition,
            v.state.version.as_deref().unwrap_or("?"),
            v.state.label.as_deref().unwrap_or(""),
            v.total_clusters,
            v.cluster_size,
            v.mft_records,
            v.files,
            if v.state.dirty { ", DIRTY" } else { "" },
            if v.state.hibernated { ", HIBERNATED" } else { "" },
        );
        for p in &v.problems {
            let _ = writeln!(out, "  problem: record {} at partition offset {:#x}: {}", p.record, p.offset, p.problem);
        }
    }
    let _ = writeln!(out, "{:>5} {:>10} {:>12} {:7} path", "part", "record", "size", "flags");
    for f in &r.files {
        let _ = writeln!(out, "{:>5} {:>10} {:>12} {:7} {}", f.partition, f.mft_record, f.size, flags(f), f.path);
        for s in &f.streams {
            if !s.name.is_empty() {
                let _ = writeln!(out, "{:>5} {:>10} {:>12} {:7} {}:{}", "", "", s.size, "", f.path, s.name);
            }
            if let Some(runs) = &s.runs {
                run_lines(&mut out, runs);
            }
        }
        for a in f.attributes.iter().flatten() {
            let _ = writeln!(out, "{:>43}{}{}{}", "", a.attribute, if a.name.is_empty() { "" } else { ":" }, a.name);
            run_lines(&mut out, a.runs.as_deref().unwrap_or(&[]));
        }
    }
    out
}
