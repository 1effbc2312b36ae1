//! Compaction, one pipeline whichever the output:
//!
//! 1. [`plan()`] reads the map (never the data) and decides once what the output copies: the
//!    input, or the input realigned ([`CompactionPlan::source`]), which blocks it stores, and
//!    which bytes of them are needed.
//! 2. The writer copies the stored blocks into a new file, and while it reads them takes the
//!    digests of their needed bytes ([`NeededDigests`]). In place, the digests are taken first,
//!    then the VHD layer rewrites the image ([`crate::vhd::sparse::BlockRewrite`]).
//! 3. Verification re-reads only the output's needed bytes and compares digests.
//! 4. A new file is committed (renamed into place) only when verification found nothing.
//!
//! [`to_new_file`] and [`in_place`] run all of it and return the [`CompactReport`]; progress
//! comes through a callback of [`Event`]s, so the library never draws or prints.

mod in_place;
mod plan;
mod report;
mod verify;
mod what_if;
mod write;

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

pub use in_place::in_place;
pub use plan::{CompactionPlan, PartitionPlan, StoredBlock, plan};
pub use report::{CompactReport, PartitionResult, RealignResult};
pub use verify::{Mismatch, VerifyReport};
pub use what_if::{WhatIf, what_if, what_if_all};

use crate::error::{Error, Result};
use crate::host::{NewFile, OutputPolicy, Replace};
use crate::map::ImageMap;
use crate::ntfs::IndexDetail;
pub use crate::pass::Event;
use crate::vhd::device::{BlockDevice, ImageFile};
use crate::vhd::image::{DiskImage, ImageFormat, ImageKind, OpenOptions};

/// Smallest disk Azure accepts.
pub const AZURE_MIN_SIZE: u64 = 20 << 20;
/// Largest disk Azure accepts (32 TiB, footer included).
pub const AZURE_MAX_SIZE: u64 = crate::vhd::fixed::MAX_FIXED_SIZE;

/// The kinds of image compaction writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// Raw data then a footer, every byte written.
    Fixed,
    /// Only needed blocks stored.
    Dynamic,
    /// A child of the input's parent holding only the input's needed sectors.
    Differencing,
}

/// What the caller asks for.
#[derive(Clone, Debug, Default)]
pub struct CompactOptions {
    /// Output kind; `None` keeps the input's (a fixed or raw input becomes dynamic).
    pub to: Option<OutputFormat>,
    /// Fixed output, size rounded up to a whole MiB, CHS recomputed, Azure's limits checked.
    pub azure: bool,
    /// Block size of a dynamic output.
    pub block_size: Option<u32>,
    /// Write zeros over free clusters of kept blocks.
    pub zero_free: bool,
    /// Also remove what zeroing free clusters leaves of deleted and stale data: stream slack,
    /// free and unused parts of FILE and INDX records, `$LogFile` of a clean volume, and the
    /// data of `pagefile.sys`, `swapfile.sys` and `hiberfil.sys`.
    pub sanitize: bool,
    /// Make a standalone image of a differencing chain.
    pub merge: bool,
    /// Compact dirty or hibernated volumes anyway (and realign when a Windows record of a
    /// partition offset cannot be patched).
    pub force: bool,
    /// Move misaligned partitions to this boundary (bytes) in the output.
    pub realign: Option<u64>,
    /// Compare every needed byte of the output with the input before committing.
    pub verify: bool,
    /// The output's container (`None`: the input's; a raw input makes a VHD).
    pub container: Option<ImageFormat>,
    /// Same input and options, same output bytes: every timestamp says this time (seconds
    /// since 1970) and every UUID and GUID is derived from the input and the options.
    pub deterministic: Option<u64>,
}

/// Compacts `image` into a new file at `output`, which appears only once written, flushed and
/// (with [`CompactOptions::verify`]) verified. `replace` says whether an existing file there
/// may be replaced; an input of the image's chain never is. When verification finds a
/// difference, nothing is committed: the report says so (`committed` false, the mismatches
/// in `verify`).
pub fn to_new_file(
    image: &DiskImage,
    output: &Path,
    replace: Replace,
    opts: &CompactOptions,
    events: &(dyn Fn(Event<'_>) + Sync),
) -> Result<CompactReport> {
    let started = Instant::now();
    let mut policy = OutputPolicy::new(replace);
    image.add_inputs_to(&mut policy);
    policy.check(output)?;
    let map = ImageMap::build_with(image, None, index_detail(opts))?;
    let plan = plan(&map, opts)?;
    let out = NewFile::create(output, &policy)?;
    if !out.removed_stale().is_empty() {
        events(Event::RemovedStale(out.removed_stale()));
    }
    events(Event::Writing { temp: Some(out.path()), units: plan.bytes_of_blocks(plan.blocks_written()) });
    let file = out.file().try_clone().map_err(|e| Error::open(out.path(), "reopen", e))?;
    let written = write::write(&plan, ImageFile::from_file(file, out.path(), true), opts.verify, &|done| {
        events(Event::Written(plan.bytes_of_blocks(done)))
    })?;
    let verified = match &written.digests {
        Some(digests) => {
            events(Event::Verifying);
            let dup = out.file().try_clone().map_err(|e| Error::open(out.path(), "reopen", e))?;
            let reopened = DiskImage::from_file(
                ImageFile::from_file(dup, out.path(), false),
                &OpenOptions {
                    strict: true,
                    parent: plan.parent.clone(),
                    format: Some(plan.container),
                    ..OpenOptions::default()
                },
            )?;
            let mut report = verify::check(&reopened, digests)?;
            report.mismatches.extend(verify::uncovered(&plan, digests)?);
            Some(report)
        }
        None => None,
    };
    let report = CompactReport::written(image, &plan, &written, output.display().to_string(), verified, started)?;
    if report.committed {
        out.commit()?;
    }
    Ok(report)
}

/// Compacts `image` into `out`, written front to back with no seek (a pipe: standard output):
/// the same bytes [`to_new_file`] writes, for a fixed or dynamic VHD or VHDX. `label` names the
/// stream in errors and the report. Verification is refused (it reads the output back), and
/// so is a differencing VHDX output (its sector bitmaps follow its blocks).
pub fn to_stream(
    image: &DiskImage,
    out: std::fs::File,
    label: &Path,
    opts: &CompactOptions,
    events: &(dyn Fn(Event<'_>) + Sync),
) -> Result<CompactReport> {
    if opts.verify {
        return Err(Error::Usage("verification reads the output back, which a stream cannot: write to a file".into()));
    }
    // Standard output redirected into (or appended to) an image of the input's chain.
    if let Ok(meta) = out.metadata() {
        let target = crate::host::FileId::of(&meta);
        for f in image.chain_files() {
            if f.raw().metadata().is_ok_and(|m| crate::host::FileId::of(&m) == target) {
                return Err(Error::Conflict {
                    file: f.path().to_path_buf(),
                    problem: "standard output is this input: the stream would overwrite what it reads".into(),
                });
            }
        }
    }
    let started = Instant::now();
    let map = ImageMap::build_with(image, None, index_detail(opts))?;
    let plan = plan(&map, opts)?;
    events(Event::Writing { temp: None, units: plan.bytes_of_blocks(plan.blocks_written()) });
    let written = write::write(&plan, ImageFile::stream(out, label)?, false, &|done| {
        events(Event::Written(plan.bytes_of_blocks(done)))
    })?;
    CompactReport::written(image, &plan, &written, label.display().to_string(), None, started)
}

/// What compaction needs of each file: cluster ownership, or names and streams to sanitize
/// or to find the registry hives a realignment patches.
pub(crate) fn index_detail(opts: &CompactOptions) -> IndexDetail {
    if opts.sanitize || opts.realign.is_some() { IndexDetail::Files } else { IndexDetail::Clusters }
}

/// Blocks the container holds: allocated BAT entries, every block of a fixed image, the
/// blocks of a raw file that are not holes.
pub fn blocks_held(image: &DiskImage) -> Result<u64> {
    Ok(match image.block_size() {
        Some(_) if image.kind() != ImageKind::Fixed => image.stored_blocks().len() as u64,
        // A raw file holds nothing in its holes.
        _ if image.kind() == ImageKind::Raw => {
            crate::map::blocks::data_blocks(image, held_block_size(image))?.len() as u64
        }
        _ => image.len().div_ceil(held_block_size(image)),
    })
}

/// The unit of [`blocks_held`]: the container's block size, 2 MiB for a fixed VHD or raw image.
pub fn held_block_size(image: &DiskImage) -> u64 {
    image.block_size().unwrap_or(crate::map::blocks::RAW_BLOCK_SIZE)
}
