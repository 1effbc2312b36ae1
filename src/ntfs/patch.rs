//! Growing a file in place, as byte patches (partition offset, new bytes): nothing is written
//! here. A file whose new size fits its allocation gets new size fields; beyond it, free
//! clusters are taken from `$Bitmap` (extending the last run when it can), the mapping pairs
//! are rewritten, and the sizes are updated in the MFT record (its update sequence re-applied),
//! in its `$FILE_NAME` attributes and in the parent directory's `$I30` index entry.

use crate::bytes::{le16, le32, le64};
use crate::error::{Error, Result, Space};
use crate::ntfs::file::FileEntry;
use crate::ntfs::index::NtfsIndex;
use crate::ntfs::record::BITMAP_RECORD;
use crate::ntfs::record::{self, AttributeBody, attr_type};
use crate::ntfs::runs::{self, Run};
use crate::ntfs::stream::read_runs;
use crate::vhd::device::BlockDevice;

/// New bytes for a partition offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Patch {
    pub offset: u64,
    pub bytes: Vec<u8>,
    /// What is patched, for dry runs and reports.
    pub what: String,
}

/// The result of growing a file: where its data now lives and the patches that get it there.
#[derive(Clone, Debug)]
pub struct Growth {
    pub runs: Vec<Run>,
    pub patches: Vec<Patch>,
    /// Clusters newly allocated.
    pub new_clusters: u64,
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A record read from the volume with its fixups applied.
struct RecordBuf {
    number: u64,
    offset: u64,
    bytes: Vec<u8>,
}

impl RecordBuf {
    fn read(view: &dyn BlockDevice, idx: &NtfsIndex, number: u64) -> Result<Self> {
        let offset = idx.layout.record_offset(number).ok_or_else(|| {
            Error::unsupported(
                view.source(),
                format!("MFT record {number} straddles two $MFT runs; vhdkit does not rewrite such records"),
            )
        })?;
        let mut bytes = vec![0u8; idx.layout.record_size as usize];
        view.read_at(offset, &mut bytes)?;
        record::apply_fixups(&mut bytes).map_err(|e| corrupt(view, idx, offset + e.at as u64, e.problem))?;
        Ok(RecordBuf { number, offset, bytes })
    }

    /// The patches that write the record back, update sequence re-applied: the record, and
    /// its copy in `$MFTMirr` when the mirror holds it (the first four records, or a cluster's
    /// worth when a cluster holds more: with clusters of 8 KiB and up, `$Bitmap`'s record 6
    /// and the root folder's record 5 among them).
    fn into_patches(mut self, view: &dyn BlockDevice, idx: &NtfsIndex) -> Result<Vec<Patch>> {
        record::protect(&mut self.bytes).map_err(|e| corrupt(view, idx, self.offset + e.at as u64, e.problem))?;
        let (cs, rs) = (idx.cluster_size(), idx.layout.record_size);
        let mut out = Vec::new();
        if self.number < (cs / rs).max(4) {
            let mirror = idx.bpb.mft_mirror_lcn * cs + self.number * rs;
            out.push(Patch {
                offset: mirror,
                bytes: self.bytes.clone(),
                what: format!("$MFTMirr copy of MFT record {}", self.number),
            });
        }
        out.push(Patch { offset: self.offset, bytes: self.bytes, what: format!("MFT record {}", self.number) });
        Ok(out)
    }
}

fn corrupt(view: &dyn BlockDevice, idx: &NtfsIndex, offset: u64, problem: String) -> Error {
    Error::corrupt(view.source(), "MFT record", Space::Partition(idx.partition), offset, problem)
}

/// Offset of the unnamed non-resident `$DATA` attribute with lowest VCN 0 in a record.
fn data_attribute(rec: &RecordBuf, total_clusters: u64) -> Option<usize> {
    let parsed = record::parse(&rec.bytes, total_clusters).ok()?;
    parsed.attributes.iter().find_map(|a| match &a.body {
        AttributeBody::NonResident(nr) if a.ty == attr_type::DATA && a.name.is_empty() && nr.lowest_vcn == 0 => {
            Some(a.offset)
        }
        _ => None,
    })
}

/// Free clusters for `count` more: right after `after` when possible, else the first free
/// ranges. A cluster is free when `$Bitmap` says so and no file claims it.
fn find_free(idx: &NtfsIndex, after: Option<u64>, count: u64) -> Option<Vec<(u64, u64)>> {
    let total = idx.total_clusters();
    let free = |c: u64| !idx.cluster_needed(c);
    if let Some(next) = after
        && next + count <= total
        && (next..next + count).all(free)
    {
        return Some(vec![(next, count)]);
    }
    let mut out = Vec::new();
    let mut left = count;
    let mut c = 0;
    while c < total && left > 0 {
        if free(c) {
            let start = c;
            while c < total && free(c) && c - start < left {
                c += 1;
            }
            out.push((start, c - start));
            left -= c - start;
        } else {
            c += 1;
        }
    }
    (left == 0).then_some(out)
}

/// Sets bits `[start, start + len)` of `$Bitmap`, as patches of its bytes.
fn bitmap_patches(view: &dyn BlockDevice, idx: &NtfsIndex, ranges: &[(u64, u64)]) -> Result<Vec<Patch>> {
    let stream = idx
        .file(BITMAP_RECORD)
        .and_then(FileEntry::default_stream)
        .ok_or_else(|| Error::unsupported(view.source(), "$Bitmap has no data stream"))?;
    let cs = idx.cluster_size();
    let mut bytes = idx.bitmap.bytes().to_vec();
    let mut touched: Vec<u64> = Vec::new();
    for &(start, len) in ranges {
        for c in start..start + len {
            bytes[(c / 8) as usize] |= 1 << (c % 8);
            touched.push(c / 8);
        }
    }
    touched.dedup();
    let mut patches: Vec<Patch> = Vec::new();
    for byte in touched {
        let vcn = byte / cs;
        let run = stream.runs.iter().find(|r| r.vcn <= vcn && vcn < r.vcn + r.length);
        let lcn = run
            .and_then(|r| r.lcn.map(|l| l + vcn - r.vcn))
            .ok_or_else(|| Error::unsupported(view.source(), "$Bitmap byte outside its runs"))?;
        let offset = lcn * cs + byte % cs;
        match patches.last_mut() {
            Some(p) if p.offset + p.bytes.len() as u64 == offset => p.bytes.push(bytes[byte as usize]),
            _ => patches.push(Patch { offset, bytes: vec![bytes[byte as usize]], what: "$Bitmap".into() }),
        }
    }
    Ok(patches)
}

/// Updates the allocated and real sizes of every `$FILE_NAME` in a record.
fn update_file_names(rec: &mut RecordBuf, total_clusters: u64, allocated: u64, size: u64) {
    let Ok(parsed) = record::parse(&rec.bytes, total_clusters) else { return };
    let offsets: Vec<usize> = parsed
        .attributes
        .iter()
        .filter(|a| a.ty == attr_type::FILE_NAME && matches!(a.body, AttributeBody::Resident { .. }))
        .map(|a| a.offset + le16(&rec.bytes, a.offset + 20) as usize)
        .collect();
    for v in offsets {
        put64(&mut rec.bytes, v + 0x28, allocated);
        put64(&mut rec.bytes, v + 0x30, size);
    }
}

/// Updates the sizes in every index entry of `entries` (an index node's entry area) naming
/// `record`; returns whether one was found.
fn update_index_entries(entries: &mut [u8], record: u64, allocated: u64, size: u64) -> bool {
    let mut at = 0;
    let mut found = false;
    while at + 16 <= entries.len() {
        let len = le16(entries, at + 8) as usize;
        let key_len = le16(entries, at + 10) as usize;
        let flags = le32(entries, at + 12);
        if len < 16 || at + len > entries.len() {
            break;
        }
        let reference = le64(entries, at) & 0x0000_FFFF_FFFF_FFFF;
        if flags & 2 == 0 && reference == record && key_len >= 0x38 {
            put64(entries, at + 16 + 0x28, allocated);
            put64(entries, at + 16 + 0x30, size);
            found = true;
        }
        if flags & 2 != 0 {
            break;
        }
        at += len;
    }
    found
}

/// Patches the parent directory's `$I30` entry for `file` (in `$INDEX_ROOT` or an `INDX`
/// block of `$INDEX_ALLOCATION`).
fn index_patches(
    view: &dyn BlockDevice,
    idx: &NtfsIndex,
    file: &FileEntry,
    allocated: u64,
    size: u64,
) -> Result<Vec<Patch>> {
    let mut patches = Vec::new();
    for parent in file.names.iter().map(|n| n.parent).collect::<std::collections::BTreeSet<u64>>() {
        let Some(dir) = idx.file(parent) else { continue };
        let mut rec = RecordBuf::read(view, idx, parent)?;
        let parsed = record::parse(&rec.bytes, idx.total_clusters())
            .map_err(|e| corrupt(view, idx, rec.offset + e.at as u64, e.problem))?;
        let root =
            parsed.attributes.iter().find(|a| a.ty == attr_type::INDEX_ROOT && a.name == "$I30").map(|a| a.offset);
        drop(parsed);
        if let Some(a) = root {
            let value = a + le16(&rec.bytes, a + 20) as usize;
            let node = value + 16;
            let (start, end) = (node + le32(&rec.bytes, node) as usize, node + le32(&rec.bytes, node + 4) as usize);
            if end <= rec.bytes.len()
                && start < end
                && update_index_entries(&mut rec.bytes[start..end], file.record, allocated, size)
            {
                for mut p in rec.into_patches(view, idx)? {
                    p.what.push_str(" ($I30 root)");
                    patches.push(p);
                }
            }
        }
        let Some(alloc) = dir.streams.iter().find(|s| s.ty == attr_type::INDEX_ALLOCATION && &*s.name == "$I30") else {
            continue;
        };
        let block = idx.bpb.index_record_size as u64;
        let data = read_runs(
            view,
            idx.partition,
            idx.cluster_size(),
            &alloc.runs,
            alloc.data_size.min(64 << 20),
            alloc.initialized_size,
        )?;
        for (i, chunk) in data.chunks(block as usize).enumerate() {
            if chunk.len() < block as usize || &chunk[..4] != b"INDX" {
                continue;
            }
            let mut b = chunk.to_vec();
            if record::apply_fixups(&mut b).is_err() {
                continue;
            }
            let node = 0x18;
            let (start, end) = (node + le32(&b, node) as usize, node + le32(&b, node + 4) as usize);
            if end > b.len() || start >= end || !update_index_entries(&mut b[start..end], file.record, allocated, size)
            {
                continue;
            }
            let vcn_byte = i as u64 * block;
            let cs = idx.cluster_size();
            let run = alloc.runs.iter().find(|r| r.vcn * cs <= vcn_byte && vcn_byte < (r.vcn + r.length) * cs);
            let Some(lcn) = run.and_then(|r| r.lcn.map(|l| l * cs + vcn_byte - r.vcn * cs)) else { continue };
            record::protect(&mut b).map_err(|e| corrupt(view, idx, lcn + e.at as u64, e.problem))?;
            patches.push(Patch { offset: lcn, bytes: b, what: format!("$I30 index block of record {parent}") });
        }
    }
    Ok(patches)
}

/// Patches that make `file`'s unnamed `$DATA` `new_size` bytes long (never shorter).
pub fn grow(view: &dyn BlockDevice, idx: &NtfsIndex, file: &FileEntry, new_size: u64) -> Result<Growth> {
    let unsupported =
        |why: String| Error::unsupported(view.source(), format!("cannot grow MFT record {}: {why}", file.record));
    let stream = file.default_stream().ok_or_else(|| unsupported("no data stream".into()))?;
    if stream.resident || stream.flags & (record::ATTR_COMPRESSED | record::ATTR_ENCRYPTED) != 0 {
        return Err(unsupported("its data is resident, compressed or encrypted".into()));
    }
    if new_size <= stream.data_size {
        return Ok(Growth { runs: stream.runs.to_vec(), patches: Vec::new(), new_clusters: 0 });
    }
    if stream.flags & record::ATTR_SPARSE != 0 {
        return Err(unsupported("its data is sparse".into()));
    }
    let cs = idx.cluster_size();
    let mut rec = RecordBuf::read(view, idx, file.record)?;
    let at = data_attribute(&rec, idx.total_clusters()).ok_or_else(|| {
        unsupported(
            "its data continues in extension records (an attribute list); vhdkit grows only single-extent files".into(),
        )
    })?;
    let mut runs = stream.runs.to_vec();
    let mapped = runs.iter().map(|r| r.length).sum::<u64>();
    let needed = new_size.div_ceil(cs);
    let mut patches = Vec::new();
    let mut new_clusters = 0;
    if needed > mapped {
        let extra = needed - mapped;
        let last_end = runs.last().and_then(|r| r.lcn.map(|l| l + r.length));
        let ranges = find_free(idx, last_end, extra)
            .ok_or_else(|| unsupported(format!("the volume has no {extra} free clusters")))?;
        for &(start, len) in &ranges {
            let vcn = runs.last().map_or(0, |r| r.vcn + r.length);
            match runs.last_mut() {
                Some(last) if last.lcn.map(|l| l + last.length) == Some(start) => last.length += len,
                _ => runs.push(Run { vcn, lcn: Some(start), length: len }),
            }
        }
        new_clusters = extra;
        let pairs = runs::encode(&runs);
        let pairs_at = le16(&rec.bytes, at + 32) as usize;
        let old_len = le32(&rec.bytes, at + 4) as usize;
        let new_len = (pairs_at + pairs.len()).div_ceil(8) * 8;
        let in_use = le32(&rec.bytes, 24) as usize;
        let capacity = le32(&rec.bytes, 28) as usize;
        if new_len > old_len {
            let grow_by = new_len - old_len;
            if in_use + grow_by > capacity.min(rec.bytes.len()) {
                return Err(unsupported("its mapping pairs no longer fit in the MFT record".into()));
            }
            rec.bytes.copy_within(at + old_len..in_use, at + new_len);
            let new_in_use = (in_use + grow_by) as u32;
            rec.bytes[24..28].copy_from_slice(&new_in_use.to_le_bytes());
            rec.bytes[at + 4..at + 8].copy_from_slice(&(new_len as u32).to_le_bytes());
        }
        let end = at + new_len.max(old_len);
        rec.bytes[at + pairs_at..end].fill(0);
        rec.bytes[at + pairs_at..at + pairs_at + pairs.len()].copy_from_slice(&pairs);
        put64(&mut rec.bytes, at + 24, needed - 1);
        patches.extend(bitmap_patches(view, idx, &ranges)?);
    }
    let allocated = runs.iter().map(|r| r.length).sum::<u64>() * cs;
    put64(&mut rec.bytes, at + 40, allocated);
    put64(&mut rec.bytes, at + 48, new_size);
    put64(&mut rec.bytes, at + 56, new_size);
    update_file_names(&mut rec, idx.total_clusters(), allocated, new_size);
    patches.extend(rec.into_patches(view, idx)?);
    patches.extend(index_patches(view, idx, file, allocated, new_size)?);
    Ok(Growth { runs, patches, new_clusters })
}
