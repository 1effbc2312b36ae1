//! What compaction would reclaim, without writing: per image, the bytes freed at the image's
//! own block size and at each smaller one, for a fleet of disks at a time.

use rayon::prelude::*;
use serde::Serialize;

use crate::error::Result;
use crate::map::ImageMap;
use crate::map::blocks::KeptAtBlockSize;
use crate::ntfs::IndexDetail;
use crate::vhd::device::BlockDevice;
use crate::vhd::image::{DiskImage, ImageFormat, ImageKind};

/// What compacting one image would give.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct WhatIf {
    /// The image.
    pub file: String,
    /// Fixed, dynamic or differencing (or raw).
    pub format: ImageKind,
    /// VHD or VHDX (or raw).
    pub container: ImageFormat,
    /// The disk's length.
    pub disk_size: u64,
    /// Bytes of the image's own file.
    pub file_bytes: u64,
    /// The image's block size (2 MiB units for a fixed or raw image).
    pub block_size: u64,
    /// Payload bytes the file stores: its stored blocks (every byte, for a fixed or raw image).
    pub stored_bytes: u64,
    /// What compaction keeps and frees at the image's block size (first) and each smaller one
    /// down to 1 MiB.
    pub block_sizes: Vec<KeptAtBlockSize>,
    /// Bytes compaction frees at the image's own block size.
    pub reclaimable_bytes: u64,
    /// Bytes compaction frees at the smallest block size (1 MiB, a VHDX's smallest).
    pub reclaimable_with_smallest_blocks: u64,
    /// Why compaction would refuse as things stand (a dirty or hibernated volume).
    pub refusal: Option<String>,
}

/// What compacting `image` would reclaim. Reads the image, never writes.
pub fn what_if(image: &DiskImage) -> Result<WhatIf> {
    let map = ImageMap::build_with(image, None, IndexDetail::Clusters)?;
    let mut sizes = map.kept_by_block_size()?;
    let stored = match image.block_size() {
        Some(_) => sizes.first().map_or(0, |k| k.kept_bytes + k.freed_bytes),
        None => image.len(),
    };
    for k in &mut sizes {
        k.freed_bytes = stored.saturating_sub(k.kept_bytes);
    }
    Ok(WhatIf {
        file: image.source().display().to_string(),
        format: image.kind(),
        container: image.format(),
        disk_size: image.len(),
        file_bytes: image.file().file_len()?,
        block_size: map.block_size(),
        stored_bytes: stored,
        reclaimable_bytes: sizes.first().map_or(0, |k| k.freed_bytes),
        reclaimable_with_smallest_blocks: sizes.last().map_or(0, |k| k.freed_bytes),
        block_sizes: sizes,
        refusal: crate::pass::refuse_untrusted_volumes(&map, None, false).err().map(|e| e.to_string()),
    })
}

/// [`what_if`] of every image `open` opens, in parallel, in the order given; an image that
/// cannot be opened or read gives its error, the others go on.
pub fn what_if_all<P: Sync>(images: &[P], open: &(dyn Fn(&P) -> Result<DiskImage> + Sync)) -> Vec<Result<WhatIf>> {
    images.par_iter().map(|p| what_if(&open(p)?)).collect()
}
