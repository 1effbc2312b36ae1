//! Layer 6 (output half): each command's report as a serde structure (the `--json` output,
//! documented in docs/json.md) and its rendering as readable tables.

pub mod align;
pub mod check;
pub mod compact;
pub mod diff;
pub mod dump;
pub mod extract;
pub mod files;
pub mod map;
pub mod owner;
pub mod ranges;
pub mod reg;
pub mod table;
