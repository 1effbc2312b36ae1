//! `commit`: merges a differencing child into its parent, in place. Only the sectors the child
//! holds are written, and of those only the ones an NTFS volume needs (a sector that is a
//! free cluster in the child's view keeps the parent's bytes: no file can tell). The plan is
//! made over the child's chain; the parent is then opened alone, locked exclusively, checked
//! to be the file planned for, and written in journaled batches of at most [`BATCH`] bytes.
//! The child shadows every sector a batch writes, so the chain reads the same before, during
//! and after the commit; an interrupted commit is finished by running it again.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Remedy, Result};
use crate::host::FileId;
use crate::map::ImageMap;
use crate::map::blocks::NeedKind;
use crate::pass::Event;
use crate::pass::container::family;
use crate::pass::disk_write::{self, DiskWrite};
use crate::vhd::device::{BlockDevice, nonzero_ranges};
use crate::vhd::image::{DiskImage, OpenOptions};

/// Bytes of the child written into the parent per journaled step: memory stays bounded
/// whatever the child holds.
pub const BATCH: u64 = 16 << 20;

/// The options of [`commit`].
#[derive(Clone, Debug, Default)]
pub struct CommitOptions {
    /// Delete the child once its sectors are in the parent.
    pub remove: bool,
    /// Commit although other children of the parent were found (they will read changed
    /// data and are corrupted by it), the child has children of its own to remove, or an
    /// NTFS volume is dirty or hibernated (its `$Bitmap` may not name every used cluster).
    pub force: bool,
    pub open: OpenOptions,
}

/// What [`commit`] did.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CommitReport {
    pub file: String,
    pub parent: String,
    /// Bytes the child holds of its own.
    pub child_bytes: u64,
    /// Of them, bytes written into the parent.
    pub written_bytes: u64,
    /// Of them, bytes left out: free NTFS clusters in the child's view.
    pub skipped_free_bytes: u64,
    /// Of them, free clusters the child holds as zeros over the parent's data (wiped by the
    /// guest), written: the wipe reaches the parent.
    pub zeroed_free_bytes: u64,
    /// Other children of the parent found beside it (the commit went on only with `force`).
    pub siblings: Vec<String>,
    /// The folders searched for them (the child's and the parent's: children elsewhere are
    /// not seen).
    pub searched: Vec<String>,
    /// The child was deleted.
    pub removed: bool,
    pub elapsed_seconds: f64,
}

/// Commits the differencing image at `child` into its parent.
pub fn commit(child: &Path, opts: &CommitOptions, events: &(dyn Fn(Event<'_>) + Sync)) -> Result<CommitReport> {
    let started = Instant::now();
    // Held (shared) from planning to removal, so no writer changes the child meanwhile.
    let held = DiskImage::open(child, &OpenOptions { detached: true, ..opts.open.clone() })?;
    if !held.differencing() {
        return Err(Error::unsupported(child, "not a differencing disk: there is no parent to commit into"));
    }
    let plan = plan(child, opts)?;
    let refuse = |problem: String| Err(Error::Refused { file: child.to_path_buf(), problem, remedy: Remedy::Force });
    if plan.siblings.any() && !opts.force {
        return refuse(format!(
            "the parent {} has other children ({}), which a commit would corrupt",
            plan.parent.display(),
            plan.siblings.describe()
        ));
    }
    if opts.remove && !opts.force {
        let own = family::children_of(&held, &plan.searched, &[]);
        if own.any() {
            return refuse(format!("has children of its own ({}): removing it would orphan them", own.describe()));
        }
    }
    let mut parent = DiskImage::open_writable(&plan.parent, &OpenOptions { parent: None, ..opts.open.clone() })?.0;
    if FileId::of_path(&plan.parent) != Some(plan.parent_id) {
        return Err(Error::Conflict {
            file: plan.parent.clone(),
            problem: "was replaced while the commit was planned; nothing was written".into(),
        });
    }
    events(Event::Writing { temp: None, units: plan.ranges.len() as u64 });
    let mut written = 0;
    let mut done = 0;
    for batch in batches(&plan.ranges) {
        let mut writes = Vec::with_capacity(batch.len());
        for &(a, b) in batch {
            let mut bytes = vec![0u8; (b - a) as usize];
            held.read_at(a, &mut bytes)?;
            writes.push(DiskWrite { offset: a, bytes, what: format!("the child's sectors at disk offset {a}") });
            written += b - a;
        }
        disk_write::apply(&mut parent, &writes)?;
        done += batch.len() as u64;
        events(Event::Written(done));
    }
    drop(parent);
    drop(held);
    if opts.remove {
        std::fs::remove_file(child).map_err(|e| Error::open(child, "remove", e))?;
    } else {
        refresh_parent_time(child, &plan.parent, opts)?;
    }
    Ok(CommitReport {
        file: child.display().to_string(),
        parent: plan.parent.display().to_string(),
        child_bytes: plan.child_bytes,
        written_bytes: written,
        skipped_free_bytes: plan.skipped,
        zeroed_free_bytes: plan.zeroed,
        siblings: plan.siblings.found.iter().chain(&plan.siblings.unknown).map(|p| p.display().to_string()).collect(),
        searched: plan.searched.iter().map(|p| p.display().to_string()).collect(),
        removed: opts.remove,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The writes a commit makes, and what it found.
struct CommitPlan {
    parent: PathBuf,
    parent_id: FileId,
    /// Disk ranges to copy from the child, in order.
    ranges: Vec<(u64, u64)>,
    child_bytes: u64,
    skipped: u64,
    zeroed: u64,
    siblings: family::Children,
    searched: Vec<PathBuf>,
}

/// `ranges` (none longer than [`BATCH`]) grouped into runs of at most [`BATCH`] bytes.
fn batches(ranges: &[(u64, u64)]) -> impl Iterator<Item = &[(u64, u64)]> {
    let mut rest = ranges;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (mut n, mut bytes) = (0, 0);
        while n < rest.len() && (n == 0 || bytes + rest[n].1 - rest[n].0 <= BATCH) {
            // The first range always fits: none is longer than a batch.
            bytes += rest[n].1 - rest[n].0;
            n += 1;
        }
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        Some(batch)
    })
}

/// The needed ranges of the sectors the child holds, by the NTFS volumes of its chain.
fn plan(child: &Path, opts: &CommitOptions) -> Result<CommitPlan> {
    let image = DiskImage::open(child, &opts.open)?;
    let parent = image
        .parent_resolution()
        .map(|r| PathBuf::from(&r.path))
        .ok_or_else(|| Error::unsupported(child, "its parent could not be opened"))?;
    let parent_id = FileId::of_path(&parent).ok_or_else(|| Error::unsupported(&parent, "cannot be read"))?;
    let searched = family::folders_of(&[child, &parent]);
    let own = FileId::of_path(child).into_iter().collect::<Vec<_>>();
    let siblings = match image.parent() {
        Some(p) => family::children_of(p, &searched, &own),
        None => family::Children::default(),
    };
    let map = ImageMap::build(&image, None)?;
    // Free clusters are left out only where `$Bitmap` can be trusted to name every used one.
    crate::pass::refuse_untrusted_volumes(&map, None, opts.force)?;
    let (mut ranges, mut child_bytes, mut skipped, mut zeroed) = (Vec::new(), 0, 0, 0);
    let bs = image.block_size().ok_or_else(|| Error::internal("a differencing image without blocks"))?;
    for block in image.stored_blocks() {
        let Some(bitmap) = image.block_sectors(block)? else { continue };
        for (s, e, present) in bitmap.runs(0, bitmap.sectors()) {
            if !present {
                continue;
            }
            let (a, b) = (block * bs + s as u64 * 512, (block * bs + e as u64 * 512).min(image.len()));
            child_bytes += b.saturating_sub(a);
            for need in map.needs(a, b) {
                if need.kind != NeedKind::Unneeded {
                    ranges.push((need.start, need.end));
                    continue;
                }
                // Free space the guest wiped stays wiped: where the child holds zeros over the
                // parent's data, the zeros are written; its other free bytes are left out.
                let wiped = wiped_over_data(&image, need.start, need.end)?;
                let n: u64 = wiped.iter().map(|(x, y)| y - x).sum();
                zeroed += n;
                skipped += need.end - need.start - n;
                ranges.extend(wiped);
            }
        }
    }
    // Merged, then cut so that no range is longer than a batch.
    let ranges = crate::vhd::device::merge_ranges(ranges)
        .into_iter()
        .flat_map(|(a, b)| (a..b).step_by(BATCH as usize).map(move |at| (at, b.min(at + BATCH))))
        .collect();
    Ok(CommitPlan { parent, parent_id, ranges, child_bytes, skipped, zeroed, siblings, searched })
}

/// The parts of `[a, b)` where the child (`image`) holds zeros and its parent does not.
fn wiped_over_data(image: &DiskImage, a: u64, b: u64) -> Result<Vec<(u64, u64)>> {
    let Some(parent) = image.parent() else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    let mut at = a;
    let data = nonzero_ranges(a, b, &|x, buf| image.read_at(x, buf))?;
    for (x, y) in data.iter().copied().chain(std::iter::once((b, b))) {
        if at < x {
            let top = x.min(parent.len());
            if at < top {
                out.extend(nonzero_ranges(at, top, &|p, buf| parent.read_at(p, buf))?);
            }
        }
        at = at.max(y);
    }
    Ok(out)
}

/// A kept VHD child names its parent's new modification time, as Hyper-V expects of a
/// parent that changed under it legitimately (one journaled write of its header).
fn refresh_parent_time(child: &Path, parent: &Path, opts: &CommitOptions) -> Result<()> {
    let detached = OpenOptions { detached: true, ..opts.open.clone() };
    let (mut image, _) = DiskImage::open_writable(child, &detached)?;
    let DiskImage::Sparse(s) = &image else { return Ok(()) };
    let mut header = s.header().clone();
    header.parent_timestamp = crate::vhd::sparse::create::file_mtime_vhd(parent);
    let at = s.header_offset();
    disk_write::journaled(&mut image, |image| image.file().write_all_at(at, &header.encode()))
}
