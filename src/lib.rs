//! Offline tools for Microsoft virtual disk images (VHD and VHDX): read any fixed, dynamic or
//! differencing image, its partitions and its NTFS volumes without mounting anything; read
//! files and streams out of it; compact it into a smaller image or in place; edit the
//! registry hives inside it. Plain file I/O: no root, no VM, no Windows.
//!
//! # Reading an image
//!
//! ```
//! use std::io::Read;
//! # fn example_image(name: &str) -> std::path::PathBuf {
//! #     let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
//! #     let out = root.join("target/doc-example").join(name);
//! #     std::fs::create_dir_all(out.parent().unwrap()).unwrap();
//! #     let gz = root.join("corpus/aligned-dynamic.vhd.gz");
//! #     let raw = std::process::Command::new("gzip").arg("-dc").arg(gz).output().unwrap().stdout;
//! #     std::fs::write(&out, raw).unwrap();
//! #     out
//! # }
//! use vhdkit::{BlockDevice, DiskImage, ImageMap, OpenOptions};
//!
//! # fn main() -> vhdkit::Result<()> {
//! # let path = example_image("read.vhd");
//! let image = DiskImage::open(&path, &OpenOptions::default())?;
//! println!("{} image of {} bytes", image.kind(), image.len());
//!
//! // Partitions and the NTFS volumes in them, indexed in one parallel pass.
//! let map = ImageMap::build(&image, None)?;
//! for p in &map.layout.partitions {
//!     println!("partition {} at sector {}: {}", p.index, p.start_lba, p.type_name);
//! }
//! for (partition, volume) in map.ntfs() {
//!     println!("partition {}: {} files", partition.index, volume.files.len());
//! }
//!
//! // A file's bytes, streamed (compressed and sparse files included).
//! let file = map.find_file("data/hello.txt", None)?;
//! let mut text = String::new();
//! file.open(&image, "")?.read_to_string(&mut text).expect("the file reads");
//! assert_eq!(text, "hello from mnt\n");
//! # Ok(())
//! # }
//! ```
//!
//! # Compacting into a new image
//!
//! ```
//! use vhdkit::compact::{self, CompactOptions, OutputFormat};
//! # fn example_image(name: &str) -> std::path::PathBuf {
//! #     let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
//! #     let out = root.join("target/doc-example").join(name);
//! #     std::fs::create_dir_all(out.parent().unwrap()).unwrap();
//! #     let gz = root.join("corpus/aligned-dynamic.vhd.gz");
//! #     let raw = std::process::Command::new("gzip").arg("-dc").arg(gz).output().unwrap().stdout;
//! #     std::fs::write(&out, raw).unwrap();
//! #     out
//! # }
//! use vhdkit::{DiskImage, OpenOptions, Replace};
//!
//! # fn main() -> vhdkit::Result<()> {
//! # let path = example_image("compact.vhd");
//! # let dir = tempfile::tempdir().unwrap();
//! # let output = dir.path().join("small.vhd");
//! let image = DiskImage::open(&path, &OpenOptions::default())?;
//! let opts = CompactOptions { to: Some(OutputFormat::Dynamic), verify: true, ..CompactOptions::default() };
//! let report = compact::to_new_file(&image, &output, Replace::Never, &opts, &|_event| {})?;
//! assert!(report.committed && report.verified());
//! println!("{} -> {} bytes, {} blocks dropped", report.input_bytes, report.output_bytes, report.dropped_blocks);
//! # Ok(())
//! # }
//! ```
//!
//! # Layers
//!
//! Each depends only on the ones above it: containers behind [`BlockDevice`]; the disk's
//! partition tables ([`DiskLayout`]); NTFS volumes ([`NtfsIndex`]); the correlation map
//! ([`ImageMap`]: sector, cluster, block, file); passes that plan then write once
//! ([`compact`], [`extract`], [`registry`]); and the command-line tools, which only parse,
//! call and print. The layers' own modules are public only with the `internals` feature,
//! which the test suite uses and which carries no stability promise.
#![forbid(unsafe_code)]
#![cfg_attr(not(feature = "internals"), deny(missing_docs))]
// Without the command-line tools, what only they use (.reg files, checks, text formats) is
// built but not reachable.
#![cfg_attr(not(any(feature = "cli", feature = "internals")), allow(dead_code, unused_imports))]

// The layers: public with `internals` (for the tests), private otherwise. Written out, not
// made by a macro, so that rustfmt reaches their files.
#[cfg(feature = "internals")]
pub mod bytes;
#[cfg(not(feature = "internals"))]
mod bytes;
#[cfg(feature = "internals")]
pub mod disk;
#[cfg(not(feature = "internals"))]
mod disk;
#[cfg(feature = "internals")]
pub mod error;
#[cfg(not(feature = "internals"))]
mod error;
#[cfg(feature = "internals")]
pub mod hive;
#[cfg(not(feature = "internals"))]
mod hive;
#[cfg(feature = "internals")]
pub mod host;
#[cfg(not(feature = "internals"))]
mod host;
#[cfg(feature = "internals")]
pub mod map;
#[cfg(not(feature = "internals"))]
mod map;
#[cfg(feature = "internals")]
pub mod ntfs;
#[cfg(not(feature = "internals"))]
mod ntfs;
#[cfg(feature = "internals")]
pub mod pass;
#[cfg(not(feature = "internals"))]
mod pass;
#[cfg(feature = "internals")]
pub mod vhd;
#[cfg(not(feature = "internals"))]
mod vhd;
#[cfg(feature = "internals")]
pub mod vhdx;
#[cfg(not(feature = "internals"))]
mod vhdx;

#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;
#[cfg(feature = "cli")]
mod report;

/// The JSON Schemas of every command's `--json` output, as published under docs/schema/.
#[cfg(feature = "schema")]
pub mod schema {
    pub use crate::report::schema::{Published, all};
}

pub use crate::disk::{DiskLayout, FileSystem, Lba, Partition, PartitionView, Scheme};
pub use crate::error::{Error, ErrorKind, Location, ParentSearch, Remedy, Result, Space};
pub use crate::hive::Hive;
pub use crate::hive::regfile::RegOp;
pub use crate::host::journal::Recovery;
pub use crate::host::{LockWait, Replace};
pub use crate::map::files::VolumeFile;
pub use crate::map::{Contents, ImageMap, PartitionMap};
pub use crate::ntfs::content::{FileTimes, Storage, StreamReader, WofAlgorithm};
pub use crate::ntfs::{FileEntry, IndexDetail, NtfsIndex, Stream};
pub use crate::vhd::Finding;
pub use crate::vhd::fixed::Fill;
pub use crate::vhd::sparse::ParentLink;
pub use crate::vhd::{
    BlockDevice, DeviceReader, DiskImage, FixedVhd, ImageFormat, ImageKind, OpenOptions, SectorSize, SparseVhd,
    WritableDevice,
};

/// Compaction: an image rewritten with only the blocks that hold needed NTFS bytes, into a
/// new file or in place; conversion between fixed and dynamic, VHD and VHDX; realignment;
/// verification; and what it would reclaim, without writing.
pub mod compact {
    pub use crate::map::blocks::{KeptAtBlockSize, SMALLEST_BLOCK};
    pub use crate::pass::Event;
    pub use crate::pass::align::Move;
    pub use crate::pass::compact::{
        CompactOptions, CompactReport, Mismatch, OutputFormat, PartitionPlan, PartitionResult, RealignResult,
        VerifyReport, WhatIf, in_place, to_new_file, to_stream, what_if, what_if_all,
    };
    pub use crate::pass::sanitize::SanitizeSummary;
}

/// An image uploaded to an Azure page blob as a fixed VHD, only its needed, non-zero pages
/// sent, resumable (behind the default `azure` feature).
#[cfg(feature = "azure")]
pub mod upload {
    pub use crate::pass::upload::{UploadOptions, UploadReport, UploadVerify, upload};
}

/// Files and folders copied out of the image's NTFS volumes into a new folder.
pub mod extract {
    pub use crate::pass::extract::{ExtractReport, Skipped, extract};
}

/// Registry keys and values in the hives inside an image, or in a bare hive file.
pub mod registry {
    pub use crate::hive::log::{LogFormat, ReplayReport};
    pub use crate::pass::registry::edit::{CommitGuard, EditOptions, EditReport, HiveSource, edit, read};
    pub use crate::pass::registry::{KeyTarget, LoadedHive, WriteSummary};
}
