//! vhdkit: offline tools for Microsoft VHD disk images.
//!
//! Layers, each depending only on the ones above it:
//! 1. [`vhd`]: container formats behind one `BlockDevice` trait.
//! 2. [`disk`]: MBR and GPT partition tables; a partition is a byte-range view of a device.
//! 6. [`cli`] and [`report`]: argument parsing, JSON and table output; the binaries are thin.
#![forbid(unsafe_code)]

pub mod error;
pub mod report;
pub mod cli;
pub mod disk;
pub mod vhd;

pub use error::{Error, Result, Space};
