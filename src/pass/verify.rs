//! `--verify`: every needed byte of the output compared with the input (for a realigned output:
//! with the input's bytes at their new places), piece by piece, by BLAKE3 digest. Free clusters are not compared: they are the bytes compaction may drop or
//! zero. Digests of the input can be taken before an in-place run overwrites it.

use rayon::prelude::*;
use serde::Serialize;

use crate::error::Result;
use crate::map::ImageMap;
use crate::map::blocks::{Need, NeedKind};
use crate::pass::align::{RealignedDisk, Realignment};
use crate::vhd::device::BlockDevice;

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

/// The digest of the needed bytes of each piece of a disk.
pub struct NeededDigests {
    len: u64,
    pieces: Vec<(u64, blake3::Hash)>,
}

/// Digests of `image`'s needed bytes, which bytes being needed as `map` (the input's map) says.
pub fn needed_digests(map: &ImageMap<'_>, image: &dyn BlockDevice) -> Result<NeededDigests> {
    digests_of(&|a, b| map.needs(a, b), map.image.len(), image)
}

/// Digests of `image`'s needed bytes within its first `len` bytes, as `needs` tells them.
pub fn digests_of(
    needs: &(dyn Fn(u64, u64) -> Vec<Need> + Sync),
    len: u64,
    image: &dyn BlockDevice,
) -> Result<NeededDigests> {
    let len = len.min(image.len());
    let pieces = (0..len.div_ceil(PIECE))
        .into_par_iter()
        .map(|i| {
            let (start, end) = (i * PIECE, ((i + 1) * PIECE).min(len));
            let mut hasher = blake3::Hasher::new();
            let mut buf = Vec::new();
            let mut checked = 0;
            for n in needs(start, end).into_iter().filter(|n| n.kind != NeedKind::FreeCluster) {
                buf.resize((n.end - n.start) as usize, 0);
                image.read_at(n.start, &mut buf)?;
                hasher.update(&buf);
                checked += n.end - n.start;
            }
            Ok((checked, hasher.finalize()))
        })
        .collect::<Result<_>>()?;
    Ok(NeededDigests { len: image.len(), pieces })
}

/// For a realigned output: digests of the realigned disk (the input's bytes at their new
/// places, patches applied) and of `output`, over the realigned disk's needed bytes.
pub fn realigned_digests(
    map: &ImageMap<'_>,
    plan: &Realignment,
    output: &dyn BlockDevice,
) -> Result<(NeededDigests, NeededDigests)> {
    let reference = RealignedDisk { input: map.image, plan };
    let needs = |a, b| plan.needs(map, a, b);
    Ok((digests_of(&needs, plan.disk_size, &reference)?, digests_of(&needs, plan.disk_size, output)?))
}

/// Compares the digests of an input and an output.
pub fn compare(input: &NeededDigests, output: &NeededDigests) -> VerifyReport {
    let mut report = VerifyReport { checked_bytes: 0, mismatches: Vec::new() };
    for (i, ((checked, a), (_, b))) in input.pieces.iter().zip(&output.pieces).enumerate() {
        report.checked_bytes += checked;
        if a != b {
            let offset = i as u64 * PIECE;
            report.mismatches.push(Mismatch {
                offset,
                length: PIECE.min(input.len - offset),
                input_blake3: a.to_hex().to_string(),
                output_blake3: b.to_hex().to_string(),
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
