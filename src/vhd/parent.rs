//! Finding a differencing disk's parent from its locators.
//!
//! Absolute paths break when image files move between machines, so relative locators are tried
//! first, then absolute ones, then the parent's file name in the child's folder. A candidate is
//! accepted only when its footer carries the UUID the child's header names.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, ParentSearch, Result};
use crate::host::{FileId, LockWait};
use crate::vhd::device::ImageFile;
use crate::vhd::footer::{FOOTER_COOKIE, FOOTER_SIZE, Footer, uuid_text};
use crate::vhd::header::{DynamicHeader, LocatorEncoding, MAX_LOCATOR_LEN, ParentLocator};

/// A path where the parent may be, and what named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The locator or field the path came from (`W2ru`, `W2ku`, `parent name`...).
    pub via: String,
    /// The path on this machine.
    pub path: PathBuf,
}

/// How a differencing disk's parent was found.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ParentResolution {
    /// The parent file opened.
    pub path: String,
    /// What named it: a locator's platform code, `"parent name"` or `"given parent"`.
    pub resolved_by: String,
}

/// A locator with the path its data decodes to.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DecodedLocator {
    /// Slot 0..8 in the header.
    pub slot: usize,
    pub platform_code: String,
    pub data_space: u32,
    pub data_length: u32,
    pub data_offset: u64,
    /// The decoded path, or null for a Mac alias record.
    pub path: Option<String>,
    /// How the path was encoded.
    #[serde(skip)]
    pub encoding: LocatorEncoding,
}

/// Reads and decodes every locator's path data from `file`.
pub fn decode_locators(file: &ImageFile, header: &DynamicHeader) -> Result<Vec<DecodedLocator>> {
    header
        .parent_locators
        .iter()
        .map(|(slot, loc)| {
            Ok(DecodedLocator {
                slot: *slot,
                platform_code: crate::vhd::footer::fourcc_text(&loc.platform_code),
                data_space: loc.data_space,
                data_length: loc.data_length,
                data_offset: loc.data_offset,
                path: read_locator(file, *slot, loc)?,
                encoding: loc.encoding(),
            })
        })
        .collect()
}

fn read_locator(file: &ImageFile, slot: usize, loc: &ParentLocator) -> Result<Option<String>> {
    if loc.data_length > MAX_LOCATOR_LEN {
        return Err(Error::corrupt(
            file.path(),
            format!("parent locator {slot}"),
            crate::error::Space::File,
            loc.data_offset,
            format!("data length {} exceeds {MAX_LOCATOR_LEN} bytes", loc.data_length),
        ));
    }
    let mut data = vec![0u8; loc.data_length as usize];
    file.read_exact_at(loc.data_offset, &mut data, "parent locator data")?;
    Ok(loc.decode_path(&data))
}

/// Turns a path as Windows or a Mac wrote it into candidate local paths, relative to the
/// child's folder `dir`.
pub(crate) fn local_paths(raw: &str, encoding: LocatorEncoding, dir: &Path) -> Vec<PathBuf> {
    let unified = raw.replace('\\', "/");
    let base_name = unified.rsplit('/').next().filter(|n| !n.is_empty()).map(|n| dir.join(n));
    let has_drive = unified.len() >= 2 && unified.as_bytes()[1] == b':';
    let mut out = Vec::new();
    match encoding {
        LocatorEncoding::Utf16Relative if !has_drive && !unified.starts_with('/') => {
            out.push(dir.join(unified.trim_start_matches("./")));
        }
        LocatorEncoding::Utf16Absolute | LocatorEncoding::FileUrl
            if unified.starts_with('/') && !unified.starts_with("//") =>
        {
            out.push(PathBuf::from(&unified));
        }
        _ => {}
    }
    out.extend(base_name);
    out
}

/// Every place the parent of the child at `child` may be, best first, without duplicates.
pub fn candidates(child: &Path, header: &DynamicHeader, locators: &[DecodedLocator]) -> Vec<Candidate> {
    let dir = child.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    let mut ordered: Vec<&DecodedLocator> = locators.iter().collect();
    ordered.sort_by_key(|l| l.encoding);
    let mut out: Vec<Candidate> = Vec::new();
    let mut push = |via: &str, path: PathBuf| {
        if !out.iter().any(|c| c.path == path) {
            out.push(Candidate { via: via.to_string(), path });
        }
    };
    for loc in ordered {
        if let Some(p) = &loc.path {
            for path in local_paths(p, loc.encoding, &dir) {
                push(&loc.platform_code, path);
            }
        }
    }
    if !header.parent_unicode_name.is_empty() {
        for path in local_paths(&header.parent_unicode_name, LocatorEncoding::Utf16Relative, &dir) {
            push("parent name", path);
        }
    }
    out
}

/// Reads the UUID from the footer of the VHD at `path`, if it is one. A file of the chain
/// being opened (`chain`) is not opened again: it would be its own parent, and a second
/// handle of a file this process holds locked would wait for itself.
fn footer_uuid(path: &Path, wait: LockWait, chain: &[FileId]) -> std::result::Result<[u8; 16], String> {
    if FileId::of_path(path).is_some_and(|id| chain.contains(&id)) {
        return Err("is a file of this very chain (the parent chain would loop)".into());
    }
    let file = ImageFile::open(path, false, wait).map_err(|e| match e {
        Error::Open { source, .. } => source.to_string(),
        other => other.to_string(),
    })?;
    let len = file.file_len().map_err(|e| e.to_string())?;
    for footer_len in [FOOTER_SIZE as u64, FOOTER_SIZE as u64 - 1] {
        if len < footer_len {
            continue;
        }
        let mut b = vec![0u8; footer_len as usize];
        file.read_exact_at(len - footer_len, &mut b, "footer").map_err(|e| e.to_string())?;
        if &b[..8] == FOOTER_COOKIE {
            return Footer::parse(&b, path, len - footer_len).map(|f| f.uuid).map_err(|e| e.to_string());
        }
    }
    Err("not a VHD (no footer)".into())
}

/// Picks the first candidate whose footer UUID is `want`, or explains every failure.
pub fn resolve(
    child: &Path,
    want: &[u8; 16],
    candidates: &[Candidate],
    wait: LockWait,
    chain: &[FileId],
) -> Result<(PathBuf, String)> {
    let identity = |p: &Path, wait, chain: &[FileId]| footer_uuid(p, wait, chain).map(|u| uuid_text(&u));
    resolve_by(child, &[uuid_text(want)], candidates, wait, chain, &identity)
}

/// How a parent candidate is identified: its identity as text, or why it has none.
pub type ParentIdentity<'a> = &'a dyn Fn(&Path, LockWait, &[FileId]) -> std::result::Result<String, String>;

/// Picks the first candidate whose identity (as `identity` reads it) is one of `want`
/// (compared ignoring case), or explains every failure.
pub fn resolve_by(
    child: &Path,
    want: &[String],
    candidates: &[Candidate],
    wait: LockWait,
    chain: &[FileId],
    identity: ParentIdentity<'_>,
) -> Result<(PathBuf, String)> {
    let mut tried = Vec::new();
    for c in candidates {
        match identity(&c.path, wait, chain) {
            Ok(id) if want.iter().any(|w| w.eq_ignore_ascii_case(&id)) => return Ok((c.path.clone(), c.via.clone())),
            Ok(id) => tried.push(format!(
                "{} (from {}): identity {id} is not the expected {}",
                c.path.display(),
                c.via,
                want.join(" or ")
            )),
            Err(why) => tried.push(format!("{} (from {}): {why}", c.path.display(), c.via)),
        }
    }
    if tried.is_empty() {
        tried.push("no locator or parent name gives a path".into());
    }
    let same_identity = same_identity_nearby(child, want, candidates, chain, identity);
    Err(Error::ParentNotFound { file: child.to_path_buf(), search: ParentSearch { tried, same_identity } })
}

/// Most entries looked at per folder when searching it for images (a folder of other files
/// may be large: a VM store, a profile share).
const MAX_SCANNED: usize = 1 << 16;
/// Most images taken per folder (each is opened to read its identity).
const MAX_IMAGES: usize = 4096;

/// The files of `folder` named like VHD and VHDX images (`.vhd`, `.vhdx`, `.avhd`, `.avhdx`),
/// at most [`MAX_IMAGES`] among its first [`MAX_SCANNED`] entries: where parents and children
/// of an image are looked for.
pub fn images_in(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else { return Vec::new() };
    entries
        .flatten()
        .take(MAX_SCANNED)
        .map(|e| e.path())
        .filter(|p| {
            let ext = p.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
            matches!(ext.as_str(), "vhd" | "vhdx" | "avhd" | "avhdx")
        })
        .take(MAX_IMAGES)
        .collect()
}

/// Images in the child's folder and in the folders its locators name (those that exist)
/// whose identity is one of `want`: where a moved or renamed parent may be now.
fn same_identity_nearby(
    child: &Path,
    want: &[String],
    candidates: &[Candidate],
    chain: &[FileId],
    identity: ParentIdentity<'_>,
) -> Vec<PathBuf> {
    let mut folders = vec![crate::host::folder_of(child)];
    for c in candidates {
        let f = crate::host::folder_of(&c.path);
        if f.is_dir() && !folders.contains(&f) {
            folders.push(f);
        }
    }
    let own = FileId::of_path(child);
    let mut found = Vec::new();
    for folder in folders {
        for path in images_in(&folder) {
            if FileId::of_path(&path) == own {
                continue;
            }
            if identity(&path, LockWait::Fail, chain).is_ok_and(|id| want.iter().any(|w| w.eq_ignore_ascii_case(&id)))
                && !found.contains(&path)
            {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Checks that a parent the caller named is the one the child expects.
pub fn check_override(child: &Path, want: &[u8; 16], path: &Path, wait: LockWait, chain: &[FileId]) -> Result<()> {
    resolve(child, want, &[Candidate { via: "given parent".into(), path: path.to_path_buf() }], wait, chain).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_paths_map_to_local_candidates() {
        let dir = Path::new("/imgs");
        assert_eq!(
            local_paths(".\\fat-parent.vhd", LocatorEncoding::Utf16Relative, dir),
            vec![PathBuf::from("/imgs/fat-parent.vhd"), PathBuf::from("/imgs/fat-parent.vhd")]
        );
        assert_eq!(
            local_paths("..\\base\\p.vhd", LocatorEncoding::Utf16Relative, dir),
            vec![PathBuf::from("/imgs/../base/p.vhd"), PathBuf::from("/imgs/p.vhd")]
        );
        assert_eq!(
            local_paths("C:\\Projects\\p.vhd", LocatorEncoding::Utf16Absolute, dir),
            vec![PathBuf::from("/imgs/p.vhd")]
        );
        assert_eq!(
            local_paths("/srv/p.vhd", LocatorEncoding::Utf16Absolute, dir),
            vec![PathBuf::from("/srv/p.vhd"), PathBuf::from("/imgs/p.vhd")]
        );
    }
}
