//! Fixed images: the disk's bytes, then a footer.

use std::path::Path;

use crate::error::{Error, Result, Space};
use crate::vhd::device::{BlockDevice, ImageFile, RawImage, WritableDevice};
use crate::vhd::finding::Finding;
use crate::vhd::footer::{DiskType, Footer};
use crate::vhd::identity::Identity;

/// A fixed VHD.
#[derive(Debug)]
pub struct FixedVhd {
    data: RawImage,
    footer: Footer,
    footer_offset: u64,
    findings: Vec<Finding>,
}

/// Whether a new fixed image's data area is written out or left as a hole for the caller to
/// fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// Write zeros over the whole data area now (a fully allocated file).
    Zeros,
    /// Leave the data area unwritten; the caller writes every byte of it.
    Caller,
}

impl FixedVhd {
    /// Opens the fixed image in `file` whose footer (decoded) starts at `footer_offset`.
    pub(crate) fn open(file: ImageFile, footer: Footer, footer_offset: u64, strict: bool) -> Result<Self> {
        let path = file.path().to_path_buf();
        let mut findings = Vec::new();
        if !footer.checksum_valid() {
            let f = Finding::new(
                &path,
                "VHD footer",
                Space::File,
                footer_offset,
                format!("checksum {:#010x} stored, {:#010x} computed", footer.checksum, footer.computed_checksum()),
            );
            if strict {
                return Err(Error::corrupt(&path, f.structure, Space::File, f.offset, f.problem));
            }
            findings.push(f);
        }
        if footer.current_size > footer_offset {
            return Err(Error::corrupt(
                &path,
                "VHD footer current size",
                Space::File,
                footer_offset + 48,
                format!("{} bytes, but the file holds only {footer_offset} bytes of data", footer.current_size),
            ));
        }
        if footer.current_size < footer_offset {
            findings.push(Finding::new(
                &path,
                "VHD footer current size",
                Space::File,
                footer_offset + 48,
                format!(
                    "{} bytes, but the file holds {footer_offset} bytes of data; the rest is ignored",
                    footer.current_size
                ),
            ));
        }
        let len = footer.current_size;
        Ok(FixedVhd { data: RawImage::new(file, len), footer, footer_offset, findings })
    }

    /// Creates a fixed image of `size` bytes at `path`, which must not exist.
    pub fn create(path: &Path, size: u64, fill: Fill) -> Result<Self> {
        check_fixed_size(path, size)?;
        FixedVhd::create_in(ImageFile::create_new(path)?, size, fill, &Identity::Fresh)
    }

    #[doc(hidden)]
    /// Writes a new fixed image of `size` bytes into the empty, writable `file`, its UUID and
    /// time from `identity`.
    pub fn create_in(file: ImageFile, size: u64, fill: Fill, identity: &Identity) -> Result<Self> {
        check_fixed_size(file.path(), size)?;
        if fill == Fill::Zeros {
            const CHUNK: u64 = 4 << 20;
            let zeros = vec![0u8; CHUNK as usize];
            let mut at = 0;
            while at < size {
                let n = CHUNK.min(size - at) as usize;
                file.write_all_at(at, &zeros[..n])?;
                at += n as u64;
            }
        }
        let footer = Footer::new(DiskType::Fixed, size, identity);
        file.write_all_at(size, &footer.encode())?;
        Ok(FixedVhd { data: RawImage::new(file, size), footer, footer_offset: size, findings: Vec::new() })
    }

    #[doc(hidden)]
    /// The footer.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// File offset of the footer.
    pub fn footer_offset(&self) -> u64 {
        self.footer_offset
    }

    /// Problems noticed while opening.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    #[doc(hidden)]
    /// The image file.
    pub fn file(&self) -> &ImageFile {
        self.data.file()
    }

    #[doc(hidden)]
    /// The image file, to stage writes.
    pub fn file_mut(&mut self) -> &mut ImageFile {
        self.data.file_mut()
    }
}

/// Largest fixed image: Azure's limit for a page blob VHD, 32 TiB with the footer. A fixed
/// image has no BAT, so the dynamic format's 2040 GiB limit does not apply.
pub const MAX_FIXED_SIZE: u64 = (32 << 40) - 512;

pub(crate) fn check_fixed_size(path: &Path, size: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(512) || size > MAX_FIXED_SIZE {
        return Err(Error::unsupported(
            path,
            format!("disk size {size} must be a non-zero multiple of 512 up to {MAX_FIXED_SIZE} bytes"),
        ));
    }
    Ok(())
}

impl BlockDevice for FixedVhd {
    fn len(&self) -> u64 {
        self.data.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.data.read_at(offset, buf)
    }
    fn source(&self) -> &Path {
        self.data.source()
    }
    fn data_ranges(&self, start: u64, end: u64) -> Result<Vec<(u64, u64)>> {
        self.data.data_ranges(start, end)
    }
}

impl WritableDevice for FixedVhd {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<()> {
        if !self.data.file().writable() {
            return Err(Error::unsupported(self.source(), "image opened read-only"));
        }
        self.data.write_at(offset, buf)
    }
    fn flush(&mut self) -> Result<()> {
        self.data.flush()
    }
}
