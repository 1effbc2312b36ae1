//! What lives at a disk offset: a named region, and for NTFS clusters the streams that own it.

use serde::Serialize;

use crate::disk::{FileSystem, Lba, Partition};
use crate::map::{Contents, ImageMap};
use crate::ntfs::NtfsIndex;
use crate::ntfs::record;

/// The kinds of places a disk byte can be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Region {
    #[serde(rename = "mbr")]
    Mbr,
    #[serde(rename = "ebr")]
    Ebr,
    #[serde(rename = "gpt")]
    Gpt,
    #[serde(rename = "partition gap")]
    PartitionGap,
    #[serde(rename = "outside any partition")]
    OutsideAnyPartition,
    #[serde(rename = "non-ntfs partition")]
    NonNtfsPartition,
    #[serde(rename = "unreadable ntfs partition")]
    UnreadableNtfs,
    #[serde(rename = "ntfs boot sector")]
    NtfsBootSector,
    #[serde(rename = "ntfs backup boot sector")]
    NtfsBackupBootSector,
    /// Bytes of an NTFS partition past the volume and its backup boot sector.
    #[serde(rename = "ntfs volume tail")]
    NtfsVolumeTail,
    /// A cluster some file owns.
    #[serde(rename = "file")]
    File,
    /// A cluster `$Bitmap` marks allocated but no file owns.
    #[serde(rename = "allocated cluster")]
    AllocatedCluster,
    #[serde(rename = "free cluster")]
    FreeCluster,
}

impl Region {
    /// The name as JSON and tables show it.
    pub fn name(self) -> &'static str {
        match self {
            Region::Mbr => "mbr",
            Region::Ebr => "ebr",
            Region::Gpt => "gpt",
            Region::PartitionGap => "partition gap",
            Region::OutsideAnyPartition => "outside any partition",
            Region::NonNtfsPartition => "non-ntfs partition",
            Region::UnreadableNtfs => "unreadable ntfs partition",
            Region::NtfsBootSector => "ntfs boot sector",
            Region::NtfsBackupBootSector => "ntfs backup boot sector",
            Region::NtfsVolumeTail => "ntfs volume tail",
            Region::File => "file",
            Region::AllocatedCluster => "allocated cluster",
            Region::FreeCluster => "free cluster",
        }
    }

    /// Whether this region lies inside a readable NTFS volume's clusters, where `$Bitmap` and
    /// the owner index say what is needed (elsewhere non-zero bytes are kept).
    pub fn in_ntfs_clusters(self) -> bool {
        matches!(self, Region::NtfsBootSector | Region::File | Region::AllocatedCluster | Region::FreeCluster)
    }
}

/// A stream that owns a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct OwnerRef {
    pub partition: u32,
    pub mft_record: u64,
    pub path: String,
    pub attribute: &'static str,
    pub stream: String,
}

impl OwnerRef {
    /// The owner behind id `id` of `idx`'s owner index (`None` when the index keeps no entry
    /// for its file: one built at [`crate::ntfs::IndexDetail::Clusters`]).
    pub fn new(partition: u32, idx: &NtfsIndex, id: u32) -> Option<Self> {
        let o = idx.owner(id);
        let f = idx.file(o.record)?;
        let s = f.streams.get(o.stream as usize)?;
        Some(OwnerRef {
            partition,
            mft_record: f.record,
            path: idx.path(f, 0),
            attribute: record::type_name(s.ty),
            stream: s.name.to_string(),
        })
    }
}

/// Where a disk offset falls.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Location {
    pub region: Region,
    /// The partition containing the offset.
    pub partition: Option<u32>,
    /// What that partition holds.
    pub filesystem: Option<FileSystem>,
    /// The NTFS cluster, inside a volume's clusters.
    pub cluster: Option<u64>,
    /// `$Bitmap`'s bit for that cluster (true for the structures outside clusters: MBR, GPT,
    /// boot sectors; false for gaps).
    pub allocated: bool,
    pub owners: Vec<OwnerRef>,
}

impl ImageMap<'_> {
    /// The partition holding disk offset `offset`.
    pub fn partition_at(&self, offset: u64) -> Option<&crate::map::PartitionMap> {
        self.partitions.iter().find(|p| p.partition.start() <= offset && offset < p.partition.end())
    }

    /// What lives at disk offset `offset`.
    pub fn locate(&self, offset: u64) -> Location {
        let outside = |region: Region, allocated: bool| Location {
            region,
            partition: None,
            filesystem: None,
            cluster: None,
            allocated,
            owners: Vec::new(),
        };
        if let Some(pm) = self.partition_at(offset) {
            let rel = offset - pm.partition.start();
            let mut loc = Location {
                region: Region::NonNtfsPartition,
                partition: Some(pm.partition.index),
                filesystem: Some(pm.filesystem()),
                cluster: None,
                allocated: true,
                owners: Vec::new(),
            };
            match &pm.contents {
                Contents::Ntfs(idx) => locate_in_volume(&mut loc, &pm.partition, idx, rel),
                Contents::Unreadable(_) => loc.region = Region::UnreadableNtfs,
                Contents::Other(_) => {}
            }
            return loc;
        }
        if offset < self.layout.sector_size.bytes() && self.layout.mbr.is_some() {
            return outside(Region::Mbr, true);
        }
        let sector = Lba::containing(offset, self.layout.sector_size);
        if let Some(mbr) = &self.layout.mbr
            && mbr.ebrs.iter().any(|e| e.lba == sector)
        {
            return outside(Region::Ebr, true);
        }
        if let Some(gpt) = &self.layout.gpt {
            let header = gpt.primary.as_ref().or(gpt.backup.as_ref());
            let first_usable = header.map_or(Lba(34), |h| h.first_usable_lba);
            let last_usable = header.map_or(Lba(u64::MAX), |h| h.last_usable_lba);
            if sector < first_usable || sector > last_usable {
                return outside(Region::Gpt, true);
            }
        }
        let last_end = self.partitions.iter().map(|p| p.partition.end()).max().unwrap_or(0);
        if offset < last_end {
            outside(Region::PartitionGap, false)
        } else {
            outside(Region::OutsideAnyPartition, false)
        }
    }
}

/// Fills `loc` for partition offset `rel` of an indexed NTFS volume.
fn locate_in_volume(loc: &mut Location, p: &Partition, idx: &NtfsIndex, rel: u64) {
    let bps = idx.bpb.bytes_per_sector as u64;
    let volume = idx.bpb.volume_bytes();
    if rel >= volume {
        loc.region = if rel < volume + bps { Region::NtfsBackupBootSector } else { Region::NtfsVolumeTail };
        loc.allocated = loc.region == Region::NtfsBackupBootSector;
        return;
    }
    let cluster = rel / idx.cluster_size();
    loc.cluster = Some(cluster);
    loc.allocated = idx.bitmap.is_allocated(cluster);
    loc.owners = idx.owners.owners_of(cluster).iter().filter_map(|&id| OwnerRef::new(p.index, idx, id)).collect();
    loc.region = if rel < bps {
        Region::NtfsBootSector
    } else if !loc.owners.is_empty() {
        Region::File
    } else if loc.allocated {
        Region::AllocatedCluster
    } else {
        Region::FreeCluster
    };
}

/// One piece of a disk range: `[start, end)` in one region with one set of owners.
#[derive(Clone, Debug)]
pub struct Piece<'m> {
    pub start: u64,
    pub end: u64,
    pub region: Region,
    pub partition: Option<u32>,
    pub allocated: bool,
    /// The NTFS index and owner ids, inside a volume's clusters.
    pub owners: Option<(&'m NtfsIndex, &'m [u32])>,
}

impl ImageMap<'_> {
    /// Splits disk range `[start, end)` into pieces of one region and one owner set: by owner
    /// segment inside NTFS clusters, by partition elsewhere.
    pub fn pieces(&self, start: u64, end: u64) -> Vec<Piece<'_>> {
        let mut out = Vec::new();
        let mut at = start;
        while at < end {
            let piece = self.piece_at(at, end);
            at = piece.end.max(at + 1);
            out.push(piece);
        }
        out
    }

    fn piece_at(&self, at: u64, limit: u64) -> Piece<'_> {
        let Some(pm) = self.partition_at(at) else {
            let loc = self.locate(at);
            let end = match loc.region {
                Region::PartitionGap | Region::OutsideAnyPartition => {
                    self.partitions.iter().map(|p| p.partition.start()).filter(|&s| s > at).min().unwrap_or(u64::MAX)
                }
                _ => {
                    Lba::containing(at, self.layout.sector_size).offset(self.layout.sector_size)
                        + self.layout.sector_size.bytes()
                }
            };
            return Piece {
                start: at,
                end: end.min(limit),
                region: loc.region,
                partition: None,
                allocated: loc.allocated,
                owners: None,
            };
        };
        let p0 = pm.partition.start();
        let whole = Piece {
            start: at,
            end: pm.partition.end().min(limit),
            region: Region::NonNtfsPartition,
            partition: Some(pm.partition.index),
            allocated: true,
            owners: None,
        };
        let idx = match &pm.contents {
            Contents::Ntfs(idx) => idx,
            Contents::Unreadable(_) => return Piece { region: Region::UnreadableNtfs, ..whole },
            Contents::Other(_) => return whole,
        };
        let rel = at - p0;
        let cs = idx.cluster_size();
        let bps = idx.bpb.bytes_per_sector as u64;
        let volume = idx.bpb.volume_bytes();
        if rel >= idx.total_clusters() * cs {
            let (region, end) = if rel >= volume && rel < volume + bps {
                (Region::NtfsBackupBootSector, volume + bps)
            } else if rel >= volume + bps {
                (Region::NtfsVolumeTail, pm.partition.len())
            } else {
                (Region::FreeCluster, volume)
            };
            return Piece {
                end: (p0 + end).min(limit),
                region,
                allocated: region == Region::NtfsBackupBootSector,
                ..whole
            };
        }
        let c = rel / cs;
        let ids = idx.owners.owners_of(c);
        let allocated = idx.bitmap.is_allocated(c);
        let end_cluster = if ids.is_empty() {
            c + 1
        } else {
            idx.owners.segments_in(c, idx.total_clusters()).next().map_or(c + 1, |(_, e, _)| {
                // Within an owned segment the bitmap may still change: stop where it does.
                (c + 1..e).find(|&x| idx.bitmap.is_allocated(x) != allocated).unwrap_or(e)
            })
        };
        let region = if rel < bps {
            Region::NtfsBootSector
        } else if !ids.is_empty() {
            Region::File
        } else if allocated {
            Region::AllocatedCluster
        } else {
            Region::FreeCluster
        };
        let end = if region == Region::NtfsBootSector { p0 + bps } else { p0 + end_cluster * cs };
        Piece { end: end.min(limit), region, allocated, owners: Some((idx, ids)), ..whole }
    }
}
