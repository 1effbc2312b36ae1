//! Argument types and parsers the tools share.

use crate::host::LockWait;
use crate::vhd::image::ImageFormat;

/// Container formats the user can insist on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    Raw,
    Vhd,
    Vhdx,
}

impl FormatArg {
    /// The library's name for it.
    pub fn format(self) -> ImageFormat {
        match self {
            FormatArg::Raw => ImageFormat::Raw,
            FormatArg::Vhd => ImageFormat::Vhd,
            FormatArg::Vhdx => ImageFormat::Vhdx,
        }
    }
}

/// Output containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ContainerArg {
    Vhd,
    Vhdx,
}

impl ContainerArg {
    /// The library's name for it.
    pub fn format(self) -> ImageFormat {
        match self {
            ContainerArg::Vhd => ImageFormat::Vhd,
            ContainerArg::Vhdx => ImageFormat::Vhdx,
        }
    }

    /// The container an output file name asks for by its extension, if any.
    pub fn of_name(path: &std::path::Path) -> Option<Self> {
        match path.extension()?.to_string_lossy().to_ascii_lowercase().as_str() {
            "vhd" => Some(ContainerArg::Vhd),
            "vhdx" | "avhdx" => Some(ContainerArg::Vhdx),
            _ => None,
        }
    }
}

/// How long to wait for another process's lock.
pub fn lock_wait(wait: bool) -> LockWait {
    if wait { LockWait::Wait } else { LockWait::Fail }
}

/// A partition boundary: a power of two from 4 KiB, or the VHD block size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boundary {
    Bytes(u64),
    Block,
}

impl Boundary {
    /// The boundary in bytes, `block` being the given VHD block size.
    pub fn bytes(self, block: u64) -> u64 {
        match self {
            Boundary::Bytes(b) => b,
            Boundary::Block => block,
        }
    }
}

/// Parses a boundary: `block`, or a power of two of at least 4 KiB (`4K`, `64K`, `1M`).
pub fn parse_boundary(s: &str) -> std::result::Result<Boundary, String> {
    if s.eq_ignore_ascii_case("block") {
        return Ok(Boundary::Block);
    }
    match parse_size(s) {
        Ok(b) if b >= 4096 && b.is_power_of_two() => Ok(Boundary::Bytes(b as u64)),
        _ => Err(format!("{s:?} is not a boundary: give a power of two from 4K (4K, 64K, 1M...) or `block`")),
    }
}

/// Parses `2M`, `512K`, `2MiB`, `1048576` (a block size: at most 4 GiB).
pub fn parse_size(s: &str) -> std::result::Result<u32, String> {
    parse_bytes(s).and_then(|n| u32::try_from(n).map_err(|_| format!("{s:?} is too large for a block size")))
}

/// Parses a disk size: `40G`, `1T`, `512M`, `2GiB`, `1048576`.
pub fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.trim_end_matches("ib").trim_end_matches('b');
    let (digits, shift) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 10),
        Some('m') => (&t[..t.len() - 1], 20),
        Some('g') => (&t[..t.len() - 1], 30),
        Some('t') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{s:?} is not a size like 40G, 512M or 1048576"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_units() {
        for (text, want) in [("2M", 2u32 << 20), ("512K", 512 << 10), ("2MiB", 2 << 20), ("1048576", 1 << 20)] {
            assert_eq!(parse_size(text), Ok(want));
        }
        assert!(parse_size("lots").is_err());
        assert!(parse_size("8G").is_err(), "past u32");
    }

    #[test]
    fn boundaries_are_powers_of_two_from_4k_or_the_block() {
        assert_eq!(parse_boundary("1M"), Ok(Boundary::Bytes(1 << 20)));
        assert_eq!(parse_boundary("BLOCK"), Ok(Boundary::Block));
        assert!(parse_boundary("2K").is_err());
        assert!(parse_boundary("3M").is_err());
        assert_eq!(Boundary::Block.bytes(2 << 20), 2 << 20);
    }
}
