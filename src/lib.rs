//! vhdkit: offline tools for Microsoft VHD disk images.
//!
//! Layers, each depending only on the ones above it:
//! 1. [`vhd`]: container formats behind one `BlockDevice` trait.
//! 2. [`disk`]: MBR and GPT partition tables; a partition is a byte-range view of a device.
//! 3. [`ntfs`]: NTFS volumes read without mounting: files, paths, streams, cluster owners.
//! 4. [`map`]: the correlation index: sector <-> cluster <-> VHD block <-> file.
//! 5. [`pass`]: compaction, realignment and registry writes (over the [`hive`] engine): a
//!    plan, then one writer.
//! 6. [`cli`] and [`report`]: argument parsing, JSON and table output; the binaries are thin.
#![forbid(unsafe_code)]

pub mod bytes;
#[cfg(feature = "cli")]
pub mod cli;
pub mod disk;
pub mod error;
pub mod hive;
pub mod host;
pub mod map;
pub mod ntfs;
pub mod pass;
#[cfg(feature = "cli")]
pub mod report;
pub mod vhd;

pub use error::{Error, ErrorKind, Location, Remedy, Result, Space};
