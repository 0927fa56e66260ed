//! Offsets named by checkpoints, per output partition, as merged runs: a verifier remembers
//! which offsets were named (a second naming is a rewind) in memory that grows with the gaps
//! between runs, not with the records.

use std::collections::BTreeMap;

/// A set of offsets as disjoint, non-adjacent `[start, end)` runs.
#[derive(Debug, Default, Clone)]
pub(super) struct Intervals(BTreeMap<i64, i64>);

impl Intervals {
    /// Whether `offset` is in the set.
    pub(super) fn contains(&self, offset: i64) -> bool {
        self.0
            .range(..=offset)
            .next_back()
            .is_some_and(|(_, end)| offset < *end)
    }

    /// Adds `[first, first + len)`; returns the offsets that were already in the set.
    pub(super) fn insert_run(&mut self, first: i64, len: i64) -> Vec<i64> {
        if len <= 0 {
            return Vec::new();
        }
        let (mut start, mut end) = (first, first.saturating_add(len));
        let mut already = Vec::new();
        // every run that overlaps or touches [start, end)
        let touching: Vec<(i64, i64)> = self
            .0
            .range(..=end)
            .rev()
            .take_while(|(_, e)| **e >= start)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in touching {
            let (lo, hi) = (s.max(first), e.min(first.saturating_add(len)));
            already.extend(lo..hi);
            self.0.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.0.insert(start, end);
        already.sort_unstable();
        already
    }

    /// The number of runs (memory used).
    #[cfg(test)]
    pub(super) fn runs(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::Intervals;
    use proptest::prelude::*;

    #[test]
    fn runs_merge_and_overlaps_are_reported() {
        let mut s = Intervals::default();
        assert!(s.insert_run(10, 5).is_empty());
        assert!(s.insert_run(15, 5).is_empty());
        assert_eq!(s.runs(), 1, "adjacent runs merge");
        assert!(s.insert_run(30, 2).is_empty());
        assert_eq!(s.runs(), 2);
        assert_eq!(s.insert_run(18, 14), vec![18, 19, 30, 31]);
        assert_eq!(s.runs(), 1);
        assert!(s.contains(10) && s.contains(31) && !s.contains(9) && !s.contains(32));
        assert!(s.insert_run(5, 0).is_empty());
    }

    proptest! {
        /// The set answers as a plain set of offsets would, whatever the order of runs.
        #[test]
        fn behaves_as_a_set(runs in proptest::collection::vec((0i64..200, 0i64..20), 0..40)) {
            let mut s = Intervals::default();
            let mut plain = std::collections::BTreeSet::new();
            for (first, len) in runs {
                let want: Vec<i64> = (first..first + len).filter(|o| plain.contains(o)).collect();
                prop_assert_eq!(s.insert_run(first, len), want);
                plain.extend(first..first + len);
            }
            for o in -1..230 {
                prop_assert_eq!(s.contains(o), plain.contains(&o));
            }
        }
    }
}
