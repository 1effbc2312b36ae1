//! Layer 3: NTFS volumes without mounting.
//!
//! The `ntfs` crate opens each volume and reads its `$Volume` information; the bulk of the work
//! is a parallel pass over raw FILE records parsed by hand ([`record`], [`runs`], [`mft`]),
//! because the crate re-walks `$MFT` for every record, misreads a run at LCN 0 as sparse, loses
//! a `$DATA` that continues in extension records, and cannot follow an `$MFT` with its own
//! attribute list. [`index::NtfsIndex`] ties records into files with paths and streams, and
//! [`owners::ClusterOwnerIndex`] maps every cluster to the streams that own it.

pub mod bitmap;
pub mod content;
pub mod file;
pub mod index;
pub mod lzx;
pub mod mft;
pub mod owners;
pub mod patch;
pub mod record;
pub mod runs;
pub mod stream;
pub mod volume;

pub use file::{FileEntry, Stream};
pub use index::NtfsIndex;
pub use mft::IndexDetail;
