//! A partition: its table entry, and a byte-range view of the disk that reads like a device.

use std::path::Path;

use serde::Serialize;

use crate::bytes::Guid;
use crate::disk::lba::{Lba, SectorSize};
use crate::error::{Result, Space};
use crate::vhd::device::{BlockDevice, check_range};

/// How a disk is laid out, and which table a partition comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// An MBR, with the EBR chain of an extended partition.
    Mbr,
    /// A GPT (behind its protective MBR).
    Gpt,
    /// No table: the disk is one volume (it starts with a volume boot sector or superblock).
    Volume,
    /// No table and no volume.
    #[default]
    None,
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scheme::Mbr => "mbr",
            Scheme::Gpt => "gpt",
            Scheme::Volume => "volume",
            Scheme::None => "none",
        })
    }
}

/// One partition of the disk.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Partition {
    /// 1-based as Linux numbers them: primaries 1-4, logicals from 5, GPT entries from 1
    /// (`partition` in JSON, as every report names a partition).
    #[serde(rename = "partition")]
    pub index: u32,
    /// The table the partition comes from.
    pub scheme: Scheme,
    /// The MBR type byte (null for a GPT entry and a bare volume).
    #[serde(rename = "type")]
    pub mbr_type: Option<u8>,
    /// The GPT partition type (null for an MBR entry and a bare volume).
    pub type_guid: Option<Guid>,
    /// The type in words (`NTFS/exFAT`, `Microsoft basic data`, `NTFS volume`).
    pub type_name: String,
    /// The MBR active flag, or the GPT legacy-BIOS-bootable attribute.
    pub bootable: bool,
    /// The first sector.
    pub start_lba: Lba,
    /// Its length in sectors.
    pub sectors: u64,
    /// Whether this is a logical partition inside an extended one.
    pub logical: bool,
    /// GPT partition name.
    pub name: Option<String>,
    /// GPT unique partition GUID.
    pub unique_guid: Option<Guid>,
    /// Disk offset of the table entry that describes the partition (None for a bare volume).
    pub entry_offset: Option<u64>,
    /// For a logical partition, the LBA of the EBR whose first entry describes it.
    pub ebr_lba: Option<Lba>,
    /// Bytes per sector of the disk: what `start_lba` and `sectors` count in.
    pub sector_size: SectorSize,
}

impl Partition {
    /// Byte offset of the first sector.
    pub fn start(&self) -> u64 {
        self.start_lba.offset(self.sector_size)
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.sector_size.bytes_of(self.sectors)
    }

    /// Whether the partition has no sectors.
    pub fn is_empty(&self) -> bool {
        self.sectors == 0
    }

    /// Byte offset just past the last sector.
    pub fn end(&self) -> u64 {
        self.start() + self.len()
    }
}

/// A window of a device, readable as a device of its own.
#[derive(Clone, Debug)]
pub struct PartitionView<D> {
    device: D,
    start: u64,
    len: u64,
    index: u32,
}

impl<D: BlockDevice> PartitionView<D> {
    /// The bytes of `partition` on `device`, clamped to the device's end.
    pub fn new(device: D, partition: &Partition) -> Self {
        let start = partition.start().min(device.len());
        let len = partition.len().min(device.len() - start);
        PartitionView { device, start, len, index: partition.index }
    }

    /// Disk offset where the view begins.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The partition's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The device underneath.
    pub fn device(&self) -> &D {
        &self.device
    }
}

impl<D: BlockDevice> BlockDevice for PartitionView<D> {
    fn len(&self) -> u64 {
        self.len
    }

    fn sector_size(&self) -> SectorSize {
        self.device.sector_size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.device.source(), Space::Partition(self.index), offset, buf.len(), self.len)?;
        self.device.read_at(self.start + offset, buf)
    }

    fn source(&self) -> &Path {
        self.device.source()
    }

    fn data_ranges(&self, start: u64, end: u64) -> Result<Vec<(u64, u64)>> {
        let end = end.min(self.len);
        if start >= end {
            return Ok(Vec::new());
        }
        let ranges = self.device.data_ranges(self.start + start, self.start + end)?;
        Ok(ranges.into_iter().map(|(a, b)| (a - self.start, b - self.start)).collect())
    }
}
