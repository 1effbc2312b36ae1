//! The one writer that carries out a compaction plan: blocks are read and prepared in parallel
//! (positional reads), then written in order by a single writer thread into a temporary file
//! beside the output, which becomes the output only after everything is written and flushed.
//! Since nobody can see the temporary file, a sparse output gets one write per block and its
//! BAT and footer once at the end.

use std::sync::mpsc;

use indicatif::ProgressBar;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::host::NewFile;
use crate::map::ImageMap;
use crate::pass::align::RealignedDisk;
use crate::pass::compact::{BlockAction, CompactionPlan, OutputFormat};
use crate::vhd::bitmap::SectorBitmap;
use crate::vhd::device::{BlockDevice, ImageFile, WritableDevice};
use crate::vhd::fixed::{Fill, FixedVhd};
use crate::vhd::header::bitmap_size_for;
use crate::vhd::sparse::{ParentLink, SparseVhd};

/// Blocks read ahead of the writer (memory: this many blocks, twice over).
const WINDOW: u64 = 16;

/// What the writer did.
#[derive(Clone, Debug, Default)]
pub struct WriteStats {
    /// Blocks stored in the output.
    pub stored_blocks: u64,
    /// Blocks the plan kept that read as zeros and were dropped anyway.
    pub zero_blocks_dropped: u64,
}

/// A block ready to be written: `buf` holds `prefix` bytes of room for the sector bitmap
/// (sparse outputs), then the block's data.
enum Prepared {
    Drop,
    /// Dropped because it reads as all zeros.
    Zero,
    Store {
        bitmap: SectorBitmap,
        buf: Vec<u8>,
        prefix: usize,
    },
}

/// The output container being written.
enum Writer {
    Fixed(Box<FixedVhd>),
    Sparse(Box<SparseVhd>),
}

/// Block buffers handed back by the writer for reuse: a fresh zero-filled 2 MiB buffer per
/// block would cost a page fault per 4 KiB, which dominated the copy.
type BufferPool = std::sync::Mutex<Vec<Vec<u8>>>;

/// A buffer of `len` bytes from the pool (contents unspecified) or a new one.
fn take_buffer(pool: &BufferPool, len: usize) -> Vec<u8> {
    let mut buf = pool.lock().ok().and_then(|mut p| p.pop()).unwrap_or_default();
    buf.resize(len, 0);
    buf
}

/// Reads and prepares output block `b`.
fn prepare(map: &ImageMap<'_>, plan: &CompactionPlan, b: u64, pool: &BufferPool) -> Result<Prepared> {
    let BlockAction::Store { bitmap, zero } = &plan.actions[b as usize] else {
        return Ok(Prepared::Drop);
    };
    let bs = plan.block_size;
    let start = b * bs;
    let prefix = match plan.format {
        OutputFormat::Fixed => 0,
        _ => bitmap_size_for(bs as u32) as usize,
    };
    let mut buf = take_buffer(pool, prefix + bs as usize);
    let data = &mut buf[prefix..];
    let source: &dyn BlockDevice = match &plan.realignment {
        Some(r) => &RealignedDisk { input: map.image, plan: r },
        None => map.image,
    };
    let readable = (start + bs).min(source.len()).saturating_sub(start) as usize;
    source.read_at(start, &mut data[..readable])?;
    data[readable..].fill(0);
    for &(a, z) in zero {
        data[a as usize..z as usize].fill(0);
    }
    let sectors = (bs / 512) as u32;
    Ok(match bitmap {
        // A differencing output keeps its sectors even when zero: dropping would show the parent.
        Some(bm) => Prepared::Store { bitmap: bm.clone(), buf, prefix },
        None if data.iter().all(|&x| x == 0) => Prepared::Zero,
        None => Prepared::Store { bitmap: SectorBitmap::full(sectors), buf, prefix },
    })
}

/// Creates the output container in the temporary file.
fn create_writer(map: &ImageMap<'_>, plan: &CompactionPlan, out: &NewFile) -> Result<Writer> {
    let file = out.file().try_clone().map_err(|e| Error::open(out.path(), "reopen", e))?;
    let file = ImageFile::from_file(file, out.path(), true);
    Ok(match plan.format {
        OutputFormat::Fixed => Writer::Fixed(Box::new(FixedVhd::create_in(file, plan.disk_size, Fill::Caller)?)),
        OutputFormat::Dynamic => {
            Writer::Sparse(Box::new(SparseVhd::create_in(file, plan.disk_size, plan.block_size as u32, None)?))
        }
        OutputFormat::Differencing => {
            let parent = map.image.as_sparse().and_then(|s| s.parent()).ok_or_else(|| {
                Error::unsupported(map.image.source(), "a differencing output needs the input's parent")
            })?;
            let path = plan.parent.as_deref().unwrap_or(parent.source());
            Writer::Sparse(Box::new(SparseVhd::create_in(
                file,
                0,
                plan.block_size as u32,
                Some(ParentLink { image: parent, path }),
            )?))
        }
    })
}

impl Writer {
    /// Writes block `b`; a fixed output writes every byte, zeros included, so it has no holes.
    /// Writes block `b` and returns whether it was stored, and its buffer for reuse.
    fn write(
        &mut self,
        b: u64,
        bs: u64,
        disk_size: u64,
        block: Prepared,
        zeros: &[u8],
    ) -> Result<(bool, Option<Vec<u8>>)> {
        match (self, block) {
            (Writer::Fixed(f), block) => {
                let start = b * bs;
                let len = bs.min(disk_size - start) as usize;
                match block {
                    Prepared::Store { buf, prefix, .. } => {
                        f.write_at(start, &buf[prefix..prefix + len])?;
                        Ok((true, Some(buf)))
                    }
                    Prepared::Drop | Prepared::Zero => {
                        f.write_at(start, &zeros[..len])?;
                        Ok((true, None))
                    }
                }
            }
            (Writer::Sparse(s), Prepared::Store { bitmap, mut buf, .. }) => {
                s.append_block(b, &bitmap, &mut buf)?;
                Ok((true, Some(buf)))
            }
            (Writer::Sparse(_), _) => Ok((false, None)),
        }
    }

    fn flush(&mut self) -> Result<()> {
        match self {
            Writer::Fixed(f) => f.flush(),
            Writer::Sparse(s) => {
                s.finish_appends()?;
                s.flush()
            }
        }
    }
}

/// Writes the plan's output into the new file `out` (flushed, not yet committed, so it can be
/// verified first).
pub fn write(map: &ImageMap<'_>, plan: &CompactionPlan, out: &NewFile, progress: &ProgressBar) -> Result<WriteStats> {
    let mut writer = create_writer(map, plan, out)?;
    let blocks = plan.actions.len() as u64;
    let bs = plan.block_size;
    let pool = BufferPool::default();
    let stats = std::thread::scope(|scope| -> Result<WriteStats> {
        let (tx, rx) = mpsc::sync_channel::<Vec<(u64, Prepared)>>(1);
        let disk_size = plan.disk_size;
        let pool = &pool;
        let handle = scope.spawn(move || -> Result<WriteStats> {
            let zeros = vec![0u8; bs as usize];
            let mut stats = WriteStats::default();
            for window in rx {
                for (b, block) in window {
                    let zero = matches!(block, Prepared::Zero);
                    let (stored, buf) = writer.write(b, bs, disk_size, block, &zeros)?;
                    if let (Some(buf), Ok(mut free)) = (buf, pool.lock()) {
                        free.push(buf);
                    }
                    stats.stored_blocks += u64::from(stored);
                    stats.zero_blocks_dropped += u64::from(zero && !stored);
                    progress.inc(1);
                }
            }
            writer.flush()?;
            Ok(stats)
        });
        let mut first = 0;
        while first < blocks {
            let last = (first + WINDOW).min(blocks);
            let window: Vec<(u64, Prepared)> = (first..last)
                .into_par_iter()
                .map(|b| prepare(map, plan, b, pool).map(|p| (b, p)))
                .collect::<Result<_>>()?;
            if tx.send(window).is_err() {
                break;
            }
            first = last;
        }
        drop(tx);
        handle.join().map_err(|_| Error::unsupported(out.path(), "the writer thread stopped unexpectedly"))?
    })?;
    Ok(stats)
}
