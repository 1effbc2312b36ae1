//! The `vhdcompact` report as text.

use std::path::PathBuf;

use crate::error::Result;
use crate::pass::compact::{CompactReport, OutputFormat, WhatIf};
use crate::report::table::{Section, human_bytes};

/// Renders the report.
pub fn render(r: &CompactReport) -> String {
    let mut s = Section::key_value(&format!("{} -> {}", r.input, r.output));
    s.kv(
        "formats",
        format!(
            "{} -> {} {}",
            crate::report::table::image_kind(r.input_format, r.input_container),
            format!("{:?}", r.output_format).to_lowercase(),
            r.output_container.name()
        ),
    );
    s.kv(
        "file size",
        format!(
            "{} -> {} ({:.1}% of the input)",
            human_bytes(r.input_bytes),
            human_bytes(r.output_bytes),
            100.0 * r.output_bytes as f64 / r.input_bytes.max(1) as f64
        ),
    );
    if r.output_disk_size != r.disk_size {
        let why = if r.realign.is_some() {
            "grown for the realigned partitions, to a whole MiB"
        } else {
            "rounded up to a whole MiB for Azure"
        };
        s.kv("disk size", format!("{} -> {} ({why})", r.disk_size, r.output_disk_size));
    } else {
        s.kv("disk size", format!("{} ({})", r.disk_size, human_bytes(r.disk_size)));
    }
    if r.input_block_size == r.block_size {
        s.kv("block size", human_bytes(r.block_size));
        s.kv("blocks", format!("{} before, {} after", r.blocks_before, r.blocks_after));
    } else {
        s.kv("block size", format!("{} -> {}", human_bytes(r.input_block_size), human_bytes(r.block_size)));
        s.kv(
            "blocks",
            format!(
                "{} of {} before, {} of {} after",
                r.blocks_before,
                human_bytes(r.input_block_size),
                r.blocks_after,
                human_bytes(r.block_size)
            ),
        );
    }
    if r.output_format == OutputFormat::Fixed {
        s.kv(
            "dropped",
            format!(
                "none: a fixed image stores every block ({} of free space written as zeros)",
                crate::report::table::count(r.zero_filled_blocks, "block")
            ),
        );
    } else {
        s.kv(
            "dropped",
            format!(
                "{} {} with no needed byte, {} all-zero",
                r.dropped_blocks,
                if r.dropped_blocks == 1 { "block" } else { "blocks" },
                r.dropped_zero_blocks
            ),
        );
    }
    if r.zeroed_bytes > 0 {
        s.kv("zeroed free space", human_bytes(r.zeroed_bytes));
    }
    if let Some(z) = &r.sanitized {
        s.kv(
            "sanitized",
            format!(
                "{} slack, {} free + {} used FILE and {} INDX records, {} $LogFile, {} page/swap/hiberfil",
                human_bytes(z.slack_bytes),
                z.free_records,
                z.record_tails,
                z.index_records,
                human_bytes(z.logfile_bytes),
                human_bytes(z.recreated_file_bytes)
            ),
        );
    }
    if let Some(v) = &r.verify {
        s.kv(
            "verify",
            if v.mismatches.is_empty() {
                format!("OK: {} needed bytes identical", v.checked_bytes)
            } else {
                format!("{} MISMATCHED ranges in {} needed bytes", v.mismatches.len(), v.checked_bytes)
            },
        );
    }
    s.kv("elapsed", format!("{:.2} s", r.elapsed_seconds));
    for f in &r.input_problems {
        s.kv("input problem", f.to_string());
    }
    let fixed = r.output_format == OutputFormat::Fixed;
    let columns: &[&str] = match fixed {
        true => &["#", "contents", "zero-filled blocks"],
        false => &["#", "contents", "dropped blocks", "dropped bytes"],
    };
    let mut p = Section::table("Partitions", columns);
    for part in &r.partitions {
        let mut row = vec![
            part.plan.index.to_string(),
            match &part.plan.problem {
                Some(why) => format!("{} (kept: {why})", part.plan.contents),
                None if part.plan.kept_whole => format!("{} (kept whole)", part.plan.contents),
                None => part.plan.contents.to_string(),
            },
        ];
        match fixed {
            true => row.push(part.zero_filled_blocks.to_string()),
            false => row.extend([part.plan.dropped_blocks.to_string(), human_bytes(part.dropped_bytes)]),
        }
        p.row(row);
    }
    let mut out = s.render() + "\n" + &p.render();
    if let Some(r) = &r.realign {
        match r.boundary {
            Some(b) if r.moves.is_empty() && r.changes.is_empty() => out
                .push_str(&format!("\nEvery partition already starts on a {} boundary: none moved\n", human_bytes(b))),
            Some(b) => out.push_str(&format!("\nRealigned to {}:\n", human_bytes(b))),
            None => out.push_str("\nPartition table adjusted to the grown disk:\n"),
        }
        for m in &r.moves {
            out.push_str(&format!("  partition {}: sector {} -> {}\n", m.index, m.old_start_lba, m.new_start_lba));
        }
        for c in &r.changes {
            out.push_str(&format!("  patched {c}\n"));
        }
        for c in &r.impossible {
            out.push_str(&format!("  NOT PATCHED {c}: Windows may fail to boot (0xc0000225)\n"));
        }
    }
    if let Some(v) = &r.verify {
        for m in &v.mismatches {
            out.push_str(&format!(
                "MISMATCH at disk offset {:#x} ({} bytes): input {} output {}\n",
                m.offset, m.length, m.input_blake3, m.output_blake3
            ));
        }
    }
    out
}

/// A `--what-if --json` line for an image that could not be read.
#[derive(serde::Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct WhatIfFailure {
    pub file: String,
    /// Why it could not be read: the one-line error.
    pub error: String,
}

/// The `--what-if` table: one row per image, then the total.
pub fn render_what_if(images: &[PathBuf], results: &[Result<WhatIf>]) -> String {
    // Images of one folder are named by file name, the folder once in the title.
    let folder = images.first().and_then(|p| p.parent()).filter(|f| images.iter().all(|p| p.parent() == Some(*f)));
    let name = |p: &PathBuf| match (folder, p.file_name()) {
        (Some(_), Some(n)) => n.to_string_lossy().into_owned(),
        _ => p.display().to_string(),
    };
    let title = match folder.filter(|f| !f.as_os_str().is_empty()) {
        Some(f) => format!("What compaction would reclaim in {} (nothing written)", f.display()),
        None => "What compaction would reclaim (nothing written)".to_string(),
    };
    let mut t = Section::table(
        &title,
        &["image", "format", "block size", "stored", "reclaimable now", "with 1 MiB blocks", "note"],
    );
    let (mut stored, mut now, mut smallest) = (0u64, 0u64, 0u64);
    for (path, r) in images.iter().zip(results) {
        match r {
            Ok(w) => {
                stored += w.stored_bytes;
                now += w.reclaimable_bytes;
                smallest += w.reclaimable_with_smallest_blocks;
                t.row(vec![
                    name(path),
                    crate::report::table::image_kind(w.format, w.container),
                    human_bytes(w.block_size),
                    human_bytes(w.stored_bytes),
                    share(w.reclaimable_bytes, w.stored_bytes),
                    share(w.reclaimable_with_smallest_blocks, w.stored_bytes),
                    w.refusal.clone().map(|why| format!("needs --force: {why}")).unwrap_or_default(),
                ]);
            }
            Err(e) => {
                let why = e.to_string();
                let prefix = format!("{}: ", path.display());
                t.row(vec![
                    name(path),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    why.strip_prefix(&prefix).unwrap_or(&why).to_string(),
                ])
            }
        }
    }
    t.unwrapped_column(0);
    if images.len() > 1 {
        t.row(vec![
            format!("total ({} images)", images.len()),
            String::new(),
            String::new(),
            human_bytes(stored),
            share(now, stored),
            share(smallest, stored),
            String::new(),
        ]);
    }
    t.render()
}

/// Bytes and their share of `of`.
fn share(bytes: u64, of: u64) -> String {
    format!("{} ({:.0}%)", human_bytes(bytes), 100.0 * bytes as f64 / of.max(1) as f64)
}

/// Renders an upload's report.
pub fn render_upload(r: &crate::pass::upload::UploadReport) -> String {
    let mut s = Section::key_value(&format!("{} -> {}", r.input, r.blob));
    s.kv("blob", format!("page blob of {} ({} disk + footer)", r.blob_size, human_bytes(r.disk_size)));
    s.kv("sent", format!("{} in {} Put Page requests", human_bytes(r.bytes_sent), r.page_writes));
    s.kv("not sent: free", human_bytes(r.skipped_free_bytes));
    s.kv("not sent: zeros", human_bytes(r.skipped_zero_bytes));
    if r.resumed_bytes > 0 {
        s.kv("already there", format!("{} (an interrupted upload resumed)", human_bytes(r.resumed_bytes)));
    }
    if r.retries > 0 {
        s.kv("retries", r.retries.to_string());
    }
    if let Some(v) = &r.verify {
        let verdict = if v.mismatches.is_empty() {
            format!("OK: {} read back identical", human_bytes(v.checked_bytes))
        } else {
            format!("{} writes differ", v.mismatches.len())
        };
        s.kv("verify", verdict);
    }
    s.kv("elapsed", format!("{:.2} s", r.elapsed_seconds));
    s.render()
}
