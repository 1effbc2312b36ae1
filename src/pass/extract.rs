//! Files copied out of the image's NTFS volumes into a new folder tree: a plan of what goes
//! where (made from the index, no data read), then one writer. Each file keeps its bytes
//! (decompressed, sparse ranges left as holes), its alternate data streams (beside it as
//! `NAME:STREAM`, which on Windows is the stream itself), its hard links and its times.
//!
//! Names come from the volume, so none is trusted: a name that is empty, `.` or `..`, or
//! holds a separator or NUL is skipped, every file and folder is created new (never through
//! an existing entry), and the tree appears under its target only once complete.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rayon::prelude::*;
use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::disk::{Partition, PartitionView};
use crate::error::{Error, Result, Space};
use crate::host::{NewTree, OutputPolicy, Replace, platform};
use crate::map::ImageMap;
use crate::ntfs::content::FileTimes;
use crate::ntfs::record::ROOT;
use crate::ntfs::{FileEntry, NtfsIndex};
use crate::pass::Event;
use crate::vhd::device::BlockDevice;
use crate::vhd::image::DiskImage;

/// Bytes copied at once.
const COPY_CHUNK: usize = 1 << 20;
/// The first MFT record of a file that is not NTFS metadata.
const FIRST_USER_RECORD: u64 = 16;

/// Something the plan or the writer left out, and why.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Skipped {
    /// The partition.
    pub partition: u32,
    /// The path in the volume.
    pub path: String,
    /// Why it was left out.
    pub why: String,
    /// Whether it should have been written and was not (its data could not be read, or its
    /// name clashes here), rather than left out by design (a symbolic link, a name that cannot
    /// be a file name here).
    pub failed: bool,
}

/// What an extraction wrote.
#[derive(Clone, Debug, Default, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ExtractReport {
    /// The folder created.
    pub output: String,
    /// The NTFS partitions read.
    pub partitions: Vec<u32>,
    /// Folders created.
    pub directories: u64,
    /// Files written (one per file, whatever its names).
    pub files: u64,
    /// Alternate data streams written beside their files.
    pub streams: u64,
    /// Names of files written as hard links to a name written before.
    pub hard_links: u64,
    /// Bytes of file data (holes of sparse files included).
    pub bytes: u64,
    /// What was left out, and why.
    pub skipped: Vec<Skipped>,
    /// Wall time of the run.
    pub elapsed_seconds: f64,
}

/// One entry of the plan.
enum Item<'m> {
    Dir {
        rel: PathBuf,
        file: &'m FileEntry,
    },
    File {
        rel: PathBuf,
        file: &'m FileEntry,
        name: String,
    },
    /// Another name of a file written before (its alternate streams linked too).
    Link {
        rel: PathBuf,
        to: PathBuf,
        file: &'m FileEntry,
    },
}

/// The plan for one volume.
struct VolumePlan<'m> {
    partition: &'m Partition,
    index: &'m NtfsIndex,
    items: Vec<Item<'m>>,
}

/// Extracts `paths` (files or folders; every file of the volumes when empty) from the NTFS
/// volumes of `image` (only `partition`, if given) into a new folder `to`.
pub fn extract(
    image: &DiskImage,
    paths: &[String],
    partition: Option<u32>,
    to: &Path,
    events: &(dyn Fn(Event<'_>) + Sync),
) -> Result<ExtractReport> {
    let started = Instant::now();
    let mut policy = OutputPolicy::new(Replace::Never);
    image.add_inputs_to(&mut policy);
    let map = ImageMap::build(image, partition)?;
    map.require_readable()?;
    let mut skipped = Vec::new();
    let plans = plan(&map, paths, partition, &mut skipped)?;
    let tree = NewTree::create(to, &policy)?;
    if !tree.removed_stale().is_empty() {
        events(Event::RemovedStale(tree.removed_stale()));
    }
    let files = plans.iter().flat_map(|p| &p.items).filter(|i| matches!(i, Item::File { .. })).count();
    events(Event::Writing { temp: Some(tree.path()), units: files as u64 });
    let done = AtomicU64::new(0);
    let mut report = ExtractReport {
        output: to.display().to_string(),
        partitions: plans.iter().map(|p| p.partition.index).collect(),
        ..ExtractReport::default()
    };
    for p in &plans {
        write_volume(image, p, &tree, &mut report, &|| {
            events(Event::Written(done.fetch_add(1, Ordering::Relaxed) + 1))
        })?;
    }
    tree.commit()?;
    report.skipped.splice(0..0, skipped);
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// What goes where: every volume whole, or each path asked for (placed by its last name).
fn plan<'m>(
    map: &'m ImageMap<'_>,
    paths: &[String],
    partition: Option<u32>,
    skipped: &mut Vec<Skipped>,
) -> Result<Vec<VolumePlan<'m>>> {
    let volumes: Vec<_> = map.ntfs().collect();
    if volumes.is_empty() {
        return Err(Error::unsupported(map.image.source(), "holds no readable NTFS volume to extract from"));
    }
    if paths.is_empty() {
        let several = volumes.len() > 1;
        return Ok(volumes
            .into_iter()
            .map(|(p, idx)| {
                let base = if several { PathBuf::from(format!("partition-{}", p.index)) } else { PathBuf::new() };
                let root = idx.file(ROOT).map(|r| (r, base));
                VolumePlan { partition: p, index: idx, items: subtree(idx, p.index, root, skipped) }
            })
            .collect());
    }
    let mut plans: Vec<VolumePlan<'m>> = Vec::new();
    for path in paths {
        let f = map.find_file(path, partition)?;
        let name = if f.file.record == ROOT {
            format!("partition-{}", f.partition.index)
        } else {
            f.file.names.get(f.name).map(|n| n.name.clone()).unwrap_or_default()
        };
        let Ok(name) = safe_name(&name) else {
            return Err(Error::Usage(format!("{path}: its name {name:?} cannot be a file name here")));
        };
        let items = subtree(f.index, f.partition.index, Some((f.file, PathBuf::from(name))), skipped);
        match plans.iter_mut().find(|p| p.partition.index == f.partition.index) {
            Some(p) => p.items.extend(items),
            None => plans.push(VolumePlan { partition: f.partition, index: f.index, items }),
        }
    }
    Ok(plans)
}

/// The items of `top` (a file, or a folder and everything under it) placed at its relative
/// path, in tree order (folders before what they hold). NTFS metadata files are left out.
fn subtree<'m>(
    idx: &'m NtfsIndex,
    partition: u32,
    top: Option<(&'m FileEntry, PathBuf)>,
    skipped: &mut Vec<Skipped>,
) -> Vec<Item<'m>> {
    let Some((top, base)) = top else { return Vec::new() };
    let mut items = Vec::new();
    if !top.directory {
        let path = idx.paths(top).into_iter().next().unwrap_or_default();
        items.push(Item::File { rel: base, file: top, name: path });
        return items;
    }
    let mut dirs: FxHashMap<u64, PathBuf> = FxHashMap::default();
    dirs.insert(top.record, base.clone());
    if !base.as_os_str().is_empty() {
        items.push(Item::Dir { rel: base, file: top });
    }
    let mut first_name: FxHashMap<u64, PathBuf> = FxHashMap::default();
    for (fi, ni) in idx.tree_order() {
        let f = &idx.files[fi as usize];
        let Some(n) = f.names.get(ni as usize) else { continue };
        let Some(parent) = dirs.get(&n.parent) else { continue };
        // NTFS's own files (records 0-15, `$Extend` and what it holds) are not user data;
        // `$RECYCLE.BIN` and other `$` names beyond them are.
        if f.record < FIRST_USER_RECORD || f.record == top.record {
            continue;
        }
        let shown = || idx.path(f, ni as usize);
        let rel = match safe_name(&n.name) {
            Ok(name) => parent.join(name),
            Err(why) => {
                skipped.push(Skipped { partition, path: shown(), why: why.into(), failed: false });
                continue;
            }
        };
        if f.reparse() && !is_wof(f) {
            skipped.push(Skipped {
                partition,
                path: shown(),
                why: "a reparse point (symbolic link, junction or mount point): not recreated".into(),
                failed: false,
            });
            continue;
        }
        if f.directory {
            dirs.insert(f.record, rel.clone());
            items.push(Item::Dir { rel, file: f });
        } else if let Some(to) = first_name.get(&f.record) {
            items.push(Item::Link { rel, to: to.clone(), file: f });
        } else {
            first_name.insert(f.record, rel.clone());
            items.push(Item::File { rel, file: f, name: shown() });
        }
    }
    items
}

/// Whether a reparse point is only WOF compression (its bytes are read like any file's).
fn is_wof(f: &FileEntry) -> bool {
    f.streams.iter().any(|s| s.is_data() && &*s.name == crate::ntfs::content::WOF_STREAM)
}

/// A name from the volume as one path component here, or why it cannot be one.
fn safe_name(name: &str) -> std::result::Result<&str, &'static str> {
    const FORBIDDEN: &[char] =
        if cfg!(windows) { &['/', '\\', '\0', ':', '*', '?', '"', '<', '>', '|'] } else { &['/', '\0'] };
    if name.is_empty() || name == "." || name == ".." {
        return Err("a name that would leave its folder");
    }
    if name.contains(FORBIDDEN) {
        return Err("a name holding a path separator or a character this host forbids");
    }
    if cfg!(windows) && (windows_device(name) || name.ends_with(['.', ' '])) {
        return Err("a name Windows reserves (a device, or a trailing dot or space)");
    }
    Ok(name)
}

/// Whether a name is one of the devices Windows opens whatever the folder (`CON`, `NUL`,
/// `COM1`...), with or without an extension.
fn windows_device(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or("").trim_end().to_ascii_uppercase();
    let numbered =
        |prefix: &str| stem.len() == 4 && stem.starts_with(prefix) && matches!(stem.as_bytes()[3], b'1'..=b'9');
    matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL") || numbered("COM") || numbered("LPT")
}

/// Whether a failure to create an entry is a clash with another name of the tree (names that
/// differ only where this host does not tell them apart), not a failure of the output.
fn is_clash(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), AlreadyExists | NotADirectory | NotFound)
}

/// Writes one volume's plan into the tree: folders first (in order), files in parallel,
/// then hard links, then the folders' times (deepest first, once nothing more is written
/// into them).
fn write_volume(
    image: &DiskImage,
    plan: &VolumePlan<'_>,
    tree: &NewTree,
    report: &mut ExtractReport,
    written: &(dyn Fn() + Sync),
) -> Result<()> {
    let volume = PartitionView::new(image, plan.partition);
    let root = tree.path();
    let output_error = |path: &Path, e: std::io::Error| Error::open(path, "create", e);
    let mut dirs = Vec::new();
    for item in &plan.items {
        if let Item::Dir { rel, file } = item {
            let at = root.join(rel);
            match platform::create_dir_new(&at, tree.dir_mode()) {
                Ok(()) => {
                    dirs.push((at, *file));
                    report.directories += 1;
                }
                Err(e) if is_clash(&e) => report.skipped.push(Skipped {
                    partition: plan.partition.index,
                    path: rel.display().to_string(),
                    why: format!("clashes with another name here: {e}"),
                    failed: true,
                }),
                Err(e) => return Err(output_error(&at, e)),
            }
        }
    }
    let files: Vec<(&PathBuf, &FileEntry, &String)> = plan
        .items
        .iter()
        .filter_map(|i| match i {
            Item::File { rel, file, name } => Some((rel, *file, name)),
            _ => None,
        })
        .collect();
    let outcomes: Vec<Result<FileOutcome>> = files
        .par_iter()
        .map(|(rel, file, _)| {
            let outcome = write_file(plan.index, &volume, file, &root.join(rel), tree.file_mode());
            written();
            outcome
        })
        .collect();
    for ((_, _, name), outcome) in files.iter().zip(outcomes) {
        match outcome? {
            FileOutcome::Written { bytes, streams, skipped } => {
                report.files += 1;
                report.bytes += bytes;
                report.streams += streams;
                for (stream, why, failed) in skipped {
                    let path = format!("{name}:{stream}");
                    report.skipped.push(Skipped { partition: plan.partition.index, path, why, failed });
                }
            }
            FileOutcome::NotWritten(why) => report.skipped.push(Skipped {
                partition: plan.partition.index,
                path: (*name).clone(),
                why,
                failed: true,
            }),
        }
    }
    for item in &plan.items {
        if let Item::Link { rel, to, file } = item {
            let (at, target) = (root.join(rel), root.join(to));
            if target.exists() {
                std::fs::hard_link(&target, &at).map_err(|e| output_error(&at, e))?;
                // Only the streams written beside the first name: their names passed `safe_name`.
                let names = file.streams.iter().filter(|s| s.is_data() && !s.name.is_empty());
                for name in names.filter_map(|s| safe_name(&s.name).ok()) {
                    let (stream_at, stream_target) = (stream_path(&at, name), stream_path(&target, name));
                    if stream_target.exists() {
                        std::fs::hard_link(&stream_target, &stream_at).map_err(|e| output_error(&stream_at, e))?;
                    }
                }
                report.hard_links += 1;
            } else {
                report.skipped.push(Skipped {
                    partition: plan.partition.index,
                    path: rel.display().to_string(),
                    why: "another name of a file that could not be extracted".into(),
                    failed: true,
                });
            }
        }
    }
    for (at, file) in dirs.iter().rev() {
        if let Ok(times) = plan.index.times(&volume, file) {
            set_times(at, times);
        }
    }
    Ok(())
}

/// What became of one file.
enum FileOutcome {
    /// Written: its bytes, its alternate streams, and the streams left out (name, why, and
    /// whether it failed or was left out by design, as a name that cannot be a file name here).
    Written { bytes: u64, streams: u64, skipped: Vec<(String, String, bool)> },
    /// Its data could not be read as the file holds it (encrypted, a compression vhdkit does
    /// not decode, damaged), or its name clashes with another here: nothing written.
    NotWritten(String),
}

/// Writes `file`'s unnamed stream at `at` and each alternate stream beside it, with its
/// times. An error reading the image is the file's outcome; an error writing is returned.
fn write_file<V: BlockDevice + Clone>(
    idx: &NtfsIndex,
    volume: &V,
    file: &FileEntry,
    at: &Path,
    mode: u32,
) -> Result<FileOutcome> {
    let mut reader = match file.default_stream().is_some() || is_wof(file) {
        true => match idx.open_stream(volume.clone(), file, "") {
            Ok(r) => Some(r),
            Err(e) => return Ok(FileOutcome::NotWritten(e.to_string())),
        },
        false => None,
    };
    let out = match platform::create_new_private(at, mode) {
        Ok(f) => f,
        Err(e) if is_clash(&e) => return Ok(FileOutcome::NotWritten(format!("clashes with another name here: {e}"))),
        Err(e) => return Err(Error::open(at, "create", e)),
    };
    let bytes = match reader.as_mut() {
        Some(r) => match copy_sparse(r, &out, at)? {
            Ok(n) => n,
            Err(why) => {
                drop(out);
                let _ = std::fs::remove_file(at);
                return Ok(FileOutcome::NotWritten(why));
            }
        },
        None => 0,
    };
    let mut streams = 0;
    let mut skipped = Vec::new();
    for s in file.streams.iter().filter(|s| s.is_data() && !s.name.is_empty()) {
        if &*s.name == crate::ntfs::content::WOF_STREAM && is_wof(file) {
            continue;
        }
        let Ok(name) = safe_name(&s.name) else {
            skipped.push((s.name.to_string(), "a stream name that cannot be a file name here".into(), false));
            continue;
        };
        let target = stream_path(at, name);
        match idx.open_stream(volume.clone(), file, &s.name) {
            Ok(mut r) => {
                let f = match platform::create_new_private(&target, mode) {
                    Ok(f) => f,
                    Err(e) if is_clash(&e) => {
                        skipped.push((s.name.to_string(), format!("clashes with another name here: {e}"), true));
                        continue;
                    }
                    Err(e) => return Err(Error::open(&target, "create", e)),
                };
                if let Err(why) = copy_sparse(&mut r, &f, &target)? {
                    drop(f);
                    let _ = std::fs::remove_file(&target);
                    skipped.push((s.name.to_string(), why, true));
                    continue;
                }
                streams += 1;
                if let Ok(times) = idx.times(volume, file) {
                    set_file_times(&f, times);
                }
            }
            Err(e) => skipped.push((s.name.to_string(), e.to_string(), true)),
        }
    }
    if let Ok(times) = idx.times(volume, file) {
        set_file_times(&out, times);
    }
    Ok(FileOutcome::Written { bytes, streams, skipped })
}

/// Where alternate stream `name` of the file at `at` is written: `NAME:STREAM` beside it
/// (on Windows, the stream itself).
fn stream_path(at: &Path, name: &str) -> PathBuf {
    let mut p = at.as_os_str().to_owned();
    p.push(":");
    p.push(name);
    PathBuf::from(p)
}

/// Copies a stream into `out`, leaving all-zero chunks as holes; the inner `Err` is why the
/// stream could not be read (the file is then left out), the outer one a write failure.
fn copy_sparse(reader: &mut impl Read, out: &File, at: &Path) -> Result<std::result::Result<u64, String>> {
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut w = out;
    let mut total = 0u64;
    loop {
        let n = match read_full(reader, &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let write_error = |e| Error::io(at, "write", Space::File, total, e);
        if buf[..n].iter().all(|&b| b == 0) {
            w.seek(SeekFrom::Current(n as i64)).map_err(write_error)?;
        } else {
            w.write_all(&buf[..n]).map_err(write_error)?;
        }
        total += n as u64;
    }
    out.set_len(total).map_err(|e| Error::io(at, "set the length of", Space::File, total, e))?;
    Ok(Ok(total))
}

/// Reads until `buf` is full or the stream ends.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Gives an open file the volume's modification and access times (where representable).
fn set_file_times(f: &File, t: FileTimes) {
    let mut times = std::fs::FileTimes::new();
    if let Some(m) = FileTimes::system_time(t.modified) {
        times = times.set_modified(m);
    }
    if let Some(a) = FileTimes::system_time(t.accessed) {
        times = times.set_accessed(a);
    }
    let _ = f.set_times(times);
}

/// Gives a folder the volume's times.
fn set_times(at: &Path, t: FileTimes) {
    if let Some(d) = platform::open_dir(at) {
        set_file_times(&d, t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_leave_the_folder_are_refused() {
        for bad in ["", ".", "..", "a/b", "../x", "nul\0byte"] {
            assert!(safe_name(bad).is_err(), "{bad:?}");
        }
        for good in ["report.txt", "...", ".hidden", "a b", "Ünïcode"] {
            assert_eq!(safe_name(good), Ok(good));
        }
    }

    #[test]
    fn windows_devices_are_recognised_with_any_extension() {
        for device in ["CON", "nul", "Aux.txt", "COM1", "lpt9.log", "prn ."] {
            assert!(windows_device(device), "{device}");
        }
        for name in ["CONSOLE", "COM0", "COM10", "LPT", "nulls.txt", "con-fig"] {
            assert!(!windows_device(name), "{name}");
        }
    }

    #[test]
    fn a_stream_lives_beside_its_file() {
        assert_eq!(stream_path(Path::new("out/a.txt"), "Zone.Identifier"), PathBuf::from("out/a.txt:Zone.Identifier"));
    }
}
