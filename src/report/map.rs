//! `vhdinspect map`: every container block with what it holds and whether it may be dropped, a
//! per-partition summary, and an SVG picture of the disk.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::map::ImageMap;
use crate::map::blocks::{BlockInfo, BlockState, KeptAtBlockSize, kept_at_sizes, smaller_block_sizes};
use crate::report::table::{Section, human_bytes};
use crate::vhd::device::BlockDevice;

/// Per-partition counts.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PartitionSummary {
    #[serde(rename = "partition")]
    pub index: u32,
    /// "ntfs", "unreadable ntfs", or the file system found ("fat32", "bitlocker", "ext4",
    /// "unknown"...).
    pub contents: &'static str,
    /// Every byte is kept by compaction (encrypted volumes, ReFS).
    pub kept_whole: bool,
    pub problem: Option<String>,
    pub cluster_size: Option<u64>,
    pub needed_clusters: Option<u64>,
    pub free_clusters: Option<u64>,
    /// Allocated blocks overlapping the partition that may be dropped.
    pub droppable_blocks: u64,
    pub droppable_bytes: u64,
}

/// Totals over the disk.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MapSummary {
    pub block_size: u64,
    pub blocks: u64,
    pub allocated_blocks: u64,
    pub droppable_blocks: u64,
    /// Container bytes the droppable blocks occupy.
    pub droppable_bytes: u64,
    pub by_state: BTreeMap<String, u64>,
    /// What compaction keeps and frees with this block size and each smaller one down to
    /// 1 MiB (the first entry is this image's own): why a disk will not shrink further.
    pub block_sizes: Vec<KeptAtBlockSize>,
    pub partitions: Vec<PartitionSummary>,
}

/// The whole map.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MapReport {
    pub file: String,
    pub format: crate::vhd::ImageKind,
    /// `raw`, `vhd` or `vhdx`.
    pub container: crate::vhd::image::ImageFormat,
    pub blocks: Vec<BlockInfo>,
    pub summary: MapSummary,
}

/// Classifies every block; with `partition`, lists only the blocks overlapping it.
pub fn build(map: &ImageMap<'_>, partition: Option<u32>) -> crate::error::Result<MapReport> {
    let all = map.classify_blocks()?;
    let bs = map.block_size();
    let overlaps = |b: &BlockInfo, start: u64, end: u64| b.offset < end && b.offset + bs > start;
    let partitions = map
        .partitions
        .iter()
        .map(|pm| {
            let (start, end) = (pm.partition.start(), pm.partition.end());
            let dropped: Vec<&BlockInfo> =
                all.iter().filter(|b| b.allocated && b.droppable && overlaps(b, start, end)).collect();
            let (contents, problem, idx) = (pm.contents_name(), pm.problem(), pm.ntfs());
            let needed = idx.map(|i| i.needed_count(0, i.total_clusters()));
            PartitionSummary {
                index: pm.partition.index,
                contents,
                kept_whole: pm.kept_whole(),
                problem,
                cluster_size: idx.map(|i| i.cluster_size()),
                needed_clusters: needed,
                free_clusters: idx.zip(needed).map(|(i, n)| i.total_clusters() - n),
                droppable_blocks: dropped.len() as u64,
                droppable_bytes: dropped.len() as u64 * bs,
            }
        })
        .collect();
    let mut by_state = BTreeMap::new();
    for b in &all {
        *by_state.entry(state_name(b.state).to_string()).or_insert(0) += 1;
    }
    let droppable = all.iter().filter(|b| b.allocated && b.droppable).count() as u64;
    let allocated = all.iter().filter(|b| b.allocated).count() as u64;
    let block_sizes = kept_at_sizes(
        all.iter().filter(|b| b.allocated).map(|b| b.kept.as_slice()),
        &smaller_block_sizes(bs),
        allocated * bs,
    );
    let summary = MapSummary {
        block_size: bs,
        blocks: all.len() as u64,
        allocated_blocks: allocated,
        droppable_blocks: droppable,
        droppable_bytes: droppable * bs,
        by_state,
        block_sizes,
        partitions,
    };
    let blocks = match partition.and_then(|n| map.layout.partition(n)) {
        Some(p) => all.into_iter().filter(|b| overlaps(b, p.start(), p.end())).collect(),
        None => all,
    };
    Ok(MapReport {
        file: map.image.source().display().to_string(),
        format: map.image.kind(),
        container: map.image.format(),
        blocks,
        summary,
    })
}

/// Snake-case name of a state.
pub fn state_name(s: BlockState) -> &'static str {
    match s {
        BlockState::Unallocated => "unallocated",
        BlockState::Droppable => "droppable",
        BlockState::Used => "used",
        BlockState::Partial => "partial",
        BlockState::Metadata => "metadata",
        BlockState::OutsideNtfs => "outside_ntfs",
        BlockState::KeptWhole => "kept_whole",
    }
}

/// Renders the summary and one line per allocated block.
pub fn render(r: &MapReport) -> String {
    let s = &r.summary;
    let mut out = Vec::new();
    let mut t = Section::key_value(&format!("{} ({} {} image)", r.file, r.format, r.container.name()));
    t.kv("block size", human_bytes(s.block_size));
    t.kv("blocks", format!("{} ({} allocated)", s.blocks, s.allocated_blocks));
    t.kv(
        "droppable",
        format!("{}, {}", crate::report::table::count(s.droppable_blocks, "block"), human_bytes(s.droppable_bytes)),
    );
    for (state, n) in &s.by_state {
        t.kv(&format!("  {state}"), n.to_string());
    }
    out.push(t.render());
    if s.block_sizes.len() > 1 {
        let mut t = Section::table(
            "With smaller blocks (one needed byte keeps a whole block)",
            &["block size", "kept blocks", "kept", "freed"],
        );
        for k in &s.block_sizes {
            t.row(vec![
                human_bytes(k.block_size),
                k.kept_blocks.to_string(),
                human_bytes(k.kept_bytes),
                human_bytes(k.freed_bytes),
            ]);
        }
        out.push(t.render());
    }
    let mut t = Section::table(
        "Partitions",
        &["#", "contents", "cluster", "needed clusters", "free clusters", "droppable blocks", "droppable bytes"],
    );
    for p in &s.partitions {
        t.row(vec![
            p.index.to_string(),
            match &p.problem {
                Some(why) => format!("{}: {why}", p.contents),
                None if p.kept_whole => format!("{} (kept whole)", p.contents),
                None => p.contents.to_string(),
            },
            p.cluster_size.map(|c| c.to_string()).unwrap_or_default(),
            p.needed_clusters.map(|c| c.to_string()).unwrap_or_default(),
            p.free_clusters.map(|c| c.to_string()).unwrap_or_default(),
            p.droppable_blocks.to_string(),
            human_bytes(p.droppable_bytes),
        ]);
    }
    out.push(t.render());
    let mut lines = String::new();
    let _ =
        writeln!(lines, "{:>8} {:>8} {:>9} {:>6} {:<12} top owners", "block", "present", "clusters", "used", "state");
    let mut skipped: Option<(u64, u64)> = None;
    let flush = |lines: &mut String, skipped: &mut Option<(u64, u64)>| {
        if let Some((a, b)) = skipped.take() {
            let _ = writeln!(lines, "{:>8} blocks {a}-{b} not allocated", "");
        }
    };
    for b in &r.blocks {
        if !b.allocated {
            skipped = Some(skipped.map_or((b.index, b.index), |(a, _)| (a, b.index)));
            continue;
        }
        flush(&mut lines, &mut skipped);
        let owners: Vec<String> = b.top_owners.iter().map(|o| format!("{} ({})", o.path, o.clusters)).collect();
        let _ = writeln!(
            lines,
            "{:>8} {:>8} {:>4}/{:<4} {:>5.1}% {:<12} {}",
            b.index,
            b.sectors_present,
            b.used_clusters,
            b.ntfs_clusters,
            b.used_fraction * 100.0,
            state_name(b.state),
            owners.join(", ")
        );
    }
    flush(&mut lines, &mut skipped);
    out.push(lines);
    out.join("\n")
}

/// Fill colour and legend text of each state, in legend order.
const PALETTE: [(BlockState, &str, &str); 7] = [
    (BlockState::Used, "#c0392b", "used: every cluster needed"),
    (BlockState::KeptWhole, "#7f8c8d", "kept whole (encrypted volume or ReFS)"),
    (BlockState::Partial, "#e67e22", "partially used"),
    (BlockState::Metadata, "#2e86c1", "NTFS metadata only"),
    (BlockState::OutsideNtfs, "#8e44ad", "data outside NTFS (MBR, boot loader, other partitions)"),
    (BlockState::Droppable, "#27ae60", "allocated but droppable (free clusters only)"),
    (BlockState::Unallocated, "#e5e7e9", "not allocated in the container"),
];

/// Cells at most in the picture; larger disks group consecutive blocks per cell.
const MAX_CELLS: u64 = 16_384;

/// The disk as a grid of blocks coloured by state, with a legend.
pub fn svg(r: &MapReport) -> String {
    let blocks = &r.blocks;
    let group = (blocks.len() as u64).div_ceil(MAX_CELLS).max(1) as usize;
    let cells: Vec<(BlockState, String)> = blocks
        .chunks(group)
        .map(|c| {
            // A cell shows its most-used block, so a used block never hides in a free group.
            let b = c.iter().min_by_key(|b| PALETTE.iter().position(|p| p.0 == b.state)).unwrap_or(&c[0]);
            let title = if group == 1 {
                let owner = b.top_owners.first().map(|o| format!(", {}", o.path)).unwrap_or_default();
                format!("block {}: {}{}", b.index, state_name(b.state), owner)
            } else {
                format!("blocks {}-{}: {}", c[0].index, c[c.len() - 1].index, state_name(b.state))
            };
            (b.state, title)
        })
        .collect();
    let columns = 64usize;
    let cell = 12usize;
    let rows = cells.len().div_ceil(columns);
    let legend_top = 40 + rows * cell + 16;
    let width = columns * cell + 20;
    let height = legend_top + PALETTE.len() * 20 + 10;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<text x="10" y="18" font-size="14">{}: {} blocks of {}, {} droppable ({}){}</text>"#,
        xml_escape(&r.file),
        r.summary.blocks,
        human_bytes(r.summary.block_size),
        r.summary.droppable_blocks,
        human_bytes(r.summary.droppable_bytes),
        if group > 1 { format!(", {group} blocks per cell") } else { String::new() }
    );
    for (i, (state, title)) in cells.iter().enumerate() {
        let color = PALETTE.iter().find(|p| p.0 == *state).map_or("#000", |p| p.1);
        let (x, y) = (10 + (i % columns) * cell, 30 + (i / columns) * cell);
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="{y}" width="{}" height="{}" fill="{color}"><title>{}</title></rect>"#,
            cell - 1,
            cell - 1,
            xml_escape(title)
        );
    }
    for (i, (state, color, text)) in PALETTE.iter().enumerate() {
        let y = legend_top + i * 20;
        let n = r.summary.by_state.get(state_name(*state)).copied().unwrap_or(0);
        let _ = writeln!(out, r#"<rect x="10" y="{y}" width="14" height="14" fill="{color}"/>"#);
        let _ = writeln!(out, r#"<text x="30" y="{}">{} ({n})</text>"#, y + 12, xml_escape(text));
    }
    out.push_str("</svg>\n");
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
