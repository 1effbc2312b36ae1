//! Files of the image's NTFS volumes found by their path, with the partition they live in.

use crate::disk::{Partition, PartitionView};
use crate::error::{Error, Remedy, Result};
use crate::ntfs::NtfsIndex;
use crate::ntfs::content::StreamReader;
use crate::ntfs::file::FileEntry;
use crate::vhd::device::BlockDevice;
use crate::vhd::image::DiskImage;

use super::ImageMap;

/// A file found in an NTFS volume of the image.
#[derive(Clone, Copy, Debug)]
pub struct VolumeFile<'m> {
    /// The partition holding the volume.
    pub partition: &'m Partition,
    /// The volume's index.
    pub index: &'m NtfsIndex,
    /// The file.
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

    /// A reader of the file's data stream `stream` (`""` for the unnamed one).
    pub fn open<'i>(
        &self,
        image: &'i DiskImage,
        stream: &str,
    ) -> Result<StreamReader<'m, PartitionView<&'i DiskImage>>> {
        self.index.open_stream(self.volume(image), self.file, stream)
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

impl ImageMap<'_> {
    /// The file at `path` in the one NTFS volume (only partition `partition`, if given) that
    /// has it: none is not found, several ask for a partition to be chosen.
    pub fn find_file(&self, path: &str, partition: Option<u32>) -> Result<VolumeFile<'_>> {
        let mut found = self.find_files(&[path.to_string()], partition);
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(Error::NotFound(format!(
                "{}: no {path} in {}",
                self.image.source().display(),
                partition.map_or("any NTFS volume".into(), |n| format!("partition {n}"))
            ))),
            _ => Err(Error::Refused {
                file: self.image.source().to_path_buf(),
                problem: format!(
                    "{path} is in partitions {}",
                    found.iter().map(|f| f.partition.index.to_string()).collect::<Vec<_>>().join(", ")
                ),
                remedy: Remedy::ChoosePartition,
            }),
        }
    }
}
