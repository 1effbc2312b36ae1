//! `vhdinspect map`: every container block with what it holds and whether it may be dropped, a
//! per-partition summary, and an SVG picture of the disk.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::map::ImageMap;
use crate::map::blocks::{BlockInfo, BlockState, KeptAtBlockSize, kept_at_sizes, smaller_block_sizes};
use crate::report::table::{Section, clipped, human_bytes};
use crate::vhd::device::BlockDevice;

/// Per-partition counts.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PartitionSummary {
    #[serde(rename = "partition")]
    pub index: u32,
    /// Disk offset of its first byte.
    pub offset: u64,
    /// Its length in bytes.
    pub length: u64,
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
pub struct MapReport<'m> {
    pub file: String,
    pub format: crate::vhd::ImageKind,
    /// `raw`, `vhd` or `vhdx`.
    pub container: crate::vhd::image::ImageFormat,
    #[cfg_attr(feature = "schema", schemars(with = "Vec<BlockInfo>"))]
    pub blocks: BlockList<'m>,
    pub summary: MapSummary,
}

/// Every block of the map (or of one partition), classified. The blocks that may hold data
/// are classified when the report is built; in a dynamic or differencing image the others
/// hold nothing in any disk of the chain and are classified as they are listed, so memory
/// grows with the data, not with the disk's size.
pub struct BlockList<'m> {
    map: &'m ImageMap<'m>,
    range: std::ops::Range<u64>,
    /// Classified blocks of `range` in order: all of them, or those that may hold data.
    held: Vec<BlockInfo>,
}

impl BlockList<'_> {
    /// Blocks listed.
    pub fn len(&self) -> u64 {
        self.range.end - self.range.start
    }

    /// The first block listed.
    pub fn first_index(&self) -> u64 {
        self.range.start
    }

    /// Blocks `[from, to)` classified, in order.
    pub fn span(&self, from: u64, to: u64) -> crate::error::Result<Vec<BlockInfo>> {
        let mut out = Vec::new();
        self.each(
            from,
            to,
            |b| {
                out.push(b.clone());
                Ok(())
            },
            |e| e,
        )?;
        Ok(out)
    }

    /// Calls `f` with blocks `[from, to)` in order, classifying those not held as they come
    /// (an error doing so made `f`'s by `lift`).
    pub fn each<E>(
        &self,
        from: u64,
        to: u64,
        mut f: impl FnMut(&BlockInfo) -> Result<(), E>,
        lift: impl Fn(crate::error::Error) -> E,
    ) -> Result<(), E> {
        let mut held = self.held[self.held.partition_point(|b| b.index < from)..].iter().peekable();
        for index in from.max(self.range.start)..to.min(self.range.end) {
            match held.next_if(|b| b.index == index) {
                Some(b) => f(b)?,
                None => f(&self.map.block_info(index).map_err(&lift)?)?,
            }
        }
        Ok(())
    }
}

impl Serialize for BlockList<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let mut seq = s.serialize_seq(Some(self.len() as usize))?;
        self.each(self.range.start, self.range.end, |b| seq.serialize_element(b), S::Error::custom)?;
        seq.end()
    }
}

/// Classifies every block; with `partition`, lists only the blocks overlapping it.
pub fn build<'m>(map: &'m ImageMap<'m>, partition: Option<u32>) -> crate::error::Result<MapReport<'m>> {
    use rayon::prelude::*;
    let bs = map.block_size();
    // In a dynamic or differencing image a block without data anywhere in the chain is
    // unallocated: only the others need classifying now.
    let sparse = matches!(map.image.kind(), crate::vhd::ImageKind::Dynamic | crate::vhd::ImageKind::Differencing);
    let held_blocks = if sparse { map.data_blocks()? } else { (0..map.block_count()).collect() };
    let all: Vec<BlockInfo> =
        held_blocks.into_par_iter().map(|b| map.block_info(b)).collect::<crate::error::Result<_>>()?;
    let not_held = map.block_count() - all.len() as u64;
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
                offset: start,
                length: end - start,
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
    if not_held > 0 {
        *by_state.entry(state_name(BlockState::Unallocated).to_string()).or_insert(0) += not_held;
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
        blocks: map.block_count(),
        allocated_blocks: allocated,
        droppable_blocks: droppable,
        droppable_bytes: droppable * bs,
        by_state,
        block_sizes,
        partitions,
    };
    let range = match partition.and_then(|n| map.layout.partition(n)) {
        Some(p) => p.start() / bs..p.end().div_ceil(bs),
        None => 0..map.block_count(),
    };
    let held = all.into_iter().filter(|b| range.contains(&b.index)).collect();
    let blocks = BlockList { map, range, held };
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
    let mut t =
        Section::key_value(&format!("{} ({} image)", r.file, crate::report::table::image_kind(r.format, r.container)));
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
    // Blocks not held (classified as they would be listed) are unallocated: runs of them and
    // of unallocated held blocks show as one line.
    let unallocated = |skipped: &mut Option<(u64, u64)>, a: u64, b: u64| {
        *skipped = Some(skipped.map_or((a, b), |(first, _)| (first, b)));
    };
    let mut next = r.blocks.range.start;
    for b in &r.blocks.held {
        if b.index > next {
            unallocated(&mut skipped, next, b.index - 1);
        }
        next = b.index + 1;
        if !b.allocated {
            unallocated(&mut skipped, b.index, b.index);
            continue;
        }
        flush(&mut lines, &mut skipped);
        let owners: Vec<String> = b.top_owners.iter().map(|o| format!("{} ({})", o.path, o.clusters)).collect();
        let line = format!(
            "{:>8} {:>8} {:>4}/{:<4} {:>5.1}% {:<12} {}",
            b.index,
            b.sectors_present,
            b.used_clusters,
            b.ntfs_clusters,
            b.used_fraction * 100.0,
            state_name(b.state),
            owners_text(&owners)
        );
        let _ = writeln!(lines, "{}", line.trim_end());
    }
    if next < r.blocks.range.end {
        unallocated(&mut skipped, next, r.blocks.range.end - 1);
    }
    flush(&mut lines, &mut skipped);
    out.push(lines);
    out.join("\n")
}

/// Room for the top owners on a block line of 100 columns.
const OWNERS_WIDTH: usize = 100 - 49;

/// The owners that fit a block line, whole, then `…` if some did not.
fn owners_text(owners: &[String]) -> String {
    let mut out = String::new();
    for o in owners {
        let sep = if out.is_empty() { "" } else { ", " };
        // Room is kept for ", …".
        if out.chars().count() + sep.len() + o.chars().count() + 3 > OWNERS_WIDTH {
            return if out.is_empty() { clipped(o, OWNERS_WIDTH) } else { format!("{out}, …") };
        }
        out.push_str(sep);
        out.push_str(o);
    }
    out
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
const MAX_CELLS: u64 = 4096;
/// Cells per row, and a cell's side in pixels.
const COLUMNS: usize = 64;
const CELL: usize = 12;
/// Left of the grid: the offset axis; right of it: the partition labels.
const AXIS: usize = 90;
const LABELS: usize = 230;
/// Legend items per row, and a legend item's width.
const LEGEND_COLUMNS: usize = 2;
const LEGEND_ITEM: usize = 400;

/// One cell of the picture: the blocks it stands for.
struct Cell {
    blocks: Vec<BlockInfo>,
}

impl Cell {
    /// The state shown: the most-used of its blocks, so a used block never hides in a free
    /// group.
    fn state(&self) -> BlockState {
        self.blocks
            .iter()
            .map(|b| b.state)
            .min_by_key(|s| PALETTE.iter().position(|p| p.0 == *s))
            .unwrap_or(BlockState::Unallocated)
    }

    /// The tooltip: the block(s), their disk offset, state, use and top owners.
    fn title(&self, block_size: u64) -> String {
        let (first, last) = (&self.blocks[0], &self.blocks[self.blocks.len() - 1]);
        if self.blocks.len() == 1 {
            let owners: Vec<String> = first.top_owners.iter().map(|o| format!("{} ({})", o.path, o.clusters)).collect();
            let mut t = format!(
                "block {} at {}: {}, {}/{} clusters used ({:.1}%)",
                first.index,
                human_bytes(first.offset),
                state_name(first.state),
                first.used_clusters,
                first.ntfs_clusters,
                first.used_fraction * 100.0
            );
            if !owners.is_empty() {
                t.push('\n');
                t.push_str(&owners.join(", "));
            }
            return t;
        }
        let mut counts: Vec<(BlockState, usize)> = Vec::new();
        for b in &self.blocks {
            match counts.iter_mut().find(|(s, _)| *s == b.state) {
                Some((_, n)) => *n += 1,
                None => counts.push((b.state, 1)),
            }
        }
        counts.sort_by_key(|(s, _)| PALETTE.iter().position(|p| p.0 == *s));
        let states: Vec<String> = counts.iter().map(|(s, n)| format!("{} {n}", state_name(*s))).collect();
        format!(
            "blocks {}-{} at {} ({}): {}",
            first.index,
            last.index,
            human_bytes(first.offset),
            human_bytes(self.blocks.len() as u64 * block_size),
            states.join(", ")
        )
    }
}

/// The disk as a grid of blocks coloured by state: the legend on top, an offset axis on the
/// left, partition boundaries and labels, a tooltip per cell. Disks of more than 4096 blocks
/// group consecutive blocks per cell, and the subtitle says so.
pub fn svg(r: &MapReport<'_>) -> crate::error::Result<String> {
    let blocks = &r.blocks;
    let bs = r.summary.block_size.max(1);
    let group = blocks.len().div_ceil(MAX_CELLS).max(1) as usize;
    let first_block = blocks.first_index();
    let cells: Vec<Cell> = (0..blocks.len().div_ceil(group as u64))
        .map(|c| {
            let from = first_block + c * group as u64;
            Ok(Cell { blocks: blocks.span(from, from + group as u64)? })
        })
        .collect::<crate::error::Result<_>>()?;
    // A small disk gets a row as long as it needs.
    let cols = COLUMNS.min(cells.len()).max(1);
    let rows = cells.len().div_ceil(cols).max(1);
    let legend_rows = PALETTE.len().div_ceil(LEGEND_COLUMNS);
    let grid_top = 50 + legend_rows * 20 + 16;
    let grid_left = 10 + AXIS;
    let labels: Vec<String> = r.summary.partitions.iter().map(partition_label).collect();
    // About 7 pixels per character of the 12-pixel font: no label is cut at the right edge.
    let labels_width = labels.iter().map(|l| l.chars().count() * 7 + 10).max().unwrap_or(0).max(LABELS);
    let width = (grid_left + cols * CELL + 10 + labels_width).max(10 + LEGEND_COLUMNS * LEGEND_ITEM);
    // Partitions starting in one row stack their labels downwards.
    let mut labels_in_row = vec![0usize; rows];
    let cell_of = |offset: u64| ((offset / bs).saturating_sub(first_block) / group as u64) as usize;
    let label_rows = r.summary.partitions.iter().map(|p| cell_of(p.offset) / cols).filter(|&row| row < rows).fold(
        vec![0usize; rows],
        |mut n, row| {
            n[row] += 1;
            n
        },
    );
    let labels_bottom = label_rows.iter().enumerate().map(|(row, n)| row * CELL + n * 12).max().unwrap_or(0);
    let height = grid_top + (rows * CELL).max(labels_bottom) + 20;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{width}" height="{height}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="10" y="20" font-size="15" font-weight="bold">{}</text>"#,
        xml_escape(&format!("{} ({})", r.file, crate::report::table::image_kind(r.format, r.container)))
    );
    let scale = match group {
        1 => "one cell per block".to_string(),
        g => format!("{g} blocks ({}) per cell, coloured by the most used", human_bytes(g as u64 * bs)),
    };
    let _ = writeln!(
        out,
        r#"<text x="10" y="38">{}</text>"#,
        xml_escape(&format!(
            "{} blocks of {}, {} droppable ({}); {scale}",
            r.summary.blocks,
            human_bytes(bs),
            r.summary.droppable_blocks,
            human_bytes(r.summary.droppable_bytes)
        ))
    );
    for (i, (state, color, text)) in PALETTE.iter().enumerate() {
        let (x, y) = (10 + (i % LEGEND_COLUMNS) * LEGEND_ITEM, 50 + (i / LEGEND_COLUMNS) * 20);
        let n = r.summary.by_state.get(state_name(*state)).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            r##"<rect class="swatch" x="{x}" y="{y}" width="14" height="14" fill="{color}" stroke="#555" stroke-width="0.5"/>"##
        );
        let _ = writeln!(out, r#"<text x="{}" y="{}">{} ({n})</text>"#, x + 20, y + 12, xml_escape(text));
    }
    let axis_every = rows.div_ceil(32).max(1);
    let mut last_tick = String::new();
    for row in (0..rows).step_by(axis_every) {
        let offset = (first_block + (row * cols * group) as u64) * bs;
        // Rows whose offsets round to the same figure are marked once.
        let tick = human_bytes(offset);
        if tick == last_tick {
            continue;
        }
        last_tick.clone_from(&tick);
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" text-anchor="end" font-size="10" fill="#444">{}</text>"##,
            grid_left - 6,
            grid_top + row * CELL + CELL - 2,
            tick
        );
    }
    for (i, cell) in cells.iter().enumerate() {
        let color = PALETTE.iter().find(|p| p.0 == cell.state()).map_or("#000", |p| p.1);
        let (x, y) = (grid_left + (i % cols) * CELL, grid_top + (i / cols) * CELL);
        let _ = writeln!(
            out,
            r#"<rect class="cell" x="{x}" y="{y}" width="{}" height="{}" fill="{color}"><title>{}</title></rect>"#,
            CELL - 1,
            CELL - 1,
            xml_escape(&cell.title(bs))
        );
    }
    for (p, label) in r.summary.partitions.iter().zip(&labels) {
        let (start, end) = (cell_of(p.offset), cell_of((p.offset + p.length).saturating_sub(1)) + 1);
        if start >= cells.len() {
            continue;
        }
        for (at, dash) in [(start, ""), (end, r#" stroke-dasharray="2,2""#)] {
            // An end on a row boundary is drawn at the right of the row it closes.
            let (col, row) = match (at % cols, at / cols) {
                (0, row) if dash.is_empty() || row == 0 => (0, row),
                (0, row) => (cols, row - 1),
                (col, row) => (col, row),
            };
            let (x, y) = (grid_left + col * CELL, grid_top + row.min(rows - 1) * CELL);
            let _ = writeln!(
                out,
                r##"<line x1="{x}" y1="{y}" x2="{x}" y2="{}" stroke="#111" stroke-width="2"{dash}/>"##,
                y + CELL
            );
        }
        let row = start / cols;
        let y = grid_top + row * CELL + CELL - 2 + labels_in_row[row] * 12;
        labels_in_row[row] += 1;
        let _ = writeln!(out, r#"<text x="{}" y="{y}">{}</text>"#, grid_left + cols * CELL + 10, xml_escape(label));
    }
    out.push_str("</svg>\n");
    Ok(out)
}

/// A partition's label beside the grid.
fn partition_label(p: &PartitionSummary) -> String {
    format!("partition {}: {}, {} at {}", p.index, p.contents, human_bytes(p.length), human_bytes(p.offset))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
