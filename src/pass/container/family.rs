//! Which differencing images depend on an image: a change to a parent (a commit into it, a
//! resize) corrupts every child it has, so those changes look for children first.

use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::host::{FileId, LockWait, folder_of};
use crate::vhd::device::BlockDevice;
use crate::vhd::image::{DiskImage, OpenOptions};
use crate::vhd::parent::images_in;

/// Differencing images whose parent is `target`, found in `folders`.
#[derive(Debug, Default)]
pub struct Children {
    /// Images whose parent is `target`.
    pub found: Vec<PathBuf>,
    /// Images that could not be read to tell (another process holds them): they may be.
    pub unknown: Vec<PathBuf>,
}

impl Children {
    /// Whether any image is or may be a child.
    pub fn any(&self) -> bool {
        !self.found.is_empty() || !self.unknown.is_empty()
    }

    /// Adds the images of `other` not listed yet.
    pub fn add(&mut self, other: Children) {
        for p in other.found {
            if !self.found.contains(&p) {
                self.found.push(p);
            }
        }
        for p in other.unknown {
            if !self.unknown.contains(&p) {
                self.unknown.push(p);
            }
        }
    }

    /// The images, for a message: the children, then the ones that may be.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.found.iter().map(|p| p.display().to_string()).collect();
        parts.extend(self.unknown.iter().map(|p| format!("{} (in use: it may be one)", p.display())));
        parts.join(", ")
    }
}

/// The folders searched for the children of the images at `paths`: their own, then `extra`
/// (the user's), without duplicates (compared with links and `..` resolved).
pub fn folders_of(paths: &[&Path], extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for f in paths.iter().map(|p| folder_of(p)).chain(extra.iter().cloned()) {
        let f = std::fs::canonicalize(&f).unwrap_or(f);
        if !out.contains(&f) {
            out.push(f);
        }
    }
    out
}

/// The differencing images in `folders` (other than those of `exclude`) whose parent is
/// `target` (a VHD child naming its UUID, a VHDX child resolving to its file).
pub fn children_of(target: &DiskImage, folders: &[PathBuf], exclude: &[FileId]) -> Children {
    let mut out = Children::default();
    let Some(target_id) = FileId::of_path(target.source()) else { return out };
    let target_uuid = target.footer().map(|f| f.uuid);
    for folder in folders {
        for path in images_in(folder) {
            let id = FileId::of_path(&path);
            if id == Some(target_id)
                || id.is_some_and(|i| exclude.contains(&i))
                || out.found.contains(&path)
                || out.unknown.contains(&path)
            {
                continue;
            }
            let detached = OpenOptions { detached: true, wait: LockWait::Fail, ..OpenOptions::default() };
            match DiskImage::open(&path, &detached) {
                Err(Error::InUse { .. }) => out.unknown.push(path),
                Err(_) => {}
                Ok(image) if !image.differencing() => {}
                Ok(DiskImage::Sparse(s)) => {
                    if target_uuid == Some(s.header().parent_uuid) {
                        out.found.push(path);
                    }
                }
                Ok(_) => {
                    // A VHDX names its parent by GUIDs the parent's headers hold: resolve it.
                    let opts = OpenOptions { allow_missing_parent: true, ..OpenOptions::default() };
                    match DiskImage::open(&path, &opts) {
                        Ok(image) => {
                            let linked = image.parent_resolution().and_then(|r| FileId::of_path(Path::new(&r.path)));
                            if linked == Some(target_id) {
                                out.found.push(path);
                            }
                        }
                        Err(Error::InUse { .. }) => out.unknown.push(path),
                        Err(_) => {}
                    }
                }
            }
        }
    }
    out.found.sort();
    out.unknown.sort();
    out
}
