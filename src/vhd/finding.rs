//! Problems found while opening or checking an image that do not stop reading it.

use serde::Serialize;

use crate::error::Space;

/// One structural problem, located like an [`crate::Error`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Finding {
    /// The file the problem is in.
    pub file: String,
    /// The on-disk structure (`"VHD footer"`, `"BAT entry 17"`...).
    pub structure: String,
    /// The address space of `offset`: `"file"`, `"disk"`, `"partition N"`.
    pub space: String,
    /// Byte offset of the structure.
    pub offset: u64,
    /// What is wrong.
    pub problem: String,
    /// Whether writing into the image in place could destroy live data (blocks that overlap
    /// or lie outside the file).
    #[serde(skip)]
    pub hazard: bool,
}

impl Finding {
    /// A problem with `structure` at `offset` of `space` in `file`.
    pub fn new(
        file: &std::path::Path,
        structure: impl Into<String>,
        space: Space,
        offset: u64,
        problem: impl Into<String>,
    ) -> Self {
        Finding {
            file: file.display().to_string(),
            structure: structure.into(),
            space: match space {
                Space::File => "file".into(),
                Space::Disk => "disk".into(),
                Space::Partition(n) => format!("partition {n}"),
                Space::Hive => "hive".into(),
            },
            offset,
            problem: problem.into(),
            hazard: false,
        }
    }

    /// Marks the problem as one that makes in-place writes unsafe.
    pub fn hazardous(mut self) -> Self {
        self.hazard = true;
        self
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} at {} offset {:#x}: {}", self.file, self.structure, self.space, self.offset, self.problem)
    }
}

/// Findings of one kind kept whole per table (one per BAT entry, say); the rest are counted,
/// so a hostile table of millions of bad entries gives a report of bounded size.
pub const KEPT_OF_A_KIND: usize = 100;

/// Collects findings of one kind: the first [`KEPT_OF_A_KIND`] whole, the rest counted.
#[derive(Default)]
pub struct FindingsOfAKind {
    kept: Vec<Finding>,
    more: u64,
}

impl FindingsOfAKind {
    /// Adds the finding `make` builds, or only counts it once enough are kept.
    pub fn push(&mut self, make: impl FnOnce() -> Finding) {
        if self.kept.len() < KEPT_OF_A_KIND {
            self.kept.push(make());
        } else {
            self.more += 1;
        }
    }

    /// The kept findings, then one that counts the rest (built by `summary` from their number).
    pub fn finish(self, summary: impl FnOnce(u64) -> Finding) -> Vec<Finding> {
        let mut all = self.kept;
        if self.more > 0 {
            all.push(summary(self.more));
        }
        all
    }
}
