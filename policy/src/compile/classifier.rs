//! The compiled classifier: first match over a program's terms by bit-vector intersection
//! (see docs/classifier.md for the choice).
//!
//! Each field (protocol, source and destination address, ports, ICMP type/code, named-port tuples) maps a
//! packet's value to an equivalence class: the set of terms whose predicate on that field holds, stored
//! once as a bit vector. A lookup finds each field's class (a binary search or a table read), then ANDs the
//! classes' bit vectors word by word from the resume point and stops at the first set bit. A second level of
//! summary bits (one per 64-bit word) skips runs of empty words, so a lookup touches
//! `fields × (terms / 4096 + a few)` words, not one per rule. No allocation, no lock.

use foldhash::{HashMap, HashMapExt, HashSet};
use std::sync::Arc;

use super::ranges::RangeSet;
use super::terms::{Conditions, Term, TupleCond, TupleKey, NO_VALUE, V4_BASE};

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

/// Interval index: sorted starts of the elementary intervals and the class of each. The first start is
/// the domain's minimum.
#[derive(Clone, Debug)]
struct Intervals<T> {
    starts: Vec<T>,
    classes: Vec<u32>,
}

impl<T: Copy + Ord> Intervals<T> {
    #[inline]
    fn class(&self, v: T) -> u32 {
        let i = self.starts.partition_point(|&s| s <= v);
        self.classes[i.saturating_sub(1)]
    }
}

/// An interval field in two parts, whose classes are ORed: the wide sets' and the narrow sets' (see
/// [`split_by_width`]).
#[derive(Clone, Debug)]
struct IntervalField<T> {
    wide: Intervals<T>,
    narrow: Intervals<T>,
}

/// An address field's index as built (or last folded): the two parts on the whole number line, and again
/// restricted to IPv4 with 4-byte starts, so the common IPv4 lookup searches a quarter of the bytes. Shared
/// by every version set-member patches make of the field.
#[derive(Debug)]
struct AddressIndex {
    all: IntervalField<u128>,
    v4: IntervalField<u32>,
    /// Overlays folded into it since the field was built.
    folds: u32,
}

impl AddressIndex {
    fn new(all: IntervalField<u128>, folds: u32) -> AddressIndex {
        let v4 = IntervalField { wide: v4_part(&all.wide), narrow: v4_part(&all.narrow) };
        AddressIndex { all, v4, folds }
    }

    #[inline]
    fn classes(&self, ip: u128) -> (u32, u32) {
        if ip >> 32 == V4_BASE >> 32 {
            self.v4.classes(ip as u32)
        } else {
            self.all.classes(ip)
        }
    }
}

/// An address field: its shared index, and the addresses whose classes set-member changes recomputed since
/// (`Classifier::patch_addresses`). A patch writes only the overlay, a few spans and classes, so patching a
/// large program costs what the change touches, not what the program holds; the overlay is folded into a
/// new index when it grows past [`MAX_OVERLAY`].
#[derive(Clone, Debug)]
struct AddressField {
    index: Arc<AddressIndex>,
    overlay: Overlay,
}

/// Sorted disjoint address spans `(first, last, class)`, looked up before the index: inside a span the class
/// (of `bits`, which holds no wildcards) is the field's whole class there, both parts of the index in one.
#[derive(Clone, Debug, Default)]
struct Overlay {
    spans: Vec<(u128, u128, u32)>,
    bits: ClassBits,
}

/// Spans or classes an overlay holds before a patch folds it into the index (the lookup's binary search
/// stays short and the classes replaced patches leave behind are dropped).
const MAX_OVERLAY: usize = if cfg!(test) { 6 } else { 64 };

/// Folds a field takes before its classifier is worn (`Classifier::worn`): each fold appends the overlay's
/// classes to the field's class bits and leaves those the new spans replaced unused, so the unused ones are
/// bounded by building the program again (at most 16 × 64 classes; at one change a second, every ~15 min
/// for a term every change patches).
const MAX_FOLDS: u32 = if cfg!(test) { 12 } else { 16 };

impl AddressField {
    fn new(all: IntervalField<u128>, folds: u32) -> AddressField {
        AddressField { index: Arc::new(AddressIndex::new(all, folds)), overlay: Overlay::default() }
    }

    /// The field's row for `ip`: the overlay's class where a span holds it, else the index's two parts.
    #[inline]
    fn row<'a>(&'a self, bits: &'a ClassBits, ip: u128, summary_words: usize) -> Row<'a> {
        if let Some(c) = self.overlay_class(ip) {
            return Row::of(bits, (&self.overlay.bits, c), (bits, 0), summary_words);
        }
        let (a, b) = self.index.classes(ip);
        Row::new(bits, a, b, summary_words)
    }

    /// The overlay's class at `ip`, if a span holds it.
    #[inline]
    fn overlay_class(&self, ip: u128) -> Option<u32> {
        let spans = &self.overlay.spans;
        let i = spans.partition_point(|s| s.0 <= ip);
        (i > 0 && spans[i - 1].1 >= ip).then(|| spans[i - 1].2)
    }

    /// The specific terms holding at `ip`, dense: the overlay's class there, else both parts of the index's.
    fn dense_at(&self, bits: &ClassBits, ip: u128, words: usize, summary_words: usize) -> Vec<u64> {
        if let Some(c) = self.overlay_class(ip) {
            return self.overlay.bits.dense(c, words, summary_words);
        }
        let (a, b) = self.index.all.classes(ip);
        let mut dense = bits.dense(a, words, summary_words);
        for (w, x) in dense.iter_mut().zip(bits.dense(b, words, summary_words)) {
            *w |= x;
        }
        dense
    }

    /// The overlay with the classes inside `region` recomputed: at each elementary interval there (bounded by
    /// the index's starts, the overlay's spans, the region's ends and the changed terms' ranges) the class
    /// that held before with each of `terms`' bits set to whether its new range holds there. Spans outside
    /// the region are kept.
    fn overlay_patched(
        &self,
        bits: &ClassBits,
        region: &RangeSet,
        terms: &[(u32, &RangeSet)],
        words: usize,
        summary_words: usize,
    ) -> Overlay {
        let old = &self.overlay;
        let mut classes =
            if old.bits.offset.is_empty() { ClassBits::new(words, summary_words, &[]) } else { old.bits.clone() };
        let mut spans: Vec<(u128, u128, u32)> = Vec::with_capacity(old.spans.len() + 2 * region.ranges().len());
        for &(lo, hi, c) in &old.spans {
            let outside = RangeSet::span(lo, hi).difference(region);
            spans.extend(outside.ranges().iter().map(|&(x, y)| (x, y, c)));
        }
        let mut made: HashMap<Vec<u64>, u32> = HashMap::new();
        for &(lo, hi) in region.ranges() {
            let mut points: Vec<u128> = vec![lo];
            for part in [&self.index.all.wide, &self.index.all.narrow] {
                let a = part.starts.partition_point(|&s| s <= lo);
                let b = part.starts.partition_point(|&s| s <= hi);
                points.extend_from_slice(&part.starts[a..b]);
            }
            let ends = old.spans.iter().map(|&(x, y, _)| (x, y));
            for (x, y) in ends.chain(terms.iter().flat_map(|(_, set)| set.ranges().iter().copied())) {
                if x > lo && x <= hi {
                    points.push(x);
                }
                if y >= lo && y < hi {
                    points.push(y + 1);
                }
            }
            points.sort_unstable();
            points.dedup();
            let first_new = spans.len();
            for (k, &p) in points.iter().enumerate() {
                let end = points.get(k + 1).map_or(hi, |next| next - 1);
                let mut dense = self.dense_at(bits, p, words, summary_words);
                for (t, set) in terms {
                    let bit = 1u64 << (t % 64);
                    if set.contains(p) {
                        dense[*t as usize / 64] |= bit;
                    } else {
                        dense[*t as usize / 64] &= !bit;
                    }
                }
                let class = intern_dense(&mut made, &mut classes, dense, summary_words);
                // Neighbours with one class are one span.
                let joins = spans.len() > first_new && spans.last().is_some_and(|last| last.2 == class);
                match spans.last_mut() {
                    Some(last) if joins => last.1 = end,
                    _ => spans.push((p, end, class)),
                }
            }
        }
        spans.sort_unstable_by_key(|s| s.0);
        Overlay { spans, bits: classes }
    }

    /// The field with its overlay written into a new index (and the overlay's classes into `bits`' copy):
    /// inside each span the wide part takes the span's class and the narrow part none.
    fn folded(&self, bits: &ClassBits, words: usize, summary_words: usize) -> (AddressField, Arc<ClassBits>) {
        let mut folded = bits.clone();
        let mut made: HashMap<Vec<u64>, u32> = HashMap::new();
        let mut class_of = |c: u32| {
            intern_dense(&mut made, &mut folded, self.overlay.bits.dense(c, words, summary_words), summary_words)
        };
        let wide: Vec<(u128, u128, u32)> = self.overlay.spans.iter().map(|&(x, y, c)| (x, y, class_of(c))).collect();
        let none: Vec<(u128, u128, u32)> = self.overlay.spans.iter().map(|&(x, y, _)| (x, y, 0)).collect();
        let all = IntervalField {
            wide: overwritten(&self.index.all.wide, &wide),
            narrow: overwritten(&self.index.all.narrow, &none),
        };
        (AddressField::new(all, self.index.folds + 1), Arc::new(folded))
    }
}

/// The class of `bits` whose specific terms are `dense`: class 0 when it has none, else the one `made` already
/// pushed for it, else a new one.
fn intern_dense(made: &mut HashMap<Vec<u64>, u32>, bits: &mut ClassBits, dense: Vec<u64>, summary_words: usize) -> u32 {
    if dense.iter().all(|w| *w == 0) {
        return 0;
    }
    *made.entry(dense).or_insert_with_key(|d| bits.push(d, summary_words))
}

/// `iv` with each of the sorted disjoint `spans` `(first, last, class)` taking its class over its addresses.
fn overwritten(iv: &Intervals<u128>, spans: &[(u128, u128, u32)]) -> Intervals<u128> {
    let mut out = Intervals {
        starts: Vec::with_capacity(iv.starts.len() + 2 * spans.len()),
        classes: Vec::with_capacity(iv.starts.len() + 2 * spans.len()),
    };
    // Neighbours with one class are one interval.
    let mut push = |start: u128, class: u32| {
        if out.classes.last() != Some(&class) {
            out.starts.push(start);
            out.classes.push(class);
        }
    };
    let mut i = 0;
    for &(lo, hi, class) in spans {
        while i < iv.starts.len() && iv.starts[i] < lo {
            push(iv.starts[i], iv.classes[i]);
            i += 1;
        }
        push(lo, class);
        while i < iv.starts.len() && iv.starts[i] <= hi {
            i += 1;
        }
        if hi < u128::MAX && iv.starts.get(i) != Some(&(hi + 1)) {
            push(hi + 1, iv.class(hi + 1));
        }
    }
    for (&s, &c) in iv.starts[i..].iter().zip(&iv.classes[i..]) {
        push(s, c);
    }
    out
}

/// The IPv4 slice of an interval index: the class at the first IPv4 address, then every start inside.
fn v4_part(i: &Intervals<u128>) -> Intervals<u32> {
    let lo = V4_BASE;
    let hi = V4_BASE | u32::MAX as u128;
    let mut starts = vec![0u32];
    let mut classes = vec![i.class(lo)];
    for (s, c) in i.starts.iter().zip(&i.classes) {
        if *s > lo && *s <= hi {
            starts.push((*s - lo) as u32);
            classes.push(*c);
        }
    }
    Intervals { starts, classes }
}

impl<T: Copy + Ord> IntervalField<T> {
    #[inline]
    fn classes(&self, v: T) -> (u32, u32) {
        (self.wide.class(v), self.narrow.class(v))
    }
}

#[derive(Clone, Debug, Default)]
struct TupleField {
    by_tuple: foldhash::HashMap<TupleKey, u32>,
    /// The class of tuples in no set.
    default: u32,
}

impl TupleField {
    #[inline]
    fn class(&self, ip: u128, proto: u16, port: u32) -> u32 {
        if port == NO_VALUE {
            return self.default;
        }
        *self.by_tuple.get(&(ip, (proto & 0xff) as u8, port as u16)).unwrap_or(&self.default)
    }
}

/// The bit vectors of one field's classes. Terms with no predicate on the field (wildcards) are in every
/// class, so they are kept once in `wild`; each class stores only its specific terms, as the non-zero words
/// of its vector found by rank: `sum` marks which words are non-zero, `rank` counts the marks before each
/// summary word, and `words` holds them in order. A lookup gets word `w` of a class in O(1).
#[derive(Clone, Debug, Default)]
struct ClassBits {
    wild: Vec<u64>,
    wild_sum: Vec<u64>,
    /// `summary_words` per class.
    sum: Vec<u64>,
    rank: Vec<u32>,
    /// Start of each class's words in `words`.
    offset: Vec<u32>,
    words: Vec<u64>,
}

impl ClassBits {
    fn new(words: usize, summary_words: usize, wildcards: &[bool]) -> ClassBits {
        let mut wild = vec![0u64; words];
        for (t, &w) in wildcards.iter().enumerate() {
            if w {
                wild[t / 64] |= 1 << (t % 64);
            }
        }
        let wild_sum = summary_of(&wild, summary_words);
        let mut bits = ClassBits { wild, wild_sum, ..ClassBits::default() };
        // Class 0 holds no specific term: the class of a part a field does not have.
        bits.push(&vec![0u64; words], summary_words);
        bits
    }

    /// Appends a class whose specific terms are `dense`; returns its id.
    fn push(&mut self, dense: &[u64], summary_words: usize) -> u32 {
        let id = self.offset.len() as u32;
        self.offset.push(self.words.len() as u32);
        let sum = summary_of(dense, summary_words);
        let mut count = 0u32;
        for s in &sum {
            self.rank.push(count);
            count += s.count_ones();
        }
        self.sum.extend_from_slice(&sum);
        self.words.extend(dense.iter().copied().filter(|w| *w != 0));
        id
    }

    /// The specific terms of class `c` as a dense vector of `words` words.
    fn dense(&self, c: u32, words: usize, summary_words: usize) -> Vec<u64> {
        let c = c as usize;
        let mut v = vec![0u64; words];
        let mut k = self.offset[c] as usize;
        for (w, slot) in v.iter_mut().enumerate() {
            if self.sum[c * summary_words + w / 64] & (1 << (w % 64)) != 0 {
                *slot = self.words[k];
                k += 1;
            }
        }
        v
    }

    fn bytes(&self) -> usize {
        (self.wild.len() + self.wild_sum.len() + self.sum.len() + self.words.len()) * 8
            + (self.rank.len() + self.offset.len()) * 4
    }
}

fn summary_of(dense: &[u64], summary_words: usize) -> Vec<u64> {
    let mut sum = vec![0u64; summary_words];
    for (i, w) in dense.iter().enumerate() {
        if *w != 0 {
            sum[i / 64] |= 1 << (i % 64);
        }
    }
    sum
}

/// One field's vector for a packet: its wildcards ORed with up to two stored classes (class 0 is empty), each
/// read from the class bits that hold it (an address overlay's classes are kept apart from the index's).
#[derive(Clone, Copy)]
struct Row<'a> {
    wild: &'a ClassBits,
    a: &'a ClassBits,
    b: &'a ClassBits,
    /// The two classes, and where each one's summary words start (= class × summary words): both kept, so a
    /// word's lookup does not divide to get one from the other.
    class_a: u32,
    class_b: u32,
    sum_a: u32,
    sum_b: u32,
}

impl<'a> Row<'a> {
    #[inline]
    fn new(bits: &'a ClassBits, a: u32, b: u32, summary_words: usize) -> Row<'a> {
        Row::of(bits, (bits, a), (bits, b), summary_words)
    }

    #[inline]
    fn of(
        wild: &'a ClassBits,
        (a, class_a): (&'a ClassBits, u32),
        (b, class_b): (&'a ClassBits, u32),
        summary_words: usize,
    ) -> Row<'a> {
        let sw = summary_words as u32;
        Row { wild, a, b, class_a, class_b, sum_a: class_a * sw, sum_b: class_b * sw }
    }

    #[inline]
    fn summary(&self, sw: usize) -> u64 {
        self.wild.wild_sum[sw] | self.a.sum[self.sum_a as usize + sw] | self.b.sum[self.sum_b as usize + sw]
    }

    /// Word `w` of class `class` of `b`, whose summary starts at `sum_at`.
    #[inline]
    fn class_word(b: &ClassBits, class: u32, sum_at: u32, w: usize) -> u64 {
        let (sw, bit) = (w / 64, w % 64);
        let at = sum_at as usize + sw;
        let marks = b.sum[at];
        if marks & (1 << bit) == 0 {
            return 0;
        }
        let before = (marks & ((1u64 << bit) - 1)).count_ones();
        b.words[(b.offset[class as usize] + b.rank[at] + before) as usize]
    }

    #[inline]
    fn word(&self, w: usize) -> u64 {
        self.wild.wild[w]
            | Row::class_word(self.a, self.class_a, self.sum_a, w)
            | Row::class_word(self.b, self.class_b, self.sum_b, w)
    }
}

#[derive(Clone, Debug)]
enum Index {
    Proto(Box<[u32; 512]>),
    SrcIp(AddressField),
    DstIp(AddressField),
    SrcPort(IntervalField<u32>),
    DstPort(IntervalField<u32>),
    Icmp(IntervalField<u32>),
    SrcTuple(TupleField),
    DstTuple(TupleField),
}

#[derive(Clone, Debug)]
struct Field {
    index: Index,
    /// Shared by the versions address patches make of the field (they add classes to the overlay only).
    bits: Arc<ClassBits>,
}

/// A compiled program's lookup structure.
#[derive(Clone, Debug, Default)]
pub struct Classifier {
    terms: usize,
    summary_words: usize,
    /// Only fields where some term is not a wildcard; the rest match everything. Shared, so a patch of one
    /// field's addresses copies that field only (`Classifier::patch_addresses`).
    fields: Vec<Arc<Field>>,
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

        let every_proto = RangeSet::span(0, 511);
        let proto: Vec<Option<&RangeSet>> =
            conds.iter().map(|c| (*c.proto != every_proto).then_some(&*c.proto)).collect();
        if proto.iter().any(Option::is_some) {
            let mut bits = ClassBits::new(words, summary_words, &wildcards_of(&proto));
            let parts = build_intervals(&proto, &mut bits, words, summary_words);
            let mut table = Box::new([0u32; 512]);
            for (v, slot) in table.iter_mut().enumerate() {
                *slot = parts.class(v as u128);
            }
            fields.push(Arc::new(Field { index: Index::Proto(table), bits: Arc::new(bits) }));
        }
        // Each interval field's sets are split into wide and narrow ones (see `split_by_width`), indexed
        // apart and ORed at lookup: wide sets are then not copied into every class narrow sets create.
        let interval_field =
            |get: fn(&Conditions) -> &Option<Arc<RangeSet>>| -> Option<(IntervalField<u128>, Arc<ClassBits>)> {
                let sets: Vec<Option<&RangeSet>> = conds.iter().map(|c| get(c).as_deref()).collect();
                if sets.iter().all(Option::is_none) {
                    return None;
                }
                let mut bits = ClassBits::new(words, summary_words, &wildcards_of(&sets));
                let (wide, narrow) = split_by_width(&sets);
                let wide = build_intervals(&wide, &mut bits, words, summary_words);
                let narrow = build_intervals(&narrow, &mut bits, words, summary_words);
                Some((IntervalField { wide, narrow }, Arc::new(bits)))
            };
        let small = |f: IntervalField<u128>| -> IntervalField<u32> {
            let narrow = |i: Intervals<u128>| Intervals {
                starts: i.starts.into_iter().map(|s| s.min(u32::MAX as u128) as u32).collect(),
                classes: i.classes,
            };
            IntervalField { wide: narrow(f.wide), narrow: narrow(f.narrow) }
        };
        if let Some((f, bits)) = interval_field(|c| &c.src_ip) {
            fields.push(Arc::new(Field { index: Index::SrcIp(AddressField::new(f, 0)), bits }));
        }
        if let Some((f, bits)) = interval_field(|c| &c.dst_ip) {
            fields.push(Arc::new(Field { index: Index::DstIp(AddressField::new(f, 0)), bits }));
        }
        if let Some((f, bits)) = interval_field(|c| &c.src_port) {
            fields.push(Arc::new(Field { index: Index::SrcPort(small(f)), bits }));
        }
        if let Some((f, bits)) = interval_field(|c| &c.dst_port) {
            fields.push(Arc::new(Field { index: Index::DstPort(small(f)), bits }));
        }
        if let Some((f, bits)) = interval_field(|c| &c.icmp) {
            fields.push(Arc::new(Field { index: Index::Icmp(small(f)), bits }));
        }
        let src_t: Vec<&TupleCond> = conds.iter().map(|c| &c.src_tuple).collect();
        if src_t.iter().any(|t| !matches!(t, TupleCond::Any)) {
            let (f, bits) = build_tuples(&src_t, words, summary_words);
            fields.push(Arc::new(Field { index: Index::SrcTuple(f), bits: Arc::new(bits) }));
        }
        let dst_t: Vec<&TupleCond> = conds.iter().map(|c| &c.dst_tuple).collect();
        if dst_t.iter().any(|t| !matches!(t, TupleCond::Any)) {
            let (f, bits) = build_tuples(&dst_t, words, summary_words);
            fields.push(Arc::new(Field { index: Index::DstTuple(f), bits: Arc::new(bits) }));
        }
        debug_assert!(fields.len() <= MAX_FIELDS);
        Classifier { terms: n, summary_words, fields }
    }

    pub fn terms(&self) -> usize {
        self.terms
    }

    /// This classifier with the address conditions of some terms changed inside `region` and nowhere else:
    /// `changed` holds (term, side: 0 source / 1 destination, the term's new addresses inside `region`), each
    /// term already having a condition on that side. The classes of the region's elementary intervals are
    /// recomputed from their old classes with those terms' bits set anew; the rest of the index is kept, so
    /// the result decides like a classifier built from the changed terms (docs/felix-driver.md).
    pub fn patch_addresses(&self, region: &RangeSet, changed: &[(u32, u8, Arc<RangeSet>)]) -> Classifier {
        let mut out = self.clone();
        let words = self.terms.div_ceil(64).max(1);
        let sw = self.summary_words;
        for side in [0u8, 1] {
            let terms: Vec<(u32, &RangeSet)> =
                changed.iter().filter(|c| c.1 == side).map(|(t, _, s)| (*t, &**s)).collect();
            if terms.is_empty() {
                continue;
            }
            let Some(field) =
                out.fields.iter_mut().find(|f| matches!((&f.index, side), (Index::SrcIp(_), 0) | (Index::DstIp(_), 1)))
            else {
                panic!("a term with an address condition on side {side} has no address field");
            };
            let (Index::SrcIp(address) | Index::DstIp(address)) = &field.index else { unreachable!("matched above") };
            // The index and its class bits are shared with the field patched; only the overlay is new.
            let (mut address, mut bits) = (address.clone(), field.bits.clone());
            if address.overlay.spans.len() >= MAX_OVERLAY || address.overlay.bits.offset.len() >= MAX_OVERLAY {
                (address, bits) = address.folded(&bits, words, sw);
            }
            address.overlay = address.overlay_patched(&bits, region, &terms, words, sw);
            let index = if side == 0 { Index::SrcIp(address) } else { Index::DstIp(address) };
            *field = Arc::new(Field { index, bits });
        }
        out
    }

    /// Whether an address field has taken [`MAX_FOLDS`] folds: the program is then built again instead of
    /// patched.
    pub fn worn(&self) -> bool {
        self.fields.iter().any(|f| match &f.index {
            Index::SrcIp(a) | Index::DstIp(a) => a.index.folds >= MAX_FOLDS,
            _ => false,
        })
    }

    /// Per field: its name, number of classes, and bytes held.
    pub fn field_sizes(&self) -> Vec<(&'static str, usize, usize)> {
        self.fields
            .iter()
            .map(|f| {
                let name = match &f.index {
                    Index::Proto(_) => "proto",
                    Index::SrcIp(_) => "src_ip",
                    Index::DstIp(_) => "dst_ip",
                    Index::SrcPort(_) => "src_port",
                    Index::DstPort(_) => "dst_port",
                    Index::Icmp(_) => "icmp",
                    Index::SrcTuple(_) => "src_tuple",
                    Index::DstTuple(_) => "dst_tuple",
                };
                (name, f.bits.offset.len(), f.bits.bytes())
            })
            .collect()
    }

    /// Bytes held by the lookup structures.
    pub fn table_bytes(&self) -> usize {
        self.fields
            .iter()
            .map(|f| {
                let idx = match &f.index {
                    Index::Proto(_) => 512 * 4,
                    Index::SrcIp(i) | Index::DstIp(i) => {
                        let index = &i.index;
                        (index.all.wide.starts.len() + index.all.narrow.starts.len()) * 20
                            + (index.v4.wide.starts.len() + index.v4.narrow.starts.len()) * 8
                            + std::mem::size_of_val(i.overlay.spans.as_slice())
                            + i.overlay.bits.bytes()
                    }
                    Index::SrcPort(i) | Index::DstPort(i) | Index::Icmp(i) => {
                        (i.wide.starts.len() + i.narrow.starts.len()) * 8
                    }
                    Index::SrcTuple(t) | Index::DstTuple(t) => t.by_tuple.len() * 32,
                };
                idx + f.bits.bytes()
            })
            .sum()
    }

    /// The first term at or after `start` whose every predicate holds for `key`.
    #[inline]
    pub fn first_match(&self, key: &FlowKey, start: usize) -> Option<usize> {
        self.prepare(key).first_match(start)
    }

    /// Resolves every field's class for `key` once; the result answers first-match queries from any
    /// resume point (Log and Pass resume without looking the fields up again).
    #[inline]
    pub fn prepare<'a>(&'a self, key: &FlowKey) -> Prepared<'a> {
        let mut prepared = Prepared::EMPTY;
        self.prepare_into(key, &mut prepared);
        prepared
    }

    /// [`Classifier::prepare`] into `out`, in place: an answer made and returned was copied into the
    /// caller's whole (over 300 bytes a walk).
    #[inline]
    pub fn prepare_into<'a>(&'a self, key: &FlowKey, out: &mut Prepared<'a>) {
        let sw_n = self.summary_words;
        out.fields = self.fields.len();
        out.terms = self.terms;
        out.summary_words = sw_n;
        for (slot, f) in out.rows.iter_mut().zip(&self.fields) {
            let (a, b) = match &f.index {
                Index::Proto(t) => (t[key.proto as usize & 511], 0),
                Index::SrcIp(i) => {
                    *slot = Some(i.row(&f.bits, key.src_ip, sw_n));
                    continue;
                }
                Index::DstIp(i) => {
                    *slot = Some(i.row(&f.bits, key.dst_ip, sw_n));
                    continue;
                }
                Index::SrcPort(i) => i.classes(key.src_port),
                Index::DstPort(i) => i.classes(key.dst_port),
                Index::Icmp(i) => i.classes(key.icmp),
                Index::SrcTuple(t) => (t.class(key.src_ip, key.proto, key.src_port), 0),
                Index::DstTuple(t) => (t.class(key.dst_ip, key.proto, key.dst_port), 0),
            };
            *slot = Some(Row::new(&f.bits, a, b, sw_n));
        }
    }
}

/// A packet's field classes, resolved: first-match queries from any resume point.
pub struct Prepared<'a> {
    rows: [Option<Row<'a>>; MAX_FIELDS],
    fields: usize,
    terms: usize,
    summary_words: usize,
}

impl std::fmt::Debug for Prepared<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").field("fields", &self.fields).field("terms", &self.terms).finish()
    }
}

impl Prepared<'_> {
    /// No fields resolved yet: what [`Classifier::prepare_into`] fills.
    pub const EMPTY: Prepared<'static> = Prepared { rows: [None; MAX_FIELDS], fields: 0, terms: 0, summary_words: 0 };

    /// The first term at or after `start` whose every predicate holds.
    #[inline]
    pub fn first_match(&self, start: usize) -> Option<usize> {
        if start >= self.terms {
            return None;
        }
        if self.fields == 0 {
            return Some(start);
        }
        let rows = &self.rows[..self.fields];
        let start_word = start / 64;
        let mut sw = start_word / 64;
        while sw < self.summary_words {
            let mut s = u64::MAX;
            for r in rows.iter().flatten() {
                s &= r.summary(sw);
            }
            if sw == start_word / 64 {
                s &= u64::MAX << (start_word % 64);
            }
            while s != 0 {
                let w = sw * 64 + s.trailing_zeros() as usize;
                s &= s - 1;
                let mut x = u64::MAX;
                for r in rows.iter().flatten() {
                    x &= r.word(w);
                    if x == 0 {
                        break;
                    }
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

fn wildcards_of(sets: &[Option<&RangeSet>]) -> Vec<bool> {
    sets.iter().map(Option::is_none).collect()
}

/// Indexes the elementary intervals of the `Some` sets: each interval's class is the set of those terms
/// holding there, deduplicated and stored in `bits`. `None` sets are left to the field's wildcards.
fn build_intervals(
    sets: &[Option<&RangeSet>],
    bits: &mut ClassBits,
    words: usize,
    summary_words: usize,
) -> Intervals<u128> {
    // Terms with the same set (the rules of one selector, say) enter and leave together: group them, so
    // the sweep has one pair of events per range of each distinct set.
    let mut group_of: HashMap<&RangeSet, usize> = HashMap::new();
    let mut groups: Vec<(&RangeSet, Vec<u32>, u64)> = Vec::new();
    for (t, s) in sets.iter().enumerate() {
        if let Some(s) = s {
            let g = *group_of.entry(*s).or_insert_with(|| {
                groups.push((*s, Vec::new(), 0));
                groups.len() - 1
            });
            groups[g].1.push(t as u32);
            // Zobrist hashing: each term has a random 64-bit code and a vector's hash is the XOR of its
            // terms' codes, updated in O(1) per group toggle, so finding a class costs no scan.
            groups[g].2 ^= splitmix(t as u64 + 1);
        }
    }
    // Toggle events: a group enters at `lo` and leaves at `hi + 1`.
    let mut events: Vec<(u128, u32)> = Vec::new();
    for (g, (set, _, _)) in groups.iter().enumerate() {
        for &(lo, hi) in set.ranges() {
            events.push((lo, g as u32));
            if hi != u128::MAX {
                events.push((hi + 1, g as u32));
            }
        }
    }
    events.sort_unstable();
    let mut current = vec![0u64; words];
    let mut hash: u64 = 0;
    let mut interner = Interner::default();
    let mut starts: Vec<u128> = Vec::new();
    let mut classes: Vec<u32> = Vec::new();
    let mut i = 0;
    let mut at = 0u128;
    loop {
        while i < events.len() && events[i].0 == at {
            let (_, terms, code) = &groups[events[i].1 as usize];
            for &t in terms {
                current[t as usize / 64] ^= 1 << (t % 64);
            }
            hash ^= code;
            i += 1;
        }
        let class = interner.intern(&current, hash, bits, summary_words);
        if classes.last() != Some(&class) {
            starts.push(at);
            classes.push(class);
        }
        if i >= events.len() {
            break;
        }
        at = events[i].0;
    }
    Intervals { starts, classes }
}

/// Splits a field's sets into (wide, narrow) halves: a set is wide when more than [`WIDE_SPAN`] of the
/// field's boundaries fall inside it. Each half keeps the other half's terms as wildcards.
fn split_by_width<'s>(sets: &[Option<&'s RangeSet>]) -> (Vec<Option<&'s RangeSet>>, Vec<Option<&'s RangeSet>>) {
    let distinct: HashSet<&RangeSet> = sets.iter().flatten().copied().collect();
    let mut bounds: Vec<u128> = distinct.iter().flat_map(|s| s.ranges().iter().map(|r| r.0)).collect();
    bounds.sort_unstable();
    bounds.dedup();
    let inside = |s: &RangeSet| -> usize {
        s.ranges()
            .iter()
            .map(|&(lo, hi)| bounds.partition_point(|&b| b <= hi) - bounds.partition_point(|&b| b < lo))
            .sum()
    };
    // A set with many ranges is wide whatever lies between them; only count for the others.
    let is_wide = |set: &RangeSet| set.ranges().len() * 2 > WIDE_SPAN || inside(set) > WIDE_SPAN;
    let mut wide = Vec::with_capacity(sets.len());
    let mut narrow = Vec::with_capacity(sets.len());
    for s in sets {
        match s {
            Some(set) if is_wide(set) => {
                wide.push(Some(*set));
                narrow.push(None);
            }
            other => {
                wide.push(None);
                narrow.push(*other);
            }
        }
    }
    (wide, narrow)
}

/// How many boundaries a set may contain and still count as narrow.
const WIDE_SPAN: usize = 8;

/// Finds or adds a class by its vector of specific terms.
#[derive(Default)]
struct Interner {
    by_hash: HashMap<u64, Vec<u32>>,
}

impl Interner {
    fn intern(&mut self, dense: &[u64], hash: u64, bits: &mut ClassBits, summary_words: usize) -> u32 {
        if dense.iter().all(|w| *w == 0) {
            return 0;
        }
        let candidates = self.by_hash.entry(hash).or_default();
        for &c in candidates.iter() {
            if same_class(bits, c, dense, summary_words) {
                return c;
            }
        }
        let id = bits.push(dense, summary_words);
        candidates.push(id);
        id
    }
}

/// Whether stored class `c` holds exactly the specific terms of `dense`.
fn same_class(bits: &ClassBits, c: u32, dense: &[u64], summary_words: usize) -> bool {
    let c = c as usize;
    let sum = &bits.sum[c * summary_words..(c + 1) * summary_words];
    let mut k = bits.offset[c] as usize;
    for (w, &word) in dense.iter().enumerate() {
        let marked = sum[w / 64] & (1 << (w % 64)) != 0;
        if marked != (word != 0) {
            return false;
        }
        if marked {
            if bits.words[k] != word {
                return false;
            }
            k += 1;
        }
    }
    true
}

fn build_tuples(conds: &[&TupleCond], words: usize, summary_words: usize) -> (TupleField, ClassBits) {
    // Rules naming the same ports of the same peers share one set (`SetResolver::named_ports`): walk each
    // distinct set once.
    let mut distinct: HashMap<*const std::collections::BTreeSet<TupleKey>, usize> = HashMap::new();
    let mut sets: Vec<&std::collections::BTreeSet<TupleKey>> = Vec::new();
    let set_of: Vec<Option<usize>> = conds
        .iter()
        .map(|c| match c {
            TupleCond::Any => None,
            TupleCond::In(s) | TupleCond::NotIn(s) => Some(*distinct.entry(Arc::as_ptr(s)).or_insert_with(|| {
                sets.push(s);
                sets.len() - 1
            })),
        })
        .collect();
    let mut universe: Vec<TupleKey> = sets.iter().flat_map(|s| s.iter().copied()).collect();
    universe.sort_unstable();
    universe.dedup();
    let wildcards: Vec<bool> = conds.iter().map(|c| matches!(c, TupleCond::Any)).collect();
    let mut bits = ClassBits::new(words, summary_words, &wildcards);
    let mut interner = Interner::default();
    // The class of a tuple in no set: every NotIn term holds.
    let mut default_vec = vec![0u64; words];
    let mut default_hash = 0u64;
    // Which terms' sets hold each tuple of the universe (by universe index): walking the sets once costs
    // their total size, where asking every set about every tuple cost universe × terms lookups.
    let members: Vec<Vec<u32>> = sets
        .iter()
        .map(|s| {
            s.iter().map(|k| universe.binary_search(k).expect("every set member is in the universe") as u32).collect()
        })
        .collect();
    let mut holders: Vec<Vec<u32>> = vec![Vec::new(); universe.len()];
    for (t, c) in conds.iter().enumerate() {
        let Some(set) = set_of[t] else { continue };
        if matches!(c, TupleCond::NotIn(_)) {
            default_vec[t / 64] |= 1 << (t % 64);
            default_hash ^= splitmix(t as u64 + 1);
        }
        for &at in &members[set] {
            holders[at as usize].push(t as u32);
        }
    }
    let default = interner.intern(&default_vec, default_hash, &mut bits, summary_words);
    let mut by_tuple = HashMap::with_capacity_and_hasher(universe.len(), foldhash::fast::RandomState::default());
    let mut v = vec![0u64; words];
    for (k, terms) in universe.iter().zip(&holders) {
        // A holder flips its term: In starts clear and holds, NotIn starts set and stops holding.
        v.copy_from_slice(&default_vec);
        let mut h = default_hash;
        for &t in terms {
            v[t as usize / 64] ^= 1 << (t % 64);
            h ^= splitmix(t as u64 + 1);
        }
        let c = interner.intern(&v, h, &mut bits, summary_words);
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
        port80.dst_port = Some(Arc::new(RangeSet::span(80, 80)));
        let mut port_range = Conditions::always();
        port_range.dst_port = Some(Arc::new(RangeSet::span(1, 1000)));
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
            c.dst_port = Some(Arc::new(RangeSet::span(i % 5000, i % 5000)));
            terms.push(term(c));
        }
        let c = Classifier::build(&terms);
        assert_eq!(c.first_match(&key(4999), 0), Some(4999));
        assert_eq!(c.first_match(&key(4999), 5000), Some(9999));
        assert_eq!(c.first_match(&key(7000), 0), None);
    }
}
