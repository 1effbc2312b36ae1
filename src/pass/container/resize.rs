//! `expand` and `shrink`: a new virtual size for a fixed, dynamic or differencing VHD or a
//! VHDX. A VHD's container changes in one journaled step (footers, header, a grown BAT moved
//! to the end of the file when it has no room where it is), a VHDX's through its own log, and
//! a GPT's backup table moves to the new last sector in a second step; between the two the disk is what a hypervisor's own resize leaves
//! (a backup table short of the end), so an interruption loses nothing.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::disk::{DiskLayout, Lba, Scheme};
use crate::error::{Error, Result, Space};
use crate::pass::container::family;
use crate::pass::disk_write::{self, DiskWrite};
use crate::vhd::bat::{FILE_SECTOR, MAX_ENTRIES, table_bytes};
use crate::vhd::device::{BlockDevice, ImageFile, nonzero_ranges};
use crate::vhd::fixed::MAX_FIXED_SIZE;
use crate::vhd::footer::FOOTER_SIZE;
use crate::vhd::geometry::Geometry;
use crate::vhd::image::{DiskImage, ImageFormat, ImageKind};
use crate::vhd::sparse::MAX_DISK_SIZE;

/// What a resize did.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ResizeReport {
    pub file: String,
    pub format: ImageKind,
    pub container: ImageFormat,
    pub old_size: u64,
    pub new_size: u64,
    /// The BAT was moved to the end of the file to hold the new blocks.
    pub bat_moved: bool,
    /// The GPT's backup header and entries were rewritten at the new last sector.
    pub gpt_backup_moved: bool,
    /// With `--grow-partition`: the last partition and its NTFS volume grown into the space.
    pub partition_grown: Option<crate::pass::container::grow::PartitionGrowth>,
    /// The image file's length afterwards.
    pub file_bytes: u64,
    pub elapsed_seconds: f64,
}

/// Grows `image` (opened writable) to `new_size` bytes; refused when differencing images in
/// its folder (or in `search`) have it as their parent, unless `force`.
pub fn expand(image: &mut DiskImage, new_size: u64, force: bool, search: &[PathBuf]) -> Result<ResizeReport> {
    crate::vhd::check::refuse_hazards(image)?;
    let old = image.len();
    if new_size <= old {
        return Err(Error::unsupported(
            image.source(),
            format!("{new_size} bytes is not larger than the disk's {old} bytes (shrink makes it smaller)"),
        ));
    }
    resize(image, new_size, force, search)
}

/// Shrinks `image` (opened writable) to `new_size` bytes, or to the end of its last
/// partition; refused when any byte beyond the new end holds data (a GPT's backup table
/// excepted: it moves), and, unless `force`, when it has children in its folder (or in
/// `search`).
pub fn shrink(image: &mut DiskImage, new_size: Option<u64>, force: bool, search: &[PathBuf]) -> Result<ResizeReport> {
    crate::vhd::check::refuse_hazards(image)?;
    let layout = DiskLayout::read(image)?;
    let ss = layout.sector_size;
    // An MBR's extended container counts as well as its partitions.
    let extended = layout
        .mbr
        .iter()
        .filter(|_| layout.scheme == Scheme::Mbr)
        .flat_map(|m| &m.entries)
        .filter(|e| matches!(e.kind, 0x05 | 0x0F | 0x85))
        .map(|e| ss.bytes_of(e.start_lba as u64 + e.sectors as u64));
    let last_end = layout.partitions.iter().map(|p| p.start() + p.len()).chain(extended).max().unwrap_or(0);
    if last_end == 0 && new_size.is_none() {
        return Err(Error::unsupported(image.source(), "the disk has no partitions to shrink to: give the size"));
    }
    if new_size == Some(0) {
        return Err(Error::unsupported(image.source(), "a disk cannot be 0 bytes"));
    }
    // A GPT needs its backup entries and header after the last partition.
    let gpt_tail = match (&layout.scheme, &layout.gpt_table) {
        (Scheme::Gpt, Some(t)) => ss.bytes_of(t.array_sectors() + 1),
        _ => 0,
    };
    let floor = last_end + gpt_tail;
    let target = new_size.unwrap_or(floor.max(ss.bytes()));
    let old = image.len();
    if target >= old {
        return Err(Error::unsupported(
            image.source(),
            format!("the disk is {old} bytes: nothing to shrink to {target}"),
        ));
    }
    if target < floor {
        return Err(Error::unsupported(
            image.source(),
            format!(
                "{target} bytes would cut into the partitions, which end at {last_end} (the disk cannot be smaller than {floor} bytes)"
            ),
        ));
    }
    let keep_out = match layout.scheme {
        Scheme::Gpt => ss.bytes_of(layout.gpt_table.as_ref().map_or(33, |t| t.array_sectors() + 1)),
        _ => 0,
    };
    if let Some((a, _)) = data_beyond(image, target, old - keep_out)?.first() {
        return Err(Error::unsupported(
            image.source(),
            format!("cannot shrink to {target} bytes: the disk holds data at offset {a}, beyond the new end"),
        ));
    }
    resize(image, target, force, search)
}

/// Non-zero ranges of the disk in `[from, to)`.
fn data_beyond(image: &DiskImage, from: u64, to: u64) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for (a, b) in image.data_ranges(from, to)? {
        out.extend(nonzero_ranges(a, b, &|at, buf| image.read_at(at, buf))?);
    }
    Ok(out)
}

/// Changes the container, then moves a GPT's backup.
fn resize(image: &mut DiskImage, new_size: u64, force: bool, search: &[PathBuf]) -> Result<ResizeReport> {
    let started = Instant::now();
    let path = image.source().to_path_buf();
    let children = family::children_of(image, &family::folders_of(&[&path], search), &[]);
    if children.any() && !force {
        return Err(Error::Refused {
            file: path,
            problem: format!("has children ({}), which would read a changed disk", children.describe()),
            remedy: crate::error::Remedy::Force,
        });
    }
    if !new_size.is_multiple_of(512) {
        return Err(Error::unsupported(&path, format!("{new_size} bytes is not a whole number of 512-byte sectors")));
    }
    if image.parent().is_some_and(|p| new_size < p.len()) {
        return Err(Error::unsupported(&path, "a differencing disk cannot be smaller than its parent"));
    }
    let layout = DiskLayout::read(image)?;
    let old = image.len();
    // Shrinking: the backup table moves inside the disk first, so the container never cuts it.
    let gpt_first = new_size < old && move_backup_gpt(image, &layout, new_size)?;
    // A VHDX changes through its own log; a VHD through the journal.
    let fixed = image.kind() == ImageKind::Fixed;
    let bat_moved = match image {
        DiskImage::Vhdx(_) if fixed && new_size > old => {
            return Err(Error::unsupported(
                &path,
                "a fixed VHDX does not grow in place yet (its new blocks would have to be allocated): \
                 convert it to dynamic with vhdcompact, expand that, and convert it back",
            ));
        }
        DiskImage::Vhdx(v) => v.resize_in_place(new_size)?,
        _ => disk_write::journaled(image, |image| resize_container(image.file(), image, new_size))?,
    };
    *image = image.reopened(true)?;
    if matches!(image, DiskImage::Fixed(_)) && new_size > old {
        // A fixed disk stays fully allocated: the new space as zeros, where the file system can.
        image.file().allocate_zeroed(old, new_size - old)?;
    }
    let gpt_after = new_size > old && move_backup_gpt(image, &layout, new_size)?;
    Ok(ResizeReport {
        file: path.display().to_string(),
        format: image.kind(),
        container: image.format(),
        old_size: old,
        new_size: image.len(),
        bat_moved,
        gpt_backup_moved: gpt_first || gpt_after,
        partition_grown: None,
        file_bytes: image.file().file_len()?,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The file writes that give the container its new size; whether the BAT moved.
fn resize_container(file: &ImageFile, image: &DiskImage, new_size: u64) -> Result<bool> {
    let path = file.path();
    match image {
        DiskImage::Fixed(f) => {
            if new_size > MAX_FIXED_SIZE {
                return Err(Error::unsupported(path, format!("a fixed VHD holds at most {MAX_FIXED_SIZE} bytes")));
            }
            let mut footer = f.footer().clone();
            footer.current_size = new_size;
            // libvhdi and others read the disk's size from the original size.
            footer.original_size = new_size;
            footer.geometry = Geometry::for_size(new_size);
            let old_end = f.footer_offset();
            if new_size > old_end {
                // The old footer's sector becomes disk data, which reads as zeros.
                file.write_all_at(old_end, &[0u8; FOOTER_SIZE])?;
            }
            file.set_len(new_size + FOOTER_SIZE as u64)?;
            file.write_all_at(new_size, &footer.encode())?;
            Ok(false)
        }
        DiskImage::Sparse(s) => {
            if new_size > MAX_DISK_SIZE {
                return Err(Error::unsupported(path, format!("a dynamic VHD holds at most {MAX_DISK_SIZE} bytes")));
            }
            let bs = s.block_size();
            let entries = new_size.div_ceil(bs);
            if entries > MAX_ENTRIES as u64 {
                return Err(Error::unsupported(
                    path,
                    format!("{new_size} bytes needs {entries} blocks, more than a BAT holds"),
                ));
            }
            let entries = entries as u32;
            let mut header = s.header().clone();
            let old_entries = header.max_table_entries;
            let mut table: Vec<u8> = s.bat().encode();
            table.truncate(old_entries.min(entries) as usize * 4);
            // Entries past the new end are cleared, not left naming blocks.
            table.resize(table_bytes(entries.max(old_entries)) as usize, 0xFF);
            let mut data_end = s.data_end();
            let moved = table.len() as u64 > table_room(s);
            if moved {
                header.table_offset = data_end.div_ceil(FILE_SECTOR) * FILE_SECTOR;
                data_end = header.table_offset + table.len() as u64;
            }
            if entries != old_entries || moved {
                file.write_all_at(header.table_offset, &table)?;
            }
            header.max_table_entries = entries;
            file.write_all_at(s.header_offset(), &header.encode())?;
            let mut footer = s.footer().clone();
            footer.current_size = new_size;
            footer.original_size = new_size;
            footer.geometry = Geometry::for_size(new_size);
            let bytes = footer.encode();
            file.write_all_at(0, &bytes)?;
            file.write_all_at(data_end, &bytes)?;
            file.set_len(data_end + FOOTER_SIZE as u64)?;
            Ok(moved)
        }
        DiskImage::Vhdx(_) => Err(Error::internal("a VHDX is resized through its log")),
        DiskImage::Raw(_) => Err(Error::unsupported(path, "a raw disk has no container to resize (truncate the file)")),
    }
}

/// Bytes the BAT may fill where it is: up to the first block, locator data or the trailing
/// footer after it.
fn table_room(s: &crate::vhd::sparse::SparseVhd) -> u64 {
    let start = s.header().table_offset;
    let blocks = s.bat().allocated().map(|(_, sector)| sector.offset());
    let locators = s.header().parent_locators.iter().map(|(_, l)| l.data_offset);
    let header = std::iter::once(s.header_offset());
    blocks
        .chain(locators)
        .chain(header)
        .chain(std::iter::once(s.data_end()))
        .filter(|&o| o >= start)
        .min()
        .unwrap_or(start)
        - start
}

/// Rewrites a GPT's backup header and entries at the last sector of a disk of `new_size`
/// bytes (primary header updated, old backup header cleared); false without a valid GPT.
fn move_backup_gpt(image: &mut DiskImage, layout: &DiskLayout, new_size: u64) -> Result<bool> {
    let Some(writes) = backup_gpt_writes(layout, image.len(), new_size) else { return Ok(false) };
    // Writes past the current end wait for the grown container (the caller's order).
    if let Some(w) = writes.iter().find(|w| w.offset + w.bytes.len() as u64 > image.len()) {
        return Err(Error::corrupt(
            image.source(),
            "GPT",
            Space::Disk,
            w.offset,
            "the backup table lies past the disk's end",
        ));
    }
    disk_write::apply(image, &writes)?;
    Ok(true)
}

/// The writes that put a GPT's backup at the last sector of a disk of `new_size` bytes (now
/// `len` bytes), the old backup cleared; `None` without a valid GPT.
pub(crate) fn backup_gpt_writes(layout: &DiskLayout, len: u64, new_size: u64) -> Option<Vec<DiskWrite>> {
    let (Scheme::Gpt, Some(table)) = (&layout.scheme, &layout.gpt_table) else { return None };
    let ss = layout.sector_size;
    let last = Lba(new_size / ss.bytes() - 1);
    let mut writes: Vec<DiskWrite> = Vec::new();
    let old_backup = table.header.backup_lba;
    // The old backup entries and header are cleared: no tool may mistake them for current.
    let (old_start, new_start) = (old_backup - table.array_sectors(), last - table.array_sectors());
    let apart = old_backup.0 < new_start.0 || old_start.0 > last.0;
    if apart && old_backup.offset(ss) + ss.bytes() <= len {
        writes.push(DiskWrite {
            offset: old_start.offset(ss),
            bytes: vec![0; ss.bytes_of(table.array_sectors() + 1) as usize],
            what: "old backup GPT".into(),
        });
    }
    for (offset, bytes, what) in table.encode(last) {
        writes.push(DiskWrite { offset, bytes, what: what.into() });
    }
    Some(writes)
}
