//! `set-parent`: points a differencing VHD or VHDX at its parent's new place. The parent must be the
//! one the child was made from (its UUID is the one the child's header names), unless the
//! caller forces the link; the header, its locators and their data change in one journaled
//! step. Locator data only ever goes where locator data was: space after the last block would
//! be reused by the next block a tool that reads only the BAT (qemu) allocates.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::vhd::bat::FILE_SECTOR;
use crate::vhd::device::BlockDevice;
use crate::vhd::footer::{FOOTER_SIZE, uuid_text};
use crate::vhd::header::{DynamicHeader, ParentLocator};
use crate::vhd::image::{DiskImage, OpenOptions};
use crate::vhd::sparse::create::{ParentPaths, file_mtime_vhd, parent_locators, parent_paths};

/// What [`set_parent`] changed.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RelinkReport {
    pub file: String,
    /// The parent path the child named before (its first readable locator), if any.
    pub old_parent: Option<String>,
    pub parent: String,
    /// The relative and absolute paths written, as the locators hold them.
    pub relative_locator: String,
    pub absolute_locator: String,
    /// The parent's UUID did not match the one the child named: the link was forced and the
    /// child now names the new parent's UUID.
    pub forced_identity: bool,
}

/// Rewrites the parent link of `child` (a differencing VHD opened writable and detached) to
/// the image at `parent`; with `force`, also when that image is not the child's parent.
pub fn set_parent(child: &mut DiskImage, parent: &Path, force: bool, open: &OpenOptions) -> Result<RelinkReport> {
    plan_relink(child, parent, force, open)?.apply(child)
}

/// A parent link checked and ready to be written ([`plan_relink`]): nothing it needs can
/// fail any more but the write itself.
pub struct Relink {
    parent: PathBuf,
    change: LinkChange,
    report: RelinkReport,
}

enum LinkChange {
    /// A VHD's locator data and its header.
    Vhd {
        writes: Vec<(u64, Vec<u8>)>,
        header: Box<DynamicHeader>,
        header_offset: u64,
    },
    Vhdx(crate::vhdx::metadata::ParentLocator),
}

impl Relink {
    /// Writes the link into `child` (the image it was planned on, opened writable and
    /// detached), in one journaled step. A VHD names the parent's modification time as it is
    /// now.
    pub fn apply(self, child: &mut DiskImage) -> Result<RelinkReport> {
        match (self.change, child) {
            (LinkChange::Vhdx(locator), DiskImage::Vhdx(v)) => v.set_parent_locator(&locator)?,
            (LinkChange::Vhd { writes, mut header, header_offset }, child @ DiskImage::Sparse(_)) => {
                header.parent_timestamp = file_mtime_vhd(&self.parent);
                crate::pass::disk_write::journaled(child, |child| {
                    let file = child.file();
                    for (at, data) in &writes {
                        file.write_all_at(*at, data)?;
                    }
                    file.write_all_at(header_offset, &header.encode())
                })?;
            }
            (_, other) => {
                return Err(Error::internal(format!(
                    "a relink planned on another image than {}",
                    other.source().display()
                )));
            }
        }
        Ok(self.report)
    }
}

/// Checks that `child` (a differencing VHD or VHDX) can be linked to the image at `parent`
/// (the formats match, the parent is no larger, the paths fit; with `force`, also when that
/// image is not the child's parent) and prepares the writes.
pub fn plan_relink(child: &DiskImage, parent: &Path, force: bool, open: &OpenOptions) -> Result<Relink> {
    let path = child.source().to_path_buf();
    crate::vhd::check::refuse_hazards(child)?;
    let same = crate::host::FileId::of_path(parent).is_some_and(|p| Some(p) == crate::host::FileId::of_path(&path));
    if same {
        return Err(Error::unsupported(parent, "is the child itself: a disk cannot be its own parent"));
    }
    if let DiskImage::Vhdx(v) = child {
        return plan_vhdx(v, &path, parent, force, open);
    }
    let DiskImage::Sparse(sparse) = child else {
        return Err(Error::unsupported(&path, "not a differencing disk: it has no parent to relink"));
    };
    if !child.differencing() {
        return Err(Error::unsupported(&path, "not a differencing disk: it has no parent to relink"));
    }
    let parent_image = DiskImage::open(parent, &OpenOptions { detached: true, ..open.clone() })?;
    let Some(parent_footer) = parent_image.footer() else {
        return Err(Error::unsupported(parent, "a VHD's parent must be a VHD (the child names it by its UUID)"));
    };
    let mut header = sparse.header().clone();
    let forced_identity = parent_footer.uuid != header.parent_uuid;
    if forced_identity && !force {
        return Err(Error::Refused {
            file: path.clone(),
            problem: format!(
                "{} is not this disk's parent: its UUID is {}, the child was made from {}",
                parent.display(),
                uuid_text(&parent_footer.uuid),
                uuid_text(&header.parent_uuid)
            ),
            remedy: crate::error::Remedy::Force,
        });
    }
    if parent_image.len() > child.len() {
        return Err(Error::unsupported(parent, "the parent is larger than the child: the child would hide its end"));
    }
    let old_parent = sparse.locators().iter().find_map(|l| l.path.clone());
    let (name, locators) = parent_locators(&path, parent)?;
    // Each locator's data goes where an old locator's was.
    let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut taken: Vec<usize> = Vec::new();
    let old: Vec<(usize, ParentLocator)> = header.parent_locators.clone();
    header.parent_locators.clear();
    for (slot, l) in locators.iter().enumerate() {
        let (code, bytes) = (&l.code, &l.bytes);
        let space = (bytes.len() as u64).div_ceil(FILE_SECTOR).max(1) * FILE_SECTOR;
        // Space taken by an old locator that fits: another slot's, when its own is too small.
        let reuse = old
            .iter()
            .filter(|(s, l)| l.data_space as u64 >= space && l.data_offset >= FOOTER_SIZE as u64 && !taken.contains(s))
            .min_by_key(|(s, _)| (*s != slot, *s));
        let (offset, space) = match reuse {
            Some((s, l)) => {
                taken.push(*s);
                (l.data_offset, l.data_space as u64)
            }
            // Space after the last block would be taken by the next block qemu allocates (it
            // looks at the BAT only): a locator is never appended there.
            None => {
                return Err(Error::unsupported(
                    &path,
                    format!(
                        "the new path needs {space} bytes of locator space and the child has no locator that large; \
                         a shorter path to the parent (a symlink, or a nearer folder) fits"
                    ),
                ));
            }
        };
        let mut data = bytes.clone();
        data.resize(space as usize, 0);
        writes.push((offset, data));
        header.parent_locators.push((
            slot,
            ParentLocator {
                platform_code: *code,
                data_space: space as u32,
                data_length: bytes.len() as u32,
                data_offset: offset,
            },
        ));
    }
    header.parent_unicode_name = name;
    header.parent_uuid = parent_footer.uuid;
    let header_offset = sparse.header_offset();
    drop(parent_image);
    let text = |i: usize| {
        String::from_utf16_lossy(
            &locators[i].bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect::<Vec<_>>(),
        )
    };
    let report = RelinkReport {
        file: path.display().to_string(),
        old_parent,
        parent: parent.display().to_string(),
        relative_locator: text(0),
        absolute_locator: text(1),
        forced_identity,
    };
    let change = LinkChange::Vhd { writes, header: Box::new(header), header_offset };
    Ok(Relink { parent: parent.to_path_buf(), change, report })
}

/// The VHDX half of [`plan_relink`]: the parent named by its data write GUID, the locator's
/// relative and absolute paths to be rewritten through the child's log.
fn plan_vhdx(child: &crate::vhdx::Vhdx, path: &Path, parent: &Path, force: bool, open: &OpenOptions) -> Result<Relink> {
    let Some(old) = child.parameters().parent_locator.clone() else {
        return Err(Error::unsupported(path, "not a differencing disk: it has no parent to relink"));
    };
    let parent_image = DiskImage::open(parent, &OpenOptions { detached: true, ..open.clone() })?;
    let Some(p) = parent_image.as_vhdx() else {
        return Err(Error::unsupported(parent, "a VHDX's parent must be a VHDX (Hyper-V allows no VHD parent)"));
    };
    let linkage = format!("{{{}}}", p.header().data_write_guid.to_string().to_lowercase());
    let want: Vec<&str> = ["parent_linkage", "parent_linkage2"].iter().filter_map(|k| old.get(k)).collect();
    let forced_identity = !want.iter().any(|w| w.eq_ignore_ascii_case(&linkage));
    if forced_identity && !force {
        return Err(Error::Refused {
            file: path.to_path_buf(),
            problem: format!(
                "{} is not this disk's parent: its data write GUID is {linkage}, the child names {}",
                parent.display(),
                want.join(" or ")
            ),
            remedy: crate::error::Remedy::Force,
        });
    }
    if parent_image.len() > child.len() {
        return Err(Error::unsupported(parent, "the parent is larger than the child: the child would hide its end"));
    }
    drop(parent_image);
    let ParentPaths { relative, absolute_windows: absolute_w, .. } = parent_paths(path, parent)?;
    let old_parent = old.get("relative_path").or(old.get("absolute_win32_path")).map(str::to_string);
    let locator = crate::vhdx::metadata::ParentLocator {
        locator_type: old.locator_type,
        entries: vec![
            ("parent_linkage".into(), linkage),
            ("relative_path".into(), relative.clone()),
            ("absolute_win32_path".into(), absolute_w.clone()),
        ],
    };
    let report = RelinkReport {
        file: path.display().to_string(),
        old_parent,
        parent: parent.display().to_string(),
        relative_locator: relative,
        absolute_locator: absolute_w,
        forced_identity,
    };
    Ok(Relink { parent: parent.to_path_buf(), change: LinkChange::Vhdx(locator), report })
}
