//! `vhdinspect rebase-plan CHILD --onto NEW_PARENT`: what moving a differencing disk onto an
//! updated copy of its parent would mean, file by file (nothing is written). The child's
//! changes are the files whose sectors it holds (as `diff` finds them); the new parent's are
//! the files whose size or last-written time differ from the old parent's, or that one of them
//! lacks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::map::ImageMap;
use crate::ntfs::NtfsIndex;
use crate::vhd::device::BlockDevice;
use crate::vhd::image::DiskImage;

/// How the new parent differs from the old one at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ParentChange {
    Added,
    Changed,
    Deleted,
}

/// A file of the plan.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PlannedFile {
    pub partition: u32,
    pub path: String,
    /// How the new parent differs at this path, if it does.
    pub onto: Option<ParentChange>,
}

/// The plan.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RebasePlan {
    /// The child.
    pub file: String,
    /// Its parent now.
    pub parent: String,
    /// The parent it would move onto.
    pub onto: String,
    /// Files the child changed and the new parent left alone: carried over.
    pub carry_over: Vec<PlannedFile>,
    /// Files both changed: the child's version would hide the new parent's.
    pub conflicts: Vec<PlannedFile>,
    /// Files only the new parent changed: taken from it.
    pub take_onto: Vec<PlannedFile>,
}

/// Plans moving the child of `child` (its chain open) onto `onto`.
pub fn build(child: &ImageMap<'_>, onto: &DiskImage) -> Result<RebasePlan> {
    let image = child.image;
    let Some(parent) = image.parent() else {
        return Err(Error::unsupported(image.source(), format!("not a differencing image ({})", image.kind())));
    };
    if onto.len() != parent.len() {
        return Err(Error::unsupported(
            onto.source(),
            format!("{} bytes, the parent has {}: not an updated copy of it", onto.len(), parent.len()),
        ));
    }
    let changed_by_child: BTreeSet<(u32, String)> = crate::report::diff::build(child)?
        .files
        .into_iter()
        .filter(|f| !f.metadata)
        .map(|f| (f.partition, f.path))
        .collect();
    let old = ImageMap::build(parent, None)?;
    let new = ImageMap::build(onto, None)?;
    let mut changed_by_onto: BTreeMap<(u32, String), ParentChange> = BTreeMap::new();
    for (p, old_idx) in old.ntfs() {
        let Some((_, new_idx)) = new.ntfs().find(|(q, _)| q.index == p.index) else { continue };
        let before = signatures(&old, old_idx, parent)?;
        let after = signatures(&new, new_idx, onto)?;
        for (path, sig) in &before {
            match after.get(path) {
                None => _ = changed_by_onto.insert((p.index, path.clone()), ParentChange::Deleted),
                Some(s) if s != sig => _ = changed_by_onto.insert((p.index, path.clone()), ParentChange::Changed),
                Some(_) => {}
            }
        }
        for path in after.keys().filter(|k| !before.contains_key(*k)) {
            changed_by_onto.insert((p.index, path.clone()), ParentChange::Added);
        }
    }
    let planned = |(partition, path): &(u32, String), onto: Option<ParentChange>| PlannedFile {
        partition: *partition,
        path: path.clone(),
        onto,
    };
    let (mut carry_over, mut conflicts) = (Vec::new(), Vec::new());
    for key in &changed_by_child {
        match changed_by_onto.get(key) {
            Some(&c) => conflicts.push(planned(key, Some(c))),
            None => carry_over.push(planned(key, None)),
        }
    }
    let take_onto = changed_by_onto
        .iter()
        .filter(|(k, _)| !changed_by_child.contains(*k))
        .map(|(k, &c)| planned(k, Some(c)))
        .collect();
    Ok(RebasePlan {
        file: image.source().display().to_string(),
        parent: parent.source().display().to_string(),
        onto: onto.source().display().to_string(),
        carry_over,
        conflicts,
        take_onto,
    })
}

/// Every non-metadata file's path (one per name) with what tells a change: its size and its
/// last-written time.
fn signatures(map: &ImageMap<'_>, idx: &NtfsIndex, image: &DiskImage) -> Result<BTreeMap<String, (u64, u64)>> {
    let Some(pm) = map.partitions.iter().find(|pm| pm.partition.index == idx.partition) else {
        return Ok(BTreeMap::new());
    };
    let volume = crate::disk::PartitionView::new(image, &pm.partition);
    let mut out = BTreeMap::new();
    for f in idx.files.iter().filter(|f| !f.is_metadata() && !f.directory) {
        let size = f.default_stream().map_or(0, |s| s.data_size);
        let modified = idx.times(&volume, f)?.modified;
        for name in 0..f.names.len() {
            out.insert(idx.path(f, name), (size, modified));
        }
    }
    Ok(out)
}

/// Renders the plan.
pub fn render(r: &RebasePlan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} from {} onto {} (nothing written)", r.file, r.parent, r.onto);
    let sections: [(&str, &Vec<PlannedFile>); 3] = [
        ("carried over (the child changed them, the new parent did not)", &r.carry_over),
        ("conflicts (both changed them: the child's version would hide the new parent's)", &r.conflicts),
        ("taken from the new parent (only it changed them)", &r.take_onto),
    ];
    for (title, files) in sections {
        let _ = writeln!(out, "{}: {title}", crate::report::table::count(files.len() as u64, "file"));
        for f in files {
            let how = match f.onto {
                Some(ParentChange::Added) => " (added in the new parent)",
                Some(ParentChange::Deleted) => " (deleted in the new parent)",
                _ => "",
            };
            let _ = writeln!(out, "  partition {} {}{how}", f.partition, f.path);
        }
    }
    out
}
