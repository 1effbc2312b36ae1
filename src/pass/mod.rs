//! Layer 5: passes that rewrite images. Each is a pure plan (what to copy or patch where),
//! built from the map, then one writer that executes it.

pub mod align;
pub mod compact;
pub mod container;
pub mod disk_write;
pub mod extract;
pub mod registry;
pub mod sanitize;
#[cfg(feature = "azure")]
pub mod upload;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::map::ImageMap;
use crate::vhd::device::BlockDevice;

/// What a pass that writes a new output tells its caller as it goes.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// Temporary files that killed runs left in the output's folder were removed.
    RemovedStale(&'a [PathBuf]),
    /// Writing starts: into `temp` (a new file or folder, to remove if the run is
    /// interrupted), `units` in all: files (extraction) or bytes (compaction, upload, commit).
    Writing {
        /// The temporary output, for a new file or folder.
        temp: Option<&'a Path>,
        /// Units to write in all.
        units: u64,
    },
    /// Units written so far.
    Written(u64),
    /// The output is being read back and compared.
    Verifying,
}

/// Refuses to write on the strength of NTFS volumes whose state Windows would not trust: a
/// hibernated volume (Windows resumes with its own cached metadata and may undo or corrupt the
/// change) or a dirty one (not shut down cleanly; `$Bitmap` may not tell the truth). Only
/// `partition` is looked at when given; `force` overrides.
pub fn refuse_untrusted_volumes(map: &ImageMap<'_>, partition: Option<u32>, force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    for (p, idx) in map.ntfs().filter(|(p, _)| partition.is_none_or(|n| n == p.index)) {
        let why = if idx.state.hibernated {
            "is hibernated (hiberfil.sys holds a live image: Windows hibernated or used fast startup)"
        } else if idx.state.dirty {
            "is dirty (not shut down cleanly; chkdsk pending)"
        } else {
            continue;
        };
        return Err(Error::UntrustedVolume {
            file: map.image.source().to_path_buf(),
            partition: p.index,
            why: why.into(),
        });
    }
    Ok(())
}
