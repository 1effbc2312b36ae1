//! Our own regf engine: a hive read and edited at the cell level.
//!
//! nt-hive (GPL, a dev-dependency only) reads hives but exposes no cell offsets and asserts on
//! some corrupt cells; an editor needs both offsets and errors. Every offset read from the
//! hive is bounds-checked against its hive bin before use. Modules: [`base`] (base block),
//! [`cells`] (hive bins and the cell allocator), [`keys`] (key nodes, values, lists, security,
//! read side), [`edit`] (set, create, delete), [`log`] (transaction log replay),
//! [`regfile`] (.reg import and export), [`value`] and [`names`] (data and names).

pub mod base;
pub mod cells;
pub mod edit;
pub mod keys;
pub mod log;
pub mod marvin;
pub mod names;
pub mod regfile;
pub mod value;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, Space};

pub use keys::{KeyNode, ValueKey};

/// Largest hive file vhdkit loads (Windows limits a hive to 2 GiB).
pub const MAX_HIVE: u64 = 2 << 30;

/// File offset of the hive bins data: cell offsets count from here.
pub const BINS_START: usize = 4096;

/// A hive in memory.
#[derive(Clone, Debug)]
pub struct Hive {
    name: PathBuf,
    data: Vec<u8>,
    /// Hive bins: (offset, size), offsets relative to [`BINS_START`].
    bins: Vec<(u32, u32)>,
    /// Free cells: offset -> size.
    free: BTreeMap<u32, u32>,
    /// Why the hive cannot be edited (a cell walk failed), if so.
    read_only: Option<String>,
    /// The time edits stamp (a FILETIME); `None`: the current time.
    clock: Option<u64>,
}

impl Hive {
    /// Parses a hive file's bytes; `name` is used in error messages.
    pub fn parse(data: Vec<u8>, name: &Path) -> Result<Self> {
        let base = base::BaseBlock::parse(&data, name)?;
        base.require_readable(name)?;
        let bins_size = base.hive_bins_size as usize;
        if BINS_START + bins_size > data.len() {
            return Err(Error::corrupt(
                name,
                "base block hive bins data size",
                Space::Hive,
                0x28,
                format!(
                    "{bins_size} bytes of hive bins, but the file has only {} after the base block (truncated hive)",
                    data.len().saturating_sub(BINS_START)
                ),
            ));
        }
        let mut hive = Hive {
            name: name.to_path_buf(),
            data,
            bins: Vec::new(),
            free: BTreeMap::new(),
            read_only: None,
            clock: None,
        };
        hive.data.truncate(BINS_START + bins_size);
        hive.scan_bins()?;
        Ok(hive)
    }

    /// Reads a hive file (a regular file, locked shared while it is read).
    pub fn open(path: &Path) -> Result<Self> {
        let data = crate::host::read_limited(path, MAX_HIVE, "a hive", crate::host::LockWait::Fail)?;
        Hive::parse(data, path)
    }

    /// The name errors use.
    pub fn name(&self) -> &Path {
        &self.name
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The decoded base block.
    pub fn base(&self) -> base::BaseBlock {
        base::BaseBlock::parse(&self.data, &self.name).unwrap_or_default()
    }

    /// A corrupt-structure error at cell offset `off`.
    pub(crate) fn corrupt(&self, structure: impl Into<String>, off: u32, problem: impl Into<String>) -> Error {
        Error::corrupt(&self.name, structure, Space::Hive, BINS_START as u64 + off as u64, problem)
    }
}
