//! What `dump` shows of a VHDX: every structure before the payload, decoded and with the raw
//! bytes of its fixed part, as the file holds them once the log is replayed.

use serde::Serialize;

use crate::error::Result;
use crate::vhdx::Vhdx;
use crate::vhdx::bat::PayloadState;
use crate::vhdx::header::{HEADER_OFFSETS, VhdxHeader};
use crate::vhdx::metadata::{self, DiskParameters, MetadataEntry};
use crate::vhdx::region::{self, BAT_REGION, METADATA_REGION, REGION_TABLE_OFFSETS, RegionEntry};

/// Bytes of a header that hold fields (the rest of its 4 KiB is reserved).
const HEADER_FIELDS: usize = 80;

/// One of the two header slots.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HeaderSlot {
    pub offset: u64,
    /// Whether this slot holds the header in use.
    pub current: bool,
    /// Why the slot is not valid, if so.
    pub problem: Option<String>,
    pub header: Option<VhdxHeader>,
    /// The raw fields (first 80 bytes).
    #[serde(skip)]
    pub raw: Vec<u8>,
}

/// One region table entry, with the region's name when the specification defines it.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NamedRegion {
    pub name: Option<&'static str>,
    #[serde(flatten)]
    pub entry: RegionEntry,
}

/// One metadata item, with its name when it is a system item.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NamedItem {
    pub name: Option<&'static str>,
    #[serde(flatten)]
    pub entry: MetadataEntry,
}

/// The log as the header describes it, and what was replayed from it.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LogState {
    pub offset: u64,
    pub length: u32,
    /// Entries of the active sequence (0 when the header names no log).
    pub pending_entries: usize,
    /// The sequence number of the active sequence's last entry.
    pub sequence: Option<u64>,
}

/// How many payload blocks are in one state.
#[derive(Clone, Copy, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StateCount {
    pub state: PayloadState,
    pub blocks: u64,
}

/// The BAT's shape and contents in counts.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BatSummary {
    pub offset: u64,
    pub entries: u64,
    pub chunk_ratio: u64,
    pub payload_blocks: u64,
    /// Sector bitmap blocks present.
    pub sector_bitmap_blocks: u64,
    pub states: Vec<StateCount>,
    /// Payload blocks whose entry is broken.
    pub broken: u64,
}

/// Everything before the payload.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VhdxSummary {
    /// The creator string of the file type identifier.
    pub creator: String,
    /// The two slots, in file order.
    pub headers: Vec<HeaderSlot>,
    /// Which copy of the region table is used (1 or 2), and where it is.
    pub region_table_copy: u8,
    pub region_table_offset: u64,
    pub regions: Vec<NamedRegion>,
    /// The raw table header and entries.
    #[serde(skip)]
    pub region_table_raw: Vec<u8>,
    pub metadata_offset: u64,
    pub metadata: Vec<NamedItem>,
    /// The raw table header and entries.
    #[serde(skip)]
    pub metadata_table_raw: Vec<u8>,
    pub parameters: DiskParameters,
    pub log: LogState,
    pub bat: BatSummary,
}

impl Vhdx {
    /// Every structure before the payload, for `dump`.
    pub fn summary(&self) -> Result<VhdxSummary> {
        let mut headers = Vec::with_capacity(2);
        for (i, slot) in self.headers.iter().enumerate() {
            let mut raw = vec![0u8; HEADER_FIELDS];
            self.file.read_exact_at(HEADER_OFFSETS[i], &mut raw, "VHDX header")?;
            headers.push(HeaderSlot {
                offset: HEADER_OFFSETS[i],
                current: slot.as_ref().is_ok_and(|h| h.slot == self.header.slot),
                problem: slot.as_ref().err().cloned(),
                header: slot.as_ref().ok().cloned(),
                raw,
            });
        }
        let region_table_offset = REGION_TABLE_OFFSETS[self.region_copy as usize - 1];
        let mut region_table_raw = vec![0u8; 16 + 32 * self.regions.entries.len()];
        self.read_meta(region_table_offset, &mut region_table_raw, "VHDX region table")?;
        let meta = self.regions.find(METADATA_REGION).map_or(0, |r| r.file_offset);
        let mut metadata_table_raw = vec![0u8; 32 + 32 * self.metadata.len()];
        self.read_meta(meta, &mut metadata_table_raw, "VHDX metadata table")?;
        Ok(VhdxSummary {
            creator: self.creator.clone(),
            headers,
            region_table_copy: self.region_copy,
            region_table_offset,
            regions: self
                .regions
                .entries
                .iter()
                .map(|e| NamedRegion { name: region::region_name(e.guid), entry: *e })
                .collect(),
            region_table_raw,
            metadata_offset: meta,
            metadata: self
                .metadata
                .iter()
                .map(|e| NamedItem { name: metadata::item_name(e.item), entry: *e })
                .collect(),
            metadata_table_raw,
            parameters: self.params.clone(),
            log: LogState {
                offset: self.header.log_offset,
                length: self.header.log_length,
                pending_entries: self.replay.as_ref().map_or(0, |r| r.entries),
                sequence: self.replay.as_ref().map(|r| r.sequence),
            },
            bat: self.bat_summary(),
        })
    }

    /// Counts of the BAT's payload states.
    fn bat_summary(&self) -> BatSummary {
        let states = self.bat.state_counts().into_iter().map(|(state, blocks)| StateCount { state, blocks }).collect();
        let chunks = self.bat.payload_blocks().div_ceil(self.bat.chunk_ratio());
        BatSummary {
            offset: self.regions.find(BAT_REGION).map_or(0, |r| r.file_offset),
            entries: self.bat.entries().len() as u64,
            chunk_ratio: self.bat.chunk_ratio(),
            payload_blocks: self.bat.payload_blocks(),
            sector_bitmap_blocks: (0..chunks).filter(|&c| self.bat.bitmap(c).is_some()).count() as u64,
            states,
            broken: self.broken_blocks.len() as u64,
        }
    }

    /// The sector bits of block `k` as the file holds them (one bit per logical sector, least
    /// significant first), for a partially present block.
    pub fn raw_sector_bits(&self, k: u64) -> Result<Option<Vec<u8>>> {
        match self.bat.payload(k) {
            Ok((PayloadState::PartiallyPresent, _)) if !self.broken_blocks.contains(&k) => {
                Ok(Some(self.block_bits(k)?.to_vec()))
            }
            _ => Ok(None),
        }
    }
}
