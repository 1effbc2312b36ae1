//! Where a new image's identifiers (VHD UUID, VHDX GUIDs) and timestamps come from: fresh
//! ones, or ones derived from the input and the options, so that the same input and options
//! give byte-identical outputs (what image pipelines that diff and cache artefacts need).

use crate::bytes::Guid;

/// The source of a new image's identifiers and timestamps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Identity {
    /// Random identifiers and the current time.
    #[default]
    Fresh,
    /// Identifiers derived from `seed` (a hash of what the output is made from), and a fixed
    /// time in seconds since 1970.
    Derived {
        /// BLAKE3 hash of the material the identifiers are derived from.
        seed: [u8; 32],
        /// The time every timestamp says.
        unix_seconds: u64,
    },
}

impl Identity {
    /// Identifiers derived from `material` and timestamps at `unix_seconds`.
    pub fn derived(material: &[u8], unix_seconds: u64) -> Self {
        Identity::Derived { seed: *blake3::hash(material).as_bytes(), unix_seconds }
    }

    /// The same identity, or for a fresh one a derived one with a random seed and the
    /// current time: every identifier it gives is still new, and asking twice for one
    /// purpose gives the same answer.
    pub fn settled(&self) -> Identity {
        match self {
            Identity::Fresh => {
                let mut seed = [0u8; 32];
                fill_random(&mut seed);
                Identity::Derived { seed, unix_seconds: self.unix_seconds() }
            }
            derived => *derived,
        }
    }

    /// 16 bytes for the identifier named `purpose` (each purpose gets its own).
    fn bytes16(&self, purpose: &str) -> [u8; 16] {
        let mut u = [0u8; 16];
        match self {
            Identity::Fresh => fill_random(&mut u),
            Identity::Derived { seed, .. } => {
                u.copy_from_slice(&blake3::keyed_hash(seed, purpose.as_bytes()).as_bytes()[..16])
            }
        }
        u
    }

    /// A version 4 GUID (VHDX byte order: the version in the high nibble of byte 7).
    pub fn guid(&self, purpose: &str) -> Guid {
        let mut u = self.bytes16(purpose);
        u[7] = (u[7] & 0x0F) | 0x40;
        u[8] = (u[8] & 0x3F) | 0x80;
        Guid(u)
    }

    /// A version 4 UUID (VHD byte order: the version in the high nibble of byte 6).
    pub fn uuid(&self, purpose: &str) -> [u8; 16] {
        let mut u = self.bytes16(purpose);
        u[6] = (u[6] & 0x0F) | 0x40;
        u[8] = (u[8] & 0x3F) | 0x80;
        u
    }

    /// Seconds since 1970 for the output's timestamps.
    pub fn unix_seconds(&self) -> u64 {
        match self {
            Identity::Fresh => {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
            }
            Identity::Derived { unix_seconds, .. } => *unix_seconds,
        }
    }
}

/// Random bytes from the operating system (its clock and process id if that fails, so an
/// identifier is still unlikely to repeat).
fn fill_random(u: &mut [u8]) {
    if getrandom::fill(u).is_err() {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let x = (nanos ^ ((std::process::id() as u128) << 64)).to_le_bytes();
        for (i, b) in u.iter_mut().enumerate() {
            *b = x[i % 16] ^ (i / 16) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_identifiers_repeat_and_differ_by_purpose() {
        let a = Identity::derived(b"input", 1_700_000_000);
        assert_eq!(a.guid("x"), Identity::derived(b"input", 0).guid("x"));
        assert_ne!(a.guid("x"), a.guid("y"));
        assert_ne!(a.guid("x"), Identity::derived(b"other", 0).guid("x"));
        assert_eq!(a.unix_seconds(), 1_700_000_000);
        assert_eq!(a.uuid("x")[6] >> 4, 4);
        assert_eq!(a.guid("x").0[7] >> 4, 4);
    }

    #[test]
    fn fresh_identifiers_differ() {
        assert_ne!(Identity::Fresh.uuid("x"), Identity::Fresh.uuid("x"));
        assert!(!Identity::Fresh.guid("x").is_zero());
    }
}
