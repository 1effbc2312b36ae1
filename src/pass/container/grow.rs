//! `expand --grow-partition`: the disk's last partition and its NTFS volume grown into the
//! space after it, in one journaled write: the partition's table entry, the boot sector and
//! its backup at the new end, and `$Bitmap` (grown through the same patcher that grows hives,
//! then rewritten whole: the new clusters free). `$Volume` and every file are untouched.

use serde::Serialize;

use crate::disk::{DiskLayout, Lba, Scheme, mbr};
use crate::error::{Error, Result};
use crate::map::ImageMap;
use crate::ntfs::IndexDetail;
use crate::ntfs::file::FileEntry;
use crate::ntfs::record::BITMAP_RECORD;
use crate::pass::disk_write::{self, DiskWrite};
use crate::vhd::device::BlockDevice;
use crate::vhd::image::DiskImage;

/// What growing the partition did.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PartitionGrowth {
    pub partition: u32,
    pub old_bytes: u64,
    pub new_bytes: u64,
    pub old_clusters: u64,
    pub new_clusters: u64,
}

/// Grows the last partition of `image` (opened writable), an NTFS volume, to the end of the
/// disk (the last usable sector of a GPT).
pub fn grow_last_partition(image: &mut DiskImage) -> Result<PartitionGrowth> {
    let src = image.source().to_path_buf();
    let refuse = |why: String| Err(Error::unsupported(&src, why));
    let (writes, report) = {
        let map = ImageMap::build_with(&*image, None, IndexDetail::Clusters)?;
        let layout = &map.layout;
        let ss = layout.sector_size;
        let Some(pm) = map.partitions.iter().max_by_key(|p| p.partition.end()) else {
            return refuse("the disk has no partition to grow".into());
        };
        let p = &pm.partition;
        if p.logical {
            return refuse(format!("partition {} is a logical partition: only a primary or GPT one is grown", p.index));
        }
        let Some(idx) = pm.ntfs() else {
            return refuse(format!("partition {} holds no readable NTFS volume", p.index));
        };
        crate::pass::refuse_untrusted_volumes(&map, Some(p.index), false)?;
        let last_usable = match (layout.scheme, &layout.gpt_table) {
            (Scheme::Gpt, Some(t)) => Lba(image.len() / ss.bytes() - 1) - t.array_sectors() - 1,
            (Scheme::Mbr, _) => Lba((image.len() / ss.bytes() - 1).min(u32::MAX as u64)),
            _ => return refuse("only a partition of an MBR or GPT disk is grown".into()),
        };
        let sectors = last_usable.0 + 1 - p.start_lba.0;
        if sectors <= p.sectors {
            return refuse(format!("partition {} already reaches the end of the disk", p.index));
        }
        let mut writes = table_writes(&*image, layout, p.index, p.start_lba, sectors)?;
        let cs = idx.cluster_size();
        // The backup boot sector takes the partition's last sector, outside every cluster.
        let total_sectors = sectors - 1;
        let new_clusters = ss.bytes_of(total_sectors) / cs;
        let view = crate::disk::PartitionView::new(&*image, p);
        let mut boot = vec![0u8; ss.bytes() as usize];
        view.read_at(0, &mut boot)?;
        let ntfs_sectors = ss.bytes_of(total_sectors) / idx.bpb.bytes_per_sector as u64;
        boot[0x28..0x30].copy_from_slice(&ntfs_sectors.to_le_bytes());
        let p0 = p.start();
        writes.push(DiskWrite { offset: p0, bytes: boot.clone(), what: "NTFS boot sector".into() });
        writes.push(DiskWrite { offset: p0 + ss.bytes_of(total_sectors), bytes: boot, what: "NTFS backup boot sector".into() });
        writes.extend(bitmap_writes(&view, idx, p0, new_clusters)?);
        let report = PartitionGrowth {
            partition: p.index,
            old_bytes: ss.bytes_of(p.sectors),
            new_bytes: ss.bytes_of(sectors),
            old_clusters: idx.total_clusters(),
            new_clusters,
        };
        (writes, report)
    };
    disk_write::apply(image, &writes)?;
    Ok(report)
}

/// The partition table's new entry for partition `index`: `sectors` from `start`.
fn table_writes(image: &DiskImage, layout: &DiskLayout, index: u32, start: Lba, sectors: u64) -> Result<Vec<DiskWrite>> {
    let ss = layout.sector_size;
    if let (Scheme::Gpt, Some(t)) = (layout.scheme, &layout.gpt_table) {
        let mut table = t.clone();
        table.move_entry(index, start, sectors);
        let last = Lba(image.len() / ss.bytes() - 1);
        return Ok(table
            .encode(last)
            .into_iter()
            .map(|(offset, bytes, what)| DiskWrite { offset, bytes, what: what.into() })
            .collect());
    }
    let mut sector0 = vec![0u8; ss.bytes() as usize];
    image.read_at(0, &mut sector0)?;
    let at = mbr::TABLE_OFFSET + (index as usize - 1) * mbr::ENTRY_SIZE;
    let entry = &mut sector0[at..at + mbr::ENTRY_SIZE];
    entry[12..16].copy_from_slice(&(sectors as u32).to_le_bytes());
    // The end's CHS in Windows' geometry, clamped as Windows writes it.
    let g = mbr::BiosGeometry::WINDOWS;
    entry[5..8].copy_from_slice(&mbr::Chs::from_lba(start.0 + sectors - 1, g.heads, g.sectors_per_track).encode());
    Ok(vec![DiskWrite { offset: 0, bytes: sector0, what: "MBR".into() }])
}

/// `$Bitmap` grown to cover `new_clusters`, written whole through its runs: the old bits, the
/// clusters it took to grow marked used, every new cluster free.
fn bitmap_writes(view: &dyn BlockDevice, idx: &crate::ntfs::NtfsIndex, p0: u64, new_clusters: u64) -> Result<Vec<DiskWrite>> {
    let file: &FileEntry =
        idx.file(BITMAP_RECORD).ok_or_else(|| Error::unsupported(view.source(), "the volume has no $Bitmap"))?;
    let old_clusters = idx.total_clusters();
    let size = new_clusters.div_ceil(8).div_ceil(8) * 8;
    let growth = crate::ntfs::patch::grow(view, idx, file, size)?;
    let cs = idx.cluster_size();
    let mut writes: Vec<DiskWrite> =
        growth.patches.into_iter().map(|p| DiskWrite { offset: p0 + p.offset, bytes: p.bytes, what: p.what }).collect();
    let mut bits = idx.bitmap.bytes().to_vec();
    bits.resize(size as usize, 0);
    // Bits past the old last cluster (padding of its last byte) become clusters: free.
    for c in old_clusters..(old_clusters.div_ceil(8) * 8).min(new_clusters) {
        bits[(c / 8) as usize] &= !(1 << (c % 8));
    }
    // ...and the new last byte's bits past the volume's end are set, as NTFS keeps them.
    for c in new_clusters..new_clusters.div_ceil(8) * 8 {
        bits[(c / 8) as usize] |= 1 << (c % 8);
    }
    for r in &growth.runs {
        let Some(lcn) = r.lcn else { continue };
        for c in lcn..lcn + r.length {
            bits[(c / 8) as usize] |= 1 << (c % 8);
        }
    }
    for r in &growth.runs {
        let Some(lcn) = r.lcn else { continue };
        let (from, to) = ((r.vcn * cs) as usize, (((r.vcn + r.length) * cs) as usize).min(bits.len()));
        if from >= to {
            continue;
        }
        let mut chunk = bits[from..to].to_vec();
        chunk.resize((to - from).div_ceil(512) * 512, 0);
        writes.push(DiskWrite { offset: p0 + lcn * cs, bytes: chunk, what: "$Bitmap".into() });
    }
    Ok(writes)
}
