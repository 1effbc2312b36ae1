//! `expand --grow-partition`: the disk's last partition (primary, logical or GPT) and its
//! NTFS volume grown into the space after it, in one journaled write: the partition's table
//! entries (a logical one's with its EBR chain and the extended partition), the boot sector
//! and its backup at the new end, and `$Bitmap` (grown through the same patcher that grows hives,
//! then rewritten whole: the new clusters free). `$Volume` and every file are untouched.

use serde::Serialize;

use crate::disk::{DiskLayout, Lba, Partition, Scheme, mbr};
use crate::error::{Error, Result};
use crate::map::ImageMap;
use crate::ntfs::file::FileEntry;
use crate::ntfs::record::BITMAP_RECORD;
use crate::ntfs::{IndexDetail, NtfsIndex};
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

/// The last partition of `map` and its NTFS volume, when it can be grown: readable, of an
/// MBR or GPT disk, and (unless `force`) neither dirty nor hibernated.
fn growable<'m>(map: &'m ImageMap<'_>, force: bool) -> Result<(&'m Partition, &'m NtfsIndex)> {
    let refuse = |why: String| Err(Error::unsupported(map.image.source(), why));
    let Some(pm) = map.partitions.iter().max_by_key(|p| p.partition.end()) else {
        return refuse("the disk has no partition to grow".into());
    };
    let p = &pm.partition;
    let Some(idx) = pm.ntfs() else {
        return refuse(format!("partition {} holds no readable NTFS volume", p.index));
    };
    if !matches!(map.layout.scheme, Scheme::Mbr | Scheme::Gpt) {
        return refuse("only a partition of an MBR or GPT disk is grown".into());
    }
    crate::pass::refuse_untrusted_volumes(map, Some(p.index), force)?;
    Ok((p, idx))
}

/// Checks, before the disk is expanded, that [`grow_last_partition`] will not refuse it (nor
/// the expansion a structurally broken image).
pub fn check_growable(image: &DiskImage, force: bool) -> Result<()> {
    crate::vhd::check::refuse_hazards(image)?;
    let map = ImageMap::build_with(image, None, IndexDetail::Clusters)?;
    growable(&map, force).map(|_| ())
}

/// Grows the last partition of `image` (opened writable), an NTFS volume, to the end of the
/// disk (the last usable sector of a GPT); a dirty or hibernated volume only with `force`.
pub fn grow_last_partition(image: &mut DiskImage, force: bool) -> Result<PartitionGrowth> {
    let src = image.source().to_path_buf();
    let refuse = |why: String| Err(Error::unsupported(&src, why));
    let (writes, report) = {
        let map = ImageMap::build_with(&*image, None, IndexDetail::Clusters)?;
        let layout = &map.layout;
        let ss = layout.sector_size;
        let (p, idx) = growable(&map, force)?;
        let last_usable = match (layout.scheme, &layout.gpt_table) {
            (Scheme::Gpt, Some(t)) => Lba(image.len() / ss.bytes() - 1) - t.array_sectors() - 1,
            _ => Lba((image.len() / ss.bytes() - 1).min(u32::MAX as u64)),
        };
        let sectors = last_usable.0 + 1 - p.start_lba.0;
        if sectors <= p.sectors {
            return refuse(format!("partition {} already reaches the end of the disk", p.index));
        }
        let mut writes = table_writes(&*image, layout, p, sectors)?;
        let cs = idx.cluster_size();
        // The backup boot sector takes the partition's last sector, outside every cluster.
        let total_sectors = sectors - 1;
        let new_clusters = ss.bytes_of(total_sectors) / cs;
        let view = crate::disk::PartitionView::new(&*image, p);
        let mut boot = vec![0u8; ss.bytes() as usize];
        view.read_at(0, &mut boot)?;
        let ntfs_sectors = ss.bytes_of(total_sectors) / idx.bpb.bytes_per_sector as u64;
        crate::disk::boot_sector::set_ntfs_total_sectors(&mut boot, ntfs_sectors);
        let p0 = p.start();
        writes.push(DiskWrite { offset: p0, bytes: boot.clone(), what: "NTFS boot sector".into() });
        writes.push(DiskWrite {
            offset: p0 + ss.bytes_of(total_sectors),
            bytes: boot,
            what: "NTFS backup boot sector".into(),
        });
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

/// The partition table's new entries for partition `p`, now `sectors` long.
fn table_writes(image: &DiskImage, layout: &DiskLayout, p: &Partition, sectors: u64) -> Result<Vec<DiskWrite>> {
    let ss = layout.sector_size;
    if let (Scheme::Gpt, Some(t)) = (layout.scheme, &layout.gpt_table) {
        let mut table = t.clone();
        table.move_entry(p.index, p.start_lba, sectors);
        let last = Lba(image.len() / ss.bytes() - 1);
        return Ok(table
            .encode(last)
            .into_iter()
            .map(|(offset, bytes, what)| DiskWrite { offset, bytes, what: what.into() })
            .collect());
    }
    let end = p.start_lba.0 + sectors;
    let sector_at = |lba: Lba| -> Result<Vec<u8>> {
        let mut sector = vec![0u8; ss.bytes() as usize];
        image.read_at(lba.offset(ss), &mut sector)?;
        Ok(sector)
    };
    let mut mbr_sector = sector_at(Lba(0))?;
    let Some(ebr) = p.ebr_lba.filter(|_| p.logical) else {
        set_extent(&mut mbr_sector, p.index as usize - 1, p.start_lba.0, end);
        return Ok(vec![DiskWrite { offset: 0, bytes: mbr_sector, what: "MBR".into() }]);
    };
    // A logical partition: the extended partition in the MBR reaches the new end, its own EBR
    // entry grows, and so does the link to its EBR in the EBR before (it spans from that EBR
    // to the end of the partition).
    let unsupported = |why: &str| Error::unsupported(image.source(), format!("partition {}: {why}", p.index));
    let extended = (0..4)
        .find(|&i| {
            let e = mbr::MbrEntry::from_sector(&mbr_sector, i);
            e.is_extended() && !e.is_empty()
        })
        .ok_or_else(|| unsupported("a logical partition, but the MBR has no extended partition"))?;
    let ext_start = mbr::MbrEntry::from_sector(&mbr_sector, extended).start_lba() as u64;
    set_extent(&mut mbr_sector, extended, ext_start, end);
    let mut writes = vec![DiskWrite { offset: 0, bytes: mbr_sector, what: "MBR".into() }];
    let ebrs = layout.mbr.as_ref().map_or(&[][..], |m| &m.ebrs[..]);
    // An EBR after the partition (one left by a deleted logical) would end up inside it.
    if let Some(after) = ebrs.iter().find(|e| e.lba > p.start_lba) {
        return Err(unsupported(&format!(
            "an EBR at sector {} lies after it, in the space it would take",
            after.lba.0
        )));
    }
    let mut own = sector_at(ebr)?;
    set_extent(&mut own, 0, p.start_lba.0, end);
    writes.push(DiskWrite { offset: ebr.offset(ss), bytes: own, what: format!("EBR at sector {}", ebr.0) });
    if let Some(before) = ebrs.windows(2).find(|w| w[1].lba == ebr).map(|w| w[0].lba) {
        let mut link = sector_at(before)?;
        set_extent(&mut link, 1, ebr.0, end);
        writes.push(DiskWrite { offset: before.offset(ss), bytes: link, what: format!("EBR at sector {}", before.0) });
    }
    Ok(writes)
}

/// Sets entry `slot` of the partition table in `sector` to end before sector `end`: its
/// sector count from its start (`start`, absolute, where the entry's own start is relative),
/// and the end's CHS in Windows' geometry, clamped as Windows writes it.
fn set_extent(sector: &mut [u8], slot: usize, start: u64, end: u64) {
    let at = mbr::TABLE_OFFSET + slot * mbr::ENTRY_SIZE;
    let entry = &mut sector[at..at + mbr::ENTRY_SIZE];
    entry[12..16].copy_from_slice(&((end - start).min(u32::MAX as u64) as u32).to_le_bytes());
    let g = mbr::BiosGeometry::WINDOWS;
    entry[5..8].copy_from_slice(&mbr::Chs::from_lba(end - 1, g.heads, g.sectors_per_track).encode());
}

/// `$Bitmap` grown to cover `new_clusters`, written whole through its runs: the old bits, the
/// clusters it took to grow marked used, every new cluster free.
fn bitmap_writes(
    view: &dyn BlockDevice,
    idx: &crate::ntfs::NtfsIndex,
    p0: u64,
    new_clusters: u64,
) -> Result<Vec<DiskWrite>> {
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
