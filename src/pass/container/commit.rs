//! `commit`: merges a differencing child into its parent (or an ancestor further down its
//! chain), in place. Only the sectors the child (and the disks between it and the target)
//! hold are written, and of those only the ones an NTFS volume needs (a sector that is a free
//! cluster in the child's view keeps the target's bytes: no file can tell). The plan is made
//! over the child's chain; the target is then opened alone, locked exclusively, checked to be
//! the file planned for, and written in journaled steps: blocks the target lacks are appended
//! with only its BAT entries, bitmaps and footer journaled, and sectors it already stores are
//! overwritten in batches of at most [`BATCH`] bytes whose old bytes the journal keeps. The
//! disks above the target shadow every sector a step writes, so the chain reads the same
//! before, during and after the commit; an interrupted commit is finished by running it again.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Remedy, Result};
use crate::host::FileId;
use crate::map::ImageMap;
use crate::map::blocks::NeedKind;
use crate::ntfs::IndexDetail;
use crate::pass::Event;
use crate::pass::container::family;
use crate::pass::container::relink::plan_relink;
use crate::pass::disk_write::{self, DiskWrite};
use crate::vhd::bitmap::SectorBitmap;
use crate::vhd::device::{BlockDevice, merge_ranges, nonzero_ranges};
use crate::vhd::image::{DiskImage, OpenOptions};

/// Bytes of the child written into the parent per journaled step: memory stays bounded
/// whatever the child holds.
pub const BATCH: u64 = 16 << 20;
/// Bytes of blocks appended to the target per journaled step: only their bitmaps and BAT
/// entries are in memory, so a step can be large; an interrupted step is redone whole.
const APPEND_STEP: u64 = 1 << 30;
/// Blocks appended per step at most, whatever their size: the step's bitmaps and BAT entries
/// stay small.
const APPEND_BLOCKS: u64 = 4096;

/// The options of [`commit`].
#[derive(Clone, Debug)]
pub struct CommitOptions {
    /// How far down the chain the target is: 1 for the parent, 2 for its parent, and so on.
    pub depth: usize,
    /// Delete the child (and the disks between it and the target) once their sectors are in
    /// the target.
    pub remove: bool,
    /// More folders to look for other children in (the chain's own are always searched).
    pub search: Vec<PathBuf>,
    /// Commit although other children of the target (or of a disk between) were found (they
    /// will read changed data and are corrupted by it), the child has children of its own to
    /// remove, or an NTFS volume is dirty or hibernated (its `$Bitmap` may not name every used
    /// cluster).
    pub force: bool,
    pub open: OpenOptions,
}

impl Default for CommitOptions {
    fn default() -> Self {
        CommitOptions { depth: 1, remove: false, search: Vec::new(), force: false, open: OpenOptions::default() }
    }
}

/// What [`commit`] did.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CommitReport {
    pub file: String,
    /// The disk committed into: the parent, or the ancestor `depth` levels down.
    pub parent: String,
    pub depth: usize,
    /// Bytes the child (and the disks between it and the target) hold of their own.
    pub child_bytes: u64,
    /// Of them, bytes written into the target.
    pub written_bytes: u64,
    /// Of the bytes written, those in blocks appended to the target.
    pub appended_bytes: u64,
    /// Of them, bytes left out: free NTFS clusters in the child's view, of the child's own
    /// sectors (which it still shadows afterwards) or, when it is removed, of every disk's.
    pub skipped_free_bytes: u64,
    /// Of them, free clusters the child holds as zeros over the target's data (wiped by the
    /// guest), written: the wipe reaches the target.
    pub zeroed_free_bytes: u64,
    /// Other children of the target (or of a disk between) found beside them (the commit went
    /// on only with `force`).
    pub siblings: Vec<String>,
    /// The folders searched for them (those of the chain's disks and the ones asked for:
    /// children elsewhere are not seen).
    pub searched: Vec<String>,
    /// The disks between the child and the target: their sectors are in the target now, and
    /// they no longer read as before (removed with the child, else left for the user to
    /// delete).
    pub superseded: Vec<String>,
    /// The kept child now names the target as its parent (a commit deeper than 1).
    pub relinked: bool,
    /// The child was deleted.
    pub removed: bool,
    pub elapsed_seconds: f64,
}

/// Commits the differencing image at `child` into its parent, or the ancestor `depth` levels
/// down.
pub fn commit(child: &Path, opts: &CommitOptions, events: &(dyn Fn(Event<'_>) + Sync)) -> Result<CommitReport> {
    let started = Instant::now();
    if opts.depth == 0 {
        return Err(Error::Usage("the commit depth counts from 1 (the parent)".into()));
    }
    let detached = OpenOptions { detached: true, ..opts.open.clone() };
    // Held (shared) from planning to removal, so no writer changes the child meanwhile.
    let held = DiskImage::open(child, &detached)?;
    if !held.differencing() {
        return Err(Error::unsupported(child, "not a differencing disk: there is no parent to commit into"));
    }
    let plan = plan(child, opts)?;
    refuse_family_risks(child, &held, &plan, opts)?;
    // A kept child is linked to the target afterwards: whatever could stop that is found
    // before anything is written.
    let relink = match opts.remove || opts.depth == 1 {
        true => None,
        false => Some(plan_relink(&held, &plan.target, true, &opts.open)?),
    };
    // The layers a sector is read from: the child, then each disk between it and the target.
    let mut layers = vec![held];
    for (p, id) in plan.superseded.iter().zip(&plan.superseded_ids) {
        layers.push(DiskImage::open(p, &detached)?);
        require_planned(p, *id)?;
    }
    let mut target = DiskImage::open_writable(&plan.target, &OpenOptions { parent: None, ..opts.open.clone() })?.0;
    require_planned(&plan.target, plan.target_id)?;
    crate::vhd::check::refuse_hazards(&target)?;
    let (appends, overwrites) = split_by_target(&target, &plan.ranges);
    let read = |r: &Piece, buf: &mut [u8]| layers[r.layer].read_at(r.start, buf);
    // Progress counts bytes: the pieces to copy, appended then overwritten.
    events(Event::Writing { temp: None, units: plan.ranges.iter().map(|r| r.end - r.start).sum() });
    let appended = append(&mut target, &appends, &read, events)?;
    let written = appended + overwrite(&mut target, &overwrites, &read, appended, events)?;
    drop(target);
    drop(layers);
    if opts.remove {
        for p in std::iter::once(child).chain(plan.superseded.iter().map(PathBuf::as_path)) {
            std::fs::remove_file(p).map_err(|e| Error::open(p, "remove", e))?;
        }
    } else if let Some(relink) = relink {
        let (mut image, _) = DiskImage::open_writable(child, &detached)?;
        relink.apply(&mut image)?;
    } else {
        refresh_parent_time(child, &plan.target, opts)?;
    }
    let names = |v: &[PathBuf]| v.iter().map(|p| p.display().to_string()).collect::<Vec<_>>();
    Ok(CommitReport {
        file: child.display().to_string(),
        parent: plan.target.display().to_string(),
        depth: opts.depth,
        child_bytes: plan.child_bytes,
        written_bytes: written,
        appended_bytes: appended,
        skipped_free_bytes: plan.skipped,
        zeroed_free_bytes: plan.zeroed,
        siblings: plan.siblings.found.iter().chain(&plan.siblings.unknown).map(|p| p.display().to_string()).collect(),
        searched: names(&plan.searched),
        superseded: names(&plan.superseded),
        relinked: !opts.remove && opts.depth > 1,
        removed: opts.remove,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Refuses (unless forced) a commit that would corrupt other children of the disks it
/// changes, or orphan the child's own children by removing it.
fn refuse_family_risks(child: &Path, held: &DiskImage, plan: &CommitPlan, opts: &CommitOptions) -> Result<()> {
    if opts.force {
        return Ok(());
    }
    let refuse = |problem: String| Err(Error::Refused { file: child.to_path_buf(), problem, remedy: Remedy::Force });
    if plan.siblings.any() {
        let changed: Vec<String> =
            plan.superseded.iter().chain(std::iter::once(&plan.target)).map(|p| p.display().to_string()).collect();
        return refuse(format!(
            "{} {} other children ({}), which a commit would corrupt",
            changed.join(" and "),
            if changed.len() == 1 { "has" } else { "have" },
            plan.siblings.describe()
        ));
    }
    if opts.remove {
        let own = family::children_of(held, &plan.searched, &[]);
        if own.any() {
            return refuse(format!("has children of its own ({}): removing it would orphan them", own.describe()));
        }
    }
    Ok(())
}

/// Fails when the file at `path` is no longer the one planned for (`id`).
fn require_planned(path: &Path, id: FileId) -> Result<()> {
    if FileId::of_path(path) == Some(id) {
        return Ok(());
    }
    Err(Error::Conflict {
        file: path.to_path_buf(),
        problem: "was replaced while the commit was planned; nothing was written".into(),
    })
}

/// Appends the blocks a dynamic VHD target lacks, a step of at most [`APPEND_STEP`] bytes
/// and [`APPEND_BLOCKS`] blocks at a time; returns the bytes of the pieces written.
fn append(
    target: &mut DiskImage,
    appends: &[(u64, Vec<Piece>)],
    read: &dyn Fn(&Piece, &mut [u8]) -> Result<()>,
    events: &(dyn Fn(Event<'_>) + Sync),
) -> Result<u64> {
    let differencing = target.differencing();
    let DiskImage::Sparse(sparse) = target else { return Ok(0) };
    let bs = sparse.block_size();
    let mut appended = 0;
    for step in appends.chunks((APPEND_STEP / bs).clamp(1, APPEND_BLOCKS) as usize) {
        // A dynamic disk's block is whole (zeros where no piece goes), as its readers assume;
        // a differencing one holds only the pieces' sectors, the rest still its parent's.
        let bitmap = |pieces: &[Piece], base| match differencing {
            true => sectors_of(pieces, base, bs),
            false => SectorBitmap::for_block(bs, true),
        };
        let blocks: Vec<(u64, SectorBitmap)> = step.iter().map(|(b, pieces)| (*b, bitmap(pieces, *b * bs))).collect();
        let mut next = step.iter();
        sparse.append_blocks(&blocks, |block, data| {
            let (_, pieces) =
                next.next().filter(|(b, _)| *b == block).ok_or_else(|| Error::internal("append order"))?;
            for r in pieces {
                let at = (r.start - block * bs) as usize;
                read(r, &mut data[at..at + (r.end - r.start) as usize])?;
                appended += r.end - r.start;
            }
            Ok(())
        })?;
        events(Event::Written(appended));
    }
    Ok(appended)
}

/// Overwrites the sectors the target already stores, in journaled batches; returns the
/// bytes written (`done` before it, for progress).
fn overwrite(
    target: &mut DiskImage,
    overwrites: &[Piece],
    read: &dyn Fn(&Piece, &mut [u8]) -> Result<()>,
    done: u64,
    events: &(dyn Fn(Event<'_>) + Sync),
) -> Result<u64> {
    let mut written = 0;
    for batch in batches(overwrites) {
        let mut writes = Vec::with_capacity(batch.len());
        for r in batch {
            let mut bytes = vec![0u8; (r.end - r.start) as usize];
            read(r, &mut bytes)?;
            writes.push(DiskWrite {
                offset: r.start,
                bytes,
                what: format!("the child's sectors at disk offset {}", r.start),
            });
            written += r.end - r.start;
        }
        disk_write::apply(target, &writes)?;
        events(Event::Written(done + written));
    }
    Ok(written)
}

/// Bytes `[start, end)` of the disk, read from layer `layer` (0: the child), which holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Piece {
    start: u64,
    end: u64,
    layer: usize,
}

/// The writes a commit makes, and what it found.
struct CommitPlan {
    target: PathBuf,
    target_id: FileId,
    /// The disks between the child and the target, child side first, and their identities.
    superseded: Vec<PathBuf>,
    superseded_ids: Vec<FileId>,
    /// Disk ranges to copy, in order, none longer than [`BATCH`].
    ranges: Vec<Piece>,
    child_bytes: u64,
    skipped: u64,
    zeroed: u64,
    siblings: family::Children,
    searched: Vec<PathBuf>,
}

/// `pieces` grouped into runs of at most [`BATCH`] bytes (none is longer than a batch).
fn batches(pieces: &[Piece]) -> impl Iterator<Item = &[Piece]> {
    let mut rest = pieces;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (mut n, mut bytes) = (0, 0);
        while n < rest.len() && (n == 0 || bytes + rest[n].end - rest[n].start <= BATCH) {
            bytes += rest[n].end - rest[n].start;
            n += 1;
        }
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        Some(batch)
    })
}

/// The pieces that fall in blocks a sparse VHD target does not store yet (by block: appended
/// whole), and the rest (overwritten in place).
fn split_by_target(target: &DiskImage, pieces: &[Piece]) -> (Vec<(u64, Vec<Piece>)>, Vec<Piece>) {
    let DiskImage::Sparse(sparse) = target else { return (Vec::new(), pieces.to_vec()) };
    let bs = sparse.block_size();
    let (mut appends, mut overwrites): (Vec<(u64, Vec<Piece>)>, Vec<Piece>) = (Vec::new(), Vec::new());
    for r in pieces {
        let mut at = r.start;
        while at < r.end {
            let block = at / bs;
            let piece = Piece { start: at, end: r.end.min((block + 1) * bs), layer: r.layer };
            at = piece.end;
            if sparse.bat().sector(block).is_some() {
                overwrites.push(piece);
                continue;
            }
            match appends.last_mut() {
                Some((b, v)) if *b == block => v.push(piece),
                _ => appends.push((block, vec![piece])),
            }
        }
    }
    (appends, overwrites)
}

/// The sectors `pieces` cover in the block that starts at disk offset `base`.
fn sectors_of(pieces: &[Piece], base: u64, block_size: u64) -> SectorBitmap {
    let mut bitmap = SectorBitmap::for_block(block_size, false);
    for r in pieces {
        bitmap.set_bytes(r.start - base, r.end - base, true);
    }
    bitmap
}

/// The sector runs `image` holds below disk offset `end`, as disk ranges.
fn held_ranges(image: &DiskImage, end: u64) -> Result<Vec<(u64, u64)>> {
    let bs = image.block_size().ok_or_else(|| Error::internal("a differencing image without blocks"))?;
    let mut out = Vec::new();
    for block in image.stored_blocks() {
        let Some(bitmap) = image.block_sectors(block)? else { continue };
        for (s, e, present) in bitmap.runs(0, bitmap.sectors()) {
            if present {
                let (a, b) = SectorBitmap::bytes_of(s, e);
                out.push((block * bs + a, (block * bs + b).min(image.len()).min(end)));
            }
        }
    }
    Ok(merge_ranges(out))
}

/// `ranges` without what `taken` covers (both sorted and disjoint).
fn subtract(ranges: &[(u64, u64)], taken: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut t = taken.iter().peekable();
    for &(a, b) in ranges {
        let mut at = a;
        while let Some(&&(x, y)) = t.peek() {
            if y <= at {
                t.next();
                continue;
            }
            if x >= b {
                break;
            }
            if x > at {
                out.push((at, x));
            }
            at = at.max(y);
            if y >= b {
                break;
            }
            t.next();
        }
        if at < b {
            out.push((at, b));
        }
    }
    out
}

/// The needed ranges of the sectors the child (and the disks between it and the target)
/// hold, by the NTFS volumes of its chain.
fn plan(child: &Path, opts: &CommitOptions) -> Result<CommitPlan> {
    let image = DiskImage::open(child, &opts.open)?;
    // The chain from the child down to the target.
    let mut chain = vec![&image];
    for _ in 0..opts.depth {
        let below = chain[chain.len() - 1].parent().ok_or_else(|| {
            Error::unsupported(child, format!("its chain has {} disks below it, not {}", chain.len() - 1, opts.depth))
        })?;
        chain.push(below);
    }
    let target = chain[opts.depth];
    let target_path = target.source().to_path_buf();
    let target_id = FileId::of_path(&target_path).ok_or_else(|| Error::unsupported(&target_path, "cannot be read"))?;
    let paths: Vec<&Path> = chain.iter().map(|d| d.source()).collect();
    let searched = family::folders_of(&paths, &opts.search);
    let own: Vec<FileId> = paths[..opts.depth].iter().filter_map(|p| FileId::of_path(p)).collect();
    let mut siblings = family::Children::default();
    for disk in &chain[1..] {
        siblings.add(family::children_of(disk, &searched, &own));
    }
    if !opts.remove
        && let Some(short) = chain[1..opts.depth].iter().find(|d| d.len() < target.len())
    {
        return Err(Error::unsupported(
            short.source(),
            format!(
                "is shorter than {}: the child, linked to it after the commit, would read its bytes where it read zeros",
                target_path.display()
            ),
        ));
    }
    let map = ImageMap::build_with(&image, None, IndexDetail::Clusters)?;
    // Free clusters are left out only where `$Bitmap` can be trusted to name every used one.
    crate::pass::refuse_untrusted_volumes(&map, None, opts.force)?;
    let found = pieces(&chain, &map, opts)?;
    if let Some(r) = found.ranges.iter().find(|r| r.end > target.len()) {
        return Err(Error::unsupported(
            &target_path,
            format!(
                "is {} bytes long and the child holds data at disk offset {}: expand it to the child's size first",
                target.len(),
                r.start.max(target.len())
            ),
        ));
    }
    let superseded: Vec<PathBuf> = paths[1..opts.depth].iter().map(|p| p.to_path_buf()).collect();
    let superseded_ids = superseded
        .iter()
        .map(|p| FileId::of_path(p).ok_or_else(|| Error::unsupported(p, "cannot be read")))
        .collect::<Result<_>>()?;
    Ok(CommitPlan {
        target: target_path,
        target_id,
        superseded,
        superseded_ids,
        ranges: joined_and_cut(found.ranges),
        child_bytes: found.held,
        skipped: found.skipped,
        zeroed: found.zeroed,
        siblings,
        searched,
    })
}

/// What a commit copies, from which layer, and what it leaves out.
struct Found {
    ranges: Vec<Piece>,
    held: u64,
    skipped: u64,
    zeroed: u64,
}

/// The pieces of the sectors the disks above the target (`chain`, the child first) hold,
/// each from the topmost disk that holds it, cut by the child's NTFS needs. Free clusters are
/// left out where the child still shadows them afterwards (its own sectors) or is removed;
/// the wipes of free space the guest made are written.
fn pieces(chain: &[&DiskImage], map: &ImageMap<'_>, opts: &CommitOptions) -> Result<Found> {
    let (image, target) = (chain[0], chain[opts.depth]);
    let mut found = Found { ranges: Vec::new(), held: 0, skipped: 0, zeroed: 0 };
    let mut covered: Vec<(u64, u64)> = Vec::new();
    for (layer, disk) in chain[..opts.depth].iter().enumerate() {
        let own = subtract(&held_ranges(disk, image.len())?, &covered);
        let mut all: Vec<(u64, u64)> = covered.iter().chain(&own).copied().collect();
        all.sort_unstable();
        covered = merge_ranges(all);
        let skip_free = layer == 0 || opts.remove;
        for (a, b) in own {
            found.held += b - a;
            for need in map.needs(a, b) {
                if need.kind != NeedKind::Unneeded || !skip_free {
                    found.ranges.push(Piece { start: need.start, end: need.end, layer });
                    continue;
                }
                let wiped = wiped_over_data(image, target, need.start, need.end)?;
                let n: u64 = wiped.iter().map(|(x, y)| y - x).sum();
                found.zeroed += n;
                found.skipped += need.end - need.start - n;
                found.ranges.extend(wiped.into_iter().map(|(x, y)| Piece { start: x, end: y, layer }));
            }
        }
    }
    found.ranges.sort_by_key(|r| r.start);
    Ok(found)
}

/// Adjacent pieces of one layer joined, then cut so that none is longer than a batch.
fn joined_and_cut(pieces: Vec<Piece>) -> Vec<Piece> {
    let mut joined: Vec<Piece> = Vec::new();
    for r in pieces {
        match joined.last_mut() {
            Some(last) if last.layer == r.layer && r.start <= last.end => last.end = last.end.max(r.end),
            _ => joined.push(r),
        }
    }
    joined
        .into_iter()
        .flat_map(|r| {
            (r.start..r.end).step_by(BATCH as usize).map(move |at| Piece {
                start: at,
                end: r.end.min(at + BATCH),
                layer: r.layer,
            })
        })
        .collect()
}

/// The parts of `[a, b)` where the child's view (`image`) holds zeros and the target's does
/// not.
fn wiped_over_data(image: &DiskImage, target: &DiskImage, a: u64, b: u64) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut at = a;
    let data = nonzero_ranges(a, b, &|x, buf| image.read_at(x, buf))?;
    for (x, y) in data.iter().copied().chain(std::iter::once((b, b))) {
        if at < x {
            let top = x.min(target.len());
            if at < top {
                out.extend(nonzero_ranges(at, top, &|p, buf| target.read_at(p, buf))?);
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
