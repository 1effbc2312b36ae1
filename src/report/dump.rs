//! The `vhdinspect dump` report: every structure of the container and the disk, decoded, with
//! raw bytes where a person diagnosing an image needs them.

use serde::Serialize;

use crate::disk::Partition;
use crate::disk::layout::{DiskLayout, TableSlot};
use crate::disk::volume::{self, VolumeInfo};
use crate::error::Result;
use crate::report::table::{Section, human_bytes};
use crate::vhd::bat::table_bytes;
use crate::vhd::device::BlockDevice;
use crate::vhd::finding::Finding;
use crate::vhd::footer::{Footer, uuid_text, vhd_timestamp_text};
use crate::vhd::geometry::Geometry;
use crate::vhd::image::DiskImage;
use crate::vhd::parent::DecodedLocator;
use crate::vhd::sparse::SparseVhd;
use crate::vhdx::Vhdx;
use crate::vhdx::bat::PayloadState;
use crate::vhdx::summary::VhdxSummary;

/// The decoded footer.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FooterReport {
    pub offset: u64,
    pub features: u32,
    pub format_version: String,
    /// File offset of the next structure (the dynamic header; the BAT in a dynamic header);
    /// null where the format writes all ones for "none".
    pub data_offset: Option<u64>,
    pub timestamp: u32,
    pub timestamp_utc: String,
    pub creator_app: String,
    pub creator_version: String,
    pub creator_host_os: String,
    pub original_size: u64,
    pub current_size: u64,
    pub geometry: Geometry,
    pub disk_type: &'static str,
    pub checksum: u32,
    pub checksum_computed: u32,
    pub checksum_valid: bool,
    pub uuid: String,
    pub saved_state: bool,
    pub hex: String,
}

impl FooterReport {
    fn new(f: &Footer, offset: u64) -> Self {
        FooterReport {
            offset,
            features: f.features,
            format_version: format!("{}.{}", f.format_version >> 16, f.format_version & 0xFFFF),
            data_offset: Some(f.data_offset).filter(|&o| o != u64::MAX),
            timestamp: f.timestamp,
            timestamp_utc: vhd_timestamp_text(f.timestamp),
            creator_app: f.creator_app_text(),
            creator_version: format!("{}.{}", f.creator_version >> 16, f.creator_version & 0xFFFF),
            creator_host_os: f.creator_host_os_text(),
            original_size: f.original_size,
            current_size: f.current_size,
            geometry: f.geometry,
            disk_type: f.disk_type.name(),
            checksum: f.checksum,
            checksum_computed: f.computed_checksum(),
            checksum_valid: f.checksum_valid(),
            uuid: uuid_text(&f.uuid),
            saved_state: f.saved_state != 0,
            hex: hex::encode(&f.raw()[..]),
        }
    }
}

/// The three sizes a VHD states, and whether they agree.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SizesReport {
    /// Footer current_size: the disk length vhdkit (and Windows, Azure) use.
    pub current_size: u64,
    /// Cylinders x heads x sectors x 512.
    pub chs_size: u64,
    /// BAT entries x block size (dynamic and differencing only).
    pub bat_size: Option<u64>,
    /// The size qemu would report: CHS for creator `vpc `/`qemu`, else current_size.
    pub qemu_size: u64,
    pub creator_app: String,
    /// Whether current_size is a whole number of MiB (Azure requires it).
    pub whole_mib: bool,
    /// Each disagreement in words.
    pub notes: Vec<String>,
}

impl SizesReport {
    fn new(f: &Footer, sparse: Option<&SparseVhd>) -> Self {
        let chs_size = f.geometry.capacity();
        let bat_size = sparse.map(|s| s.header().max_table_entries as u64 * s.block_size());
        let qemu_size = if f.size_from_chs_in_qemu() { chs_size } else { f.current_size };
        let mut notes = Vec::new();
        if chs_size != f.current_size {
            notes.push(format!(
                "CHS geometry covers {chs_size} bytes, current_size is {} ({} the spec's geometry for that size)",
                f.current_size,
                if Geometry::for_size(f.current_size) == f.geometry { "which is" } else { "which is not" }
            ));
        }
        if qemu_size != f.current_size {
            notes.push(format!("qemu reads {qemu_size} bytes (from CHS, creator {:?})", f.creator_app_text()));
        }
        if let Some(b) = bat_size.filter(|&b| b < f.current_size) {
            notes.push(format!("the BAT covers only {b} bytes"));
        }
        if f.original_size != f.current_size {
            notes.push(format!("original_size {} differs (the disk was resized)", f.original_size));
        }
        SizesReport {
            current_size: f.current_size,
            chs_size,
            bat_size,
            qemu_size,
            creator_app: f.creator_app_text(),
            whole_mib: f.current_size.is_multiple_of(1 << 20),
            notes,
        }
    }
}

/// The decoded dynamic disk header.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HeaderReport {
    pub offset: u64,
    /// File offset of the next structure (the dynamic header; the BAT in a dynamic header);
    /// null where the format writes all ones for "none".
    pub data_offset: Option<u64>,
    pub table_offset: u64,
    pub header_version: String,
    pub max_table_entries: u32,
    pub block_size: u32,
    pub bitmap_size: u64,
    pub checksum: u32,
    pub checksum_computed: u32,
    pub checksum_valid: bool,
    pub parent_uuid: Option<String>,
    pub parent_timestamp: Option<String>,
    pub parent_unicode_name: Option<String>,
    pub parent_locators: Vec<DecodedLocator>,
}

/// How the parent was resolved (`path` null for images without one).
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ParentReport {
    pub path: Option<String>,
    pub resolved_by: Option<String>,
    pub format: Option<crate::vhd::ImageKind>,
}

/// One BAT entry with its block's presence count.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BlockEntry {
    #[serde(rename = "block")]
    pub index: u64,
    pub sector: u64,
    pub file_offset: u64,
    pub sectors_present: u32,
}

/// The block allocation table.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BatReport {
    pub offset: u64,
    pub entries: u32,
    pub table_bytes: u64,
    pub disk_blocks: u64,
    pub allocated_blocks: u64,
    /// Every allocated entry (with `--blocks`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks: Option<Vec<BlockEntry>>,
    /// The raw sector bitmap of one block (with `--bitmap N`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bitmap: Option<BitmapReport>,
}

/// One block's sector bitmap in hex.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BitmapReport {
    pub block: u64,
    pub allocated: bool,
    pub sectors_present: u32,
    pub hex: String,
}

/// A VHDX's structures, with the raw bytes of their fixed parts in hex.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VhdxReport {
    #[serde(flatten)]
    pub summary: VhdxSummary,
    /// The first 80 bytes of each header slot.
    pub headers_hex: Vec<String>,
    pub region_table_hex: String,
    pub metadata_table_hex: String,
    /// Every stored payload block (with `--blocks`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks: Option<Vec<VhdxBlockEntry>>,
    /// One block's sector bits (with `--bitmap N`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bitmap: Option<BitmapReport>,
}

/// One stored payload block of a VHDX.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VhdxBlockEntry {
    #[serde(rename = "block")]
    pub index: u64,
    pub state: PayloadState,
    pub file_offset: u64,
    /// Logical sectors this file holds.
    pub sectors_present: u64,
}

/// The whole dump.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DumpReport {
    pub file: String,
    pub format: crate::vhd::ImageKind,
    /// `raw`, `vhd` or `vhdx`.
    pub container: crate::vhd::image::ImageFormat,
    pub disk_size: u64,
    pub chain: Vec<String>,
    pub footer: Option<FooterReport>,
    pub sizes: Option<SizesReport>,
    pub dynamic_header: Option<HeaderReport>,
    /// The parent of a differencing image (null for any other).
    pub parent: Option<ParentReport>,
    pub bat: Option<BatReport>,
    /// A VHDX's headers, region table, metadata, log and BAT.
    pub vhdx: Option<VhdxReport>,
    pub partition_table: DiskLayout,
    pub partitions: Vec<Partition>,
    pub volumes: Vec<VolumeInfo>,
    pub findings: Vec<Finding>,
    /// Why the disk's contents (partition table, boot sectors) could not be read, if so.
    pub disk_error: Option<String>,
    /// The error behind `disk_error`, for the tool's hint.
    #[serde(skip)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub disk_failure: Option<crate::error::Error>,
}

/// What `dump` should include beyond the default.
#[derive(Clone, Copy, Default)]
pub struct DumpOptions {
    pub blocks: bool,
    pub bitmap: Option<u64>,
}

/// Builds the dump of an opened image.
pub fn build(image: &DiskImage, opts: DumpOptions) -> Result<DumpReport> {
    let sparse = image.as_sparse();
    let footer_offset = match image {
        DiskImage::Raw(_) | DiskImage::Vhdx(_) => 0,
        DiskImage::Fixed(f) => f.footer_offset(),
        DiskImage::Sparse(s) => s.data_end(),
    };
    let contents = DiskLayout::read(image).and_then(|layout| {
        let volumes = layout.partitions.iter().map(|p| volume::probe(image, p)).collect::<Result<Vec<_>>>()?;
        Ok((layout, volumes))
    });
    let (layout, volumes, disk_failure) = match contents {
        Ok((layout, volumes)) => (layout, volumes, None),
        Err(e) => (DiskLayout::default(), Vec::new(), Some(e)),
    };
    let mut findings = image.findings();
    findings.extend(layout.findings.iter().cloned());
    Ok(DumpReport {
        file: image.source().display().to_string(),
        format: image.kind(),
        container: image.format(),
        disk_size: image.len(),
        chain: image.chain().iter().map(|p| p.display().to_string()).collect(),
        footer: image.footer().map(|f| FooterReport::new(f, footer_offset)),
        sizes: image.footer().map(|f| SizesReport::new(f, sparse)),
        dynamic_header: sparse.map(header_report),
        parent: image.differencing().then(|| ParentReport {
            path: image.parent_resolution().map(|r| r.path.clone()),
            resolved_by: image.parent_resolution().map(|r| r.resolved_by.clone()),
            format: image.parent().map(DiskImage::kind),
        }),
        bat: sparse.map(|s| bat_report(s, opts)).transpose()?,
        vhdx: image.as_vhdx().map(|v| vhdx_report(v, opts)).transpose()?,
        partitions: layout.partitions.clone(),
        partition_table: layout,
        volumes,
        findings,
        disk_error: disk_failure.as_ref().map(ToString::to_string),
        disk_failure,
    })
}

fn header_report(s: &SparseVhd) -> HeaderReport {
    let h = s.header();
    let differencing = s.parent().is_some() || h.parent_uuid != [0; 16];
    HeaderReport {
        offset: s.header_offset(),
        data_offset: Some(h.data_offset).filter(|&o| o != u64::MAX),
        table_offset: h.table_offset,
        header_version: format!("{}.{}", h.header_version >> 16, h.header_version & 0xFFFF),
        max_table_entries: h.max_table_entries,
        block_size: h.block_size,
        bitmap_size: h.bitmap_size(),
        checksum: h.checksum,
        checksum_computed: h.computed_checksum(),
        checksum_valid: h.checksum_valid(),
        parent_uuid: differencing.then(|| uuid_text(&h.parent_uuid)),
        parent_timestamp: differencing.then(|| vhd_timestamp_text(h.parent_timestamp)),
        parent_unicode_name: differencing.then(|| h.parent_unicode_name.clone()),
        parent_locators: s.locators().to_vec(),
    }
}

fn bat_report(s: &SparseVhd, opts: DumpOptions) -> Result<BatReport> {
    let h = s.header();
    let blocks = if opts.blocks {
        Some(
            s.bat()
                .allocated()
                .map(|(index, sector)| {
                    Ok(BlockEntry {
                        index,
                        sector: sector.0 as u64,
                        file_offset: sector.offset(),
                        sectors_present: s.sectors_present(index)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        )
    } else {
        None
    };
    let bitmap = opts
        .bitmap
        .map(|block| -> Result<BitmapReport> {
            let bm = s.block_bitmap(block)?;
            Ok(BitmapReport {
                block,
                allocated: bm.is_some(),
                sectors_present: bm.as_ref().map_or(0, |b| b.count()),
                hex: bm.map(|b| hex::encode(b.encode(0))).unwrap_or_default(),
            })
        })
        .transpose()?;
    Ok(BatReport {
        offset: h.table_offset,
        entries: h.max_table_entries,
        table_bytes: table_bytes(h.max_table_entries),
        disk_blocks: s.block_count(),
        allocated_blocks: s.bat().allocated_count(),
        blocks,
        bitmap,
    })
}

fn vhdx_report(v: &Vhdx, opts: DumpOptions) -> Result<VhdxReport> {
    let summary = v.summary()?;
    let logical = v.parameters().logical_sector_size as u64;
    let bits_set = |bits: &[u8]| bits.iter().map(|b| b.count_ones() as u64).sum::<u64>();
    let blocks = if opts.blocks {
        let mut out = Vec::new();
        for (index, state, file_offset) in v.bat().stored() {
            let sectors_present = match v.raw_sector_bits(index)? {
                Some(bits) => bits_set(&bits),
                None => v.block_size() / logical,
            };
            out.push(VhdxBlockEntry { index, state, file_offset, sectors_present });
        }
        Some(out)
    } else {
        None
    };
    let bitmap = match opts.bitmap {
        Some(block) => {
            let stored = v.bat().payload(block).is_ok_and(|(s, _)| s.stored());
            let bits = v.raw_sector_bits(block)?;
            Some(BitmapReport {
                block,
                allocated: stored,
                sectors_present: match &bits {
                    Some(b) => bits_set(b) as u32,
                    None if stored => (v.block_size() / logical) as u32,
                    None => 0,
                },
                hex: bits.map(hex::encode).unwrap_or_default(),
            })
        }
        None => None,
    };
    Ok(VhdxReport {
        headers_hex: summary.headers.iter().map(|h| hex::encode(&h.raw)).collect(),
        region_table_hex: hex::encode(&summary.region_table_raw),
        metadata_table_hex: hex::encode(&summary.metadata_table_raw),
        summary,
        blocks,
        bitmap,
    })
}

/// One row per slot of a partition table sector, numbered 1-4 as `fdisk` does (`prefix`
/// names an EBR); an empty slot says so.
fn slot_rows(section: &mut Section, prefix: &str, slots: &[TableSlot]) {
    for s in slots {
        let empty = s.kind == 0 && s.start_lba == 0 && s.sectors == 0;
        section.row(vec![
            format!("{prefix}{}", s.slot),
            s.hex.as_bytes().chunks(2).map(|b| String::from_utf8_lossy(b).to_uppercase()).collect::<Vec<_>>().join(" "),
            if empty {
                "empty".to_string()
            } else {
                format!(
                    "{}type {:#04x} {} start {} sectors {} CHS {}/{}/{}-{}/{}/{}",
                    if s.boot_indicator == 0x80 { "active " } else { "" },
                    s.kind,
                    s.type_name,
                    s.start_lba,
                    s.sectors,
                    s.first_chs.cylinder,
                    s.first_chs.head,
                    s.first_chs.sector,
                    s.last_chs.cylinder,
                    s.last_chs.head,
                    s.last_chs.sector
                )
            },
        ]);
    }
}

/// Renders the dump as readable tables.
pub fn render(r: &DumpReport) -> String {
    let mut out = Vec::new();
    let mut s = Section::key_value("Image");
    s.kv("file", &r.file);
    s.kv("format", crate::report::table::image_kind(r.format, r.container));
    s.kv("disk size", format!("{} ({})", r.disk_size, human_bytes(r.disk_size)));
    s.kv("sector size", r.partition_table.sector_size.to_string());
    if r.chain.len() > 1 {
        s.kv("chain", r.chain.join(" -> "));
    }
    out.push(s.render());
    if let Some(f) = &r.footer {
        out.push(render_footer(f));
    }
    if let Some(z) = &r.sizes {
        out.push(render_sizes(z));
    }
    if let Some(h) = &r.dynamic_header {
        render_header(h, &mut out);
    }
    if let Some((parent, p)) = r.parent.as_ref().and_then(|parent| Some((parent, parent.path.as_ref()?))) {
        let mut s = Section::key_value("Parent");
        s.kv("path", p);
        s.kv("resolved by", parent.resolved_by.clone().unwrap_or_default());
        s.kv("format", parent.format.map_or("", |k| k.name()));
        out.push(s.render());
    }
    if let Some(b) = &r.bat {
        render_bat(b, &mut out);
    }
    if let Some(v) = &r.vhdx {
        render_vhdx(v, &mut out);
    }
    if let Some(e) = &r.disk_error {
        let mut s = Section::key_value("Disk contents");
        s.kv("unreadable", e);
        out.push(s.render());
    }
    render_partitions(&r.partition_table, &r.partitions, &mut out);
    out.extend(r.volumes.iter().map(render_volume));
    if !r.findings.is_empty() {
        let mut s = Section::table("Findings", &["structure", "offset", "problem"]);
        for f in &r.findings {
            s.row(vec![f.structure.clone(), format!("{} {:#x}", f.space, f.offset), f.problem.clone()]);
        }
        out.push(s.render());
    }
    out.join("\n")
}

/// The VHD footer, every field.
fn render_footer(f: &FooterReport) -> String {
    let mut s = Section::key_value(&format!("VHD footer (file offset {:#x})", f.offset));
    s.kv("disk type", f.disk_type);
    s.kv("current size", format!("{} ({})", f.current_size, human_bytes(f.current_size)));
    s.kv("original size", f.original_size.to_string());
    s.kv("geometry (C/H/S)", format!("{}/{}/{}", f.geometry.cylinders, f.geometry.heads, f.geometry.sectors_per_track));
    s.kv("creator", format!("{:?} {} on {:?}", f.creator_app, f.creator_version, f.creator_host_os));
    s.kv("timestamp", format!("{} ({})", f.timestamp_utc, f.timestamp));
    s.kv("data offset", f.data_offset.map_or("none".to_string(), |o| format!("{o:#x}")));
    s.kv("features / version", format!("{:#x} / {}", f.features, f.format_version));
    s.kv("uuid", &f.uuid);
    s.kv("saved state", f.saved_state.to_string());
    s.kv(
        "checksum",
        format!(
            "{:#010x} ({})",
            f.checksum,
            if f.checksum_valid {
                "valid".to_string()
            } else {
                format!("INVALID, computed {:#010x}", f.checksum_computed)
            }
        ),
    );
    s.render()
}

/// The sizes a disk may be taken to have, and where they disagree.
fn render_sizes(z: &SizesReport) -> String {
    let mut s = Section::key_value("Sizes");
    s.kv("current_size", z.current_size.to_string());
    s.kv("CHS product", z.chs_size.to_string());
    if let Some(b) = z.bat_size {
        s.kv("BAT x block size", b.to_string());
    }
    s.kv("qemu would read", z.qemu_size.to_string());
    s.kv("whole MiB (Azure)", z.whole_mib.to_string());
    for n in &z.notes {
        s.kv("note", n);
    }
    s.render()
}

/// The dynamic disk header and its parent locators.
fn render_header(h: &HeaderReport, out: &mut Vec<String>) {
    let mut s = Section::key_value(&format!("Dynamic disk header (file offset {:#x})", h.offset));
    s.kv("table offset", format!("{:#x}", h.table_offset));
    s.kv("max table entries", h.max_table_entries.to_string());
    s.kv("block size", format!("{} ({})", h.block_size, human_bytes(h.block_size as u64)));
    s.kv("bitmap size", h.bitmap_size.to_string());
    s.kv("version", &h.header_version);
    s.kv(
        "checksum",
        format!(
            "{:#010x} ({})",
            h.checksum,
            if h.checksum_valid {
                "valid".to_string()
            } else {
                format!("INVALID, computed {:#010x}", h.checksum_computed)
            }
        ),
    );
    if let Some(u) = &h.parent_uuid {
        s.kv("parent uuid", u);
        s.kv("parent timestamp", h.parent_timestamp.clone().unwrap_or_default());
        s.kv("parent name", h.parent_unicode_name.clone().unwrap_or_default());
    }
    out.push(s.render());
    if !h.parent_locators.is_empty() {
        let mut s = Section::table("Parent locators", &["slot", "platform", "length", "space", "data offset", "path"]);
        for l in &h.parent_locators {
            s.row(vec![
                l.slot.to_string(),
                l.platform_code.clone(),
                l.data_length.to_string(),
                l.data_space.to_string(),
                format!("{:#x}", l.data_offset),
                l.path.clone().unwrap_or_else(|| "(alias record)".into()),
            ]);
        }
        out.push(s.render());
    }
}

/// The BAT, its allocated blocks and one block's sector bitmap, when asked for.
fn render_bat(b: &BatReport, out: &mut Vec<String>) {
    let mut s = Section::key_value(&format!("Block allocation table (file offset {:#x})", b.offset));
    s.kv("entries", format!("{} ({} bytes)", b.entries, b.table_bytes));
    s.kv("disk blocks", b.disk_blocks.to_string());
    s.kv("allocated", b.allocated_blocks.to_string());
    out.push(s.render());
    if let Some(blocks) = &b.blocks {
        let mut s = Section::table("Allocated blocks", &["block", "sector", "file offset", "sectors present"]);
        for e in blocks {
            s.row(vec![
                e.index.to_string(),
                format!("{:#x}", e.sector),
                format!("{:#x}", e.file_offset),
                e.sectors_present.to_string(),
            ]);
        }
        out.push(s.render());
    }
    if let Some(bm) = &b.bitmap {
        let mut s = Section::key_value(&format!("Sector bitmap of block {}", bm.block));
        s.kv("allocated", bm.allocated.to_string());
        s.kv("sectors present", bm.sectors_present.to_string());
        for (i, chunk) in bm.hex.as_bytes().chunks(64).enumerate() {
            s.kv(&format!("{:#06x}", i * 32), String::from_utf8_lossy(chunk));
        }
        out.push(s.render());
    }
}

/// The VHDX structures, in file order.
fn render_vhdx(v: &VhdxReport, out: &mut Vec<String>) {
    let m = &v.summary;
    let mut s = Section::key_value("VHDX file type identifier (file offset 0x0)");
    s.kv("creator", &m.creator);
    out.push(s.render());
    for (slot, hex) in m.headers.iter().zip(&v.headers_hex) {
        let n = if slot.offset == m.headers[0].offset { 1 } else { 2 };
        let mut s = Section::key_value(&format!("VHDX header {n} (file offset {:#x})", slot.offset));
        s.kv(
            "state",
            match &slot.problem {
                Some(why) => format!("NOT VALID: {why}"),
                None if slot.current => "valid, in use".into(),
                None => "valid".into(),
            },
        );
        if let Some(h) = &slot.header {
            s.kv("sequence number", h.sequence_number.to_string());
            s.kv("file write guid", h.file_write_guid.to_string());
            s.kv("data write guid", h.data_write_guid.to_string());
            s.kv("log guid", if h.log_guid.is_zero() { "none (log clean)".into() } else { h.log_guid.to_string() });
            s.kv("log", format!("{} bytes at {:#x}, version {}", h.log_length, h.log_offset, h.log_version));
            s.kv("version / checksum", format!("{} / {:#010x}", h.version, h.checksum));
        }
        s.kv("bytes 0x00-0x4f", spaced_hex(hex));
        out.push(s.render());
    }
    let mut s = Section::table(
        &format!("VHDX region table (copy {}, file offset {:#x})", m.region_table_copy, m.region_table_offset),
        &["region", "guid", "file offset", "length", "required"],
    );
    for r in &m.regions {
        s.row(vec![
            r.name.unwrap_or("unknown").into(),
            r.entry.guid.to_string(),
            format!("{:#x}", r.entry.file_offset),
            human_bytes(r.entry.length as u64),
            r.entry.required.to_string(),
        ]);
    }
    out.push(s.render() + &hex_block(&v.region_table_hex));
    let mut s = Section::table(
        &format!("VHDX metadata table (file offset {:#x})", m.metadata_offset),
        &["item", "guid", "offset", "length", "flags"],
    );
    for i in &m.metadata {
        let flags =
            [(i.entry.is_user, "user"), (i.entry.is_virtual_disk, "virtual disk"), (i.entry.is_required, "required")];
        s.row(vec![
            i.name.unwrap_or("unknown").into(),
            i.entry.item.to_string(),
            format!("{:#x}", i.entry.offset),
            i.entry.length.to_string(),
            flags.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect::<Vec<_>>().join(", "),
        ]);
    }
    out.push(s.render() + &hex_block(&v.metadata_table_hex));
    let p = &m.parameters;
    let mut s = Section::key_value("VHDX disk parameters");
    s.kv("virtual disk size", format!("{} ({})", p.virtual_disk_size, human_bytes(p.virtual_disk_size)));
    s.kv("block size", format!("{} ({})", p.block_size, human_bytes(p.block_size as u64)));
    s.kv("logical / physical sector", format!("{} / {}", p.logical_sector_size, p.physical_sector_size));
    s.kv("leave blocks allocated (fixed)", p.leave_blocks_allocated.to_string());
    s.kv("has parent", p.has_parent.to_string());
    s.kv("virtual disk id", p.virtual_disk_id.to_string());
    for (k, val) in p.parent_locator.iter().flat_map(|l| &l.entries) {
        s.kv(&format!("parent locator {k}"), val);
    }
    out.push(s.render());
    let mut s = Section::key_value(&format!("VHDX log (file offset {:#x})", m.log.offset));
    s.kv("length", human_bytes(m.log.length as u64));
    s.kv(
        "state",
        match m.log.sequence {
            Some(seq) => {
                format!("{} entries to replay, up to sequence {seq} (replayed in memory)", m.log.pending_entries)
            }
            None => "clean".into(),
        },
    );
    out.push(s.render());
    let b = &m.bat;
    let mut s = Section::key_value(&format!("VHDX BAT (file offset {:#x})", b.offset));
    s.kv("entries", format!("{} ({} payload, chunk ratio {})", b.entries, b.payload_blocks, b.chunk_ratio));
    s.kv("sector bitmap blocks", b.sector_bitmap_blocks.to_string());
    for c in &b.states {
        s.kv(&format!("blocks {}", state_name(c.state)), c.blocks.to_string());
    }
    if b.broken > 0 {
        s.kv("broken entries", b.broken.to_string());
    }
    out.push(s.render());
    if let Some(blocks) = &v.blocks {
        let mut s = Section::table("Stored blocks", &["block", "state", "file offset", "sectors present"]);
        for e in blocks {
            s.row(vec![
                e.index.to_string(),
                state_name(e.state).into(),
                format!("{:#x}", e.file_offset),
                e.sectors_present.to_string(),
            ]);
        }
        out.push(s.render());
    }
    if let Some(bm) = &v.bitmap {
        let mut s = Section::key_value(&format!("Sector bits of block {} (least significant bit first)", bm.block));
        s.kv("stored", bm.allocated.to_string());
        s.kv("sectors present", bm.sectors_present.to_string());
        for (i, chunk) in bm.hex.as_bytes().chunks(64).enumerate() {
            s.kv(&format!("{:#06x}", i * 32), String::from_utf8_lossy(chunk));
        }
        out.push(s.render());
    }
}

/// A payload state as a person reads it.
fn state_name(s: PayloadState) -> &'static str {
    match s {
        PayloadState::NotPresent => "not present",
        PayloadState::Undefined => "undefined",
        PayloadState::Zero => "zero",
        PayloadState::Unmapped => "unmapped",
        PayloadState::FullyPresent => "fully present",
        PayloadState::PartiallyPresent => "partially present",
    }
}

/// Hex as lines of 16 bytes, each with its offset.
fn hex_block(h: &str) -> String {
    spaced_hex(h).lines().enumerate().map(|(i, l)| format!("  {:#06x}  {l}\n", i * 16)).collect()
}

/// The MBR (with its EBRs), the GPT headers and the partitions.
fn render_partitions(t: &DiskLayout, partitions: &[Partition], out: &mut Vec<String>) {
    if let Some(m) = &t.mbr {
        let mut s =
            Section::table(&format!("MBR (disk signature {:08X})", m.disk_signature), &["entry", "raw", "decoded"]);
        slot_rows(&mut s, "", &m.entries);
        for e in &m.ebrs {
            slot_rows(&mut s, &format!("EBR@{} ", e.lba), &e.entries);
        }
        out.push(s.render());
    }
    if let Some(g) = &t.gpt {
        let mut s = Section::key_value(&format!("GPT (using the {} copy)", g.used));
        for (name, h, ok) in
            [("primary", &g.primary, g.primary_entries_crc_valid), ("backup", &g.backup, g.backup_entries_crc_valid)]
        {
            match h {
                Some(h) => s.kv(
                    name,
                    format!(
                        "LBA {} disk {} entries {}x{} at LBA {}, header CRC {}, entries CRC {}",
                        h.current_lba,
                        h.disk_guid,
                        h.entry_count,
                        h.entry_size,
                        h.entries_lba,
                        if h.header_crc_valid() { "valid" } else { "INVALID" },
                        if ok { "valid" } else { "INVALID" }
                    ),
                ),
                None => s.kv(name, "missing"),
            }
        }
        out.push(s.render());
    }
    let mut s = Section::table(
        &format!("Partitions ({})", t.scheme),
        &["#", "type", "name", "boot", "start LBA", "sectors", "size"],
    );
    for p in partitions {
        s.row(vec![
            format!("{}{}", p.index, if p.logical { " (logical)" } else { "" }),
            match (p.mbr_type, p.type_guid) {
                (Some(t), _) => format!("{t:#04x} {}", p.type_name),
                (None, Some(g)) => format!("{g} {}", p.type_name),
                (None, None) => p.type_name.clone(),
            },
            p.name.clone().unwrap_or_default(),
            if p.bootable { "*".into() } else { String::new() },
            p.start_lba.to_string(),
            p.sectors.to_string(),
            human_bytes(p.len()),
        ]);
    }
    out.push(s.render());
}

/// A volume's boot sector.
fn render_volume(v: &VolumeInfo) -> String {
    let mut s = Section::key_value(&format!("Volume boot sector of partition {}", v.partition));
    s.kv("file system", v.detected.map_or("unrecognised", |f| f.name()));
    if let Some(n) = &v.ntfs {
        s.kv("OEM ID", format!("{:?}", n.oem_id));
        s.kv(
            "bytes/sector, sectors/cluster",
            format!("{}, {} (cluster {})", n.bytes_per_sector, n.sectors_per_cluster, n.cluster_size),
        );
        s.kv("hidden sectors", n.hidden_sectors.to_string());
        s.kv("total sectors", n.total_sectors.to_string());
        s.kv("MFT / MFT mirror LCN", format!("{} / {}", n.mft_lcn, n.mft_mirror_lcn));
        s.kv("file / index record size", format!("{} / {}", n.file_record_size, n.index_record_size));
        s.kv("serial number", &n.serial_number);
        s.kv(
            "backup boot sector",
            format!(
                "{:?} at partition offset {:#x}",
                v.backup_boot_sector.unwrap_or(volume::BackupState::Missing),
                v.backup_boot_sector_offset.unwrap_or(0)
            )
            .to_lowercase(),
        );
    } else {
        if let Some(c) = v.cluster_size {
            s.kv("cluster size", c.to_string());
        }
        if let Some(h) = v.hidden_sectors {
            s.kv("hidden sectors", h.to_string());
        }
    }
    if let Some(p) = &v.problem {
        s.kv("problem", p);
    }
    if !v.boot_sector_hex.is_empty() {
        s.kv("bytes 0x00-0x4f", spaced_hex(&v.boot_sector_hex[..160]));
    }
    s.render()
}

fn spaced_hex(h: &str) -> String {
    h.as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_uppercase())
        .collect::<Vec<_>>()
        .chunks(16)
        .map(|l| l.join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}
