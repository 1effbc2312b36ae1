//! Mapping pairs: the compressed list of data runs of a non-resident attribute.
//!
//! Decoded by hand because the `ntfs` crate takes a run whose LCN delta is zero for a sparse run:
//! the first run of `$Boot` starts at LCN 0 and would otherwise own no clusters.

use serde::Serialize;

/// One run of clusters: `length` clusters from `vcn`, stored at `lcn` (None = sparse).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Run {
    pub vcn: u64,
    pub lcn: Option<u64>,
    /// In JSON `clusters`: every report's `length` counts bytes.
    #[serde(rename = "clusters")]
    pub length: u64,
}

/// Why mapping pairs could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub struct RunError {
    /// Offset of the bad pair inside the mapping pairs array.
    pub at: usize,
    pub problem: String,
}

fn read_le(bytes: &[u8], signed: bool) -> i64 {
    let mut v: i64 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        v |= (b as i64) << (8 * i);
    }
    let bits = 8 * bytes.len();
    if signed && bits < 64 && bytes.last().is_some_and(|&b| b & 0x80 != 0) {
        v -= 1i64 << bits;
    }
    v
}

/// Decodes mapping pairs starting at VCN `lowest_vcn`; every run must lie inside
/// `total_clusters`. Stops at the terminating zero byte or the end of `pairs`.
pub fn decode(pairs: &[u8], lowest_vcn: u64, total_clusters: u64) -> Result<Vec<Run>, RunError> {
    let mut runs = Vec::new();
    let mut at = 0usize;
    let mut vcn = lowest_vcn;
    let mut lcn: i64 = 0;
    while at < pairs.len() && pairs[at] != 0 {
        let header = pairs[at];
        let (len_size, off_size) = ((header & 0x0F) as usize, (header >> 4) as usize);
        let bad = |problem: String| RunError { at, problem };
        if len_size == 0 || len_size > 8 || off_size > 8 {
            return Err(bad(format!("header byte {header:#04x} is invalid")));
        }
        let end = at + 1 + len_size + off_size;
        if end > pairs.len() {
            return Err(bad("runs past the end of the attribute".into()));
        }
        let length = read_le(&pairs[at + 1..at + 1 + len_size], false) as u64;
        if length == 0 || length > total_clusters {
            return Err(bad(format!("run length {length} clusters is impossible")));
        }
        let run_lcn = if off_size == 0 {
            None
        } else {
            lcn = lcn
                .checked_add(read_le(&pairs[at + 1 + len_size..end], true))
                .ok_or_else(|| bad("LCN overflows".into()))?;
            let start = u64::try_from(lcn).map_err(|_| bad(format!("LCN {lcn} is negative")))?;
            if start.checked_add(length).is_none_or(|e| e > total_clusters) {
                return Err(bad(format!(
                    "run at LCN {start} of {length} clusters lies past the volume's {total_clusters} clusters"
                )));
            }
            Some(start)
        };
        runs.push(Run { vcn, lcn: run_lcn, length });
        vcn = vcn.checked_add(length).ok_or_else(|| bad("VCN overflows".into()))?;
        at = end;
    }
    Ok(runs)
}

/// Encodes runs (in VCN order, without gaps) as mapping pairs, terminating zero included.
pub fn encode(runs: &[Run]) -> Vec<u8> {
    fn bytes_for(v: i64, signed: bool) -> usize {
        (1..=8)
            .find(|&n| {
                if n == 8 {
                    return true;
                }
                let bits = 8 * n as u32;
                if signed {
                    let lim = 1i64 << (bits - 1);
                    (-lim..lim).contains(&v)
                } else {
                    (v as u64) < (1u64 << bits)
                }
            })
            .unwrap_or(8)
    }
    let mut out = Vec::new();
    let mut prev: i64 = 0;
    for r in runs {
        let len_size = bytes_for(r.length as i64, false);
        let (off_size, delta) = match r.lcn {
            Some(lcn) => {
                let d = lcn as i64 - prev;
                prev = lcn as i64;
                (bytes_for(d, true), d)
            }
            None => (0, 0),
        };
        out.push((off_size as u8) << 4 | len_size as u8);
        out.extend_from_slice(&r.length.to_le_bytes()[..len_size]);
        out.extend_from_slice(&delta.to_le_bytes()[..off_size]);
    }
    out.push(0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_lcn_zero_sparse_and_negative_deltas() {
        // $Boot: 2 clusters at LCN 0. Then a sparse run, then a jump back.
        let pairs = [0x11, 0x02, 0x00, 0x01, 0x10, 0x21, 0x04, 0x00, 0x01, 0x11, 0x01, 0xFF, 0x00];
        let runs = decode(&pairs, 0, 10_000).unwrap();
        assert_eq!(
            runs,
            vec![
                Run { vcn: 0, lcn: Some(0), length: 2 },
                Run { vcn: 2, lcn: None, length: 16 },
                Run { vcn: 18, lcn: Some(256), length: 4 },
                Run { vcn: 22, lcn: Some(255), length: 1 },
            ]
        );
        assert_eq!(encode(&runs), pairs.to_vec());
    }

    #[test]
    fn rejects_runs_outside_the_volume_and_bad_headers() {
        assert!(decode(&[0x11, 0x10, 0x7F, 0x00], 0, 100).unwrap_err().problem.contains("past the volume"));
        assert!(decode(&[0x09, 0x00], 0, 100).unwrap_err().problem.contains("header byte"));
        assert!(decode(&[0x11, 0x01, 0xFF, 0x00], 0, 100).unwrap_err().problem.contains("negative"));
        assert!(decode(&[0x31, 0x01, 0x00], 0, 100).unwrap_err().problem.contains("past the end"));
        assert!(decode(&[0x11, 0x00, 0x05, 0x00], 0, 100).unwrap_err().problem.contains("length 0"));
    }

    #[test]
    fn round_trips_large_values() {
        let runs = vec![
            Run { vcn: 0, lcn: Some(5_000_000_000), length: 70_000 },
            Run { vcn: 70_000, lcn: Some(12), length: 1 },
            Run { vcn: 70_001, lcn: None, length: 300 },
            Run { vcn: 70_301, lcn: Some(128), length: 128 },
        ];
        assert_eq!(decode(&encode(&runs), 0, u64::MAX / 2).unwrap(), runs);
    }
}
