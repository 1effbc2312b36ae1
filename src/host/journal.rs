//! Atomic in-place writes to a file, and their rollback.
//!
//! A writer first collects its writes in an [`Overlay`] (reads see them, the file does not
//! change), then [`commit`] stores, in `FILE.vhdkit-journal`, the file's identity, its length
//! and, for every range about to be written, the bytes there now and the bytes that will be
//! written; the journal is flushed before the file is touched and removed once the writes are.
//!
//! [`recover`] rolls an interrupted run back from the journal alone, without decoding the file
//! as an image (a power cut can leave a container that no longer parses): the old bytes go
//! back and the file is cut to its old length. It does so only when the journal provably
//! belongs to this file: same device and inode, a regular file owned by the file's owner and
//! writable by nobody else, a length the run could have left, and every journaled byte still
//! holding either its old value or one the run wrote. Anything else is refused with the reason.
//! Only a writer holding the file's exclusive lock may call it.

use std::fs::{File, Metadata};
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, Space};
use crate::host::fault::{self, Op};
use crate::host::{Expect, FileId, LockWait, check_kind, lock, platform, read_file_limited, sync_dir};

const MAGIC: &[u8; 8] = b"VHDKJRN2";
const DIGEST: usize = 32;
/// Bytes of the file's start and end recorded to recognise it.
const ANCHOR: u64 = 512;
/// Journals of vhdkit before this format (disk offsets, no identity): refused, never applied.
const LEGACY_SUFFIX: &str = ".vhdreg-journal";
const SUFFIX: &str = ".vhdkit-journal";

/// The journal path of the file at `path`: beside the file itself, symlinks resolved, so
/// every name that leads to it finds the same journal.
pub fn journal_path(path: &Path) -> PathBuf {
    with_suffix(&std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()), SUFFIX)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// The journal of an interrupted run on `path`, if there is one (read-only commands refuse
/// such a file; writers recover it first).
pub fn pending(path: &Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    [journal_path(path), with_suffix(path, LEGACY_SUFFIX), with_suffix(&real, LEGACY_SUFFIX)]
        .into_iter()
        .find(|j| std::fs::symlink_metadata(j).is_ok())
}

/// Refuses an in-place journaled write to a file whose journal could be missed: one with
/// several names (hard links: a run through one name leaves the journal beside that name
/// only), or a block device (no folder of its own to keep a journal in).
fn require_journal_home(path: &Path, meta: &Metadata) -> Result<()> {
    let kind = platform::kind_name(meta);
    if kind != "regular file" {
        return Err(Error::unsupported(
            path,
            format!(
                "is a {kind}: an in-place write needs a journal beside the image, which a device has no folder for"
            ),
        ));
    }
    let links = platform::link_count(meta);
    if links > 1 {
        return Err(Error::unsupported(
            path,
            format!(
                "has {links} names (hard links): an interrupted write could not be found under the others; write through a copy"
            ),
        ));
    }
    Ok(())
}

/// Writes collected in memory over a file that does not change until [`commit`].
#[derive(Clone, Debug, Default)]
pub struct Overlay {
    base_len: u64,
    len: u64,
    max_len: u64,
    writes: Vec<(u64, Vec<u8>)>,
}

/// What an [`Overlay`] collected: the writes in order, and the file's final and largest
/// lengths.
#[derive(Clone, Debug, Default)]
pub struct StagedWrites {
    pub writes: Vec<(u64, Vec<u8>)>,
    pub final_len: u64,
    pub max_len: u64,
}

impl Overlay {
    /// An empty overlay over a file of `base_len` bytes.
    pub fn new(base_len: u64) -> Self {
        Overlay { base_len, len: base_len, max_len: base_len, writes: Vec::new() }
    }

    /// The file's length as the overlay shows it.
    pub fn file_len(&self) -> u64 {
        self.len
    }

    /// Records a write.
    pub fn write(&mut self, offset: u64, bytes: &[u8]) {
        self.len = self.len.max(offset + bytes.len() as u64);
        self.max_len = self.max_len.max(self.len);
        self.writes.push((offset, bytes.to_vec()));
    }

    /// Records a new length.
    pub fn set_len(&mut self, len: u64) {
        self.len = len;
        self.max_len = self.max_len.max(len);
    }

    /// Reads `buf` at `offset` as the file would look after the writes so far; `base` reads the
    /// unchanged file.
    pub fn read(&self, offset: u64, buf: &mut [u8], base: impl Fn(u64, &mut [u8]) -> io::Result<()>) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        if end > self.len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the file"));
        }
        let from_base = self.base_len.min(self.len).saturating_sub(offset).min(buf.len() as u64) as usize;
        base(offset, &mut buf[..from_base])?;
        buf[from_base..].fill(0);
        for (at, bytes) in &self.writes {
            let (a, b) = ((*at).max(offset), (*at + bytes.len() as u64).min(end));
            if a < b {
                buf[(a - offset) as usize..(b - offset) as usize]
                    .copy_from_slice(&bytes[(a - at) as usize..(b - at) as usize]);
            }
        }
        Ok(())
    }

    /// The writes collected.
    pub fn into_staged(self) -> StagedWrites {
        StagedWrites { writes: self.writes, final_len: self.len, max_len: self.max_len }
    }
}

/// What `recover` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// No journal.
    Clean,
    /// An interrupted run was rolled back: `ranges` ranges restored, the file cut back to
    /// `length` bytes.
    RolledBack {
        /// The journal applied (then removed).
        journal: PathBuf,
        /// Byte ranges restored.
        ranges: usize,
        /// The file's restored length.
        length: u64,
    },
    /// The journal was cut short while being written: the file was never touched, and the
    /// journal was removed.
    DiscardedIncomplete {
        /// The journal removed.
        journal: PathBuf,
    },
}

impl Recovery {
    /// The recovery in words, or `None` when there was nothing to recover.
    pub fn describe(&self) -> Option<String> {
        match self {
            Recovery::Clean => None,
            Recovery::RolledBack { journal, ranges, length } => Some(format!(
                "rolled back an interrupted write: {ranges} ranges restored from {}, file length {length}",
                journal.display()
            )),
            Recovery::DiscardedIncomplete { journal } => Some(format!(
                "removed {}, the journal of a write interrupted before it touched the image",
                journal.display()
            )),
        }
    }
}

/// A write with the bytes it replaces (only those inside the old length).
struct Entry {
    offset: u64,
    new: Vec<u8>,
    old: Vec<u8>,
}

/// A decoded journal.
struct Journal {
    id: FileId,
    original_len: u64,
    final_len: u64,
    max_len: u64,
    entries: Vec<Entry>,
    anchors: Vec<(u64, Vec<u8>)>,
}

/// Writes, truncates or flushes `file`, through the test hooks.
fn write_at(file: &File, path: &Path, offset: u64, bytes: &[u8]) -> Result<()> {
    fault::before(path, Op::Write { offset, bytes });
    platform::write_at(file, bytes, offset).map_err(|e| Error::io(path, "write", Space::File, offset, e))
}

fn set_len(file: &File, path: &Path, len: u64) -> Result<()> {
    fault::before(path, Op::SetLen(len));
    file.set_len(len).map_err(|e| Error::io(path, "truncate", Space::File, len, e))
}

fn sync(file: &File, path: &Path) -> Result<()> {
    fault::before(path, Op::Sync);
    file.sync_all().map_err(|e| Error::io(path, "fsync", Space::File, 0, e))
}

fn remove(path: &Path) -> Result<()> {
    fault::before(path, Op::Remove);
    std::fs::remove_file(path).map_err(|e| Error::open(path, "remove", e))?;
    sync_dir(path);
    Ok(())
}

/// Reads `len` bytes at `offset`, fewer where the file ends first.
fn read_upto(file: &File, path: &Path, offset: u64, len: u64, file_len: u64) -> Result<Vec<u8>> {
    let n = file_len.saturating_sub(offset).min(len) as usize;
    let mut buf = vec![0u8; n];
    platform::read_at(file, &mut buf, offset).map_err(|e| Error::io(path, "read", Space::File, offset, e))?;
    Ok(buf)
}

/// Carries out `staged` on the file at `path` (open as `file`, exclusively locked by the
/// caller) atomically: journal first, then the writes, then the journal goes.
pub fn commit(path: &Path, file: &File, staged: &StagedWrites) -> Result<()> {
    let unchanged = file.metadata().is_ok_and(|m| m.len() == staged.final_len);
    if staged.writes.is_empty() && unchanged {
        return Ok(());
    }
    commit_appending(path, file, staged, |_| Ok(()))
}

/// Writes past a file's original length, made between the journal and the in-place writes
/// of [`commit_appending`]: a rollback cuts them off, so they need no copy in the journal.
pub struct Appender<'a> {
    file: &'a File,
    path: &'a Path,
    floor: u64,
    limit: u64,
}

impl Appender<'_> {
    /// Writes `bytes` at `offset`, which must lie between the file's original length and the
    /// largest length the journal allows.
    pub fn write(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        if offset < self.floor || offset + bytes.len() as u64 > self.limit {
            return Err(Error::internal(format!(
                "an appended write at {offset} ({} bytes) outside [{}, {})",
                bytes.len(),
                self.floor,
                self.limit
            )));
        }
        write_at(self.file, self.path, offset, bytes)
    }
}

/// Like [`commit`], with more writes past the file's original length that are not held in
/// memory: `append` makes them through an [`Appender`] once the journal is on disk, before the
/// in-place writes. `staged.max_len` must cover them.
pub fn commit_appending(
    path: &Path,
    file: &File,
    staged: &StagedWrites,
    append: impl FnOnce(&Appender<'_>) -> Result<()>,
) -> Result<()> {
    let meta = file.metadata().map_err(|e| Error::open(path, "stat", e))?;
    let original_len = meta.len();
    require_journal_home(path, &meta)?;
    let mut entries = Vec::with_capacity(staged.writes.len());
    for (offset, new) in &staged.writes {
        let old = read_upto(file, path, *offset, new.len() as u64, original_len)?;
        // Only bytes below the original length are checked on recovery (the rest is cut off):
        // a write past it, a block appended, is journaled by its place alone.
        entries.push(Entry { offset: *offset, new: new[..old.len()].to_vec(), old });
    }
    let tail = original_len.saturating_sub(ANCHOR);
    let anchors = vec![
        (0, read_upto(file, path, 0, ANCHOR, original_len)?),
        (tail, read_upto(file, path, tail, ANCHOR, original_len)?),
    ];
    let journal = Journal {
        id: FileId::of(&meta),
        original_len,
        final_len: staged.final_len,
        max_len: staged.max_len,
        entries,
        anchors,
    };
    let jpath = journal_path(path);
    let jfile = create_journal(&jpath, &meta)?;
    write_at(&jfile, &jpath, 0, &journal.encode())?;
    sync(&jfile, &jpath)?;
    sync_dir(&jpath);
    if let Err(e) = append(&Appender { file, path, floor: original_len, limit: staged.max_len }) {
        // Nothing below the old length was written yet: cutting the file back undoes the run
        // (if that fails too, the journal stays for the next writer).
        if set_len(file, path, original_len).and_then(|()| sync(file, path)).is_ok() {
            drop(jfile);
            remove(&jpath)?;
        }
        return Err(e);
    }
    for (offset, bytes) in &staged.writes {
        write_at(file, path, *offset, bytes)?;
    }
    let written_end = staged.writes.iter().map(|(at, b)| at + b.len() as u64).fold(original_len, u64::max);
    if staged.final_len != written_end {
        set_len(file, path, staged.final_len)?;
    }
    sync(file, path)?;
    drop(jfile);
    remove(&jpath)
}

/// Creates the journal beside the file: new (never an existing file or a symlink), locked,
/// owned by the file's owner and writable by nobody else.
fn create_journal(jpath: &Path, image: &Metadata) -> Result<File> {
    let file = platform::create_new_private(jpath, platform::mode(image) & 0o644)
        .map_err(|e| Error::open(jpath, "create the journal", e))?;
    lock(&file, jpath, true, LockWait::Fail)?;
    if let Some(owner) = platform::owner(image)
        && file.metadata().ok().and_then(|m| platform::owner(&m)) != Some(owner)
        && let Err(e) = platform::set_owner(&file, owner)
    {
        let _ = std::fs::remove_file(jpath);
        return Err(Error::open(jpath, "give the image's owner to the journal (run as the image's owner or root)", e));
    }
    Ok(file)
}

/// How sure [`recover`] must be that a journal belongs to its file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Identity {
    /// The journal names this file's inode (its device may have been renumbered).
    #[default]
    Checked,
    /// The file may have been restored from a copy (a new inode): its length and every
    /// journaled byte are still checked.
    Trusted,
}

/// Rolls back an interrupted run on the file at `path` (open as `file`, exclusively locked by
/// the caller), when its journal provably belongs to it.
pub fn recover(path: &Path, file: &File, identity: Identity) -> Result<Recovery> {
    let legacy = pending(path).filter(|j| j.to_string_lossy().ends_with(LEGACY_SUFFIX));
    if let Some(legacy) = legacy {
        return Err(Error::JournalRefused {
            journal: legacy,
            reason: "it is the journal of an older vhdkit, which recorded no identity of its image; \
                     roll it back with that version, or remove it if the image is known to be intact"
                .into(),
        });
    }
    let jpath = journal_path(path);
    if std::fs::symlink_metadata(&jpath).is_err() {
        return Ok(Recovery::Clean);
    }
    let refuse = |reason: String| Err(Error::JournalRefused { journal: jpath.clone(), reason });
    let meta = file.metadata().map_err(|e| Error::open(path, "stat", e))?;
    let jfile = match platform::open_nonblocking(&jpath, false, true) {
        Ok(f) => f,
        Err(e) => return refuse(format!("it cannot be opened ({e}); a symlink is never followed")),
    };
    let jmeta = jfile.metadata().map_err(|e| Error::open(&jpath, "stat", e))?;
    if check_kind(&jpath, &jmeta, Expect::Regular).is_err() {
        return refuse(format!("it is a {}, not a regular file", platform::kind_name(&jmeta)));
    }
    if let (Some(j), Some(i)) = (platform::owner(&jmeta), platform::owner(&meta))
        && j.0 != i.0
    {
        return refuse(format!("it is owned by user {}, the image by user {}", j.0, i.0));
    }
    if platform::writable_by_others(&jmeta) {
        return refuse("others than its owner may write it".into());
    }
    let limit = meta.len().saturating_mul(3).saturating_add(64 << 20);
    let bytes = read_file_limited(&jfile, &jpath, limit, "a journal of this image")?;
    let journal = match Journal::decode(&bytes) {
        Decoded::Whole(j) => j,
        Decoded::CutShort => {
            drop(jfile);
            remove(&jpath)?;
            return Ok(Recovery::DiscardedIncomplete { journal: jpath });
        }
        Decoded::Foreign => return refuse("it is not a vhdkit journal".into()),
    };
    if let Err(reason) = journal.belongs_to(file, path, &meta, identity) {
        return refuse(reason);
    }
    for e in &journal.entries {
        if !e.old.is_empty() {
            write_at(file, path, e.offset, &e.old)?;
        }
    }
    set_len(file, path, journal.original_len)?;
    sync(file, path)?;
    drop(jfile);
    remove(&jpath)?;
    Ok(Recovery::RolledBack { journal: jpath, ranges: journal.entries.len(), length: journal.original_len })
}

enum Decoded {
    Whole(Journal),
    /// A prefix of a journal: the run stopped while writing it.
    CutShort,
    Foreign,
}

impl Journal {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        for v in [self.id.device, self.id.inode, self.original_len, self.final_len, self.max_len] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&(e.new.len() as u32).to_le_bytes());
            out.extend_from_slice(&(e.old.len() as u32).to_le_bytes());
            out.extend_from_slice(&e.new);
            out.extend_from_slice(&e.old);
        }
        out.extend_from_slice(&(self.anchors.len() as u32).to_le_bytes());
        for (at, bytes) in &self.anchors {
            out.extend_from_slice(&at.to_le_bytes());
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        let digest = *blake3::hash(&out).as_bytes();
        out.extend_from_slice(&digest);
        out
    }

    fn decode(bytes: &[u8]) -> Decoded {
        if bytes.len() < MAGIC.len() + DIGEST {
            let n = bytes.len().min(MAGIC.len());
            return if bytes[..n] == MAGIC[..n] { Decoded::CutShort } else { Decoded::Foreign };
        }
        if &bytes[..8] != MAGIC {
            return Decoded::Foreign;
        }
        let (body, digest) = bytes.split_at(bytes.len() - DIGEST);
        if blake3::hash(body).as_bytes() != digest {
            return Decoded::CutShort;
        }
        match Journal::parse_body(body) {
            Some(j) => Decoded::Whole(j),
            None => Decoded::Foreign,
        }
    }

    /// Parses a body whose digest matched; every length is checked against the body.
    fn parse_body(body: &[u8]) -> Option<Journal> {
        let mut r = Reader { b: body, at: 8 };
        let id = FileId { device: r.u64()?, inode: r.u64()? };
        let (original_len, final_len, max_len) = (r.u64()?, r.u64()?, r.u64()?);
        let count = r.u32()? as usize;
        let mut entries = Vec::with_capacity(count.min(body.len() / 16));
        for _ in 0..count {
            let offset = r.u64()?;
            let (new_len, old_len) = (r.u32()? as usize, r.u32()? as usize);
            if old_len > new_len {
                return None;
            }
            let new = r.take(new_len)?.to_vec();
            let old = r.take(old_len)?.to_vec();
            entries.push(Entry { offset, new, old });
        }
        let anchor_count = r.u32()? as usize;
        let mut anchors = Vec::with_capacity(anchor_count.min(4));
        for _ in 0..anchor_count {
            let at = r.u64()?;
            let len = r.u32()? as usize;
            anchors.push((at, r.take(len)?.to_vec()));
        }
        (r.at == body.len()).then_some(Journal { id, original_len, final_len, max_len, entries, anchors })
    }

    /// Why the journal is not this file's, if it is not.
    fn belongs_to(
        &self,
        file: &File,
        path: &Path,
        meta: &Metadata,
        identity: Identity,
    ) -> std::result::Result<(), String> {
        let id = FileId::of(meta);
        if id.inode != self.id.inode && identity == Identity::Checked {
            return Err(format!(
                "it was written for device {} inode {}, and this image is device {} inode {} (if the image was \
                 restored from a copy together with its journal, forcing the recovery still checks every byte)",
                self.id.device, self.id.inode, id.device, id.inode
            ));
        }
        let len = meta.len();
        let (low, high) = (self.original_len.min(self.final_len), self.max_len.max(self.original_len));
        if !(low..=high).contains(&len) {
            return Err(format!("the image is {len} bytes long; the interrupted run left it between {low} and {high}"));
        }
        let checked: Vec<(u64, &[u8])> = self
            .entries
            .iter()
            .map(|e| (e.offset, e.old.as_slice()))
            .chain(self.anchors.iter().map(|(at, b)| (*at, b.as_slice())))
            .collect();
        for (offset, old) in checked {
            let current = read_upto(file, path, offset, old.len() as u64, len).map_err(|e| e.to_string())?;
            for (i, (&now, &was)) in current.iter().zip(old).enumerate() {
                let at = offset + i as u64;
                if now != was && !self.written_value(at, now) {
                    return Err(format!(
                        "file offset {at:#x} holds {now:#04x}, neither its old value {was:#04x} nor one the interrupted run wrote"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether some write of the run put `value` at file offset `at`.
    fn written_value(&self, at: u64, value: u8) -> bool {
        self.entries
            .iter()
            .any(|e| at >= e.offset && at < e.offset + e.new.len() as u64 && e.new[(at - e.offset) as usize] == value)
    }
}

/// A bounds-checked cursor over a journal body.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_reads_see_writes_and_growth() {
        let base = b"abcdefgh".to_vec();
        let mut o = Overlay::new(8);
        o.write(2, b"XY");
        o.write(10, b"Z");
        let mut buf = [0u8; 11];
        o.read(0, &mut buf, |at, b| {
            b.copy_from_slice(&base[at as usize..at as usize + b.len()]);
            Ok(())
        })
        .unwrap();
        assert_eq!(&buf, b"abXYefgh\0\0Z");
        let s = o.into_staged();
        assert_eq!((s.final_len, s.max_len, s.writes.len()), (11, 11, 2));
    }

    #[test]
    fn a_cut_journal_is_recognised_and_a_foreign_one_refused() {
        let j = Journal {
            id: FileId { device: 1, inode: 2 },
            original_len: 8,
            final_len: 8,
            max_len: 8,
            entries: vec![Entry { offset: 0, new: b"xy".to_vec(), old: b"ab".to_vec() }],
            anchors: vec![(0, b"ab".to_vec())],
        };
        let bytes = j.encode();
        assert!(matches!(Journal::decode(&bytes), Decoded::Whole(_)));
        for cut in [0, 3, 20, bytes.len() - 1] {
            assert!(matches!(Journal::decode(&bytes[..cut]), Decoded::CutShort), "cut at {cut}");
        }
        assert!(matches!(Journal::decode(b"#!/bin/sh\nrm -rf /\n................................"), Decoded::Foreign));
    }
}
