//! Creating dynamic and differencing images: from scratch (metadata written at once), and
//! filled by appending blocks to a fresh file (the compaction writer's way).

use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;

use super::{MAX_BLOCK_SIZE, MAX_DISK_SIZE, SparseVhd};
use crate::error::{Error, Result};
use crate::host::FileId;
use crate::vhd::bat::{BlockAllocationTable, FileSector, MAX_ENTRIES, table_bytes};
use crate::vhd::bitmap::SectorBitmap;
use crate::vhd::device::{BlockDevice, ImageFile};
use crate::vhd::footer::{DiskType, FOOTER_SIZE, Footer, VHD_EPOCH_UNIX};
use crate::vhd::header::{DynamicHeader, HEADER_SIZE, ParentLocator};
use crate::vhd::identity::Identity;
use crate::vhd::image::{DiskImage, OpenOptions};

/// Parent of a new differencing image.
pub struct ParentLink<'a> {
    /// The parent, opened.
    pub image: &'a DiskImage,
    /// The parent's file.
    pub path: &'a Path,
}

impl SparseVhd {
    /// Creates a new dynamic image at `path` (which must not exist) of `size` bytes, or a
    /// differencing child of `parent` (whose size it takes).
    pub fn create(path: &Path, size: u64, block_size: u32, parent: Option<ParentLink<'_>>) -> Result<Self> {
        let size = parent.as_ref().map_or(size, |p| p.image.len());
        validate_new(path, size, block_size)?;
        SparseVhd::create_in(ImageFile::create_new(path)?, size, block_size, parent, &Identity::Fresh)
    }

    #[doc(hidden)]
    /// Writes a new dynamic or differencing image into the empty, writable `file`, its UUID
    /// and time from `identity`.
    pub fn create_in(
        file: ImageFile,
        size: u64,
        block_size: u32,
        parent: Option<ParentLink<'_>>,
        identity: &Identity,
    ) -> Result<Self> {
        let path = file.path().to_path_buf();
        let path = path.as_path();
        let size = parent.as_ref().map_or(size, |p| p.image.len());
        validate_new(path, size, block_size)?;
        let entries = size.div_ceil(block_size as u64) as u32;
        let table_offset = (FOOTER_SIZE + HEADER_SIZE) as u64;
        let mut header = DynamicHeader::new(table_offset, entries, block_size);
        let disk_type = if parent.is_some() { DiskType::Differencing } else { DiskType::Dynamic };
        let footer = Footer::new(disk_type, size, identity);
        let mut data_end = table_offset + table_bytes(entries);
        let mut locator_data = Vec::new();
        if let Some(link) = &parent {
            let pf = link.image.footer().ok_or_else(|| {
                Error::unsupported(link.path, "a differencing disk's parent must be a VHD (it needs a UUID)")
            })?;
            header.parent_uuid = pf.uuid;
            let (name, locators) = parent_locators(path, link.path)?;
            header.parent_timestamp = file_mtime_vhd(link.path);
            header.parent_unicode_name = name;
            for (slot, LocatorData { code, bytes }) in locators.into_iter().enumerate() {
                // Room for a longer path later (set-parent rewrites it in place).
                let space = (bytes.len() as u64).div_ceil(512).max(LOCATOR_RESERVE / 512) * 512;
                header.parent_locators.push((
                    slot,
                    ParentLocator {
                        platform_code: code,
                        data_space: space as u32,
                        data_length: bytes.len() as u32,
                        data_offset: data_end,
                    },
                ));
                locator_data.push((data_end, bytes));
                data_end += space;
            }
        }
        let footer_bytes = footer.encode();
        let mut meta = vec![0u8; data_end as usize];
        meta[..FOOTER_SIZE].copy_from_slice(&footer_bytes);
        meta[FOOTER_SIZE..FOOTER_SIZE + HEADER_SIZE].copy_from_slice(&header.encode());
        let bat = BlockAllocationTable::new(entries);
        meta[table_offset as usize..][..table_bytes(entries) as usize].copy_from_slice(&bat.encode());
        for (at, bytes) in &locator_data {
            meta[*at as usize..][..bytes.len()].copy_from_slice(bytes);
        }
        file.write_all_at(0, &meta)?;
        file.write_all_at(data_end, &footer_bytes)?;
        let footer = Footer::parse(&footer_bytes, path, data_end)?;
        let header = DynamicHeader::parse(&header.encode(), path, FOOTER_SIZE as u64)?;
        let mut vhd = SparseVhd {
            file,
            footer,
            header,
            header_offset: FOOTER_SIZE as u64,
            bat,
            presence: RwLock::new(HashMap::new()),
            parent: None,
            missing_parent: None,
            parent_resolution: None,
            locators: Vec::new(),
            findings: Vec::new(),
            data_end,
            footers_current: true,
            appending: None,
            reserved: false,
        };
        if let Some(link) = parent {
            let opts = OpenOptions { parent: Some(link.path.to_path_buf()), ..OpenOptions::default() };
            let own = FileId::of(&vhd.file.raw().metadata().map_err(|e| Error::open(path, "stat", e))?);
            vhd.attach_parent(&opts, &mut vec![own])?;
        }
        Ok(vhd)
    }

    #[doc(hidden)]
    /// Starts block `block` of an image being written from scratch into a temporary file: its
    /// sector bitmap goes at the end of the file, its data follows through
    /// [`Self::append_data`], and [`Self::append_end`] keeps or discards it. The BAT and the
    /// trailing footer are written only by [`Self::finish_appends`]; until then the file is not
    /// a valid image.
    pub fn append_begin(&mut self, block: u64, bitmap: &SectorBitmap) -> Result<()> {
        let start = self.next_block_sector()?;
        let expected = if self.reserved { Some(start) } else { None };
        if self.bat.sector(block) != expected || self.appending.is_some() || bitmap.sectors() != self.block_sectors() {
            return Err(Error::internal(format!("block {block}: not a fresh block of this image")));
        }
        self.file.write_all_at(start.offset(), &bitmap.encode(self.header.bitmap_size() as usize))?;
        self.appending = Some((block, start));
        Ok(())
    }

    #[doc(hidden)]
    /// Names in the BAT, before any block is appended, where each of `blocks` (in the order
    /// they will be appended) goes, writes the BAT, and so makes the file's metadata final: a
    /// stream can start to flow. Each block must then be appended and kept.
    pub fn reserve_appends(&mut self, blocks: &[u64]) -> Result<()> {
        let span = self.header.bitmap_size() + self.block_size();
        let mut at = self.data_end;
        for &b in blocks {
            let sector = FileSector::at_or_after(at).ok_or_else(|| {
                Error::unsupported(self.file.path(), "image file too large for 32-bit BAT sector numbers")
            })?;
            self.bat.set(b, Some(sector));
            at = sector.offset() + span;
        }
        self.file.write_all_at(self.header.table_offset, &self.bat.encode())?;
        self.reserved = true;
        self.file.start_stream(self.data_end)
    }

    #[doc(hidden)]
    /// Writes `data` at `within` bytes into the block being appended.
    pub fn append_data(&mut self, within: u64, data: &[u8]) -> Result<()> {
        let Some((block, start)) = self.appending else {
            return Err(Error::internal("block data written with no block begun"));
        };
        if within + data.len() as u64 > self.block_size() {
            return Err(Error::internal(format!("block {block}: data past the block's end")));
        }
        self.file.write_all_at(start.offset() + self.header.bitmap_size() + within, data)
    }

    #[doc(hidden)]
    /// Ends the block being appended: with `keep`, the BAT will point at it; otherwise its
    /// space is taken by the next block (and cut off by [`Self::finish_appends`]).
    pub fn append_end(&mut self, keep: bool) -> Result<()> {
        let (block, start) = self.appending.take().ok_or_else(|| Error::internal("block ended with no block begun"))?;
        if self.reserved && !keep {
            return Err(Error::internal(format!("block {block}: reserved, so it must be kept")));
        }
        if keep {
            self.bat.set(block, Some(start));
            self.data_end = start.offset() + self.header.bitmap_size() + self.block_size();
        }
        Ok(())
    }

    #[doc(hidden)]
    /// Writes the BAT and the trailing footer after the appends, and cuts the file there.
    pub fn finish_appends(&mut self) -> Result<()> {
        self.file.write_all_at(self.header.table_offset, &self.bat.encode())?;
        self.file.write_all_at(self.data_end, &self.footer.encode())?;
        self.file.set_len(self.data_end + FOOTER_SIZE as u64)?;
        self.presence_map().clear();
        Ok(())
    }
}

/// Rejects sizes a new image cannot have.
pub(crate) fn validate_new(path: &Path, size: u64, block_size: u32) -> Result<()> {
    if size == 0 || !size.is_multiple_of(512) || size > MAX_DISK_SIZE {
        return Err(Error::unsupported(
            path,
            format!("disk size {size} must be a non-zero multiple of 512 up to {MAX_DISK_SIZE} bytes"),
        ));
    }
    if !block_size.is_power_of_two() || !(512..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(Error::unsupported(
            path,
            format!("block size {block_size} must be a power of two between 512 and {MAX_BLOCK_SIZE}"),
        ));
    }
    if size.div_ceil(block_size as u64) > MAX_ENTRIES as u64 {
        return Err(Error::unsupported(
            path,
            format!("{size} bytes in {block_size}-byte blocks needs more than {MAX_ENTRIES} BAT entries"),
        ));
    }
    Ok(())
}

/// A file's modification time in VHD seconds (0 when unknown).
/// Bytes reserved for each parent locator's path in a new child: 2048 UTF-16 units, so the
/// link can be repaired in place for a parent moved to a longer path.
const LOCATOR_RESERVE: u64 = 4096;

/// One parent locator's platform code and data.
pub(crate) struct LocatorData {
    pub code: [u8; 4],
    /// The path in UTF-16LE.
    pub bytes: Vec<u8>,
}

/// The paths by which a child names its parent, VHD or VHDX alike.
pub(crate) struct ParentPaths {
    /// The parent's absolute path, as the host writes it.
    pub absolute: std::path::PathBuf,
    /// From the child's folder, Windows style (`.\p.vhd`).
    pub relative: String,
    /// The absolute path, Windows style.
    pub absolute_windows: String,
}

/// How a child at `child` names its parent at `parent`.
pub(crate) fn parent_paths(child: &Path, parent: &Path) -> Result<ParentPaths> {
    let absolute = std::path::absolute(parent).map_err(|e| Error::open(parent, "resolve", e))?;
    let relative = relative_windows_path(child, &absolute);
    let absolute_windows = absolute.display().to_string().replace('/', "\\");
    Ok(ParentPaths { absolute, relative, absolute_windows })
}

/// How a VHD child at `child` names its parent at `parent`: the parent's absolute path (the
/// header's parent name) and the locators Windows writes, a relative `W2ru` and an absolute
/// `W2ku` path.
pub(crate) fn parent_locators(child: &Path, parent: &Path) -> Result<(String, Vec<LocatorData>)> {
    let paths = parent_paths(child, parent)?;
    let utf16 = |t: &str| -> Vec<u8> { t.encode_utf16().flat_map(u16::to_le_bytes).collect() };
    let locators = vec![
        LocatorData { code: *b"W2ru", bytes: utf16(&paths.relative) },
        LocatorData { code: *b"W2ku", bytes: utf16(&paths.absolute_windows) },
    ];
    Ok((paths.absolute.display().to_string(), locators))
}

/// A file's modification time in seconds since the VHD epoch (2000-01-01).
pub(crate) fn file_mtime_vhd(path: &Path) -> u32 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs().saturating_sub(VHD_EPOCH_UNIX).min(u32::MAX as u64) as u32)
}

/// The path of `target` relative to the folder of `child`, Windows style (`.\p.vhd`,
/// `..\base\p.vhd`), as the W2ru locator stores it.
fn relative_windows_path(child: &Path, target: &Path) -> String {
    let child_dir = std::path::absolute(child).ok().and_then(|c| c.parent().map(Path::to_path_buf)).unwrap_or_default();
    let from: Vec<_> = child_dir.components().collect();
    let to: Vec<_> = target.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec![".".into()];
    parts.extend(std::iter::repeat_n("..".to_string(), from.len() - common));
    parts.extend(to[common..].iter().map(|c| c.as_os_str().to_string_lossy().into_owned()));
    if parts.len() > 1 && parts[1] == ".." {
        parts.remove(0);
    }
    parts.join("\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_windows_style() {
        assert_eq!(relative_windows_path(Path::new("/a/b/child.vhd"), Path::new("/a/b/p.vhd")), ".\\p.vhd");
        assert_eq!(relative_windows_path(Path::new("/a/b/child.vhd"), Path::new("/a/c/p.vhd")), "..\\c\\p.vhd");
    }
}
