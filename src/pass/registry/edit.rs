//! Reading and editing registry hives where they live: a bare hive file (with its logs beside
//! it) or a hive inside an image. Each hive is planned from reads only (loaded, replayed when
//! dirty, edited in memory), then written in one step: a bare file is replaced by rename, a
//! hive in an image goes back through its clusters under the image's journal.

use std::fs::{File, Metadata};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{KeyTarget, LoadedHive, WriteSummary};
use crate::error::{Error, Result};
use crate::hive::Hive;
use crate::hive::log::ReplayReport;
use crate::hive::regfile::RegOp;
use crate::hive::value::{ValueData, type_name};
use crate::host::{self, Access, Expect, LockWait, NewFile, OutputPolicy};
use crate::map::ImageMap;
use crate::pass::disk_write;
use crate::vhd::image::{DiskImage, OpenOptions};

/// Where the hives are.
#[derive(Clone, Debug)]
pub enum HiveSource {
    /// A hive file on its own; its logs are found beside it.
    File {
        /// The hive file.
        path: PathBuf,
        /// Whether to wait for another vhdkit process holding it.
        wait: LockWait,
    },
    /// The hives of a disk image: a key's hive is found by its root (`HKLM\SYSTEM`...), or
    /// `hive` names one by its path in the volume; `partition` limits the search.
    Image {
        /// The image.
        path: PathBuf,
        /// How to open it.
        open: OpenOptions,
        /// The hive's path in the volume, for keys that do not name their hive.
        hive: Option<String>,
        /// Only this partition.
        partition: Option<u32>,
    },
}

impl HiveSource {
    /// Which hive `key` lives in, and its path there.
    pub fn target(&self, key: &str) -> Result<KeyTarget> {
        match self {
            HiveSource::File { path, .. } => super::target(key, Some(&path.to_string_lossy())),
            HiveSource::Image { hive, .. } => super::target(key, hive.as_deref()),
        }
    }

    /// What to do when another process holds a file.
    fn wait(&self) -> LockWait {
        match self {
            HiveSource::File { wait, .. } => *wait,
            HiveSource::Image { open, .. } => open.wait,
        }
    }

    /// The name a hive of this source goes by in messages.
    fn hive_name(&self, volume_path: &str, partition: u32) -> PathBuf {
        match self {
            HiveSource::File { path, .. } => path.clone(),
            HiveSource::Image { path, .. } => {
                PathBuf::from(format!("{}: partition {partition}: {volume_path}", path.display()))
            }
        }
    }
}

/// How an edit goes.
#[derive(Clone, Copy, Debug, Default)]
pub struct EditOptions {
    /// Deleting something absent is an error (otherwise, as regedit imports do, it is noted).
    pub strict: bool,
    /// Plan and report, write nothing.
    pub dry_run: bool,
    /// Write into dirty or hibernated NTFS volumes anyway.
    pub force: bool,
}

/// What an edit did (or, in a dry run, would do).
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EditReport {
    /// Whether nothing was written.
    pub dry_run: bool,
    /// One line per change asked for.
    pub changes: Vec<String>,
    /// Per hive written: where, how many sectors, NTFS patches, logs reset.
    pub hives: Vec<WriteSummary>,
    /// Log replays done before editing dirty hives.
    pub replays: Vec<ReplayReport>,
    /// An interrupted earlier write rolled back before this one, in words.
    pub rolled_back: Option<String>,
}

/// Runs one hive's write (given as a closure) so that the caller may keep it from being cut
/// short, e.g. by deferring interruption; `&|write| write()` just runs it.
pub type CommitGuard<'a> = &'a dyn Fn(&mut dyn FnMut() -> Result<()>) -> Result<()>;

/// Applies `ops` to the hives of `source`, each hive written atomically (through `guard`).
pub fn edit(source: &HiveSource, ops: Vec<RegOp>, opts: EditOptions, guard: CommitGuard<'_>) -> Result<EditReport> {
    let mut report = EditReport {
        dry_run: opts.dry_run,
        changes: Vec::new(),
        hives: Vec::new(),
        replays: Vec::new(),
        rolled_back: None,
    };
    let groups = group_by_hive(source, ops)?;
    match source {
        HiveSource::File { path, .. } => {
            let path = if opts.dry_run {
                path.clone()
            } else {
                std::fs::canonicalize(path).map_err(|e| Error::open(path, "open", e))?
            };
            for (target, ops) in &groups {
                edit_file(source, &path, target, ops, opts, guard, &mut report)?;
            }
        }
        HiveSource::Image { path, open, .. } => {
            let mut image = if opts.dry_run {
                DiskImage::open(path, open)?
            } else {
                let (image, recovery) = DiskImage::open_writable(path, open)?;
                report.rolled_back = recovery.describe();
                image
            };
            crate::vhd::check::refuse_hazards(&image)?;
            for (target, ops) in &groups {
                edit_in_image(source, &mut image, target, ops, opts, guard, &mut report)?;
            }
        }
    }
    Ok(report)
}

/// The hive `key` lives in, loaded (replayed from its logs when dirty; a dirty hive whose logs
/// do not apply is shown as stored, marked stale). Every file read is recorded in `inputs`,
/// which an export must not overwrite.
pub fn read(source: &HiveSource, key: &str, inputs: &mut OutputPolicy) -> Result<(KeyTarget, LoadedHive)> {
    let target = source.target(key)?;
    let loaded = match source {
        HiveSource::File { path, wait } => {
            let bare = BareHive::load(path, false, *wait)?;
            inputs.input(&bare.path, &bare.meta);
            for (p, _, m) in &bare.log_files {
                inputs.input(p, m);
            }
            bare.loaded
        }
        HiveSource::Image { path, open, partition, .. } => {
            let image = DiskImage::open(path, open)?;
            image.add_inputs_to(inputs);
            let map = ImageMap::build(&image, *partition)?;
            let h = super::find_hive(&map, &target.hive_paths, *partition)?;
            let logs = super::hive_logs(&map, &h)?;
            super::load(&source.hive_name(&h.path, h.partition()), h.bytes, logs, false)?
        }
    };
    Ok((target, loaded))
}

/// Changes for one hive, each with its key's path inside the hive.
type HiveOps = Vec<(RegOp, String)>;

/// The key path of an op.
fn op_key(op: &RegOp) -> &str {
    match op {
        RegOp::Key(k) | RegOp::DeleteKey(k) => k,
        RegOp::SetValue { key, .. } | RegOp::DeleteValue { key, .. } => key,
    }
}

/// Groups `ops` by the hive they go to, in order of first appearance.
fn group_by_hive(source: &HiveSource, ops: Vec<RegOp>) -> Result<Vec<(KeyTarget, HiveOps)>> {
    let mut groups: Vec<(KeyTarget, HiveOps)> = Vec::new();
    for op in ops {
        let t = source.target(op_key(&op))?;
        let inner = t.inner.clone();
        match groups.iter_mut().find(|(g, _)| g.hive_paths == t.hive_paths) {
            Some((g, list)) if g.prefix.eq_ignore_ascii_case(&t.prefix) => list.push((op, inner)),
            Some((g, _)) => {
                return Err(Error::Usage(format!(
                    "{} and {} both name the one hive given: import one hive's keys at a time",
                    g.prefix, t.prefix
                )));
            }
            None => groups.push((t, vec![(op, inner)])),
        }
    }
    Ok(groups)
}

/// A change in words.
pub fn describe_set(key: &str, name: &str, ty: u32, data: &[u8]) -> String {
    let mut shown = ValueData::decode(ty, data).to_string();
    if shown.chars().count() > 120 {
        shown = format!("{}... ({} bytes)", shown.chars().take(100).collect::<String>(), data.len());
    }
    format!("set {key} {} = {shown} ({})", if name.is_empty() { "(default)" } else { name }, type_name(ty))
}

/// Applies `ops` to `hive` (keys are paths inside it once resolved); returns one line per
/// change, its key named as every report names it, and whether anything changed.
fn apply_ops(
    hive: &mut Hive,
    target: &KeyTarget,
    ops: &[(RegOp, String)],
    strict: bool,
) -> Result<(Vec<String>, bool)> {
    let mut lines = Vec::new();
    let mut changed = false;
    for (op, inner) in ops {
        let inner = super::resolve_current_control_set(hive, inner)?;
        let key = target.report_path(&inner);
        match op {
            RegOp::Key(_) => {
                if hive.find(&inner)?.is_none() {
                    hive.create_key(&inner)?;
                    lines.push(format!("create {key}"));
                    changed = true;
                }
            }
            RegOp::SetValue { name, ty, data, .. } => {
                hive.set_value(&inner, name, *ty, data)?;
                lines.push(describe_set(&key, name, *ty, data));
                changed = true;
            }
            RegOp::DeleteValue { name, .. } => {
                let shown = if name.is_empty() { "(default)" } else { name };
                if hive.delete_value(&inner, name)? {
                    lines.push(format!("delete {key} {shown}"));
                    changed = true;
                } else if strict {
                    return Err(Error::NotFound(format!("{key}: no value {shown:?} to delete")));
                } else {
                    lines.push(format!("(absent) {key} {shown}"));
                }
            }
            RegOp::DeleteKey(_) => {
                if hive.delete_key(&inner)? {
                    lines.push(format!("delete {key} and everything under it"));
                    changed = true;
                } else if strict {
                    return Err(Error::NotFound(format!("{key}: no such key to delete")));
                } else {
                    lines.push(format!("(absent) {key}"));
                }
            }
        }
    }
    Ok((lines, changed))
}

/// Edits a loaded hive; `None` when nothing changed.
fn edit_loaded(
    loaded: &mut LoadedHive,
    target: &KeyTarget,
    ops: &[(RegOp, String)],
    strict: bool,
    report: &mut EditReport,
) -> Result<Option<super::EditedHive>> {
    let (lines, changed) = apply_ops(&mut loaded.hive, target, ops, strict)?;
    report.changes.extend(lines);
    if !changed {
        return Ok(None);
    }
    let edited = super::EditedHive::seal(loaded);
    report.replays.extend(edited.replay.clone());
    Ok(Some(edited))
}

/// A hive inside the image: written back through its clusters (grown in NTFS if needed)
/// under the image's journal.
fn edit_in_image(
    source: &HiveSource,
    image: &mut DiskImage,
    target: &KeyTarget,
    ops: &[(RegOp, String)],
    opts: EditOptions,
    guard: CommitGuard<'_>,
    report: &mut EditReport,
) -> Result<()> {
    let partition = match source {
        HiveSource::Image { partition, .. } => *partition,
        HiveSource::File { .. } => None,
    };
    let writes = {
        let map = ImageMap::build(image, partition)?;
        let mut h = super::find_hive(&map, &target.hive_paths, partition)?;
        crate::pass::refuse_untrusted_volumes(&map, Some(h.partition()), opts.force)?;
        let logs = super::hive_logs(&map, &h)?;
        let name = source.hive_name(&h.path, h.partition());
        let stored = std::mem::take(&mut h.bytes);
        let mut loaded = super::load(&name, stored, logs, true)?;
        let Some(edited) = edit_loaded(&mut loaded, target, ops, opts.strict, report)? else { return Ok(()) };
        let (writes, summary) = super::plan_image_write(&map, &h, &loaded.stored, &edited.bytes, &edited.log_headers)?;
        report.hives.push(summary);
        writes
    };
    if !opts.dry_run {
        guard(&mut || disk_write::apply(image, &writes))?;
    }
    Ok(())
}

/// A bare hive file and its logs, open and locked (exclusively for an edit).
struct BareHive {
    path: PathBuf,
    meta: Metadata,
    loaded: LoadedHive,
    /// The hive's file, holding its lock.
    _file: File,
    /// The logs' files, locked like the hive.
    log_files: Vec<(PathBuf, File, Metadata)>,
}

impl BareHive {
    /// Opens and reads a bare hive file and its logs, locked shared (or exclusive, for an
    /// edit).
    fn load(path: &Path, for_edit: bool, wait: LockWait) -> Result<Self> {
        let access = if for_edit { Access::ReadWrite } else { Access::Read };
        // An edit replaces the file by rename: through a symlink that would replace the link,
        // and a file with other names (hard links) would keep its old content under them.
        let resolved;
        let path = if for_edit {
            resolved = std::fs::canonicalize(path).map_err(|e| Error::open(path, "open", e))?;
            let meta = std::fs::metadata(&resolved).map_err(|e| Error::open(path, "open", e))?;
            host::require_write_permission(path, &meta)?;
            host::require_single_name(path, &meta)?;
            resolved.as_path()
        } else {
            path
        };
        let file = host::open_locked(path, access, Expect::Regular, wait)?;
        let meta = file.metadata().map_err(|e| Error::open(path, "stat", e))?;
        // A file that is not a hive is refused on its first block, not after reading it all;
        // only a dirty hive needs its logs read (they may be far larger than the hive).
        let dirty = crate::hive::base::BaseBlock::parse(&read_head(&file, path)?, path)?.dirty();
        let stored = host::read_file_limited(&file, path, super::MAX_HIVE, "a hive")?;
        let mut log_files = Vec::new();
        let mut logs = Vec::new();
        for log in bare_logs(path) {
            // A log that cannot be opened counts as absent (a dirty hive is then refused, not
            // guessed); one another process holds is an error.
            let f = match host::open_locked(&log, access, Expect::Regular, wait) {
                Ok(f) => f,
                Err(e @ Error::InUse { .. }) => return Err(e),
                Err(_) => continue,
            };
            let Ok(m) = f.metadata() else { continue };
            let bytes = match dirty {
                true => host::read_file_limited(&f, &log, super::MAX_HIVE, "a hive log")?,
                false => Vec::new(),
            };
            logs.push((log.to_string_lossy().into_owned(), bytes));
            log_files.push((log, f, m));
        }
        let loaded = super::load(path, stored, logs, for_edit)?;
        Ok(BareHive { path: path.to_path_buf(), meta, loaded, _file: file, log_files })
    }
}

/// The first block of `file` (its base block, if a hive), read from the start and the file
/// left at its start.
fn read_head(file: &File, path: &Path) -> Result<Vec<u8>> {
    use std::io::{Read, Seek};
    let mut head = Vec::new();
    let mut reader = file;
    reader.take(4096).read_to_end(&mut head).map_err(|e| Error::io(path, "read", crate::Space::File, 0, e))?;
    reader.rewind().map_err(|e| Error::io(path, "seek", crate::Space::File, 0, e))?;
    Ok(head)
}

/// The logs beside a bare hive file, found case-insensitively (`ntuser.dat.log1`).
fn bare_logs(hive: &Path) -> Vec<PathBuf> {
    let dir = host::folder_of(hive);
    let Some(name) = hive.file_name().map(|n| n.to_string_lossy().into_owned()) else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    let mut out = Vec::new();
    super::log_names(
        &name,
        |want| names.iter().find(|n| n.eq_ignore_ascii_case(want)).cloned(),
        |found| out.push(dir.join(found)),
    );
    out
}

/// A bare hive: the new file replaces the old by rename (same mode and owner, never shorter);
/// replayed logs get their header reset the same way (after the hive, so a crash in between
/// leaves a clean hive and stale logs, which Windows ignores).
fn edit_file(
    source: &HiveSource,
    file: &Path,
    target: &KeyTarget,
    ops: &[(RegOp, String)],
    opts: EditOptions,
    guard: CommitGuard<'_>,
    report: &mut EditReport,
) -> Result<()> {
    let mut bare = BareHive::load(file, !opts.dry_run, source.wait())?;
    let Some(edited) = edit_loaded(&mut bare.loaded, target, ops, opts.strict, report)? else { return Ok(()) };
    let new = super::keep_length(&bare.loaded.stored, edited.bytes);
    let mut summary = WriteSummary {
        hive: file.display().to_string(),
        bytes_before: bare.loaded.stored.len() as u64,
        bytes_after: new.len() as u64,
        sectors_changed: changed_sectors(&bare.loaded.stored, &new),
        ..WriteSummary::default()
    };
    if !opts.dry_run {
        guard(&mut || NewFile::replacing(file, &bare.meta)?.write_all_and_commit(&new))?;
    }
    for (name, header) in edited.log_headers {
        let Some((_, old)) = bare.loaded.logs.iter().find(|(n, _)| *n == name) else { continue };
        if !opts.dry_run {
            let Some((path, _, meta)) = bare.log_files.iter().find(|(p, ..)| p.to_string_lossy() == name) else {
                continue;
            };
            let mut bytes = old.clone();
            let n = header.len().min(bytes.len());
            bytes[..n].copy_from_slice(&header[..n]);
            guard(&mut || NewFile::replacing(path, meta)?.write_all_and_commit(&bytes))?;
        }
        summary.logs_reset.push(name);
    }
    report.hives.push(summary);
    Ok(())
}

/// 512-byte sectors of `new` that differ from `old`.
fn changed_sectors(old: &[u8], new: &[u8]) -> u64 {
    new.chunks(512).enumerate().filter(|(i, c)| old.get(i * 512..i * 512 + c.len()) != Some(*c)).count() as u64
}
