//! The `vhdinspect extract` report as text.

use crate::pass::extract::ExtractReport;
use crate::report::table::{Section, human_bytes};

/// Renders the report: what was written, then everything left out and why.
pub fn render(r: &ExtractReport) -> String {
    let mut s = Section::key_value(&format!("Extracted into {}", r.output));
    let partitions: Vec<String> = r.partitions.iter().map(u32::to_string).collect();
    s.kv("partitions", partitions.join(", "));
    s.kv("folders", r.directories.to_string());
    s.kv("files", format!("{} ({})", r.files, human_bytes(r.bytes)));
    s.kv("alternate data streams", r.streams.to_string());
    s.kv("hard links", r.hard_links.to_string());
    s.kv("elapsed", format!("{:.2} s", r.elapsed_seconds));
    let mut out = s.render();
    if !r.skipped.is_empty() {
        let mut t = Section::table("Left out", &["partition", "path", "why"]);
        for k in &r.skipped {
            t.row(vec![k.partition.to_string(), k.path.clone(), k.why.clone()]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}
