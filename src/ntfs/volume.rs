//! Volume-level state: label, version, the dirty flag (from `$Volume`, read by the bulk pass)
//! and hibernation.

use serde::Serialize;

/// `$VOLUME_INFORMATION` flag: the volume was not shut down cleanly (chkdsk pending).
pub const VOLUME_DIRTY: u16 = 0x0001;

/// What the volume says about its own state.
#[derive(Clone, Debug, Default, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
}

/// Whether the first bytes of `hiberfil.sys` mark a hibernation image Windows will resume.
pub fn is_hibernation_signature(head: &[u8]) -> bool {
    head.get(..4).is_some_and(|s| s.eq_ignore_ascii_case(b"hibr") || s.eq_ignore_ascii_case(b"wake"))
}
