//! `ClusterOwnerIndex`: which attribute of which file owns each cluster, built once from
//! every run of every record and looked up in O(log n).
//!
//! Runs are swept into disjoint segments, each with its owners; a segment with more than one
//! owner is a cross-linked range (a corrupt volume).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

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
    /// Builds the index from `(first cluster, cluster count, owner id)` runs, sorted in place
    /// and swept once: memory is the runs and the segments, nothing per boundary.
    pub fn build(mut runs: Vec<(u64, u64, u32)>) -> Self {
        runs.retain(|r| r.1 > 0);
        runs.par_sort_unstable_by_key(|r| r.0);
        // Runs rarely overlap: about one segment each.
        let mut index =
            ClusterOwnerIndex { segments: Vec::with_capacity(runs.len()), owner_ids: Vec::with_capacity(runs.len()) };
        // The runs covering the current position, by end.
        let mut active: BinaryHeap<Reverse<(u64, u32)>> = BinaryHeap::new();
        let mut owners: Vec<u32> = Vec::new();
        let mut next = 0;
        let mut pos = 0u64;
        loop {
            if active.is_empty() {
                let Some(r) = runs.get(next) else { break };
                pos = r.0;
            }
            while let Some(&(start, len, owner)) = runs.get(next).filter(|r| r.0 == pos) {
                active.push(Reverse((start.saturating_add(len), owner)));
                next += 1;
            }
            let Some(&Reverse((first_end, _))) = active.peek() else { continue };
            let end = runs.get(next).map_or(first_end, |r| r.0.min(first_end));
            owners.clear();
            owners.extend(active.iter().map(|Reverse((_, o))| *o));
            index.push(pos, end, &owners);
            pos = end;
            while active.peek().is_some_and(|Reverse((e, _))| *e <= pos) {
                active.pop();
            }
        }
        index.segments.shrink_to_fit();
        index.owner_ids.shrink_to_fit();
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
        let idx = ClusterOwnerIndex::build(vec![(0, 2, 7), (10, 5, 1), (12, 6, 2), (100, 1, 3)]);
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
        let idx = ClusterOwnerIndex::build(vec![(0, 4, 1), (4, 4, 1), (8, 1, 2)]);
        assert_eq!(idx.segments().count(), 2);
    }
}
