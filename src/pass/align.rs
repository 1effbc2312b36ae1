//! Realignment: every misaligned partition moved to the next boundary (order and sizes kept),
//! as a plan (where each partition and EBR goes, and the sectors patched so that the tables,
//! the boot sectors and Windows' own records of partition offsets agree) and a device that
//! reads the realigned disk out of the input. Nothing is written here: compaction's writer
//! stores what [`RealignedDisk`] reads.

use std::path::Path;

use serde::Serialize;

use crate::bytes::{le32, le64};
use crate::disk::boot_sector::{backup_sector, identify, set_hidden_sectors};
use crate::disk::gpt::GptTable;
use crate::disk::lba::Lba;
use crate::disk::mbr::{self, BiosGeometry, MbrEntry};
use crate::disk::{DiskLayout, Partition, Scheme};
use crate::error::{Error, Result, Space};
use crate::hive::Hive;
use crate::hive::value::reg_type;
use crate::map::ImageMap;
use crate::map::blocks::{Need, NeedKind};
use crate::pass::disk_write::DiskWrite;
use crate::pass::registry;
use crate::vhd::device::{BlockDevice, SectorSize, check_range, merge_ranges};
use crate::vhd::image::DiskImage;

/// Where Windows keeps the hives that name partitions by byte offset.
const SYSTEM_HIVE: &str = "Windows/System32/config/SYSTEM";
const BCD_STORES: [&str; 2] = ["Boot/BCD", "EFI/Microsoft/Boot/BCD"];

/// One partition's place before and after.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Move {
    /// The partition.
    #[serde(rename = "partition")]
    pub index: u32,
    /// Its first sector before.
    pub old_start_lba: Lba,
    /// Its first sector after.
    pub new_start_lba: Lba,
    /// Its length in sectors (unchanged).
    pub sectors: u64,
}

impl Move {
    fn moved(&self) -> bool {
        self.old_start_lba != self.new_start_lba
    }
}

/// A stretch of the realigned disk: read from the input at `source`, or zeros.
#[derive(Clone, Copy, Debug)]
struct Segment {
    start: u64,
    end: u64,
    source: Option<u64>,
}

/// The realignment plan.
#[derive(Clone, Debug)]
pub struct Realignment {
    /// The boundary partitions move to; `None` when only the disk grows (a GPT's backup copy
    /// moving to the new end).
    pub boundary: Option<u64>,
    /// The realigned disk's size (grown when the last partition needed room).
    pub disk_size: u64,
    pub moves: Vec<Move>,
    /// New sector contents, at realigned disk offsets, sorted.
    pub patches: Vec<DiskWrite>,
    /// Every change the patches make, in words.
    pub changes: Vec<String>,
    /// What could not be patched, and why.
    pub impossible: Vec<String>,
    segments: Vec<Segment>,
}

impl Realignment {
    /// The pieces of realigned range `[start, end)`: (start, end, input offset or zeros).
    fn pieces(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, u64, Option<u64>)> + '_ {
        let first = self.segments.partition_point(|s| s.end <= start);
        self.segments[first..].iter().take_while(move |s| s.start < end).map(move |s| {
            let (a, b) = (s.start.max(start), s.end.min(end));
            (a, b, s.source.map(|src| src + (a - s.start)))
        })
    }

    /// Which bytes of realigned range `[start, end)` are needed: the input's needs carried to
    /// their new place, zeros for vacated space, and every patched byte.
    pub fn needs(&self, map: &ImageMap<'_>, start: u64, end: u64) -> Vec<Need> {
        let mut out = Vec::new();
        for (a, b, source) in self.pieces(start, end) {
            match source {
                None => out.push(Need { start: a, end: b, kind: NeedKind::Unneeded }),
                Some(src) => out.extend(map.needs(src, src + (b - a)).into_iter().map(|n| Need {
                    start: n.start - src + a,
                    end: n.end - src + a,
                    kind: n.kind,
                })),
            }
        }
        let patched: Vec<(u64, u64)> = self
            .patches
            .iter()
            .map(|p| (p.offset.max(start), (p.offset + p.bytes.len() as u64).min(end)))
            .filter(|(a, b)| a < b)
            .collect();
        if patched.is_empty() {
            return out;
        }
        let mut cut = Vec::with_capacity(out.len() + 2 * patched.len());
        for n in out {
            let mut at = n.start;
            for &(a, b) in patched.iter().filter(|(a, b)| *a < n.end && *b > n.start) {
                if a > at {
                    cut.push(Need { start: at, end: a, kind: n.kind });
                }
                at = at.max(b);
            }
            if at < n.end {
                cut.push(Need { start: at, end: n.end, kind: n.kind });
            }
        }
        cut.extend(patched.iter().map(|&(a, b)| Need { start: a, end: b, kind: NeedKind::NeededCluster }));
        cut.sort_by_key(|n| n.start);
        cut
    }
}

/// The realigned disk, read from the input.
pub struct RealignedDisk<'a> {
    pub input: &'a DiskImage,
    pub plan: &'a Realignment,
}

impl BlockDevice for RealignedDisk<'_> {
    fn len(&self) -> u64 {
        self.plan.disk_size
    }

    fn sector_size(&self) -> SectorSize {
        self.input.sector_size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.source(), Space::Disk, offset, buf.len(), self.len())?;
        let end = offset + buf.len() as u64;
        for (a, b, source) in self.plan.pieces(offset, end) {
            let out = &mut buf[(a - offset) as usize..(b - offset) as usize];
            match source {
                Some(src) => self.input.read_at(src, out)?,
                None => out.fill(0),
            }
        }
        let first = self.plan.patches.partition_point(|p| p.offset + p.bytes.len() as u64 <= offset);
        for p in self.plan.patches[first..].iter().take_while(|p| p.offset < end) {
            let (a, b) = (p.offset.max(offset), (p.offset + p.bytes.len() as u64).min(end));
            if a < b {
                buf[(a - offset) as usize..(b - offset) as usize]
                    .copy_from_slice(&p.bytes[(a - p.offset) as usize..(b - p.offset) as usize]);
            }
        }
        Ok(())
    }

    fn source(&self) -> &Path {
        self.input.source()
    }

    /// The input's data carried to its new place, and every patch.
    fn data_ranges(&self, start: u64, end: u64) -> Result<Vec<(u64, u64)>> {
        let end = end.min(self.len());
        let mut out = Vec::new();
        for (a, b, source) in self.plan.pieces(start, end) {
            if let Some(src) = source {
                out.extend(
                    self.input.data_ranges(src, src + (b - a))?.into_iter().map(|(x, y)| (x - src + a, y - src + a)),
                );
            }
        }
        for p in &self.plan.patches {
            let (a, b) = (p.offset.max(start), (p.offset + p.bytes.len() as u64).min(end));
            if a < b {
                out.push((a, b));
            }
        }
        out.sort_unstable();
        Ok(merge_ranges(out))
    }
}

/// Lays `[start, end)` over `segments` with a new source.
fn overlay(segments: &mut Vec<Segment>, start: u64, end: u64, source: Option<u64>) {
    if start >= end {
        return;
    }
    let mut out = Vec::with_capacity(segments.len() + 2);
    for s in segments.iter() {
        if s.end <= start || s.start >= end {
            out.push(*s);
            continue;
        }
        if s.start < start {
            out.push(Segment { start: s.start, end: start, source: s.source });
        }
        if s.end > end {
            out.push(Segment { start: end, end: s.end, source: s.source.map(|src| src + (end - s.start)) });
        }
    }
    out.push(Segment { start, end, source });
    out.sort_by_key(|s| s.start);
    *segments = out;
}

/// Reads the first 512 bytes of sector `lba` of the input (all an MBR, EBR or boot sector
/// holds, whatever the sector size).
fn sector(image: &DiskImage, lba: Lba, ss: SectorSize) -> Result<[u8; 512]> {
    let mut s = [0u8; 512];
    image.read_at(lba.offset(ss), &mut s)?;
    Ok(s)
}

/// The BIOS geometry the table's CHS fields were written with (the VHD footer's as a hint).
fn bios_geometry(image: &DiskImage, entries: &[MbrEntry], ebrs: &[(Lba, MbrEntry)]) -> BiosGeometry {
    let mut pairs = Vec::new();
    let mut add = |start: u64, e: &MbrEntry| {
        if !e.is_empty() {
            pairs.push((start, e.first_chs()));
            pairs.push((start + e.sectors() as u64 - 1, e.last_chs()));
        }
    };
    for e in entries {
        add(e.start_lba() as u64, e);
    }
    for (ebr, e) in ebrs {
        add(ebr.0 + e.start_lba() as u64, e);
    }
    let hint = image.footer().map(|f| f.geometry).and_then(|g| {
        (g.heads > 0 && (1..=63).contains(&g.sectors_per_track))
            .then_some(BiosGeometry { heads: g.heads, sectors_per_track: g.sectors_per_track })
    });
    BiosGeometry::of_table(&pairs, hint)
}

/// Fits a sector number into an MBR field.
fn mbr_field(image: &DiskImage, value: u64, what: &str) -> Result<u32> {
    u32::try_from(value).map_err(|_| {
        Error::unsupported(image.source(), format!("{what} would be sector {value}, beyond what an MBR can address"))
    })
}

/// Where the MBR's extended partition and its EBRs go.
struct MbrPlacement<'l> {
    /// The MBR slot of the extended partition.
    extended: Option<usize>,
    /// Its new start and length.
    new_extended: Option<(Lba, u64)>,
    /// Each logical partition with its EBR's new sector, in chain order.
    ebrs: Vec<(Lba, &'l Partition)>,
}

/// Planning state shared by the table-specific steps.
struct Planner<'m, 'i> {
    map: &'m ImageMap<'i>,
    ss: SectorSize,
    boundary_sectors: u64,
    moves: Vec<Move>,
    vacated: Vec<(u64, u64)>,
    patches: Vec<DiskWrite>,
    changes: Vec<String>,
    impossible: Vec<String>,
    /// Sectors the realigned disk needs.
    needed_sectors: u64,
    /// The time registry edits say (seconds since 1970), when not now.
    clock: Option<u64>,
}

impl<'m> Planner<'m, '_> {
    fn align_up(&self, lba: Lba) -> Lba {
        Lba(lba.0.div_ceil(self.boundary_sectors) * self.boundary_sectors)
    }

    fn place(&mut self, p: &Partition, new_start: Lba) {
        self.moves.push(Move {
            index: p.index,
            old_start_lba: p.start_lba,
            new_start_lba: new_start,
            sectors: p.sectors,
        });
    }

    /// Primary and logical partitions, EBRs moved to follow them, MBR and EBRs rewritten.
    fn plan_mbr(&mut self) -> Result<()> {
        let image = self.map.image;
        let layout = &self.map.layout;
        let mbr0: [u8; 512] = layout
            .sector0
            .as_slice()
            .try_into()
            .map_err(|_| Error::internal("the partition table was read without its first sector"))?;
        let entries: Vec<MbrEntry> = (0..4).map(|i| MbrEntry::from_sector(&mbr0, i)).collect();
        let ebr_entries: Vec<(Lba, MbrEntry)> = layout
            .partitions
            .iter()
            .filter_map(|p| p.ebr_lba)
            .map(|lba| sector(image, lba, self.ss).map(|s| (lba, MbrEntry::from_sector(&s, 0))))
            .collect::<Result<_>>()?;
        let geometry = bios_geometry(image, &entries, &ebr_entries);
        let placement = self.place_mbr_partitions(&entries);
        if !self.moves.iter().any(Move::moved) {
            return Ok(());
        }
        for m in self.moves.iter().filter(|m| m.moved()) {
            self.vacated.push((m.old_start_lba.offset(self.ss), (m.old_start_lba + m.sectors).offset(self.ss)));
        }
        for ebr in layout.mbr.iter().flat_map(|m| &m.ebrs) {
            self.vacated.push((ebr.lba.offset(self.ss), (ebr.lba + 1).offset(self.ss)));
        }
        self.patch_mbr(&mbr0, &entries, &placement, geometry)?;
        self.patch_ebrs(&placement, geometry)
    }

    /// Places the primaries in disk order and, where the extended partition was, its EBRs and
    /// logicals (the first EBR at the extended partition's start, each logical after its EBR).
    fn place_mbr_partitions(&mut self, entries: &[MbrEntry]) -> MbrPlacement<'m> {
        let layout: &'m DiskLayout = &self.map.layout;
        let extended = entries.iter().position(|e| !e.is_empty() && e.is_extended());
        let mut items: Vec<(Lba, Option<&Partition>)> =
            layout.partitions.iter().filter(|p| !p.logical).map(|p| (p.start_lba, Some(p))).collect();
        if let Some(slot) = extended {
            items.push((Lba(entries[slot].start_lba() as u64), None));
        }
        items.sort_by_key(|(start, _)| *start);
        let logicals: Vec<&Partition> = layout.partitions.iter().filter(|p| p.logical).collect();
        let mut cursor = Lba(1);
        let mut placement = MbrPlacement { extended, new_extended: None, ebrs: Vec::new() };
        for (start, item) in items {
            match item {
                Some(p) => {
                    let new = self.align_up(p.start_lba.max(cursor));
                    self.place(p, new);
                    cursor = new + p.sectors;
                }
                None => {
                    let ext = entries[extended.unwrap_or(0)];
                    let ext_start = start.max(cursor);
                    let mut c = ext_start;
                    for (i, l) in logicals.iter().enumerate() {
                        let ebr = if i == 0 { ext_start } else { l.ebr_lba.unwrap_or(c).max(c) };
                        let new = self.align_up(l.start_lba.max(ebr + 1));
                        self.place(l, new);
                        placement.ebrs.push((ebr, l));
                        c = new + l.sectors;
                    }
                    let ext_end = (start + ext.sectors() as u64 + (ext_start - start)).max(c);
                    placement.new_extended = Some((ext_start, ext_end - ext_start));
                    cursor = ext_end;
                }
            }
        }
        self.needed_sectors = cursor.0;
        placement
    }

    /// The MBR: every entry at its new place, CHS in the table's geometry.
    fn patch_mbr(
        &mut self,
        mbr0: &[u8; 512],
        entries: &[MbrEntry],
        placement: &MbrPlacement<'_>,
        geometry: BiosGeometry,
    ) -> Result<()> {
        let image = self.map.image;
        let mut new_mbr = *mbr0;
        for (slot, e) in entries.iter().enumerate() {
            if e.is_empty() {
                continue;
            }
            let entry_offset = (mbr::TABLE_OFFSET + slot * mbr::ENTRY_SIZE) as u64;
            let placed = if Some(slot) == placement.extended {
                let (start, len) = placement.new_extended.unwrap_or((Lba(e.start_lba() as u64), e.sectors() as u64));
                if (start, len) != (Lba(e.start_lba() as u64), e.sectors() as u64) {
                    self.changes.push(format!(
                        "MBR entry {}: extended partition sectors {}+{} -> {start}+{len}",
                        slot + 1,
                        e.start_lba(),
                        e.sectors()
                    ));
                }
                e.relocated(
                    mbr_field(image, start.0, "the extended partition")?,
                    mbr_field(image, len, "the extended partition's length")?,
                    geometry,
                )
            } else {
                let Some(m) = self
                    .map
                    .layout
                    .partitions
                    .iter()
                    .find(|p| p.entry_offset == Some(entry_offset))
                    .and_then(|p| self.moves.iter().find(|m| m.index == p.index))
                else {
                    continue;
                };
                if m.moved() {
                    self.changes.push(format!(
                        "MBR entry {}: partition {} start sector {} -> {}",
                        slot + 1,
                        m.index,
                        m.old_start_lba,
                        m.new_start_lba
                    ));
                }
                e.relocated(mbr_field(image, m.new_start_lba.0, "a partition")?, e.sectors(), geometry)
            };
            new_mbr[entry_offset as usize..entry_offset as usize + mbr::ENTRY_SIZE].copy_from_slice(&placed.raw);
        }
        self.patches.push(DiskWrite { offset: 0, bytes: new_mbr.to_vec(), what: "MBR partition table".into() });
        Ok(())
    }

    /// Each EBR: its logical relative to itself, the link relative to the extended start.
    fn patch_ebrs(&mut self, placement: &MbrPlacement<'_>, geometry: BiosGeometry) -> Result<()> {
        let image = self.map.image;
        let ext_start = placement.new_extended.map_or(Lba(0), |(s, _)| s);
        for (i, &(ebr, l)) in placement.ebrs.iter().enumerate() {
            let old = sector(image, l.ebr_lba.unwrap_or(ebr), self.ss)?;
            let mut new = old;
            let m = self
                .moves
                .iter()
                .find(|m| m.index == l.index)
                .cloned()
                .ok_or_else(|| Error::internal(format!("no place planned for partition {}", l.index)))?;
            let own = MbrEntry::from_sector(&old, 0).placed(
                m.new_start_lba.0,
                mbr_field(image, m.new_start_lba - ebr, "a logical partition")?,
                l.sectors as u32,
                geometry,
            );
            new[mbr::TABLE_OFFSET..mbr::TABLE_OFFSET + mbr::ENTRY_SIZE].copy_from_slice(&own.raw);
            let link_at = mbr::TABLE_OFFSET + mbr::ENTRY_SIZE;
            match placement.ebrs.get(i + 1) {
                Some(&(next_ebr, next)) => {
                    let next_move =
                        self.moves.iter().find(|m| m.index == next.index).map_or(next.start_lba, |m| m.new_start_lba);
                    let mut template = MbrEntry::from_sector(&old, 1);
                    if template.is_empty() {
                        template.set_kind(mbr::EXTENDED);
                    }
                    let link = template.placed(
                        next_ebr.0,
                        mbr_field(image, next_ebr - ext_start, "an EBR link")?,
                        mbr_field(image, next_move + next.sectors - next_ebr, "an EBR link's length")?,
                        geometry,
                    );
                    new[link_at..link_at + mbr::ENTRY_SIZE].copy_from_slice(&link.raw);
                }
                None => new[link_at..link_at + mbr::ENTRY_SIZE].fill(0),
            }
            self.changes.push(format!(
                "EBR of partition {} at sector {ebr} (was {}): logical start {} -> {}",
                l.index,
                l.ebr_lba.unwrap_or(ebr),
                m.old_start_lba,
                m.new_start_lba
            ));
            self.patches.push(DiskWrite {
                offset: ebr.offset(self.ss),
                bytes: new.to_vec(),
                what: format!("EBR of partition {}", l.index),
            });
        }
        Ok(())
    }

    /// Where the GPT partitions go; returns the table for [`Self::plan_gpt_patches`] (which
    /// needs the disk size the moves lead to).
    fn plan_gpt_moves(&mut self) -> Result<GptTable> {
        let image = self.map.image;
        let table = self.map.layout.gpt_table.clone().ok_or_else(|| {
            Error::corrupt(
                image.source(),
                "primary GPT header",
                Space::Disk,
                Lba(1).offset(self.ss),
                "missing, with a bad CRC or a bad entry array: realigning needs a valid primary GPT",
            )
        })?;
        let mut parts: Vec<&Partition> = self.map.layout.partitions.iter().collect();
        parts.sort_by_key(|p| p.start_lba);
        let mut cursor = table.header.first_usable_lba;
        for p in parts {
            let new = self.align_up(p.start_lba.max(cursor));
            self.place(p, new);
            cursor = new + p.sectors;
        }
        self.needed_sectors = cursor.0 + table.array_sectors() + 1;
        Ok(table)
    }

    /// Both GPT headers and entry arrays rewritten for the moves and `disk_size`, with their
    /// CRCs (and the protective MBR when the disk grows).
    fn plan_gpt_patches(&mut self, mut table: GptTable, disk_size: u64) -> Result<()> {
        let grows = disk_size > self.map.image.len();
        if !self.moves.iter().any(Move::moved) && !grows {
            return Ok(());
        }
        let old_last = Lba::last_of(self.map.image.len(), self.ss).unwrap_or_default();
        self.vacated.push(((old_last - table.array_sectors()).offset(self.ss), (old_last + 1).offset(self.ss)));
        for m in self.moves.iter().filter(|m| m.moved()) {
            self.vacated.push((m.old_start_lba.offset(self.ss), (m.old_start_lba + m.sectors).offset(self.ss)));
            table.move_entry(m.index, m.new_start_lba, m.sectors);
            self.changes.push(format!(
                "GPT entry of partition {}: first sector {} -> {}",
                m.index, m.old_start_lba, m.new_start_lba
            ));
        }
        let last = Lba::last_of(disk_size, self.ss).unwrap_or_default();
        self.changes.push(format!("GPT headers and entry arrays rewritten (backup header at sector {last}, CRCs)"));
        for (offset, bytes, what) in table.encode(last) {
            self.patches.push(DiskWrite { offset, bytes, what: what.into() });
        }
        if grows {
            let sector0: [u8; 512] = self
                .map
                .layout
                .sector0
                .as_slice()
                .try_into()
                .map_err(|_| Error::internal("the partition table was read without its first sector"))?;
            self.changes.push(format!("protective MBR: covers {last} sectors"));
            self.patches.push(DiskWrite {
                offset: 0,
                bytes: mbr::protective_for(&sector0, last.0).to_vec(),
                what: "protective MBR".into(),
            });
        }
        Ok(())
    }

    /// The hidden-sectors field of each moved volume's boot sector and its backup.
    fn plan_boot_sectors(&mut self) -> Result<()> {
        let image = self.map.image;
        for m in self.moves.clone().iter().filter(|m| m.moved()) {
            let boot = sector(image, m.old_start_lba, self.ss)?;
            let Some(fs) = identify(&boot) else { continue };
            if !fs.has_hidden_sectors() {
                self.impossible
                    .push(format!("partition {}: the exFAT PartitionOffset field is left as it was", m.index));
                continue;
            }
            let Ok(hidden) = u32::try_from(m.new_start_lba.0) else {
                self.impossible.push(format!("partition {}: hidden sectors cannot hold {}", m.index, m.new_start_lba));
                continue;
            };
            let backup = backup_sector(&boot, fs);
            let mut sectors = vec![(0u64, "boot sector")];
            if let Some(b) = backup.filter(|&b| b < m.sectors) {
                sectors.push((b, "backup boot sector"));
            }
            for (rel, what) in sectors {
                let mut s = sector(image, m.old_start_lba + rel, self.ss)?;
                if identify(&s) != Some(fs) {
                    continue;
                }
                set_hidden_sectors(&mut s, hidden);
                let what = format!(
                    "partition {} {} {what}: hidden sectors {} -> {hidden}",
                    m.index,
                    fs.name(),
                    m.old_start_lba
                );
                self.changes.push(what.clone());
                self.patches.push(DiskWrite {
                    offset: (m.new_start_lba + rel).offset(self.ss),
                    bytes: s.to_vec(),
                    what,
                });
            }
        }
        Ok(())
    }

    /// Where an input disk offset lands.
    fn new_offset(&self, old: u64) -> u64 {
        self.moves
            .iter()
            .find(|m| (m.old_start_lba.offset(self.ss)..(m.old_start_lba + m.sectors).offset(self.ss)).contains(&old))
            .map_or(old, |m| old - m.old_start_lba.offset(self.ss) + m.new_start_lba.offset(self.ss))
    }

    /// MountedDevices and BCD device elements that name a moved MBR partition by (disk
    /// signature, byte offset), rewritten through the registry engine.
    fn plan_registry(&mut self) -> Result<()> {
        let image = self.map.image;
        let signature = self.map.layout.mbr.as_ref().map_or(0, |m| m.disk_signature);
        let moved: Vec<(u64, u64)> = self
            .moves
            .iter()
            .filter(|m| m.moved())
            .map(|m| (m.old_start_lba.offset(self.ss), m.new_start_lba.offset(self.ss)))
            .collect();
        if moved.is_empty() {
            return Ok(());
        }
        if self.map.ntfs().any(|(_, idx)| idx.detail() != crate::ntfs::IndexDetail::Files) {
            return Err(Error::internal(
                "realignment finds the registry hives by name (an index of clusters was built)",
            ));
        }
        let volumes: Vec<u32> = self.map.ntfs().map(|(p, _)| p.index).collect();
        for partition in volumes {
            for path in std::iter::once(SYSTEM_HIVE).chain(BCD_STORES) {
                let Some(mut h) = registry::hive_at(self.map, partition, path)? else { continue };
                let logs = registry::hive_logs(self.map, &h)?;
                let name = format!("{}: partition {partition}: {}", image.source().display(), h.path);
                let mut loaded = match registry::load(Path::new(&name), std::mem::take(&mut h.bytes), logs, true) {
                    Ok(l) => l,
                    Err(e) => {
                        self.impossible.push(format!("partition {partition} {path}: {e}"));
                        continue;
                    }
                };
                let edits = if path == SYSTEM_HIVE {
                    mounted_devices_edits(&loaded.hive, signature, &moved)?
                } else {
                    bcd_edits(&loaded.hive, signature, &moved)?
                };
                if edits.is_empty() {
                    continue;
                }
                if let Some(t) = self.clock {
                    loaded.hive.set_clock(t);
                }
                for e in &edits {
                    loaded.hive.set_value(&e.key, &e.name, e.ty, &e.data)?;
                }
                let edited = registry::EditedHive::seal(&mut loaded);
                let (writes, _) =
                    registry::plan_image_write(self.map, &h, &loaded.stored, &edited.bytes, &edited.log_headers)?;
                for w in writes {
                    self.patches.push(DiskWrite {
                        offset: self.new_offset(w.offset),
                        bytes: w.bytes,
                        what: format!("partition {partition} {}", w.what),
                    });
                }
                self.changes
                    .extend(edits.into_iter().map(|e| format!("partition {partition} {}: {}", h.path, e.describe)));
            }
        }
        Ok(())
    }
}

/// A value to rewrite in a hive.
struct ValueEdit {
    key: String,
    name: String,
    ty: u32,
    data: Vec<u8>,
    describe: String,
}

/// `MountedDevices` values holding (disk signature, old offset).
fn mounted_devices_edits(hive: &Hive, signature: u32, moved: &[(u64, u64)]) -> Result<Vec<ValueEdit>> {
    let Some(key) = hive.find("MountedDevices")? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for v in hive.values(&key)? {
        let data = hive.value_data(&v)?;
        if data.len() != 12 || le32(&data, 0) != signature {
            continue;
        }
        let Some(&(old, new)) = moved.iter().find(|(old, _)| *old == le64(&data, 4)) else { continue };
        let mut d = data.clone();
        d[4..12].copy_from_slice(&new.to_le_bytes());
        out.push(ValueEdit {
            key: "MountedDevices".into(),
            name: v.name.clone(),
            ty: v.ty,
            data: d,
            describe: format!("MountedDevices\\{}: offset {old} -> {new}", v.name),
        });
    }
    Ok(out)
}

/// Rewrites every MBR partition device in a BCD element's data that names a moved partition:
/// device type 6 (partition) at `k`, byte offset at `k + 0x10`, partition style 1 (MBR) at
/// `k + 0x24`, disk signature at `k + 0x28`. Qualified devices (a ramdisk on a partition)
/// nest the same structure deeper, so every 4-byte position is tried.
fn patch_partition_devices(data: &mut [u8], signature: u32, moved: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut done = Vec::new();
    let mut k = 0;
    while k + 0x2C <= data.len() {
        if le32(data, k) == 6 && le32(data, k + 0x24) == 1 && le32(data, k + 0x28) == signature {
            let offset = le64(data, k + 0x10);
            if let Some(&(old, new)) = moved.iter().find(|(old, _)| *old == offset) {
                data[k + 0x10..k + 0x18].copy_from_slice(&new.to_le_bytes());
                done.push((old, new));
            }
        }
        k += 4;
    }
    done
}

/// BCD elements whose partition devices name a moved partition.
fn bcd_edits(hive: &Hive, signature: u32, moved: &[(u64, u64)]) -> Result<Vec<ValueEdit>> {
    let mut out = Vec::new();
    hive.walk(&hive.root()?, &mut |rel, key| {
        for v in hive.values(key)? {
            if v.ty != reg_type::BINARY {
                continue;
            }
            let mut data = hive.value_data(&v)?;
            for (old, new) in patch_partition_devices(&mut data, signature, moved) {
                out.push(ValueEdit {
                    key: rel.to_string(),
                    name: v.name.clone(),
                    ty: v.ty,
                    data: data.clone(),
                    describe: format!("BCD {rel}: partition device offset {old} -> {new}"),
                });
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// Plans moving every misaligned partition of `map`'s disk to the next multiple of
/// `boundary` bytes (none moves without a boundary), on a disk of at least `min_size` bytes
/// (a GPT's backup copy goes to the end of a grown disk). Registry edits are stamped with
/// `clock` (seconds since 1970) when given, else the current time.
pub fn plan(map: &ImageMap<'_>, boundary: Option<u64>, min_size: u64, clock: Option<u64>) -> Result<Realignment> {
    let image = map.image;
    let ss = map.layout.sector_size;
    if let Some(b) = boundary.filter(|&b| b < ss.bytes() || !b.is_multiple_of(ss.bytes())) {
        return Err(Error::unsupported(
            image.source(),
            format!("a boundary of {b} bytes is not a whole number of the disk's {ss}-byte sectors"),
        ));
    }
    let mut p = Planner {
        map,
        ss,
        boundary_sectors: boundary.map_or(1, |b| b / ss.bytes()),
        moves: Vec::new(),
        vacated: Vec::new(),
        patches: Vec::new(),
        changes: Vec::new(),
        impossible: Vec::new(),
        needed_sectors: 0,
        clock,
    };
    let old_size = image.len();
    let disk_size = match map.layout.scheme {
        Scheme::Mbr => {
            p.plan_mbr()?;
            grown(old_size, ss.bytes_of(p.needed_sectors)).max(min_size)
        }
        Scheme::Gpt => {
            let table = p.plan_gpt_moves()?;
            let size = grown(old_size, ss.bytes_of(p.needed_sectors)).max(min_size);
            p.plan_gpt_patches(table, size)?;
            size
        }
        _ if boundary.is_none() => old_size.max(min_size),
        Scheme::Volume => {
            return Err(Error::unsupported(
                image.source(),
                "the disk is one volume without a partition table: there is nothing to move",
            ));
        }
        Scheme::None => return Err(Error::unsupported(image.source(), "the disk has no partition table to realign")),
    };
    p.plan_boot_sectors()?;
    if map.layout.scheme == Scheme::Mbr {
        p.plan_registry()?;
    }
    let mut segments = vec![Segment { start: 0, end: old_size.min(disk_size), source: Some(0) }];
    if disk_size > old_size {
        segments.push(Segment { start: old_size, end: disk_size, source: None });
    }
    for &(a, b) in &p.vacated {
        overlay(&mut segments, a, b.min(disk_size), None);
    }
    for m in p.moves.iter().filter(|m| m.moved()) {
        overlay(
            &mut segments,
            m.new_start_lba.offset(ss),
            (m.new_start_lba + m.sectors).offset(ss),
            Some(m.old_start_lba.offset(ss)),
        );
    }
    let mut patches = p.patches;
    patches.sort_by_key(|w| w.offset);
    Ok(Realignment {
        boundary,
        disk_size,
        moves: p.moves,
        patches,
        changes: p.changes,
        impossible: p.impossible,
        segments,
    })
}

/// The disk size: the input's, or grown (to a whole MiB) when the partitions need more.
fn grown(old_size: u64, needed: u64) -> u64 {
    if needed <= old_size { old_size } else { needed.div_ceil(1 << 20) << 20 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(segments: Vec<Segment>) -> Realignment {
        Realignment {
            boundary: Some(1 << 20),
            disk_size: segments.last().map_or(0, |s| s.end),
            moves: Vec::new(),
            patches: Vec::new(),
            changes: Vec::new(),
            impossible: Vec::new(),
            segments,
        }
    }

    #[test]
    fn a_moved_partition_reads_its_old_bytes_at_its_new_place_and_leaves_zeros_behind() {
        // A 10 MiB disk whose partition at 63 sectors (4 MiB long) moves to 1 MiB.
        let mut segments = vec![Segment { start: 0, end: 10 << 20, source: Some(0) }];
        let (old, new, len) = (63 * 512, 1 << 20, 4 << 20);
        overlay(&mut segments, old, old + len, None);
        overlay(&mut segments, new, new + len, Some(old));
        let plan = plan_of(segments);
        let pieces: Vec<_> = plan.pieces(0, 10 << 20).collect();
        assert_eq!(pieces.first(), Some(&(0, old, Some(0))), "the table sectors stay");
        assert!(pieces.contains(&(old, new, None)), "the vacated gap reads zeros: {pieces:?}");
        assert!(pieces.contains(&(new, new + len, Some(old))), "{pieces:?}");
        assert_eq!(pieces.last(), Some(&(new + len, 10 << 20, Some(new + len))), "the rest is where it was");
        let covered: u64 = pieces.iter().map(|(a, b, _)| b - a).sum();
        assert_eq!(covered, 10 << 20, "every byte has exactly one source");
    }

    #[test]
    fn a_piece_starting_inside_a_segment_reads_from_the_matching_offset() {
        let plan = plan_of(vec![Segment { start: 0, end: 4096, source: Some(1 << 20) }]);
        assert_eq!(plan.pieces(1000, 3000).collect::<Vec<_>>(), vec![(1000, 3000, Some((1 << 20) + 1000))]);
    }

    #[test]
    fn the_disk_grows_to_a_whole_mib_only_when_the_partitions_need_it() {
        assert_eq!(grown(64 << 20, 60 << 20), 64 << 20);
        assert_eq!(grown(64 << 20, (64 << 20) + 512), 65 << 20);
    }
}
