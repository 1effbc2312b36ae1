//! LZX as WIM files and WOF-compressed files use it (`compact /exe:lzx`): each 32 KiB chunk
//! compressed on its own with a 32 KiB window, E8 call translation always on (file size
//! 12,000,000), block sizes of one bit plus 16. The `lzxd` crate decodes only the LZX DELTA
//! framing (an E8 header and 24-bit block sizes), so this variant is decoded here.

/// Why a chunk does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LzxError {
    /// The input ended before the chunk's bytes were decoded.
    #[error("the compressed data ends at byte {0} before the chunk is complete")]
    Truncated(usize),
    /// A block header names a type LZX does not have.
    #[error("block type {0} at output byte {1}")]
    BadBlockType(u32, usize),
    /// A Huffman code's lengths do not form a complete prefix code.
    #[error("the {0} code's lengths do not form a complete code")]
    BadCode(&'static str),
    /// A bit pattern that no symbol of the code has.
    #[error("no {0} symbol for the bits at output byte {1}")]
    NoSymbol(&'static str, usize),
    /// A run of code lengths, a match or a block goes past where it may.
    #[error("{0} runs past its end at output byte {1}")]
    Overrun(&'static str, usize),
    /// A match reaches before the chunk's first byte.
    #[error("a match at output byte {0} reaches {1} bytes back")]
    BadOffset(usize, usize),
}

/// Position slots of a 32 KiB window.
const SLOTS: usize = 30;
/// Literals, then a symbol per (position slot, length header).
const MAIN_SYMBOLS: usize = 256 + 8 * SLOTS;
const LENGTH_SYMBOLS: usize = 249;
const PRETREE_SYMBOLS: usize = 20;
const ALIGNED_SYMBOLS: usize = 8;
const MIN_MATCH: usize = 2;
/// The block size a header's first bit stands for.
const DEFAULT_BLOCK: usize = 32768;
/// The file size E8 translation assumes in WIM and WOF data.
const E8_FILE_SIZE: i32 = 12_000_000;

/// Extra bits of each position slot.
const fn extra_bits(slot: usize) -> u32 {
    if slot < 4 { 0 } else { (slot / 2 - 1) as u32 }
}

/// The smallest formatted offset of each position slot.
const fn position_base(slot: usize) -> usize {
    let mut base = 0;
    let mut s = 0;
    while s < slot {
        base += 1 << extra_bits(s);
        s += 1;
    }
    base
}

/// Decodes one chunk of `size` bytes.
pub fn decompress(input: &[u8], size: usize) -> Result<Vec<u8>, LzxError> {
    let mut d = Decoder {
        bits: Bits::new(input, 0),
        out: Vec::with_capacity(size),
        recent: [1, 1, 1],
        main_lens: [0; MAIN_SYMBOLS],
        length_lens: [0; LENGTH_SYMBOLS],
    };
    while d.out.len() < size {
        d.block(size)?;
    }
    // Bits read past the input's end were zeros it does not hold.
    if d.bits.consumed() > input.len() {
        return Err(LzxError::Truncated(input.len()));
    }
    undo_e8(&mut d.out);
    Ok(d.out)
}

/// The decoder's state within a chunk: code lengths are sent as changes from the previous
/// block's, and the three recent match offsets carry over.
struct Decoder<'a> {
    bits: Bits<'a>,
    out: Vec<u8>,
    recent: [usize; 3],
    main_lens: [u8; MAIN_SYMBOLS],
    length_lens: [u8; LENGTH_SYMBOLS],
}

impl Decoder<'_> {
    /// Decodes the next block, at most up to `size` bytes of output.
    fn block(&mut self, size: usize) -> Result<(), LzxError> {
        let kind = self.bits.read(3)?;
        let declared = if self.bits.read(1)? == 1 { DEFAULT_BLOCK } else { self.bits.read(16)? as usize };
        let end = self.out.len() + declared.min(size - self.out.len());
        if declared == 0 {
            return Err(LzxError::Overrun("an empty block", self.out.len()));
        }
        match kind {
            1 | 2 => {
                let aligned = match kind {
                    2 => {
                        let mut lens = [0u8; ALIGNED_SYMBOLS];
                        for l in &mut lens {
                            *l = self.bits.read(3)? as u8;
                        }
                        Some(Huffman::new(&lens, "aligned offset")?)
                    }
                    _ => None,
                };
                read_lengths(&mut self.bits, &mut self.main_lens[..256])?;
                read_lengths(&mut self.bits, &mut self.main_lens[256..])?;
                read_lengths(&mut self.bits, &mut self.length_lens)?;
                let main = Huffman::new(&self.main_lens, "main")?;
                let length = Huffman::new(&self.length_lens, "length")?;
                self.compressed(end, &main, &length, aligned.as_ref())
            }
            3 => self.uncompressed(end, declared),
            other => Err(LzxError::BadBlockType(other, self.out.len())),
        }
    }

    /// Literals and matches up to output byte `end`.
    fn compressed(
        &mut self,
        end: usize,
        main: &Huffman,
        length: &Huffman,
        aligned: Option<&Huffman>,
    ) -> Result<(), LzxError> {
        while self.out.len() < end {
            let at = self.out.len();
            let symbol = main.decode(&mut self.bits, at)?;
            if symbol < 256 {
                self.out.push(symbol as u8);
                continue;
            }
            let (slot, header) = ((symbol - 256) >> 3, (symbol - 256) & 7);
            let mut len = header + MIN_MATCH;
            if header == 7 {
                len += length.decode(&mut self.bits, at)?;
            }
            let offset = self.offset(slot, aligned, at)?;
            if offset == 0 || offset > at {
                return Err(LzxError::BadOffset(at, offset));
            }
            if len > end - at {
                return Err(LzxError::Overrun("a match", at));
            }
            for i in 0..len {
                let byte = self.out[at + i - offset];
                self.out.push(byte);
            }
        }
        Ok(())
    }

    /// The match offset position slot `slot` stands for, updating the recent offsets.
    fn offset(&mut self, slot: usize, aligned: Option<&Huffman>, at: usize) -> Result<usize, LzxError> {
        let r = &mut self.recent;
        match slot {
            0 => return Ok(r[0]),
            1 | 2 => {
                r.swap(0, slot);
                return Ok(r[0]);
            }
            _ => {}
        }
        let extra = extra_bits(slot);
        let footer = match aligned {
            Some(code) if extra >= 3 => (self.bits.read(extra - 3)? << 3) as usize + code.decode(&mut self.bits, at)?,
            _ => self.bits.read(extra)? as usize,
        };
        let offset = position_base(slot) + footer - 2;
        *r = [offset, r[0], r[1]];
        Ok(offset)
    }

    /// A stored block: the recent offsets, then `declared` bytes as they are (and a padding
    /// byte after an odd count), of which those up to output byte `end` are kept.
    fn uncompressed(&mut self, end: usize, declared: usize) -> Result<(), LzxError> {
        let mut at = self.bits.align()?;
        let input = self.bits.data;
        let take = |at: &mut usize, n: usize| -> Result<&[u8], LzxError> {
            let bytes = input.get(*at..*at + n).ok_or(LzxError::Truncated(input.len()))?;
            *at += n;
            Ok(bytes)
        };
        for r in &mut self.recent {
            let b = take(&mut at, 4)?;
            *r = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        }
        let kept = end - self.out.len();
        self.out.extend_from_slice(take(&mut at, kept)?);
        at += (declared - kept) + declared % 2;
        self.bits = Bits::new(input, at.min(input.len()));
        Ok(())
    }
}

/// Reads the code lengths of `lens` as changes from their previous values, through a
/// pretree of 20 symbols sent first.
fn read_lengths(bits: &mut Bits<'_>, lens: &mut [u8]) -> Result<(), LzxError> {
    let mut pre = [0u8; PRETREE_SYMBOLS];
    for l in &mut pre {
        *l = bits.read(4)? as u8;
    }
    let pretree = Huffman::new(&pre, "pretree")?;
    let changed = |old: u8, symbol: usize| ((old as usize + 17 - symbol) % 17) as u8;
    let mut i = 0;
    while i < lens.len() {
        let symbol = pretree.decode(bits, 0)?;
        let (run, value) = match symbol {
            0..=16 => (1, changed(lens[i], symbol)),
            17 => (4 + bits.read(4)? as usize, 0),
            18 => (20 + bits.read(5)? as usize, 0),
            _ => {
                let run = 4 + bits.read(1)? as usize;
                let same = pretree.decode(bits, 0)?;
                if same > 16 {
                    return Err(LzxError::NoSymbol("pretree length", 0));
                }
                (run, changed(lens[i], same))
            }
        };
        let slots = lens.get_mut(i..i + run).ok_or(LzxError::Overrun("a run of code lengths", 0))?;
        slots.fill(value);
        i += run;
    }
    Ok(())
}

/// Code lengths resolved by the first table lookup; longer codes take a second step.
const PRIMARY_BITS: u32 = 10;
/// The longest code LZX sends.
const MAX_CODE_BITS: u32 = 16;

/// A canonical Huffman code: codes of up to [`PRIMARY_BITS`] found in one table lookup, longer
/// ones by their canonical numbering, so building a code costs the same for any lengths.
struct Huffman {
    /// (symbol, length) for each pattern of `PRIMARY_BITS` bits; length 0 where no code of
    /// that length or shorter starts (a longer one may).
    table: Vec<(u16, u8)>,
    /// Symbols in canonical order (by length, then value).
    sorted: Vec<u16>,
    /// Per length: the first code, and where its symbols start in `sorted`, and their count.
    first: [(u32, u32, u32); MAX_CODE_BITS as usize + 1],
    name: &'static str,
}

impl Huffman {
    /// The code whose symbols have the code lengths `lens` (0: not used). It must be complete
    /// or empty, as LZX encoders make it.
    fn new(lens: &[u8], name: &'static str) -> Result<Self, LzxError> {
        let mut counts = [0u32; MAX_CODE_BITS as usize + 1];
        for &l in lens {
            *counts.get_mut(l as usize).ok_or(LzxError::BadCode(name))? += 1;
        }
        counts[0] = 0;
        let room = (1..=MAX_CODE_BITS).try_fold(1i64 << MAX_CODE_BITS, |room, len| {
            let left = room - ((counts[len as usize] as i64) << (MAX_CODE_BITS - len));
            (left >= 0).then_some(left)
        });
        match room {
            Some(0) => {}
            Some(r) if r == 1 << MAX_CODE_BITS => {}
            _ => return Err(LzxError::BadCode(name)),
        }
        let mut first = [(0u32, 0u32, 0u32); MAX_CODE_BITS as usize + 1];
        let (mut code, mut index) = (0u32, 0u32);
        for len in 1..=MAX_CODE_BITS as usize {
            code = (code + counts[len - 1]) << 1;
            first[len] = (code, index, counts[len]);
            index += counts[len];
        }
        let mut sorted: Vec<u16> = (0..lens.len() as u16).filter(|&s| lens[s as usize] > 0).collect();
        sorted.sort_by_key(|&s| lens[s as usize]);
        let mut table = vec![(0u16, 0u8); 1 << PRIMARY_BITS];
        for (len, &(code, index, count)) in first.iter().enumerate().take(PRIMARY_BITS as usize + 1).skip(1) {
            for k in 0..count {
                let span = 1usize << (PRIMARY_BITS as usize - len);
                let at = ((code + k) as usize) << (PRIMARY_BITS as usize - len);
                table[at..at + span].fill((sorted[(index + k) as usize], len as u8));
            }
        }
        Ok(Huffman { table, sorted, first, name })
    }

    /// The next symbol (`at`: the output position, for errors).
    fn decode(&self, bits: &mut Bits<'_>, at: usize) -> Result<usize, LzxError> {
        let (symbol, len) = self.table[bits.peek(PRIMARY_BITS)? as usize];
        if len > 0 {
            bits.skip(len as u32);
            return Ok(symbol as usize);
        }
        let v = bits.peek(MAX_CODE_BITS)? as u32;
        for len in PRIMARY_BITS + 1..=MAX_CODE_BITS {
            let (code, index, count) = self.first[len as usize];
            let c = v >> (MAX_CODE_BITS - len);
            if c >= code && c - code < count {
                bits.skip(len);
                return Ok(self.sorted[(index + c - code) as usize] as usize);
            }
        }
        Err(LzxError::NoSymbol(self.name, at))
    }
}

/// LZX's bit stream: 16-bit little-endian words, each read from its high bit down.
struct Bits<'a> {
    data: &'a [u8],
    /// The next word's byte position.
    next: usize,
    /// Bits not yet consumed, from the top.
    buffer: u64,
    count: u32,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8], at: usize) -> Self {
        Bits { data, next: at, buffer: 0, count: 0 }
    }

    /// Fills the buffer with whole words; past the input's end, with zero words (a chunk's
    /// last symbols may be shorter than the bits peeked for them), up to a limit.
    fn refill(&mut self) -> Result<(), LzxError> {
        while self.count <= 48 {
            if self.next >= self.data.len() + 8 {
                return Err(LzxError::Truncated(self.data.len()));
            }
            let lo = self.data.get(self.next).copied().unwrap_or(0);
            let hi = self.data.get(self.next + 1).copied().unwrap_or(0);
            self.buffer |= (u16::from_le_bytes([lo, hi]) as u64) << (48 - self.count);
            self.count += 16;
            self.next += 2;
        }
        Ok(())
    }

    fn peek(&mut self, n: u32) -> Result<u64, LzxError> {
        self.refill()?;
        Ok(if n == 0 { 0 } else { self.buffer >> (64 - n) })
    }

    fn skip(&mut self, n: u32) {
        self.buffer <<= n;
        self.count -= n;
    }

    fn read(&mut self, n: u32) -> Result<u32, LzxError> {
        let v = self.peek(n)?;
        self.skip(n);
        Ok(v as u32)
    }

    /// Bytes of the input consumed so far (zero words read past its end included).
    fn consumed(&self) -> usize {
        self.next - (self.count / 8) as usize
    }

    /// Skips to the next word boundary (a whole word when already on one, as LZX does before
    /// a stored block) and returns the byte position there.
    fn align(&mut self) -> Result<usize, LzxError> {
        self.refill()?;
        let skip = match self.count % 16 {
            0 => 16,
            partial => partial,
        };
        self.skip(skip);
        let at = self.consumed();
        if at > self.data.len() {
            return Err(LzxError::Truncated(self.data.len()));
        }
        Ok(at)
    }
}

/// Turns the absolute addresses the compressor wrote after each E8 (x86 CALL) byte back into
/// relative ones, as positions within the chunk.
fn undo_e8(data: &mut [u8]) {
    if data.len() <= 10 {
        return;
    }
    let mut i = 0;
    while i < data.len() - 10 {
        if data[i] != 0xE8 {
            i += 1;
            continue;
        }
        let abs = i32::from_le_bytes([data[i + 1], data[i + 2], data[i + 3], data[i + 4]]);
        let pos = i as i32;
        if abs >= -pos && abs < E8_FILE_SIZE {
            let rel = if abs >= 0 { abs - pos } else { abs + E8_FILE_SIZE };
            data[i + 1..i + 5].copy_from_slice(&rel.to_le_bytes());
        }
        i += 5;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_slots_follow_the_format() {
        let bases: Vec<usize> = (0..12).map(position_base).collect();
        assert_eq!(bases, [0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48]);
        assert_eq!(position_base(SLOTS - 1) + (1 << extra_bits(SLOTS - 1)), 32768);
    }

    /// Bits written as LZX reads them: 16-bit little-endian words, high bit first.
    #[derive(Default)]
    struct BitWriter {
        bytes: Vec<u8>,
        word: u32,
        used: u32,
    }

    impl BitWriter {
        fn put(&mut self, value: u32, n: u32) {
            for i in (0..n).rev() {
                self.word = self.word << 1 | (value >> i) & 1;
                self.used += 1;
                if self.used == 16 {
                    self.bytes.extend_from_slice(&(self.word as u16).to_le_bytes());
                    (self.word, self.used) = (0, 0);
                }
            }
        }

        /// Pads to a word boundary (a whole word when already on one, as LZX does before a
        /// stored block's offsets).
        fn align(&mut self) {
            self.put(0, if self.used == 0 { 16 } else { 16 - self.used });
        }
    }

    /// A stored block of `data`: its header, the three recent offsets, the bytes and the
    /// padding byte after an odd count.
    fn stored(w: &mut BitWriter, data: &[u8]) {
        w.put(3, 3);
        w.put(0, 1);
        w.put(data.len() as u32, 16);
        w.align();
        for r in [1u32, 1, 1] {
            w.bytes.extend_from_slice(&r.to_le_bytes());
        }
        w.bytes.extend_from_slice(data);
        if data.len() % 2 == 1 {
            w.bytes.push(0);
        }
    }

    #[test]
    fn stored_blocks_follow_each_other_with_their_padding() {
        let mut w = BitWriter::default();
        stored(&mut w, b"hello");
        stored(&mut w, b"world!");
        stored(&mut w, b"E8");
        assert_eq!(decompress(&w.bytes, 13).unwrap(), b"helloworld!E8");
        // A stored block that claims more bytes than the input holds is an error.
        let mut short = BitWriter::default();
        stored(&mut short, b"hello");
        short.bytes.truncate(short.bytes.len() - 3);
        assert!(decompress(&short.bytes, 5).is_err());
    }

    #[test]
    fn e8_addresses_become_relative_again() {
        let mut data = vec![0u8; 32];
        data[3] = 0xE8;
        data[4..8].copy_from_slice(&103i32.to_le_bytes());
        undo_e8(&mut data);
        assert_eq!(i32::from_le_bytes(data[4..8].try_into().unwrap()), 100);
    }

    #[test]
    fn damaged_input_is_an_error_not_a_panic() {
        for input in [&[][..], &[0xFF; 3], &[0x00, 0x30, 0xFF, 0xFF, 0, 0, 0, 0]] {
            assert!(decompress(input, 32768).is_err());
        }
        // Noise of every length up to 4 KiB decodes to something or fails, never panics.
        let mut x = 0x2545_f491u32;
        for len in 0..4096 {
            // Half of them start as a verbatim block of the default size, to reach the trees.
            let header: &[u8] = if len % 2 == 0 { &[0x00, 0x30] } else { &[] };
            let noise: Vec<u8> = header
                .iter()
                .copied()
                .chain((0..len).map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                }))
                .collect();
            let _ = decompress(&noise, 32768);
        }
    }
}
