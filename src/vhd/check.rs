//! Structural consistency of a VHD, like `vhd-util check`: every problem with its offset.

use crate::error::{Result, Space};
use crate::vhd::bat::table_bytes;
use crate::vhd::device::BlockDevice;
use crate::vhd::finding::Finding;
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
        DiskImage::Vhdx(v) => v.findings().iter().cloned().chain(v.layout_findings()).filter(|f| f.hazard).collect(),
        _ => Vec::new(),
    }
}

/// The problems of a dynamic or differencing image that make writing into it in place unsafe.
pub fn sparse_hazards(s: &SparseVhd) -> Vec<Finding> {
    s.findings().iter().cloned().chain(check_layout(s)).filter(|f| f.hazard).collect()
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
    // Every extent of the file with a name, to find overlaps in one sort.
    let mut extents: Vec<(u64, u64, String, u64)> = vec![
        (0, FOOTER_SIZE as u64, "footer copy".into(), 0),
        (s.header_offset(), s.header_offset() + HEADER_SIZE as u64, "dynamic disk header".into(), s.header_offset()),
        (
            h.table_offset,
            h.table_offset + table_bytes(h.max_table_entries),
            "block allocation table".into(),
            h.table_offset,
        ),
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
            extents.push((loc.data_offset, end, format!("parent locator {slot} data"), at));
        }
    }
    let span = h.bitmap_size() + s.block_size();
    for (block, sector) in s.bat().allocated() {
        let entry_at = h.table_offset + 4 * block;
        if block >= s.block_count() {
            out.push(Finding::new(
                path,
                format!("BAT entry {block}"),
                Space::File,
                entry_at,
                format!("allocated, but the disk has only {} blocks", s.block_count()),
            ));
        }
        extents.push((sector.offset(), sector.offset() + span, format!("block {block}"), entry_at));
    }
    extents.sort();
    let mut reach: Option<(u64, &str)> = None;
    for (start, end, name, at) in &extents {
        if let Some((prev_end, prev)) = reach
            && *start < prev_end
        {
            out.push(
                Finding::new(
                    path,
                    if name.starts_with("block ") { format!("BAT entry for {name}") } else { name.clone() },
                    Space::File,
                    *at,
                    format!("{name} at {start:#x} overlaps {prev} (which ends at {prev_end:#x})"),
                )
                .hazardous(),
            );
        }
        if reach.is_none_or(|(e, _)| *end > e) {
            reach = Some((*end, name));
        }
    }
    out
}
