//! What a compaction did, for the caller (the CLI renders it as text or JSON).

use serde::Serialize;

use super::{CompactionPlan, OutputFormat, PartitionPlan, VerifyReport, blocks_held, held_block_size};
use crate::error::Result;
use crate::pass::align::{Move, Realignment};
use crate::pass::sanitize::SanitizeSummary;
use crate::vhd::device::BlockDevice;
use crate::vhd::finding::Finding;
use crate::vhd::image::{DiskImage, ImageFormat, ImageKind};

/// One partition's result.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PartitionResult {
    #[serde(flatten)]
    /// What the plan said of the partition.
    pub plan: PartitionPlan,
    /// Container bytes of the dropped blocks.
    pub dropped_bytes: u64,
    /// Blocks with no needed byte written as zeros instead of dropped (a fixed output stores
    /// every block).
    pub zero_filled_blocks: u64,
}

/// What compaction did.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CompactReport {
    /// The input image.
    pub input: String,
    /// The output image (the input, in place).
    pub output: String,
    /// Whether the input itself was rewritten.
    pub in_place: bool,
    /// Whether the output is in place: false when verification found a difference (a new
    /// file is then not created; an image rewritten in place is rewritten already).
    pub committed: bool,
    /// The input's kind.
    pub input_format: ImageKind,
    /// The output's kind.
    pub output_format: OutputFormat,
    /// The input's container: raw, VHD or VHDX.
    pub input_container: ImageFormat,
    /// The output's container: VHD or VHDX.
    pub output_container: ImageFormat,
    /// Size of the input file (the top of a chain).
    pub input_bytes: u64,
    /// Size of the output file.
    pub output_bytes: u64,
    /// The input disk's size.
    pub disk_size: u64,
    /// The output's disk size (Azure output is rounded up to a whole MiB).
    pub output_disk_size: u64,
    /// The input's block size (2 MiB units for a fixed VHD or raw image).
    pub input_block_size: u64,
    /// The output's block size.
    pub block_size: u64,
    /// Blocks the input container holds (every block of a fixed or raw image).
    pub blocks_before: u64,
    /// Blocks the output stores (every block of a fixed image).
    pub blocks_after: u64,
    /// Blocks the input held with no needed byte, left out of the output (0 for a fixed
    /// output, which stores every block).
    pub dropped_blocks: u64,
    /// In a fixed output: blocks with no needed byte, written as zeros instead of copied.
    pub zero_filled_blocks: u64,
    /// Blocks with needed bytes that all read as zeros, dropped too.
    pub dropped_zero_blocks: u64,
    /// Bytes of free clusters written as zeros (--zero-free).
    pub zeroed_bytes: u64,
    /// What `--sanitize` removed besides free clusters.
    pub sanitized: Option<SanitizeSummary>,
    /// Each partition's share.
    pub partitions: Vec<PartitionResult>,
    /// With --realign: where each partition went and every patch made.
    pub realign: Option<RealignResult>,
    /// What verification found, when asked for.
    pub verify: Option<VerifyReport>,
    /// Structural problems of the input (blocks that overlap or lie outside the file...): a
    /// copy to a new file goes on, an in-place run refuses them.
    pub input_problems: Vec<Finding>,
    /// Wall time of the run.
    pub elapsed_seconds: f64,
}

/// What realignment did.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RealignResult {
    /// The boundary asked for; null when the table was only adjusted to a grown disk.
    pub boundary: Option<u64>,
    /// Each partition that moved, from and to.
    pub moves: Vec<Move>,
    /// Every patch in words: tables, boot sectors, MountedDevices, BCD.
    pub changes: Vec<String>,
    /// Records of partition offsets that could not be patched (only with --force).
    pub impossible: Vec<String>,
}

impl RealignResult {
    /// The report of a realignment plan.
    pub(crate) fn new(r: &Realignment) -> Self {
        RealignResult {
            boundary: r.boundary,
            moves: r.moves.iter().filter(|m| m.old_start_lba != m.new_start_lba).cloned().collect(),
            changes: r.changes.clone(),
            impossible: r.impossible.clone(),
        }
    }
}

impl CompactReport {
    /// The fields known before anything is written: the input and the plan.
    pub(super) fn before(image: &DiskImage, plan: &CompactionPlan<'_>) -> Result<Self> {
        Ok(CompactReport {
            input: image.source().display().to_string(),
            output: String::new(),
            in_place: false,
            committed: false,
            input_format: image.kind(),
            output_format: plan.format,
            input_container: image.format(),
            output_container: plan.container,
            input_bytes: image.file().file_len()?,
            output_bytes: 0,
            disk_size: image.len(),
            output_disk_size: plan.disk_size,
            input_block_size: held_block_size(image),
            block_size: plan.block_size,
            blocks_before: blocks_held(image)?,
            blocks_after: 0,
            dropped_blocks: 0,
            zero_filled_blocks: 0,
            dropped_zero_blocks: 0,
            zeroed_bytes: 0,
            sanitized: plan.source.sanitization().map(|s| s.summary.clone()),
            partitions: plan
                .partitions
                .iter()
                .map(|p| PartitionResult {
                    dropped_bytes: p.dropped_blocks * plan.block_size,
                    plan: p.clone(),
                    zero_filled_blocks: 0,
                })
                .collect(),
            realign: None,
            verify: None,
            input_problems: Vec::new(),
            elapsed_seconds: 0.0,
        })
    }

    /// The report of a compaction into a new output named `output`: the plan's figures, what
    /// the writer did, and what verification found.
    pub(super) fn written(
        image: &DiskImage,
        plan: &CompactionPlan<'_>,
        written: &super::write::Written,
        output: String,
        verify: Option<VerifyReport>,
        started: std::time::Instant,
    ) -> Result<Self> {
        let fixed = plan.format == OutputFormat::Fixed;
        let mut before = CompactReport::before(image, plan)?;
        if fixed {
            for p in &mut before.partitions {
                p.zero_filled_blocks = std::mem::take(&mut p.plan.dropped_blocks);
                p.dropped_bytes = 0;
            }
        }
        Ok(CompactReport {
            committed: verify.as_ref().is_none_or(|v| v.mismatches.is_empty()),
            output,
            in_place: false,
            output_bytes: written.output_bytes,
            blocks_after: written.stored_blocks,
            dropped_blocks: if fixed { 0 } else { plan.dropped() },
            zero_filled_blocks: if fixed { plan.dropped() } else { 0 },
            dropped_zero_blocks: written.zero_blocks_dropped,
            zeroed_bytes: plan.zeroed_bytes(),
            realign: plan.realignment().map(RealignResult::new),
            verify,
            input_problems: crate::vhd::check::write_hazards(image),
            elapsed_seconds: started.elapsed().as_secs_f64(),
            ..before
        })
    }

    /// Whether verification ran and found every needed byte in place.
    pub fn verified(&self) -> bool {
        self.verify.as_ref().is_some_and(|v| v.mismatches.is_empty())
    }

    /// Whether nothing is known to be wrong: not verified, or verified without a mismatch.
    pub fn no_mismatch(&self) -> bool {
        self.verify.as_ref().is_none_or(|v| v.mismatches.is_empty())
    }
}
