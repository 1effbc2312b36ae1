//! FILE records of the MFT, parsed by hand for the bulk pass: update sequence fixups, the
//! record header, and every attribute header with its runs or resident value.
//!
//! Every offset and length read from the record is checked against the record's bounds, so a
//! corrupt record yields a [`RecordError`] and the pass moves on.

use crate::bytes::{le16, le32, le64};
use crate::ntfs::runs::{self, Run};

/// Record number of the root directory.
pub const ROOT: u64 = 5;
/// Record number of `$Bitmap`.
pub const BITMAP_RECORD: u64 = 6;
/// Record number of `$Volume`.
pub const VOLUME_RECORD: u64 = 3;
/// Record number of `$Extend`.
pub const EXTEND_RECORD: u64 = 11;

/// Attribute type codes.
pub mod attr_type {
    pub const STANDARD_INFORMATION: u32 = 0x10;
    pub const ATTRIBUTE_LIST: u32 = 0x20;
    pub const FILE_NAME: u32 = 0x30;
    pub const OBJECT_ID: u32 = 0x40;
    pub const SECURITY_DESCRIPTOR: u32 = 0x50;
    pub const VOLUME_NAME: u32 = 0x60;
    pub const VOLUME_INFORMATION: u32 = 0x70;
    pub const DATA: u32 = 0x80;
    pub const INDEX_ROOT: u32 = 0x90;
    pub const INDEX_ALLOCATION: u32 = 0xA0;
    pub const BITMAP: u32 = 0xB0;
    pub const REPARSE_POINT: u32 = 0xC0;
    pub const EA_INFORMATION: u32 = 0xD0;
    pub const EA: u32 = 0xE0;
    pub const LOGGED_UTILITY_STREAM: u32 = 0x100;
    pub const END: u32 = 0xFFFF_FFFF;
}

/// The `$NAME` of an attribute type, as NTFS's $AttrDef calls it.
pub fn type_name(ty: u32) -> &'static str {
    use attr_type::*;
    match ty {
        STANDARD_INFORMATION => "$STANDARD_INFORMATION",
        ATTRIBUTE_LIST => "$ATTRIBUTE_LIST",
        FILE_NAME => "$FILE_NAME",
        OBJECT_ID => "$OBJECT_ID",
        SECURITY_DESCRIPTOR => "$SECURITY_DESCRIPTOR",
        VOLUME_NAME => "$VOLUME_NAME",
        VOLUME_INFORMATION => "$VOLUME_INFORMATION",
        DATA => "$DATA",
        INDEX_ROOT => "$INDEX_ROOT",
        INDEX_ALLOCATION => "$INDEX_ALLOCATION",
        BITMAP => "$BITMAP",
        REPARSE_POINT => "$REPARSE_POINT",
        EA_INFORMATION => "$EA_INFORMATION",
        EA => "$EA",
        LOGGED_UTILITY_STREAM => "$LOGGED_UTILITY_STREAM",
        _ => "$UNKNOWN",
    }
}

/// Record header flags.
pub const FLAG_IN_USE: u16 = 0x0001;
pub const FLAG_DIRECTORY: u16 = 0x0002;

/// Attribute flags.
pub const ATTR_COMPRESSED: u16 = 0x00FF;
pub const ATTR_ENCRYPTED: u16 = 0x4000;
pub const ATTR_SPARSE: u16 = 0x8000;

/// Stride of the update sequence: the fixup replaces the last two bytes of every 512 bytes.
const USA_STRIDE: usize = 512;

/// Why a record could not be used; `at` is the byte offset inside the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordError {
    pub at: usize,
    pub problem: String,
}

fn err<T>(at: usize, problem: impl Into<String>) -> Result<T, RecordError> {
    Err(RecordError { at, problem: problem.into() })
}

/// Decodes UTF-16 code units (unpaired surrogates become U+FFFD) in one allocation.
fn utf16_string(units: impl Iterator<Item = u16> + Clone) -> String {
    // Most names are ASCII: copied unit by unit, without decoding (a million names per volume).
    if units.clone().all(|u| u < 0x80) {
        return String::from_utf8(units.map(|u| u as u8).collect()).unwrap_or_default();
    }
    let mut out = String::with_capacity(units.clone().count());
    out.extend(char::decode_utf16(units).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)));
    out
}

/// The 48-bit record number of a file reference.
pub fn reference_record(r: u64) -> u64 {
    r & 0x0000_FFFF_FFFF_FFFF
}

/// The 16-bit sequence number of a file reference.
pub fn reference_sequence(r: u64) -> u16 {
    (r >> 48) as u16
}

/// Applies the update sequence fixups of a FILE or INDX block in place.
pub fn apply_fixups(b: &mut [u8]) -> Result<(), RecordError> {
    let (usa_offset, sectors) = update_sequence_array(b)?;
    let usn = [b[usa_offset], b[usa_offset + 1]];
    for i in 0..sectors {
        let end = (i + 1) * USA_STRIDE - 2;
        if b[end..end + 2] != usn {
            return err(end, format!("update sequence mismatch in sector {i} (torn write)"));
        }
        let saved = usa_offset + 2 * (i + 1);
        let (s0, s1) = (b[saved], b[saved + 1]);
        b[end] = s0;
        b[end + 1] = s1;
    }
    Ok(())
}

/// Where the update sequence array is, and how many 512-byte strides it protects.
fn update_sequence_array(b: &[u8]) -> Result<(usize, usize), RecordError> {
    if b.len() < 8 {
        return err(0, "shorter than a record header");
    }
    let usa_offset = le16(b, 4) as usize;
    let usa_count = le16(b, 6) as usize;
    let sectors = b.len() / USA_STRIDE;
    if usa_count != sectors + 1 {
        return err(6, format!("update sequence count {usa_count}, expected {}", sectors + 1));
    }
    if usa_offset < 8 || usa_offset + 2 * usa_count > b.len() || !usa_offset.is_multiple_of(2) {
        return err(4, format!("update sequence array at {usa_offset} does not fit"));
    }
    Ok((usa_offset, sectors))
}

/// The inverse of [`apply_fixups`], before a record (or index block) is written back: a new
/// update sequence number goes to the end of every stride, the bytes it covers into the array.
pub fn protect(b: &mut [u8]) -> Result<(), RecordError> {
    let (usa_offset, sectors) = update_sequence_array(b)?;
    let usn = match le16(b, usa_offset).wrapping_add(1) {
        0 => 1,
        n => n,
    }
    .to_le_bytes();
    b[usa_offset..usa_offset + 2].copy_from_slice(&usn);
    for i in 0..sectors {
        let end = (i + 1) * USA_STRIDE - 2;
        let saved = usa_offset + 2 * (i + 1);
        let (s0, s1) = (b[end], b[end + 1]);
        b[saved] = s0;
        b[saved + 1] = s1;
        b[end..end + 2].copy_from_slice(&usn);
    }
    Ok(())
}

/// One attribute as stored in one record (an extent, for a non-resident attribute spread over
/// several records). Resident values borrow the record's bytes.
#[derive(Clone, Debug)]
pub struct Attribute<'a> {
    pub ty: u32,
    pub name: String,
    pub flags: u16,
    pub instance: u16,
    /// Offset of the attribute header inside the record.
    pub offset: usize,
    pub body: AttributeBody<'a>,
}

/// Resident value or non-resident extent.
#[derive(Clone, Debug)]
pub enum AttributeBody<'a> {
    Resident { value: &'a [u8] },
    NonResident(NonResident),
}

/// The non-resident header fields and decoded runs of one extent.
#[derive(Clone, Debug)]
pub struct NonResident {
    pub lowest_vcn: u64,
    pub highest_vcn: u64,
    pub compression_unit: u16,
    /// The size fields are meaningful only in the extent with `lowest_vcn == 0`.
    pub allocated_size: u64,
    pub data_size: u64,
    pub initialized_size: u64,
    pub runs: Vec<Run>,
}

impl Attribute<'_> {
    /// Whether the attribute's data is compressed.
    pub fn compressed(&self) -> bool {
        self.flags & ATTR_COMPRESSED != 0
    }

    /// Whether the attribute's data is encrypted.
    pub fn encrypted(&self) -> bool {
        self.flags & ATTR_ENCRYPTED != 0
    }

    /// Whether the attribute is sparse.
    pub fn sparse(&self) -> bool {
        self.flags & ATTR_SPARSE != 0
    }
}

/// A FILE record's header and attributes.
#[derive(Clone, Debug)]
pub struct FileRecord<'a> {
    pub sequence: u16,
    pub link_count: u16,
    pub flags: u16,
    /// Record number of the base record, for an extension record.
    pub base: Option<u64>,
    pub attributes: Vec<Attribute<'a>>,
}

impl FileRecord<'_> {
    /// Whether the record is in use.
    pub fn in_use(&self) -> bool {
        self.flags & FLAG_IN_USE != 0
    }

    /// Whether the record is a directory.
    pub fn is_directory(&self) -> bool {
        self.flags & FLAG_DIRECTORY != 0
    }
}

/// What the first bytes of a record slot hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Slot {
    /// A FILE record.
    File,
    /// Never used (zeros or another signature): not an error.
    Empty,
    /// A record marked bad by chkdsk.
    Bad,
}

/// Classifies a record slot by its signature.
pub fn slot_kind(b: &[u8]) -> Slot {
    match b.get(..4) {
        Some(b"FILE") => Slot::File,
        Some(b"BAAD") => Slot::Bad,
        _ => Slot::Empty,
    }
}

/// Parses a FILE record whose fixups were applied. `total_clusters` bounds every run.
pub fn parse(b: &[u8], total_clusters: u64) -> Result<FileRecord<'_>, RecordError> {
    if b.len() < 48 || &b[..4] != b"FILE" {
        return err(0, "no FILE signature");
    }
    let flags = le16(b, 22);
    let base_ref = reference_record(le64(b, 32));
    let bytes_in_use = le32(b, 24) as usize;
    if bytes_in_use > b.len() || bytes_in_use < 56 {
        return err(24, format!("bytes in use {bytes_in_use} exceeds the record size {}", b.len()));
    }
    let mut at = le16(b, 20) as usize;
    if at < 40 || at >= bytes_in_use || !at.is_multiple_of(8) {
        return err(20, format!("first attribute offset {at} is invalid"));
    }
    let mut attributes = Vec::new();
    loop {
        if at + 4 > bytes_in_use {
            return err(at, "attributes run past the bytes in use without an end marker");
        }
        let ty = le32(b, at);
        if ty == attr_type::END {
            break;
        }
        attributes.push(parse_attribute(b, at, bytes_in_use, total_clusters)?);
        at += le32(b, at + 4) as usize;
    }
    Ok(FileRecord {
        sequence: le16(b, 16),
        link_count: le16(b, 18),
        flags,
        base: (base_ref != 0).then_some(base_ref),
        attributes,
    })
}

fn parse_attribute(b: &[u8], at: usize, limit: usize, total_clusters: u64) -> Result<Attribute<'_>, RecordError> {
    if at + 16 > limit {
        return err(at, "attribute header past the bytes in use");
    }
    let ty = le32(b, at);
    let len = le32(b, at + 4) as usize;
    if len < 24 || !len.is_multiple_of(8) || at + len > limit {
        return err(at + 4, format!("attribute length {len} is invalid"));
    }
    let a = &b[at..at + len];
    let non_resident = a[8] != 0;
    let name_len = a[9] as usize;
    let name_off = le16(a, 10) as usize;
    if name_len > 0 && name_off + 2 * name_len > len {
        return err(at + 9, "attribute name lies outside the attribute");
    }
    let name = utf16_string((0..name_len).map(|i| le16(a, name_off + 2 * i)));
    let body = if non_resident {
        if len < 64 {
            return err(at + 4, format!("non-resident attribute length {len} is below 64"));
        }
        let lowest_vcn = le64(a, 16);
        let highest_vcn = le64(a, 24);
        let pairs_at = le16(a, 32) as usize;
        if pairs_at < 64 || pairs_at > len {
            return err(at + 32, format!("mapping pairs offset {pairs_at} is invalid"));
        }
        let runs = runs::decode(&a[pairs_at..], lowest_vcn, total_clusters)
            .map_err(|e| RecordError { at: at + pairs_at + e.at, problem: e.problem })?;
        AttributeBody::NonResident(NonResident {
            lowest_vcn,
            highest_vcn,
            compression_unit: le16(a, 34),
            allocated_size: le64(a, 40),
            data_size: le64(a, 48),
            initialized_size: le64(a, 56),
            runs,
        })
    } else {
        let value_len = le32(a, 16) as usize;
        let value_off = le16(a, 20) as usize;
        if value_off.checked_add(value_len).is_none_or(|e| e > len) {
            return err(
                at + 16,
                format!("resident value of {value_len} bytes at {value_off} lies outside the attribute"),
            );
        }
        AttributeBody::Resident { value: &a[value_off..value_off + value_len] }
    };
    Ok(Attribute { ty, name, flags: le16(a, 12), instance: le16(a, 14), offset: at, body })
}

/// A decoded `$FILE_NAME` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileName {
    pub parent: u64,
    pub parent_sequence: u16,
    pub name: String,
    /// 0 POSIX, 1 Win32, 2 DOS, 3 Win32 and DOS.
    pub namespace: u8,
}

impl FileName {
    /// Decodes a `$FILE_NAME` value.
    pub fn parse(v: &[u8]) -> Option<Self> {
        if v.len() < 66 {
            return None;
        }
        let n = v[64] as usize;
        if 66 + 2 * n > v.len() {
            return None;
        }
        let parent = le64(v, 0);
        Some(FileName {
            parent: reference_record(parent),
            parent_sequence: reference_sequence(parent),
            name: utf16_string((0..n).map(|i| le16(v, 66 + 2 * i))),
            namespace: v[65],
        })
    }

    /// Whether this is only the DOS 8.3 alias of another name.
    pub fn is_dos_alias(&self) -> bool {
        self.namespace == 2
    }
}

/// One entry of an `$ATTRIBUTE_LIST` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    pub ty: u32,
    pub name: String,
    pub lowest_vcn: u64,
    pub record: u64,
    pub instance: u16,
}

/// Decodes an `$ATTRIBUTE_LIST` value; stops at the first malformed entry and says where.
pub fn parse_attribute_list(v: &[u8]) -> (Vec<ListEntry>, Option<RecordError>) {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 26 <= v.len() {
        let len = le16(v, at + 4) as usize;
        let name_len = v[at + 6] as usize;
        let name_off = v[at + 7] as usize;
        if len < 26 || at + len > v.len() || (name_len > 0 && name_off + 2 * name_len > len) {
            return (out, Some(RecordError { at, problem: format!("attribute list entry length {len} is invalid") }));
        }
        let units: Vec<u16> = (0..name_len).map(|i| le16(v, at + name_off + 2 * i)).collect();
        out.push(ListEntry {
            ty: le32(v, at),
            name: String::from_utf16_lossy(&units),
            lowest_vcn: le64(v, at + 8),
            record: reference_record(le64(v, at + 16)),
            instance: le16(v, at + 24),
        });
        at += len;
    }
    (out, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn realdata(rel: &str) -> Option<Vec<u8>> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/realdata").join(rel);
        std::fs::read(&p).map_err(|_| eprintln!("skipped: {} is absent", p.display())).ok()
    }

    #[test]
    fn parses_windows_made_records() {
        let Some(mut b) = realdata("libfsntfs/tests/data/mft_entry.1") else { return };
        apply_fixups(&mut b).unwrap();
        let r = parse(&b, u64::MAX).unwrap();
        assert!(r.in_use());
        assert!(!r.attributes.is_empty());
        assert_eq!(r.attributes[0].ty, attr_type::STANDARD_INFORMATION);
    }

    #[test]
    fn parses_every_record_of_a_windows_mft_extract() {
        let Some(mft) = realdata("dfir_ntfs/test_data/unicode.mft") else { return };
        let mut names = Vec::new();
        for chunk in mft.chunks(1024) {
            if slot_kind(chunk) != Slot::File {
                continue;
            }
            let mut b = chunk.to_vec();
            apply_fixups(&mut b).unwrap();
            let r = parse(&b, u64::MAX).unwrap();
            for a in &r.attributes {
                if let (attr_type::FILE_NAME, AttributeBody::Resident { value }) = (a.ty, &a.body) {
                    names.push(FileName::parse(value).unwrap().name);
                }
            }
        }
        assert!(names.iter().any(|n| n == "$MFT"));
        assert!(names.iter().any(|n| !n.is_ascii()), "Unicode names decode: {names:?}");
    }

    #[test]
    fn protect_undoes_apply_fixups() {
        let Some(raw) = realdata("libfsntfs/tests/data/mft_entry.1") else { return };
        let mut b = raw.clone();
        apply_fixups(&mut b).unwrap();
        let fixed = b.clone();
        protect(&mut b).unwrap();
        assert!(b != raw, "a new update sequence number");
        apply_fixups(&mut b).unwrap();
        let usa = le16(&b, 4) as usize;
        assert_eq!(le16(&b, usa), le16(&fixed, usa) + 1);
        b[usa..usa + 2].copy_from_slice(&fixed[usa..usa + 2]);
        assert!(b == fixed, "every other byte is back");
    }

    #[test]
    fn a_torn_record_is_refused_with_its_offset() {
        let Some(mut b) = realdata("libfsntfs/tests/data/mft_entry.1") else { return };
        b[510] ^= 0xFF;
        let e = apply_fixups(&mut b).unwrap_err();
        assert_eq!(e.at, 510);
        assert!(e.problem.contains("sector 0"));
    }
}
