//! The correlation layer: `map`'s droppable blocks against an independent computation from
//! ntfs-3g's `$Bitmap`, `owner` regions and file placement, and `diff` on a differencing child.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use vhdkit::ParentLink;
use vhdkit::{BlockDevice, DiskImage, SparseVhd, WritableDevice};

fn json(cmd: &mut Command) -> serde_json::Value {
    serde_json::from_slice(&run_ok(cmd)).unwrap()
}

fn le(b: &[u8]) -> u64 {
    b.iter().rev().fold(0, |a, &x| a << 8 | x as u64)
}

/// Droppable blocks computed from scratch: raw bytes, the MBR's entries and each NTFS volume's
/// `$Bitmap` as `ntfscat -i 6` reads it.
fn independent_droppable(image: &Path, dir: &Path) -> Vec<bool> {
    let img = open(image);
    let disk = read_all(&img);
    let block = img.as_sparse().map_or(2 << 20, |s| s.block_size()) as usize;
    // Needed: every non-zero byte, then NTFS free clusters are taken out.
    let mut needed: Vec<bool> = disk.iter().map(|&b| b != 0).collect();
    let parts = json(bin("vhdinspect").args(["dump", "--json"]).arg(image));
    for p in parts["partitions"].as_array().unwrap() {
        let start = p["start_lba"].as_u64().unwrap() as usize * 512;
        let len = p["sectors"].as_u64().unwrap() as usize * 512;
        let boot = &disk[start..start + 512];
        if &boot[3..11] != b"NTFS    " {
            continue;
        }
        let bps = le(&boot[0x0B..0x0D]) as usize;
        let cluster = bps * boot[0x0D] as usize;
        let total_sectors = le(&boot[0x28..0x30]) as usize;
        let clusters = total_sectors * bps / cluster;
        let part = dir.join("vol.img");
        std::fs::write(&part, &disk[start..start + len]).unwrap();
        let bitmap = run_ok(Command::new("ntfscat").arg("-i").arg("6").arg(&part));
        for c in 0..clusters {
            let allocated = bitmap[c / 8] & (1 << (c % 8)) != 0;
            let at = start + c * cluster;
            needed[at..at + cluster].fill(allocated);
        }
        // The backup boot sector just past the volume is needed, zero or not.
        let backup = start + total_sectors * bps;
        needed[backup..backup + bps].fill(true);
    }
    let allocated: Vec<bool> = match img.as_sparse() {
        Some(s) => (0..disk.len().div_ceil(block)).map(|b| s.bat().sector(b as u64).is_some()).collect(),
        None => vec![true; disk.len().div_ceil(block)],
    };
    needed.chunks(block).zip(allocated).map(|(c, a)| a && !c.iter().any(|&n| n)).collect()
}

#[test]
fn droppable_blocks_match_an_independent_computation() {
    let dir = tempdir();
    for name in ["xp-fixed.vhd", "aligned-dynamic.vhd", "logical-dynamic.vhd", "gpt-dynamic.vhd", "nofs-dynamic.vhd"] {
        let path = corpus(name);
        let j = json(bin("vhdinspect").args(["map", "--json"]).arg(&path));
        let ours: Vec<bool> =
            j["blocks"].as_array().unwrap().iter().map(|b| b["allocated"] == true && b["droppable"] == true).collect();
        assert_eq!(ours, independent_droppable(&path, dir.path()), "{name}");
        let n = ours.iter().filter(|&&d| d).count() as u64;
        assert_eq!(j["summary"]["droppable_blocks"], n, "{name}");
    }
    // The XP image has stale data of deleted files in blocks that hold no allocated cluster.
    let j = json(bin("vhdinspect").args(["map", "--json"]).arg(corpus("xp-fixed.vhd")));
    assert!(j["summary"]["droppable_blocks"].as_u64().unwrap() >= 10);
}

#[test]
fn map_draws_an_svg_that_renders_as_stated() {
    let dir = tempdir();
    let svg = dir.path().join("map.svg");
    let j = json(bin("vhdinspect").args(["map", "--json", "--svg"]).arg(&svg).arg(corpus("logical-dynamic.vhd")));
    let text = std::fs::read_to_string(&svg).unwrap();
    let cells = svg_rects(&text, "cell");
    let blocks = j["blocks"].as_array().unwrap();
    assert_eq!(cells.len(), blocks.len(), "one cell per block");
    assert!(text.contains("<title>block 0 at 0 bytes: "), "a tooltip per block");
    for p in ["partition 1: ntfs", "partition 5: ntfs", "partition 6: ntfs"] {
        assert!(text.contains(p), "{p} is labelled");
    }
    let swatches = svg_rects(&text, "swatch");
    assert_eq!(swatches.len(), 7);
    let grid_top = cells.iter().map(|c| c.1).min().unwrap();
    assert!(swatches.iter().all(|s| s.1 + 14 < grid_top), "the legend is above the grid");
    // Rendered by a real SVG renderer, each cell shows its block's state in one colour per
    // state.
    let (width, height, pixels) = render(&svg);
    assert_eq!((width, height), svg_size(&text));
    let mut colour_of_state = std::collections::HashMap::new();
    for (cell, block) in cells.iter().zip(blocks) {
        let at = ((cell.1 + 5) * width + cell.0 + 5) * 3;
        let px = [pixels[at], pixels[at + 1], pixels[at + 2]];
        assert_eq!(px, cell.2, "block {}: rendered colour", block["block"]);
        let state = block["state"].as_str().unwrap().to_string();
        assert_eq!(*colour_of_state.entry(state.clone()).or_insert(px), px, "{state} has one colour");
    }
    let distinct: std::collections::HashSet<_> = colour_of_state.values().collect();
    assert_eq!(distinct.len(), colour_of_state.len(), "states have distinct colours");
}

#[test]
fn the_svg_of_a_large_disk_stays_small_and_says_it_groups_blocks() {
    let dir = tempdir();
    let image = dir.path().join("big.vhd");
    run_ok(
        Command::new("qemu-img").args(["create", "-q", "-f", "vpc", "-o", "subformat=dynamic"]).arg(&image).arg("1T"),
    );
    let svg = dir.path().join("map.svg");
    run_ok(bin("vhdinspect").args(["map", "--svg"]).arg(&svg).arg(&image));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_rects(&text, "cell").len() <= 4096);
    assert!(text.contains("blocks (256.0 MiB) per cell"), "the grouping is stated");
    let (width, height, _) = render(&svg);
    assert!(width <= 1200 && height <= 1200, "{width}x{height}");
}

#[test]
fn the_svg_keeps_its_labels_whole_and_marks_each_offset_once() {
    let dir = tempdir();
    // A 200 GiB GPT disk (sparse, raw): one long partition label, offsets that round alike.
    let raw = dir.path().join("big.raw");
    std::fs::File::create(&raw).unwrap().set_len(200 << 30).unwrap();
    run_ok(Command::new("sgdisk").args(["-o", "-n", "1:2048:0", "-t", "1:0700"]).arg(&raw));
    let svg = dir.path().join("map.svg");
    run_ok(bin("vhdinspect").args(["map", "--svg"]).arg(&svg).arg(&raw));
    let text = std::fs::read_to_string(&svg).unwrap();
    let (width, _) = svg_size(&text);
    let texts: Vec<(usize, &str, &str)> = text
        .split("<text x=\"")
        .skip(1)
        .map(|t| {
            let x = t.split('"').next().unwrap().parse().unwrap();
            let tag_end = t.find('>').unwrap();
            (x, &t[..tag_end], t[tag_end + 1..].split("</text>").next().unwrap())
        })
        .collect();
    let label = texts.iter().find(|(_, _, body)| body.starts_with("partition 1:")).expect("the partition's label");
    assert!(label.0 + label.2.chars().count() * 7 <= width, "{label:?} is cut at {width}");
    let ticks: Vec<&str> =
        texts.iter().filter(|(_, tag, _)| tag.contains("text-anchor=\"end\"")).map(|t| t.2).collect();
    let mut unique = ticks.clone();
    unique.dedup();
    assert_eq!(ticks, unique, "an offset is marked twice");
    assert!(ticks.len() > 4, "{ticks:?}");
}

/// The (x, y, fill) of every `<rect class="CLASS" ...>` of an SVG written by vhdinspect.
fn svg_rects(text: &str, class: &str) -> Vec<(usize, usize, [u8; 3])> {
    let attr = |tag: &str, name: &str| -> String {
        let from = tag.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
        tag[from..].split('"').next().unwrap().to_string()
    };
    text.split("<rect")
        .filter(|t| t.starts_with(&format!(" class=\"{class}\"")))
        .map(|t| {
            let fill = hex::decode(attr(t, "fill").trim_start_matches('#')).unwrap();
            (attr(t, "x").parse().unwrap(), attr(t, "y").parse().unwrap(), [fill[0], fill[1], fill[2]])
        })
        .collect()
}

/// The width and height an SVG states.
fn svg_size(text: &str) -> (usize, usize) {
    let num = |name: &str| -> usize {
        let from = text.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
        text[from..].split('"').next().unwrap().parse().unwrap()
    };
    (num("width"), num("height"))
}

/// The SVG rendered by rsvg-convert: width, height and RGB pixels.
fn render(svg: &Path) -> (usize, usize, Vec<u8>) {
    let png = svg.with_extension("png");
    run_ok(Command::new("rsvg-convert").args(["--background-color", "white", "-o"]).arg(&png).arg(svg));
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let rgb = buf[..info.buffer_size()].chunks(channels).flat_map(|p| [p[0], p[1], p[2]]).collect();
    (info.width as usize, info.height as usize, rgb)
}

#[test]
fn owner_names_every_kind_of_region() {
    let cases: [(&str, &str, &str, &str); 8] = [
        ("xp-fixed.vhd", "--sector", "0", "mbr"),
        ("xp-fixed.vhd", "--sector", "10", "partition gap"),
        ("xp-fixed.vhd", "--sector", "63", "ntfs boot sector"),
        ("xp-fixed.vhd", "--sector", "131071", "ntfs backup boot sector"),
        ("logical-dynamic.vhd", "--sector", "40960", "ebr"),
        ("gpt-dynamic.vhd", "--sector", "1", "gpt"),
        ("gpt-dynamic.vhd", "--sector", "131070", "gpt"),
        ("nofs-dynamic.vhd", "--sector", "5000", "non-ntfs partition"),
    ];
    for (image, flag, value, region) in cases {
        let j = json(bin("vhdinspect").args(["owner", "--json", flag, value]).arg(corpus(image)));
        assert_eq!(j["region"], region, "{image} {flag} {value}: {j}");
    }
    // A cluster of $MFT, and a free cluster.
    let j = json(
        bin("vhdinspect").args(["owner", "--json", "--cluster", "4", "--partition", "1"]).arg(corpus("xp-fixed.vhd")),
    );
    assert_eq!(j["owners"][0]["path"], "$MFT");
    assert_eq!(j["owners"][0]["mft_record"], 0);
    assert_eq!(j["allocated"], true);
    let files = json(bin("vhdinspect").args(["files", "--json"]).arg(corpus("xp-fixed.vhd")));
    let total = files["volumes"][0]["total_clusters"].as_u64().unwrap();
    let free = (1000..total)
        .find(|c| {
            let j = json(
                bin("vhdinspect")
                    .args(["owner", "--json", "--cluster", &c.to_string(), "--partition", "1"])
                    .arg(corpus("xp-fixed.vhd")),
            );
            j["region"] == "free cluster"
        })
        .expect("a free cluster");
    let j = json(
        bin("vhdinspect")
            .args(["owner", "--json", "--cluster", &free.to_string(), "--partition", "1"])
            .arg(corpus("xp-fixed.vhd")),
    );
    assert_eq!(j["allocated"], false);
    assert!(j["owners"].as_array().unwrap().is_empty());
    // A sector past the last partition (a raw disk one MiB longer than its partitions).
    let dir = tempdir();
    let raw = dir.path().join("longer.raw");
    let mut disk = read_all(&open(&corpus("xp-fixed.vhd")));
    disk.resize(disk.len() + (1 << 20), 0);
    std::fs::write(&raw, &disk).unwrap();
    let j = json(bin("vhdinspect").args(["owner", "--json", "--sector", "131100"]).arg(&raw));
    assert_eq!(j["region"], "outside any partition");
}

#[test]
fn owner_file_places_every_byte_of_a_fragmented_file() {
    let dir = tempdir();
    let image = corpus("xp-fixed.vhd");
    let j = json(bin("vhdinspect").args(["owner", "--json", "--file", "docs/fragmented.bin"]).arg(&image));
    let disk = read_all(&open(&image));
    let mut content = Vec::new();
    let data =
        j["streams"].as_array().unwrap().iter().find(|s| s["attribute"] == "$DATA" && s["stream"] == "").unwrap();
    for r in data["runs"].as_array().unwrap() {
        let at = r["disk_offset"].as_u64().unwrap() as usize;
        let n = r["sectors"].as_u64().unwrap() as usize * 512;
        content.extend_from_slice(&disk[at..at + n]);
    }
    content.truncate(2_400_000);
    let part = dir.path().join("p.img");
    std::fs::write(&part, &disk[63 * 512..(63 + 131009) * 512]).unwrap();
    let theirs = run_ok(Command::new("ntfscat").arg(&part).arg("docs/fragmented.bin"));
    assert_eq!(sha256(&content), sha256(&theirs));
    let blocks = j["blocks"].as_array().unwrap();
    assert!(blocks.len() >= 3, "spread over several blocks: {blocks:?}");
    // Unknown path: one-line error.
    let out = run(bin("vhdinspect").args(["owner", "--file", "no/such/file"]).arg(&image));
    assert_one_line_error(&out, "xp-fixed.vhd", &["no file"]);
}

/// Writes a differencing child of `parent` whose content is `want`: only differing sectors.
pub fn child_with(parent: &Path, child: &Path, want: &[u8]) {
    let parent_img = open(parent);
    let base = read_all(&parent_img);
    let mut c = SparseVhd::create(child, 0, 2 << 20, Some(ParentLink { image: &parent_img, path: parent })).unwrap();
    let mut s = 0;
    let sectors = want.len() / 512;
    while s < sectors {
        if want[s * 512..(s + 1) * 512] == base[s * 512..(s + 1) * 512] {
            s += 1;
            continue;
        }
        let first = s;
        while s < sectors && want[s * 512..(s + 1) * 512] != base[s * 512..(s + 1) * 512] {
            s += 1;
        }
        c.write_at(first as u64 * 512, &want[first * 512..s * 512]).unwrap();
    }
    c.flush().unwrap();
}

#[test]
fn diff_lists_the_files_a_child_changes() {
    let dir = tempdir();
    let parent = dir.path().join("parent.vhd");
    std::fs::copy(corpus("aligned-dynamic.vhd"), &parent).unwrap();
    let disk = read_all(&open(&parent));
    // Change the disk with ntfs-3g: overwrite one file, add another.
    let part = dir.path().join("vol.img");
    let (start, len) = (2048 * 512, 129024 * 512);
    std::fs::write(&part, &disk[start..start + len]).unwrap();
    let new_file = dir.path().join("new.bin");
    std::fs::write(&new_file, vec![0x5A; 300_000]).unwrap();
    run_ok(Command::new("ntfscp").arg("-f").arg(&part).arg(&new_file).arg("data/added.bin"));
    let replacement = dir.path().join("small.bin");
    std::fs::write(&replacement, vec![0xA5; 300_000]).unwrap();
    run_ok(Command::new("ntfscp").arg("-f").arg(&part).arg(&replacement).arg("data/nested/small.bin"));
    // A file small enough to live in its MFT record: only its record changes.
    let tiny = dir.path().join("tiny.txt");
    std::fs::write(&tiny, b"resident data").unwrap();
    run_ok(Command::new("ntfscp").arg("-f").arg(&part).arg(&tiny).arg("data/tiny.txt"));
    let mut changed = disk.clone();
    changed[start..start + len].copy_from_slice(&std::fs::read(&part).unwrap());
    let child = dir.path().join("child.vhd");
    child_with(&parent, &child, &changed);
    assert_eq!(read_all(&open(&child)), changed);
    let j = json(bin("vhdinspect").args(["diff", "--json"]).arg(&child));
    let paths: Vec<&str> = j["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"data/added.bin"), "{paths:?}");
    assert!(paths.contains(&"data/nested/small.bin"), "{paths:?}");
    assert!(!paths.contains(&"data/hello.txt"), "unchanged file listed: {paths:?}");
    let file = |p: &str| j["files"].as_array().unwrap().iter().find(|f| f["path"] == p).unwrap().clone();
    let added = file("data/added.bin");
    let record = added["record_sectors"].as_u64().unwrap();
    assert_eq!(added["sectors"].as_u64().unwrap() - record, 300_000u64.div_ceil(512));
    assert!(record >= 1, "its new MFT record is part of the change");
    // The resident file is found through its record, not lost in "$MFT".
    let tiny = file("data/tiny.txt");
    assert!(tiny["record_sectors"].as_u64().unwrap() >= 1);
    assert_eq!(tiny["sectors"], tiny["record_sectors"]);
    // A dynamic image is refused with a clear error.
    let out = run(bin("vhdinspect").arg("diff").arg(&parent));
    assert_one_line_error(&out, "parent.vhd", &["not a differencing image"]);
}

#[test]
fn map_of_a_differencing_child_drops_blocks_whose_present_sectors_are_free() {
    let dir = tempdir();
    let parent = dir.path().join("parent.vhd");
    std::fs::copy(corpus("aligned-dynamic.vhd"), &parent).unwrap();
    let img = DiskImage::open(&parent, &Default::default()).unwrap();
    let files = json(bin("vhdinspect").args(["map", "--json"]).arg(&parent));
    // A droppable block of the parent holds only free clusters: write there in a child.
    let free_block =
        files["blocks"].as_array().unwrap().iter().find(|b| b["droppable"] == true).unwrap()["block"].as_u64().unwrap();
    let child = dir.path().join("child.vhd");
    let mut want = read_all(&img);
    let at = (free_block * (2 << 20)) as usize + 4096;
    want[at..at + 8192].fill(0x77);
    child_with(&parent, &child, &want);
    let j = json(bin("vhdinspect").args(["map", "--json"]).arg(&child));
    let b = &j["blocks"][free_block as usize];
    assert_eq!(
        (b["allocated"].clone(), b["sectors_present"].clone(), b["droppable"].clone()),
        (true.into(), 16.into(), true.into())
    );
    assert_eq!(img.len(), open(&child).len());
}
