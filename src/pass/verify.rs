//! `--verify`: every needed byte of the output compared with the input (for a realigned output:
//! with the input's bytes at their new places), piece by piece, by BLAKE3 digest. Free
//! clusters are not compared: they are the bytes compaction may drop or zero. Ranges where
//! neither side holds data (unallocated blocks, holes) read as zeros on both and are not read.
//! Digests of the input can be taken before an in-place run overwrites it.

use rayon::prelude::*;
use serde::Serialize;

use crate::error::Result;
use crate::map::blocks::{Need, NeedKind};
use crate::vhd::device::{BlockDevice, merge_ranges};

/// Bytes compared per piece of work.
const PIECE: u64 = 4 << 20;

/// A range whose bytes differ.
#[derive(Clone, Debug, Serialize)]
pub struct Mismatch {
    /// Disk offset of the compared piece.
    pub offset: u64,
    pub length: u64,
    pub input_blake3: String,
    pub output_blake3: String,
}

/// The verification result.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// Needed bytes compared.
    pub checked_bytes: u64,
    pub mismatches: Vec<Mismatch>,
}

/// The needed bytes of one piece of the disk that may hold data, and their digest.
struct PieceDigest {
    ranges: Vec<(u64, u64)>,
    hash: blake3::Hash,
}

/// The digest of the needed bytes of each piece of a disk.
pub struct NeededDigests {
    len: u64,
    pieces: Vec<PieceDigest>,
}

/// Where a piece's needed bytes lie, among the ranges `data` says may hold data.
fn needed_ranges(needs: &[Need], data: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for n in needs.iter().filter(|n| n.kind != NeedKind::FreeCluster) {
        for &(a, b) in data {
            let (x, y) = (a.max(n.start), b.min(n.end));
            if x < y {
                out.push((x, y));
            }
        }
    }
    out.sort_unstable();
    merge_ranges(out)
}

fn hash_ranges(device: &dyn BlockDevice, ranges: &[(u64, u64)]) -> Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = Vec::new();
    for &(a, b) in ranges {
        let b = b.min(device.len());
        if a < b {
            buf.resize((b - a) as usize, 0);
            device.read_at(a, &mut buf)?;
            hasher.update(&buf);
        }
    }
    Ok(hasher.finalize())
}

/// Digests of the needed bytes (as `needs` tells) of the first `len` bytes of each device in
/// `devices`, over the ranges where any of them may hold data.
pub fn needed_digests(
    needs: &(dyn Fn(u64, u64) -> Vec<Need> + Sync),
    len: u64,
    devices: &[&dyn BlockDevice],
) -> Result<Vec<NeededDigests>> {
    let per_piece: Vec<Vec<PieceDigest>> = (0..len.div_ceil(PIECE))
        .into_par_iter()
        .map(|i| {
            let (start, end) = (i * PIECE, ((i + 1) * PIECE).min(len));
            let mut data = Vec::new();
            for d in devices {
                data.extend(d.data_ranges(start, end.min(d.len()))?);
            }
            data.sort_unstable();
            let ranges = needed_ranges(&needs(start, end), &merge_ranges(data));
            devices
                .iter()
                .map(|d| Ok(PieceDigest { hash: hash_ranges(*d, &ranges)?, ranges: ranges.clone() }))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    let mut out: Vec<NeededDigests> =
        devices.iter().map(|d| NeededDigests { len: d.len(), pieces: Vec::with_capacity(per_piece.len()) }).collect();
    for piece in per_piece {
        for (o, p) in out.iter_mut().zip(piece) {
            o.pieces.push(p);
        }
    }
    Ok(out)
}

/// Digests of `device` over the very ranges `before` was taken over (an image compacted in
/// place, against its digests from before).
pub fn digests_like(before: &NeededDigests, device: &dyn BlockDevice) -> Result<NeededDigests> {
    let pieces = before
        .pieces
        .par_iter()
        .map(|p| Ok(PieceDigest { hash: hash_ranges(device, &p.ranges)?, ranges: p.ranges.clone() }))
        .collect::<Result<_>>()?;
    Ok(NeededDigests { len: device.len(), pieces })
}

/// Compares the digests of an input and an output.
pub fn compare(input: &NeededDigests, output: &NeededDigests) -> VerifyReport {
    let mut report = VerifyReport { checked_bytes: 0, mismatches: Vec::new() };
    for (i, (a, b)) in input.pieces.iter().zip(&output.pieces).enumerate() {
        report.checked_bytes += a.ranges.iter().map(|(x, y)| y - x).sum::<u64>();
        if a.hash != b.hash {
            let offset = i as u64 * PIECE;
            report.mismatches.push(Mismatch {
                offset,
                length: PIECE.min(input.len - offset),
                input_blake3: a.hash.to_hex().to_string(),
                output_blake3: b.hash.to_hex().to_string(),
            });
        }
    }
    if output.len < input.len {
        report.mismatches.push(Mismatch {
            offset: output.len,
            length: input.len - output.len,
            input_blake3: String::new(),
            output_blake3: "(output disk is shorter)".into(),
        });
    }
    report
}
