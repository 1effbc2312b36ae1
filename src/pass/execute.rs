//! The one writer that carries out a compaction plan. The output is cut into pieces of at most
//! [`PIECE`] bytes; a window of pieces is read and prepared in parallel (positional reads),
//! then handed in order to a single writer thread, which writes into the new file. Memory for
//! block copies is a fixed number of bytes, whatever the block size: at most three windows of
//! [`READ_AHEAD`] bytes (one being read, one waiting in the channel, one being written). Since nobody can see the new file until it is committed, a sparse
//! output appends each block as its pieces come and writes its BAT and footer once at the end;
//! a block that turns out to read as zeros is given back.

use std::sync::mpsc;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::host::NewFile;
use crate::map::ImageMap;
use crate::pass::align::RealignedDisk;
use crate::pass::compact::{CompactionPlan, OutputFormat, StoredBlock};
use crate::vhd::bitmap::SectorBitmap;
use crate::vhd::device::{BlockDevice, ImageFile, WritableDevice};
use crate::vhd::fixed::{Fill, FixedVhd};
use crate::vhd::sparse::{ParentLink, SparseVhd};

/// Largest piece of a block read or written at once.
const PIECE: u64 = 4 << 20;
/// Bytes of pieces read ahead of the writer in one window.
const READ_AHEAD: u64 = 32 << 20;

/// What the writer did.
#[derive(Clone, Debug, Default)]
pub struct WriteStats {
    /// Blocks stored in the output.
    pub stored_blocks: u64,
    /// Blocks the plan kept that read as zeros and were dropped anyway.
    pub zero_blocks_dropped: u64,
}

/// One piece of the output: `len` bytes at `within` of block `block`.
#[derive(Clone, Copy, Debug)]
struct Piece<'p> {
    block: u64,
    within: u64,
    len: u64,
    /// The plan of a stored block; `None` for a block a fixed output fills with zeros.
    stored: Option<&'p StoredBlock>,
    /// The last piece of its block.
    last: bool,
}

/// The pieces of `len` bytes of block `block`.
fn cut(block: u64, len: u64, stored: Option<&StoredBlock>) -> impl Iterator<Item = Piece<'_>> {
    (0..len.div_ceil(PIECE)).map(move |i| {
        let within = i * PIECE;
        let n = PIECE.min(len - within);
        Piece { block, within, len: n, stored, last: within + n == len }
    })
}

/// The pieces of the output, in order, made as they are needed: the stored blocks of a sparse
/// output; every block of a fixed one (dropped blocks as zeros, so the file has no holes).
fn pieces(plan: &CompactionPlan) -> Box<dyn Iterator<Item = Piece<'_>> + '_> {
    let bs = plan.block_size;
    match plan.format {
        OutputFormat::Fixed => {
            let mut stored = plan.stored.iter().peekable();
            Box::new((0..plan.blocks()).flat_map(move |b| {
                let s = stored.next_if(|s| s.index == b);
                cut(b, bs.min(plan.disk_size - b * bs), s)
            }))
        }
        _ => Box::new(plan.stored.iter().flat_map(move |s| cut(s.index, bs, Some(s)))),
    }
}

/// Block buffers handed back by the writer for reuse: a fresh zero-filled buffer per piece
/// would cost a page fault per 4 KiB, which dominated the copy.
type BufferPool = std::sync::Mutex<Vec<Vec<u8>>>;

/// A buffer of `len` bytes from the pool (contents unspecified) or a new one.
fn take_buffer(pool: &BufferPool, len: usize) -> Vec<u8> {
    let mut buf = pool.lock().ok().and_then(|mut p| p.pop()).unwrap_or_default();
    buf.resize(len, 0);
    buf
}

/// Reads piece `p` from `source` with the plan's zero ranges applied; `None` for a piece of
/// zeros that needs no read.
fn prepare(source: &dyn BlockDevice, bs: u64, p: &Piece<'_>, pool: &BufferPool) -> Result<Option<Vec<u8>>> {
    let Some(stored) = p.stored else { return Ok(None) };
    let start = p.block * bs + p.within;
    let mut buf = take_buffer(pool, p.len as usize);
    // The last block of a disk that is not a whole number of blocks reads zeros past the end.
    let readable = (start + p.len).min(source.len()).saturating_sub(start) as usize;
    if readable > 0 {
        source.read_at(start, &mut buf[..readable])?;
    }
    buf[readable..].fill(0);
    for &(a, z) in &stored.zero {
        let (a, z) = (a.max(p.within), z.min(p.within + p.len));
        if a < z {
            buf[(a - p.within) as usize..(z - p.within) as usize].fill(0);
        }
    }
    Ok(Some(buf))
}

/// The output container being written.
enum Writer {
    Fixed(Box<FixedVhd>),
    /// A sparse output, and whether the block being appended reads as zeros so far.
    Sparse(Box<SparseVhd>, bool),
}

/// Creates the output container in the new file.
fn create_writer(map: &ImageMap<'_>, plan: &CompactionPlan, out: &NewFile) -> Result<Writer> {
    let file = out.file().try_clone().map_err(|e| Error::open(out.path(), "reopen", e))?;
    let file = ImageFile::from_file(file, out.path(), true);
    Ok(match plan.format {
        OutputFormat::Fixed => Writer::Fixed(Box::new(FixedVhd::create_in(file, plan.disk_size, Fill::Caller)?)),
        OutputFormat::Dynamic => {
            Writer::Sparse(Box::new(SparseVhd::create_in(file, plan.disk_size, plan.block_size as u32, None)?), true)
        }
        OutputFormat::Differencing => {
            let parent = map.image.as_sparse().and_then(|s| s.parent()).ok_or_else(|| {
                Error::unsupported(map.image.source(), "a differencing output needs the input's parent")
            })?;
            let path = plan.parent.as_deref().unwrap_or(parent.source());
            Writer::Sparse(
                Box::new(SparseVhd::create_in(
                    file,
                    0,
                    plan.block_size as u32,
                    Some(ParentLink { image: parent, path }),
                )?),
                true,
            )
        }
    })
}

impl Writer {
    /// Writes piece `p` (`data`, or zeros); at a block's last piece, says whether it was stored.
    fn write(&mut self, bs: u64, p: &Piece<'_>, data: Option<&[u8]>, zeros: &[u8]) -> Result<Option<bool>> {
        let bytes = data.unwrap_or(&zeros[..p.len as usize]);
        match self {
            Writer::Fixed(f) => {
                f.write_at(p.block * bs + p.within, bytes)?;
                Ok(p.last.then_some(true))
            }
            Writer::Sparse(s, all_zero) => {
                let stored = p.stored.ok_or_else(|| Error::internal("a sparse output piece without a block plan"))?;
                if p.within == 0 {
                    let full = SectorBitmap::full((bs / 512) as u32);
                    s.append_begin(p.block, stored.bitmap.as_ref().unwrap_or(&full))?;
                    *all_zero = true;
                }
                *all_zero &= bytes.iter().all(|&x| x == 0);
                s.append_data(p.within, bytes)?;
                if !p.last {
                    return Ok(None);
                }
                // A differencing output keeps its sectors even when zero: dropping them would
                // show the parent.
                let keep = stored.bitmap.is_some() || !*all_zero;
                s.append_end(keep)?;
                Ok(Some(keep))
            }
        }
    }

    fn finish(&mut self) -> Result<()> {
        match self {
            Writer::Fixed(f) => f.flush(),
            Writer::Sparse(s, _) => {
                s.finish_appends()?;
                s.flush()
            }
        }
    }
}

/// Writes the plan's output into the new file `out` (flushed, not yet committed, so it can be
/// verified first).
pub fn write(
    map: &ImageMap<'_>,
    plan: &CompactionPlan,
    out: &NewFile,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<WriteStats> {
    let mut writer = create_writer(map, plan, out)?;
    let realigned = plan.realignment.as_ref().map(|r| RealignedDisk { input: map.image, plan: r });
    let source: &dyn BlockDevice = match &realigned {
        Some(r) => r,
        None => map.image,
    };
    let bs = plan.block_size;
    let mut all = pieces(plan).peekable();
    let pool = BufferPool::default();
    std::thread::scope(|scope| -> Result<WriteStats> {
        let (tx, rx) = mpsc::sync_channel::<Vec<(Piece<'_>, Option<Vec<u8>>)>>(1);
        let pool = &pool;
        let handle = scope.spawn(move || -> Result<WriteStats> {
            let zeros = vec![0u8; PIECE as usize];
            let mut stats = WriteStats::default();
            for window in rx {
                for (p, data) in window {
                    if let Some(kept) = writer.write(bs, &p, data.as_deref(), &zeros)? {
                        stats.stored_blocks += u64::from(kept);
                        stats.zero_blocks_dropped += u64::from(!kept);
                        progress(stats.stored_blocks + stats.zero_blocks_dropped);
                    }
                    if let (Some(buf), Ok(mut free)) = (data, pool.lock()) {
                        free.push(buf);
                    }
                }
            }
            writer.finish()?;
            Ok(stats)
        });
        while all.peek().is_some() {
            let mut window = Vec::new();
            let mut bytes = 0;
            while let Some(p) = all.next_if(|p| window.is_empty() || bytes + p.len <= READ_AHEAD) {
                bytes += p.len;
                window.push(p);
            }
            let prepared: Vec<(Piece<'_>, Option<Vec<u8>>)> =
                window.par_iter().map(|p| prepare(source, bs, p, pool).map(|d| (*p, d))).collect::<Result<_>>()?;
            if tx.send(prepared).is_err() {
                break;
            }
        }
        drop(tx);
        handle.join().map_err(|_| Error::internal("the compaction writer thread panicked"))?
    })
}
