//! CHS geometry as the VHD specification's appendix computes it.

use serde::Serialize;

/// Cylinders, heads and sectors per track of a virtual disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Geometry {
    pub cylinders: u16,
    pub heads: u8,
    pub sectors_per_track: u8,
}

impl Geometry {
    /// Decodes the 4-byte big-endian footer field.
    pub fn from_bytes(b: [u8; 4]) -> Self {
        Geometry { cylinders: u16::from_be_bytes([b[0], b[1]]), heads: b[2], sectors_per_track: b[3] }
    }

    /// Encodes the 4-byte big-endian footer field.
    pub fn to_bytes(self) -> [u8; 4] {
        let c = self.cylinders.to_be_bytes();
        [c[0], c[1], self.heads, self.sectors_per_track]
    }

    /// Bytes addressed by this geometry (cylinders x heads x sectors x 512).
    pub fn capacity(self) -> u64 {
        self.cylinders as u64 * self.heads as u64 * self.sectors_per_track as u64 * 512
    }

    /// The geometry the VHD specification assigns to a disk of `size` bytes.
    pub fn for_size(size: u64) -> Self {
        const MAX_SECTORS: u64 = 65535 * 16 * 255;
        let total = (size / 512).min(MAX_SECTORS);
        let (spt, heads, cyl_times_heads);
        if total >= 65535 * 16 * 63 {
            spt = 255;
            heads = 16;
            cyl_times_heads = total / spt;
        } else {
            let mut s = 17;
            let mut cth = total / s;
            let mut h = cth.div_ceil(1024).max(4);
            if cth >= h * 1024 || h > 16 {
                s = 31;
                h = 16;
                cth = total / s;
            }
            if cth >= h * 1024 {
                s = 63;
                h = 16;
                cth = total / s;
            }
            spt = s;
            heads = h;
            cyl_times_heads = cth;
        }
        Geometry { cylinders: (cyl_times_heads / heads) as u16, heads: heads as u8, sectors_per_track: spt as u8 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_geometries_real_writers_stored() {
        // dfvfs ext2.vhd (qemu): 4212736 bytes -> 121/4/17.
        assert_eq!(Geometry::for_size(4_212_736), Geometry { cylinders: 121, heads: 4, sectors_per_track: 17 });
        // dfvfs fat-differential.vhd (Windows diskpart): 4 MiB -> 120/4/17.
        assert_eq!(Geometry::for_size(4 << 20), Geometry { cylinders: 120, heads: 4, sectors_per_track: 17 });
        // libvhdi file_footer.1 (Virtual PC): 512 MiB -> 1040/16/63.
        assert_eq!(Geometry::for_size(512 << 20), Geometry { cylinders: 1040, heads: 16, sectors_per_track: 63 });
        // Above 127 GiB the heads and sectors saturate at 16/255.
        let big = Geometry::for_size(2040 << 30);
        assert_eq!((big.heads, big.sectors_per_track), (16, 255));
        assert_eq!(big.cylinders, 65535);
    }

    #[test]
    fn round_trips_through_bytes() {
        let g = Geometry { cylinders: 0x1234, heads: 16, sectors_per_track: 63 };
        assert_eq!(Geometry::from_bytes(g.to_bytes()), g);
        assert_eq!(g.to_bytes(), [0x12, 0x34, 16, 63]);
    }
}
