//! `vhdinspect files`: every file and directory of the NTFS volumes, one entry per name, in
//! tree order. Entries are produced while the output is written, so a volume with millions of
//! files never holds all its paths in memory at once.

use std::io::{self, Write};

use rayon::prelude::*;
use serde::Serialize;

use crate::disk::PartitionView;
use crate::map::ImageMap;
use crate::ntfs::file::{FileEntry, Stream, file_attr};
use crate::ntfs::index::Consistency;
use crate::ntfs::mft::RecordProblem;
use crate::ntfs::record;
use crate::ntfs::runs::Run;
use crate::ntfs::volume::VolumeState;
use crate::ntfs::{IndexDetail, NtfsIndex};

/// One stream of a file.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StreamReport<'a> {
    /// `$DATA` for data streams, else the attribute type's name.
    pub attribute: &'static str,
    /// "" for the default stream (`stream`, as every report names a stream).
    #[serde(rename = "stream")]
    pub name: &'a str,
    pub size: u64,
    pub allocated_size: u64,
    pub resident: bool,
    /// Clusters on disk (sparse and compressed-away runs own none).
    pub clusters: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs: Option<&'a [Run]>,
}

impl<'a> StreamReport<'a> {
    fn new(s: &'a Stream, runs: bool) -> Self {
        StreamReport {
            attribute: record::type_name(s.ty),
            name: &s.name,
            size: s.data_size,
            allocated_size: if s.resident { 0 } else { s.allocated_size },
            resident: s.resident,
            clusters: s.physical_clusters(),
            runs: runs.then_some(&s.runs[..]),
        }
    }
}

/// One name of a file.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FileReport<'a> {
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
    pub stream_names: Vec<&'a str>,
    pub streams: Vec<StreamReport<'a>>,
    /// Every other non-resident attribute (`$INDEX_ALLOCATION`, `$BITMAP`, `$EA`...), with
    /// `--runs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Vec<StreamReport<'a>>>,
}

impl<'a> FileReport<'a> {
    fn new(partition: u32, idx: &NtfsIndex, f: &'a FileEntry, name: usize, runs: bool) -> Self {
        let default = f.default_stream();
        FileReport {
            partition,
            path: idx.path(f, name),
            mft_record: f.record,
            sequence: f.sequence,
            size: default.map_or(0, |s| s.data_size),
            allocated_size: default.filter(|s| !s.resident).map_or(0, |s| s.allocated_size),
            directory: f.directory,
            system: f.system(),
            hidden: f.file_attributes & file_attr::HIDDEN != 0,
            sparse: f.sparse(),
            compressed: f.compressed(),
            encrypted: f.encrypted(),
            reparse: f.reparse(),
            stream_names: f.streams.iter().filter(|s| s.is_data()).map(|s| &*s.name).collect(),
            streams: f.streams.iter().filter(|s| s.is_data()).map(|s| StreamReport::new(s, runs)).collect(),
            attributes: runs.then(|| {
                f.streams.iter().filter(|s| !s.is_data() && !s.resident).map(|s| StreamReport::new(s, true)).collect()
            }),
        }
    }
}

/// What a volume says of itself, beside its files.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
            files: idx.file_count() as usize,
            state: idx.state.clone(),
            consistency: idx.consistency(),
            problems: idx.problems.clone(),
        }
    }
}

/// What a partition holds.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PartitionFileSystem {
    pub partition: u32,
    pub filesystem: crate::disk::FileSystem,
}

/// The shape of `files --json`, which [`FilesReport::write_json`] streams without building
/// it.
#[cfg(feature = "schema")]
#[derive(schemars::JsonSchema)]
#[expect(dead_code, reason = "a shape for the schema only: write_json streams the document")]
pub struct FilesDocument<'a> {
    /// The image.
    pub file: String,
    pub filesystems: Vec<PartitionFileSystem>,
    pub volumes: Vec<VolumeReport>,
    pub files: Vec<FileReport<'a>>,
}

/// The listing of every NTFS volume of an image, written as
/// `{"schema_version", "file", "filesystems": [PartitionFileSystem], "volumes": [VolumeReport], "files": [FileReport]}`
/// or as a table.
pub struct FilesReport<'m> {
    map: &'m ImageMap<'m>,
    runs: bool,
    volumes: Vec<VolumeReport>,
}

impl<'m> FilesReport<'m> {
    /// The listing of `map`'s volumes, with every stream's runs if `runs`.
    pub fn new(map: &'m ImageMap<'m>, runs: bool) -> Self {
        let volumes = map.ntfs().map(|(p, idx)| VolumeReport::new(p.index, idx)).collect();
        FilesReport { map, runs, volumes }
    }

    /// Writes every entry, volume by volume in tree order, formatting windows of entries in
    /// parallel and writing them in order (memory stays bounded by the window).
    fn write_entries(
        &self,
        w: &mut dyn Write,
        entry: impl Fn(&mut Vec<u8>, u32, &NtfsIndex, &FileEntry, usize) -> io::Result<()> + Sync,
    ) -> io::Result<()> {
        const CHUNK: usize = 2048;
        let mut first = true;
        for (p, idx) in self.map.ntfs() {
            let order = idx.tree_order();
            for window in order.chunks(CHUNK * 8) {
                let parts = formatted(window, CHUNK, |buf, &(fi, ni)| {
                    entry(buf, p.index, idx, &idx.files[fi as usize], ni as usize)
                })?;
                for part in parts {
                    // JSON entries start with a separating comma; the very first one drops it.
                    let skip = usize::from(first && part.first() == Some(&b','));
                    w.write_all(&part[skip..])?;
                    first &= part.is_empty();
                }
            }
        }
        Ok(())
    }

    /// Writes the JSON form `{"file", "filesystems": [...], "volumes": [...], "files": [...]}`, compact (one line: listings
    /// reach millions of entries).
    pub fn write_json(&self, w: &mut dyn Write) -> io::Result<()> {
        let filesystems: Vec<PartitionFileSystem> = self
            .map
            .filesystems()
            .into_iter()
            .map(|(partition, filesystem)| PartitionFileSystem { partition, filesystem })
            .collect();
        write!(w, "{{\"schema_version\":{},\"file\":", crate::report::SCHEMA_VERSION)?;
        serde_json::to_writer(&mut *w, &crate::vhd::device::BlockDevice::source(self.map.image).display().to_string())?;
        w.write_all(b",\"filesystems\":")?;
        serde_json::to_writer(&mut *w, &filesystems)?;
        w.write_all(b",\"volumes\":")?;
        serde_json::to_writer(&mut *w, &self.volumes)?;
        w.write_all(b",\"files\":[")?;
        let runs = self.runs;
        self.write_entries(w, |buf, part, idx, f, name| {
            buf.push(b',');
            serde_json::to_writer(&mut *buf, &FileReport::new(part, idx, f, name, runs)).map_err(io::Error::from)
        })?;
        w.write_all(b"]}\n")
    }

    /// Writes JSON Lines: a line per partition's file system and per NTFS volume, then a line
    /// per file, each with `schema_version` and `"type"` (`filesystem`, `volume`, `file`).
    /// The files come in MFT record order, read again from the volume as they are written (a
    /// window of records at a time, those spanning several records last): the first lines
    /// come before the whole volume is read, and memory stays that of the map's index, which
    /// may be one of clusters alone.
    pub fn write_jsonl(&self, w: &mut dyn Write) -> io::Result<()> {
        for (partition, filesystem) in self.map.filesystems() {
            crate::report::write_line(w, "filesystem", &PartitionFileSystem { partition, filesystem })?;
        }
        for v in &self.volumes {
            crate::report::write_line(w, "volume", v)?;
        }
        for (p, idx) in self.map.ntfs() {
            let view = PartitionView::new(self.map.image, p);
            let mut pending = Vec::new();
            idx.layout.scan_in_order(&view, IndexDetail::Files, &mut |part| {
                pending.extend(part.pending);
                self.write_file_lines(w, p.index, idx, &part.files)
            })?;
            self.write_file_lines(w, p.index, idx, &NtfsIndex::merge_pending(pending))?;
        }
        Ok(())
    }

    /// A line per listed name of each of `files` (formatted in parallel, written in order).
    fn write_file_lines(&self, w: &mut dyn Write, part: u32, idx: &NtfsIndex, files: &[FileEntry]) -> io::Result<()> {
        let runs = self.runs;
        let parts = formatted(files, 128, |buf, f| {
            NtfsIndex::listed_names(f)
                .try_for_each(|name| crate::report::write_line(buf, "file", &FileReport::new(part, idx, f, name, runs)))
        })?;
        parts.iter().try_for_each(|b| w.write_all(b))
    }

    /// Writes plain aligned columns.
    pub fn write_table(&self, w: &mut dyn Write) -> io::Result<()> {
        for v in &self.volumes {
            writeln!(
                w,
                "partition {}: NTFS {} label {:?}, {} of {} bytes, {}, {}{}{}",
                v.partition,
                v.state.version.as_deref().unwrap_or("?"),
                v.state.label.as_deref().unwrap_or(""),
                crate::report::table::count(v.total_clusters, "cluster"),
                v.cluster_size,
                crate::report::table::count(v.mft_records, "MFT record"),
                crate::report::table::count(v.files as u64, "file"),
                if v.state.dirty { ", DIRTY" } else { "" },
                if v.state.hibernated { ", HIBERNATED" } else { "" },
            )?;
            for p in &v.problems {
                writeln!(w, "  problem: record {} at partition offset {:#x}: {}", p.record, p.offset, p.problem)?;
            }
        }
        writeln!(w, "{:>5} {:>10} {:>12} {:7} path", "part", "record", "size", "flags")?;
        let runs = self.runs;
        self.write_entries(w, |w, part, idx, f, name| {
            let path = idx.path(f, name);
            let size = f.default_stream().map_or(0, |s| s.data_size);
            writeln!(w, "{part:>5} {:>10} {size:>12} {} {path}", f.record, flags(f))?;
            for s in f.streams.iter().filter(|s| s.is_data()) {
                if !s.name.is_empty() {
                    writeln!(w, "{:>5} {:>10} {:>12} {:7} {path}:{}", "", "", s.data_size, "", s.name)?;
                }
                if runs {
                    run_lines(w, &s.runs)?;
                }
            }
            if runs {
                for a in f.streams.iter().filter(|s| !s.is_data() && !s.resident) {
                    writeln!(
                        w,
                        "{:>42}{}{}{}",
                        "",
                        record::type_name(a.ty),
                        if a.name.is_empty() { "" } else { ":" },
                        a.name
                    )?;
                    run_lines(w, &a.runs)?;
                }
            }
            Ok(())
        })
    }
}

/// `items` formatted by `each`, chunks of `chunk` in parallel, the buffers in order.
fn formatted<T: Sync>(
    items: &[T],
    chunk: usize,
    each: impl Fn(&mut Vec<u8>, &T) -> io::Result<()> + Sync,
) -> io::Result<Vec<Vec<u8>>> {
    items
        .par_chunks(chunk)
        .map(|c| {
            let mut buf = Vec::with_capacity(c.len() * 128);
            c.iter().try_for_each(|item| each(&mut buf, item))?;
            Ok(buf)
        })
        .collect()
}

/// Flag letters: d(irectory) s(ystem) h(idden) S(parse) C(ompressed) E(ncrypted) R(eparse).
fn flags(f: &FileEntry) -> String {
    [
        (f.directory, 'd'),
        (f.system(), 's'),
        (f.file_attributes & file_attr::HIDDEN != 0, 'h'),
        (f.sparse(), 'S'),
        (f.compressed(), 'C'),
        (f.encrypted(), 'E'),
        (f.reparse(), 'R'),
    ]
    .iter()
    .map(|&(on, c)| if on { c } else { '-' })
    .collect()
}

fn run_lines(w: &mut impl Write, runs: &[Run]) -> io::Result<()> {
    for r in runs {
        let lcn = r.lcn.map_or("sparse".to_string(), |l| l.to_string());
        writeln!(w, "{:>42}vcn {:>10}  lcn {:>10}  clusters {}", "", r.vcn, lcn, r.length)?;
    }
    Ok(())
}
