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
use crate::host::{self, LockWait, NewFile, OutputPolicy, Replace};
use crate::pass::registry::edit::{self, EditOptions};
use crate::pass::registry::{self, LoadedHive};
use crate::report::reg::{self as report, KeyOut, ValueOut};
use crate::vhd::image::{DiskImage, OpenOptions};

/// Get, set, delete, import and export registry keys and values in the hives inside a VHD or
/// VHDX image (or a bare hive file), offline. Writes are journaled and rolled back if
/// interrupted.
#[derive(Parser, Debug)]
#[command(name = "vhdreg", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Write the man page or a shell completion script to standard output, and nothing else.
    #[arg(long, value_enum, value_name = "WHAT")]
    pub generate: Option<crate::cli::Generate>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Before the command, as older versions took it: the commands' own --dry-run.
    #[arg(long, hide = true)]
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

/// Examples and exit codes, at the end of `--help`.
const AFTER_HELP: &str = crate::cli::after_help!(
    "  vhdreg win.vhdx get 'HKLM\\SYSTEM\\Select' Current
  vhdreg win.vhdx set 'HKLM\\SOFTWARE\\Example' Enabled --type REG_DWORD --data 1
  vhdreg win.vhdx export 'HKLM\\SYSTEM\\ControlSet001\\Services\\Tcpip' tcpip.reg
  vhdreg --hive-file NTUSER.DAT list 'Software\\Microsoft'"
);

/// Where the hives are.
#[derive(clap::Args, Debug)]
pub struct HiveSource {
    /// The image: raw, or a fixed, dynamic or differencing VHD or VHDX (writes to a differencing image go
    /// into the child).
    #[arg(required_unless_present = "hive_file", conflicts_with = "hive_file")]
    pub image: Option<PathBuf>,
    /// Work on this bare hive file instead of an image; keys are paths inside it (a leading
    /// root such as HKLM\SOFTWARE is ignored).
    #[arg(long, value_name = "FILE", global = true)]
    pub hive_file: Option<PathBuf>,
    /// The Windows volume to use when several hold the hive.
    #[arg(long, value_name = "N", global = true)]
    pub partition: Option<u32>,
    /// A hive at this path in the volume (`/` or `\` separated); keys are paths inside it.
    #[arg(long, value_name = "PATH-IN-VOLUME", conflicts_with = "hive_file", global = true)]
    pub hive: Option<String>,
    /// Parent of a differencing image, instead of the one its locators name.
    #[arg(long, value_name = "PATH", global = true)]
    pub parent: Option<PathBuf>,
    /// The image's format when its content should not decide: `raw` reads any file as a raw
    /// disk, `vhd` requires a VHD footer, `vhdx` the VHDX identifier.
    #[arg(long, value_enum, value_name = "FORMAT", global = true)]
    pub format: Option<FormatArg>,
    /// Wait for another vhdkit process using the image or hive instead of failing at once.
    #[arg(long, global = true)]
    pub wait: bool,
}

/// The read-only commands (also `vhdinspect reg`).
#[derive(Subcommand, Debug)]
pub enum ReadCommand {
    /// A value (`@` or "" for the default value); without a value name, the key's listing.
    #[command(after_help = crate::cli::after_help!("  vhdreg win.vhdx get 'HKLM\\SYSTEM\\Select' Current\n  vhdreg get win.vhdx 'HKLM\\SYSTEM\\CurrentControlSet\\Control\\ComputerName\\ComputerName'\n  vhdreg --hive-file NTUSER.DAT get 'Control Panel\\Desktop' Wallpaper"))]
    Get {
        /// The key: HKLM\SYSTEM\..., HKU\NAME\..., HKEY_LOCAL_MACHINE\... (CurrentControlSet
        /// follows Select\Current), or a path inside the hive with --hive-file or --hive.
        key: String,
        /// The value's name (`@` or "" for the default value); none lists the key.
        value: Option<String>,
    },
    /// A key's subkeys and values.
    #[command(after_help = crate::cli::after_help!("  vhdreg win.vhdx list 'HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion'"))]
    List {
        /// The key: HKLM\SYSTEM\..., HKU\NAME\..., HKEY_LOCAL_MACHINE\... (CurrentControlSet
        /// follows Select\Current), or a path inside the hive with --hive-file or --hive.
        key: String,
    },
    /// A key and everything under it as a .reg file (UTF-16LE, regedit's format); to standard
    /// output as text when no file is given.
    #[command(after_help = crate::cli::after_help!("  vhdreg win.vhdx export 'HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip' tcpip.reg"))]
    Export {
        /// The key: HKLM\SYSTEM\..., HKU\NAME\..., HKEY_LOCAL_MACHINE\... (CurrentControlSet
        /// follows Select\Current), or a path inside the hive with --hive-file or --hive.
        key: String,
        /// The .reg file to write (never an input; an existing one only with --force).
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
    #[command(after_help = crate::cli::after_help!("  vhdreg win.vhdx set 'HKLM\\SOFTWARE\\Example' Enabled --type REG_DWORD --data 1\n  vhdreg win.vhdx set 'HKLM\\SOFTWARE\\Example' Paths --type REG_MULTI_SZ --data a --data b --dry-run"))]
    Set {
        /// The key: HKLM\SYSTEM\..., HKU\NAME\..., HKEY_LOCAL_MACHINE\... (CurrentControlSet
        /// follows Select\Current), or a path inside the hive with --hive-file or --hive.
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
        #[command(flatten)]
        dry: DryRun,
    },
    /// Delete a value, or with no value name the key and everything under it.
    #[command(after_help = crate::cli::after_help!("  vhdreg win.vhdx delete 'HKLM\\SOFTWARE\\Example' Enabled\n  vhdreg win.vhdx delete 'HKLM\\SOFTWARE\\Example'"))]
    Delete {
        /// The key: HKLM\SYSTEM\..., HKU\NAME\..., HKEY_LOCAL_MACHINE\... (CurrentControlSet
        /// follows Select\Current), or a path inside the hive with --hive-file or --hive.
        key: String,
        /// The value to delete; none deletes the key.
        value: Option<String>,
        #[command(flatten)]
        dry: DryRun,
    },
    /// Apply a .reg file (regedit 5.00 UTF-16 or REGEDIT4): keys, values, `-` deletions.
    #[command(after_help = crate::cli::after_help!("  vhdreg win.vhdx import settings.reg --dry-run\n  vhdreg win.vhdx import settings.reg"))]
    Import {
        /// The .reg file.
        file: PathBuf,
        #[command(flatten)]
        dry: DryRun,
    },
    /// Roll back a write that was interrupted (every write does this first, too). With
    /// --force, also when the image and its journal were restored from a copy (every journaled
    /// byte is still checked).
    #[command(after_help = crate::cli::after_help!("  vhdreg win.vhdx recover"))]
    Recover,
}

/// `--dry-run`, offered by the commands that write.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct DryRun {
    /// Print what would change and write nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Runs `vhdreg` with the process arguments.
pub fn main() -> ExitCode {
    let cmd = with_image_in_usage(<Cli as clap::CommandFactory>::command(), "vhdreg");
    if let Some(code) = crate::cli::generate_if_asked(cmd.clone()) {
        return code;
    }
    crate::cli::handle_signals("vhdreg");
    let args = image_before_command(&cmd, std::env::args_os().collect(), 1);
    finish("vhdreg", run(crate::cli::parse(cmd, args)))
}

/// `cmd` (vhdreg, or vhdinspect's reg, which `tool` names) with each command's usage naming
/// where the image or the bare hive goes, which clap would leave out (the image belongs to
/// the parent command).
pub(crate) fn with_image_in_usage(mut cmd: clap::Command, tool: &str) -> clap::Command {
    let names: Vec<String> = cmd.get_subcommands().map(|c| c.get_name().to_string()).filter(|n| n != "help").collect();
    for name in names {
        cmd = cmd.mut_subcommand(&name, |c| {
            let args: String = c
                .get_arguments()
                .filter(|a| a.is_positional())
                .map(|a| {
                    let id =
                        a.get_value_names().and_then(|v| v.first()).map_or(a.get_id().to_string(), |v| v.to_string());
                    if a.is_required_set() { format!(" <{id}>") } else { format!(" [{id}]") }
                })
                .collect();
            let image = format!("{tool} {name} [OPTIONS] <IMAGE>{args}");
            c.override_usage(match name.as_str() {
                "recover" => image,
                _ => format!("{image}\n       {tool} --hive-file <FILE> {name} [OPTIONS]{args}"),
            })
        });
    }
    cmd
}

/// `vhdreg get IMAGE KEY` as `vhdreg IMAGE get KEY` (and `vhdinspect reg get IMAGE KEY` as
/// `vhdinspect reg IMAGE get KEY`), as the other commands take it: `args[from..]` are the
/// words `cmd` parses. When the first word that is not an option is a command and no
/// `--hive-file` is given, the command's first word that is not an option is the image, moved
/// before the command. The old order works as before.
pub(crate) fn image_before_command(
    cmd: &clap::Command,
    mut args: Vec<std::ffi::OsString>,
    from: usize,
) -> Vec<std::ffi::OsString> {
    let takes_value = |c: &clap::Command, word: &str| {
        let name = word.trim_start_matches('-');
        !word.contains('=')
            && c.get_arguments().any(|a| {
                (a.get_long() == Some(name) || a.get_short().is_some_and(|s| word == format!("-{s}")))
                    && a.get_action().takes_values()
            })
    };
    // A bare hive instead of an image: --hive-file goes first wherever it was given (the image
    // it replaces is checked before options after the command are seen).
    if let Some(i) = args
        .iter()
        .skip(from)
        .position(|a| a.to_str().is_some_and(|a| a == "--hive-file" || a.starts_with("--hive-file=")))
        .map(|i| i + from)
    {
        let n = if args[i] == "--hive-file" { 2 } else { 1 }.min(args.len() - i);
        let option: Vec<std::ffi::OsString> = args.drain(i..i + n).collect();
        args.splice(from..from, option);
        return args;
    }
    // The first word that is not an option (or an option's value).
    let first_word = |from: usize, c: &clap::Command, args: &[std::ffi::OsString]| {
        let mut i = from;
        while i < args.len() {
            match args[i].to_str() {
                Some("--") => return Some(i + 1).filter(|&j| j < args.len()),
                Some(w) if w.starts_with('-') && w.len() > 1 => {
                    i += if takes_value(c, w) || takes_value(cmd, w) { 2 } else { 1 }
                }
                _ => return Some(i),
            }
        }
        None
    };
    let Some(at) = first_word(from, cmd, &args) else { return args };
    let Some(sub) = args[at].to_str().and_then(|w| cmd.find_subcommand(w)).cloned() else { return args };
    if let Some(image) = first_word(at + 1, &sub, &args) {
        let image = args.remove(image);
        args.insert(at, image);
    }
    args
}

/// The largest .reg file or value data file read (a .reg file of every key of a large hive
/// stays far below).
const MAX_INPUT_FILE: u64 = 1 << 30;

fn run(cli: Cli) -> Result<bool> {
    let src = &cli.source;
    let asked = match &cli.command {
        RegCommand::Set { dry, .. } | RegCommand::Delete { dry, .. } | RegCommand::Import { dry, .. } => dry.dry_run,
        RegCommand::Read(_) | RegCommand::Recover => false,
    };
    let w = WriteFlags { dry_run: cli.dry_run || asked, force: cli.force, json: cli.json };
    if cli.dry_run && matches!(cli.command, RegCommand::Read(_) | RegCommand::Recover) {
        return Err(Error::Usage(
            "--dry-run applies to set, delete and import: get, list and export write nothing to the image, and \
             recover must write to roll back"
                .into(),
        ));
    }
    match cli.command {
        RegCommand::Read(ReadCommand::Export { key, file, force }) => {
            run_read(src, ReadCommand::Export { key, file, force: force || cli.force }, cli.json)
        }
        RegCommand::Read(read) => run_read(src, read, cli.json),
        RegCommand::Set { key, value, ty, data, data_file, .. } => {
            let ty = value::parse_type(&ty)?;
            let data = match data_file {
                Some(f) => data_from_file(&f, ty, lock_wait(src.wait))?,
                None => value::encode(ty, &data)?,
            };
            write(src, vec![RegOp::SetValue { key, name: value_name(&value), ty, data }], true, w)
        }
        RegCommand::Delete { key, value: Some(v), .. } => {
            write(src, vec![RegOp::DeleteValue { key, name: value_name(&v) }], true, w)
        }
        RegCommand::Delete { key, value: None, .. } => write(src, vec![RegOp::DeleteKey(key)], true, w),
        RegCommand::Import { file, .. } => {
            let bytes = host::read_limited(&file, MAX_INPUT_FILE, "a .reg file", lock_wait(src.wait))?;
            let ops = regfile::parse(&bytes).map_err(|e| Error::unsupported(&file, e.to_string()))?;
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
    let text = || String::from_utf8(bytes.clone()).map_err(|_| Error::unsupported(path, "not UTF-8 text"));
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
            wait: lock_wait(self.wait),
            format: self.format.map(FormatArg::format),
            ..OpenOptions::default()
        }
    }

    /// Where the hives are, for the library.
    fn source(&self) -> Result<edit::HiveSource> {
        match (&self.hive_file, &self.image) {
            (Some(path), _) => Ok(edit::HiveSource::File { path: path.clone(), wait: lock_wait(self.wait) }),
            (None, Some(path)) => Ok(edit::HiveSource::Image {
                path: path.clone(),
                open: self.open_options(),
                hive: self.hive.clone(),
                partition: self.partition,
            }),
            (None, None) => Err(Error::Usage("name an image or --hive-file".into())),
        }
    }
}

/// Runs a read-only command (for `vhdreg` and `vhdinspect reg`).
pub fn run_read(src: &HiveSource, cmd: ReadCommand, json: bool) -> Result<bool> {
    let key = match &cmd {
        ReadCommand::Get { key, .. } | ReadCommand::List { key } | ReadCommand::Export { key, .. } => key.clone(),
    };
    let source = src.source()?;
    let export_to = match &cmd {
        ReadCommand::Export { file: Some(f), force, .. } => Some((f.clone(), *force)),
        _ => None,
    };
    let mut policy = OutputPolicy::new(match &export_to {
        Some((_, true)) => Replace::Existing,
        _ => Replace::Never,
    });
    let (t, loaded) = edit::read(&source, &key, &mut policy)?;
    if let Some((out, _)) = &export_to {
        policy.check(out)?;
    }
    let hive = &loaded.hive;
    let inner = registry::resolve_current_control_set(hive, &t.inner)?;
    let node = hive
        .find(&inner)?
        .ok_or_else(|| Error::NotFound(format!("{key}: no such key in {}", hive.name().display())))?;
    let shown = t.report_path(&inner);
    match cmd {
        ReadCommand::Get { value: Some(v), .. } => {
            let name = value_name(&v);
            let vk = hive.find_value(&node, &name)?.ok_or_else(|| Error::NotFound(format!("{key}: no value {v:?}")))?;
            let out = report::ValueGot { value: ValueOut::new(hive, &shown, &vk)?, stale: loaded.stale.clone() };
            stale_warning(&loaded);
            emit(json, &out, |g| report::render_value(&g.value))?;
        }
        ReadCommand::Get { value: None, .. } | ReadCommand::List { .. } => {
            let out = KeyOut::new(hive, &shown, &node, loaded.stale.clone())?;
            emit(json, &out, report::render_key)?;
        }
        ReadCommand::Export { file, force: _, .. } => {
            stale_warning(&loaded);
            let prefix = if inner.is_empty() { t.prefix.clone() } else { format!("{}\\{inner}", t.prefix) };
            if json {
                let keys = export_tree(hive, &node, &shown, &loaded.stale)?;
                emit(true, &report::ExportOut { keys }, |_| String::new())?;
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
fn export_tree(hive: &Hive, node: &crate::hive::KeyNode, path: &str, stale: &Option<String>) -> Result<Vec<KeyOut>> {
    let mut out = Vec::new();
    hive.walk(node, &mut |rel, k| {
        let name = if rel.is_empty() { path.to_string() } else { format!("{path}\\{rel}") };
        out.push(KeyOut::exported(hive, &name, k, stale.clone())?);
        Ok(())
    })?;
    Ok(out)
}

/// Applies `ops` and writes the changed hives back (each hive atomically, its write not cut
/// short by an interruption), or with `--dry-run` reports what would change.
fn write(src: &HiveSource, ops: Vec<RegOp>, strict: bool, flags: WriteFlags) -> Result<bool> {
    let opts = EditOptions { strict, dry_run: flags.dry_run, force: flags.force };
    let report = edit::edit(&src.source()?, ops, opts, &|commit| crate::cli::deferring_signals(commit))?;
    emit(flags.json, &report, report::render_write)?;
    Ok(true)
}
