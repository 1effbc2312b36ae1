//! Hives inside an image (or bare hive files): where a registry key's hive lives, reading it
//! (replaying its transaction logs when it is dirty), and planning the writes that put an
//! edited hive back: changed sectors through the file's runs, the file grown in NTFS when it
//! must, and its logs reset after a replay. [`edit`] runs the whole read or edit.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::bytes::le32;
use crate::error::{Error, Remedy, Result};
use crate::hive::log::{self, LogFile, ReplayReport};
use crate::hive::{Hive, keys::split_path, names};
use crate::map::ImageMap;
use crate::map::files::VolumeFile;
use crate::ntfs::NtfsIndex;
use crate::ntfs::file::FileEntry;
use crate::ntfs::patch;
use crate::ntfs::runs::Run;
use crate::ntfs::stream::read_runs;
use crate::pass::disk_write::DiskWrite;
use crate::vhd::device::BlockDevice;

pub mod edit;

pub use crate::hive::MAX_HIVE;

/// Which hive file a key lives in, and the key's path inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyTarget {
    /// Paths in the volume where the hive may be, tried in order.
    pub hive_paths: Vec<String>,
    /// The hive's root as regedit names it (`HKEY_LOCAL_MACHINE\SYSTEM`), for exports.
    pub prefix: String,
    /// The key's path inside the hive.
    pub inner: String,
    /// Whether the key was given with its root (`HKLM\SYSTEM\...`), not only as a path inside
    /// a hive named by its file.
    pub rooted: bool,
}

impl KeyTarget {
    /// How every report names the key at `inner` (a path inside the hive, CurrentControlSet
    /// resolved): with the short root, `HKLM\SYSTEM\ControlSet001\Control`,
    /// `HKU\.DEFAULT\...`; as the path inside the hive (`\` for its root) when the key was
    /// given without one.
    pub fn report_path(&self, inner: &str) -> String {
        if !self.rooted {
            return if inner.is_empty() { "\\".to_string() } else { inner.to_string() };
        }
        let root = match self.prefix.split_once('\\') {
            Some(("HKEY_LOCAL_MACHINE", hive)) => format!("HKLM\\{hive}"),
            Some(("HKEY_USERS", hive)) => format!("HKU\\{hive}"),
            _ => self.prefix.clone(),
        };
        if inner.is_empty() { root } else { format!("{root}\\{inner}") }
    }
}

/// Splits a key that starts with a root (`HKLM\SYSTEM\A\B`, `HKEY_USERS\name\A`) into the
/// hive's regedit name (`HKEY_LOCAL_MACHINE\SYSTEM`) and the path inside it (`A\B`).
pub fn split_root(key: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = split_path(key).collect();
    let root = match parts.first()?.to_ascii_uppercase().as_str() {
        "HKLM" | "HKEY_LOCAL_MACHINE" => "HKEY_LOCAL_MACHINE",
        "HKU" | "HKEY_USERS" => "HKEY_USERS",
        _ => return None,
    };
    let hive = parts.get(1)?;
    Some((format!("{root}\\{hive}"), parts[2..].join("\\")))
}

/// Maps `HKLM\SYSTEM\...`, `HKEY_USERS\name\...` and the like to hive files. With `hive`
/// (a path in the volume, or a bare hive file), `key` is a path inside that hive, with or
/// without a root in front.
pub fn target(key: &str, hive: Option<&str>) -> Result<KeyTarget> {
    let rooted = split_root(key);
    if let Some(h) = hive {
        let given_root = rooted.is_some();
        let (prefix, inner) = rooted.unwrap_or_else(|| {
            let stem = h.rsplit(['/', '\\']).next().unwrap_or(h).to_ascii_uppercase();
            (format!("HKEY_LOCAL_MACHINE\\{stem}"), split_path(key).collect::<Vec<_>>().join("\\"))
        });
        return Ok(KeyTarget { hive_paths: vec![h.replace('\\', "/")], prefix, inner, rooted: given_root });
    }
    let Some((prefix, inner)) = rooted else {
        return Err(Error::KeyWithoutHive {
            key: key.to_string(),
            known: "start the key with HKLM\\SYSTEM, HKLM\\SOFTWARE, HKLM\\SAM, HKLM\\SECURITY, \
                    HKLM\\BCD00000000, HKU\\.DEFAULT or HKU\\<user>",
        });
    };
    let (root, second) = prefix.split_once('\\').unwrap_or((&prefix, ""));
    let upper = second.to_ascii_uppercase();
    let config = |name: &str| vec![format!("Windows/System32/config/{name}")];
    let hive_paths = match (root, upper.as_str()) {
        ("HKEY_LOCAL_MACHINE", "SYSTEM" | "SOFTWARE" | "SAM" | "SECURITY") => config(&upper),
        ("HKEY_LOCAL_MACHINE", "BCD00000000") => vec!["Boot/BCD".into(), "EFI/Microsoft/Boot/BCD".into()],
        ("HKEY_USERS", ".DEFAULT") => config("DEFAULT"),
        ("HKEY_USERS", _) => {
            vec![format!("Users/{second}/NTUSER.DAT"), format!("Documents and Settings/{second}/NTUSER.DAT")]
        }
        _ => {
            return Err(Error::KeyWithoutHive {
                key: key.to_string(),
                known: "HKLM holds SYSTEM, SOFTWARE, SAM, SECURITY and BCD00000000",
            });
        }
    };
    // A machine hive is named as Windows names it, whatever case it was typed in.
    let prefix = match (root, upper.as_str()) {
        ("HKEY_LOCAL_MACHINE", _) | ("HKEY_USERS", ".DEFAULT") => format!("{root}\\{upper}"),
        _ => prefix,
    };
    Ok(KeyTarget { hive_paths, prefix, inner, rooted: true })
}

/// Replaces a leading `CurrentControlSet` with the control set `Select\Current` names.
pub fn resolve_current_control_set(hive: &Hive, inner: &str) -> Result<String> {
    let mut parts: Vec<&str> = split_path(inner).collect();
    if !parts.first().is_some_and(|p| names::eq(p, "CurrentControlSet")) {
        return Ok(inner.to_string());
    }
    let select = hive
        .find("Select")?
        .ok_or_else(|| Error::unsupported(hive.name(), "no Select key to resolve CurrentControlSet"))?;
    let current = hive
        .find_value(&select, "Current")?
        .map(|v| hive.value_data(&v))
        .transpose()?
        .filter(|d| d.len() == 4)
        .ok_or_else(|| Error::unsupported(hive.name(), "Select\\Current is not a DWORD"))?;
    let set = format!("ControlSet{:03}", le32(&current, 0));
    parts[0] = &set;
    Ok(parts.join("\\"))
}

/// A hive file found in an NTFS volume of the image, read.
pub struct ImageHive<'m> {
    pub file: VolumeFile<'m>,
    /// Its path in the volume.
    pub path: String,
    pub bytes: Vec<u8>,
}

impl ImageHive<'_> {
    /// The partition holding it.
    pub fn partition(&self) -> u32 {
        self.file.partition.index
    }
}

/// A hive edited in memory, ready to be written back.
pub struct EditedHive {
    pub bytes: Vec<u8>,
    /// The new first sector of each log (after a replay).
    pub log_headers: Vec<(String, Vec<u8>)>,
    #[doc(hidden)]
    /// The replay the edit started from, when the hive was dirty.
    pub replay: Option<ReplayReport>,
}

impl EditedHive {
    /// Seals the edits made to `loaded`'s hive (checksums, sequence numbers) and takes its
    /// bytes, with the log headers to reset if it was replayed.
    pub fn seal(loaded: &mut LoadedHive) -> Self {
        loaded.hive.seal();
        let bytes = loaded.hive.bytes().to_vec();
        let replay = loaded.replay.take();
        let log_headers = replay.as_ref().map(|r| log_resets(r, &loaded.logs, &bytes)).unwrap_or_default();
        EditedHive { bytes, log_headers, replay }
    }
}

/// A loaded hive: the bytes as stored, the hive to work on (replayed if it was dirty), and the
/// logs used.
pub struct LoadedHive {
    /// The hive file's bytes as stored.
    pub stored: Vec<u8>,
    /// The hive to work on (replayed from its logs if it was dirty).
    pub hive: Hive,
    /// The replay done, when the hive was dirty.
    pub replay: Option<ReplayReport>,
    /// The logs found beside it (path in the volume or file path, bytes).
    pub logs: Vec<(String, Vec<u8>)>,
    /// Why the primary was shown without its logs (reading a dirty hive whose logs do not
    /// apply).
    pub stale: Option<String>,
}

/// Parses `stored`; a dirty hive is replayed from `logs`. With `for_edit`, a dirty hive whose
/// logs do not apply is an error; otherwise its primary is used and marked stale (unless its
/// base block is damaged: then nothing in it can be trusted, and it is an error too).
pub fn load(name: &Path, stored: Vec<u8>, logs: Vec<(String, Vec<u8>)>, for_edit: bool) -> Result<LoadedHive> {
    let base = crate::hive::base::BaseBlock::parse(&stored, name)?;
    if !base.dirty() {
        return Ok(LoadedHive { hive: Hive::parse(stored.clone(), name)?, stored, replay: None, logs, stale: None });
    }
    let names: Vec<PathBuf> = logs.iter().map(|(n, _)| PathBuf::from(n)).collect();
    let files: Vec<LogFile<'_>> = logs.iter().zip(&names).map(|((_, d), n)| LogFile { name: n, data: d }).collect();
    match log::replay(&stored, name, &files) {
        Ok((bytes, report)) => {
            Ok(LoadedHive { hive: Hive::parse(bytes, name)?, stored, replay: Some(report), logs, stale: None })
        }
        // A damaged base block's fields are not shown as if they were data.
        Err(e) if !for_edit && base.checksum_valid => Ok(LoadedHive {
            hive: Hive::parse(stored.clone(), name)?,
            stored,
            replay: None,
            logs,
            stale: Some(e.to_string()),
        }),
        Err(e) => Err(e),
    }
}

/// The first sector each log gets once the replayed hive `new` is written: a copy of its base
/// block with file type 6, so Windows will not apply the new-format entries behind it again.
/// Old-format logs stay as they are: the written hive's newer timestamp already makes them
/// inapplicable, and a Windows of their era would not know a type 6 header.
pub fn log_resets(replay: &ReplayReport, logs: &[(String, Vec<u8>)], new: &[u8]) -> Vec<(String, Vec<u8>)> {
    if replay.format != log::LogFormat::New {
        return Vec::new();
    }
    logs.iter().filter(|(_, b)| !b.is_empty()).map(|(n, _)| (n.clone(), log::reset_header(new))).collect()
}

/// The logs of the hive named `hive`, as Windows uses them: `.LOG1` and `.LOG2`, else `.LOG`.
/// `find` gives the name actually present for a wanted one (names compare case-insensitively
/// on NTFS and for bare files), and `found` receives each log present.
pub fn log_names(hive: &str, find: impl Fn(&str) -> Option<String>, mut found: impl FnMut(String)) {
    let pair: Vec<String> = ["LOG1", "LOG2"].iter().filter_map(|ext| find(&format!("{hive}.{ext}"))).collect();
    if pair.is_empty()
        && let Some(log) = find(&format!("{hive}.LOG"))
    {
        found(log);
    }
    pair.into_iter().for_each(found);
}

/// A hive's new bytes stored over `stored`: the file never gets shorter (Windows keeps hive
/// files larger than their bins, and other tools read them as they are), so the old tail
/// stays past the new end.
pub fn keep_length(stored: &[u8], mut new: Vec<u8>) -> Vec<u8> {
    if new.len() < stored.len() {
        new.extend_from_slice(&stored[new.len()..]);
    }
    new
}

/// Reads the unnamed data stream of `file` (bounded by [`MAX_HIVE`]).
fn read_file(view: &dyn BlockDevice, idx: &NtfsIndex, file: &FileEntry) -> Result<Vec<u8>> {
    let s = file
        .default_stream()
        .ok_or_else(|| Error::unsupported(view.source(), format!("MFT record {} has no data", file.record)))?;
    if s.resident
        || s.flags & (crate::ntfs::record::ATTR_COMPRESSED | crate::ntfs::record::ATTR_ENCRYPTED) != 0
        || s.data_size > MAX_HIVE
    {
        return Err(Error::unsupported(
            view.source(),
            format!("MFT record {}: a hive must be a plain non-resident file under 2 GiB", file.record),
        ));
    }
    read_runs(view, idx.partition, idx.cluster_size(), &s.runs, s.data_size, s.initialized_size)
}

/// Finds the first of `paths` in the NTFS volumes of `map` (only `partition`, if given) and
/// reads it. Several Windows volumes holding it is an error asking to choose one.
pub fn find_hive<'m>(map: &'m ImageMap<'_>, paths: &[String], partition: Option<u32>) -> Result<ImageHive<'m>> {
    let mut found = map.find_files(paths, partition);
    match found.len() {
        0 => Err(Error::NotFound(format!(
            "{}: no hive at {} in {}",
            map.image.source().display(),
            paths.join(" or "),
            partition.map_or("any NTFS volume".to_string(), |n| format!("partition {n}"))
        ))),
        1 => read_hive(map, found.remove(0)),
        _ => Err(Error::Refused {
            file: map.image.source().to_path_buf(),
            problem: format!(
                "{} is in partitions {}",
                paths[0],
                found.iter().map(|f| f.partition.index.to_string()).collect::<Vec<_>>().join(", ")
            ),
            remedy: Remedy::ChoosePartition,
        }),
    }
}

/// The hive at `path` in NTFS partition `partition`, if there is one.
pub fn hive_at<'m>(map: &'m ImageMap<'_>, partition: u32, path: &str) -> Result<Option<ImageHive<'m>>> {
    map.find_files(&[path.to_string()], Some(partition)).pop().map(|f| read_hive(map, f)).transpose()
}

fn read_hive<'m>(map: &ImageMap<'_>, file: VolumeFile<'m>) -> Result<ImageHive<'m>> {
    let bytes = read_file(&file.volume(map.image), file.index, file.file)?;
    Ok(ImageHive { path: file.path(), bytes, file })
}

/// The logs beside an image hive, read.
pub fn hive_logs(map: &ImageMap<'_>, hive: &ImageHive<'_>) -> Result<Vec<(String, Vec<u8>)>> {
    // A clean hive needs no log: none is read (a log may be far larger than its hive).
    if crate::hive::base::BaseBlock::parse(&hive.bytes, Path::new(&hive.path)).is_ok_and(|b| !b.dirty()) {
        return Ok(Vec::new());
    }
    let view = hive.file.volume(map.image);
    let mut names = Vec::new();
    log_names(&hive.path, |want| hive.file.sibling(want).map(|f| f.path()), |n| names.push(n));
    let mut out = Vec::new();
    for name in names {
        if let Some(log) = hive.file.sibling(&name) {
            let empty = log.file.default_stream().is_none_or(|s| s.data_size == 0);
            out.push((name, if empty { Vec::new() } else { read_file(&view, log.index, log.file)? }));
        }
    }
    Ok(out)
}

/// What writing a hive back will do.
#[derive(Clone, Debug, Default, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct WriteSummary {
    /// The partition holding the hive (none for a bare hive file).
    pub partition: Option<u32>,
    /// The hive's path in the volume.
    pub hive: String,
    /// The hive file's length before.
    pub bytes_before: u64,
    /// Its length after (never shorter).
    pub bytes_after: u64,
    /// 512-byte sectors of the hive file rewritten.
    pub sectors_changed: u64,
    /// Clusters newly allocated to the file.
    pub new_clusters: u64,
    /// NTFS structures patched (MFT record, $Bitmap, $I30).
    pub ntfs_patches: Vec<String>,
    /// Logs whose header was reset after a replay.
    pub logs_reset: Vec<String>,
}

/// Disk offsets of the bytes `[at, at + len)` of a file laid out in `runs`, as
/// (disk offset, file offset, length) pieces, or why they cannot be written.
fn file_pieces(
    runs: &[Run],
    cs: u64,
    part_start: u64,
    at: u64,
    len: u64,
) -> std::result::Result<Vec<(u64, u64, u64)>, String> {
    let mut out = Vec::new();
    let mut pos = at;
    while pos < at + len {
        let vcn = pos / cs;
        let run = runs
            .iter()
            .find(|r| r.vcn <= vcn && vcn < r.vcn + r.length)
            .ok_or_else(|| format!("file offset {pos} lies outside the file's runs"))?;
        let lcn = run.lcn.ok_or_else(|| {
            format!("the file is sparse at offset {pos}: vhdkit does not allocate clusters inside a sparse file")
        })?;
        let run_end = (run.vcn + run.length) * cs;
        let n = run_end.min(at + len) - pos;
        out.push((part_start + lcn * cs + (pos - run.vcn * cs), pos, n));
        pos += n;
    }
    Ok(out)
}

/// The disk writes that store `new` over a hive file whose bytes were `old` (never shorter:
/// see [`keep_length`]): changed sectors through the file's runs (grown first when `new` is
/// longer), and `log_headers` over the first sector of each log.
pub fn plan_image_write(
    map: &ImageMap<'_>,
    hive: &ImageHive<'_>,
    old: &[u8],
    new: &[u8],
    log_headers: &[(String, Vec<u8>)],
) -> Result<(Vec<DiskWrite>, WriteSummary)> {
    let view = hive.file.volume(map.image);
    let idx = hive.file.index;
    let file = hive.file.file;
    let partition = hive.partition();
    let part_start = hive.file.partition.start();
    let cs = idx.cluster_size();
    let kept = keep_length(old, new.to_vec());
    let new = kept.as_slice();
    let growth = patch::grow(&view, idx, file, new.len() as u64)?;
    let mut writes = Vec::new();
    let mut summary = WriteSummary {
        partition: Some(partition),
        hive: hive.path.clone(),
        bytes_before: old.len() as u64,
        bytes_after: new.len() as u64,
        new_clusters: growth.new_clusters,
        ..WriteSummary::default()
    };
    // Changed 512-byte sectors of the file (bytes past the old end count as changed).
    let mut s = 0;
    let sectors = new.len().div_ceil(512);
    while s < sectors {
        let same = |s: usize| {
            let (a, b) = (s * 512, ((s + 1) * 512).min(new.len()));
            old.get(a..b) == Some(&new[a..b])
        };
        if same(s) {
            s += 1;
            continue;
        }
        let first = s;
        while s < sectors && !same(s) {
            s += 1;
        }
        let (a, b) = (first * 512, (s * 512).min(new.len()));
        let mut bytes = new[a..b].to_vec();
        bytes.resize((b - a).div_ceil(512) * 512, 0);
        let pieces = file_pieces(&growth.runs, cs, part_start, a as u64, bytes.len() as u64).map_err(|e| {
            Error::unsupported(map.image.source(), format!("partition {partition}: {}: {e}", hive.path))
        })?;
        for (disk, file_at, n) in pieces {
            let from = (file_at - a as u64) as usize;
            writes.push(DiskWrite {
                offset: disk,
                bytes: bytes[from..from + n as usize].to_vec(),
                what: format!("{} sectors", hive.path),
            });
        }
        summary.sectors_changed += (s - first) as u64;
    }
    for p in growth.patches {
        summary.ntfs_patches.push(p.what.clone());
        writes.push(DiskWrite { offset: part_start + p.offset, bytes: p.bytes, what: p.what });
    }
    for (name, header) in log_headers {
        let Some((f, _)) = idx.find_path(name) else { continue };
        let Some(s) = f.default_stream().filter(|s| !s.resident && s.data_size >= header.len() as u64) else {
            continue;
        };
        let pieces = file_pieces(&s.runs, cs, part_start, 0, header.len() as u64)
            .map_err(|e| Error::unsupported(map.image.source(), format!("partition {partition}: {name}: {e}")))?;
        for (disk, file_at, n) in pieces {
            writes.push(DiskWrite {
                offset: disk,
                bytes: header[file_at as usize..(file_at + n) as usize].to_vec(),
                what: format!("{name} header"),
            });
        }
        summary.logs_reset.push(name.clone());
    }
    Ok((writes, summary))
}
