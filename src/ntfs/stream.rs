//! Reading an attribute's bytes through its runs, straight from the partition.

use crate::error::{Error, Result, Space};
use crate::ntfs::runs::Run;
use crate::vhd::device::BlockDevice;

/// Reads the first `len` bytes of a non-resident stream whose runs are `runs` (VCN order),
/// zero-filling sparse runs and bytes past `initialized` (the valid data length). `len` must
/// already be bounded by the caller; compressed streams are not decoded here.
pub fn read_runs(
    view: &dyn BlockDevice,
    partition: u32,
    cluster_size: u64,
    runs: &[Run],
    len: u64,
    initialized: u64,
) -> Result<Vec<u8>> {
    let mut out = vec![0u8; len as usize];
    let mut expected_vcn = runs.first().map_or(0, |r| r.vcn);
    for run in runs {
        if run.vcn != expected_vcn {
            return Err(Error::corrupt(
                view.source(),
                "data runs",
                Space::Partition(partition),
                run.lcn.unwrap_or(0) * cluster_size,
                format!("run starts at VCN {}, expected {expected_vcn}", run.vcn),
            ));
        }
        expected_vcn = run.vcn + run.length;
        let start = run.vcn.saturating_mul(cluster_size);
        if start >= len {
            break;
        }
        let end = (start + run.length * cluster_size).min(len).min(initialized.max(start));
        if let (Some(lcn), true) = (run.lcn, end > start) {
            view.read_at(lcn * cluster_size, &mut out[start as usize..end as usize])?;
        }
    }
    Ok(out)
}
