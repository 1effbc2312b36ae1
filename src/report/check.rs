//! The `vhdinspect check` report: every structural problem of the container, the partition
//! table and the volume boot sectors.

use serde::Serialize;

use crate::disk::layout::DiskLayout;
use crate::disk::volume::{self, BackupState};
use crate::error::{Result, Space};
use crate::map::ImageMap;
use crate::report::table::Section;
use crate::vhd::check::check_image;
use crate::vhd::device::BlockDevice;
use crate::vhd::finding::Finding;
use crate::vhd::image::DiskImage;

/// The check result.
#[derive(Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CheckReport {
    pub file: String,
    pub format: crate::vhd::ImageKind,
    /// `raw`, `vhd` or `vhdx`.
    pub container: crate::vhd::image::ImageFormat,
    pub clean: bool,
    /// `findings`, as in `dump`.
    #[serde(rename = "findings")]
    pub problems: Vec<Finding>,
}

/// Checks an image opened leniently.
pub fn build(image: &DiskImage) -> Result<CheckReport> {
    let mut problems = check_image(image)?;
    let layout = match DiskLayout::read(image) {
        Ok(layout) => layout,
        Err(e) => {
            problems.push(Finding::new(image.source(), "disk contents", Space::Disk, 0, e.to_string()));
            DiskLayout::default()
        }
    };
    problems.extend(layout.findings.iter().cloned());
    for p in &layout.partitions {
        let v = match volume::probe(image, p) {
            Ok(v) => v,
            Err(e) => {
                problems.push(Finding::new(
                    image.source(),
                    format!("partition {} boot sector", p.index),
                    Space::Disk,
                    p.start(),
                    e.to_string(),
                ));
                continue;
            }
        };
        let at = p.start();
        if let Some(why) = &v.problem {
            problems.push(Finding::new(
                image.source(),
                format!("partition {} boot sector", p.index),
                Space::Disk,
                at,
                why,
            ));
        }
        if v.backup_boot_sector == Some(BackupState::Differs) {
            problems.push(Finding::new(
                image.source(),
                format!("partition {} NTFS backup boot sector", p.index),
                Space::Disk,
                at + v.backup_boot_sector_offset.unwrap_or(0),
                "differs from the boot sector",
            ));
        }
    }
    problems.extend(volume_states(image));
    Ok(CheckReport {
        file: image.source().display().to_string(),
        format: image.kind(),
        container: image.format(),
        clean: problems.is_empty(),
        problems,
    })
}

/// NTFS volumes Windows left dirty or hibernated: writers refuse them, so `check` says so.
fn volume_states(image: &DiskImage) -> Vec<Finding> {
    let map = match ImageMap::build(image, None) {
        Ok(m) => m,
        Err(e) => return vec![Finding::new(image.source(), "NTFS volumes", Space::Disk, 0, e.to_string())],
    };
    let mut out = Vec::new();
    for (p, idx) in map.ntfs() {
        let at = p.start();
        if idx.state.hibernated {
            out.push(Finding::new(
                image.source(),
                format!("partition {} NTFS volume", p.index),
                Space::Disk,
                at,
                "hibernated: hiberfil.sys holds a live image (Windows hibernated or used fast startup)",
            ));
        }
        if idx.state.dirty {
            out.push(Finding::new(
                image.source(),
                format!("partition {} NTFS $Volume flags", p.index),
                Space::Disk,
                at,
                "dirty: the volume was not shut down cleanly (chkdsk pending)",
            ));
        }
    }
    out
}

/// Renders the check as a table, or a one-line all-clear.
pub fn render(r: &CheckReport) -> String {
    if r.clean {
        return format!(
            "{}: {} image, no problems found\n",
            r.file,
            crate::report::table::image_kind(r.format, r.container)
        );
    }
    let mut s = Section::table(
        &format!(
            "{}: {} in this {} image",
            r.file,
            crate::report::table::count(r.problems.len() as u64, "problem"),
            crate::report::table::image_kind(r.format, r.container)
        ),
        &["file", "structure", "offset", "problem"],
    );
    for p in &r.problems {
        s.row(vec![p.file.clone(), p.structure.clone(), format!("{} {:#x}", p.space, p.offset), p.problem.clone()]);
    }
    s.render()
}
