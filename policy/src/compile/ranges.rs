//! Sets of values as sorted, disjoint, inclusive ranges: IP addresses (as `u128`, IPv4 in the low 32 bits),
//! ports, ICMP type/code. The compiler turns every rule criterion into such a set, so the classifier only
//! ever deals with intervals.

/// A set of `u128` values as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RangeSet {
    ranges: Vec<(u128, u128)>,
}

impl RangeSet {
    pub fn empty() -> RangeSet {
        RangeSet { ranges: Vec::new() }
    }

    /// Every value from `lo` to `hi` inclusive.
    pub fn span(lo: u128, hi: u128) -> RangeSet {
        if lo > hi {
            return RangeSet::empty();
        }
        RangeSet { ranges: vec![(lo, hi)] }
    }

    /// Builds a set from ranges in any order, overlapping or not.
    pub fn from_ranges(mut ranges: Vec<(u128, u128)>) -> RangeSet {
        ranges.retain(|(lo, hi)| lo <= hi);
        ranges.sort_unstable();
        let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match out.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        RangeSet { ranges: out }
    }

    pub fn ranges(&self) -> &[(u128, u128)] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn contains(&self, v: u128) -> bool {
        match self.ranges.binary_search_by(|(lo, _)| lo.cmp(&v)) {
            Ok(_) => true,
            Err(0) => false,
            Err(i) => self.ranges[i - 1].1 >= v,
        }
    }

    pub fn union(&self, other: &RangeSet) -> RangeSet {
        let mut all = self.ranges.clone();
        all.extend_from_slice(&other.ranges);
        RangeSet::from_ranges(all)
    }

    /// Whether the sets share a value (`intersect` without building the intersection).
    pub fn overlaps(&self, other: &RangeSet) -> bool {
        let (a, b) = (&self.ranges, &other.ranges);
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            if a[i].0.max(b[j].0) <= a[i].1.min(b[j].1) {
                return true;
            }
            if a[i].1 < b[j].1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        false
    }

    /// Whether the set holds a value of `lo..=hi`.
    pub fn overlaps_span(&self, lo: u128, hi: u128) -> bool {
        // The first range not wholly below `lo`.
        let i = self.ranges.partition_point(|r| r.1 < lo);
        self.ranges.get(i).is_some_and(|r| r.0 <= hi)
    }

    pub fn intersect(&self, other: &RangeSet) -> RangeSet {
        let (a, b) = (&self.ranges, &other.ranges);
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while i < a.len() && j < b.len() {
            let lo = a[i].0.max(b[j].0);
            let hi = a[i].1.min(b[j].1);
            if lo <= hi {
                out.push((lo, hi));
            }
            if a[i].1 < b[j].1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        RangeSet { ranges: out }
    }

    /// The values of `universe` not in this set.
    pub fn complement_within(&self, universe: &RangeSet) -> RangeSet {
        let mut gaps = Vec::new();
        let mut next: u128 = 0;
        let mut open = true;
        for &(lo, hi) in &self.ranges {
            if lo > next {
                gaps.push((next, lo - 1));
            }
            if hi == u128::MAX {
                open = false;
                break;
            }
            next = hi + 1;
        }
        if open {
            gaps.push((next, u128::MAX));
        }
        RangeSet { ranges: gaps }.intersect(universe)
    }

    pub fn difference(&self, other: &RangeSet) -> RangeSet {
        other.complement_within(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps_is_a_non_empty_intersection() {
        let a = RangeSet::from_ranges(vec![(0, 9), (20, 29), (40, 49)]);
        for (lo, hi) in [(10, 19), (9, 9), (29, 40), (50, 60), (15, 25), (0, 100), (30, 39)] {
            let b = RangeSet::span(lo, hi);
            assert_eq!(a.overlaps(&b), !a.intersect(&b).is_empty(), "{lo}..={hi}");
            assert_eq!(b.overlaps(&a), !a.intersect(&b).is_empty(), "{lo}..={hi}");
            assert_eq!(a.overlaps_span(lo, hi), !a.intersect(&b).is_empty(), "{lo}..={hi}");
        }
        assert!(!a.overlaps(&RangeSet::empty()));
    }

    #[test]
    fn set_algebra() {
        let a = RangeSet::from_ranges(vec![(10, 20), (15, 30), (40, 50), (51, 52)]);
        assert_eq!(a.ranges(), &[(10, 30), (40, 52)]);
        let b = RangeSet::span(25, 45);
        assert_eq!(a.intersect(&b).ranges(), &[(25, 30), (40, 45)]);
        assert_eq!(a.difference(&b).ranges(), &[(10, 24), (46, 52)]);
        assert_eq!(a.union(&b).ranges(), &[(10, 52)]);
        assert!(a.contains(10) && a.contains(52) && !a.contains(35) && !a.contains(9));
        let all = RangeSet::span(0, u128::MAX);
        assert_eq!(RangeSet::empty().complement_within(&all), all);
        assert_eq!(all.complement_within(&all), RangeSet::empty());
    }
}
