//! Layer 5: passes that rewrite images. Each is a pure plan (what to copy or patch where),
//! built from the map, then one writer that executes it.

pub mod align;
pub mod compact;
pub mod execute;
pub mod in_place;
pub mod journal;
pub mod registry;
pub mod verify;
