//! Volume-level state: label, version, the dirty flag and hibernation, read through the `ntfs`
//! crate and cross-checked with the records of the bulk pass.

use std::io::BufReader;

use serde::Serialize;

use crate::ntfs::reader::{DeviceReader, contain_panic};
use crate::vhd::device::BlockDevice;

/// `$VOLUME_INFORMATION` flag: the volume was not shut down cleanly (chkdsk pending).
pub const VOLUME_DIRTY: u16 = 0x0001;

/// What the volume says about its own state.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VolumeState {
    pub label: Option<String>,
    /// NTFS version, `3.1` on every Windows since XP.
    pub version: Option<String>,
    /// The `$Volume` dirty flag.
    pub dirty: bool,
    /// `hiberfil.sys` holds a live hibernation image (Windows hibernated or used fast startup).
    pub hibernated: bool,
    /// The first four bytes of `hiberfil.sys`, when present.
    pub hiberfil_signature: Option<String>,
    /// What the `ntfs` crate said when it could not open the volume (our own reader went on).
    pub crate_problem: Option<String>,
}

/// Opens the volume with the `ntfs` crate and reads `$Volume`'s name, version and flags.
pub fn probe_with_crate(view: &dyn BlockDevice) -> Result<(Option<String>, String, u16), String> {
    contain_panic(|| {
        let mut fs = BufReader::with_capacity(64 << 10, DeviceReader::new(view));
        let ntfs = ntfs::Ntfs::new(&mut fs).map_err(|e| e.to_string())?;
        let info = ntfs.volume_info(&mut fs).map_err(|e| e.to_string())?;
        let label = match ntfs.volume_name(&mut fs) {
            Some(Ok(n)) => Some(n.name().to_string_lossy()),
            Some(Err(e)) => return Err(e.to_string()),
            None => None,
        };
        Ok((label, format!("{}.{}", info.major_version(), info.minor_version()), info.flags().bits()))
    })
    .map_err(|panic| format!("the ntfs crate panicked: {panic}"))?
}

/// Whether the first bytes of `hiberfil.sys` mark a hibernation image Windows will resume.
pub fn is_hibernation_signature(head: &[u8]) -> bool {
    head.get(..4).is_some_and(|s| s.eq_ignore_ascii_case(b"hibr") || s.eq_ignore_ascii_case(b"wake"))
}
