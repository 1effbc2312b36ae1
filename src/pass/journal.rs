//! Atomic in-place writes to an image: the old contents of every range about to be written go
//! to `IMAGE.vhdreg-journal` (flushed, with a digest) before the image is touched; the journal
//! is removed once the writes are flushed. A run interrupted in between is rolled back by the
//! next one; a journal cut short while being written never touched the image and is dropped.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result, Space};
use crate::vhd::device::{BlockDevice, ImageFile, WritableDevice};
use crate::vhd::image::{DiskImage, OpenOptions};
use crate::vhd::output::sync_dir;

const MAGIC: &[u8; 8] = b"VHDKJRNL";

/// One write: new bytes for a disk offset.
#[derive(Clone, Debug)]
pub struct DiskWrite {
    pub offset: u64,
    pub bytes: Vec<u8>,
    pub what: String,
}

/// The journal beside `image`.
pub fn journal_path(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_os_string();
    name.push(".vhdreg-journal");
    PathBuf::from(name)
}

/// Decodes a complete journal into (offset, old bytes), or `None` if it was cut short.
fn decode(bytes: &[u8]) -> Option<Vec<(u64, Vec<u8>)>> {
    if bytes.len() < 8 + 4 + 32 || &bytes[..8] != MAGIC {
        return None;
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != digest {
        return None;
    }
    let count = u32::from_le_bytes(body[8..12].try_into().ok()?) as usize;
    let mut at = 12;
    let mut out = Vec::with_capacity(count.min(body.len() / 12));
    for _ in 0..count {
        let offset = u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?);
        let len = u32::from_le_bytes(body.get(at + 8..at + 12)?.try_into().ok()?) as usize;
        out.push((offset, body.get(at + 12..at + 12 + len)?.to_vec()));
        at += 12 + len;
    }
    Some(out)
}

/// Rolls back an interrupted run on `image`, if its journal is there. Returns whether one was.
pub fn recover(image: &Path, opts: &OpenOptions) -> Result<bool> {
    let path = journal_path(image);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::open(&path, "read", e)),
    };
    if let Some(entries) = decode(&bytes) {
        let mut img = DiskImage::open(image, &OpenOptions { writable: true, ..opts.clone() })?;
        for (offset, old) in &entries {
            img.write_at(*offset, old)?;
        }
        img.flush()?;
    }
    std::fs::remove_file(&path).map_err(|e| Error::open(&path, "remove", e))?;
    sync_dir(&path);
    Ok(true)
}

/// Fails when `image` has a journal of an interrupted run (for read-only tools).
pub fn refuse_if_pending(image: &Path) -> Result<()> {
    let path = journal_path(image);
    if path.exists() {
        return Err(Error::unsupported(
            image,
            format!("{} exists: a vhdreg run was interrupted; run vhdreg on the image to roll it back", path.display()),
        ));
    }
    Ok(())
}

/// Writes `writes` into `image` atomically (journal first). The image is opened for writing
/// here and closed before returning.
pub fn apply(image: &Path, opts: &OpenOptions, writes: &[DiskWrite]) -> Result<()> {
    if writes.is_empty() {
        return Ok(());
    }
    let mut img = DiskImage::open(image, &OpenOptions { writable: true, ..opts.clone() })?;
    let mut journal = Vec::new();
    journal.extend_from_slice(MAGIC);
    journal.extend_from_slice(&(writes.len() as u32).to_le_bytes());
    for w in writes {
        let mut old = vec![0u8; w.bytes.len()];
        img.read_at(w.offset, &mut old)?;
        journal.extend_from_slice(&w.offset.to_le_bytes());
        journal.extend_from_slice(&(old.len() as u32).to_le_bytes());
        journal.extend_from_slice(&old);
    }
    let digest = *blake3::hash(&journal).as_bytes();
    journal.extend_from_slice(&digest);
    let path = journal_path(image);
    let file = ImageFile::create_new(&path)?;
    file.write_all_at(0, &journal)?;
    file.sync()?;
    drop(file);
    sync_dir(&path);
    for w in writes {
        img.write_at(w.offset, &w.bytes).map_err(|e| match e {
            Error::Io { .. } => e,
            other => Error::corrupt(image, format!("write of {}", w.what), Space::Disk, w.offset, other.to_string()),
        })?;
    }
    img.flush()?;
    drop(img);
    std::fs::remove_file(&path).map_err(|e| Error::open(&path, "remove", e))?;
    sync_dir(&path);
    Ok(())
}
