//! `vhdreg` (and the read-only `vhdinspect reg`): registry keys and values in the hives of an
//! image, or in a bare hive file, offline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cli::{emit, finish, write_output};
use crate::error::{Error, Result};
use crate::hive::regfile::{self, RegOp};
use crate::hive::value::{self, reg_type};
use crate::hive::{Hive, log};
use crate::map::ImageMap;
use crate::pass::journal;
use crate::pass::registry::{self, KeyTarget, LoadedHive, WriteSummary};
use crate::report::reg::{self as report, KeyOut, ValueOut, WriteOut};
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
    Export { key: String, file: Option<PathBuf> },
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
}

/// Runs `vhdreg` with the process arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    finish("vhdreg", run(cli))
}

fn run(cli: Cli) -> Result<bool> {
    let src = &cli.source;
    if let Some(image) = &src.image {
        if cli.dry_run {
            journal::refuse_if_pending(image)?;
        } else if journal::recover(image, &src.open_options())? {
            eprintln!("vhdreg: rolled back an interrupted run on {}", image.display());
        }
    }
    match cli.command {
        RegCommand::Read(read) => run_read(src, read, cli.json),
        RegCommand::Set { key, value, ty, data, data_file } => {
            let ty = value::parse_type(&ty)?;
            let data = match data_file {
                Some(f) => data_from_file(&f, ty)?,
                None => value::encode(ty, &data)?,
            };
            write(src, vec![RegOp::SetValue { key, name: value_name(&value), ty, data }], true, cli.dry_run, cli.json)
        }
        RegCommand::Delete { key, value: Some(v) } => {
            write(src, vec![RegOp::DeleteValue { key, name: value_name(&v) }], true, cli.dry_run, cli.json)
        }
        RegCommand::Delete { key, value: None } => write(src, vec![RegOp::DeleteKey(key)], true, cli.dry_run, cli.json),
        RegCommand::Import { file } => {
            let bytes = std::fs::read(&file).map_err(|e| Error::open(&file, "read", e))?;
            let ops = regfile::parse(&bytes).map_err(|e| Error::Usage(format!("{}: {e}", file.display())))?;
            write(src, ops, false, cli.dry_run, cli.json)
        }
    }
}

/// `@` names the default value, as in .reg files.
fn value_name(v: &str) -> String {
    if v == "@" { String::new() } else { v.to_string() }
}

/// Value data from a file: text for strings and numbers, the bytes for the rest.
fn data_from_file(path: &Path, ty: u32) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::open(path, "read", e))?;
    let text = || String::from_utf8(bytes.clone()).map_err(|_| Error::Usage(format!("{}: not UTF-8 text", path.display())));
    match ty {
        reg_type::SZ | reg_type::EXPAND_SZ | reg_type::LINK => Ok(value::utf16z(text()?.trim_end_matches(['\r', '\n']))),
        reg_type::MULTI_SZ => Ok(value::encode_multi(&text()?.lines().map(str::to_string).collect::<Vec<_>>())),
        reg_type::DWORD | reg_type::DWORD_BIG_ENDIAN | reg_type::QWORD => value::encode(ty, &[text()?.trim().to_string()]),
        _ => Ok(bytes),
    }
}

impl HiveSource {
    /// How the image is opened.
    pub fn open_options(&self) -> OpenOptions {
        OpenOptions { strict: false, parent: self.parent.clone(), writable: false, allow_missing_parent: false }
    }

    /// Where `key` lives.
    fn target(&self, key: &str) -> Result<KeyTarget> {
        match (&self.hive_file, &self.hive) {
            (Some(f), _) => registry::target(key, Some(&f.to_string_lossy())),
            (None, h) => registry::target(key, h.as_deref()),
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

    /// Reads the bare hive file and the logs beside it.
    fn load_file(&self, file: &Path, for_edit: bool) -> Result<LoadedHive> {
        let stored = std::fs::read(file).map_err(|e| Error::open(file, "read", e))?;
        if stored.len() as u64 > registry::MAX_HIVE {
            return Err(Error::unsupported(file, "larger than 2 GiB: not a hive"));
        }
        // A log that cannot be read counts as absent: a dirty hive is then refused, not guessed.
        let logs = registry::read_logs(&file.to_string_lossy(), |name| Ok(std::fs::read(name).ok()))?;
        registry::load(file, stored, logs, for_edit)
    }
}

/// Runs a read-only command (for `vhdreg` and `vhdinspect reg`).
pub fn run_read(src: &HiveSource, cmd: ReadCommand, json: bool) -> Result<bool> {
    let key = match &cmd {
        ReadCommand::Get { key, .. } | ReadCommand::List { key } | ReadCommand::Export { key, .. } => key.clone(),
    };
    let t = src.target(&key)?;
    let loaded = match (&src.hive_file, &src.image) {
        (Some(f), _) => src.load_file(f, false)?,
        (None, Some(image)) => {
            let img = DiskImage::open(image, &src.open_options())?;
            let map = ImageMap::build(&img, src.partition)?;
            let h = map.find_hive(&t.hive_paths, src.partition)?;
            let logs = map.hive_logs(&h)?;
            registry::load(&src.hive_name(&h.path, h.partition), h.bytes, logs, false)?
        }
        (None, None) => return Err(Error::Usage("name an image or --hive-file".into())),
    };
    let hive = &loaded.hive;
    let inner = registry::resolve_current_control_set(hive, &t.inner)?;
    let node = hive.find(&inner)?.ok_or_else(|| Error::Usage(format!("{key}: no such key in {}", hive.name().display())))?;
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
        ReadCommand::Export { file, .. } => {
            stale_warning(&loaded);
            let prefix = if inner.is_empty() { t.prefix.clone() } else { format!("{}\\{inner}", t.prefix) };
            if json {
                let keys = export_tree(hive, &node, &prefix)?;
                emit(true, &keys, |_| String::new())?;
            }
            let text = regfile::export(hive, &node, &prefix)?;
            match file {
                Some(path) => crate::vhd::output::write_atomically(&path, &regfile::to_utf16_file(&text))?,
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
fn write(src: &HiveSource, ops: Vec<RegOp>, strict: bool, dry_run: bool, json: bool) -> Result<bool> {
    let mut out = WriteOut { dry_run, changes: Vec::new(), hives: Vec::new(), replays: Vec::new() };
    for (target, ops) in group_by_hive(src, ops)? {
        match (&src.hive_file, &src.image) {
            (Some(file), _) => write_file(src, file, &ops, strict, dry_run, &mut out)?,
            (None, Some(image)) => write_image(src, image, &target, &ops, strict, dry_run, &mut out)?,
            (None, None) => return Err(Error::Usage("name an image or --hive-file".into())),
        }
    }
    emit(json, &out, report::render_write)?;
    Ok(true)
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
        out.replays.push(r);
        headers = loaded.logs.iter().map(|(n, _)| (n.clone(), log::reset_header(&new))).collect();
    }
    Ok(Some(Edited { bytes: new, log_headers: headers }))
}

/// A bare hive: the new file replaces the old by rename; replayed logs get their header reset
/// the same way (after the hive, so a crash in between leaves a clean hive and stale logs,
/// which Windows ignores).
fn write_file(src: &HiveSource, file: &Path, ops: &[(RegOp, String)], strict: bool, dry_run: bool, out: &mut WriteOut) -> Result<()> {
    let mut loaded = src.load_file(file, true)?;
    let Some(Edited { bytes: new, log_headers: headers }) = edit(&mut loaded, ops, strict, out)? else { return Ok(()) };
    let mut summary = WriteSummary {
        hive: file.display().to_string(),
        bytes_before: loaded.stored.len() as u64,
        bytes_after: new.len() as u64,
        sectors_changed: changed_sectors(&loaded.stored, &new),
        ..WriteSummary::default()
    };
    if !dry_run {
        crate::vhd::output::write_atomically(file, &new)?;
    }
    for (name, header) in headers {
        let Some((_, old)) = loaded.logs.iter().find(|(n, _)| *n == name) else { continue };
        if !dry_run {
            let mut bytes = old.clone();
            let n = header.len().min(bytes.len());
            bytes[..n].copy_from_slice(&header[..n]);
            crate::vhd::output::write_atomically(Path::new(&name), &bytes)?;
        }
        summary.logs_reset.push(name);
    }
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
    image: &Path,
    target: &KeyTarget,
    ops: &[(RegOp, String)],
    strict: bool,
    dry_run: bool,
    out: &mut WriteOut,
) -> Result<()> {
    let opts = src.open_options();
    let writes = {
        let img = DiskImage::open(image, &opts)?;
        let map = ImageMap::build(&img, src.partition)?;
        let mut h = map.find_hive(&target.hive_paths, src.partition)?;
        let logs = map.hive_logs(&h)?;
        let name = src.hive_name(&h.path, h.partition);
        let stored = std::mem::take(&mut h.bytes);
        let mut loaded = registry::load(&name, stored, logs, true)?;
        let Some(edited) = edit(&mut loaded, ops, strict, out)? else { return Ok(()) };
        let (writes, summary) = registry::plan_image_write(&map, &h, &loaded.stored, &edited.bytes, &edited.log_headers)?;
        out.hives.push(summary);
        writes
    };
    if !dry_run {
        journal::apply(image, &opts, &writes)?;
    }
    Ok(())
}
