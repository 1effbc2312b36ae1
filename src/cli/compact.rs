//! `vhdcompact`: NTFS-aware compaction and conversion.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use crate::cli::args::{Boundary, ContainerArg, FormatArg, lock_wait, parse_boundary, parse_size};
use crate::cli::{Progress, emit, finish};
use crate::error::{Error, Result};
use crate::host::Replace;
use crate::pass::compact::{self, CompactOptions, Event, OutputFormat};
use crate::vhd::image::{DiskImage, OpenOptions};
use crate::vhd::sparse::DEFAULT_BLOCK_SIZE;

/// Compact VHD and VHDX images offline, NTFS-aware: drop the blocks that hold no needed byte,
/// convert fixed <-> dynamic and VHD <-> VHDX, merge a differencing chain, realign partitions,
/// sanitize, stream to a pipe, upload to an Azure page blob. The input is never modified
/// (unless --in-place); a file output appears only once complete.
#[derive(Parser, Debug)]
#[command(name = "vhdcompact", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// The image to compact.
    #[arg(required_unless_present = "what_if")]
    pub input: Option<PathBuf>,
    /// Where to write the result (not with --in-place): a new file (`.vhd` or `.vhdx`), `-`
    /// for standard output, or an https URL with a SAS token for an Azure page blob.
    #[arg(value_name = "OUT", required_unless_present_any = ["in_place", "what_if"])]
    pub output: Option<PathBuf>,
    /// Write nothing: print, per image, the bytes compaction would reclaim now and with smaller
    /// blocks (a directory stands for its .vhd, .vhdx and .avhdx files); images are read in
    /// parallel; `--json` prints JSON Lines, one object per image.
    #[arg(long, value_name = "IMAGE", num_args = 1.., conflicts_with_all = ["output", "in_place", "verify", "realign", "to", "azure", "merge", "zero_free", "sanitize", "block_size", "format", "force"])]
    pub what_if: Vec<PathBuf>,
    /// Output kind (default: dynamic; a differencing input stays differencing unless --merge).
    #[arg(long, value_enum)]
    pub to: Option<ToArg>,
    /// Fixed output for Azure: size rounded up to a whole MiB, CHS recomputed, limits checked.
    #[arg(long)]
    pub azure: bool,
    /// Block size of a dynamic output (512K, 2M...; default: the input's, or 2 MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub block_size: Option<u32>,
    /// Make every free NTFS cluster read as zeros (the stale data of deleted files in them
    /// leaves the image). It does not remove what lives outside free clusters: the resident
    /// data of small deleted files and the names of deleted files (in MFT records and
    /// directory indexes), and the slack after a file's end in its last cluster.
    #[arg(long)]
    pub zero_free: bool,
    /// Remove what --zero-free leaves too: the slack after each file's data, free FILE
    /// records (emptied) and the unused tails of records in use, free space in directory
    /// indexes, $LogFile of a clean volume, and the data of pagefile.sys, swapfile.sys and
    /// hiberfil.sys (kept as files; Windows recreates them). Implies --zero-free.
    #[arg(long, conflicts_with = "realign")]
    pub sanitize: bool,
    /// Write a standalone image of a differencing chain.
    #[arg(long)]
    pub merge: bool,
    /// Re-read the output and compare every needed byte with the input; exit 1 on a mismatch.
    #[arg(long)]
    pub verify: bool,
    /// Replace OUT if it exists; compact dirty or hibernated NTFS volumes anyway; realign even
    /// when a Windows record of a partition offset cannot be patched.
    #[arg(long)]
    pub force: bool,
    /// Move misaligned partitions to the next multiple of BOUNDARY (default 1M; `block` = the
    /// output's VHD block size), patching MBR/EBR/GPT, boot sectors, MountedDevices and BCD.
    #[arg(long, value_name = "BOUNDARY", num_args = 0..=1, require_equals = true, default_missing_value = "1M", conflicts_with = "in_place", value_parser = parse_boundary)]
    pub realign: Option<Boundary>,
    /// Rewrite the input itself (dynamic and differencing: blocks dropped and the file
    /// truncated; fixed: free clusters zeroed with --zero-free).
    #[arg(long, conflicts_with = "output")]
    pub in_place: bool,
    /// Parent of a differencing input, instead of the one its locators name.
    #[arg(long, value_name = "PATH")]
    pub parent: Option<PathBuf>,
    /// Treat checksum mismatches, disagreeing footer copies and broken VHDX BAT entries as errors.
    #[arg(long)]
    pub strict: bool,
    /// The input's format when its content should not decide: `raw` reads any file as a raw
    /// disk, `vhd` requires a VHD footer, `vhdx` the VHDX identifier.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub input_format: Option<FormatArg>,
    /// The output's container (default: OUT's extension, `.vhd` or `.vhdx`; else the input's).
    #[arg(long, value_enum, value_name = "CONTAINER")]
    pub format: Option<ContainerArg>,
    /// Same input and options, same output bytes: every timestamp says --source-date-epoch
    /// (2000-01-01 when it is not given) and every UUID and GUID is derived from the input
    /// and the options.
    #[arg(long, conflicts_with = "in_place")]
    pub deterministic: bool,
    /// The time (seconds since 1970) a reproducible output's timestamps say; giving it turns
    /// --deterministic on.
    #[arg(long, value_name = "SECONDS", env = "SOURCE_DATE_EPOCH")]
    pub source_date_epoch: Option<u64>,
    /// Parallel connections of an upload (OUT an https:// page blob URL with its SAS token).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Wait for another vhdkit process using the image instead of failing at once.
    #[arg(long)]
    pub wait: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// No progress on standard error (it shows only when standard error is a terminal).
    #[arg(long, short)]
    pub quiet: bool,
    /// Write the man page or a shell completion script to standard output, and nothing else.
    #[arg(long, value_enum, value_name = "WHAT", exclusive = true)]
    pub generate: Option<crate::cli::Generate>,
}

/// Output kinds on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ToArg {
    /// Raw data then a footer, every byte written.
    Fixed,
    /// Only needed blocks stored.
    Dynamic,
    /// A child of the input's parent holding only the input's needed sectors.
    Differencing,
}

impl ToArg {
    /// The library's name for it.
    pub fn format(self) -> OutputFormat {
        match self {
            ToArg::Fixed => OutputFormat::Fixed,
            ToArg::Dynamic => OutputFormat::Dynamic,
            ToArg::Differencing => OutputFormat::Differencing,
        }
    }
}

/// Runs `vhdcompact` with the process arguments.
/// Examples and exit codes, at the end of `--help`.
const AFTER_HELP: &str = crate::cli::after_help!(
    "  vhdcompact disk.vhdx small.vhdx --verify            compact into a new image, checked
  vhdcompact --what-if /srv/profiles                  what each image there would free
  vhdcompact xp.vhd - --to dynamic --sanitize | zstd > xp.vhd.zst
  vhdcompact disk.vhdx 'https://ACCOUNT.blob.core.windows.net/disks/os.vhd?SAS' --verify"
);

pub fn main() -> ExitCode {
    if let Some(code) = crate::cli::generate_if_asked(<Cli as clap::CommandFactory>::command()) {
        return code;
    }
    crate::cli::handle_signals("vhdcompact");
    let cli = Cli::parse();
    finish("vhdcompact", run(&cli))
}

impl Cli {
    fn open_options(&self) -> OpenOptions {
        OpenOptions {
            strict: self.strict,
            parent: self.parent.clone(),
            allow_missing_parent: false,
            wait: lock_wait(self.wait),
            format: self.input_format.map(FormatArg::format),
            ..OpenOptions::default()
        }
    }

    fn compact_options(&self, image: &DiskImage) -> CompactOptions {
        let block = self.block_size.map(u64::from).or(image.block_size()).unwrap_or(DEFAULT_BLOCK_SIZE as u64);
        let realign = self.realign.map(|b| b.bytes(block));
        CompactOptions {
            to: self.to.map(ToArg::format),
            azure: self.azure,
            block_size: self.block_size,
            zero_free: self.zero_free,
            sanitize: self.sanitize,
            merge: self.merge,
            force: self.force,
            realign,
            verify: self.verify,
            container: self
                .format
                .or_else(|| self.output.as_deref().and_then(ContainerArg::of_name))
                .map(ContainerArg::format),
            deterministic: if self.in_place { None } else { self.output_time() },
        }
    }

    /// The time of a reproducible output (the VHD epoch with `--deterministic` alone), or
    /// `None` for a fresh one.
    fn output_time(&self) -> Option<u64> {
        self.source_date_epoch.or(self.deterministic.then_some(crate::vhd::footer::VHD_EPOCH_UNIX))
    }
}

/// Refuses an OUT that reads like a size: `--realign 1M` makes clap take `1M` for OUT.
fn refuse_size_like_output(out: &Path) -> Result<()> {
    let text = out.to_string_lossy();
    let looks_like_a_value = parse_size(&text).is_ok() || text.eq_ignore_ascii_case("block");
    if std::fs::symlink_metadata(out).is_err() && !text.contains(['/', '\\', '.']) && looks_like_a_value {
        return Err(Error::Usage(format!(
            "OUT {text:?} looks like a boundary, not a file name: a value for --realign comes with '=' \
             (--realign={text}); name a file that looks like a size as ./{text}"
        )));
    }
    Ok(())
}

fn run(cli: &Cli) -> Result<bool> {
    if !cli.what_if.is_empty() {
        return what_if(cli);
    }
    let uploading = upload_url(cli).is_some();
    let progress = Progress::new(cli.quiet);
    let bar = &progress.bar;
    let label = if uploading { "uploading" } else { "writing blocks" };
    let events = |e: Event<'_>| progress.event("vhdcompact", label, e);
    let input = cli.input.as_deref().ok_or_else(|| Error::Usage("give the image to compact".into()))?;
    let report = if cli.in_place {
        let (mut image, recovery) = DiskImage::open_writable(input, &cli.open_options())?;
        if let Some(text) = recovery.describe() {
            eprintln!("vhdcompact: {}: {text}", input.display());
        }
        let opts = cli.compact_options(&image);
        compact::in_place(&mut image, &opts, &events)?
    } else if let Some(url) = upload_url(cli) {
        let result = upload(cli, input, url, &events);
        bar.finish_and_clear();
        return result;
    } else if cli.output.as_deref() == Some(Path::new("-")) {
        let streamed = stream(cli, input, &events);
        bar.finish_and_clear();
        return streamed;
    } else {
        let output = cli.output.as_deref().ok_or_else(|| Error::Usage("give OUT, or --in-place".into()))?;
        refuse_size_like_output(output)?;
        let image = DiskImage::open(input, &cli.open_options())?;
        let replace = if cli.force { Replace::Existing } else { Replace::Never };
        compact::to_new_file(&image, output, replace, &cli.compact_options(&image), &events)?
    };
    bar.finish_and_clear();
    emit(cli.json, &report, crate::report::compact::render)?;
    if !report.committed {
        eprintln!("vhdcompact: {}: verification failed; no output written", report.output);
    }
    Ok(report.no_mismatch())
}

/// `vhdcompact IN -`: the output to standard output (a pipe or a file, never a terminal),
/// the report to standard error.
fn stream(cli: &Cli, input: &Path, events: &(dyn Fn(Event<'_>) + Sync)) -> Result<bool> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        return Err(Error::Usage("standard output is a terminal: pipe or redirect it to receive the image".into()));
    }
    let image = DiskImage::open(input, &cli.open_options())?;
    let out = crate::host::platform::stdout_file().map_err(|e| Error::open(Path::new("<stdout>"), "duplicate", e))?;
    let report = compact::to_stream(&image, out, Path::new("<stdout>"), &cli.compact_options(&image), events)?;
    let text = if cli.json {
        serde_json::to_string_pretty(&crate::report::versioned(&report)).map_err(|e| Error::internal(e.to_string()))?
            + "\n"
    } else {
        crate::report::compact::render(&report)
    };
    eprint!("{text}");
    Ok(true)
}

/// OUT, when it is a page blob's URL.
fn upload_url(cli: &Cli) -> Option<&str> {
    cli.output.as_deref().and_then(|o| o.to_str()).filter(|o| o.starts_with("https://") || o.starts_with("http://"))
}

/// `vhdcompact IN URL`: the image uploaded to a page blob as an Azure fixed VHD.
fn upload(cli: &Cli, input: &Path, url: &str, events: &(dyn Fn(Event<'_>) + Sync)) -> Result<bool> {
    let image = DiskImage::open(input, &cli.open_options())?;
    let opts = crate::pass::upload::UploadOptions { jobs: cli.jobs.into(), verify: cli.verify, replace: cli.force };
    let report = crate::pass::upload::upload(&image, url, &cli.compact_options(&image), &opts, events)?;
    emit(cli.json, &report, crate::report::compact::render_upload)?;
    Ok(report.verify.as_ref().is_none_or(|v| v.mismatches.is_empty()))
}

/// The images `--what-if` names: each file, and each directory's VHD and VHDX files.
fn what_if_images(cli: &Cli) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in cli.input.iter().chain(&cli.what_if) {
        if !path.is_dir() {
            out.push(path.clone());
            continue;
        }
        let entries = std::fs::read_dir(path).map_err(|e| Error::open(path, "list", e))?;
        let mut found = Vec::new();
        for entry in entries {
            let p = entry.map_err(|e| Error::open(path, "list", e))?.path();
            let ext = p.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
            if p.is_file() && matches!(ext.as_str(), "vhd" | "vhdx" | "avhdx") {
                found.push(p);
            }
        }
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

/// `--what-if`: a row (or JSON line) per image; exit 1 when an image could not be read.
fn what_if(cli: &Cli) -> Result<bool> {
    let images = what_if_images(cli)?;
    let opts = cli.open_options();
    let results = compact::what_if_all(&images, &|p: &PathBuf| DiskImage::open(p, &opts));
    let ok = results.iter().all(|r| r.is_ok());
    crate::cli::write_output(|w| {
        if cli.json {
            for (path, r) in images.iter().zip(&results) {
                match r {
                    Ok(report) => serde_json::to_writer(&mut *w, &crate::report::versioned(report))?,
                    Err(e) => serde_json::to_writer(
                        &mut *w,
                        &crate::report::versioned(&crate::report::compact::WhatIfFailure {
                            file: path.display().to_string(),
                            error: e.to_string(),
                        }),
                    )?,
                }
                writeln!(w)?;
            }
            Ok(())
        } else {
            w.write_all(crate::report::compact::render_what_if(&images, &results).as_bytes())
        }
    })?;
    Ok(ok)
}
