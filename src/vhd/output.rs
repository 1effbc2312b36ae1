//! Output files that appear whole or not at all: written to a temporary file in the target's
//! folder, flushed to disk, then renamed over the target. A failed or interrupted run leaves no
//! partial output behind (the temporary file is removed on drop).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, Space};

/// A temporary file beside `target` that becomes `target` on [`PendingOutput::commit`].
pub struct PendingOutput {
    temp: tempfile::NamedTempFile,
    target: PathBuf,
}

impl PendingOutput {
    /// Creates the temporary file in `target`'s folder.
    pub fn new(target: &Path) -> Result<Self> {
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".partial")
            .tempfile_in(dir)
            .map_err(|e| Error::open(target, "create a temporary file beside", e))?;
        // A temporary file is private (0600); the finished output is an ordinary file.
        std::fs::set_permissions(temp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .map_err(|e| Error::open(target, "set permissions on the temporary file beside", e))?;
        Ok(PendingOutput { temp, target: target.to_path_buf() })
    }

    /// The temporary file's path (writers open it by name).
    pub fn path(&self) -> &Path {
        self.temp.path()
    }

    /// The open temporary file.
    pub fn file(&self) -> &std::fs::File {
        self.temp.as_file()
    }

    /// Flushes the temporary file and renames it over the target, then flushes the folder so
    /// the rename itself survives a crash.
    pub fn commit(self) -> Result<()> {
        self.temp
            .as_file()
            .sync_all()
            .map_err(|e| Error::io(self.temp.path(), "fsync", Space::File, 0, e))?;
        let target = self.target;
        self.temp.persist(&target).map_err(|e| Error::open(&target, "rename the finished output to", e.error))?;
        sync_dir(&target);
        Ok(())
    }
}

/// Flushes the folder holding `path`, so a create, rename or removal there survives a crash.
pub fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `target` atomically.
pub fn write_atomically(target: &Path, bytes: &[u8]) -> Result<()> {
    let out = PendingOutput::new(target)?;
    out.file().write_all(bytes).map_err(|e| Error::io(out.path(), "write", Space::File, 0, e))?;
    out.commit()
}
