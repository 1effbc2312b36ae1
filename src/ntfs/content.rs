//! A file's bytes read out of the volume, as a stream (`Read + Seek`) that holds at most one
//! compression unit or chunk in memory whatever the file's size:
//!
//! - resident data, read from its FILE record;
//! - non-resident data through its runs: sparse runs and bytes past the valid data length
//!   read as zeros;
//! - LZNT1-compressed data (NTFS compression), one compression unit at a time;
//! - WOF-compressed files (Windows' "CompactOS"): the unnamed stream is sparse and the bytes
//!   live in the `WofCompressedData` stream as independently compressed chunks: XPRESS through
//!   `xpress-huffman`, LZX by [`crate::ntfs::lzx`] (no crate decodes its WIM variant).
//!
//! Encrypted (EFS) streams are refused: their bytes are ciphertext.

use std::io::{self, Read, Seek, SeekFrom};

use serde::Serialize;

use crate::bytes::{le32, le64};
use crate::error::{Error, Result, Space};
use crate::ntfs::NtfsIndex;
use crate::ntfs::file::{FileEntry, Stream};
use crate::ntfs::record::{self, AttributeBody, attr_type};
use crate::ntfs::runs::Run;
use crate::vhd::device::BlockDevice;

/// The named stream WOF keeps a compressed file's bytes in.
pub const WOF_STREAM: &str = "WofCompressedData";
/// Reparse tag of a WOF-compressed file.
const REPARSE_TAG_WOF: u32 = 0x8000_0017;
/// WOF provider of files compressed in place (the other, 1, backs files by a WIM archive).
const WOF_PROVIDER_FILE: u32 = 2;
/// Largest LZNT1 compression unit accepted (64 clusters of 64 KiB): bounds the buffer an
/// untrusted attribute header can ask for.
const MAX_UNIT: u64 = 4 << 20;

/// How a WOF-compressed file's chunks are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum WofAlgorithm {
    /// XPRESS (Huffman) in 4 KiB chunks.
    Xpress4k,
    /// LZX in 32 KiB chunks.
    Lzx32k,
    /// XPRESS (Huffman) in 8 KiB chunks.
    Xpress8k,
    /// XPRESS (Huffman) in 16 KiB chunks.
    Xpress16k,
}

impl WofAlgorithm {
    /// The algorithm of a WOF reparse point's code.
    fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => WofAlgorithm::Xpress4k,
            1 => WofAlgorithm::Lzx32k,
            2 => WofAlgorithm::Xpress8k,
            3 => WofAlgorithm::Xpress16k,
            _ => return None,
        })
    }

    /// Uncompressed bytes per chunk.
    fn chunk_size(self) -> u64 {
        match self {
            WofAlgorithm::Xpress4k => 4 << 10,
            WofAlgorithm::Xpress8k => 8 << 10,
            WofAlgorithm::Xpress16k => 16 << 10,
            WofAlgorithm::Lzx32k => 32 << 10,
        }
    }
}

/// A file's times, as Windows FILETIMEs (100 ns units since 1601-01-01 UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FileTimes {
    /// When the file was created.
    pub created: u64,
    /// When its data was last written.
    pub modified: u64,
    /// When it was last read.
    pub accessed: u64,
}

/// FILETIME of the Unix epoch.
const UNIX_EPOCH_FILETIME: u64 = 116_444_736_000_000_000;

impl FileTimes {
    /// A FILETIME as a system time, where the host can represent it.
    pub fn system_time(filetime: u64) -> Option<std::time::SystemTime> {
        let epoch = std::time::UNIX_EPOCH;
        if filetime >= UNIX_EPOCH_FILETIME {
            let d = filetime - UNIX_EPOCH_FILETIME;
            epoch.checked_add(std::time::Duration::new(d / 10_000_000, (d % 10_000_000) as u32 * 100))
        } else {
            let d = UNIX_EPOCH_FILETIME - filetime;
            epoch.checked_sub(std::time::Duration::new(d / 10_000_000, (d % 10_000_000) as u32 * 100))
        }
    }
}

/// How a stream's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Storage {
    /// In the FILE record.
    Resident,
    /// In clusters, maybe with sparse runs.
    Clusters,
    /// NTFS compression: LZNT1 units of `unit` bytes.
    Lznt1 {
        /// Bytes per compression unit.
        unit: u64,
    },
    /// Windows Overlay Filter compression, chunks in the `WofCompressedData` stream.
    Wof {
        /// How its chunks are compressed.
        algorithm: WofAlgorithm,
    },
}

/// Where a stream's bytes come from, and the unit or chunk decoded last.
enum Source<'a, V: BlockDevice + Clone> {
    Resident(Vec<u8>),
    Runs { runs: &'a [Run], initialized: u64 },
    Lznt1 { runs: &'a [Run], initialized: u64, unit: u64, cached: Option<(u64, Vec<u8>)> },
    Wof { algorithm: WofAlgorithm, table: WofTable, data: Box<StreamReader<'a, V>>, cached: Option<(u64, Vec<u8>)> },
}

/// The chunk table at the start of `WofCompressedData`: one offset per chunk but the first,
/// counted from the end of the table.
struct WofTable {
    chunks: u64,
    entry_size: u64,
}

impl WofTable {
    fn bytes(&self) -> u64 {
        (self.chunks - 1) * self.entry_size
    }
}

/// A stream of a file, readable and seekable. Reads past its end return nothing.
pub struct StreamReader<'a, V: BlockDevice + Clone> {
    volume: V,
    partition: u32,
    cluster_size: u64,
    record: u64,
    len: u64,
    pos: u64,
    source: Source<'a, V>,
}

impl NtfsIndex {
    /// Opens `file`'s data stream `name` (`""` for the unnamed one) on `volume`, this index's
    /// partition. A WOF-compressed file's unnamed stream reads as its uncompressed bytes.
    pub fn open_stream<'a, V: BlockDevice + Clone>(
        &'a self,
        volume: V,
        file: &'a FileEntry,
        name: &str,
    ) -> Result<StreamReader<'a, V>> {
        let stream = data_stream(file, name);
        if name.is_empty()
            && let Some(algorithm) = self.wof_algorithm(&volume, file)?
        {
            return self.open_wof(volume, file, stream, algorithm);
        }
        let stream = stream.ok_or_else(|| {
            let shown =
                if name.is_empty() { "an unnamed data stream".to_string() } else { format!("a stream {name:?}") };
            Error::unsupported(volume.source(), format!("MFT record {} has no {shown}", file.record))
        })?;
        self.open_plain(volume, file, stream)
    }

    /// How `file`'s stream `name` is stored (for listings), without reading its data.
    pub fn storage(&self, volume: &dyn BlockDevice, file: &FileEntry, name: &str) -> Result<Storage> {
        if name.is_empty()
            && let Some(algorithm) = self.wof_algorithm(volume, file)?
        {
            return Ok(Storage::Wof { algorithm });
        }
        Ok(match data_stream(file, name) {
            Some(s) if s.resident => Storage::Resident,
            Some(s) if is_lznt1(s) => Storage::Lznt1 { unit: self.compression_unit_bytes(s).unwrap_or(0) },
            _ => Storage::Clusters,
        })
    }

    fn open_plain<'a, V: BlockDevice + Clone>(
        &'a self,
        volume: V,
        file: &FileEntry,
        stream: &'a Stream,
    ) -> Result<StreamReader<'a, V>> {
        let refuse =
            |why: String| Err(Error::unsupported(volume.source(), format!("MFT record {}: {why}", file.record)));
        if stream.flags & record::ATTR_ENCRYPTED != 0 {
            return refuse("the stream is encrypted (EFS): its bytes are ciphertext, not decrypted".into());
        }
        let source = if stream.resident {
            let value = self.resident_value(&volume, stream)?;
            if value.len() as u64 != stream.data_size {
                return refuse(format!("the resident value holds {} bytes, not {}", value.len(), stream.data_size));
            }
            Source::Resident(value)
        } else if is_lznt1(stream) {
            let Some(unit) = self.compression_unit_bytes(stream) else {
                return refuse(format!(
                    "a compression unit of 2^{} clusters is beyond what NTFS writes",
                    stream.compression_unit
                ));
            };
            Source::Lznt1 { runs: &stream.runs, initialized: stream.initialized_size, unit, cached: None }
        } else if stream.flags & record::ATTR_COMPRESSED != 0 {
            return refuse(format!("compression method {:#x} is not LZNT1: not decompressed", stream.flags & 0xFF));
        } else {
            Source::Runs { runs: &stream.runs, initialized: stream.initialized_size }
        };
        Ok(StreamReader {
            partition: self.partition,
            cluster_size: self.cluster_size(),
            record: file.record,
            len: stream.data_size,
            pos: 0,
            source,
            volume,
        })
    }

    /// A WOF-compressed file's bytes: the size is the unnamed stream's, the chunks are in
    /// [`WOF_STREAM`].
    fn open_wof<'a, V: BlockDevice + Clone>(
        &'a self,
        volume: V,
        file: &'a FileEntry,
        unnamed: Option<&Stream>,
        algorithm: WofAlgorithm,
    ) -> Result<StreamReader<'a, V>> {
        let corrupt = |problem: String| {
            Error::corrupt(
                volume.source(),
                format!("MFT record {} {WOF_STREAM}", file.record),
                self.space(),
                0,
                problem,
            )
        };
        let len = unnamed.map_or(0, |s| s.data_size);
        let data_stream = data_stream(file, WOF_STREAM)
            .ok_or_else(|| corrupt(format!("a WOF-compressed file without its {WOF_STREAM} stream")))?;
        let data = self.open_plain(volume.clone(), file, data_stream)?;
        let chunk = algorithm.chunk_size();
        let table =
            WofTable { chunks: len.div_ceil(chunk).max(1), entry_size: if len > u32::MAX as u64 { 8 } else { 4 } };
        if table.bytes() > data.len {
            return Err(corrupt(format!("its chunk table needs {} bytes, the stream has {}", table.bytes(), data.len)));
        }
        Ok(StreamReader {
            partition: self.partition,
            cluster_size: self.cluster_size(),
            record: file.record,
            len,
            pos: 0,
            source: Source::Wof { algorithm, table, data: Box::new(data), cached: None },
            volume,
        })
    }

    /// Bytes per LZNT1 compression unit of `s`, when sane: at least a cluster and at most
    /// [`MAX_UNIT`].
    fn compression_unit_bytes(&self, s: &Stream) -> Option<u64> {
        self.cluster_size()
            .checked_shl(s.compression_unit as u32)
            .filter(|u| (self.cluster_size()..=MAX_UNIT).contains(u))
    }

    /// The WOF algorithm of a file whose reparse point says it is WOF-compressed.
    fn wof_algorithm(&self, volume: &dyn BlockDevice, file: &FileEntry) -> Result<Option<WofAlgorithm>> {
        let Some(reparse) = file.streams.iter().find(|s| s.ty == attr_type::REPARSE_POINT) else { return Ok(None) };
        if !reparse.resident {
            // WOF's reparse data is 24 bytes, always resident: a non-resident one is not WOF,
            // unless its file also has WOF's stream, which then cannot be read.
            return match data_stream(file, WOF_STREAM) {
                Some(_) => Err(Error::unsupported(
                    volume.source(),
                    format!("MFT record {}: a WOF file whose reparse point is not resident", file.record),
                )),
                None => Ok(None),
            };
        }
        let value = self.resident_value(volume, reparse)?;
        if value.len() < 8 || le32(&value, 0) != REPARSE_TAG_WOF {
            return Ok(None);
        }
        let refuse = |why: &str| Err(Error::unsupported(volume.source(), format!("MFT record {}: {why}", file.record)));
        if value.len() < 24 {
            return refuse("a WOF reparse point too short to name its algorithm");
        }
        if le32(&value, 12) != WOF_PROVIDER_FILE {
            return refuse("a WOF file backed by a WIM archive (WIMBoot): its bytes are not in this volume");
        }
        match WofAlgorithm::from_code(le32(&value, 20)) {
            Some(a) => Ok(Some(a)),
            None => refuse(&format!("WOF algorithm {} is unknown: not decompressed", le32(&value, 20))),
        }
    }

    /// The value of resident attribute `stream`, read from its record.
    fn resident_value(&self, volume: &dyn BlockDevice, stream: &Stream) -> Result<Vec<u8>> {
        self.resident_attribute(volume, stream.record, stream.ty, &stream.name)
    }

    /// The value of the resident attribute of type `ty` named `name` in record `number`.
    fn resident_attribute(&self, volume: &dyn BlockDevice, number: u64, ty: u32, name: &str) -> Result<Vec<u8>> {
        let corrupt = |at: usize, problem: String| {
            let offset = self.layout.record_offset(number).unwrap_or(0) + at as u64;
            Error::corrupt(volume.source(), format!("MFT record {number}"), self.space(), offset, problem)
        };
        let mut bytes = self.layout.read_record_bytes(volume, number).map_err(|e| corrupt(e.at, e.problem))?;
        record::apply_fixups(&mut bytes).map_err(|e| corrupt(e.at, e.problem))?;
        let parsed = record::parse(&bytes, self.total_clusters()).map_err(|e| corrupt(e.at, e.problem))?;
        parsed
            .attributes
            .iter()
            .find_map(|a| match a.body {
                AttributeBody::Resident { value } if a.ty == ty && a.name == name => Some(value.to_vec()),
                _ => None,
            })
            .ok_or_else(|| corrupt(0, format!("no resident attribute {ty:#x} {name:?}")))
    }

    /// When `file` was created, last written and last read, from its
    /// `$STANDARD_INFORMATION`.
    pub fn times(&self, volume: &dyn BlockDevice, file: &FileEntry) -> Result<FileTimes> {
        let si = self.resident_attribute(volume, file.record, attr_type::STANDARD_INFORMATION, "")?;
        if si.len() < 32 {
            return Err(Error::corrupt(
                volume.source(),
                format!("MFT record {} $STANDARD_INFORMATION", file.record),
                self.space(),
                self.layout.record_offset(file.record).unwrap_or(0),
                format!("{} bytes, too short for its times", si.len()),
            ));
        }
        Ok(FileTimes { created: le64(&si, 0), modified: le64(&si, 8), accessed: le64(&si, 24) })
    }

    fn space(&self) -> Space {
        Space::Partition(self.partition)
    }
}

/// `file`'s data stream `name`, matched exactly or else ignoring case (as NTFS does).
fn data_stream<'f>(file: &'f FileEntry, name: &str) -> Option<&'f Stream> {
    let data = || file.streams.iter().filter(|s| s.is_data());
    data().find(|s| *s.name == *name).or_else(|| data().find(|s| s.name.eq_ignore_ascii_case(name)))
}

/// Whether a non-resident stream is compressed with LZNT1 (method 2, with a unit).
fn is_lznt1(s: &Stream) -> bool {
    !s.resident && s.flags & record::ATTR_COMPRESSED != 0 && s.compression_unit > 0
}

impl<V: BlockDevice + Clone> StreamReader<'_, V> {
    /// The stream's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the stream has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fills `buf` with the stream's bytes at `offset` (which must lie inside it).
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > self.len) {
            return Err(Error::internal(format!("stream read past its end at {offset}")));
        }
        match &mut self.source {
            Source::Resident(v) => {
                buf.copy_from_slice(&v[offset as usize..offset as usize + buf.len()]);
                Ok(())
            }
            Source::Runs { runs, initialized } => {
                let (runs, initialized) = (*runs, *initialized);
                self.read_runs(runs, initialized, offset, buf)
            }
            Source::Lznt1 { .. } => self.read_units(offset, buf),
            Source::Wof { .. } => self.read_chunks(offset, buf),
        }
    }

    fn corrupt(&self, offset: u64, problem: String) -> Error {
        Error::corrupt(
            self.volume.source(),
            format!("MFT record {} data runs", self.record),
            Space::Partition(self.partition),
            offset,
            problem,
        )
    }

    /// Bytes at stream `offset` through `runs`: sparse runs and bytes past `initialized` are
    /// zeros.
    fn read_runs(&self, runs: &[Run], initialized: u64, offset: u64, buf: &mut [u8]) -> Result<()> {
        let cs = self.cluster_size;
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let out = &mut buf[done..];
            if at >= initialized {
                out.fill(0);
                return Ok(());
            }
            let vcn = at / cs;
            let i = runs.partition_point(|r| r.vcn + r.length <= vcn);
            let run = runs
                .get(i)
                .filter(|r| r.vcn <= vcn)
                .ok_or_else(|| self.corrupt(0, format!("no run maps VCN {vcn} of a stream of {} bytes", self.len)))?;
            let run_end = (run.vcn + run.length).saturating_mul(cs);
            let n = (run_end.min(initialized) - at).min(out.len() as u64) as usize;
            match run.lcn {
                Some(lcn) => self.volume.read_at(lcn * cs + (at - run.vcn * cs), &mut out[..n])?,
                None => out[..n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    /// Bytes of an LZNT1-compressed stream, unit by unit.
    fn read_units(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let Source::Lznt1 { unit, .. } = self.source else { return Err(Error::internal("not an LZNT1 stream")) };
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let (index, within) = (at / unit, (at % unit) as usize);
            let bytes = self.unit(index)?;
            let n = (bytes.len() - within).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&bytes[within..within + n]);
            done += n;
        }
        Ok(())
    }

    /// Compression unit `index`, decoded (and kept for the next read).
    fn unit(&mut self, index: u64) -> Result<&[u8]> {
        let Source::Lznt1 { runs, initialized, unit, cached } = &mut self.source else {
            return Err(Error::internal("not an LZNT1 stream"));
        };
        if cached.as_ref().is_none_or(|(i, _)| *i != index) {
            let (runs, initialized, unit) = (*runs, *initialized, *unit);
            let decoded = self.decode_unit(runs, initialized, unit, index)?;
            let Source::Lznt1 { cached, .. } = &mut self.source else { return Err(Error::internal("not LZNT1")) };
            *cached = Some((index, decoded));
        }
        let Source::Lznt1 { cached: Some((_, bytes)), .. } = &self.source else {
            return Err(Error::internal("an LZNT1 unit was not kept"));
        };
        Ok(bytes)
    }

    /// Decodes unit `index`: all clusters present means stored as is, none means zeros, and
    /// some means LZNT1 data in those clusters.
    fn decode_unit(&self, runs: &[Run], initialized: u64, unit: u64, index: u64) -> Result<Vec<u8>> {
        let cs = self.cluster_size;
        let clusters = unit / cs;
        let (first, last) = (index * clusters, (index + 1) * clusters);
        let mut present = 0;
        for r in runs.iter().filter(|r| r.lcn.is_some() && r.vcn < last && r.vcn + r.length > first) {
            present += (r.vcn + r.length).min(last) - r.vcn.max(first);
        }
        // Runs that overlap (a damaged attribute) cannot make a unit more than whole.
        let present = present.min(clusters);
        let start = index * unit;
        let mut out = vec![0u8; unit as usize];
        if present == clusters {
            let end = (start + unit).min(self.len);
            self.read_runs(runs, initialized, start, &mut out[..(end - start) as usize])?;
        } else if present > 0 {
            let mut packed = vec![0u8; (present * cs) as usize];
            self.read_runs(runs, u64::MAX, start, &mut packed)?;
            let mut decoded = Vec::with_capacity(unit as usize);
            lznt1::decompress(&packed, &mut decoded)
                .map_err(|e| self.corrupt(start, format!("compression unit {index} does not decode as LZNT1: {e}")))?;
            if decoded.len() as u64 > unit {
                return Err(self.corrupt(start, format!("compression unit {index} decodes to {} bytes", decoded.len())));
            }
            out[..decoded.len()].copy_from_slice(&decoded);
        }
        if initialized < start + unit {
            out[initialized.saturating_sub(start) as usize..].fill(0);
        }
        Ok(out)
    }

    /// Bytes of a WOF-compressed file, chunk by chunk.
    fn read_chunks(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let Source::Wof { algorithm, .. } = self.source else { return Err(Error::internal("not a WOF stream")) };
        let chunk = algorithm.chunk_size();
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let (index, within) = (at / chunk, (at % chunk) as usize);
            let bytes = self.chunk(index)?;
            let n = (bytes.len() - within).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&bytes[within..within + n]);
            done += n;
        }
        Ok(())
    }

    /// Chunk `index`, decoded (and kept for the next read).
    fn chunk(&mut self, index: u64) -> Result<&[u8]> {
        let len = self.len;
        let record = self.record;
        let Source::Wof { algorithm, table, data, cached } = &mut self.source else {
            return Err(Error::internal("not a WOF stream"));
        };
        if cached.as_ref().is_none_or(|(i, _)| *i != index) {
            let size = algorithm.chunk_size().min(len - index * algorithm.chunk_size());
            let (start, end) = chunk_bounds(data, table, index)?;
            let (path, partition) = (data.volume.source().to_path_buf(), data.partition);
            let corrupt = |problem: String| {
                Error::corrupt(
                    &path,
                    format!("MFT record {record} {WOF_STREAM}"),
                    Space::Partition(partition),
                    0,
                    problem,
                )
            };
            if end < start || end - start > size {
                return Err(corrupt(format!("chunk {index} spans {start}..{end}, more than its {size} bytes")));
            }
            let mut packed = vec![0u8; (end - start) as usize];
            data.read_at(start, &mut packed)?;
            let decoded = if packed.len() as u64 == size {
                packed
            } else {
                match algorithm {
                    WofAlgorithm::Lzx32k => crate::ntfs::lzx::decompress(&packed, size as usize)
                        .map_err(|e| corrupt(format!("chunk {index} does not decode as LZX: {e}")))?,
                    _ => {
                        // The decoder stops when its input ends, even with the last symbols
                        // still in its bit buffer: zero padding lets it finish the chunk (it
                        // stops at the chunk's size), as Windows' decoder reads zeros there.
                        packed.extend_from_slice(&[0; 8]);
                        xpress_huffman::decompress(&packed, size as usize)
                            .map_err(|e| corrupt(format!("chunk {index} does not decode as XPRESS: {e}")))?
                    }
                }
            };
            if decoded.len() as u64 != size {
                return Err(corrupt(format!("chunk {index} decodes to {} bytes, not {size}", decoded.len())));
            }
            *cached = Some((index, decoded));
        }
        let Source::Wof { cached: Some((_, bytes)), .. } = &self.source else {
            return Err(Error::internal("a WOF chunk was not kept"));
        };
        Ok(bytes)
    }
}

/// Where chunk `index`'s compressed bytes lie in the WOF data stream.
fn chunk_bounds<V: BlockDevice + Clone>(
    data: &mut StreamReader<'_, V>,
    table: &WofTable,
    index: u64,
) -> Result<(u64, u64)> {
    let mut entry = |i: u64| -> Result<u64> {
        let mut raw = [0u8; 8];
        let n = table.entry_size as usize;
        data.read_at(i * table.entry_size, &mut raw[..n])?;
        Ok(if n == 8 { le64(&raw, 0) } else { le32(&raw, 0) as u64 })
    };
    let start = if index == 0 { 0 } else { entry(index - 1)? };
    let end = if index + 1 == table.chunks { data.len - table.bytes() } else { entry(index)? };
    let bounds = table.bytes().checked_add(start).zip(table.bytes().checked_add(end));
    bounds.filter(|&(_, e)| e <= data.len).ok_or_else(|| {
        data.corrupt(0, format!("WOF chunk {index} lies at {start}..{end}, outside its stream of {} bytes", data.len))
    })
}

impl<V: BlockDevice + Clone> Read for StreamReader<'_, V> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.read_at(self.pos, &mut buf[..n]).map_err(io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<V: BlockDevice + Clone> Seek for StreamReader<'_, V> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos =
            target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the stream's start"))?;
        Ok(self.pos)
    }
}
