//! Layer 5: the life of a container, as qemu-img and vhd-util offer it: create a disk,
//! grow or shrink its virtual size, repair a child's link to its parent, and commit a child
//! into its parent. Each is a plan over the opened image, then one atomic write (a new file
//! renamed into place, or the journal of in-place writes).

pub mod commit;
pub mod create;
pub mod family;
pub mod grow;
pub mod relink;
pub mod resize;
