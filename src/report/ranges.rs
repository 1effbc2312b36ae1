//! `vhdinspect ranges`: the page blob upload plan.

use std::fmt::Write;

use serde::Serialize;

use crate::error::Result;
use crate::map::ImageMap;
use crate::vhd::device::BlockDevice;

/// One range to upload.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Range {
    pub offset: u64,
    pub length: u64,
}

/// The plan.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RangesReport {
    pub file: String,
    pub disk_size: u64,
    /// Bytes the ranges cover.
    pub data_bytes: u64,
    pub ranges: Vec<Range>,
}

/// Builds the plan.
pub fn build(map: &ImageMap<'_>) -> Result<RangesReport> {
    let ranges: Vec<Range> = map.data_ranges()?.into_iter().map(|(a, z)| Range { offset: a, length: z - a }).collect();
    Ok(RangesReport {
        file: map.image.source().display().to_string(),
        disk_size: map.image.len(),
        data_bytes: ranges.iter().map(|r| r.length).sum(),
        ranges,
    })
}

/// One line per range.
pub fn render(r: &RangesReport) -> String {
    let mut out = format!(
        "{}: {}, {} of {} to upload\n",
        r.file,
        crate::report::table::count(r.ranges.len() as u64, "range"),
        r.data_bytes,
        crate::report::table::count(r.disk_size, "byte")
    );
    for range in &r.ranges {
        let _ = writeln!(out, "{:#014x} {:>10}", range.offset, range.length);
    }
    out
}
