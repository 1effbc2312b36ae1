//! `vhddisk`: the life of a container: create, expand, shrink, set-parent, commit.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cli::args::{ContainerArg, FormatArg, lock_wait, parse_bytes, parse_size};
use crate::cli::{emit, finish};
use crate::error::{Error, Result};
use crate::host::Replace;
use crate::pass::Event;
use crate::pass::container::commit::{CommitOptions, CommitReport, commit};
use crate::pass::container::create::{CreateOptions, CreateReport, NewDisk, ZeroFill, create};
use crate::pass::container::grow::{check_growable, grow_last_partition};
use crate::pass::container::relink::{RelinkReport, set_parent};
use crate::pass::container::resize::{ResizeReport, expand, shrink};
use crate::report::table::human_bytes;
use crate::vhd::image::{DiskImage, ImageFormat, OpenOptions};

/// Create, expand, shrink and repair VHD and VHDX disks, and commit a differencing disk into
/// its parent, offline. In-place changes are journaled and rolled back if interrupted.
#[derive(Parser, Debug)]
#[command(name = "vhddisk", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Write the man page or a shell completion script to standard output, and nothing else.
    #[arg(long, value_enum, value_name = "WHAT")]
    pub generate: Option<crate::cli::Generate>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Wait for another vhdkit process using an image instead of failing at once.
    #[arg(long, global = true)]
    pub wait: bool,
    /// No progress on standard error (it shows only when standard error is a terminal).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Also look in DIR for differencing disks that a resize or commit would corrupt (the
    /// disk's own folder, and those of a commit's chain, are always searched); repeatable.
    #[arg(long, global = true, value_name = "DIR")]
    pub search: Vec<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Examples and exit codes, at the end of `--help`.
const AFTER_HELP: &str = crate::cli::after_help!(
    "  vhddisk create base.vhdx --size 40G
  vhddisk create child.vhd --parent base.vhd
  vhddisk expand disk.vhd --size 64G
  vhddisk set-parent child.vhd /new/place/base.vhd
  vhddisk commit child.vhd --remove"
);

#[derive(Subcommand, Debug)]
pub enum Command {
    /// A new disk: fixed, dynamic or a differencing child, empty or holding a copy of a source.
    #[command(after_help = crate::cli::after_help!("  vhddisk create base.vhdx --size 40G\n  vhddisk create child.vhd --parent base.vhd\n  vhddisk create disk.vhd --from disk.raw --from-format raw"))]
    Create {
        /// The new image (`.vhd` or `.vhdx`); must not exist unless --force.
        output: PathBuf,
        /// The virtual size (40G, 512M, 1T); a child takes its parent's, a copy its source's.
        #[arg(long, value_parser = parse_bytes, value_name = "SIZE")]
        size: Option<u64>,
        /// Every byte allocated in the file (the data area allocated as zeros by the file
        /// system where it can, so no holes and no stale data).
        #[arg(long, conflicts_with_all = ["dynamic", "parent"])]
        fixed: bool,
        /// Blocks allocated as the disk is written (the default).
        #[arg(long)]
        dynamic: bool,
        /// Make a differencing child of this image (relative and absolute locators).
        #[arg(long, value_name = "PARENT", conflicts_with = "from")]
        parent: Option<PathBuf>,
        /// Start with the contents of this disk (a raw file or any image).
        #[arg(long, value_name = "SOURCE")]
        from: Option<PathBuf>,
        /// The source's format when its content should not decide: `raw` reads any file as a
        /// raw disk.
        #[arg(long, value_enum, requires = "from")]
        from_format: Option<FormatArg>,
        /// The container, when the output's extension should not decide.
        #[arg(long, value_enum)]
        format: Option<ContainerArg>,
        /// Block size of a dynamic or differencing disk (VHD 2M, VHDX 1M by default).
        #[arg(long, value_parser = parse_size, value_name = "SIZE")]
        block_size: Option<u32>,
        /// Round the size up to whole MiB, as Azure requires.
        #[arg(long)]
        azure: bool,
        /// Leave a fixed disk's data area as a hole (a sparse file): instant, not allocated.
        #[arg(long, requires = "fixed")]
        no_zero: bool,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Grow the virtual size (a GPT's backup table moves to the new end).
    #[command(after_help = crate::cli::after_help!("  vhddisk expand disk.vhd --size 64G\n  vhddisk expand disk.vhdx --size 64G --grow-partition"))]
    Expand {
        /// A fixed, dynamic or differencing VHD or VHDX.
        image: PathBuf,
        /// The new virtual size.
        #[arg(long, value_parser = parse_bytes, value_name = "SIZE")]
        size: u64,
        /// Also grow the last partition (primary, logical or GPT) and its NTFS volume to the new
        /// end.
        #[arg(long)]
        grow_partition: bool,
        /// Resize although differencing disks in the folders searched have it as their parent,
        /// and grow a dirty or hibernated volume.
        #[arg(long)]
        force: bool,
    },
    /// Shrink the virtual size, by default to the end of the last partition; refused when
    /// any byte beyond the new end holds data.
    #[command(after_help = crate::cli::after_help!("  vhddisk shrink disk.vhd\n  vhddisk shrink disk.vhdx --size 30G"))]
    Shrink {
        /// A fixed, dynamic or differencing VHD or VHDX.
        image: PathBuf,
        /// The new virtual size.
        #[arg(long, value_parser = parse_bytes, value_name = "SIZE")]
        size: Option<u64>,
        /// Resize although differencing disks in the folders searched have it as their parent.
        #[arg(long)]
        force: bool,
    },
    /// Point a differencing disk at its parent's new place.
    #[command(after_help = crate::cli::after_help!("  vhddisk set-parent child.vhd /new/place/base.vhd"))]
    SetParent {
        /// The differencing VHD.
        child: PathBuf,
        /// Its parent, where it is now.
        parent: PathBuf,
        /// Link to this parent even when it is not the one the child was made from.
        #[arg(long)]
        force: bool,
    },
    /// Merge a differencing disk into its parent (or an ancestor further down), in place: only
    /// the sectors the child holds, free NTFS clusters left out.
    #[command(after_help = crate::cli::after_help!("  vhddisk commit child.vhd --remove\n  vhddisk commit child.vhd --depth 2"))]
    Commit {
        /// The differencing disk.
        child: PathBuf,
        /// Commit into the ancestor this many levels down (1: the parent). The disks between
        /// go into it too; the kept child is then linked to it, and the disks between no
        /// longer read as before (removed with --remove).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
        depth: u64,
        /// Delete the child (and the disks between) afterwards.
        #[arg(long)]
        remove: bool,
        /// Commit although the target (or a disk between) has other children (which it
        /// corrupts), the child has children of its own (with --remove), or a volume is dirty
        /// or hibernated.
        #[arg(long)]
        force: bool,
    },
}

/// Runs `vhddisk` and returns its exit code.
pub fn main() -> ExitCode {
    if let Some(code) = crate::cli::generate_if_asked(<Cli as clap::CommandFactory>::command()) {
        return code;
    }
    crate::cli::handle_signals("vhddisk");
    let cli = Cli::parse();
    finish("vhddisk", run(cli))
}

fn run(cli: Cli) -> Result<bool> {
    // A folder to search that is not one would find no child and let the change go on.
    if let Some(bad) = cli.search.iter().find(|d| !d.is_dir()) {
        return Err(Error::Usage(format!("--search {}: not a folder", bad.display())));
    }
    let progress = crate::cli::Progress::new(cli.quiet);
    progress.spin("planning");
    let outcome = run_command(cli, &progress);
    progress.bar.finish_and_clear();
    outcome
}

/// Runs the command, its progress on `progress` (cleared before the report is printed).
fn run_command(cli: Cli, progress: &crate::cli::Progress) -> Result<bool> {
    let open = OpenOptions { wait: lock_wait(cli.wait), ..OpenOptions::default() };
    let events = |label: &'static str| move |e: Event<'_>| progress.event("vhddisk", label, e);
    match cli.command {
        Command::Create {
            output,
            size,
            fixed,
            dynamic: _,
            parent,
            from,
            from_format,
            format,
            block_size,
            azure,
            no_zero,
            force,
        } => {
            let container =
                format.or_else(|| ContainerArg::of_name(&output)).map_or(ImageFormat::Vhd, ContainerArg::format);
            let disk = match (parent, fixed) {
                (Some(p), _) => NewDisk::Differencing(p),
                (None, true) => NewDisk::Fixed,
                (None, false) => NewDisk::Dynamic,
            };
            let opts = CreateOptions {
                disk,
                container,
                size,
                block_size,
                azure,
                from,
                from_format: from_format.map(FormatArg::format),
                zero_fill: if no_zero { ZeroFill::Skip } else { ZeroFill::Allocate },
                replace: if force { Replace::Existing } else { Replace::Never },
                open,
            };
            let r = create(&output, &opts, &events("copying"))?;
            progress.bar.finish_and_clear();
            emit(cli.json, &r, render_create)?;
        }
        Command::Expand { image, size, grow_partition, force } => {
            let mut img = writable(&image, &open)?;
            if grow_partition {
                check_growable(&img, force)?;
            }
            let mut r = crate::cli::deferring_signals(|| expand(&mut img, size, force, &cli.search))?;
            if grow_partition {
                r.partition_grown = Some(crate::cli::deferring_signals(|| grow_last_partition(&mut img, force))?);
            }
            progress.bar.finish_and_clear();
            emit(cli.json, &r, render_resize)?;
        }
        Command::Shrink { image, size, force } => {
            let mut img = writable(&image, &open)?;
            let r = crate::cli::deferring_signals(|| shrink(&mut img, size, force, &cli.search))?;
            progress.bar.finish_and_clear();
            emit(cli.json, &r, render_resize)?;
        }
        Command::SetParent { child, parent, force } => {
            let detached = OpenOptions { detached: true, ..open.clone() };
            let mut img = writable(&child, &detached)?;
            let r = crate::cli::deferring_signals(|| set_parent(&mut img, &parent, force, &open))?;
            progress.bar.finish_and_clear();
            emit(cli.json, &r, render_relink)?;
        }
        Command::Commit { child, depth, remove, force } => {
            let opts = CommitOptions { depth: depth as usize, remove, search: cli.search.clone(), force, open };
            let r = crate::cli::deferring_signals(|| commit(&child, &opts, &events("committing")));
            progress.bar.finish_and_clear();
            emit(cli.json, &r?, render_commit)?;
        }
    }
    Ok(true)
}

/// `path` opened for writing (locked exclusively; an interrupted write rolled back first).
fn writable(path: &Path, open: &OpenOptions) -> Result<DiskImage> {
    let (image, recovery) = DiskImage::open_writable(path, open)?;
    if let Some(text) = recovery.describe() {
        eprintln!("vhddisk: {}: {text}", path.display());
    }
    if image.kind() == crate::vhd::ImageKind::Raw {
        return Err(Error::unsupported(path, "a raw disk has no container to change"));
    }
    Ok(image)
}

fn render_create(r: &CreateReport) -> String {
    let mut out =
        format!("{}: {} {} disk of {}", r.file, r.format.name(), r.container.name(), human_bytes(r.disk_size));
    if let Some(b) = r.block_size {
        out.push_str(&format!(", blocks of {}", human_bytes(b)));
    }
    if let Some(p) = &r.parent {
        out.push_str(&format!(", child of {p}"));
    }
    if let Some(s) = &r.source {
        out.push_str(&format!(", {} copied from {s}", human_bytes(r.copied_bytes)));
    }
    match r.zero_fill {
        Some("allocate") => out.push_str(", data area allocated as zeros"),
        Some("write") => out.push_str(", data area written with zeros"),
        Some(_) => out.push_str(", data area left as a hole (--no-zero)"),
        None => {}
    }
    out + &format!("; file {} ({:.2} s)\n", human_bytes(r.file_bytes), r.elapsed_seconds)
}

fn render_resize(r: &ResizeReport) -> String {
    let mut out = format!("{}: {} -> {}", r.file, human_bytes(r.old_size), human_bytes(r.new_size));
    if r.bat_moved {
        out.push_str(", BAT moved to the end of the file");
    }
    if r.gpt_backup_moved {
        out.push_str(", GPT backup moved to the new end");
    }
    if let Some(g) = &r.partition_grown {
        out.push_str(&format!(
            ", partition {} grown {} -> {} ({} -> {} clusters)",
            g.partition,
            human_bytes(g.old_bytes),
            human_bytes(g.new_bytes),
            g.old_clusters,
            g.new_clusters
        ));
    }
    out + &format!("; file {}\n", human_bytes(r.file_bytes))
}

fn render_relink(r: &RelinkReport) -> String {
    format!(
        "{}: parent {} (was {}){}\n  relative locator {}\n  absolute locator {}\n",
        r.file,
        r.parent,
        r.old_parent.as_deref().unwrap_or("unknown"),
        if r.forced_identity { "; forced: the child now names this parent's UUID" } else { "" },
        r.relative_locator,
        r.absolute_locator
    )
}

fn render_commit(r: &CommitReport) -> String {
    format!(
        "{} -> {}: {} of the child's {} written, {} of free clusters left out{}{}\n",
        r.file,
        r.parent,
        human_bytes(r.written_bytes),
        human_bytes(r.child_bytes),
        human_bytes(r.skipped_free_bytes),
        if r.siblings.is_empty() {
            String::new()
        } else {
            format!("; other children forced: {}", r.siblings.join(", "))
        },
        if r.removed { "; child removed" } else { "" }
    ) + &superseded_note(r)
}

/// The disks a deep commit made redundant, and what became of them.
fn superseded_note(r: &CommitReport) -> String {
    if r.superseded.is_empty() {
        return String::new();
    }
    let list = r.superseded.join(", ");
    if r.removed {
        format!("removed too (their sectors are in the target): {list}\n")
    } else {
        format!(
            "the child now names {} as its parent; {list} no longer read as before (their sectors are in the \
             target): delete them\n",
            r.parent
        )
    }
}
