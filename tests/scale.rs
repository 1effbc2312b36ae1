//! A volume of 200,000 files indexed as Sleuth Kit reads it: every path, and a sample of
//! files' clusters and of clusters' owners, by the full index and by the index of clusters
//! alone (what compaction builds). Not timed: `make bench` measures speed and memory.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use vhdkit::{DiskLayout, ImageMap, IndexDetail, NtfsIndex, PartitionView};

const FILES: u64 = 200_000;

/// The volume: mkntfs, then ntfs-3g writes `FILES` files, 100 a folder, of 12 to 1200 bytes
/// (about half resident in their record, half owning a cluster). Built once (about 80 s) and
/// kept in target/test-scale.
fn volume() -> PathBuf {
    let cache = root().join("target/test-scale");
    let out = cache.join("files200k.part");
    if out.exists() {
        return out;
    }
    std::fs::create_dir_all(&cache).unwrap();
    let tmp = cache.join(format!("files200k.{}.partial", std::process::id()));
    std::fs::File::create(&tmp).unwrap().set_len(1536 << 20).unwrap();
    run_ok(Command::new("mkntfs").args(["-q", "-F", "-f", "-p", "2048", "-H", "255", "-S", "63"]).arg(&tmp));
    with_ntfs3g(&tmp, false, |mnt| {
        for i in 0..FILES {
            let dir = mnt.join(format!("d{:02}", i / 10_000)).join(format!("s{:02}", (i / 100) % 100));
            if i % 100 == 0 {
                std::fs::create_dir_all(&dir).unwrap();
            }
            let body = format!("f{i:010} ").repeat(1 + (i % 100) as usize);
            std::fs::write(dir.join(format!("file{i:07}.txt")), body).unwrap();
        }
    });
    std::fs::rename(&tmp, &out).unwrap();
    out
}

fn index(volume: &Path, detail: IndexDetail) -> NtfsIndex {
    let img = open(volume);
    let layout = DiskLayout::read(&img).unwrap();
    let p = layout.partition(1).unwrap();
    NtfsIndex::build(&PartitionView::new(&img, p), 1, detail).unwrap()
}

/// The clusters of `record`'s unnamed `$DATA`, as `istat` lists them.
fn istat_clusters(volume: &Path, record: u64) -> Vec<u64> {
    let out = String::from_utf8(run_ok(Command::new("istat").arg(volume).arg(record.to_string()))).unwrap();
    let data = out.split("Type: $DATA").nth(1).unwrap_or_else(|| panic!("istat {record}: no $DATA: {out}"));
    if data.lines().next().is_some_and(|l| l.contains(" Resident")) {
        return Vec::new();
    }
    data.lines()
        .skip(1)
        .take_while(|l| !l.starts_with("Type:"))
        .flat_map(|l| l.split_whitespace().map(|n| n.parse::<u64>().unwrap()))
        .filter(|&c| c != 0)
        .collect()
}

/// The record `ifind -d` names as the owner of `cluster`, if any.
fn ifind_owner(volume: &Path, cluster: u64) -> Option<u64> {
    let out = String::from_utf8(run_ok(Command::new("ifind").args(["-d", &cluster.to_string()]).arg(volume))).unwrap();
    out.trim().split('-').next().and_then(|n| n.parse().ok())
}

#[test]
fn a_volume_of_200000_files_indexes_as_sleuth_kit_reads_it() {
    let volume = volume();
    let full = index(&volume, IndexDetail::Files);
    let lean = index(&volume, IndexDetail::Clusters);
    assert!(full.problems.is_empty(), "{:?}", &full.problems[..full.problems.len().min(5)]);
    assert!(full.layout.record_count >= FILES, "{} MFT records", full.layout.record_count);
    assert_eq!(lean.file_count(), full.file_count());
    // The index of clusters keeps the directories and metadata files alone.
    assert!(lean.files.iter().all(|f| f.directory || f.system()), "a plain file kept");
    assert!((lean.files.len() as u64) < FILES / 50, "the index of clusters keeps {} files", lean.files.len());
    // Every path, as fls lists them.
    let fls =
        String::from_utf8(run_ok(Command::new("fls").args(["-r", "-p", "-u", "-f", "ntfs"]).arg(&volume))).unwrap();
    let theirs: BTreeSet<String> = fls
        .lines()
        .filter(|l| !l.starts_with("V/V"))
        .filter_map(|l| l.split_once('\t').map(|(_, p)| p))
        .map(|p| match p.rfind(':') {
            Some(i) if !p[i..].contains('/') => p[..i].to_string(),
            _ => p.to_string(),
        })
        .collect();
    let ours: BTreeSet<String> = full.files.iter().flat_map(|f| full.paths(f)).filter(|p| p != ".").collect();
    let missing: Vec<&String> = theirs.difference(&ours).take(5).collect();
    let extra: Vec<&String> = ours.difference(&theirs).take(5).collect();
    assert!(missing.is_empty() && extra.is_empty(), "fls lists {missing:?} we do not; we list {extra:?}");
    assert!(ours.len() as u64 > FILES, "{} paths", ours.len());
    // JSON Lines stream the same entries from the volume, in record order.
    let lines = String::from_utf8(run_ok(bin("vhdinspect").args(["files", "--jsonl"]).arg(&volume))).unwrap();
    let streamed: BTreeSet<String> = lines
        .lines()
        .filter(|l| l.contains(r#""type":"file""#))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["path"].as_str().unwrap().to_string())
        .filter(|p| p != ".")
        .collect();
    assert!(streamed == ours, "files --jsonl lists {} paths, the index {}", streamed.len(), ours.len());
    // A sample of files: their clusters as istat lists them, owned by them in both indexes.
    let mut sampled = 0;
    for record in (100..full.layout.record_count).step_by(4001) {
        let Some(f) = full.file(record).filter(|f| !f.directory) else { continue };
        let ours: Vec<u64> = f
            .default_stream()
            .map(|s| s.runs.iter().filter_map(|r| r.lcn.map(|l| l..l + r.length)).flatten().collect())
            .unwrap_or_default();
        assert_eq!(ours, istat_clusters(&volume, record), "record {record}: clusters");
        for &c in &ours {
            for idx in [&full, &lean] {
                let owners: Vec<u64> = idx.owners.owners_of(c).iter().map(|&o| idx.owner(o).record).collect();
                assert_eq!(owners, [record], "cluster {c} of record {record}");
            }
        }
        sampled += 1;
    }
    assert!(sampled >= 40, "{sampled} files sampled");
    // A sample of clusters: the owner ifind names, and the index of clusters names the
    // file's path as the full index does.
    let view_img = open(&volume);
    let layout = DiskLayout::read(&view_img).unwrap();
    let view = PartitionView::new(&view_img, layout.partition(1).unwrap());
    let mut owned = 0;
    for c in (0..full.total_clusters()).step_by(9973) {
        let ours = full.owners.owners_of(c).first().map(|&o| full.owner(o).record);
        let theirs = ifind_owner(&volume, c);
        assert_eq!(ours, theirs, "cluster {c}: owner");
        if let Some(record) = ours {
            owned += 1;
            let path = full.file(record).map(|f| full.path(f, 0)).unwrap();
            assert_eq!(lean.path_of_record(&view, record), path, "cluster {c}: the owner's path");
        }
    }
    assert!(owned >= 10, "{owned} owned clusters sampled");
    // The block map of the index of clusters is the full index's.
    let img = open(&volume);
    let blocks = |detail| {
        let map = ImageMap::build_with(&img, None, detail).unwrap();
        serde_json::to_value(map.classify_blocks().unwrap()).unwrap()
    };
    assert_eq!(blocks(IndexDetail::Clusters), blocks(IndexDetail::Files), "block map");
}
