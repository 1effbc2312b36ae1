//! Files of the image's NTFS volumes found by their path, with the partition they live in.

use crate::disk::{Partition, PartitionView};
use crate::ntfs::NtfsIndex;
use crate::ntfs::file::FileEntry;
use crate::vhd::image::DiskImage;

use super::ImageMap;

/// A file found in an NTFS volume of the image.
#[derive(Clone, Copy, Debug)]
pub struct VolumeFile<'m> {
    pub partition: &'m Partition,
    pub index: &'m NtfsIndex,
    pub file: &'m FileEntry,
    /// Which of the file's names matched.
    pub name: usize,
}

impl<'m> VolumeFile<'m> {
    /// The file's path in its volume, as found.
    pub fn path(&self) -> String {
        self.index.path(self.file, self.name)
    }

    /// The file's volume, read through the image.
    pub fn volume<'i>(&self, image: &'i DiskImage) -> PartitionView<&'i DiskImage> {
        PartitionView::new(image, self.partition)
    }

    /// Another file of the same volume, by its path.
    pub fn sibling(&self, path: &str) -> Option<VolumeFile<'m>> {
        let (file, name) = self.index.find_path(path)?;
        Some(VolumeFile { file, name, ..*self })
    }
}

impl ImageMap<'_> {
    /// In each indexed NTFS volume (only partition `partition`, if given), the first of `paths`
    /// that exists (paths compare case-insensitively, with `/` or `\`).
    pub fn find_files(&self, paths: &[String], partition: Option<u32>) -> Vec<VolumeFile<'_>> {
        self.ntfs()
            .filter(|(p, _)| partition.is_none_or(|n| n == p.index))
            .filter_map(|(p, idx)| {
                let (file, name) = paths.iter().find_map(|path| idx.find_path(path))?;
                Some(VolumeFile { partition: p, index: idx, file, name })
            })
            .collect()
    }
}
