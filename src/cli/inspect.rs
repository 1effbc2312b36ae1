//! `vhdinspect`: read-only inspection of an image. It never opens anything for writing.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cli::args::{FormatArg, lock_wait};
use crate::cli::{emit, finish, write_output};
use crate::error::Result;
use crate::host::{NewFile, OutputPolicy, Replace};
use crate::map::ImageMap;
use crate::ntfs::IndexDetail;
use crate::report;
use crate::report::owner::Query;
use crate::vhd::device::BlockDevice;
use crate::vhd::image::{DiskImage, OpenOptions};

/// Inspect VHD and VHDX disk images offline, never writing them: every structure of the
/// container, its partitions and NTFS volumes, which file owns any sector or block, what a
/// differencing disk changes, alignment, registry values, and files read out of the image.
#[derive(Parser, Debug)]
#[command(name = "vhdinspect", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress on standard error (it shows only when standard error is a terminal).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Write the man page or a shell completion script to standard output, and nothing else.
    #[arg(long, value_enum, value_name = "WHAT")]
    pub generate: Option<crate::cli::Generate>,
    #[command(subcommand)]
    pub command: Command,
}

/// Examples and exit codes, at the end of `--help`.
const AFTER_HELP: &str = crate::cli::after_help!(
    "  vhdinspect dump disk.vhdx                       headers, BAT, partition table, boot sectors
  vhdinspect check disk.vhd                       structural problems (exit 1 when any)
  vhdinspect owner disk.vhd --sector 2048         which file owns a sector
  vhdinspect cat disk.vhd Windows/System32/drivers/etc/hosts"
);

/// Options every command that opens an image shares.
#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    /// The image: raw, or a fixed, dynamic or differencing VHD or VHDX.
    pub image: PathBuf,
    /// Parent of a differencing image, instead of the one its locators name.
    #[arg(long, value_name = "PATH")]
    pub parent: Option<PathBuf>,
    /// Treat checksum mismatches, disagreeing footer copies and broken VHDX BAT entries as errors.
    #[arg(long)]
    pub strict: bool,
    /// The image's format when its content should not decide: `raw` reads any file as a raw
    /// disk, `vhd` requires a VHD footer, `vhdx` the VHDX identifier.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<FormatArg>,
    /// Wait for another vhdkit process using the image instead of failing at once.
    #[arg(long)]
    pub wait: bool,
}

impl ImageArgs {
    /// How the image is opened.
    pub fn open_options(&self, allow_missing_parent: bool) -> OpenOptions {
        OpenOptions {
            strict: self.strict,
            parent: self.parent.clone(),
            allow_missing_parent,
            wait: lock_wait(self.wait),
            format: self.format.map(FormatArg::format),
            ..OpenOptions::default()
        }
    }

    /// Opens the image read-only; `allow_missing_parent` lets metadata-only commands show a
    /// differencing image whose parent is gone.
    pub fn open(&self, allow_missing_parent: bool) -> Result<DiskImage> {
        DiskImage::open(&self.image, &self.open_options(allow_missing_parent))
    }
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Decode every structure: VHD footer, dynamic header, BAT, parent locators; VHDX headers, region table, metadata, log, BAT; MBR/GPT, boot sectors.
    #[command(after_help = crate::cli::after_help!("  vhdinspect dump disk.vhdx\n  vhdinspect dump disk.vhd --blocks --json"))]
    Dump {
        #[command(flatten)]
        image: ImageArgs,
        /// List every allocated BAT entry with its sectors-present count.
        #[arg(long)]
        blocks: bool,
        /// Show the raw sector bitmap of this block.
        #[arg(long, value_name = "BLOCK")]
        bitmap: Option<u64>,
    },
    /// Check structural consistency; exit 1 when any problem is found.
    #[command(after_help = crate::cli::after_help!("  vhdinspect check disk.vhd\n  vhdinspect check --strict child.vhd"))]
    Check {
        #[command(flatten)]
        image: ImageArgs,
    },
    /// List every file and directory of the NTFS volumes (one entry per hard link).
    #[command(after_help = concat!("Flags, one letter each or '-': d directory, s system (NTFS metadata or the \
SYSTEM attribute), h hidden, S sparse, C compressed, E encrypted, R reparse point. Below a file, \
its alternate data streams as FILE:STREAM with their sizes.\n\n", crate::cli::after_help!("  vhdinspect files disk.vhd
  vhdinspect files disk.vhdx --partition 2 --runs
  vhdinspect files disk.vhd --jsonl | head")))]
    Files {
        #[command(flatten)]
        image: ImageArgs,
        /// Only this partition (Linux numbering: primaries 1-4, logicals from 5).
        #[arg(long, value_name = "N")]
        partition: Option<u32>,
        /// Add every stream's and attribute's data runs.
        #[arg(long)]
        runs: bool,
        /// JSON Lines: a line per file system, per volume, then per file (each with
        /// `schema_version` and `type`), written as the listing goes.
        #[arg(long, conflicts_with = "json")]
        jsonl: bool,
    },
    /// What lives at a sector, block, cluster or offset; or where a file's clusters are.
    #[command(after_help = crate::cli::after_help!("  vhdinspect owner disk.vhd --sector 2048\n  vhdinspect owner disk.vhd --file Windows/System32/config/SYSTEM\n  vhdinspect owner disk.vhd --block 17 --jsonl"))]
    #[command(override_usage = "vhdinspect owner [OPTIONS] <IMAGE> --sector <SECTOR>|--block <BLOCK>|--offset <OFFSET>
       vhdinspect owner [OPTIONS] <IMAGE> --cluster <CLUSTER> --partition <N>
       vhdinspect owner [OPTIONS] <IMAGE> --file <PATH>")]
    Owner {
        #[command(flatten)]
        image: ImageArgs,
        #[command(flatten)]
        at: OwnerQuery,
        /// The partition of --cluster (and the volume to search for --file).
        #[arg(long, value_name = "N")]
        partition: Option<u32>,
        /// JSON Lines: a line per owner in the order the range meets them (`"type": "owner"`),
        /// then the answer without them (`"type": "summary"`).
        #[arg(long, conflicts_with_all = ["json", "file"])]
        jsonl: bool,
    },
    /// Every container block: allocated, sectors present, used clusters, droppable, top owners.
    #[command(after_help = crate::cli::after_help!("  vhdinspect map disk.vhd\n  vhdinspect map disk.vhd --svg map.svg"))]
    Map {
        #[command(flatten)]
        image: ImageArgs,
        /// List only the blocks overlapping this partition.
        #[arg(long, value_name = "N")]
        partition: Option<u32>,
        /// Also draw the disk as a grid of blocks coloured by state.
        #[arg(long, value_name = "OUT.svg")]
        svg: Option<PathBuf>,
        /// Replace OUT.svg if it exists.
        #[arg(long)]
        force: bool,
        /// JSON Lines: a line per block, then the summary (each with `schema_version` and
        /// `type`).
        #[arg(long, conflicts_with = "json")]
        jsonl: bool,
    },
    /// For a differencing image: the files whose sectors the child holds.
    #[command(after_help = crate::cli::after_help!("  vhdinspect diff child.vhd\n  vhdinspect diff child.vhd --json"))]
    Diff {
        #[command(flatten)]
        image: ImageArgs,
    },
    /// For a differencing image: what moving it onto an updated copy of its parent would do,
    /// file by file (nothing is written).
    #[command(after_help = crate::cli::after_help!("  vhdinspect rebase-plan child.vhd --onto updated-base.vhd"))]
    RebasePlan {
        #[command(flatten)]
        image: ImageArgs,
        /// The updated parent.
        #[arg(long, value_name = "NEW_PARENT")]
        onto: PathBuf,
    },
    /// The page blob upload plan: 512-byte-aligned ranges of needed non-zero data (max 4 MiB).
    #[command(after_help = crate::cli::after_help!("  vhdinspect ranges disk.vhd\n  vhdinspect ranges disk.vhd --json"))]
    Ranges {
        #[command(flatten)]
        image: ImageArgs,
    },
    /// Where each partition starts against 4 KiB, 64 KiB, 1 MiB and the VHD block size, and
    /// what a misaligned start costs.
    #[command(after_help = crate::cli::after_help!("  vhdinspect align xp.vhd\n  vhdinspect align xp.vhd --boundary 64K --fail-on-misaligned"))]
    Align {
        #[command(flatten)]
        image: ImageArgs,
        /// The boundary partitions should start on (default 1M).
        #[arg(long, value_name = "SIZE", value_parser = crate::cli::args::parse_boundary, default_value = "1M")]
        boundary: crate::cli::args::Boundary,
        /// Exit 1 when a partition is not aligned to the boundary.
        #[arg(long)]
        fail_on_misaligned: bool,
    },
    /// Write a file's bytes to standard output: PATH in the volume (`/` or `\`,
    /// case-insensitive), or PATH:STREAM for an alternate data stream.
    #[command(after_help = crate::cli::after_help!("  vhdinspect cat disk.vhd Windows/System32/drivers/etc/hosts\n  vhdinspect cat disk.vhd 'Users/me/setup.exe:Zone.Identifier'"))]
    Cat {
        #[command(flatten)]
        image: ImageArgs,
        /// The file, as PATH or PATH:STREAM.
        #[arg(value_name = "PATH[:STREAM]")]
        path: String,
        /// The partition holding it, when several volumes have the path.
        #[arg(long, value_name = "N")]
        partition: Option<u32>,
    },
    /// Copy files out of the NTFS volumes into a new folder: everything, or each PATH (a file,
    /// or a folder with everything under it), with alternate data streams (as NAME:STREAM
    /// beside the file), hard links and times. Symbolic links and junctions are not recreated.
    #[command(after_help = crate::cli::after_help!("  vhdinspect extract disk.vhd Windows/System32/config --to out\n  vhdinspect extract disk.vhd --to whole-volume"))]
    Extract {
        #[command(flatten)]
        image: ImageArgs,
        /// Files or folders in the volume (default: every file of every NTFS volume).
        #[arg(value_name = "PATH")]
        paths: Vec<String>,
        /// The folder to create (it must not exist yet; it appears only once complete).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Only this partition.
        #[arg(long, value_name = "N")]
        partition: Option<u32>,
    },
    /// Registry keys and values in the image's hives (the read-only half of vhdreg).
    #[command(after_help = crate::cli::after_help!("  vhdinspect reg win.vhdx get 'HKLM\\SYSTEM\\Select' Current\n  vhdinspect reg --hive-file NTUSER.DAT list 'Software\\Microsoft'"))]
    Reg {
        #[command(flatten)]
        source: crate::cli::reg::HiveSource,
        #[command(subcommand)]
        command: crate::cli::reg::ReadCommand,
    },
}

/// Exactly one position (or a file) for `owner`.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct OwnerQuery {
    /// A disk sector (512 bytes, or 4096 on a 4Kn disk).
    #[arg(long)]
    sector: Option<u64>,
    /// A container block (2 MiB units for fixed and raw images).
    #[arg(long)]
    block: Option<u64>,
    /// An NTFS cluster of --partition.
    #[arg(long, requires = "partition")]
    cluster: Option<u64>,
    /// A disk byte offset.
    #[arg(long)]
    offset: Option<u64>,
    /// A file's path in the volume (`/` or `\` separated, case-insensitive).
    #[arg(long, value_name = "PATH")]
    file: Option<String>,
}

/// Runs `vhdinspect` with the process arguments.
pub fn main() -> ExitCode {
    let cmd = <Cli as clap::CommandFactory>::command()
        .mut_subcommand("reg", |reg| crate::cli::reg::with_image_in_usage(reg, "vhdinspect reg"));
    if let Some(code) = crate::cli::generate_if_asked(cmd.clone()) {
        return code;
    }
    crate::cli::handle_signals("vhdinspect");
    let args = reg_image_before_command(&cmd, std::env::args_os().collect());
    finish("vhdinspect", run(crate::cli::parse(cmd, args)))
}

/// `vhdinspect reg get IMAGE KEY` as `vhdinspect reg IMAGE get KEY`, as `vhdreg` takes it
/// (`cmd`: vhdinspect's command line).
fn reg_image_before_command(cmd: &clap::Command, args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let Some(reg) = cmd.find_subcommand("reg") else { return args };
    // `reg` is the first word that is not an option (of vhdinspect's own, only --generate
    // takes a value).
    let mut i = 1;
    while let Some(w) = args.get(i).and_then(|a| a.to_str()) {
        match w {
            "reg" => return crate::cli::reg::image_before_command(reg, args, i + 1),
            "--generate" => i += 2,
            w if w.starts_with('-') => i += 1,
            _ => break,
        }
    }
    args
}

/// Says on stderr that an image holds no NTFS volume, and what it holds instead.
fn note_without_ntfs(map: &ImageMap<'_>) {
    if map.partitions.iter().any(|p| p.filesystem() == crate::disk::FileSystem::Ntfs) {
        return;
    }
    let found: Vec<String> = map.filesystems().iter().map(|(p, fs)| format!("partition {p}: {}", fs.name())).collect();
    eprintln!(
        "vhdinspect: {}: no NTFS volume ({})",
        map.image.source().display(),
        if found.is_empty() { "no partitions".to_string() } else { found.join(", ") }
    );
}

/// The image's map, a spinner on a terminal while its volumes are indexed (a volume of
/// millions of files takes seconds).
fn indexed(img: &DiskImage, partition: Option<u32>, detail: IndexDetail) -> Result<ImageMap<'_>> {
    let progress = crate::cli::Progress::new(QUIET.load(std::sync::atomic::Ordering::Relaxed));
    let map = ImageMap::build_with(img, partition, detail);
    progress.bar.finish_and_clear();
    map
}

/// `--quiet`, for the spinner of every command that indexes.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn run(cli: Cli) -> Result<bool> {
    QUIET.store(cli.quiet, std::sync::atomic::Ordering::Relaxed);
    match cli.command {
        Command::Dump { image, blocks, bitmap } => {
            let img = image.open(true)?;
            let r = report::dump::build(&img, report::dump::DumpOptions { blocks, bitmap })?;
            emit(cli.json, &r, report::dump::render)?;
            if let Some(e) = &r.disk_failure {
                eprintln!("vhdinspect: {e}{}", super::hint("vhdinspect", e).unwrap_or_default());
            }
            Ok(r.disk_error.is_none())
        }
        Command::Files { image, partition, runs, jsonl } => {
            let img = image.open(false)?;
            // JSON Lines stream the files from the volume: the index needs no more than
            // cluster ownership and the directories' paths.
            let detail = if jsonl { IndexDetail::Clusters } else { IndexDetail::Files };
            let map = indexed(&img, partition, detail)?;
            map.require_readable()?;
            note_without_ntfs(&map);
            let r = report::files::FilesReport::new(&map, runs);
            write_output(|w| match (jsonl, cli.json) {
                (true, _) => r.write_jsonl(w),
                (false, true) => r.write_json(w),
                (false, false) => r.write_table(w),
            })?;
            Ok(true)
        }
        Command::Owner { image, at, partition, jsonl } => {
            let img = image.open(false)?;
            let map = indexed(&img, None, IndexDetail::Files)?;
            if let Some(path) = at.file {
                let r = report::owner::place_file(&map, &path, partition)?;
                emit(cli.json, &r, report::owner::render_file)?;
                return Ok(true);
            }
            let query = match (at.sector, at.block, at.cluster, at.offset) {
                (Some(s), ..) => Query::Sector(s),
                (_, Some(b), ..) => Query::Block(b),
                (_, _, Some(c), _) => Query::Cluster(c),
                (.., Some(o)) => Query::Offset(o),
                _ => {
                    return Err(crate::Error::Usage(
                        "give one of --sector, --block, --cluster, --offset, --file".into(),
                    ));
                }
            };
            let mut r = report::owner::locate(&map, query, partition)?;
            if jsonl {
                let owners = std::mem::take(&mut r.owners);
                write_output(|w| {
                    for o in &owners {
                        report::write_line(w, "owner", o)?;
                    }
                    report::write_line(w, "summary", &r)
                })?;
            } else {
                emit(cli.json, &r, report::owner::render)?;
            }
            Ok(true)
        }
        Command::Map { image, partition, svg, force, jsonl } => {
            let img = image.open(false)?;
            let mut policy = OutputPolicy::new(if force { Replace::Existing } else { Replace::Never });
            img.add_inputs_to(&mut policy);
            if let Some(path) = &svg {
                policy.check(path)?;
            }
            let map = indexed(&img, None, IndexDetail::Clusters)?;
            note_without_ntfs(&map);
            let r = report::map::build(&map, partition)?;
            if let Some(path) = svg {
                let out = NewFile::create(&path, &policy)?;
                crate::cli::report_stale("vhdinspect", out.removed_stale());
                crate::cli::track_temp(out.path());
                out.write_all_and_commit(report::map::svg(&r)?.as_bytes())?;
            }
            if jsonl {
                write_output(|w| {
                    let (first, count) = (r.blocks.first_index(), r.blocks.len());
                    r.blocks.each(
                        first,
                        first + count,
                        |b| report::write_line(w, "block", b),
                        std::io::Error::other,
                    )?;
                    report::write_line(w, "summary", &r.summary)
                })?;
            } else {
                emit(cli.json, &r, report::map::render)?;
            }
            Ok(true)
        }
        Command::RebasePlan { image, onto } => {
            let img = image.open(false)?;
            let map = indexed(&img, None, IndexDetail::Files)?;
            let onto = DiskImage::open(&onto, &OpenOptions { parent: None, ..image.open_options(false) })?;
            let r = report::rebase::build(&map, &onto)?;
            emit(cli.json, &r, report::rebase::render)?;
            Ok(true)
        }
        Command::Diff { image } => {
            let img = image.open(false)?;
            let map = indexed(&img, None, IndexDetail::Files)?;
            let r = report::diff::build(&map)?;
            emit(cli.json, &r, report::diff::render)?;
            Ok(true)
        }
        Command::Ranges { image } => {
            let img = image.open(false)?;
            let map = indexed(&img, None, IndexDetail::Clusters)?;
            let r = report::ranges::build(&map)?;
            emit(cli.json, &r, report::ranges::render)?;
            Ok(true)
        }
        Command::Align { image, boundary, fail_on_misaligned } => {
            let img = image.open(false)?;
            let map = indexed(&img, None, IndexDetail::Clusters)?;
            let r = report::align::build(&map, boundary.bytes(map.block_size()))?;
            emit(cli.json, &r, report::align::render)?;
            Ok(!(fail_on_misaligned && r.misaligned > 0))
        }
        Command::Reg { source, command } => crate::cli::reg::run_read(&source, command, cli.json),
        Command::Cat { image, path, partition } => cat(&image, &path, partition),
        Command::Extract { image, paths, to, partition } => {
            let img = image.open(false)?;
            let events = |e: crate::pass::Event<'_>| match e {
                crate::pass::Event::RemovedStale(removed) => crate::cli::report_stale("vhdinspect", removed),
                crate::pass::Event::Writing { temp: Some(temp), .. } => crate::cli::track_temp(temp),
                _ => {}
            };
            let r = crate::pass::extract::extract(&img, &paths, partition, &to, &events)?;
            emit(cli.json, &r, report::extract::render)?;
            Ok(!r.skipped.iter().any(|s| s.failed))
        }
        Command::Check { image } => {
            let img = image.open(true)?;
            let r = report::check::build(&img)?;
            emit(cli.json, &r, report::check::render)?;
            Ok(r.clean)
        }
    }
}

/// `cat`: the file (or stream) at `path`, copied to standard output.
fn cat(image: &ImageArgs, path: &str, partition: Option<u32>) -> Result<bool> {
    let img = image.open(false)?;
    let map = indexed(&img, partition, IndexDetail::Files)?;
    map.require_readable()?;
    // PATH:STREAM, unless the whole argument names a file (POSIX names may hold a colon).
    let (file, stream) = match map.find_file(path, partition) {
        Ok(f) => (f, ""),
        Err(whole) => match path.rsplit_once(':').filter(|(_, s)| !s.contains(['/', '\\'])) {
            Some((p, s)) => (map.find_file(p, partition).map_err(|_| whole)?, s),
            None => return Err(whole),
        },
    };
    if file.file.directory && stream.is_empty() {
        return Err(crate::Error::Usage(format!("{path} is a folder: name a file (or use extract)")));
    }
    let mut reader = file.open(&img, stream)?;
    // Read errors name the image; only write errors are the output's.
    let mut failed = None;
    write_output(|w| {
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < reader.len() {
            let n = (reader.len() - at).min(buf.len() as u64) as usize;
            if let Err(e) = reader.read_at(at, &mut buf[..n]) {
                failed = Some(e);
                break;
            }
            w.write_all(&buf[..n])?;
            at += n as u64;
        }
        Ok(())
    })?;
    failed.map_or(Ok(true), Err)
}
