//! `ClusterOwnerIndex`: which attribute of which file owns each cluster, built once from
//! every run of every record and looked up in O(log n).
//!
//! Runs are swept into disjoint segments, each with its owners; a segment with more than one
//! owner is a cross-linked range (a corrupt volume).

use rayon::slice::ParallelSliceMut;

/// One disjoint cluster range and its owners (indexes into the caller's owner table).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Segment {
    start: u64,
    end: u64,
    /// Range in `owner_ids`.
    first: u32,
    count: u32,
}

/// Interval map: cluster -> owner ids.
#[derive(Clone, Debug, Default)]
pub struct ClusterOwnerIndex {
    segments: Vec<Segment>,
    owner_ids: Vec<u32>,
}

impl ClusterOwnerIndex {
    /// Builds the index from `(first cluster, cluster count, owner id)` runs.
    pub fn build(runs: impl IntoIterator<Item = (u64, u64, u32)>) -> Self {
        let mut events: Vec<(u64, bool, u32)> = Vec::new();
        for (start, len, owner) in runs {
            if len > 0 {
                events.push((start, true, owner));
                events.push((start + len, false, owner));
            }
        }
        // At equal positions, ends sort before starts (false < true).
        events.par_sort_unstable();
        let mut index = ClusterOwnerIndex::default();
        let mut active: Vec<u32> = Vec::new();
        let mut prev = 0u64;
        for (pos, is_start, owner) in events {
            if pos > prev && !active.is_empty() {
                index.push(prev, pos, &active);
            }
            prev = pos;
            if is_start {
                active.push(owner);
            } else if let Some(i) = active.iter().position(|&o| o == owner) {
                active.swap_remove(i);
            }
        }
        index
    }

    fn push(&mut self, start: u64, end: u64, owners: &[u32]) {
        let mut sorted = owners.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if let Some(last) = self.segments.last_mut()
            && last.end == start
            && self.owner_ids[last.first as usize..][..last.count as usize] == sorted[..]
        {
            last.end = end;
            return;
        }
        self.segments.push(Segment { start, end, first: self.owner_ids.len() as u32, count: sorted.len() as u32 });
        self.owner_ids.extend(sorted);
    }

    fn ids(&self, s: &Segment) -> &[u32] {
        &self.owner_ids[s.first as usize..][..s.count as usize]
    }

    /// Owners of cluster `c`.
    pub fn owners_of(&self, c: u64) -> &[u32] {
        let i = self.segments.partition_point(|s| s.end <= c);
        match self.segments.get(i) {
            Some(s) if s.start <= c => self.ids(s),
            _ => &[],
        }
    }

    /// Owned segments overlapping `[start, end)`, clipped: `(start, end, owners)`.
    pub fn segments_in(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, u64, &[u32])> + '_ {
        let i = self.segments.partition_point(|s| s.end <= start);
        self.segments[i..]
            .iter()
            .take_while(move |s| s.start < end)
            .map(move |s| (s.start.max(start), s.end.min(end), self.ids(s)))
    }

    /// Number of owned clusters in `[start, end)`.
    pub fn owned_count(&self, start: u64, end: u64) -> u64 {
        self.segments_in(start, end).map(|(a, b, _)| b - a).sum()
    }

    /// Ranges owned by more than one owner.
    pub fn cross_links(&self) -> impl Iterator<Item = (u64, u64, &[u32])> + '_ {
        self.segments.iter().filter(|s| s.count > 1).map(|s| (s.start, s.end, self.ids(s)))
    }

    /// Every owned segment, in cluster order.
    pub fn segments(&self) -> impl Iterator<Item = (u64, u64, &[u32])> + '_ {
        self.segments.iter().map(|s| (s.start, s.end, self.ids(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_disjoint_and_overlapping_runs() {
        let idx = ClusterOwnerIndex::build([(0, 2, 7), (10, 5, 1), (12, 6, 2), (100, 1, 3)]);
        assert_eq!(idx.owners_of(0), &[7]);
        assert_eq!(idx.owners_of(2), &[] as &[u32]);
        assert_eq!(idx.owners_of(11), &[1]);
        assert_eq!(idx.owners_of(13), &[1, 2]);
        assert_eq!(idx.owners_of(16), &[2]);
        assert_eq!(idx.owners_of(100), &[3]);
        assert_eq!(idx.owners_of(101), &[] as &[u32]);
        assert_eq!(idx.owned_count(0, 200), 2 + 8 + 1);
        assert_eq!(idx.cross_links().map(|(a, b, _)| (a, b)).collect::<Vec<_>>(), vec![(12, 15)]);
        let within: Vec<(u64, u64)> = idx.segments_in(11, 13).map(|(a, b, _)| (a, b)).collect();
        assert_eq!(within, vec![(11, 12), (12, 13)]);
    }

    #[test]
    fn adjacent_runs_of_one_owner_merge() {
        let idx = ClusterOwnerIndex::build([(0, 4, 1), (4, 4, 1), (8, 1, 2)]);
        assert_eq!(idx.segments().count(), 2);
    }
}
