//! Verification: the needed bytes of every stored block, hashed (BLAKE3) piece by piece when
//! they are read from the input, compared with the same bytes read back from the output.
//! Free clusters are not compared: they are the bytes compaction may drop or zero. For a
//! realigned output, the input's bytes are taken at their new places.

use rayon::prelude::*;
use serde::Serialize;

use super::CompactionPlan;
use super::write::cut;
use crate::error::Result;
use crate::map::blocks::NeedKind;
use crate::vhd::device::BlockDevice;

/// A range whose bytes differ.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Mismatch {
    /// Disk offset of the compared piece.
    pub offset: u64,
    /// Its length.
    pub length: u64,
    /// The digest of the input's needed bytes.
    pub input_blake3: String,
    /// The digest of the output's.
    pub output_blake3: String,
}

/// The verification result.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VerifyReport {
    /// Needed bytes compared.
    pub checked_bytes: u64,
    /// Pieces whose needed bytes differ (none when the output is right).
    pub mismatches: Vec<Mismatch>,
}

/// The digest of the needed bytes of one piece of a stored block.
#[derive(Debug)]
pub struct PieceDigest {
    start: u64,
    len: u64,
    /// Disk ranges of the needed bytes, in order.
    ranges: Vec<(u64, u64)>,
    hash: blake3::Hash,
}

impl PieceDigest {
    /// The digest of the `ranges` (disk offsets inside the piece) of `buf`, the bytes of the
    /// piece at `start`; `None` when no byte of it is needed.
    pub(super) fn of(start: u64, buf: &[u8], ranges: Vec<(u64, u64)>) -> Option<Self> {
        if ranges.is_empty() {
            return None;
        }
        let mut hasher = blake3::Hasher::new();
        for &(a, z) in &ranges {
            hasher.update(&buf[(a - start) as usize..(z - start) as usize]);
        }
        Some(PieceDigest { start, len: buf.len() as u64, ranges, hash: hasher.finalize() })
    }

    /// The digest of the same ranges read from `device`.
    fn read_from(&self, device: &dyn BlockDevice) -> Result<blake3::Hash> {
        let mut hasher = blake3::Hasher::new();
        let mut buf = Vec::new();
        for &(a, z) in &self.ranges {
            let z = z.min(device.len());
            if a < z {
                buf.resize((z - a) as usize, 0);
                device.read_at(a, &mut buf)?;
                hasher.update(&buf);
            }
        }
        Ok(hasher.finalize())
    }
}

/// The digests of the needed bytes of a compaction's stored blocks, as read from its source.
#[derive(Debug)]
pub struct NeededDigests {
    /// Length of the disk they were taken from.
    len: u64,
    pieces: Vec<PieceDigest>,
}

impl NeededDigests {
    /// No digests yet, of a disk of `len` bytes.
    pub(super) fn new(len: u64) -> Self {
        NeededDigests { len, pieces: Vec::new() }
    }

    /// Adds the digest of the next piece.
    pub(super) fn push(&mut self, piece: PieceDigest) {
        self.pieces.push(piece);
    }

    /// Reads and hashes the needed bytes of the plan's stored blocks from its source: the
    /// digests an in-place run takes before it changes the image.
    pub(super) fn of_stored(plan: &CompactionPlan<'_>) -> Result<Self> {
        let bs = plan.block_size;
        let pieces: Vec<_> =
            plan.stored.iter().flat_map(|s| cut(s.index, bs.min(plan.disk_size - s.index * bs), Some(s))).collect();
        let digests: Vec<Option<PieceDigest>> = pieces
            .par_iter()
            .map(|p| {
                let start = p.block * bs + p.within;
                let ranges = p.needed(bs);
                let mut buf = vec![0u8; p.len as usize];
                for &(a, z) in &ranges {
                    plan.source.read_at(a, &mut buf[(a - start) as usize..(z - start) as usize])?;
                }
                Ok(PieceDigest::of(start, &buf, ranges))
            })
            .collect::<Result<_>>()?;
        Ok(NeededDigests { len: plan.source.len(), pieces: digests.into_iter().flatten().collect() })
    }
}

/// Bytes examined per task when checking that every needed byte was digested.
const COVERAGE_WINDOW: u64 = 64 << 20;

/// The needed bytes of a standalone output's source that no digest covers: what a plan that
/// wrongly dropped a block would lose. Reads no data: the source's data ranges and needs,
/// against the digested ranges. (A differencing output keeps only the child's own sectors;
/// what the parent holds is the same on both sides.)
pub(super) fn uncovered(plan: &CompactionPlan<'_>, digests: &NeededDigests) -> Result<Vec<Mismatch>> {
    if plan.format == super::OutputFormat::Differencing {
        return Ok(Vec::new());
    }
    let mut covered: Vec<(u64, u64)> = digests.pieces.iter().flat_map(|p| p.ranges.iter().copied()).collect();
    covered.sort_unstable();
    let covered = crate::vhd::device::merge_ranges(covered);
    let len = plan.source.len();
    let per_window: Vec<Vec<Mismatch>> = (0..len.div_ceil(COVERAGE_WINDOW))
        .into_par_iter()
        .map(|w| {
            let (a, b) = (w * COVERAGE_WINDOW, ((w + 1) * COVERAGE_WINDOW).min(len));
            let mut out = Vec::new();
            for (x, y) in plan.source.data_ranges(a, b)? {
                for n in plan.source.needs(x, y).iter().filter(|n| n.kind != NeedKind::Unneeded) {
                    let mut at = n.start.max(x);
                    let end = n.end.min(y);
                    let first = covered.partition_point(|c| c.1 <= at);
                    for &(c0, c1) in &covered[first..] {
                        if c0 >= end {
                            break;
                        }
                        if c0 > at {
                            out.push(not_stored(at, c0));
                        }
                        at = at.max(c1);
                    }
                    if at < end {
                        out.push(not_stored(at, end));
                    }
                }
            }
            Ok(out)
        })
        .collect::<Result<_>>()?;
    Ok(per_window.into_iter().flatten().collect())
}

/// A needed range the output does not hold.
fn not_stored(a: u64, b: u64) -> Mismatch {
    Mismatch {
        offset: a,
        length: b - a,
        input_blake3: String::new(),
        output_blake3: "(needed bytes not stored)".into(),
    }
}

/// Reads the needed bytes back from `output` and compares them with `digests`.
pub(super) fn check(output: &dyn BlockDevice, digests: &NeededDigests) -> Result<VerifyReport> {
    let hashes: Vec<blake3::Hash> = digests.pieces.par_iter().map(|p| p.read_from(output)).collect::<Result<_>>()?;
    let mut report = VerifyReport { checked_bytes: 0, mismatches: Vec::new() };
    for (p, got) in digests.pieces.iter().zip(hashes) {
        report.checked_bytes += p.ranges.iter().map(|(a, z)| z - a).sum::<u64>();
        if p.hash != got {
            report.mismatches.push(Mismatch {
                offset: p.start,
                length: p.len,
                input_blake3: p.hash.to_hex().to_string(),
                output_blake3: got.to_hex().to_string(),
            });
        }
    }
    if output.len() < digests.len {
        report.mismatches.push(Mismatch {
            offset: output.len(),
            length: digests.len - output.len(),
            input_blake3: String::new(),
            output_blake3: "(output disk is shorter)".into(),
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A disk held in memory.
    struct Bytes(Vec<u8>);

    impl BlockDevice for Bytes {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
            buf.copy_from_slice(&self.0[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn source(&self) -> &Path {
            Path::new("memory")
        }
    }

    /// Digests of two 4 KiB pieces of `disk`, whose needed bytes are 100..200 and 5000..6000.
    fn digests(disk: &[u8]) -> NeededDigests {
        let mut d = NeededDigests::new(disk.len() as u64);
        d.push(PieceDigest::of(0, &disk[..4096], vec![(100, 200)]).unwrap());
        d.push(PieceDigest::of(4096, &disk[4096..8192], vec![(5000, 6000)]).unwrap());
        d
    }

    #[test]
    fn only_needed_bytes_are_compared() {
        let input: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        let before = digests(&input);
        let mut output = input.clone();
        output[300] ^= 1;
        output[7000] ^= 1;
        let report = check(&Bytes(output), &before).unwrap();
        assert_eq!(report.checked_bytes, 1100);
        assert!(report.mismatches.is_empty());
    }

    #[test]
    fn a_changed_needed_byte_names_its_piece() {
        let input: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        let before = digests(&input);
        let mut output = input.clone();
        output[5999] ^= 0x80;
        let report = check(&Bytes(output), &before).unwrap();
        assert_eq!(report.mismatches.len(), 1);
        assert_eq!((report.mismatches[0].offset, report.mismatches[0].length), (4096, 4096));
    }

    #[test]
    fn a_shorter_output_is_a_mismatch() {
        let input = vec![7u8; 8192];
        let before = digests(&input);
        let report = check(&Bytes(input[..4096].to_vec()), &before).unwrap();
        assert!(report.mismatches.iter().any(|m| m.offset == 4096 && m.length == 4096));
    }

    #[test]
    fn a_piece_without_needed_bytes_has_no_digest() {
        assert!(PieceDigest::of(0, &[1, 2, 3], Vec::new()).is_none());
    }
}
