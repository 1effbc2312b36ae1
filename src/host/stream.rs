//! An output written front to back into a pipe: no seek, no temporary file. The container
//! writers address it by offset as they would a file; the sink holds what they write until
//! it is final and sends it in order:
//!
//! - until [`StreamSink::start`], everything is held (the writer lays out its metadata);
//! - after it, a write at offset `o` says that nothing before `o` will change any more, so
//!   every held byte before `o` is sent (unwritten gaps as zeros);
//! - a later write over bytes already sent must repeat them exactly (a writer rewriting its
//!   final metadata), which the sink checks against its copy of the metadata it sent.
//!
//! Memory: the metadata copy, plus what lies between the bytes sent and the latest write.

use std::collections::BTreeMap;
use std::io::{self, Write};

/// Bytes sent at once when a gap of zeros is filled.
const ZEROS: usize = 1 << 20;

/// The front-to-back output.
pub struct StreamSink {
    out: Box<dyn Write + Send>,
    /// Bytes sent so far.
    sent: u64,
    /// Whether writes release what lies before them.
    flowing: bool,
    /// Bytes written and not yet sent, by offset (disjoint, not adjacent to each other).
    held: BTreeMap<u64, Vec<u8>>,
    /// The metadata sent when the stream started: `[0, head.len())`.
    head: Vec<u8>,
    /// The output's length.
    len: u64,
}

impl std::fmt::Debug for StreamSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSink").field("sent", &self.sent).field("len", &self.len).finish_non_exhaustive()
    }
}

fn refuse(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, what)
}

impl StreamSink {
    /// A sink sending to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        StreamSink { out, sent: 0, flowing: false, held: BTreeMap::new(), head: Vec::new(), len: 0 }
    }

    /// The output's length so far.
    pub fn length(&self) -> u64 {
        self.len
    }

    /// From now on, writes release what lies before them; the bytes before `metadata_end`
    /// are final and are kept for reads and rewrites.
    pub fn start(&mut self, metadata_end: u64) -> io::Result<()> {
        let mut head = vec![0u8; metadata_end as usize];
        self.read(0, &mut head)?;
        self.flowing = true;
        self.release(metadata_end)?;
        self.head = head;
        Ok(())
    }

    /// Writes `data` at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset + data.len() as u64;
        if offset < self.sent {
            let upto = end.min(self.sent);
            let same = upto <= self.head.len() as u64
                && self.head[offset as usize..upto as usize] == data[..(upto - offset) as usize];
            if !same {
                return Err(refuse(format!("a stream cannot change bytes it has sent (at {offset:#x})")));
            }
            if end <= self.sent {
                return Ok(());
            }
            return self.write(self.sent, &data[(self.sent - offset) as usize..]);
        }
        self.hold(offset, data);
        self.len = self.len.max(end);
        if self.flowing {
            self.release(offset)?;
        }
        Ok(())
    }

    /// Keeps `data` at `offset` with what is held, merging the segments it touches.
    fn hold(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        let touching: Vec<u64> = self
            .held
            .range(..=end)
            .filter(|(at, bytes)| **at + bytes.len() as u64 >= offset)
            .map(|(at, _)| *at)
            .collect();
        let start = touching.first().map_or(offset, |&a| a.min(offset));
        let mut merged_end = end;
        let mut parts = Vec::new();
        for at in touching {
            if let Some(bytes) = self.held.remove(&at) {
                merged_end = merged_end.max(at + bytes.len() as u64);
                parts.push((at, bytes));
            }
        }
        let mut merged = vec![0u8; (merged_end - start) as usize];
        for (at, bytes) in parts {
            merged[(at - start) as usize..(at - start) as usize + bytes.len()].copy_from_slice(&bytes);
        }
        merged[(offset - start) as usize..(end - start) as usize].copy_from_slice(data);
        self.held.insert(start, merged);
    }

    /// Sends everything before `upto`.
    fn release(&mut self, upto: u64) -> io::Result<()> {
        while self.sent < upto {
            match self.held.first_key_value().map(|(at, b)| (*at, b.len() as u64)) {
                Some((at, n)) if at <= self.sent => {
                    let take = (at + n).min(upto) - self.sent;
                    let mut bytes = self.held.remove(&at).unwrap_or_default();
                    let from = (self.sent - at) as usize;
                    self.out.write_all(&bytes[from..from + take as usize])?;
                    self.sent += take;
                    if self.sent < at + n {
                        bytes.drain(..from + take as usize);
                        self.held.insert(self.sent, bytes);
                    }
                }
                next => {
                    let gap_end = next.map_or(upto, |(at, _)| at.min(upto));
                    self.send_zeros(gap_end - self.sent)?;
                }
            }
        }
        Ok(())
    }

    fn send_zeros(&mut self, n: u64) -> io::Result<()> {
        let zeros = vec![0u8; ZEROS.min(n as usize)];
        let mut left = n;
        while left > 0 {
            let k = left.min(zeros.len() as u64);
            self.out.write_all(&zeros[..k as usize])?;
            left -= k;
        }
        self.sent += n;
        Ok(())
    }

    /// Reads back bytes at `offset`: the metadata sent, or what is still held (unwritten
    /// bytes read as zeros).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        if offset < self.sent && end > self.head.len() as u64 {
            return Err(refuse(format!("a stream cannot read back bytes it has sent (at {offset:#x})")));
        }
        buf.fill(0);
        if offset < self.sent {
            let upto = end.min(self.sent);
            buf[..(upto - offset) as usize].copy_from_slice(&self.head[offset as usize..upto as usize]);
        }
        for (at, bytes) in self.held.range(..end) {
            let (a, z) = ((*at).max(offset), (at + bytes.len() as u64).min(end));
            if a < z {
                buf[(a - offset) as usize..(z - offset) as usize]
                    .copy_from_slice(&bytes[(a - at) as usize..(z - at) as usize]);
            }
        }
        Ok(())
    }

    /// Sets the output's length (never below what was sent).
    pub fn set_len(&mut self, len: u64) -> io::Result<()> {
        if len < self.sent {
            return Err(refuse(format!("a stream cannot be cut to {len:#x} after sending {:#x} bytes", self.sent)));
        }
        let beyond: Vec<u64> = self.held.range(len..).map(|(at, _)| *at).collect();
        for at in beyond {
            self.held.remove(&at);
        }
        if let Some((at, bytes)) = self.held.iter_mut().next_back() {
            bytes.truncate(len.saturating_sub(*at).min(bytes.len() as u64) as usize);
        }
        self.len = len;
        Ok(())
    }

    /// Sends the rest, up to the output's length, and flushes.
    pub fn finish(&mut self) -> io::Result<()> {
        self.flowing = true;
        let len = self.len;
        self.release(len)?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A `Write` whose bytes the test can read afterwards.
    #[derive(Clone, Default)]
    struct Collected(Arc<Mutex<Vec<u8>>>);

    impl Write for Collected {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_come_out_in_order_as_a_file_would_hold_them() {
        let out = Collected::default();
        let mut s = StreamSink::new(Box::new(out.clone()));
        s.write(0, b"HEADER--").unwrap();
        s.write(100, b"trailer").unwrap();
        s.write(0, b"header").unwrap();
        let mut back = [0u8; 8];
        s.read(0, &mut back).unwrap();
        assert_eq!(&back, b"header--");
        s.start(8).unwrap();
        s.write(8, b"ab").unwrap();
        s.write(20, b"cd").unwrap();
        assert_eq!(out.0.lock().unwrap().len(), 20, "what lies before the latest write is sent");
        s.write(2, b"ad").unwrap();
        assert!(s.write(0, b"x").is_err(), "sent bytes cannot change");
        assert!(s.read(9, &mut [0u8; 2]).is_err(), "sent data cannot be read back");
        s.write(100, b"TRAILER").unwrap();
        s.set_len(107).unwrap();
        s.finish().unwrap();
        let got = out.0.lock().unwrap().clone();
        let mut want = vec![0u8; 107];
        want[..8].copy_from_slice(b"header--");
        want[8..10].copy_from_slice(b"ab");
        want[20..22].copy_from_slice(b"cd");
        want[100..107].copy_from_slice(b"TRAILER");
        assert_eq!(got, want);
    }
}
