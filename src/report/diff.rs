//! `vhdinspect diff CHILD`: what a differencing disk changes, by file.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::map::ImageMap;
use crate::vhd::device::BlockDevice;

/// A file with sectors in the child.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ChangedFile {
    pub partition: u32,
    pub mft_record: u64,
    pub path: String,
    /// Sectors of the file present in the child: of its clusters, and of its MFT records.
    pub sectors: u64,
    /// Of those, sectors of its MFT records (names, times, attributes, resident data).
    pub record_sectors: u64,
    pub metadata: bool,
}

/// Changed sectors that belong to no file, by region.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct UnownedSectors {
    pub region: &'static str,
    pub sectors: u64,
}

/// The diff.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DiffReport {
    /// The child image (`file`, as every report names the image read).
    #[serde(rename = "file")]
    pub child: String,
    /// The parent's path.
    pub parent: Option<String>,
    pub sectors_present: u64,
    pub files: Vec<ChangedFile>,
    pub unowned: Vec<UnownedSectors>,
}

/// Attributes every sector present in the child to files of the merged view.
pub fn build(map: &ImageMap<'_>) -> Result<DiffReport> {
    let image = map.image;
    let (Some(bs), Some(_)) = (image.block_size(), image.parent()) else {
        return Err(Error::unsupported(image.source(), format!("not a differencing image ({})", image.kind())));
    };
    let mut files: BTreeMap<(u32, u64), ChangedFile> = BTreeMap::new();
    let mut unowned: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut total = 0u64;
    for block in image.stored_blocks() {
        let Some(bitmap) = image.block_sectors(block)? else { continue };
        for (first, last, present) in bitmap.runs(0, bitmap.sectors()) {
            let (a, b) = crate::vhd::bitmap::SectorBitmap::bytes_of(first, last);
            let (start, end) = (block * bs + a, (block * bs + b).min(map.image.len()));
            if !present || start >= end {
                continue;
            }
            total += (end - start) / 512;
            for piece in map.pieces(start, end) {
                // Pieces split at cluster and partition boundaries, which are whole sectors.
                let sectors = (piece.end - piece.start) / 512;
                match (piece.owners, piece.partition) {
                    (Some((idx, ids)), Some(partition)) if !ids.is_empty() => {
                        let mut credit = |f: &crate::ntfs::FileEntry, sectors: u64, record: bool| {
                            let entry = files.entry((partition, f.record)).or_insert_with(|| ChangedFile {
                                partition,
                                mft_record: f.record,
                                path: idx.path(f, 0),
                                sectors: 0,
                                record_sectors: 0,
                                metadata: f.is_metadata(),
                            });
                            entry.sectors += sectors;
                            entry.record_sectors += if record { sectors } else { 0 };
                        };
                        for &id in ids {
                            let owner = idx.owner(id);
                            let Some(f) = idx.file(owner.record) else { continue };
                            let in_mft_data = f.record == 0 && f.streams[owner.stream as usize].is_default_data();
                            if !in_mft_data {
                                credit(f, sectors, false);
                                continue;
                            }
                            // Sectors of $MFT's data belong to the files whose records they hold.
                            let p0 = map.partition_at(piece.start).map_or(0, |p| p.partition.start());
                            for (record, bytes) in idx.layout.records_in(piece.start - p0, piece.end - p0) {
                                match idx.file_of_record(record) {
                                    Some(owner) => credit(owner, bytes.div_ceil(512), true),
                                    None => *unowned.entry("free mft record").or_default() += bytes.div_ceil(512),
                                }
                            }
                        }
                    }
                    _ => *unowned.entry(piece.region.name()).or_default() += sectors,
                }
            }
        }
    }
    let mut files: Vec<ChangedFile> = files.into_values().collect();
    files.sort_by(|a, b| b.sectors.cmp(&a.sectors).then(a.path.cmp(&b.path)));
    Ok(DiffReport {
        child: map.image.source().display().to_string(),
        parent: image.parent_resolution().map(|r| r.path.clone()),
        sectors_present: total,
        files,
        unowned: unowned.into_iter().map(|(region, sectors)| UnownedSectors { region, sectors }).collect(),
    })
}

/// Renders the diff.
pub fn render(r: &DiffReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} changes {} of {}",
        r.child,
        crate::report::table::count(r.sectors_present, "sector"),
        r.parent.as_deref().unwrap_or("its parent")
    );
    let _ = writeln!(out, "{:>5} {:>10} {:>10}  path", "part", "record", "sectors");
    for f in &r.files {
        let note = match (f.metadata, f.record_sectors) {
            (true, _) => " (metadata)",
            (false, n) if n == f.sectors => " (MFT record only)",
            (false, 0) => "",
            _ => " (data and MFT record)",
        };
        let _ = writeln!(out, "{:>5} {:>10} {:>10}  {}{note}", f.partition, f.mft_record, f.sectors, f.path);
    }
    for u in &r.unowned {
        let _ = writeln!(out, "{:>5} {:>10} {:>10}  ({})", "", "", u.sectors, u.region);
    }
    out
}
