//! Reading a disk's partition table: bare volume, MBR with its EBR chain, or GPT.

use std::collections::HashSet;
use std::path::Path;

use serde::Serialize;

use crate::bytes::Guid;
use crate::disk::FileSystem;
use crate::disk::boot_sector::identify;
use crate::disk::gpt::{self, GptEntry, GptHeader, GptTable};
use crate::disk::lba::{Lba, SectorSize};
use crate::disk::mbr::{self, MbrEntry};
use crate::disk::partition::{Partition, Scheme};
use crate::error::{Result, Space};
use crate::vhd::device::BlockDevice;
use crate::vhd::finding::Finding;

/// Most logical partitions followed in an EBR chain.
pub const MAX_LOGICAL: usize = 256;

/// One MBR or EBR table slot, raw and decoded.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TableSlot {
    /// Slot 1-4 of its sector, numbered as `fdisk` and the tables' own documentation do.
    pub slot: usize,
    /// Disk offset of the 16 bytes.
    pub offset: u64,
    /// The 16 bytes in hex.
    pub hex: String,
    pub boot_indicator: u8,
    #[serde(rename = "type")]
    pub kind: u8,
    pub type_name: &'static str,
    pub first_chs: mbr::Chs,
    pub last_chs: mbr::Chs,
    pub start_lba: u32,
    pub sectors: u32,
}

impl TableSlot {
    /// The entry at index `i` (0-3) of the sector at `sector_lba`.
    fn new(entry: &MbrEntry, i: usize, sector_lba: Lba, ss: SectorSize) -> Self {
        TableSlot {
            slot: i + 1,
            offset: sector_lba.offset(ss) + (mbr::TABLE_OFFSET + i * mbr::ENTRY_SIZE) as u64,
            hex: entry.hex(),
            boot_indicator: entry.boot_indicator(),
            kind: entry.kind(),
            type_name: mbr::type_name(entry.kind()),
            first_chs: entry.first_chs(),
            last_chs: entry.last_chs(),
            start_lba: entry.start_lba(),
            sectors: entry.sectors(),
        }
    }
}

/// An extended boot record in the chain.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Ebr {
    pub lba: Lba,
    pub entries: Vec<TableSlot>,
}

/// The MBR as found on disk.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MbrInfo {
    /// The 32-bit disk signature at offset 440, by which Windows names the disk in
    /// `MountedDevices` and BCD.
    pub disk_signature: u32,
    pub entries: Vec<TableSlot>,
    pub ebrs: Vec<Ebr>,
}

/// The GPT as found on disk.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct GptInfo {
    pub primary: Option<GptHeader>,
    pub primary_entries_crc_valid: bool,
    pub backup: Option<GptHeader>,
    pub backup_entries_crc_valid: bool,
    /// Which copy the partitions were taken from: "primary" or "backup".
    pub used: &'static str,
}

/// Everything the partition layer knows about a disk.
#[derive(Clone, Debug, Default, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DiskLayout {
    /// How the disk is partitioned.
    pub scheme: Scheme,
    /// Bytes per sector: the device's, or 4096 for a raw 4Kn disk whose GPT header is found
    /// at byte 4096.
    pub sector_size: SectorSize,
    #[doc(hidden)]
    /// The disk's first sector as read (the MBR, or a volume's boot sector).
    #[serde(skip)]
    pub sector0: Vec<u8>,
    #[doc(hidden)]
    /// The primary GPT with its entry array, when it is valid (for rewriting it).
    #[serde(skip)]
    pub gpt_table: Option<GptTable>,
    #[doc(hidden)]
    /// The MBR and its EBR chain as found, when there is one.
    pub mbr: Option<MbrInfo>,
    #[doc(hidden)]
    /// Both GPT headers as found, when there is a GPT.
    pub gpt: Option<GptInfo>,
    /// The partitions, by index.
    pub partitions: Vec<Partition>,
    /// Problems of the tables (bad CRCs, loops, overlaps, a misplaced backup GPT).
    pub findings: Vec<Finding>,
}

impl DiskLayout {
    /// Reads the partition table of `disk`.
    pub fn read<D: BlockDevice + ?Sized>(disk: &D) -> Result<Self> {
        let mut layout = DiskLayout { scheme: Scheme::None, sector_size: disk.sector_size(), ..DiskLayout::default() };
        if disk.len() < 512 {
            return Ok(layout);
        }
        let mut sector0 = [0u8; 512];
        disk.read_at(0, &mut sector0)?;
        layout.sector0 = sector0.to_vec();
        layout.sector_size = sector_size_of(disk, &sector0)?;
        let ss = layout.sector_size;
        let bare = match identify(&sector0) {
            Some(_) => Some(FileSystem::detect(disk)?),
            // A volume without a boot sector signature (ext4, XFS, LUKS...) made into a disk.
            None if sector0[510..512] != [0x55, 0xAA] => {
                Some(FileSystem::detect(disk)?).filter(|fs| *fs != FileSystem::Unknown)
            }
            None => None,
        };
        if let Some(fs) = bare {
            layout.scheme = Scheme::Volume;
            layout.partitions.push(Partition {
                index: 1,
                scheme: Scheme::Volume,
                mbr_type: None,
                type_guid: None,
                type_name: format!("{} volume", fs.name()),
                bootable: false,
                start_lba: Lba(0),
                sectors: disk.len() / ss.bytes(),
                logical: false,
                name: None,
                unique_guid: None,
                entry_offset: None,
                ebr_lba: None,
                sector_size: ss,
            });
            return Ok(layout);
        }
        let has_mbr = sector0[510..512] == [0x55, 0xAA];
        let entries: Vec<MbrEntry> = (0..4).map(|i| MbrEntry::from_sector(&sector0, i)).collect();
        let protective = has_mbr && entries.iter().any(|e| e.kind() == 0xEE);
        if has_mbr {
            layout.mbr = Some(MbrInfo {
                disk_signature: crate::bytes::le32(&sector0, mbr::DISK_SIGNATURE_OFFSET),
                entries: entries.iter().enumerate().map(|(i, e)| TableSlot::new(e, i, Lba(0), ss)).collect(),
                ebrs: Vec::new(),
            });
        }
        if protective || !has_mbr {
            if layout.read_gpt(disk)? {
                return Ok(layout);
            }
            if !has_mbr {
                return Ok(layout);
            }
        }
        layout.scheme = Scheme::Mbr;
        layout.read_mbr(disk, &entries)?;
        layout.check_bounds(disk);
        Ok(layout)
    }

    fn finding(&mut self, file: &Path, structure: impl Into<String>, offset: u64, problem: impl Into<String>) {
        self.findings.push(Finding::new(file, structure, Space::Disk, offset, problem));
    }

    /// Primary partitions and the EBR chain of the extended one.
    fn read_mbr<D: BlockDevice + ?Sized>(&mut self, disk: &D, entries: &[MbrEntry]) -> Result<()> {
        let mut extended = None;
        for (slot, e) in entries.iter().enumerate() {
            if e.is_empty() {
                continue;
            }
            if e.is_extended() {
                if extended.is_none() {
                    extended = Some(Lba(e.start_lba() as u64));
                }
                continue;
            }
            self.partitions.push(mbr_partition(
                e,
                slot as u32 + 1,
                Lba(e.start_lba() as u64),
                Lba(0),
                None,
                self.sector_size,
            ));
        }
        if let Some(ext_start) = extended {
            self.read_ebr_chain(disk, ext_start)?;
        }
        Ok(())
    }

    /// Follows the EBR chain, guarding against loops and runaway chains.
    fn read_ebr_chain<D: BlockDevice + ?Sized>(&mut self, disk: &D, ext_start: Lba) -> Result<()> {
        let ss = self.sector_size;
        let disk_sectors = disk.len() / ss.bytes();
        let mut seen = HashSet::new();
        let mut ebr_lba = ext_start;
        let mut ebrs = Vec::new();
        for index in 5..5 + MAX_LOGICAL as u32 {
            if ebr_lba.0 >= disk_sectors {
                self.finding(disk.source(), "EBR", ebr_lba.offset(ss), "lies past the end of the disk");
                break;
            }
            if !seen.insert(ebr_lba) {
                self.finding(disk.source(), "EBR chain", ebr_lba.offset(ss), "loops back to an EBR already read");
                break;
            }
            let mut sector = [0u8; 512];
            disk.read_at(ebr_lba.offset(ss), &mut sector)?;
            if sector[510..512] != [0x55, 0xAA] {
                self.finding(disk.source(), "EBR", ebr_lba.offset(ss), "has no 55AA signature");
                break;
            }
            let here = MbrEntry::from_sector(&sector, 0);
            let next = MbrEntry::from_sector(&sector, 1);
            ebrs.push(Ebr {
                lba: ebr_lba,
                entries: (0..4)
                    .map(|i| TableSlot::new(&MbrEntry::from_sector(&sector, i), i, ebr_lba, ss))
                    .filter(|s| s.kind != 0 || s.sectors != 0)
                    .collect(),
            });
            if !here.is_empty() {
                self.partitions.push(mbr_partition(
                    &here,
                    index,
                    ebr_lba + here.start_lba() as u64,
                    ebr_lba,
                    Some(ebr_lba),
                    ss,
                ));
            }
            if next.is_empty() {
                break;
            }
            ebr_lba = ext_start + next.start_lba() as u64;
        }
        if let Some(m) = self.mbr.as_mut() {
            m.ebrs = ebrs;
        }
        Ok(())
    }

    /// Reads the GPT (primary, else backup). Returns false when neither copy is usable.
    fn read_gpt<D: BlockDevice + ?Sized>(&mut self, disk: &D) -> Result<bool> {
        let ss = self.sector_size;
        let disk_sectors = disk.len() / ss.bytes();
        if disk_sectors < 2 {
            return Ok(false);
        }
        let mut sector = [0u8; 512];
        disk.read_at(Lba(1).offset(ss), &mut sector)?;
        let primary_sector = sector;
        let primary = GptHeader::parse(&sector);
        let primary_read = match &primary {
            Some(h) => self.gpt_entries(disk, h, "primary")?,
            None => None,
        };
        let primary_entries = primary_read.as_ref().map(|(e, _)| e.clone());
        let backup_lba = primary.as_ref().map_or(Lba(disk_sectors.saturating_sub(1)), |h| h.backup_lba);
        let backup = if backup_lba > Lba(1) && backup_lba.0 < disk_sectors {
            disk.read_at(backup_lba.offset(ss), &mut sector)?;
            GptHeader::parse(&sector)
        } else {
            None
        };
        let backup_entries = match &backup {
            Some(h) => self.gpt_entries(disk, h, "backup")?.map(|(e, _)| e),
            None => None,
        };
        if primary.is_none() && backup.is_none() {
            return Ok(false);
        }
        let d = disk.source();
        if let Some(h) = primary.as_ref().filter(|h| h.backup_lba.0 != disk_sectors - 1) {
            self.finding(
                d,
                "GPT header",
                Lba(1).offset(ss) + 32,
                format!(
                    "names sector {} for the backup header, but the disk's last sector is {} (the disk was resized \
                     without moving the backup table)",
                    h.backup_lba,
                    disk_sectors - 1
                ),
            );
        }
        match (&primary, &backup) {
            (Some(_), None) => self.finding(d, "GPT backup header", backup_lba.offset(ss), "missing or unreadable"),
            (None, Some(_)) => {
                self.finding(d, "GPT header", Lba(1).offset(ss), "missing; partitions taken from the backup")
            }
            (Some(p), Some(b)) if p.entries_crc != b.entries_crc => self.finding(
                d,
                "GPT backup header",
                backup_lba.offset(ss),
                "its entry array CRC differs from the primary's",
            ),
            _ => {}
        }
        let primary_ok = primary.as_ref().is_some_and(GptHeader::header_crc_valid) && primary_entries.is_some();
        if let (true, Some(h), Some((_, array))) = (primary_ok, &primary, primary_read) {
            self.gpt_table = Some(GptTable::new(primary_sector, h.clone(), array, ss));
        }
        let (used, entries) = if primary_ok {
            ("primary", primary_entries.clone().unwrap_or_default())
        } else if backup.as_ref().is_some_and(GptHeader::header_crc_valid) && backup_entries.is_some() {
            ("backup", backup_entries.clone().unwrap_or_default())
        } else {
            ("primary", primary_entries.clone().or(backup_entries.clone()).unwrap_or_default())
        };
        self.scheme = Scheme::Gpt;
        self.gpt = Some(GptInfo {
            primary_entries_crc_valid: primary_entries.is_some(),
            backup_entries_crc_valid: backup_entries.is_some(),
            primary,
            backup,
            used,
        });
        let entry_base =
            self.gpt.as_ref().and_then(|g| if used == "primary" { g.primary.as_ref() } else { g.backup.as_ref() });
        let (array_at, entry_size) =
            entry_base.map_or((Lba(2).offset(ss), 128), |h| (h.entries_lba.offset(ss), h.entry_size as u64));
        for e in entries {
            let sectors = (e.last_lba.0 + 1).saturating_sub(e.first_lba.0);
            self.partitions.push(Partition {
                index: e.index,
                scheme: Scheme::Gpt,
                mbr_type: None,
                type_guid: Some(Guid(e.type_guid)),
                type_name: gpt::type_name(&e.type_guid).to_string(),
                bootable: e.attributes & 0x4 != 0,
                start_lba: e.first_lba,
                sectors,
                logical: false,
                name: Some(e.name.clone()),
                unique_guid: Some(Guid(e.unique_guid)),
                entry_offset: Some(array_at + (e.index as u64 - 1) * entry_size),
                ebr_lba: None,
                sector_size: ss,
            });
        }
        self.check_bounds(disk);
        Ok(true)
    }

    /// Reads and CRC-checks the entry array `h` points at; `None` (with a finding) if it
    /// cannot be trusted.
    fn gpt_entries<D: BlockDevice + ?Sized>(
        &mut self,
        disk: &D,
        h: &GptHeader,
        which: &str,
    ) -> Result<Option<(Vec<GptEntry>, Vec<u8>)>> {
        let d = disk.source();
        let ss = self.sector_size;
        let at = h.current_lba.offset(ss);
        if !h.header_crc_valid() {
            self.finding(
                d,
                format!("GPT {which} header"),
                at,
                format!("CRC32 {:#010x} stored, {:#010x} computed", h.header_crc, h.computed_header_crc),
            );
        }
        let Some(bytes) = h.entry_array_bytes() else {
            self.finding(
                d,
                format!("GPT {which} header"),
                at + 80,
                format!("{} entries of {} bytes is not a sane entry array", h.entry_count, h.entry_size),
            );
            return Ok(None);
        };
        let array_at = h.entries_lba.offset(ss);
        if array_at.checked_add(bytes).is_none_or(|end| end > disk.len()) {
            self.finding(d, format!("GPT {which} header"), at + 72, "entry array lies past the end of the disk");
            return Ok(None);
        }
        let mut array = vec![0u8; bytes as usize];
        disk.read_at(array_at, &mut array)?;
        let crc = crc32fast::hash(&array);
        if crc != h.entries_crc {
            self.finding(
                d,
                format!("GPT {which} entry array"),
                array_at,
                format!("CRC32 {:#010x} stored, {crc:#010x} computed", h.entries_crc),
            );
            return Ok(None);
        }
        Ok(Some((gpt::parse_entries(&array, h.entry_size), array)))
    }

    /// Partitions that reach past the disk or overlap each other.
    fn check_bounds<D: BlockDevice + ?Sized>(&mut self, disk: &D) {
        let d = disk.source();
        let parts = self.partitions.clone();
        for p in &parts {
            if p.end() > disk.len() {
                self.finding(
                    d,
                    format!("partition {} entry", p.index),
                    p.entry_offset.unwrap_or(0),
                    format!("ends at {:#x}, past the end of the disk ({:#x})", p.end(), disk.len()),
                );
            }
        }
        let mut sorted: Vec<&Partition> = parts.iter().filter(|p| p.sectors > 0).collect();
        sorted.sort_by_key(|p| p.start_lba);
        for w in sorted.windows(2) {
            if w[1].start() < w[0].end() {
                self.finding(
                    d,
                    format!("partition {} entry", w[1].index),
                    w[1].entry_offset.unwrap_or(0),
                    format!("overlaps partition {}", w[0].index),
                );
            }
        }
    }

    /// The partition with Linux index `index`.
    pub fn partition(&self, index: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.index == index)
    }
}

/// A partition from an MBR or EBR entry whose start is `start_lba` (already made absolute).
fn mbr_partition(
    e: &MbrEntry,
    index: u32,
    start_lba: Lba,
    table_lba: Lba,
    ebr_lba: Option<Lba>,
    ss: SectorSize,
) -> Partition {
    let slot_offset = table_lba.offset(ss) + mbr::TABLE_OFFSET as u64;
    Partition {
        index,
        scheme: Scheme::Mbr,
        mbr_type: Some(e.kind()),
        type_guid: None,
        type_name: mbr::type_name(e.kind()).to_string(),
        bootable: e.bootable(),
        start_lba,
        sectors: e.sectors() as u64,
        logical: ebr_lba.is_some(),
        name: None,
        unique_guid: None,
        entry_offset: Some(if ebr_lba.is_some() {
            slot_offset
        } else {
            slot_offset + (index as u64 - 1) * mbr::ENTRY_SIZE as u64
        }),
        ebr_lba,
        sector_size: ss,
    }
}

/// The disk's sector size: the device's, except that a disk read as 512-byte sectors is a raw
/// copy of a 4Kn disk when its GPT header sits at byte 4096 instead of 512, or when its first
/// MBR partition holds no boot sector at 512-byte sector `start` but does at 4096-byte sector
/// `start`, one that says its sectors have 4096 bytes.
fn sector_size_of<D: BlockDevice + ?Sized>(disk: &D, sector0: &[u8; 512]) -> Result<SectorSize> {
    let (legacy, native) = (SectorSize::LEGACY, SectorSize::NATIVE_4K);
    if disk.sector_size() != legacy || disk.len() < 2 * native.bytes() {
        return Ok(disk.sector_size());
    }
    let mut sig = [0u8; 8];
    disk.read_at(Lba(1).offset(legacy), &mut sig)?;
    if &sig == gpt::GPT_SIGNATURE {
        return Ok(legacy);
    }
    disk.read_at(Lba(1).offset(native), &mut sig)?;
    if &sig == gpt::GPT_SIGNATURE {
        return Ok(native);
    }
    if sector0[510..512] != [0x55, 0xAA] {
        return Ok(legacy);
    }
    let Some(first) = (0..4).map(|i| MbrEntry::from_sector(sector0, i)).find(|e| !e.is_empty() && !e.is_extended())
    else {
        return Ok(legacy);
    };
    let boot_at = |ss: SectorSize| -> Result<Option<[u8; 512]>> {
        let at = Lba(first.start_lba() as u64).offset(ss);
        if at.checked_add(512).is_none_or(|end| end > disk.len()) {
            return Ok(None);
        }
        let mut b = [0u8; 512];
        disk.read_at(at, &mut b)?;
        Ok(identify(&b).map(|_| b))
    };
    if boot_at(legacy)?.is_some() {
        return Ok(legacy);
    }
    Ok(match boot_at(native)? {
        Some(b) if crate::bytes::le16(&b, 11) == 4096 => native,
        _ => legacy,
    })
}
