//! The `vhdinspect align` report: where each partition starts against 4 KiB host pages, 64 KiB,
//! 1 MiB and the VHD block size, and what a misaligned start costs: clusters straddling host
//! pages and VHD blocks, and the first cluster spread over more sector-bitmap bytes.

use serde::Serialize;

use crate::disk::Lba;
use crate::disk::boot_sector::NtfsBootSector;
use crate::map::ImageMap;
use crate::report::table::{Section, human_bytes, wrapped};
use crate::vhd::device::BlockDevice;

/// One partition's alignment.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PartitionAlignment {
    #[serde(rename = "partition")]
    pub index: u32,
    pub logical: bool,
    pub start_lba: Lba,
    pub offset: u64,
    pub aligned_4k: bool,
    pub aligned_64k: bool,
    pub aligned_1mib: bool,
    /// Aligned to the VHD block size.
    pub aligned_block: bool,
    /// Aligned to the boundary asked for (`--boundary`, default 1 MiB).
    pub aligned_boundary: bool,
    /// NTFS cluster size (null for other file systems).
    pub cluster_size: Option<u64>,
    pub clusters: Option<u64>,
    /// Clusters touching more 4 KiB host pages than their size needs.
    pub clusters_straddling_4k: Option<u64>,
    /// Clusters spread over two VHD blocks.
    pub clusters_straddling_blocks: Option<u64>,
    /// Extra VHD block reads when every cluster is read on its own: one per straddling
    /// cluster.
    pub extra_block_reads: Option<u64>,
    /// Sector-bitmap bytes cluster 0 spans, and how many it would span aligned.
    pub bitmap_bytes_first_cluster: Option<u64>,
    pub bitmap_bytes_aligned: Option<u64>,
    pub verdict: String,
}

/// The whole report.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AlignReport {
    /// The image.
    pub file: String,
    pub boundary: u64,
    pub block_size: u64,
    pub partitions: Vec<PartitionAlignment>,
    /// Partitions not aligned to the boundary.
    pub misaligned: usize,
}

/// How many of `count` units of `size` bytes laid from `start` touch more `unit`-byte pages
/// than `size` needs. The pattern repeats every `unit / gcd(size, unit)` clusters, so one
/// period is counted and scaled.
pub fn straddling(start: u64, size: u64, count: u64, unit: u64) -> u64 {
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let minimum = size.div_ceil(unit);
    let straddles = |c: u64| {
        let a = start + c * size;
        (a + size - 1) / unit - a / unit + 1 > minimum
    };
    let period = unit / gcd(size, unit);
    let per_period = (0..period.min(count)).filter(|&c| straddles(c)).count() as u64;
    if count <= period {
        return per_period;
    }
    (count / period) * per_period + (0..count % period).filter(|&c| straddles(c)).count() as u64
}

/// Builds the report.
pub fn build(map: &ImageMap<'_>, boundary: u64) -> crate::error::Result<AlignReport> {
    let block = map.block_size();
    let mut partitions = Vec::new();
    for pm in &map.partitions {
        let p = &pm.partition;
        let offset = p.start();
        let on = |unit: u64| offset.is_multiple_of(unit);
        let mut boot = [0u8; 512];
        map.image.read_at(offset, &mut boot)?;
        let ntfs = NtfsBootSector::parse(&boot).ok();
        let cluster_size = ntfs.as_ref().map(|b| b.cluster_size as u64);
        let clusters = ntfs.as_ref().map(|b| b.total_clusters());
        let stat = |unit: u64| cluster_size.zip(clusters).map(|(cs, n)| straddling(offset, cs, n, unit));
        let in_block = (offset % block) / 512;
        let first_bytes = cluster_size.map(|cs| (in_block + cs / 512 - 1) / 8 - in_block / 8 + 1);
        let aligned_bytes = cluster_size.map(|cs| (cs / 512).div_ceil(8));
        let s4k = stat(4096);
        let sblock = stat(block);
        let aligned_boundary = on(boundary);
        let verdict = if aligned_boundary {
            format!("aligned to {}", human_bytes(boundary))
        } else {
            let mut v = format!(
                "misaligned: starts at sector {} ({} into the disk), not on a {} boundary",
                p.start_lba,
                human_bytes(offset),
                human_bytes(boundary)
            );
            if let (Some(s), Some(n)) = (s4k.filter(|&s| s > 0), clusters) {
                v.push_str(&format!("; {s} of {n} clusters straddle 4 KiB host pages"));
            }
            if let Some(s) = sblock.filter(|&s| s > 0) {
                v.push_str(&format!(", {s} straddle VHD blocks"));
            }
            v.push_str("; fix with vhdcompact --realign");
            v
        };
        partitions.push(PartitionAlignment {
            index: p.index,
            logical: p.logical,
            start_lba: p.start_lba,
            offset,
            aligned_4k: on(4096),
            aligned_64k: on(64 << 10),
            aligned_1mib: on(1 << 20),
            aligned_block: on(block),
            aligned_boundary,
            cluster_size,
            clusters,
            clusters_straddling_4k: s4k,
            clusters_straddling_blocks: sblock,
            extra_block_reads: sblock,
            bitmap_bytes_first_cluster: first_bytes,
            bitmap_bytes_aligned: aligned_bytes,
            verdict,
        });
    }
    let misaligned = partitions.iter().filter(|p| !p.aligned_boundary).count();
    Ok(AlignReport {
        file: map.image.source().display().to_string(),
        boundary,
        block_size: block,
        partitions,
        misaligned,
    })
}

/// Renders the report.
pub fn render(r: &AlignReport) -> String {
    let mut t = Section::table(
        &format!("Alignment (VHD block {}, boundary {})", human_bytes(r.block_size), human_bytes(r.boundary)),
        &[
            "#",
            "start LBA",
            "4K",
            "64K",
            "1M",
            "block",
            "cluster",
            "straddle 4K",
            "straddle block",
            "bitmap bytes (cluster 0)",
        ],
    );
    let yes = |b: bool| if b { "yes" } else { "NO" }.to_string();
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for p in &r.partitions {
        t.row(vec![
            p.index.to_string(),
            p.start_lba.to_string(),
            yes(p.aligned_4k),
            yes(p.aligned_64k),
            yes(p.aligned_1mib),
            yes(p.aligned_block),
            p.cluster_size.map_or("-".into(), human_bytes),
            opt(p.clusters_straddling_4k),
            opt(p.clusters_straddling_blocks),
            match (p.bitmap_bytes_first_cluster, p.bitmap_bytes_aligned) {
                (Some(a), Some(b)) => format!("{a} (aligned: {b})"),
                _ => "-".into(),
            },
        ]);
    }
    let mut out = t.render();
    for p in &r.partitions {
        out.push_str(&wrapped(&format!("partition {}: {}", p.index, p.verdict), 4));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn straddling_counts_match_a_walk() {
        let walk = |start: u64, size: u64, count: u64, unit: u64| {
            (0..count)
                .filter(|c| {
                    let a = start + c * size;
                    (a + size - 1) / unit - a / unit + 1 > size.div_ceil(unit)
                })
                .count() as u64
        };
        for (start, size, count, unit) in [
            (63 * 512, 4096, 10_000, 4096),
            (63 * 512, 4096, 100_003, 2 << 20),
            (1 << 20, 4096, 5000, 4096),
            (63 * 512, 512, 7777, 4096),
            (63 * 512, 65536, 999, 2 << 20),
        ] {
            assert_eq!(
                straddling(start, size, count, unit),
                walk(start, size, count, unit),
                "{start} {size} {count} {unit}"
            );
        }
        assert_eq!(straddling(63 * 512, 4096, 1000, 4096), 1000, "every cluster at sector 63 straddles two pages");
        assert_eq!(straddling(1 << 20, 4096, 1000, 2 << 20), 0);
    }
}
