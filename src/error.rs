//! The one error type of vhdkit.
//!
//! Every failure names the file it happened in, the on-disk structure that was being read and
//! the offset of that structure, so a user with a broken image knows where to look. The offset
//! is qualified by the address space it lives in: the image file itself, the virtual disk inside
//! it, or one partition of that disk.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The address space an offset in an error refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    /// A byte offset in the image file (VHD footer, header, BAT, block bitmaps).
    File,
    /// A byte offset in the virtual disk (MBR, GPT, partition contents).
    Disk,
    /// A byte offset inside partition N (NTFS structures, hive cells in a file).
    Partition(u32),
    /// A byte offset inside a registry hive file.
    Hive,
}

impl fmt::Display for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Space::File => f.write_str("file offset"),
            Space::Disk => f.write_str("disk offset"),
            Space::Partition(n) => write!(f, "partition {n} offset"),
            Space::Hive => f.write_str("hive offset"),
        }
    }
}

/// What kind of failure an [`Error`] is: stable, for callers to match on.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The operating system failed to open, read or write a file.
    Io,
    /// The file is not what it was taken for (another format, or not a disk image at all).
    InvalidFormat,
    /// The request is valid but outside what vhdkit or this image supports.
    Unsupported,
    /// A structure holds a value that cannot be right.
    Corrupt,
    /// The request collides with the state of the files: another process holds them, an
    /// output would replace an input, an interrupted write or an untrusted volume is in the way.
    Conflict,
    /// The caller asked for something inconsistent.
    Usage,
    /// What the caller named is not in the image: a partition, a file, a hive, a key.
    NotFound,
    /// vhdkit broke one of its own rules: a bug.
    Internal,
}

/// What the caller can ask for to get past a refusal, in the library's own terms (each
/// front end names it its own way).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remedy {
    /// Set the `force` option: go on although Windows may not cope with the result.
    Force,
    /// Set the `merge` option: write a standalone image of the whole chain.
    Merge,
    /// Name the partition to use.
    ChoosePartition,
}

/// Where in a file an error happened: the on-disk structure and its offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location<'a> {
    /// The structure being read (`"VHD footer"`, `"BAT entry 17"`...).
    pub structure: &'a str,
    /// The address space of `offset`.
    pub space: Space,
    /// Byte offset of the structure.
    pub offset: u64,
}

/// A failure while reading or writing an image. [`Error::kind`] says what kind it is,
/// [`Error::file`] and [`Error::location`] where; the message names all three.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A structure holds a value that cannot be right.
    #[error("{}: {structure} at {space} {offset:#x}: {problem}", file.display())]
    Corrupt {
        /// The file holding the structure.
        file: PathBuf,
        /// The structure, in words (`"VHD footer"`, `"BAT entry 17"`).
        structure: String,
        /// The address space of `offset`.
        space: Space,
        /// Where the structure (or its bad field) is.
        offset: u64,
        /// What is wrong, with the expected and actual values.
        problem: String,
    },
    /// The operating system failed a read or write.
    #[error("{}: {action} at {space} {offset:#x}: {source}", file.display())]
    Io {
        /// The file read or written.
        file: PathBuf,
        /// What was being done (`"read"`, `"write"`, `"fsync"`).
        action: &'static str,
        /// The address space of `offset`.
        space: Space,
        /// Where.
        offset: u64,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A file could not be opened or created.
    #[error("{}: cannot {action}: {source}", file.display())]
    Open {
        /// The file.
        file: PathBuf,
        /// What was being done (`"open"`, `"create"`, `"lock"`).
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A differencing disk's parent could not be found under any name its header gives.
    #[error("{}: parent disk not found; tried {search}", file.display())]
    ParentNotFound {
        /// The differencing image.
        file: PathBuf,
        /// Where the parent was looked for.
        search: ParentSearch,
    },
    /// The request is valid but outside what this image or tool supports.
    #[error("{}: {problem}", file.display())]
    Unsupported {
        /// The file concerned.
        file: PathBuf,
        /// What is not supported, and why.
        problem: String,
    },
    /// The caller asked for something inconsistent.
    #[error("{0}")]
    Usage(String),
    /// A registry key whose root names none of the hives found by name (`HKLM\SYSTEM`,
    /// `HKU\<user>`...): the hive must be named by its path instead.
    #[error("{key}: {known}; name any other hive by its path in the volume")]
    KeyWithoutHive {
        /// The key as given.
        key: String,
        /// The roots that are known, in words.
        known: &'static str,
    },
    /// What the caller named is not in the image (the text names the image and the thing).
    #[error("{0}")]
    NotFound(String),
    /// The file is another format, named by its magic numbers (VHDX, qcow, a compressed
    /// file...).
    #[error("{}: is {what}, not a VHD or a raw disk", file.display())]
    Format {
        /// The file.
        file: PathBuf,
        /// The format it is, in words.
        what: String,
    },
    /// The file holds no VHD footer, partition table or volume boot sector.
    #[error("{}: not a disk image: no VHD footer, partition table or volume boot sector", file.display())]
    NotADisk {
        /// The file.
        file: PathBuf,
    },
    /// An NTFS volume Windows would not trust to be as it looks on disk.
    #[error("{}: partition {partition}: the NTFS volume {why}; boot Windows and shut it down fully first", file.display())]
    UntrustedVolume {
        /// The image.
        file: PathBuf,
        /// The partition holding the volume.
        partition: u32,
        /// Its state, in words (hibernated, dirty).
        why: String,
    },
    /// The request was refused; `remedy` says what would get past it.
    #[error("{}: {problem}", file.display())]
    Refused {
        /// The file concerned.
        file: PathBuf,
        /// Why the request was refused.
        problem: String,
        /// What would get past the refusal.
        remedy: Remedy,
    },
    /// vhdkit broke one of its own rules: a bug to report.
    #[error("internal error (please report): {0}")]
    Internal(String),
    /// Another process holds a lock on the file.
    #[error("{}: in use by another vhdkit process", file.display())]
    InUse {
        /// The locked file.
        file: PathBuf,
    },
    /// The request collides with what is on disk (an output that is an input, a read-only file).
    #[error("{}: {problem}", file.display())]
    Conflict {
        /// The file on disk.
        file: PathBuf,
        /// The collision, in words.
        problem: String,
    },
    /// An output file exists and the caller did not allow replacing it.
    #[error("{}: exists; refusing to replace it", file.display())]
    OutputExists {
        /// The existing file.
        file: PathBuf,
    },
    /// An image has the journal of an interrupted write: read-only commands do not look at a
    /// half-written image, and only a writer rolls it back.
    #[error("{}: a write was interrupted ({} exists); roll it back first", file.display(), journal.display())]
    JournalPending {
        /// The image.
        file: PathBuf,
        /// Its journal.
        journal: PathBuf,
    },
    /// A journal beside an image that cannot be proved to belong to it; it is never applied.
    #[error("{}: refusing to apply this journal: {reason}", journal.display())]
    JournalRefused {
        /// The journal.
        journal: PathBuf,
        /// Why it cannot be proved to belong to its image.
        reason: String,
    },
}

/// Where a differencing disk's parent was looked for, when it was not found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParentSearch {
    /// Every path tried, in order, with why it is not the parent.
    pub tried: Vec<String>,
    /// Disks nearby with the parent's identity that the child does not name: the parent was
    /// moved or renamed, and relinking the child to one of them would help.
    pub same_identity: Vec<PathBuf>,
}

impl std::fmt::Display for ParentSearch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let found =
            self.same_identity.iter().map(|p| format!("a disk with the parent's identity is at {}", p.display()));
        let all: Vec<String> = self.tried.iter().cloned().chain(found).collect();
        f.write_str(&all.join("; "))
    }
}

/// Result alias used throughout vhdkit.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Io { .. } | Error::Open { .. } => ErrorKind::Io,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Usage(_) | Error::KeyWithoutHive { .. } => ErrorKind::Usage,
            Error::NotFound(_) | Error::ParentNotFound { .. } => ErrorKind::NotFound,
            Error::Format { .. } | Error::NotADisk { .. } => ErrorKind::InvalidFormat,
            Error::UntrustedVolume { .. }
            | Error::InUse { .. }
            | Error::Conflict { .. }
            | Error::OutputExists { .. }
            | Error::JournalPending { .. }
            | Error::JournalRefused { .. } => ErrorKind::Conflict,
            Error::Refused { remedy: Remedy::Force, .. } => ErrorKind::Conflict,
            Error::Refused { .. } => ErrorKind::Usage,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// The file the error is about, when there is one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Error::Corrupt { file, .. }
            | Error::Io { file, .. }
            | Error::Open { file, .. }
            | Error::ParentNotFound { file, .. }
            | Error::Unsupported { file, .. }
            | Error::Format { file, .. }
            | Error::NotADisk { file }
            | Error::UntrustedVolume { file, .. }
            | Error::InUse { file }
            | Error::Conflict { file, .. }
            | Error::OutputExists { file }
            | Error::JournalPending { file, .. }
            | Error::Refused { file, .. } => Some(file),
            Error::JournalRefused { journal, .. } => Some(journal),
            Error::Usage(_) | Error::KeyWithoutHive { .. } | Error::NotFound(_) | Error::Internal(_) => None,
        }
    }

    /// The structure and offset the error is about, when there are.
    pub fn location(&self) -> Option<Location<'_>> {
        match self {
            Error::Corrupt { structure, space, offset, .. } => {
                Some(Location { structure, space: *space, offset: *offset })
            }
            Error::Io { action, space, offset, .. } => {
                Some(Location { structure: action, space: *space, offset: *offset })
            }
            _ => None,
        }
    }

    /// A corrupt structure in `file` at `offset` of `space`.
    pub fn corrupt(
        file: &Path,
        structure: impl Into<String>,
        space: Space,
        offset: u64,
        problem: impl Into<String>,
    ) -> Self {
        Error::Corrupt { file: file.to_path_buf(), structure: structure.into(), space, offset, problem: problem.into() }
    }

    /// A failed read or write of `file` at `offset` of `space`.
    pub fn io(file: &Path, action: &'static str, space: Space, offset: u64, source: io::Error) -> Self {
        Error::Io { file: file.to_path_buf(), action, space, offset, source }
    }

    /// A failed open or create of `file`.
    pub fn open(file: &Path, action: &'static str, source: io::Error) -> Self {
        Error::Open { file: file.to_path_buf(), action, source }
    }

    /// A broken internal invariant.
    pub fn internal(problem: impl Into<String>) -> Self {
        Error::Internal(problem.into())
    }

    /// Something `file` holds that vhdkit does not handle.
    pub fn unsupported(file: &Path, problem: impl Into<String>) -> Self {
        Error::Unsupported { file: file.to_path_buf(), problem: problem.into() }
    }
}

/// Carries an [`Error`] through `std::io::Error`, for the `ntfs` crate's `Read + Seek` adapters.
impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        io::Error::other(e)
    }
}
