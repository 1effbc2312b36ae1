//! The one writer that carries out a compaction plan into a new file. The output is cut into pieces of at most
//! [`PIECE`] bytes; a window of pieces is read and prepared in parallel (positional reads),
//! then handed in order to a single writer thread, which writes into the new file. Memory for
//! block copies is a fixed number of bytes, whatever the block size: at most three windows of
//! [`READ_AHEAD`] bytes (one being read, one waiting in the channel, one being written).
//!
//! The layout is decided before a byte of data is written: the kept blocks of a dynamic
//! output that read as zeros are found first (reading each only up to its first non-zero
//! byte), then the container names in its BAT where every stored block goes. So the output
//! is written front to back after its metadata, and the same code writes a file or a pipe
//! (a differencing VHDX, whose sector bitmaps follow its blocks, only a file). When asked,
//! the needed bytes of every piece are hashed as they are read, for verification to compare
//! with the output.

use std::sync::mpsc;

use rayon::prelude::*;

use super::verify::{NeededDigests, PieceDigest};
use super::{CompactionPlan, OutputFormat, StoredBlock};
use crate::error::{Error, Result};
use crate::vhd::bitmap::SectorBitmap;
use crate::vhd::device::{BlockDevice, ImageFile, WritableDevice};
use crate::vhd::fixed::{Fill, FixedVhd};
use crate::vhd::image::ImageFormat;
use crate::vhd::sparse::{ParentLink, SparseVhd};
use crate::vhdx::Vhdx;
use crate::vhdx::create::{NewKind, NewVhdx};

/// Largest piece of a block read or written at once.
const PIECE: u64 = 4 << 20;
/// Bytes of pieces read ahead of the writer in one window.
const READ_AHEAD: u64 = 32 << 20;

/// What the writer did.
#[derive(Debug, Default)]
pub struct Written {
    /// Blocks stored in the output.
    pub stored_blocks: u64,
    /// Blocks the plan kept that read as zeros and were dropped anyway.
    pub zero_blocks_dropped: u64,
    /// Digests of the needed bytes read, when asked for.
    pub digests: Option<NeededDigests>,
    /// Length of the output.
    pub output_bytes: u64,
}

/// One piece of the output: `len` bytes at `within` of block `block`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Piece<'p> {
    pub(super) block: u64,
    pub(super) within: u64,
    pub(super) len: u64,
    /// The plan of a stored block; `None` for a block a fixed output fills with zeros.
    stored: Option<&'p StoredBlock>,
    /// The last piece of its block.
    last: bool,
}

/// The pieces of `len` bytes of block `block`.
pub(super) fn cut(block: u64, len: u64, stored: Option<&StoredBlock>) -> impl Iterator<Item = Piece<'_>> {
    (0..len.div_ceil(PIECE)).map(move |i| {
        let within = i * PIECE;
        let n = PIECE.min(len - within);
        Piece { block, within, len: n, stored, last: within + n == len }
    })
}

/// The pieces of the output, in order, made as they are needed: the `kept` blocks of a sparse
/// output; every block of a fixed one (dropped blocks as zeros, so the file has no holes).
fn pieces<'p>(plan: &'p CompactionPlan<'_>, kept: &'p [&'p StoredBlock]) -> Box<dyn Iterator<Item = Piece<'p>> + 'p> {
    let bs = plan.block_size;
    match plan.format {
        OutputFormat::Fixed => {
            let mut stored = plan.stored.iter().peekable();
            Box::new((0..plan.blocks()).flat_map(move |b| {
                let s = stored.next_if(|s| s.index == b);
                cut(b, bs.min(plan.disk_size - b * bs), s)
            }))
        }
        _ => Box::new(kept.iter().flat_map(move |s| cut(s.index, bs, Some(*s)))),
    }
}

/// Digests of the needed bytes of the blocks dropped because they read as zeros: the output
/// must read zeros there too.
fn zero_digests(plan: &CompactionPlan<'_>, dropped: &[&StoredBlock], zeros: &[u8]) -> NeededDigests {
    let bs = plan.block_size;
    let mut digests = NeededDigests::new(plan.source.len());
    for p in dropped.iter().flat_map(|s| cut(s.index, bs.min(plan.disk_size - s.index * bs), Some(*s))) {
        if let Some(d) = PieceDigest::of(p.block * bs + p.within, &zeros[..p.len as usize], p.needed(bs)) {
            digests.push(d);
        }
    }
    digests
}

/// Bytes read at once while looking for a non-zero byte.
const PROBE: u64 = 64 << 10;

/// The stored blocks the output keeps, and those it drops: for a dynamic output, the blocks
/// that read as zeros once the plan's zero ranges are applied are dropped (a differencing
/// output keeps every one: dropping a sector would show the parent's).
fn kept_blocks<'p>(plan: &'p CompactionPlan<'_>) -> Result<(Vec<&'p StoredBlock>, Vec<&'p StoredBlock>)> {
    if plan.format != OutputFormat::Dynamic {
        return Ok((plan.stored.iter().collect(), Vec::new()));
    }
    let flags: Vec<bool> =
        plan.stored.par_iter().map(|s| holds_non_zero(&plan.source, plan.block_size, s)).collect::<Result<_>>()?;
    Ok(plan.stored.iter().zip(flags).partition::<Vec<_>, _>(|(_, keep)| *keep)).map(|(kept, dropped)| {
        (kept.into_iter().map(|(s, _)| s).collect(), dropped.into_iter().map(|(s, _)| s).collect())
    })
}

/// Whether block `s` reads as anything but zeros, reading only up to its first non-zero byte.
fn holds_non_zero(source: &dyn BlockDevice, bs: u64, s: &StoredBlock) -> Result<bool> {
    let start = s.index * bs;
    let end = (start + bs).min(source.len());
    let mut buf = vec![0u8; PROBE as usize];
    let mut at = start;
    while at < end {
        let n = PROBE.min(end - at);
        let chunk = &mut buf[..n as usize];
        source.read_at(at, chunk)?;
        for &(a, z) in &s.zero {
            let (a, z) = ((start + a).max(at), (start + z).min(at + n));
            if a < z {
                chunk[(a - at) as usize..(z - at) as usize].fill(0);
            }
        }
        if chunk.iter().any(|&x| x != 0) {
            return Ok(true);
        }
        at += n;
    }
    Ok(false)
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

/// Piece `p` read from `source` with the plan's zero ranges applied (`None` for a piece of
/// zeros that needs no read), and with `digest`, the digest of its needed bytes.
fn prepare(
    source: &dyn BlockDevice,
    bs: u64,
    p: &Piece<'_>,
    pool: &BufferPool,
    digest: bool,
) -> Result<(Option<Vec<u8>>, Option<PieceDigest>)> {
    let Some(stored) = p.stored else { return Ok((None, None)) };
    let start = p.block * bs + p.within;
    let mut buf = take_buffer(pool, p.len as usize);
    // The last block of a disk that is not a whole number of blocks reads zeros past the end.
    let readable = (start + p.len).min(source.len()).saturating_sub(start) as usize;
    if readable > 0 {
        source.read_at(start, &mut buf[..readable])?;
    }
    buf[readable..].fill(0);
    let digest = digest.then(|| PieceDigest::of(start, &buf, p.needed(bs))).flatten();
    for &(a, z) in &stored.zero {
        let (a, z) = (a.max(p.within), z.min(p.within + p.len));
        if a < z {
            buf[(a - p.within) as usize..(z - p.within) as usize].fill(0);
        }
    }
    Ok((Some(buf), digest))
}

impl Piece<'_> {
    /// The disk ranges of the piece's needed bytes.
    pub(super) fn needed(&self, bs: u64) -> Vec<(u64, u64)> {
        let base = self.block * bs;
        let (lo, hi) = (self.within, self.within + self.len);
        self.stored
            .iter()
            .flat_map(|s| &s.needed)
            .filter_map(|&(a, z)| {
                let (a, z) = (a.max(lo), z.min(hi));
                (a < z).then_some((base + a, base + z))
            })
            .collect()
    }
}

/// The output container being written.
enum Writer {
    /// A fixed VHD: every byte written where it goes.
    Whole(Box<FixedVhd>),
    /// A dynamic or differencing VHD, its blocks appended.
    Sparse(Box<SparseVhd>),
    /// A dynamic or differencing VHDX, its blocks appended.
    Vhdx(Box<Vhdx>),
    /// A fixed VHDX: every byte written to the block the BAT names.
    FixedVhdx(Box<Vhdx>),
}

/// Creates the output container in the new `file` and names where the `kept` blocks go.
fn create_writer(plan: &CompactionPlan<'_>, file: ImageFile, kept: &[&StoredBlock]) -> Result<Writer> {
    let image = plan.source.map().image;
    let parent = || {
        image
            .parent()
            .ok_or_else(|| Error::unsupported(image.source(), "a differencing output needs the input's parent"))
    };
    let indexes: Vec<u64> = kept.iter().map(|s| s.index).collect();
    let vhdx = |file: ImageFile, kind: NewKind<'_>| {
        Vhdx::create_in(
            file,
            NewVhdx {
                size: plan.disk_size,
                block_size: plan.container_block_size as u32,
                logical_sector_size: plan.sector_size.bytes() as u32,
                kind,
                identity: plan.identity,
            },
        )
    };
    Ok(match (plan.container, plan.format) {
        (ImageFormat::Vhdx, OutputFormat::Differencing) => {
            let p = parent()?;
            let path = plan.parent.as_deref().unwrap_or(p.source());
            let v = vhdx(file, NewKind::Differencing { image: p, path })?;
            if v.file().is_stream() {
                return Err(Error::unsupported(
                    v.file().path(),
                    "a differencing VHDX cannot be streamed: its sector bitmaps follow its blocks; write it to a file",
                ));
            }
            Writer::Vhdx(Box::new(v))
        }
        (ImageFormat::Vhdx, OutputFormat::Fixed) => {
            let mut v = vhdx(file, NewKind::Fixed)?;
            v.reserve_appends(&[])?;
            Writer::FixedVhdx(Box::new(v))
        }
        (ImageFormat::Vhdx, _) => {
            let mut v = vhdx(file, NewKind::Dynamic)?;
            v.reserve_appends(&indexes)?;
            Writer::Vhdx(Box::new(v))
        }
        (_, OutputFormat::Fixed) => {
            let f = FixedVhd::create_in(file, plan.disk_size, Fill::Caller, &plan.identity)?;
            f.file().start_stream(0)?;
            Writer::Whole(Box::new(f))
        }
        (_, format) => {
            let link = match format {
                OutputFormat::Differencing => {
                    let p = parent()?;
                    Some(ParentLink { image: p, path: plan.parent.as_deref().unwrap_or(p.source()) })
                }
                _ => None,
            };
            let size = if link.is_some() { 0 } else { plan.disk_size };
            let mut s = SparseVhd::create_in(file, size, plan.block_size as u32, link, &plan.identity)?;
            s.reserve_appends(&indexes)?;
            Writer::Sparse(Box::new(s))
        }
    })
}

/// A block's present 512-byte sectors as VHDX sector bits (LSB first, one per logical sector
/// of `logical` bytes, set when any of its 512-byte sectors is).
fn logical_bits(bitmap: &SectorBitmap, logical: u32) -> Vec<u8> {
    let per = logical / 512;
    let n = bitmap.sectors() / per;
    let mut bits = vec![0u8; n.div_ceil(8) as usize];
    for s in 0..n {
        if (s * per..(s + 1) * per).any(|x| bitmap.is_set(x)) {
            bits[(s / 8) as usize] |= 1 << (s % 8);
        }
    }
    bits
}

impl Writer {
    /// Writes piece `p` (`data`, or zeros); says whether it ended a block.
    fn write(&mut self, bs: u64, p: &Piece<'_>, data: Option<&[u8]>, zeros: &[u8]) -> Result<bool> {
        let bytes = data.unwrap_or(&zeros[..p.len as usize]);
        match self {
            Writer::Whole(f) => f.write_at(p.block * bs + p.within, bytes)?,
            Writer::FixedVhdx(v) => v.write_fresh(p.block * bs + p.within, bytes)?,
            Writer::Sparse(s) => {
                let stored = p.stored.ok_or_else(|| Error::internal("a sparse output piece without a block plan"))?;
                if p.within == 0 {
                    let full = SectorBitmap::for_block(bs, true);
                    s.append_begin(p.block, stored.bitmap.as_ref().unwrap_or(&full))?;
                }
                s.append_data(p.within, bytes)?;
                if p.last {
                    s.append_end(true)?;
                }
            }
            Writer::Vhdx(v) => {
                if p.within == 0 {
                    let logical = v.parameters().logical_sector_size;
                    let bitmap = p.stored.and_then(|s| s.bitmap.as_ref()).map(|b| logical_bits(b, logical));
                    v.append_begin(p.block, bitmap)?;
                }
                v.append_data(p.within, bytes)?;
                if p.last {
                    v.append_end(true)?;
                }
            }
        }
        Ok(p.last)
    }

    /// Writes what follows the blocks, flushes a file, sends the rest of a stream; returns
    /// the output's length.
    fn finish(&mut self) -> Result<u64> {
        let file = match self {
            Writer::Whole(f) => {
                f.flush()?;
                f.file()
            }
            Writer::Sparse(s) => {
                s.finish_appends()?;
                s.flush()?;
                s.file()
            }
            Writer::Vhdx(v) | Writer::FixedVhdx(v) => {
                v.finish_appends()?;
                v.flush()?;
                v.file()
            }
        };
        file.finish_stream()?;
        file.file_len()
    }
}

/// Writes the plan's output into the new `file` (flushed, not yet committed, so it can be
/// verified first); with `digest`, takes the digests of the needed bytes it reads.
pub fn write(
    plan: &CompactionPlan<'_>,
    file: ImageFile,
    digest: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Written> {
    let (kept, zero_blocks) = kept_blocks(plan)?;
    let zero_blocks_dropped = zero_blocks.len() as u64;
    let mut writer = create_writer(plan, file, &kept)?;
    let source: &dyn BlockDevice = &plan.source;
    let bs = plan.block_size;
    let mut all = pieces(plan, &kept).peekable();
    let pool = BufferPool::default();
    type Prepared<'p> = Vec<(Piece<'p>, Option<Vec<u8>>, Option<PieceDigest>)>;
    std::thread::scope(|scope| -> Result<Written> {
        let (tx, rx) = mpsc::sync_channel::<Prepared<'_>>(1);
        let pool = &pool;
        let handle = scope.spawn(move || -> Result<Written> {
            let zeros = vec![0u8; PIECE as usize];
            let mut done = Written {
                digests: digest.then(|| zero_digests(plan, &zero_blocks, &zeros)),
                zero_blocks_dropped,
                ..Written::default()
            };
            for window in rx {
                for (p, data, piece_digest) in window {
                    if writer.write(bs, &p, data.as_deref(), &zeros)? {
                        done.stored_blocks += 1;
                        progress(done.stored_blocks + done.zero_blocks_dropped);
                    }
                    if let (Some(d), Some(all)) = (piece_digest, done.digests.as_mut()) {
                        all.push(d);
                    }
                    if let (Some(buf), Ok(mut free)) = (data, pool.lock()) {
                        free.push(buf);
                    }
                }
            }
            done.output_bytes = writer.finish()?;
            Ok(done)
        });
        while all.peek().is_some() {
            let mut window = Vec::new();
            let mut bytes = 0;
            while let Some(p) = all.next_if(|p| window.is_empty() || bytes + p.len <= READ_AHEAD) {
                bytes += p.len;
                window.push(p);
            }
            let prepared: Prepared<'_> = window
                .par_iter()
                .map(|p| prepare(source, bs, p, pool, digest).map(|(d, h)| (*p, d, h)))
                .collect::<Result<_>>()?;
            if tx.send(prepared).is_err() {
                break;
            }
        }
        drop(tx);
        handle.join().map_err(|_| Error::internal("the compaction writer thread panicked"))?
    })
}
