//! Layer 4: the correlation index of a whole image: sector <-> cluster <-> VHD block <-> file.
//!
//! [`ImageMap`] holds the partition layout and, for each NTFS partition, its [`NtfsIndex`]
//! (or why it could not be built). [`region`] names what lives at any disk offset;
//! [`blocks`] classifies every VHD block (used, free, droppable) for `map` and compaction.

pub mod blocks;
pub mod files;
pub mod region;
pub mod upload;

use crate::disk::{DiskLayout, FileSystem, Partition, PartitionView};
use crate::error::{Error, Result};
use crate::ntfs::{IndexDetail, NtfsIndex};
use crate::vhd::device::BlockDevice;
use crate::vhd::image::DiskImage;

/// What vhdkit knows about one partition's contents.
#[derive(Debug)]
pub enum Contents {
    /// An NTFS volume, indexed.
    Ntfs(Box<NtfsIndex>),
    /// An NTFS boot sector, but the volume could not be read: everything in it is kept.
    Unreadable(String),
    /// Another file system (or an NTFS volume not selected): only its zero blocks may be
    /// dropped, and not even those when it is kept whole ([`FileSystem::kept_whole`]).
    Other(FileSystem),
}

/// One partition and its contents.
#[derive(Debug)]
pub struct PartitionMap {
    /// The partition.
    pub partition: Partition,
    /// What it holds.
    pub contents: Contents,
}

impl PartitionMap {
    /// What the partition holds.
    pub fn filesystem(&self) -> FileSystem {
        match &self.contents {
            Contents::Ntfs(_) | Contents::Unreadable(_) => FileSystem::Ntfs,
            Contents::Other(fs) => *fs,
        }
    }

    /// What the partition holds, in a word for reports: `ntfs` (indexed), `unreadable ntfs`,
    /// or another file system's id.
    pub fn contents_name(&self) -> &'static str {
        match &self.contents {
            Contents::Ntfs(_) => "ntfs",
            Contents::Unreadable(_) => "unreadable ntfs",
            Contents::Other(fs) => fs.id(),
        }
    }

    /// Why an NTFS volume could not be read.
    pub fn problem(&self) -> Option<String> {
        match &self.contents {
            Contents::Unreadable(why) => Some(why.clone()),
            _ => None,
        }
    }

    /// Whether compaction keeps every byte of the partition (nothing in it is known free).
    pub fn kept_whole(&self) -> bool {
        matches!(&self.contents, Contents::Other(fs) if fs.kept_whole())
    }

    /// The NTFS index, if the partition is a readable NTFS volume.
    pub fn ntfs(&self) -> Option<&NtfsIndex> {
        match &self.contents {
            Contents::Ntfs(i) => Some(i),
            _ => None,
        }
    }
}

/// The image with its layout and per-partition indexes.
pub struct ImageMap<'a> {
    /// The image mapped.
    pub image: &'a DiskImage,
    /// Its partition tables.
    pub layout: DiskLayout,
    /// Each partition with what vhdkit knows of its contents.
    pub partitions: Vec<PartitionMap>,
}

impl<'a> ImageMap<'a> {
    /// Reads the partition table and indexes every NTFS partition (or only `only`), with every
    /// file's names and streams.
    pub fn build(image: &'a DiskImage, only: Option<u32>) -> Result<Self> {
        Self::build_with(image, only, IndexDetail::Files)
    }

    /// Like [`Self::build`], keeping `detail` of each file: [`IndexDetail::Clusters`] for what
    /// needs only cluster ownership (compaction, the block map), in far less memory.
    pub fn build_with(image: &'a DiskImage, only: Option<u32>, detail: IndexDetail) -> Result<Self> {
        let layout = DiskLayout::read(image)?;
        if let Some(n) = only
            && layout.partition(n).is_none()
        {
            let known: Vec<String> = layout.partitions.iter().map(|p| p.index.to_string()).collect();
            return Err(Error::NotFound(format!(
                "{}: no partition {n} (partitions: {})",
                image.source().display(),
                if known.is_empty() { "none".into() } else { known.join(", ") }
            )));
        }
        let partitions = layout
            .partitions
            .iter()
            .map(|p| {
                let contents = index_partition(image, p, only.is_none_or(|n| n == p.index).then_some(detail))?;
                Ok(PartitionMap { partition: p.clone(), contents })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ImageMap { image, layout, partitions })
    }

    /// The NTFS partitions that were indexed.
    pub fn ntfs(&self) -> impl Iterator<Item = (&Partition, &NtfsIndex)> {
        self.partitions.iter().filter_map(|p| p.ntfs().map(|i| (&p.partition, i)))
    }

    /// NTFS partitions that could not be read, with why.
    pub fn unreadable(&self) -> impl Iterator<Item = (&Partition, &str)> {
        self.partitions.iter().filter_map(|p| match &p.contents {
            Contents::Unreadable(why) => Some((&p.partition, why.as_str())),
            _ => None,
        })
    }

    /// Every partition's file system, by partition index.
    pub fn filesystems(&self) -> Vec<(u32, FileSystem)> {
        self.partitions.iter().map(|p| (p.partition.index, p.filesystem())).collect()
    }

    /// Fails with the first unreadable NTFS partition's error, for commands that need them all.
    pub fn require_readable(&self) -> Result<()> {
        match self.unreadable().next() {
            Some((p, why)) => Err(Error::unsupported(
                self.image.source(),
                format!("partition {}: NTFS volume unreadable: {why}", p.index),
            )),
            None => Ok(()),
        }
    }
}

/// Recognises `p`'s file system and, if it is NTFS and a `detail` is given, indexes it. A
/// read error of the disk itself (not of the volume's structures) is still an error.
fn index_partition(image: &DiskImage, p: &Partition, detail: Option<IndexDetail>) -> Result<Contents> {
    let view = PartitionView::new(image, p);
    let fs = FileSystem::detect(&view)?;
    let (FileSystem::Ntfs, Some(detail)) = (fs, detail) else { return Ok(Contents::Other(fs)) };
    match NtfsIndex::build(&view, p.index, detail) {
        Ok(index) => Ok(Contents::Ntfs(Box::new(index))),
        Err(e @ (Error::Io { .. } | Error::ParentNotFound { .. })) => Err(e),
        Err(e) => Ok(Contents::Unreadable(e.to_string())),
    }
}
