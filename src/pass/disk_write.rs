//! Patches to a virtual disk, made atomically: the container's own writer runs over an
//! in-memory overlay of the image file (so block allocation, bitmaps and footers come out as
//! they would), then the journal of [`crate::host::journal`] makes the resulting file writes in
//! one step that a crash or power cut at any point rolls back.

use crate::error::{Error, Result, Space};
use crate::host::journal;
use crate::vhd::device::{BlockDevice, WritableDevice};
use crate::vhd::image::DiskImage;

/// One write: new bytes for a disk offset.
#[derive(Clone, Debug)]
pub struct DiskWrite {
    pub offset: u64,
    pub bytes: Vec<u8>,
    pub what: String,
}

/// Makes `writes` in `image` (opened writable, so exclusively locked) atomically.
pub fn apply(image: &mut DiskImage, writes: &[DiskWrite]) -> Result<()> {
    if writes.is_empty() {
        return Ok(());
    }
    let path = image.source().to_path_buf();
    journaled(image, |image| {
        writes.iter().try_for_each(|w| {
            image.write_at(w.offset, &w.bytes).map_err(|e| match e {
                Error::Io { .. } => e,
                other => {
                    Error::corrupt(&path, format!("write of {}", w.what), Space::Disk, w.offset, other.to_string())
                }
            })
        })?;
        // A VHDX closes its write session (its log cleared) before the writes are collected.
        image.flush()
    })
}

/// Runs `f` over `image` (opened writable) with every file write it makes collected in
/// memory, then makes them in one journaled step: writes through the container's writer, or
/// to its own structures (footers, headers, tables) through its file.
pub fn journaled<T>(image: &mut DiskImage, f: impl FnOnce(&mut DiskImage) -> Result<T>) -> Result<T> {
    let path = image.source().to_path_buf();
    image.file_mut().begin_staging()?;
    let out = f(image);
    let collected = image.file_mut().take_staged();
    let out = out?;
    journal::commit(&path, image.file().raw(), &collected)?;
    Ok(out)
}
