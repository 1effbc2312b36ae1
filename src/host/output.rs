//! Files vhdkit creates: one rule for all of them.
//!
//! A new file is written under a temporary name in the target's folder, flushed, then renamed
//! into place, so it appears whole or not at all. The target may never be one of the command's
//! inputs (compared by device and inode, so links and symlinks do not fool it), a device, a
//! FIFO, a folder or a symbolic link (whoever planted it would choose the file replaced); an
//! existing file is replaced only when the caller says so. A new file gets
//! no more permission than its inputs have, and the umask applies on top; a file rewritten by
//! rename keeps its mode and owner.
//!
//! The temporary file holds an exclusive lock while it is written. One left behind by a run
//! that was killed is recognised by its name ([`STALE_TEMP_MARKER`]) and by the lock nobody
//! holds any more, and the next run that writes into the folder removes it.

use std::fs::{File, Metadata};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, Space};
use crate::host::{FileId, LockWait, folder_of, lock, platform};

/// What every temporary output name contains, between the target's name and `.partial`.
pub const STALE_TEMP_MARKER: &str = ".vhdkit-";
const TEMP_SUFFIX: &str = ".partial";
/// The file inside a temporary tree that marks it as vhdkit's while it is written.
const TREE_MARKER: &str = ".vhdkit-tree";

/// The inputs a new file must not be, and whether it may replace an existing file.
#[derive(Clone, Debug)]
pub struct OutputPolicy {
    inputs: Vec<(PathBuf, FileId)>,
    replace_existing: bool,
    mode_limit: u32,
}

/// How a `NewFile` relates to what is at its target now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    /// The target must not exist when the file is committed.
    Never,
    /// An existing regular file at the target is replaced (unless another process holds it).
    Existing,
    /// The target is the file the caller holds locked and rewrites.
    Own,
}

impl OutputPolicy {
    /// A policy with no inputs yet; `replace` says whether an existing file may be replaced.
    pub fn new(replace: Replace) -> Self {
        OutputPolicy { inputs: Vec::new(), replace_existing: replace == Replace::Existing, mode_limit: 0o7777 }
    }

    /// Records an input the output must not be; the output gets no more permission than it.
    pub fn input(&mut self, path: &Path, meta: &Metadata) {
        self.inputs.push((path.to_path_buf(), FileId::of(meta)));
        self.mode_limit &= platform::mode(meta);
    }

    /// Records an input by path (ignored when it does not exist).
    pub fn input_path(&mut self, path: &Path) {
        if let Ok(meta) = std::fs::metadata(path) {
            self.input(path, &meta);
        }
    }

    /// Checks `target` against the rule, before any work is done.
    pub fn check(&self, target: &Path) -> Result<()> {
        let refuse = |problem: String| Err(Error::Conflict { file: target.to_path_buf(), problem });
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.ends_with(".vhdkit-journal") || name.ends_with(".vhdreg-journal") {
            return refuse("is the name of an image's journal, which vhdkit keeps for itself".into());
        }
        let Ok(link) = std::fs::symlink_metadata(target) else { return Ok(()) };
        let resolved = if link.file_type().is_symlink() { std::fs::metadata(target).ok() } else { Some(link.clone()) };
        if let Some(meta) = &resolved {
            let kind = platform::kind_name(meta);
            if kind != "regular file" {
                return refuse(format!("is a {kind}; the output must be a regular file"));
            }
            let id = FileId::of(meta);
            if let Some((input, _)) = self.inputs.iter().find(|(_, i)| *i == id) {
                return refuse(format!(
                    "is the input {} (the same file); refusing to overwrite an input",
                    input.display()
                ));
            }
        }
        if !self.replace_existing {
            return Err(Error::OutputExists { file: target.to_path_buf() });
        }
        // Replacing the link would leave its file as it was; writing through it would let
        // whoever planted it choose the file replaced (a link in /tmp to /etc/shadow).
        if link.file_type().is_symlink() {
            return refuse("is a symbolic link; name the file itself".into());
        }
        Ok(())
    }
}

/// A file being written under a temporary name beside its target.
pub struct NewFile {
    file: File,
    temp: PathBuf,
    target: PathBuf,
    replace: Replace,
    /// Temporary files of killed runs removed from the folder before this one was made.
    removed_stale: Vec<PathBuf>,
    committed: bool,
}

impl NewFile {
    /// Checks `target` against `policy`, removes stale temporary files of killed runs from its
    /// folder, and creates the temporary file (locked, with the policy's permissions).
    pub fn create(target: &Path, policy: &OutputPolicy) -> Result<Self> {
        policy.check(target)?;
        let replace = if policy.replace_existing { Replace::Existing } else { Replace::Never };
        NewFile::make(target, platform::permissions_for_new(policy.mode_limit), None, replace)
    }

    /// A new copy of the existing file `target` (which the caller holds locked), to replace it
    /// by rename with the same mode and owner.
    pub fn replacing(target: &Path, original: &Metadata) -> Result<Self> {
        let owner = platform::owner(original);
        let new = NewFile::make(target, None, Some(platform::mode(original)), Replace::Own)?;
        if let Some(owner) = owner {
            let current = new.file.metadata().ok().and_then(|m| platform::owner(&m));
            if current != Some(owner) {
                platform::set_owner(&new.file, owner)
                    .map_err(|e| Error::open(target, "keep the owner (run as the file's owner or root) of", e))?;
            }
        }
        Ok(new)
    }

    fn make(
        target: &Path,
        create_with: Option<std::fs::Permissions>,
        exact_mode: Option<u32>,
        replace: Replace,
    ) -> Result<Self> {
        let dir = folder_of(target);
        let removed_stale = remove_stale_temps(&dir);
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let prefix = format!(".{name}.vhdkit-new-");
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(TEMP_SUFFIX);
        if let Some(p) = create_with {
            builder.permissions(p);
        }
        let created =
            builder.tempfile_in(&dir).map_err(|e| Error::open(target, "create a temporary file beside", e))?;
        let (file, fresh) =
            created.keep().map_err(|e| Error::open(target, "create a temporary file beside", e.error))?;
        let mut new = NewFile {
            file,
            temp: fresh.clone(),
            target: target.to_path_buf(),
            replace,
            removed_stale,
            committed: false,
        };
        lock(&new.file, &fresh, true, LockWait::Fail)?;
        if let Some(mode) = exact_mode {
            platform::set_mode(&new.file, mode).map_err(|e| Error::open(&fresh, "set the permissions of", e))?;
        }
        // Only a locked file carries the marker a later run looks for.
        let marked = marked_name(&fresh);
        std::fs::rename(&fresh, &marked).map_err(|e| Error::open(&fresh, "rename", e))?;
        new.temp = marked;
        Ok(new)
    }

    /// The temporary file's path.
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// The open temporary file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Temporary files of killed runs that were removed from the target's folder.
    pub fn removed_stale(&self) -> &[PathBuf] {
        &self.removed_stale
    }

    /// Flushes the temporary file and renames it to the target (failing if the target
    /// appeared meanwhile and may not be replaced), then flushes the folder.
    pub fn commit(mut self) -> Result<()> {
        self.file.sync_all().map_err(|e| Error::io(&self.temp, "fsync", Space::File, 0, e))?;
        match self.replace {
            Replace::Existing => {
                // A file another process is writing (it holds it locked) is not replaced
                // under it: its writes would go to a file that no longer has a name.
                let held = match platform::open_nonblocking(&self.target, false, false) {
                    Ok(existing) => {
                        lock(&existing, &self.target, true, LockWait::Fail)?;
                        Some(existing)
                    }
                    Err(_) => None,
                };
                std::fs::rename(&self.temp, &self.target)
                    .map_err(|e| Error::open(&self.target, "rename the finished output to", e))?;
                drop(held);
            }
            Replace::Own => std::fs::rename(&self.temp, &self.target)
                .map_err(|e| Error::open(&self.target, "rename the finished output to", e))?,
            Replace::Never => platform::rename_noreplace(&self.temp, &self.target).map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Error::OutputExists { file: self.target.clone() },
                _ => Error::open(&self.target, "create the finished output", e),
            })?,
        }
        self.committed = true;
        platform::sync_dir(&folder_of(&self.target));
        Ok(())
    }

    /// Writes `bytes` as the whole file and commits it.
    pub fn write_all_and_commit(self, bytes: &[u8]) -> Result<()> {
        (&self.file).write_all(bytes).map_err(|e| Error::io(&self.temp, "write", Space::File, 0, e))?;
        self.commit()
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// A folder tree being written under a temporary name beside its target: it appears whole
/// (renamed into place, never over anything) or not at all (removed when dropped first). The
/// temporary folder is locked while it is written, so a later run can tell one left by a
/// killed run.
pub struct NewTree {
    temp: PathBuf,
    target: PathBuf,
    /// The temporary folder, open and locked (where the host can lock a folder).
    handle: Option<File>,
    mode_limit: u32,
    removed_stale: Vec<PathBuf>,
    committed: bool,
}

impl NewTree {
    /// Creates the temporary folder for `target`, which must not exist yet; files in it get
    /// no more permission than `policy`'s inputs.
    pub fn create(target: &Path, policy: &OutputPolicy) -> Result<Self> {
        if std::fs::symlink_metadata(target).is_ok() {
            return Err(Error::Conflict {
                file: target.to_path_buf(),
                problem: "exists: the tree is written as a new folder, never into or over anything".into(),
            });
        }
        let dir = folder_of(target);
        let removed_stale = remove_stale_temps(&dir);
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let prefix = format!(".{name}.vhdkit-new-");
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(TEMP_SUFFIX);
        if let Some(p) = platform::permissions_for_new_dir(policy.mode_limit) {
            builder.permissions(p);
        }
        let fresh =
            builder.tempdir_in(&dir).map_err(|e| Error::open(target, "create a temporary folder beside", e))?.keep();
        let handle = platform::open_dir(&fresh);
        if let Some(h) = &handle {
            lock(h, &fresh, true, LockWait::Fail)?;
        }
        // Only a locked folder holding our marker is ever taken for one a killed run left.
        std::fs::File::create(fresh.join(TREE_MARKER)).map_err(|e| Error::open(&fresh, "mark", e))?;
        let marked = marked_name(&fresh);
        std::fs::rename(&fresh, &marked).map_err(|e| Error::open(&fresh, "rename", e))?;
        Ok(NewTree {
            temp: marked,
            target: target.to_path_buf(),
            handle,
            mode_limit: policy.mode_limit,
            removed_stale,
            committed: false,
        })
    }

    /// The temporary folder, to write the tree into.
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// Permission bits for a new file in the tree (the umask applies on top).
    pub fn file_mode(&self) -> u32 {
        0o666 & self.mode_limit
    }

    /// Permission bits for a new folder in the tree: a file's, plus search where read is
    /// allowed.
    pub fn dir_mode(&self) -> u32 {
        platform::dir_mode(self.mode_limit)
    }

    /// Temporary outputs of killed runs that were removed from the target's folder.
    pub fn removed_stale(&self) -> &[PathBuf] {
        &self.removed_stale
    }

    /// Flushes the tree and renames it to the target (failing if the target appeared
    /// meanwhile), then flushes the folder.
    pub fn commit(mut self) -> Result<()> {
        let marker = self.temp.join(TREE_MARKER);
        std::fs::remove_file(&marker).map_err(|e| Error::open(&marker, "remove", e))?;
        if let Some(h) = &self.handle {
            platform::sync_filesystem(h).map_err(|e| Error::io(&self.temp, "flush", Space::File, 0, e))?;
        }
        platform::rename_dir_noreplace(&self.temp, &self.target).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::OutputExists { file: self.target.clone() },
            _ => Error::open(&self.target, "create the finished output", e),
        })?;
        self.committed = true;
        platform::sync_dir(&folder_of(&self.target));
        Ok(())
    }
}

impl Drop for NewTree {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.temp);
        }
    }
}

/// The name a locked temporary file takes: its own with `.vhdkit-new-` turned into the
/// marker (the folder's path is left alone, whatever it holds).
fn marked_name(fresh: &Path) -> PathBuf {
    let name = fresh.file_name().map(|n| n.to_string_lossy().replacen(".vhdkit-new-", STALE_TEMP_MARKER, 1));
    fresh.with_file_name(name.unwrap_or_default())
}

/// Flushes the folder holding `path`, so a create, rename or removal there survives a crash.
pub fn sync_dir(path: &Path) {
    platform::sync_dir(&folder_of(path));
}

/// Removes from `dir` the temporary outputs of vhdkit runs that were killed: files named
/// `.NAME.vhdkit-XXXX.partial` that no live process holds locked.
fn remove_stale_temps(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with('.')
            && name.ends_with(TEMP_SUFFIX)
            && name.contains(STALE_TEMP_MARKER)
            && !name.contains(".vhdkit-new-");
        if !ours {
            continue;
        }
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            // A tree: ours only when it holds our marker and is the user's, and removable once
            // nobody holds its lock.
            let marked = std::fs::symlink_metadata(path.join(TREE_MARKER)).is_ok_and(|m| m.is_file());
            let mine = std::fs::symlink_metadata(&path).is_ok_and(|m| platform::owned_by_me(&m));
            let Some(dir) = platform::open_dir(&path).filter(|_| marked && mine) else { continue };
            if lock(&dir, &path, true, LockWait::Fail).is_ok() && std::fs::remove_dir_all(&path).is_ok() {
                removed.push(path);
            }
            continue;
        }
        let Ok(file) = platform::open_nonblocking(&path, false, true) else { continue };
        let regular = file.metadata().is_ok_and(|m| m.is_file());
        if regular && lock(&file, &path, true, LockWait::Fail).is_ok() && std::fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}
