//! Structural consistency of a VHD, like `vhd-util check`: every problem with its offset.

use crate::error::{Result, Space};
use crate::vhd::bat::{FileSector, table_bytes};
use crate::vhd::device::BlockDevice;
use crate::vhd::finding::{Finding, FindingsOfAKind};
use crate::vhd::footer::{FOOTER_SIZE, NO_DATA_OFFSET};
use crate::vhd::header::HEADER_SIZE;
use crate::vhd::image::DiskImage;
use crate::vhd::sparse::SparseVhd;

/// Every structural problem of `image` and its parents (opened leniently, so the problems
/// noticed at open time are among them).
pub fn check_image(image: &DiskImage) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    let path = image.source();
    if let Some(footer) = image.footer() {
        if footer.format_version != 0x0001_0000 {
            out.push(Finding::new(
                path,
                "VHD footer file format version",
                Space::File,
                footer_offset(image) + 12,
                format!("{:#010x}, expected 0x00010000", footer.format_version),
            ));
        }
        if footer.current_size % 512 != 0 {
            out.push(Finding::new(
                path,
                "VHD footer current size",
                Space::File,
                footer_offset(image) + 48,
                format!("{} bytes is not a whole number of sectors", footer.current_size),
            ));
        }
    }
    match image {
        DiskImage::Raw(_) => {}
        DiskImage::Fixed(f) => {
            if f.footer().data_offset != NO_DATA_OFFSET {
                out.push(Finding::new(
                    path,
                    "VHD footer data offset",
                    Space::File,
                    f.footer_offset() + 16,
                    format!("{:#x} in a fixed disk, expected 0xffffffffffffffff", f.footer().data_offset),
                ));
            }
            out.extend(f.findings().iter().cloned());
        }
        DiskImage::Sparse(s) => {
            out.extend(s.findings().iter().cloned());
            out.extend(check_layout(s));
            if let Some(parent) = s.parent() {
                out.extend(check_image(parent)?);
            }
        }
        DiskImage::Vhdx(v) => {
            out.extend(v.findings().iter().cloned());
            out.extend(v.layout_findings());
            if let Some(parent) = v.parent() {
                out.extend(check_image(parent)?);
            }
        }
    }
    Ok(out)
}

/// The problems of the top image of `image` that make writing into it in place unsafe:
/// blocks that overlap metadata or each other, or lie outside the file.
pub fn write_hazards(image: &DiskImage) -> Vec<Finding> {
    match image {
        DiskImage::Sparse(s) => sparse_hazards(s),
        DiskImage::Vhdx(v) => vhdx_hazards(v),
        _ => Vec::new(),
    }
}

/// Refuses to write into `image` in place when its blocks overlap or lie outside the file: a
/// write there would land on other live data. Every in-place writer asks this first.
pub fn refuse_hazards(image: &DiskImage) -> Result<()> {
    match write_hazards(image).into_iter().next() {
        Some(f) => Err(hazard_error(&f)),
        None => Ok(()),
    }
}

/// The one refusal of a write into a structurally broken image.
pub fn hazard_error(f: &Finding) -> crate::error::Error {
    crate::error::Error::unsupported(
        std::path::Path::new(&f.file),
        format!(
            "refusing to write into a structurally broken image in place: {}: {} (a copy to a new file may still read it)",
            f.structure, f.problem
        ),
    )
}

/// The problems of a dynamic or differencing image that make writing into it in place unsafe.
pub fn sparse_hazards(s: &SparseVhd) -> Vec<Finding> {
    s.findings().iter().cloned().chain(check_layout(s)).filter(|f| f.hazard).collect()
}

/// The problems of a VHDX that make writing into it in place unsafe.
pub fn vhdx_hazards(v: &crate::vhdx::Vhdx) -> Vec<Finding> {
    v.findings().iter().cloned().chain(v.layout_findings()).filter(|f| f.hazard).collect()
}

fn footer_offset(image: &DiskImage) -> u64 {
    match image {
        DiskImage::Raw(_) | DiskImage::Vhdx(_) => 0,
        DiskImage::Fixed(f) => f.footer_offset(),
        DiskImage::Sparse(s) => s.data_end(),
    }
}

/// Overlaps between metadata, locator data and blocks, and allocated blocks past the disk.
fn check_layout(s: &SparseVhd) -> Vec<Finding> {
    let path = s.source();
    let h = s.header();
    let mut out = Vec::new();
    if h.data_offset != u64::MAX {
        out.push(Finding::new(
            path,
            "dynamic disk header data offset",
            Space::File,
            s.header_offset() + 8,
            format!("{:#x}, expected 0xffffffffffffffff", h.data_offset),
        ));
    }
    if h.header_version != 0x0001_0000 {
        out.push(Finding::new(
            path,
            "dynamic disk header version",
            Space::File,
            s.header_offset() + 24,
            format!("{:#010x}, expected 0x00010000", h.header_version),
        ));
    }
    // The metadata extents of the file with what they are; blocks are merged in below.
    let mut extents: Vec<(u64, u64, Extent, u64)> = vec![
        (0, FOOTER_SIZE as u64, Extent::FooterCopy, 0),
        (s.header_offset(), s.header_offset() + HEADER_SIZE as u64, Extent::Header, s.header_offset()),
        (h.table_offset, h.table_offset + table_bytes(h.max_table_entries), Extent::Table, h.table_offset),
    ];
    for (slot, loc) in &h.parent_locators {
        if loc.data_length > 0 {
            let end = loc.data_offset.saturating_add(loc.data_length as u64);
            let at = s.header_offset() + 576 + 24 * *slot as u64;
            if end > s.data_end() {
                out.push(
                    Finding::new(
                        path,
                        format!("parent locator {slot}"),
                        Space::File,
                        at,
                        format!("data at {:#x} of {} bytes lies past the data end", loc.data_offset, loc.data_length),
                    )
                    .hazardous(),
                );
            }
            extents.push((loc.data_offset, end, Extent::Locator(*slot), at));
        }
    }
    let span = h.bitmap_size() + s.block_size();
    let mut past_disk = FindingsOfAKind::default();
    // Blocks by where they start, 8 bytes each (the BAT may hold 16 million of them).
    let mut blocks: Vec<(FileSector, u32)> = Vec::new();
    for (block, sector) in s.bat().allocated() {
        if block >= s.block_count() {
            past_disk.push(|| {
                let problem = format!("allocated, but the disk has only {} blocks", s.block_count());
                Finding::new(path, format!("BAT entry {block}"), Space::File, h.table_offset + 4 * block, problem)
            });
        }
        blocks.push((sector, block as u32));
    }
    blocks.sort_unstable();
    out.extend(past_disk.finish(|more| {
        let problem = format!("{more} more entries are allocated past the disk's {} blocks", s.block_count());
        Finding::new(path, "block allocation table", Space::File, h.table_offset, problem)
    }));
    extents.sort_unstable_by_key(|&(start, end, _, at)| (start, end, at));
    let mut overlaps = FindingsOfAKind::default();
    let mut reach: Option<(u64, Extent)> = None;
    let mut visit = |(start, end, extent, at): (u64, u64, Extent, u64)| {
        if let Some((prev_end, prev)) = reach
            && start < prev_end
        {
            overlaps.push(|| {
                let structure = match extent {
                    Extent::Block(_) => format!("BAT entry for {extent}"),
                    _ => extent.to_string(),
                };
                let problem = format!("{extent} at {start:#x} overlaps {prev} (which ends at {prev_end:#x})");
                Finding::new(path, structure, Space::File, at, problem).hazardous()
            });
        }
        if reach.is_none_or(|(e, _)| end > e) {
            reach = Some((end, extent));
        }
    };
    // Blocks and metadata in the order they start, merged without a second list.
    let mut metadata = extents.into_iter().peekable();
    for &(sector, block) in &blocks {
        let start = sector.offset();
        while let Some(m) = metadata.next_if(|m| m.0 <= start) {
            visit(m);
        }
        visit((start, start + span, Extent::Block(block as u64), h.table_offset + 4 * block as u64));
    }
    metadata.for_each(&mut visit);
    out.extend(overlaps.finish(|more| {
        let problem = format!("{more} more blocks overlap other blocks or metadata");
        Finding::new(path, "block allocation table", Space::File, h.table_offset, problem).hazardous()
    }));
    out
}

/// A named extent of a dynamic VHD file.
#[derive(Clone, Copy)]
enum Extent {
    FooterCopy,
    Header,
    Table,
    Locator(usize),
    Block(u64),
}

impl std::fmt::Display for Extent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Extent::FooterCopy => f.write_str("footer copy"),
            Extent::Header => f.write_str("dynamic disk header"),
            Extent::Table => f.write_str("block allocation table"),
            Extent::Locator(slot) => write!(f, "parent locator {slot} data"),
            Extent::Block(block) => write!(f, "block {block}"),
        }
    }
}
