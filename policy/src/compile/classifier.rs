//! The compiled classifier: first match over a program's terms by bit-vector intersection
//! (see docs/classifier.md for the choice).
//!
//! Each field (protocol, source and destination address, ports, ICMP type/code, named-port tuples) maps a
//! packet's value to an equivalence class: the set of terms whose predicate on that field holds, stored
//! once as a bit vector. A lookup finds each field's class (a binary search or a table read), then ANDs the
//! classes' bit vectors word by word from the resume point and stops at the first set bit. A second level of
//! summary bits (one per 64-bit word) skips runs of empty words, so a lookup touches
//! `fields × (terms / 4096 + a few)` words, not one per rule. No allocation, no lock.

use std::collections::HashMap;

use super::ranges::RangeSet;
use super::terms::{Conditions, Term, TupleCond, TupleKey, NO_VALUE};

/// The values of a packet the classifier looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// `family * 256 + protocol`.
    pub proto: u16,
    pub src_ip: u128,
    pub dst_ip: u128,
    /// Port, or [`NO_VALUE`] for packets without ports.
    pub src_port: u32,
    pub dst_port: u32,
    /// `type << 8 | code` for ICMP, else [`NO_VALUE`].
    pub icmp: u32,
}

/// Interval index: sorted starts of the elementary intervals and the class of each.
#[derive(Clone, Debug, Default)]
struct IntervalField {
    starts: Vec<u128>,
    classes: Vec<u32>,
}

impl IntervalField {
    #[inline]
    fn class(&self, v: u128) -> u32 {
        // The first start is always the domain's minimum, so the partition point is at least 1.
        let i = self.starts.partition_point(|&s| s <= v);
        self.classes[i.saturating_sub(1)]
    }
}

/// A narrower index for fields whose domain fits in `u32` (ports, ICMP).
#[derive(Clone, Debug, Default)]
struct SmallField {
    starts: Vec<u32>,
    classes: Vec<u32>,
}

impl SmallField {
    #[inline]
    fn class(&self, v: u32) -> u32 {
        let i = self.starts.partition_point(|&s| s <= v);
        self.classes[i.saturating_sub(1)]
    }
}

#[derive(Clone, Debug, Default)]
struct TupleField {
    by_tuple: HashMap<TupleKey, u32>,
    /// The class of tuples in no set.
    default: u32,
}

/// Bit vectors of one field's classes, with their summary bits.
#[derive(Clone, Debug, Default)]
struct ClassBits {
    words: Vec<u64>,
    summary: Vec<u64>,
}

#[derive(Clone, Debug)]
enum Index {
    Proto(Box<[u32; 512]>),
    SrcIp(IntervalField),
    DstIp(IntervalField),
    SrcPort(SmallField),
    DstPort(SmallField),
    Icmp(SmallField),
    SrcTuple(TupleField),
    DstTuple(TupleField),
}

#[derive(Clone, Debug)]
struct Field {
    index: Index,
    bits: ClassBits,
}

/// A compiled program's lookup structure.
#[derive(Clone, Debug, Default)]
pub struct Classifier {
    terms: usize,
    words: usize,
    summary_words: usize,
    /// Only fields where some term is not a wildcard; the rest match everything.
    fields: Vec<Field>,
}

/// Most fields a classifier can have.
const MAX_FIELDS: usize = 8;

impl Classifier {
    pub fn build(terms: &[Term]) -> Classifier {
        let n = terms.len();
        let words = n.div_ceil(64).max(1);
        let summary_words = words.div_ceil(64);
        let mut fields = Vec::new();
        let conds: Vec<&Conditions> = terms.iter().map(|t| &t.conditions).collect();

        let proto: Vec<Option<RangeSet>> = conds.iter().map(|c| Some(c.proto.clone())).collect();
        if proto.iter().any(|p| p.as_ref().is_some_and(|p| p != &RangeSet::span(0, 511))) {
            let (starts, classes, bits) = build_intervals(&proto, 0, words, summary_words);
            let mut table = Box::new([0u32; 512]);
            for (v, slot) in table.iter_mut().enumerate() {
                let i = starts.partition_point(|&s| s <= v as u128);
                *slot = classes[i - 1];
            }
            fields.push(Field { index: Index::Proto(table), bits });
        }
        let wide = |get: fn(&Conditions) -> &Option<RangeSet>| -> Option<(Vec<u128>, Vec<u32>, ClassBits)> {
            let sets: Vec<Option<RangeSet>> = conds.iter().map(|c| get(c).clone()).collect();
            sets.iter().any(Option::is_some).then(|| build_intervals(&sets, 0, words, summary_words))
        };
        if let Some((starts, classes, bits)) = wide(|c| &c.src_ip) {
            fields.push(Field { index: Index::SrcIp(IntervalField { starts, classes }), bits });
        }
        if let Some((starts, classes, bits)) = wide(|c| &c.dst_ip) {
            fields.push(Field { index: Index::DstIp(IntervalField { starts, classes }), bits });
        }
        let small = |(starts, classes, bits): (Vec<u128>, Vec<u32>, ClassBits)| {
            (SmallField { starts: starts.into_iter().map(|s| s.min(u32::MAX as u128) as u32).collect(), classes }, bits)
        };
        if let Some(b) = wide(|c| &c.src_port) {
            let (f, bits) = small(b);
            fields.push(Field { index: Index::SrcPort(f), bits });
        }
        if let Some(b) = wide(|c| &c.dst_port) {
            let (f, bits) = small(b);
            fields.push(Field { index: Index::DstPort(f), bits });
        }
        if let Some(b) = wide(|c| &c.icmp) {
            let (f, bits) = small(b);
            fields.push(Field { index: Index::Icmp(f), bits });
        }
        let src_t: Vec<&TupleCond> = conds.iter().map(|c| &c.src_tuple).collect();
        if src_t.iter().any(|t| !matches!(t, TupleCond::Any)) {
            let (f, bits) = build_tuples(&src_t, words, summary_words);
            fields.push(Field { index: Index::SrcTuple(f), bits });
        }
        let dst_t: Vec<&TupleCond> = conds.iter().map(|c| &c.dst_tuple).collect();
        if dst_t.iter().any(|t| !matches!(t, TupleCond::Any)) {
            let (f, bits) = build_tuples(&dst_t, words, summary_words);
            fields.push(Field { index: Index::DstTuple(f), bits });
        }
        debug_assert!(fields.len() <= MAX_FIELDS);
        Classifier { terms: n, words, summary_words, fields }
    }

    pub fn terms(&self) -> usize {
        self.terms
    }

    /// Bytes held by the lookup structures.
    pub fn table_bytes(&self) -> usize {
        self.fields
            .iter()
            .map(|f| {
                let idx = match &f.index {
                    Index::Proto(_) => 512 * 4,
                    Index::SrcIp(i) | Index::DstIp(i) => i.starts.len() * 16 + i.classes.len() * 4,
                    Index::SrcPort(i) | Index::DstPort(i) | Index::Icmp(i) => i.starts.len() * 4 + i.classes.len() * 4,
                    Index::SrcTuple(t) | Index::DstTuple(t) => t.by_tuple.len() * 32,
                };
                idx + (f.bits.words.len() + f.bits.summary.len()) * 8
            })
            .sum()
    }

    /// The first term at or after `start` whose every predicate holds for `key`.
    #[inline]
    pub fn first_match(&self, key: &FlowKey, start: usize) -> Option<usize> {
        if start >= self.terms {
            return None;
        }
        if self.fields.is_empty() {
            return Some(start);
        }
        let mut rows: [(&[u64], &[u64]); MAX_FIELDS] = [(&[], &[]); MAX_FIELDS];
        let nf = self.fields.len();
        for (slot, f) in rows.iter_mut().zip(&self.fields) {
            let class = match &f.index {
                Index::Proto(t) => t[key.proto as usize & 511],
                Index::SrcIp(i) => i.class(key.src_ip),
                Index::DstIp(i) => i.class(key.dst_ip),
                Index::SrcPort(i) => i.class(key.src_port),
                Index::DstPort(i) => i.class(key.dst_port),
                Index::Icmp(i) => i.class(key.icmp),
                Index::SrcTuple(t) => {
                    let tk = (key.src_ip, (key.proto & 0xff) as u8, key.src_port as u16);
                    if key.src_port == NO_VALUE { t.default } else { *t.by_tuple.get(&tk).unwrap_or(&t.default) }
                }
                Index::DstTuple(t) => {
                    let tk = (key.dst_ip, (key.proto & 0xff) as u8, key.dst_port as u16);
                    if key.dst_port == NO_VALUE { t.default } else { *t.by_tuple.get(&tk).unwrap_or(&t.default) }
                }
            } as usize;
            *slot = (
                &f.bits.words[class * self.words..(class + 1) * self.words],
                &f.bits.summary[class * self.summary_words..(class + 1) * self.summary_words],
            );
        }
        let rows = &rows[..nf];
        let start_word = start / 64;
        let mut sw = start_word / 64;
        while sw < self.summary_words {
            let mut s = u64::MAX;
            for (_, sum) in rows {
                s &= sum[sw];
            }
            if sw == start_word / 64 {
                s &= u64::MAX << (start_word % 64);
            }
            while s != 0 {
                let w = sw * 64 + s.trailing_zeros() as usize;
                s &= s - 1;
                let mut x = u64::MAX;
                for (words, _) in rows {
                    x &= words[w];
                }
                if w == start_word {
                    x &= u64::MAX << (start % 64);
                }
                if x != 0 {
                    return Some(w * 64 + x.trailing_zeros() as usize);
                }
            }
            sw += 1;
        }
        None
    }
}

/// Builds one interval field: the elementary intervals of every term's set, each interval's class (the
/// set of terms holding there, deduplicated), and the classes' bit vectors. `None` sets are wildcards.
fn build_intervals(sets: &[Option<RangeSet>], min: u128, words: usize, summary_words: usize) -> (Vec<u128>, Vec<u32>, ClassBits) {
    // Toggle events: a term enters at `lo` and leaves at `hi + 1`.
    let mut events: Vec<(u128, u32)> = Vec::new();
    let mut current = vec![0u64; words];
    for (t, s) in sets.iter().enumerate() {
        match s {
            None => current[t / 64] |= 1 << (t % 64),
            Some(s) => {
                for &(lo, hi) in s.ranges() {
                    events.push((lo, t as u32));
                    if hi != u128::MAX {
                        events.push((hi + 1, t as u32));
                    }
                }
            }
        }
    }
    events.sort_unstable();
    // Zobrist hashing: each term has a random 64-bit code; a bit vector's hash is the XOR of its terms'
    // codes, updated in O(1) per toggle, so deduplicating classes costs no scan of the vector.
    let code = |t: u32| -> u64 { splitmix(t as u64 + 1) };
    let mut hash: u64 = 0;
    for (t, s) in sets.iter().enumerate() {
        if s.is_none() {
            hash ^= code(t as u32);
        }
    }
    let mut starts: Vec<u128> = Vec::new();
    let mut classes: Vec<u32> = Vec::new();
    let mut bits = ClassBits::default();
    let mut by_hash: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut intern = |current: &[u64], hash: u64, bits: &mut ClassBits| -> u32 {
        let candidates = by_hash.entry(hash).or_default();
        for &c in candidates.iter() {
            let c = c as usize;
            if bits.words[c * words..(c + 1) * words] == *current {
                return c as u32;
            }
        }
        let id = (bits.words.len() / words) as u32;
        bits.words.extend_from_slice(current);
        let mut summary = vec![0u64; summary_words];
        for (i, w) in current.iter().enumerate() {
            if *w != 0 {
                summary[i / 64] |= 1 << (i % 64);
            }
        }
        bits.summary.extend_from_slice(&summary);
        candidates.push(id);
        id
    };
    let mut i = 0;
    let mut at = min;
    loop {
        while i < events.len() && events[i].0 == at {
            let t = events[i].1;
            current[t as usize / 64] ^= 1 << (t % 64);
            hash ^= code(t);
            i += 1;
        }
        let class = intern(&current, hash, &mut bits);
        if classes.last() != Some(&class) {
            starts.push(at);
            classes.push(class);
        }
        if i >= events.len() {
            break;
        }
        at = events[i].0;
    }
    (starts, classes, bits)
}

fn build_tuples(conds: &[&TupleCond], words: usize, summary_words: usize) -> (TupleField, ClassBits) {
    let mut universe: Vec<TupleKey> = conds
        .iter()
        .flat_map(|c| match c {
            TupleCond::Any => Vec::new(),
            TupleCond::In(s) | TupleCond::NotIn(s) => s.iter().copied().collect(),
        })
        .collect();
    universe.sort_unstable();
    universe.dedup();
    let mut bits = ClassBits::default();
    let mut by_vector: HashMap<Vec<u64>, u32> = HashMap::new();
    let mut intern = |v: Vec<u64>, bits: &mut ClassBits| -> u32 {
        if let Some(&c) = by_vector.get(&v) {
            return c;
        }
        let id = (bits.words.len() / words) as u32;
        bits.words.extend_from_slice(&v);
        let mut summary = vec![0u64; summary_words];
        for (i, w) in v.iter().enumerate() {
            if *w != 0 {
                summary[i / 64] |= 1 << (i % 64);
            }
        }
        bits.summary.extend_from_slice(&summary);
        by_vector.insert(v, id);
        id
    };
    let vector_for = |tuple: Option<&TupleKey>| -> Vec<u64> {
        let mut v = vec![0u64; words];
        for (t, c) in conds.iter().enumerate() {
            let holds = match (c, tuple) {
                (TupleCond::Any, _) => true,
                (TupleCond::In(s), Some(k)) => s.contains(k),
                (TupleCond::In(_), None) => false,
                (TupleCond::NotIn(s), Some(k)) => !s.contains(k),
                (TupleCond::NotIn(_), None) => true,
            };
            if holds {
                v[t / 64] |= 1 << (t % 64);
            }
        }
        v
    };
    let default = intern(vector_for(None), &mut bits);
    let mut by_tuple = HashMap::with_capacity(universe.len());
    for k in &universe {
        let c = intern(vector_for(Some(k)), &mut bits);
        by_tuple.insert(*k, c);
    }
    (TupleField { by_tuple, default }, bits)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::terms::{Conditions, TermAction};
    use crate::resource::Action;

    fn term(c: Conditions) -> Term {
        Term { conditions: c, action: TermAction::Rule { rule: 0, action: Action::Allow, resume: 0 } }
    }

    fn key(dst_port: u32) -> FlowKey {
        FlowKey { proto: 6, src_ip: 1, dst_ip: 2, src_port: 1000, dst_port, icmp: NO_VALUE }
    }

    #[test]
    fn first_match_respects_order_and_resume_point() {
        let mut port80 = Conditions::always();
        port80.dst_port = Some(RangeSet::span(80, 80));
        let mut port_range = Conditions::always();
        port_range.dst_port = Some(RangeSet::span(1, 1000));
        let terms = vec![term(port80.clone()), term(port_range), term(Conditions::always()), term(port80)];
        let c = Classifier::build(&terms);
        assert_eq!(c.first_match(&key(80), 0), Some(0));
        assert_eq!(c.first_match(&key(80), 1), Some(1));
        assert_eq!(c.first_match(&key(80), 3), Some(3));
        assert_eq!(c.first_match(&key(5000), 0), Some(2));
        assert_eq!(c.first_match(&key(5000), 3), None);
        assert_eq!(c.first_match(&key(NO_VALUE), 0), Some(2));
    }

    #[test]
    fn many_terms_cross_word_and_summary_boundaries() {
        let mut terms = Vec::new();
        for i in 0..10_000u128 {
            let mut c = Conditions::always();
            c.dst_port = Some(RangeSet::span(i % 5000, i % 5000));
            terms.push(term(c));
        }
        let c = Classifier::build(&terms);
        assert_eq!(c.first_match(&key(4999), 0), Some(4999));
        assert_eq!(c.first_match(&key(4999), 5000), Some(9999));
        assert_eq!(c.first_match(&key(7000), 0), None);
    }
}
