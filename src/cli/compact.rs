//! `vhdcompact`: NTFS-aware compaction and conversion.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{emit, finish};
use crate::error::{Error, Result};
use crate::map::ImageMap;
use crate::pass::compact::{self, CompactOptions, OutputFormat};
use crate::pass::{execute, in_place, verify};
use crate::report::compact::{CompactReport, PartitionResult, RealignResult};
use crate::vhd::device::BlockDevice;
use crate::vhd::image::{DiskImage, OpenOptions};
use crate::vhd::sparse::DEFAULT_BLOCK_SIZE;

/// Drop the VHD blocks that hold no allocated NTFS cluster; convert fixed <-> dynamic; merge a
/// differencing chain; make Azure-ready fixed images. The input is never modified (unless
/// --in-place); the output appears only once complete.
#[derive(Parser, Debug)]
#[command(name = "vhdcompact", version, about)]
pub struct Cli {
    /// The image to compact.
    pub input: PathBuf,
    /// Where to write the result (not with --in-place).
    #[arg(required_unless_present = "in_place")]
    pub output: Option<PathBuf>,
    /// Output kind (default: the input's; a raw input becomes dynamic).
    #[arg(long, value_enum)]
    pub to: Option<OutputFormat>,
    /// Fixed output for Azure: size rounded up to a whole MiB, CHS recomputed, limits checked.
    #[arg(long)]
    pub azure: bool,
    /// Block size of a dynamic output (512K, 2M...; default: the input's, or 2 MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub block_size: Option<u32>,
    /// Write zeros over free clusters of the blocks kept (stale data leaves the image).
    #[arg(long)]
    pub zero_free: bool,
    /// Write a standalone image of a differencing chain.
    #[arg(long)]
    pub merge: bool,
    /// Re-read the output and compare every needed byte with the input; exit 1 on a mismatch.
    #[arg(long)]
    pub verify: bool,
    /// Compact dirty or hibernated NTFS volumes anyway; realign even when a Windows record of a
    /// partition offset cannot be patched.
    #[arg(long)]
    pub force: bool,
    /// Move misaligned partitions to the next multiple of BOUNDARY (default 1M; `block` = the
    /// output's VHD block size), patching MBR/EBR/GPT, boot sectors, MountedDevices and BCD.
    #[arg(long, value_name = "BOUNDARY", num_args = 0..=1, require_equals = true, default_missing_value = "1M", conflicts_with = "in_place")]
    pub realign: Option<String>,
    /// Rewrite the input itself (dynamic and differencing: blocks dropped and the file
    /// truncated; fixed: free clusters zeroed with --zero-free).
    #[arg(long, conflicts_with = "output")]
    pub in_place: bool,
    /// Parent of a differencing input, instead of the one its locators name.
    #[arg(long, value_name = "PATH")]
    pub parent: Option<PathBuf>,
    /// Treat checksum mismatches and disagreeing footer copies as errors.
    #[arg(long)]
    pub strict: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Parses `2M`, `512K`, `2MiB`, `1048576`.
pub fn parse_size(s: &str) -> std::result::Result<u32, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.trim_end_matches("ib").trim_end_matches('b');
    let (digits, shift) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 10),
        Some('m') => (&t[..t.len() - 1], 20),
        Some('g') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("{s:?} is not a size like 2M, 512K or 1048576"))
}

/// Runs `vhdcompact` with the process arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    finish("vhdcompact", run(&cli))
}

/// The canonical form of `path`, also for a file that does not exist yet.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()).join(path.file_name().unwrap_or_default())
    })
}

/// A progress bar on stderr when it is a terminal.
fn progress(blocks: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(blocks);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} blocks {per_sec} eta {eta}") {
        bar.set_style(style);
    }
    bar
}

fn run(cli: &Cli) -> Result<bool> {
    let started = Instant::now();
    let image = DiskImage::open(
        &cli.input,
        &OpenOptions { strict: cli.strict, parent: cli.parent.clone(), ..OpenOptions::default() },
    )?;
    let realign = match cli.realign.as_deref() {
        None => None,
        Some("block") => Some(cli.block_size.map(u64::from).or(image.as_sparse().map(|s| s.block_size())).unwrap_or(DEFAULT_BLOCK_SIZE as u64)),
        Some(size) => Some(parse_size(size).map_err(Error::Usage)? as u64),
    };
    let opts = CompactOptions {
        to: cli.to,
        azure: cli.azure,
        block_size: cli.block_size,
        zero_free: cli.zero_free,
        merge: cli.merge,
        force: cli.force,
        realign,
    };
    if cli.in_place {
        return run_in_place(cli, &image, &opts, started);
    }
    let output = cli.output.as_deref().ok_or_else(|| Error::Usage("give OUT, or --in-place".into()))?;
    let out_canonical = canonical(output);
    if let Some(clash) = image.chain().iter().find(|p| canonical(p) == out_canonical) {
        return Err(Error::Usage(format!(
            "{}: OUT is {} of the input chain; refusing to overwrite an input (use --in-place to rewrite it)",
            output.display(),
            clash.display()
        )));
    }
    let map = ImageMap::build(&image, None)?;
    let plan = compact::plan(&map, &opts)?;
    let bar = progress(plan.actions.len() as u64);
    let (pending, stats) = execute::write(&map, &plan, output, &bar)?;
    bar.finish_and_clear();
    let verified = if cli.verify {
        let written = DiskImage::open(
            pending.path(),
            &OpenOptions { strict: true, parent: plan.parent.clone(), ..OpenOptions::default() },
        )?;
        Some(match &plan.realignment {
            Some(r) => {
                let (want, got) = verify::realigned_digests(&map, r, &written)?;
                verify::compare(&want, &got)
            }
            None => verify::compare(&verify::needed_digests(&map, &image)?, &verify::needed_digests(&map, &written)?),
        })
    } else {
        None
    };
    let ok = verified.as_ref().is_none_or(|v| v.mismatches.is_empty());
    let output_bytes = std::fs::metadata(pending.path()).map(|m| m.len()).unwrap_or(0);
    if ok {
        pending.commit()?;
    }
    let report = CompactReport {
        input: cli.input.display().to_string(),
        output: output.display().to_string(),
        in_place: false,
        input_format: image.format(),
        output_format: plan.format,
        input_bytes: image.file().file_len()?,
        output_bytes,
        disk_size: image.len(),
        output_disk_size: plan.disk_size,
        block_size: plan.block_size,
        blocks_before: blocks_held(&image),
        blocks_after: stats.stored_blocks,
        dropped_blocks: plan.dropped(),
        dropped_zero_blocks: stats.zero_blocks_dropped,
        zeroed_bytes: plan.zeroed_bytes(),
        partitions: plan
            .partitions
            .iter()
            .map(|p| PartitionResult { dropped_bytes: p.dropped_blocks * plan.block_size, plan: p.clone() })
            .collect(),
        realign: plan.realignment.as_ref().map(RealignResult::new),
        verify: verified,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    };
    emit(cli.json, &report, crate::report::compact::render)?;
    if !ok {
        eprintln!("vhdcompact: {}: verification failed; no output written", output.display());
    }
    Ok(ok)
}

/// `--in-place`: the same plan, carried out on the input file itself.
fn run_in_place(cli: &Cli, image: &DiskImage, opts: &CompactOptions, started: Instant) -> Result<bool> {
    let bytes_before = image.file().file_len()?;
    let blocks_before = blocks_held(image);
    let map = ImageMap::build(image, None)?;
    // The input is about to be overwritten: take its digests first.
    let before = if cli.verify { Some(verify::needed_digests(&map, image)?) } else { None };
    let (plan, stats) = in_place::compact_in_place(&map, opts)?;
    let after = DiskImage::open(&cli.input, &OpenOptions { parent: cli.parent.clone(), ..OpenOptions::default() })?;
    let verified = match &before {
        Some(before) => Some(verify::compare(before, &verify::needed_digests(&map, &after)?)),
        None => None,
    };
    let ok = verified.as_ref().is_none_or(|v| v.mismatches.is_empty());
    let report = CompactReport {
        input: cli.input.display().to_string(),
        output: cli.input.display().to_string(),
        in_place: true,
        input_format: image.format(),
        output_format: plan.format,
        input_bytes: bytes_before,
        output_bytes: after.file().file_len()?,
        disk_size: image.len(),
        output_disk_size: after.len(),
        block_size: plan.block_size,
        blocks_before,
        blocks_after: stats.stored_blocks,
        dropped_blocks: stats.dropped_blocks,
        dropped_zero_blocks: stats.zero_blocks_dropped,
        zeroed_bytes: stats.zeroed_bytes,
        partitions: plan
            .partitions
            .iter()
            .map(|p| PartitionResult { dropped_bytes: p.dropped_blocks * plan.block_size, plan: p.clone() })
            .collect(),
        realign: None,
        verify: verified,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    };
    emit(cli.json, &report, crate::report::compact::render)?;
    Ok(ok)
}

/// Blocks the input container holds: allocated BAT entries, or every 2 MiB of a fixed or raw
/// image.
pub fn blocks_held(image: &DiskImage) -> u64 {
    match image.as_sparse() {
        Some(s) => s.bat().allocated_count(),
        None => image.len().div_ceil(crate::map::blocks::RAW_BLOCK_SIZE),
    }
}
