//! `vhdreg` (and the read-only `vhdinspect reg`): registry keys and values in the hives of an
//! image, or in a bare hive file, offline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cli::args::{FormatArg, lock_wait};
use crate::cli::{emit, finish, write_output};
use crate::error::{Error, Result};
use crate::hive::Hive;
use crate::hive::regfile::{self, RegOp};
use crate::hive::value::{self, reg_type};
use crate::host::journal::Identity;
use crate::host::{self, Access, Expect, LockWait, NewFile, OutputPolicy, Replace};
use crate::map::ImageMap;
use crate::pass::disk_write;
use crate::pass::registry::{self, KeyTarget, LoadedHive, WriteSummary};
use crate::report::reg::{self as report, KeyOut, ValueOut, WriteOut};
use crate::vhd::device::BlockDevice;
use crate::vhd::image::{DiskImage, OpenOptions};

/// Get, set, delete, import and export registry keys and values in the hives inside a VHD
/// image (or a bare hive file), offline. Writes are journaled and rolled back if interrupted.
#[derive(Parser, Debug)]
#[command(name = "vhdreg", version, about)]
pub struct Cli {
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print what would change and write nothing.
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// Write into an NTFS volume that is dirty or hibernated (Windows may undo or corrupt the
    /// change when it resumes), and replace an existing export file.
    #[arg(long, global = true)]
    pub force: bool,
    #[command(flatten)]
    pub source: HiveSource,
    #[command(subcommand)]
    pub command: RegCommand,
}

/// Where the hives are.
#[derive(clap::Args, Debug)]
pub struct HiveSource {
    /// The image: raw, fixed, dynamic or differencing VHD (writes to a differencing image go
    /// into the child).
    #[arg(required_unless_present = "hive_file", conflicts_with = "hive_file")]
    pub image: Option<PathBuf>,
    /// Work on this bare hive file instead of an image; keys are paths inside it (a leading
    /// root such as HKLM\SOFTWARE is ignored).
    #[arg(long, value_name = "FILE")]
    pub hive_file: Option<PathBuf>,
    /// The Windows volume to use when several hold the hive.
    #[arg(long, value_name = "N")]
    pub partition: Option<u32>,
    /// A hive at this path in the volume (`/` or `\` separated); keys are paths inside it.
    #[arg(long, value_name = "PATH-IN-VOLUME", conflicts_with = "hive_file")]
    pub hive: Option<String>,
    /// Parent of a differencing image, instead of the one its locators name.
    #[arg(long, value_name = "PATH")]
    pub parent: Option<PathBuf>,
    /// The image's format when its content should not decide: `raw` reads any file as a raw
    /// disk, `vhd` requires a VHD footer.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<FormatArg>,
    /// Wait for another vhdkit process using the image or hive instead of failing at once.
    #[arg(long, global = true)]
    pub wait: bool,
}

/// The read-only commands (also `vhdinspect reg`).
#[derive(Subcommand, Debug)]
pub enum ReadCommand {
    /// A value (`@` or "" for the default value); without a value name, the key's listing.
    Get { key: String, value: Option<String> },
    /// A key's subkeys and values.
    List { key: String },
    /// A key and everything under it as a .reg file (UTF-16LE, regedit's format); to standard
    /// output as text when no file is given.
    Export {
        key: String,
        file: Option<PathBuf>,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
}

/// Every `vhdreg` command.
#[derive(Subcommand, Debug)]
pub enum RegCommand {
    #[command(flatten)]
    Read(ReadCommand),
    /// Set a value, creating the key and its missing parents.
    Set {
        key: String,
        /// The value's name (`@` or "" for the default value).
        value: String,
        /// REG_SZ, REG_EXPAND_SZ, REG_MULTI_SZ, REG_DWORD, REG_DWORD_BIG_ENDIAN, REG_QWORD,
        /// REG_BINARY, REG_NONE, REG_LINK (the REG_ prefix is optional) or a number.
        #[arg(long = "type", value_name = "TYPE")]
        ty: String,
        /// The data: text for strings, a number (decimal or 0x-hex) for DWORD/QWORD, hex bytes
        /// otherwise; repeat for each string of a REG_MULTI_SZ.
        #[arg(long, allow_hyphen_values = true, required_unless_present = "data_file")]
        data: Vec<String>,
        /// Read the data from a file: text for string and number types (one string per line for
        /// REG_MULTI_SZ), the exact bytes for the others.
        #[arg(long, value_name = "FILE", conflicts_with = "data")]
        data_file: Option<PathBuf>,
    },
    /// Delete a value, or with no value name the key and everything under it.
    Delete { key: String, value: Option<String> },
    /// Apply a .reg file (regedit 5.00 UTF-16 or REGEDIT4): keys, values, `-` deletions.
    Import { file: PathBuf },
    /// Roll back a write that was interrupted (every write does this first, too). With
    /// --force, also when the image and its journal were restored from a copy (every journaled
    /// byte is still checked).
    Recover,
}

/// Runs `vhdreg` with the process arguments.
pub fn main() -> ExitCode {
    crate::cli::handle_signals("vhdreg");
    let cli = Cli::parse();
    finish("vhdreg", run(cli))
}

/// The largest .reg file or value data file read (a .reg file of every key of a large hive
/// stays far below).
const MAX_INPUT_FILE: u64 = 1 << 30;

fn run(cli: Cli) -> Result<bool> {
    let src = &cli.source;
    let w = WriteFlags { dry_run: cli.dry_run, force: cli.force, json: cli.json };
    match cli.command {
        RegCommand::Read(ReadCommand::Export { key, file, force }) => {
            run_read(src, ReadCommand::Export { key, file, force: force || cli.force }, cli.json)
        }
        RegCommand::Read(read) => run_read(src, read, cli.json),
        RegCommand::Set { key, value, ty, data, data_file } => {
            let ty = value::parse_type(&ty)?;
            let data = match data_file {
                Some(f) => data_from_file(&f, ty, src.lock_wait())?,
                None => value::encode(ty, &data)?,
            };
            write(src, vec![RegOp::SetValue { key, name: value_name(&value), ty, data }], true, w)
        }
        RegCommand::Delete { key, value: Some(v) } => {
            write(src, vec![RegOp::DeleteValue { key, name: value_name(&v) }], true, w)
        }
        RegCommand::Delete { key, value: None } => write(src, vec![RegOp::DeleteKey(key)], true, w),
        RegCommand::Import { file } => {
            let bytes = host::read_limited(&file, MAX_INPUT_FILE, "a .reg file", src.lock_wait())?;
            let ops = regfile::parse(&bytes).map_err(|e| Error::Usage(format!("{}: {e}", file.display())))?;
            write(src, ops, false, w)
        }
        RegCommand::Recover => recover(src, cli.force, cli.json),
    }
}

/// `vhdreg IMAGE recover`: rolls back an interrupted write, if any; with `force`, also when
/// the image was restored from a copy (a new inode), every journaled byte still checked.
fn recover(src: &HiveSource, force: bool, json: bool) -> Result<bool> {
    let image = src.image.as_deref().ok_or_else(|| Error::Usage("recover works on an image".into()))?;
    let identity = if force { Identity::Trusted } else { Identity::Checked };
    let (_img, recovery) =
        DiskImage::open_writable(image, &OpenOptions { journal_identity: identity, ..src.open_options() })?;
    let out = report::RecoverOut::new(image, &recovery);
    emit(json, &out, report::render_recover)?;
    Ok(true)
}

/// Options of a write command.
#[derive(Clone, Copy)]
struct WriteFlags {
    dry_run: bool,
    force: bool,
    json: bool,
}

/// `@` names the default value, as in .reg files.
fn value_name(v: &str) -> String {
    if v == "@" { String::new() } else { v.to_string() }
}

/// Value data from a file: text for strings and numbers, the bytes for the rest.
fn data_from_file(path: &Path, ty: u32, wait: LockWait) -> Result<Vec<u8>> {
    let bytes = host::read_limited(path, MAX_INPUT_FILE, "value data", wait)?;
    let text =
        || String::from_utf8(bytes.clone()).map_err(|_| Error::Usage(format!("{}: not UTF-8 text", path.display())));
    match ty {
        reg_type::SZ | reg_type::EXPAND_SZ | reg_type::LINK => {
            Ok(value::utf16z(text()?.trim_end_matches(['\r', '\n'])))
        }
        reg_type::MULTI_SZ => Ok(value::encode_multi(&text()?.lines().map(str::to_string).collect::<Vec<_>>())),
        reg_type::DWORD | reg_type::DWORD_BIG_ENDIAN | reg_type::QWORD => {
            value::encode(ty, &[text()?.trim().to_string()])
        }
        _ => Ok(bytes),
    }
}

impl HiveSource {
    /// How the image is opened.
    pub fn open_options(&self) -> OpenOptions {
        OpenOptions {
            strict: false,
            parent: self.parent.clone(),
            allow_missing_parent: false,
            wait: self.lock_wait(),
            format: self.format.map(FormatArg::format),
            ..OpenOptions::default()
        }
    }

    /// What to do when another process holds a file.
    fn lock_wait(&self) -> LockWait {
        lock_wait(self.wait)
    }

    /// Where `key` lives.
    fn target(&self, key: &str) -> Result<KeyTarget> {
        match (&self.hive_file, &self.hive) {
            (Some(f), _) => registry::target(key, Some(&f.to_string_lossy())),
            (None, h) => registry::target(key, h.as_deref()).map_err(|e| match e {
                Error::Usage(text) => Error::Usage(format!("{text} (--hive PATH names any other hive)")),
                other => other,
            }),
        }
    }

    /// The name a hive of this source goes by in messages.
    fn hive_name(&self, volume_path: &str, partition: u32) -> PathBuf {
        match (&self.hive_file, &self.image) {
            (Some(f), _) => f.clone(),
            (None, Some(i)) => PathBuf::from(format!("{}: partition {partition}: {volume_path}", i.display())),
            (None, None) => PathBuf::from(volume_path),
        }
    }
}

/// A bare hive file and its logs, open and locked (exclusively for an edit).
struct BareHive {
    path: PathBuf,
    file: std::fs::File,
    meta: std::fs::Metadata,
    loaded: LoadedHive,
    /// The logs' files, locked like the hive.
    log_files: Vec<(PathBuf, std::fs::File, std::fs::Metadata)>,
}

/// The logs beside a bare hive file, found case-insensitively (`ntuser.dat.log1`).
fn bare_logs(hive: &Path) -> Vec<PathBuf> {
    let dir = host::folder_of(hive);
    let Some(name) = hive.file_name().map(|n| n.to_string_lossy().into_owned()) else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    let mut out = Vec::new();
    registry::log_names(
        &name,
        |want| names.iter().find(|n| n.eq_ignore_ascii_case(want)).cloned(),
        |found| {
            out.push(dir.join(found));
        },
    );
    out
}

/// Opens and reads a bare hive file and its logs, locked shared (or exclusive, for an edit).
fn load_bare(path: &Path, for_edit: bool, wait: LockWait) -> Result<BareHive> {
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
    let stored = host::read_file_limited(&file, path, registry::MAX_HIVE, "a hive")?;
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
        let bytes = host::read_file_limited(&f, &log, registry::MAX_HIVE, "a hive log")?;
        logs.push((log.to_string_lossy().into_owned(), bytes));
        log_files.push((log, f, m));
    }
    let loaded = registry::load(path, stored, logs, for_edit)?;
    Ok(BareHive { path: path.to_path_buf(), file, meta, loaded, log_files })
}

/// Runs a read-only command (for `vhdreg` and `vhdinspect reg`).
pub fn run_read(src: &HiveSource, cmd: ReadCommand, json: bool) -> Result<bool> {
    let key = match &cmd {
        ReadCommand::Get { key, .. } | ReadCommand::List { key } | ReadCommand::Export { key, .. } => key.clone(),
    };
    let t = src.target(&key)?;
    let export_to = match &cmd {
        ReadCommand::Export { file: Some(f), force, .. } => Some((f.clone(), *force)),
        _ => None,
    };
    let mut policy = OutputPolicy::new(match &export_to {
        Some((_, true)) => Replace::Existing,
        _ => Replace::Never,
    });
    let loaded = match (&src.hive_file, &src.image) {
        (Some(f), _) => {
            let bare = load_bare(f, false, src.lock_wait())?;
            policy.input(&bare.path, &bare.meta);
            for (p, _, m) in &bare.log_files {
                policy.input(p, m);
            }
            if let Some((out, _)) = &export_to {
                policy.check(out)?;
            }
            bare.loaded
        }
        (None, Some(image)) => {
            let img = DiskImage::open(image, &src.open_options())?;
            img.add_inputs_to(&mut policy);
            if let Some((out, _)) = &export_to {
                policy.check(out)?;
            }
            let map = ImageMap::build(&img, src.partition)?;
            let h = map.find_hive(&t.hive_paths, src.partition)?;
            let logs = map.hive_logs(&h)?;
            registry::load(&src.hive_name(&h.path, h.partition), h.bytes, logs, false)?
        }
        (None, None) => return Err(Error::Usage("name an image or --hive-file".into())),
    };
    let hive = &loaded.hive;
    let inner = registry::resolve_current_control_set(hive, &t.inner)?;
    let node =
        hive.find(&inner)?.ok_or_else(|| Error::Usage(format!("{key}: no such key in {}", hive.name().display())))?;
    let shown = match key.trim_matches('\\') {
        "" => "\\".to_string(),
        k => k.to_string(),
    };
    match cmd {
        ReadCommand::Get { value: Some(v), .. } => {
            let name = value_name(&v);
            let vk = hive.find_value(&node, &name)?.ok_or_else(|| Error::Usage(format!("{key}: no value {v:?}")))?;
            let out = ValueOut::new(hive, &shown, &vk)?;
            stale_warning(&loaded);
            emit(json, &out, report::render_value)?;
        }
        ReadCommand::Get { value: None, .. } | ReadCommand::List { .. } => {
            let out = KeyOut::new(hive, &shown, &node, loaded.stale.clone())?;
            emit(json, &out, report::render_key)?;
        }
        ReadCommand::Export { file, force: _, .. } => {
            stale_warning(&loaded);
            let prefix = if inner.is_empty() { t.prefix.clone() } else { format!("{}\\{inner}", t.prefix) };
            if json {
                let keys = export_tree(hive, &node, &prefix)?;
                emit(true, &keys, |_| String::new())?;
            }
            let text = regfile::export(hive, &node, &prefix)?;
            match file {
                Some(path) => {
                    let out = NewFile::create(&path, &policy)?;
                    crate::cli::report_stale("vhdreg", out.removed_stale());
                    crate::cli::track_temp(out.path());
                    out.write_all_and_commit(&regfile::to_utf16_file(&text))?;
                }
                None if !json => write_output(|w| w.write_all(text.replace("\r\n", "\n").as_bytes()))?,
                None => {}
            }
        }
    }
    Ok(true)
}

fn stale_warning(loaded: &LoadedHive) {
    if let Some(why) = &loaded.stale {
        eprintln!("vhdreg: warning: {why}; showing the primary file's data, which may be stale");
    }
}

/// Every key under `node` (itself first) with its values, for `export --json`.
fn export_tree(hive: &Hive, node: &crate::hive::KeyNode, prefix: &str) -> Result<Vec<KeyOut>> {
    let mut out = Vec::new();
    hive.walk(node, &mut |rel, k| {
        let name = if rel.is_empty() { prefix.to_string() } else { format!("{prefix}\\{rel}") };
        let mut key = KeyOut::new(hive, &name, k, None)?;
        key.subkeys.clear();
        out.push(key);
        Ok(())
    })?;
    Ok(out)
}

/// Changes for one hive, each with its key's path inside the hive.
type HiveOps = Vec<(RegOp, String)>;

/// A hive's new bytes, and the new first sector of each of its logs (after a replay).
struct Edited {
    bytes: Vec<u8>,
    log_headers: Vec<(String, Vec<u8>)>,
}

/// The key path of an op.
fn op_key(op: &RegOp) -> &str {
    match op {
        RegOp::Key(k) | RegOp::DeleteKey(k) => k,
        RegOp::SetValue { key, .. } | RegOp::DeleteValue { key, .. } => key,
    }
}

/// Applies `ops` to `hive` (keys are paths inside it once resolved); returns one line per
/// change. With `strict`, deleting something absent is an error; otherwise (.reg imports,
/// as regedit does) it is noted and skipped.
fn apply_ops(hive: &mut Hive, ops: &[(RegOp, String)], strict: bool) -> Result<(Vec<String>, bool)> {
    let mut lines = Vec::new();
    let mut changed = false;
    for (op, inner) in ops {
        let inner = registry::resolve_current_control_set(hive, inner)?;
        match op {
            RegOp::Key(k) => {
                if hive.find(&inner)?.is_none() {
                    hive.create_key(&inner)?;
                    lines.push(format!("create {k}"));
                    changed = true;
                }
            }
            RegOp::SetValue { key, name, ty, data } => {
                hive.set_value(&inner, name, *ty, data)?;
                lines.push(report::describe_set(key, name, *ty, data));
                changed = true;
            }
            RegOp::DeleteValue { key, name } => {
                let shown = if name.is_empty() { "(default)" } else { name };
                if hive.delete_value(&inner, name)? {
                    lines.push(format!("delete {key} {shown}"));
                    changed = true;
                } else if strict {
                    return Err(Error::Usage(format!("{key}: no value {shown:?} to delete")));
                } else {
                    lines.push(format!("(absent) {key} {shown}"));
                }
            }
            RegOp::DeleteKey(k) => {
                if hive.delete_key(&inner)? {
                    lines.push(format!("delete {k} and everything under it"));
                    changed = true;
                } else if strict {
                    return Err(Error::Usage(format!("{k}: no such key to delete")));
                } else {
                    lines.push(format!("(absent) {k}"));
                }
            }
        }
    }
    Ok((lines, changed))
}

/// Groups `ops` by the hive they go to, in order of first appearance.
fn group_by_hive(src: &HiveSource, ops: Vec<RegOp>) -> Result<Vec<(KeyTarget, HiveOps)>> {
    let mut groups: Vec<(KeyTarget, HiveOps)> = Vec::new();
    for op in ops {
        let t = src.target(op_key(&op))?;
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

/// Applies `ops` and writes the changed hives back (each hive atomically), or with `dry_run`
/// reports what would change.
fn write(src: &HiveSource, ops: Vec<RegOp>, strict: bool, flags: WriteFlags) -> Result<bool> {
    let mut out = WriteOut {
        dry_run: flags.dry_run,
        changes: Vec::new(),
        hives: Vec::new(),
        replays: Vec::new(),
        rolled_back: None,
    };
    let groups = group_by_hive(src, ops)?;
    match (&src.hive_file, &src.image) {
        (Some(file), _) => {
            let file = if flags.dry_run {
                file.clone()
            } else {
                std::fs::canonicalize(file).map_err(|e| Error::open(file, "open", e))?
            };
            for (_, ops) in &groups {
                write_file(src, &file, ops, strict, flags, &mut out)?;
            }
        }
        (None, Some(image)) => {
            let mut img = if flags.dry_run {
                DiskImage::open(image, &src.open_options())?
            } else {
                let (img, recovery) = DiskImage::open_writable(image, &src.open_options())?;
                out.rolled_back = report::recovery_text(&recovery);
                img
            };
            refuse_hazards(&img)?;
            for (target, ops) in &groups {
                write_image(src, &mut img, target, ops, strict, flags, &mut out)?;
            }
        }
        (None, None) => return Err(Error::Usage("name an image or --hive-file".into())),
    }
    emit(flags.json, &out, report::render_write)?;
    Ok(true)
}

/// Refuses to write into an image whose blocks overlap or lie outside the file: a write
/// there would land on other live data.
fn refuse_hazards(img: &DiskImage) -> Result<()> {
    match crate::vhd::check::write_hazards(img).into_iter().next() {
        Some(f) => Err(Error::unsupported(
            img.source(),
            format!("refusing to write into a structurally broken image: {}: {}", f.structure, f.problem),
        )),
        None => Ok(()),
    }
}

/// Edits a loaded hive; returns its new bytes and the log headers to reset, or `None` when
/// nothing changed.
fn edit(loaded: &mut LoadedHive, ops: &[(RegOp, String)], strict: bool, out: &mut WriteOut) -> Result<Option<Edited>> {
    let (lines, changed) = apply_ops(&mut loaded.hive, ops, strict)?;
    out.changes.extend(lines);
    if !changed {
        return Ok(None);
    }
    loaded.hive.seal();
    let new = loaded.hive.bytes().to_vec();
    let mut headers = Vec::new();
    if let Some(r) = loaded.replay.take() {
        headers = registry::log_resets(&r, &loaded.logs, &new);
        out.replays.push(r);
    }
    Ok(Some(Edited { bytes: new, log_headers: headers }))
}

/// A bare hive: the new file replaces the old by rename (same mode and owner, never shorter);
/// replayed logs get their header reset the same way (after the hive, so a crash in between
/// leaves a clean hive and stale logs, which Windows ignores).
fn write_file(
    src: &HiveSource,
    file: &Path,
    ops: &[(RegOp, String)],
    strict: bool,
    flags: WriteFlags,
    out: &mut WriteOut,
) -> Result<()> {
    let mut bare = load_bare(file, !flags.dry_run, src.lock_wait())?;
    let Some(Edited { bytes, log_headers: headers }) = edit(&mut bare.loaded, ops, strict, out)? else { return Ok(()) };
    let new = registry::keep_length(&bare.loaded.stored, bytes);
    let mut summary = WriteSummary {
        hive: file.display().to_string(),
        bytes_before: bare.loaded.stored.len() as u64,
        bytes_after: new.len() as u64,
        sectors_changed: changed_sectors(&bare.loaded.stored, &new),
        ..WriteSummary::default()
    };
    if !flags.dry_run {
        crate::cli::deferring_signals("vhdreg", || -> Result<()> {
            let replacement = NewFile::replacing(file, &bare.meta)?;
            crate::cli::track_temp(replacement.path());
            replacement.write_all_and_commit(&new)
        })?;
    }
    for (name, header) in headers {
        let Some((_, old)) = bare.loaded.logs.iter().find(|(n, _)| *n == name) else { continue };
        if !flags.dry_run {
            let Some((path, _, meta)) = bare.log_files.iter().find(|(p, ..)| p.to_string_lossy() == name) else {
                continue;
            };
            let mut bytes = old.clone();
            let n = header.len().min(bytes.len());
            bytes[..n].copy_from_slice(&header[..n]);
            crate::cli::deferring_signals("vhdreg", || -> Result<()> {
                let replacement = NewFile::replacing(path, meta)?;
                crate::cli::track_temp(replacement.path());
                replacement.write_all_and_commit(&bytes)
            })?;
        }
        summary.logs_reset.push(name);
    }
    drop(bare.file);
    out.hives.push(summary);
    Ok(())
}

/// 512-byte sectors of `new` that differ from `old`.
fn changed_sectors(old: &[u8], new: &[u8]) -> u64 {
    new.chunks(512).enumerate().filter(|(i, c)| old.get(i * 512..i * 512 + c.len()) != Some(*c)).count() as u64
}

/// A hive inside the image: written back through its clusters (grown in NTFS if needed) under
/// the image's journal.
fn write_image(
    src: &HiveSource,
    img: &mut DiskImage,
    target: &KeyTarget,
    ops: &[(RegOp, String)],
    strict: bool,
    flags: WriteFlags,
    out: &mut WriteOut,
) -> Result<()> {
    let writes = {
        let map = ImageMap::build(img, src.partition)?;
        let mut h = map.find_hive(&target.hive_paths, src.partition)?;
        crate::pass::refuse_untrusted_volumes(&map, Some(h.partition), flags.force)?;
        let logs = map.hive_logs(&h)?;
        let name = src.hive_name(&h.path, h.partition);
        let stored = std::mem::take(&mut h.bytes);
        let mut loaded = registry::load(&name, stored, logs, true)?;
        let Some(edited) = edit(&mut loaded, ops, strict, out)? else { return Ok(()) };
        let (writes, summary) =
            registry::plan_image_write(&map, &h, &loaded.stored, &edited.bytes, &edited.log_headers)?;
        out.hives.push(summary);
        writes
    };
    if !flags.dry_run {
        crate::cli::deferring_signals("vhdreg", || disk_write::apply(img, &writes))?;
    }
    Ok(())
}
