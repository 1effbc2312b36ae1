//! Layer 1: VHD container formats behind one [`BlockDevice`] trait.
//!
//! Readers for raw images, fixed, dynamic and differencing VHDs (any chain depth), and writers
//! that create fixed, dynamic and differencing images and write into them while keeping the
//! BAT, sector bitmaps, header and both footers consistent.

pub mod bat;
pub mod bitmap;
pub mod check;
pub mod device;
pub mod finding;
pub mod fixed;
pub mod footer;
pub mod geometry;
pub mod header;
pub mod identity;
pub mod image;
pub mod parent;
pub mod probe;
pub mod sparse;

pub use device::{BlockDevice, DeviceReader, SectorSize, WritableDevice};
pub use finding::Finding;
pub use fixed::FixedVhd;
pub use image::{DiskImage, ImageFormat, ImageKind, OpenOptions};
pub use sparse::SparseVhd;
