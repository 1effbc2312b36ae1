//! Files as the index keeps them: a base record merged with its extension records, its
//! names and its streams (each attribute with every extent's runs in VCN order).

use crate::ntfs::record::{self, EXTEND_RECORD, FileName, ROOT, attr_type};
use crate::ntfs::runs::Run;

/// `$STANDARD_INFORMATION` file attribute bits.
pub mod file_attr {
    pub const HIDDEN: u32 = 0x0002;
    pub const SYSTEM: u32 = 0x0004;
    pub const SPARSE: u32 = 0x0200;
    pub const REPARSE: u32 = 0x0400;
    pub const COMPRESSED: u32 = 0x0800;
    pub const ENCRYPTED: u32 = 0x4000;
}

/// One attribute of a file, its extents merged.
#[derive(Clone, Debug)]
pub struct Stream {
    /// The attribute type (`0x80` for data).
    pub ty: u32,
    /// The stream's name ("" for the unnamed one).
    pub name: Box<str>,
    /// Whether the value lives in the FILE record.
    pub resident: bool,
    /// Attribute flags: compressed (`0x00FF`), encrypted (`0x4000`), sparse (`0x8000`).
    pub flags: u16,
    /// First VCN: 0 for a whole attribute (extents are merged into it).
    pub lowest_vcn: u64,
    /// For a resident attribute its value length; otherwise the size fields of the header
    /// of the extent at VCN 0.
    pub data_size: u64,
    /// Bytes allocated in clusters.
    pub allocated_size: u64,
    /// The valid data length: bytes past it read as zeros.
    pub initialized_size: u64,
    /// VCN-ordered runs of every extent; empty for a resident attribute.
    pub runs: Vec<Run>,
    /// Clusters per compression unit, as a power of two (0: not compressed), from the extent
    /// at VCN 0.
    pub compression_unit: u8,
    /// The record holding the attribute (its value, when resident).
    pub record: u64,
}

impl Stream {
    /// Whether this is a data stream (the default one or an ADS).
    pub fn is_data(&self) -> bool {
        self.ty == attr_type::DATA
    }

    /// Whether this is the unnamed `$DATA` stream.
    pub fn is_default_data(&self) -> bool {
        self.is_data() && self.name.is_empty()
    }

    /// Clusters on disk (sparse and compressed-away runs own none).
    pub fn physical_clusters(&self) -> u64 {
        self.runs.iter().filter(|r| r.lcn.is_some()).map(|r| r.length).sum()
    }
}

/// One file or directory.
#[derive(Clone, Debug)]
pub struct FileEntry {
    /// Its base MFT record.
    pub record: u64,
    /// The record's sequence number.
    pub sequence: u16,
    /// Whether it is a folder.
    pub directory: bool,
    /// `$STANDARD_INFORMATION` attribute bits (hidden, system, sparse...).
    pub file_attributes: u32,
    /// Its names: one per hard link (DOS 8.3 aliases left out). Full paths are built on
    /// demand by [`crate::ntfs::NtfsIndex::path`]; only directories' paths are kept.
    pub names: Box<[FileName]>,
    /// Its attributes that hold data or own clusters, extents merged.
    pub streams: Box<[Stream]>,
}

impl FileEntry {
    /// The unnamed `$DATA` stream.
    pub fn default_stream(&self) -> Option<&Stream> {
        self.streams.iter().find(|s| s.is_data() && s.name.is_empty())
    }

    /// Whether this is an NTFS metadata file (`$MFT`, `$Bitmap`, `$Extend\$ObjId`...).
    pub fn is_metadata(&self) -> bool {
        self.record < 16
            || self.names.iter().any(|n| n.name.starts_with('$') && (n.parent == ROOT || n.parent == EXTEND_RECORD))
    }

    fn any_stream_flag(&self, flag: u16) -> bool {
        self.streams.iter().any(|s| s.flags & flag != 0)
    }

    /// Whether the file or one of its streams is sparse.
    pub fn sparse(&self) -> bool {
        self.file_attributes & file_attr::SPARSE != 0 || self.any_stream_flag(record::ATTR_SPARSE)
    }

    /// Whether the file or one of its streams is compressed.
    pub fn compressed(&self) -> bool {
        self.file_attributes & file_attr::COMPRESSED != 0 || self.any_stream_flag(record::ATTR_COMPRESSED)
    }

    /// Whether the file or one of its streams is encrypted (EFS).
    pub fn encrypted(&self) -> bool {
        self.file_attributes & file_attr::ENCRYPTED != 0 || self.any_stream_flag(record::ATTR_ENCRYPTED)
    }

    /// Whether the file is a reparse point (symbolic link, junction, WOF-compressed...).
    pub fn reparse(&self) -> bool {
        self.file_attributes & file_attr::REPARSE != 0 || self.streams.iter().any(|s| s.ty == attr_type::REPARSE_POINT)
    }

    /// Whether the file is NTFS metadata or marked system.
    pub fn system(&self) -> bool {
        self.is_metadata() || self.file_attributes & file_attr::SYSTEM != 0
    }
}
