//! Layer 2: the disk inside the image. MBR (with the extended/logical chain) and GPT partition
//! tables, volume boot sectors, and partitions as byte-range views of a device.
//!
//! Parsing is by hand rather than through mbrman/gptman: a diagnosis tool must report each
//! entry's raw bytes and disk offset, keep going past a bad CRC or a looping EBR chain with a
//! finding, and know where every entry lives so realignment can patch it.

pub mod boot_sector;
pub mod filesystem;
pub mod gpt;
pub mod layout;
pub mod lba;
pub mod mbr;
pub mod partition;
pub mod volume;

pub use filesystem::FileSystem;
pub use layout::DiskLayout;
pub use lba::Lba;
pub use partition::{Partition, PartitionView, Scheme};
