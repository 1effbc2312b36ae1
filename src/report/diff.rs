//! `vhdinspect diff CHILD`: what a differencing disk changes, by file.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::map::ImageMap;
use crate::vhd::device::BlockDevice;

/// A file with sectors in the child.
#[derive(Serialize)]
pub struct ChangedFile {
    pub partition: u32,
    pub mft_record: u64,
    pub path: String,
    /// Sectors of the file's clusters present in the child.
    pub sectors: u64,
    pub metadata: bool,
}

/// Changed sectors that belong to no file, by region.
#[derive(Serialize)]
pub struct UnownedSectors {
    pub region: &'static str,
    pub sectors: u64,
}

/// The diff.
#[derive(Serialize)]
pub struct DiffReport {
    pub child: String,
    pub parent: Option<String>,
    pub sectors_present: u64,
    pub files: Vec<ChangedFile>,
    pub unowned: Vec<UnownedSectors>,
}

/// Attributes every sector present in the child to files of the merged view.
pub fn build(map: &ImageMap<'_>) -> Result<DiffReport> {
    let s = map.image.as_sparse().filter(|s| s.parent().is_some()).ok_or_else(|| {
        Error::Usage(format!("{}: not a differencing image ({})", map.image.source().display(), map.image.format()))
    })?;
    let bs = s.block_size();
    let mut files: BTreeMap<(u32, u64), ChangedFile> = BTreeMap::new();
    let mut unowned: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut total = 0u64;
    for (block, _) in s.bat().allocated() {
        let Some(bitmap) = s.block_bitmap(block)? else { continue };
        for (first, last, present) in bitmap.runs(0, bitmap.sectors()) {
            let start = block * bs + first as u64 * 512;
            let end = (block * bs + last as u64 * 512).min(map.image.len());
            if !present || start >= end {
                continue;
            }
            total += (end - start) / 512;
            for piece in map.pieces(start, end) {
                // Pieces split at cluster and partition boundaries, which are whole sectors.
                let sectors = (piece.end - piece.start) / 512;
                match (piece.owners, piece.partition) {
                    (Some((idx, ids)), Some(partition)) if !ids.is_empty() => {
                        for &id in ids {
                            let f = &idx.files[idx.owner(id).file as usize];
                            files
                                .entry((partition, f.record))
                                .or_insert_with(|| ChangedFile {
                                    partition,
                                    mft_record: f.record,
                                    path: idx.path(f, 0),
                                    sectors: 0,
                                    metadata: f.is_metadata(),
                                })
                                .sectors += sectors;
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
        parent: s.parent_resolution().map(|r| r.path.clone()),
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
        "{} changes {} sectors of {}",
        r.child,
        r.sectors_present,
        r.parent.as_deref().unwrap_or("its parent")
    );
    let _ = writeln!(out, "{:>5} {:>10} {:>10}  path", "part", "record", "sectors");
    for f in &r.files {
        let _ = writeln!(
            out,
            "{:>5} {:>10} {:>10}  {}{}",
            f.partition,
            f.mft_record,
            f.sectors,
            f.path,
            if f.metadata { " (metadata)" } else { "" }
        );
    }
    for u in &r.unowned {
        let _ = writeln!(out, "{:>5} {:>10} {:>10}  ({})", "", "", u.sectors, u.region);
    }
    out
}
