//! `vhdinspect owner`: what lives at a sector, block, cluster or byte offset; or, for a file,
//! where its streams lie on the disk and in the container.

use std::fmt::Write;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::map::ImageMap;
use crate::map::region::{Location, OwnerRef, Region};
use crate::ntfs::record;
use crate::vhd::device::BlockDevice;

/// What was asked about.
#[derive(Clone, Copy, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum Query {
    Sector(u64),
    Block(u64),
    Cluster(u64),
    Offset(u64),
}

/// Bytes of one region inside the queried range.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RegionBytes {
    pub region: Region,
    pub bytes: u64,
}

/// The answer for a position or range.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct OwnerReport {
    pub query: Query,
    pub disk_offset: u64,
    pub length: u64,
    pub first_sector: u64,
    pub block: u64,
    /// The block is present in the container.
    pub block_allocated: bool,
    /// Sectors of the range present in the container (for a differencing image: in the child).
    pub sectors_present: u64,
    /// Any NTFS cluster of the range is allocated, or it holds MBR/GPT/boot structures.
    pub allocated: bool,
    /// The region of the range's first byte.
    pub region: Region,
    pub partition: Option<u32>,
    /// What that partition holds.
    pub filesystem: Option<crate::disk::FileSystem>,
    pub cluster: Option<u64>,
    pub owners: Vec<OwnerRef>,
    /// Every region in the range with its byte count.
    pub regions: Vec<RegionBytes>,
}

/// Answers a position query.
pub fn locate(map: &ImageMap<'_>, query: Query, partition: Option<u32>) -> Result<OwnerReport> {
    let len = map.image.len();
    let name = map.image.source().display();
    let ss = map.layout.sector_size;
    let (start, length) = match query {
        Query::Sector(s) => (ss.bytes_of(s), ss.bytes()),
        Query::Offset(o) => (o, 1),
        Query::Block(b) => (b.saturating_mul(map.block_size()), map.block_size()),
        Query::Cluster(c) => {
            let n = partition.ok_or_else(|| Error::Usage("--cluster needs --partition".into()))?;
            let pm = map
                .partitions
                .iter()
                .find(|p| p.partition.index == n)
                .ok_or_else(|| Error::NotFound(format!("{name}: no partition {n}")))?;
            let idx = pm
                .ntfs()
                .ok_or_else(|| Error::NotFound(format!("{name}: partition {n} is not a readable NTFS volume")))?;
            (pm.partition.start() + c.saturating_mul(idx.cluster_size()), idx.cluster_size())
        }
    };
    if start >= len {
        return Err(Error::NotFound(format!("{name}: {} is past the end of the disk ({len} bytes)", describe(query))));
    }
    let length = length.min(len - start);
    let first: Location = map.locate(start);
    // Regions and owners in the order the range meets them.
    let mut regions: Vec<RegionBytes> = Vec::new();
    let mut owners: Vec<OwnerRef> = Vec::new();
    let mut allocated = false;
    for piece in map.pieces(start, start + length) {
        allocated |= piece.allocated;
        match regions.iter_mut().find(|r| r.region.name() == piece.region.name()) {
            Some(r) => r.bytes += piece.end - piece.start,
            None => regions.push(RegionBytes { region: piece.region, bytes: piece.end - piece.start }),
        }
        if let (Some((idx, ids)), Some(partition)) = (piece.owners, piece.partition) {
            for o in ids.iter().filter_map(|&id| OwnerRef::new(partition, idx, id)) {
                if !owners.contains(&o) {
                    owners.push(o);
                }
            }
        }
    }
    let block = start / map.block_size();
    let (block_allocated, sectors_present) = present_sectors(map, start, length)?;
    Ok(OwnerReport {
        query,
        disk_offset: start,
        length,
        first_sector: start / ss.bytes(),
        block,
        block_allocated,
        sectors_present,
        allocated,
        region: first.region,
        partition: first.partition,
        filesystem: first.filesystem,
        cluster: first.cluster,
        owners,
        regions,
    })
}

fn describe(q: Query) -> String {
    match q {
        Query::Sector(s) => format!("sector {s}"),
        Query::Block(b) => format!("block {b}"),
        Query::Cluster(c) => format!("cluster {c}"),
        Query::Offset(o) => format!("offset {o}"),
    }
}

/// Whether the range's block is stored, and how many of the range's (logical) sectors the
/// container holds.
fn present_sectors(map: &ImageMap<'_>, start: u64, length: u64) -> Result<(bool, u64)> {
    let per = map.layout.sector_size.bytes() / 512;
    let Some(bs) = map.image.block_size() else {
        return Ok((true, length.div_ceil(512) / per));
    };
    let end = start + length;
    let (mut any_block, mut present) = (false, 0u64);
    for block in start / bs..end.div_ceil(bs) {
        if let Some(bitmap) = map.image.block_sectors(block)? {
            any_block = true;
            let (first, last) = crate::vhd::bitmap::SectorBitmap::bits_of(
                start.max(block * bs) - block * bs,
                end.min((block + 1) * bs) - block * bs,
            );
            present += (first..last).filter(|&i| bitmap.is_set(i)).count() as u64;
        }
    }
    Ok((any_block, present / per))
}

/// One run of a file's stream, on the disk and in the container.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunPlace {
    pub vcn: u64,
    pub lcn: Option<u64>,
    pub clusters: u64,
    pub disk_offset: Option<u64>,
    pub first_sector: Option<u64>,
    pub sectors: u64,
    pub first_block: Option<u64>,
    pub last_block: Option<u64>,
}

/// One stream of the file.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StreamPlace {
    pub attribute: &'static str,
    pub stream: String,
    pub size: u64,
    pub resident: bool,
    pub runs: Vec<RunPlace>,
}

/// Where a file lies.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FilePlace {
    pub partition: u32,
    pub path: String,
    pub mft_record: u64,
    /// Partition offset of the file's MFT record (resident data lives there).
    pub record_offset: Option<u64>,
    pub streams: Vec<StreamPlace>,
    /// Every VHD block holding any of its clusters.
    pub blocks: Vec<u64>,
    /// Sector ranges `[first, end)` holding its clusters, merged.
    pub sector_ranges: Vec<(u64, u64)>,
}

/// Finds `path` (in `partition`, or the first NTFS volume that has it) and places its runs.
pub fn place_file(map: &ImageMap<'_>, path: &str, partition: Option<u32>) -> Result<FilePlace> {
    let bs = map.block_size();
    for (p, idx) in map.ntfs().filter(|(p, _)| partition.is_none_or(|n| n == p.index)) {
        let Some((f, name)) = idx.find_path(path) else { continue };
        let cs = idx.cluster_size();
        let ss = p.sector_size.bytes();
        let mut blocks = Vec::new();
        let mut sectors: Vec<(u64, u64)> = Vec::new();
        let streams = f
            .streams
            .iter()
            .filter(|s| s.is_data() || !s.resident)
            .map(|s| StreamPlace {
                attribute: record::type_name(s.ty),
                stream: s.name.to_string(),
                size: s.data_size,
                resident: s.resident,
                runs: s
                    .runs
                    .iter()
                    .map(|r| {
                        let disk = r.lcn.map(|l| p.start() + l * cs);
                        let sectors_n = r.length * cs / ss;
                        if let Some(d) = disk {
                            let (first, last) = (d / bs, (d + r.length * cs - 1) / bs);
                            blocks.extend(first..=last);
                            sectors.push((d / ss, d / ss + sectors_n));
                        }
                        RunPlace {
                            vcn: r.vcn,
                            lcn: r.lcn,
                            clusters: r.length,
                            disk_offset: disk,
                            first_sector: disk.map(|d| d / ss),
                            sectors: sectors_n,
                            first_block: disk.map(|d| d / bs),
                            last_block: disk.map(|d| (d + r.length * cs - 1) / bs),
                        }
                    })
                    .collect(),
            })
            .collect();
        blocks.sort_unstable();
        blocks.dedup();
        sectors.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (a, b) in sectors {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        return Ok(FilePlace {
            partition: p.index,
            path: idx.path(f, name),
            mft_record: f.record,
            record_offset: idx.layout.record_offset(f.record),
            streams,
            blocks,
            sector_ranges: merged,
        });
    }
    Err(Error::NotFound(format!("{}: no file {path:?} in any NTFS volume", map.image.source().display())))
}

/// Renders a position answer.
pub fn render(r: &OwnerReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "disk offset {:#x} ({} bytes), sector {}, block {} ({}, {} sectors present)",
        r.disk_offset,
        r.length,
        r.first_sector,
        r.block,
        if r.block_allocated { "allocated" } else { "not allocated" },
        r.sectors_present
    );
    let _ = writeln!(
        out,
        "region: {}{}{}, {}",
        r.region.name(),
        r.partition.map(|p| format!(", partition {p}")).unwrap_or_default(),
        r.cluster.map(|c| format!(", cluster {c}")).unwrap_or_default(),
        if r.allocated { "allocated" } else { "not allocated" }
    );
    if r.regions.len() > 1 {
        for g in &r.regions {
            let _ = writeln!(out, "  {:>10} bytes  {}", g.bytes, g.region.name());
        }
    }
    for o in &r.owners {
        let _ = writeln!(
            out,
            "owner: partition {} record {} {}{}{} {}",
            o.partition,
            o.mft_record,
            o.path,
            if o.stream.is_empty() { "" } else { ":" },
            o.stream,
            o.attribute
        );
    }
    out
}

/// Renders a file's placement.
pub fn render_file(f: &FilePlace) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "partition {} record {}: {}", f.partition, f.mft_record, f.path);
    for s in &f.streams {
        let _ = writeln!(
            out,
            "  {}{}{}: {} bytes{}",
            s.attribute,
            if s.stream.is_empty() { "" } else { ":" },
            s.stream,
            s.size,
            if s.resident { " (resident in the MFT record)" } else { "" }
        );
        for r in &s.runs {
            match (r.lcn, r.first_sector) {
                (Some(lcn), Some(sector)) => {
                    let _ = writeln!(
                        out,
                        "    vcn {:>8} lcn {:>10} clusters {:>6}  sectors {}-{}  blocks {}-{}",
                        r.vcn,
                        lcn,
                        r.clusters,
                        sector,
                        sector + r.sectors - 1,
                        r.first_block.unwrap_or(0),
                        r.last_block.unwrap_or(0)
                    );
                }
                _ => {
                    let _ = writeln!(out, "    vcn {:>8} sparse     clusters {:>6}", r.vcn, r.clusters);
                }
            }
        }
    }
    let blocks = match f.blocks.is_empty() {
        true => "none (no clusters of its own)".to_string(),
        false => f.blocks.iter().map(u64::to_string).collect::<Vec<_>>().join(" "),
    };
    let _ = writeln!(out, "  VHD blocks: {blocks}");
    out
}
