//! The policy compiler: resources and the node's endpoints → one first-match program per (endpoint,
//! direction, stage), each with a classifier that does not scan rules (docs/classifier.md).
//!
//! Programs are deduplicated and cached by what they were built from, so a change to one policy, endpoint
//! or set member rebuilds only the programs it touches; the rest are shared with the previous tables.

pub mod classifier;
mod deps;
pub mod linear;
pub mod ranges;
pub mod terms;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use classifier::{Classifier, FlowKey, Prepared};
use terms::{flatten, ip_key, FlatProgram, SetResolver, TermAction, NO_VALUE};

use crate::net::IpFamily;
use crate::packet::PacketHeader;
use crate::resolve::{Direction, ResolvedNode, Stage};
use crate::resource::Action;

/// How a program's evaluation ended: the rule by its index in [`FlatProgram::rules`], the tier that ended
/// in a drop by its index in [`FlatProgram::tiers`].
pub type ProgramEnd = crate::walk_end::WalkEnd<u32, u32>;

/// One compiled (endpoint, direction, stage) walk.
#[derive(Debug)]
pub struct Program {
    /// The walk as flattened. Its address conditions are as built: those patched since are in `patches`.
    pub flat: Arc<FlatProgram>,
    pub classifier: Classifier,
    /// The program's Log rules in walk order: the walk reports the ones it passes without matching when
    /// asked ([`Program::evaluate_reaching`]).
    log_rules: Vec<LogRule>,
    /// Address conditions patched in since the program was built ([`Program::patch_addresses`]).
    patches: Arc<AddressPatches>,
    /// Policies whose rules changed since the program was built, walked in place of their old rules
    /// ([`ProgramCache::patch_policies`]), in base term order. Empty for a program as built.
    splices: Vec<Arc<Splice>>,
}

/// One policy's new rules in a built program: the base's terms `terms.0..terms.1` and rules
/// `rules.0..rules.1` (the policy's old rules) are skipped, and `flat` — the new rules flattened on their
/// own — is walked in their place by a linear scan (a policy has few terms; the base's classifier stays as
/// built). The program numbers the new terms after the base's (`base terms + 1 + offset`: the base's own
/// end, `base terms`, stays "the end") and the new rules after the base's (`base rules + offset`), in
/// splice order.
#[derive(Debug)]
struct Splice {
    owner: crate::verdict::RuleOwner,
    /// The walk's direction and stage (what re-flattening the policy after a set change needs).
    direction: Direction,
    stage: Stage,
    terms: (u32, u32),
    rules: (u32, u32),
    /// Numbered from 0; a Log rule resumes at its next local term (or, past the last, at `terms.1`), a Pass
    /// rule at the base's next section (a base term index).
    flat: FlatProgram,
    /// `flat`'s term actions in the program's numbering.
    actions: Vec<TermAction>,
    term_offset: u32,
    rule_offset: u32,
    /// How far the splices before this one moved the walk's later terms and rules (new minus replaced).
    term_shift: i64,
    rule_shift: i64,
    /// The base's first rule of the next section (where a Pass rule's walk resumes reporting Log rules).
    pass_next_rule: u32,
}

/// A Log rule where the walk meets it: its place among the walk's rules and the walk's term where its terms
/// end (both as the walk orders them: a splice's rules stand where the rules they replace stood), its
/// index in the program's numbering, and its families.
#[derive(Clone, Copy, Debug)]
struct LogRule {
    order: u32,
    term_end: u32,
    rule: u32,
    families: u8,
}

/// Splices a program takes before a change to its policies rebuilds it instead (each costs a linear scan).
const MAX_SPLICES: usize = 4;

/// Where a spliced walk stands: at a base term, or at a term of a splice's new rules.
enum At {
    Base(usize),
    Splice(usize, usize),
}

/// Per (term, side: 0 source / 1 destination), the patches it took, merged: the addresses their regions
/// cover, and the term's addresses inside them (outside every region the term's built condition holds).
/// Merged, not listed, so a term patched on every change of a week holds what its set holds now, not its
/// history.
type AddressPatches = HashMap<(u32, u8), (Arc<ranges::RangeSet>, Arc<ranges::RangeSet>)>;

/// What one address change works out per rule side (`terms::AddrSource`, shared by the programs a rule's
/// terms were copied into): whether the side reads a changed set, and if so its addresses inside the change's
/// region. Keyed by the source's address; the `Arc` pins it for the memo's life.
pub type SourceMemo = HashMap<*const terms::AddrSource, (Arc<terms::AddrSource>, Option<Arc<ranges::RangeSet>>)>;

/// The hasher of what a compile keys and fingerprints (program keys, rule fingerprints, selector hashes):
/// fixed-seeded, so a value hashes alike in every compile and run, and fast (a program's key hashes the
/// versions of thousands of atoms; SipHash was a fifth of an IP set patch).
pub(crate) fn hasher() -> impl Hasher {
    foldhash::fast::FixedState::with_seed(0x6361_6c78_6470).build_hasher()
}

impl Program {
    pub fn build(flat: FlatProgram) -> Program {
        let classifier = Classifier::build(&flat.terms);
        Program::build_from(Arc::new(flat), classifier)
    }

    /// A program of a flattened walk and its classifier.
    fn build_from(flat: Arc<FlatProgram>, classifier: Classifier) -> Program {
        // In rule order, which is term order (`terms::flatten` pushes each rule's terms after it).
        let log_rules: Vec<LogRule> = (0..flat.rules.len() as u32)
            .filter(|&r| flat.rules[r as usize].action == Action::Log)
            .map(|r| {
                let o = &flat.rules[r as usize];
                LogRule { order: r, term_end: o.term_end, rule: r, families: o.families }
            })
            .collect();
        Program { flat, classifier, log_rules, patches: Arc::default(), splices: Vec::new() }
    }

    /// A rule of the program by its index in the walk's numbering (the base's rules, then the splices').
    #[inline]
    pub fn rule(&self, r: u32) -> Option<&terms::RuleOrigin> {
        let base = self.flat.rules.len() as u32;
        if r < base || self.splices.is_empty() {
            return self.flat.rules.get(r as usize);
        }
        let at = r - base;
        let s = self.splices.iter().find(|s| at >= s.rule_offset && at - s.rule_offset < s.flat.rules.len() as u32)?;
        s.flat.rules.get((at - s.rule_offset) as usize)
    }

    /// Every rule the program can report (the base's, including rules a splice replaced, and the splices').
    pub fn rules(&self) -> impl Iterator<Item = &terms::RuleOrigin> + '_ {
        self.flat.rules.iter().chain(self.splices.iter().flat_map(|s| s.flat.rules.iter()))
    }

    /// How many terms the walk has (a splice's replaced terms not counted).
    pub fn term_count(&self) -> usize {
        let replaced: usize = self.splices.iter().map(|s| (s.terms.1 - s.terms.0) as usize).sum();
        let added: usize = self.splices.iter().map(|s| s.flat.terms.len()).sum();
        self.flat.terms.len() - replaced + added
    }

    /// Term `i`'s action, in the walk's numbering.
    #[inline]
    fn action(&self, i: usize) -> TermAction {
        match self.flat.terms.get(i) {
            Some(t) => t.action,
            None => {
                let at = (i - self.flat.terms.len() - 1) as u32;
                let s = self
                    .splices
                    .iter()
                    .find(|s| at >= s.term_offset && at - s.term_offset < s.actions.len() as u32)
                    .expect("a term index the walk handed out");
                s.actions[(at - s.term_offset) as usize]
            }
        }
    }

    /// The first term at or after `start` (the walk's numbering) that holds, walking each splice's new rules
    /// in place of the base terms it replaces: `base_first(p, limit)` is the first base term in `p..limit`
    /// that holds (it may answer one past `limit`, which is ignored), `holds` tests a splice's term.
    #[inline]
    fn spliced_first(
        &self,
        start: usize,
        base_first: impl Fn(usize, usize) -> Option<usize>,
        holds: impl Fn(&terms::Conditions) -> bool,
    ) -> Option<usize> {
        let n = self.flat.terms.len();
        let mut at = if start <= n {
            At::Base(start)
        } else {
            let local = (start - n - 1) as u32;
            let s = self
                .splices
                .iter()
                .position(|s| local >= s.term_offset && local - s.term_offset < s.actions.len() as u32)?;
            At::Splice(s, (local - self.splices[s].term_offset) as usize)
        };
        loop {
            at = match at {
                At::Base(p) => {
                    // The first splice not behind `p` (ranges are sorted, disjoint and not empty).
                    let s = self.splices.partition_point(|s| s.terms.1 as usize <= p);
                    match self.splices.get(s) {
                        Some(sp) if sp.terms.0 as usize <= p => At::Splice(s, 0),
                        next => {
                            let limit = next.map_or(n, |sp| sp.terms.0 as usize);
                            if let Some(m) = base_first(p, limit).filter(|&m| m < limit) {
                                return Some(m);
                            }
                            next?;
                            At::Splice(s, 0)
                        }
                    }
                }
                At::Splice(s, j) => {
                    let sp = &self.splices[s];
                    if let Some(k) = (j..sp.flat.terms.len()).find(|&k| holds(&sp.flat.terms[k].conditions)) {
                        return Some(n + 1 + (sp.term_offset as usize) + k);
                    }
                    At::Base(sp.terms.1 as usize)
                }
            }
        }
    }

    /// This program with the rules of `policies` (`(owner, new rules flattened on their own with rule ids
    /// given, Pass resuming at 0)`) walked in place of their old ones, without rebuilding the classifier.
    /// `None` when it cannot be a splice — a policy's old rules have no terms here, or the program has taken
    /// [`MAX_SPLICES`]: build it instead.
    fn splice(
        &self,
        policies: Vec<(crate::verdict::RuleOwner, FlatProgram)>,
        direction: Direction,
        stage: Stage,
    ) -> Option<Program> {
        let mut splices: Vec<(crate::verdict::RuleOwner, (u32, u32), (u32, u32), FlatProgram, u32)> = Vec::new();
        let mut kept: Vec<&Arc<Splice>> = self.splices.iter().collect();
        for (owner, mut flat) in policies {
            // A policy spliced before keeps its place; otherwise its rules are a run of the base's.
            let (terms, rules) = match kept.iter().position(|s| s.owner == owner) {
                Some(i) => {
                    let old = kept.remove(i);
                    (old.terms, old.rules)
                }
                None => {
                    let first = self.flat.rules.iter().position(|r| r.owner == owner)?;
                    let len = self.flat.rules[first..].iter().take_while(|r| r.owner == owner).count();
                    let last = &self.flat.rules[first + len - 1];
                    let terms = (self.flat.rules[first].term_start, last.term_end);
                    (terms, (first as u32, (first + len) as u32))
                }
            };
            if terms.0 == terms.1 {
                return None;
            }
            // Pass resumes at the base's next section: after the tier's remaining rules and its end.
            let tier = match &owner {
                crate::verdict::RuleOwner::Policy { tier, .. } => tier,
                _ => return None,
            };
            let mut next = terms.1;
            let mut next_rule = rules.1;
            for r in &self.flat.rules[rules.1 as usize..] {
                match &r.owner {
                    crate::verdict::RuleOwner::Policy { tier: t, .. } if t == tier => {
                        next = next.max(r.term_end);
                        next_rule += 1;
                    }
                    _ => break,
                }
            }
            // The tier's own end (a tier that ends in Pass has none; the next tier's may follow at once).
            if let Some(TermAction::EndOfTier { tier: t }) = self.flat.terms.get(next as usize).map(|t| t.action) {
                if self.flat.tiers.get(t as usize) == Some(tier) {
                    next += 1;
                }
            }
            for t in &mut flat.terms {
                if let TermAction::Rule { action: Action::Pass, resume, .. } = &mut t.action {
                    *resume = next;
                }
            }
            splices.push((owner, terms, rules, flat, next_rule));
        }
        if kept.len() + splices.len() > MAX_SPLICES {
            return None;
        }
        let mut all: Vec<(crate::verdict::RuleOwner, (u32, u32), (u32, u32), FlatProgram, u32)> =
            kept.iter().map(|s| (s.owner.clone(), s.terms, s.rules, s.flat.clone(), s.pass_next_rule)).collect();
        all.extend(splices);
        all.sort_by_key(|(_, terms, ..)| *terms);
        let (n, base_rules) = (self.flat.terms.len() as u32, self.flat.rules.len() as u32);
        let (mut term_offset, mut rule_offset) = (0u32, 0u32);
        let (mut term_shift, mut rule_shift) = (0i64, 0i64);
        let mut out = Vec::with_capacity(all.len());
        for (owner, terms, rules, flat, pass_next_rule) in all {
            let len = flat.terms.len() as u32;
            let actions = flat
                .terms
                .iter()
                .map(|t| match t.action {
                    TermAction::Rule { rule, action, resume } => TermAction::Rule {
                        rule: base_rules + rule_offset + rule,
                        action,
                        resume: match action {
                            Action::Pass => resume,
                            _ if resume < len => n + 1 + term_offset + resume,
                            _ => terms.1,
                        },
                    },
                    other => other,
                })
                .collect();
            let (tl, rl) = (len, flat.rules.len() as u32);
            let shifts = (tl as i64 - (terms.1 - terms.0) as i64, rl as i64 - (rules.1 - rules.0) as i64);
            out.push(Arc::new(Splice {
                owner,
                direction,
                stage,
                terms,
                rules,
                flat,
                actions,
                term_offset,
                rule_offset,
                term_shift,
                rule_shift,
                pass_next_rule,
            }));
            term_offset += tl;
            rule_offset += rl;
            term_shift += shifts.0;
            rule_shift += shifts.1;
        }
        let mut program = Program {
            flat: self.flat.clone(),
            classifier: self.classifier.clone(),
            log_rules: Vec::new(),
            patches: self.patches.clone(),
            splices: out,
        };
        // The Log rules in walk order: the base's outside the replaced runs, and the splices'.
        let replaced = |r: u32| program.splices.iter().any(|s| (s.rules.0..s.rules.1).contains(&r));
        let mut logs: Vec<LogRule> = self
            .flat
            .rules
            .iter()
            .enumerate()
            .filter(|(r, o)| o.action == Action::Log && !replaced(*r as u32))
            .map(|(r, o)| LogRule {
                order: program.rule_order(r as u32),
                term_end: program.term_order(o.term_end as usize) as u32,
                rule: r as u32,
                families: o.families,
            })
            .collect();
        for (s, sp) in program.splices.iter().enumerate() {
            for (k, o) in sp.flat.rules.iter().enumerate().filter(|(_, o)| o.action == Action::Log) {
                let rule = base_rules + sp.rule_offset + k as u32;
                let start = program.splice_start(s);
                logs.push(LogRule {
                    order: program.rule_order(rule),
                    term_end: (start + o.term_end as usize) as u32,
                    rule,
                    families: o.families,
                });
            }
        }
        logs.sort_by_key(|l| l.order);
        program.log_rules = logs;
        Some(program)
    }

    /// The program as built, with the address patches since and without its splices.
    fn base(&self) -> Program {
        let mut base = Program::build_from(self.flat.clone(), self.classifier.clone());
        base.patches = self.patches.clone();
        base
    }

    /// Where splice `s`'s first term stands in the walk's order.
    fn splice_start(&self, s: usize) -> usize {
        let sp = &self.splices[s];
        (sp.terms.0 as i64 + sp.term_shift) as usize
    }

    /// Where term `i` (the program's numbering) stands in the walk's order (the identity without splices).
    #[inline]
    fn term_order(&self, i: usize) -> usize {
        if self.splices.is_empty() {
            return i;
        }
        let n = self.flat.terms.len();
        if i > n {
            let at = (i - n - 1) as u32;
            let s = self
                .splices
                .iter()
                .position(|s| at >= s.term_offset && at - s.term_offset < s.actions.len() as u32)
                .expect("a term index the walk handed out");
            return self.splice_start(s) + (at - self.splices[s].term_offset) as usize;
        }
        let s = self.splices.partition_point(|sp| sp.terms.1 as usize <= i);
        let shift = match self.splices.get(s) {
            Some(sp) => sp.term_shift,
            None => {
                let last = self.splices.last().expect("splices");
                last.term_shift + last.flat.terms.len() as i64 - (last.terms.1 - last.terms.0) as i64
            }
        };
        (i as i64 + shift) as usize
    }

    /// Where rule `r` (the program's numbering) stands among the walk's rules (the identity without splices).
    #[inline]
    fn rule_order(&self, r: u32) -> u32 {
        if self.splices.is_empty() {
            return r;
        }
        let base = self.flat.rules.len() as u32;
        if r >= base {
            let at = r - base;
            let sp = self
                .splices
                .iter()
                .find(|s| at >= s.rule_offset && at - s.rule_offset < s.flat.rules.len() as u32)
                .expect("a rule index the walk handed out");
            return (sp.rules.0 as i64 + sp.rule_shift) as u32 + (at - sp.rule_offset);
        }
        let s = self.splices.partition_point(|sp| sp.rules.1 <= r);
        let shift = match self.splices.get(s) {
            Some(sp) => sp.rule_shift,
            None => {
                let last = self.splices.last().expect("splices");
                last.rule_shift + last.flat.rules.len() as i64 - (last.rules.1 - last.rules.0) as i64
            }
        };
        (r as i64 + shift) as u32
    }

    /// Where the walk's Log reporting resumes after Pass rule `rule`: the next section's first rule.
    #[inline]
    fn pass_next_rule(&self, rule: u32) -> u32 {
        let base = self.flat.rules.len() as u32;
        let next = if rule < base {
            let at = self.flat.pass_resume_rules.partition_point(|&(r, _)| r < rule);
            match self.flat.pass_resume_rules.get(at) {
                Some(&(_, next)) => next,
                None => return u32::MAX,
            }
        } else {
            let at = rule - base;
            match self.splices.iter().find(|s| at >= s.rule_offset && at - s.rule_offset < s.flat.rules.len() as u32) {
                Some(sp) => sp.pass_next_rule,
                None => return u32::MAX,
            }
        };
        self.rule_order(next)
    }

    /// Whether term `i`'s conditions, with the patches, hold for `key` (the linear scan's test).
    fn term_holds(&self, i: usize, key: &FlowKey) -> bool {
        let c = &self.flat.terms[i].conditions;
        if self.patches.is_empty() {
            return c.holds(key);
        }
        let address = |side: u8, ip: u128, built: &Option<Arc<ranges::RangeSet>>| -> bool {
            match self.patches.get(&(i as u32, side)) {
                Some((covered, inside)) if covered.contains(ip) => inside.contains(ip),
                _ => built.as_ref().is_none_or(|s| s.contains(ip)),
            }
        };
        address(0, key.src_ip, &c.src_ip) && address(1, key.dst_ip, &c.dst_ip) && c.holds_apart_from_addresses(key)
    }

    /// This program after the address sets of some selectors changed inside `region` (and only there):
    /// `addresses(sel)` gives a selector's new addresses inside `region`, `changed` says which selectors'
    /// sets changed. The terms reading a changed selector get their new addresses inside the region and the
    /// classifier is patched, not rebuilt (`Classifier::patch_addresses`); the flattened walk is shared.
    /// `memo` carries what one change works out per rule side across the programs it patches.
    /// `None` when the change cannot be a patch: the program has no term for a rule alternative a changed
    /// set left empty when it was built and the change falls inside that alternative's addresses, or its
    /// classifier is worn (`Classifier::worn`: the classes its folds left unused are bounded by building it
    /// again).
    pub fn patch_addresses(
        &self,
        region: &ranges::RangeSet,
        changed: &[&crate::selector::Selector],
        memo: &mut SourceMemo,
        mut addresses: impl FnMut(&crate::selector::Selector) -> ranges::RangeSet,
    ) -> Option<Program> {
        // A splice's terms were made from the sets as they were: rebuilt, the program reads them afresh.
        if !self.splices.is_empty() {
            return None;
        }
        let changed: Vec<(u64, &crate::selector::Selector)> =
            changed.iter().map(|&s| (terms::selector_hash(s), s)).collect();
        let reads = |s: &terms::AddrSource| s.reads(&changed);
        let mut inside_of = |source: &Arc<terms::AddrSource>, addresses: &mut dyn FnMut(&_) -> _| {
            let (_, inside) = memo
                .entry(Arc::as_ptr(source))
                .or_insert_with(|| (source.clone(), reads(source).then(|| Arc::new(source.within(region, addresses)))));
            inside.clone()
        };
        for s in changed.iter().flat_map(|(h, _)| self.flat.dropped.get(h).into_iter().flatten()) {
            if reads(s) && s.fixed.overlaps(region) {
                return None;
            }
        }
        if self.classifier.worn() {
            return None;
        }
        let mut patches = (*self.patches).clone();
        let mut patched: Vec<(u32, u8, Arc<ranges::RangeSet>)> = Vec::new();
        // A rule side's source is shared by every term its alternatives multiply into, and by every program
        // the rule's terms were copied into: whether it reads a changed selector, and its addresses inside
        // the region, are worked out once per source and change.
        let mut reading: Vec<&(u32, u8, Arc<terms::AddrSource>)> =
            changed.iter().flat_map(|(h, _)| self.flat.addr_sources.get(h).into_iter().flatten()).collect();
        // In term order, each (term, side) once (a side reading two changed selectors is listed under both).
        reading.sort_unstable_by_key(|(t, side, _)| (*t, *side));
        reading.dedup_by_key(|(t, side, _)| (*t, *side));
        for (t, side, source) in reading {
            let Some(inside) = inside_of(source, &mut addresses) else { continue };
            let merged = match patches.get(&(*t, *side)) {
                Some((covered, was)) => (covered.union(region), was.difference(region).union(&inside)),
                None => (region.clone(), (*inside).clone()),
            };
            patches.insert((*t, *side), (Arc::new(merged.0), Arc::new(merged.1)));
            patched.push((*t, *side, inside));
        }
        let classifier = self.classifier.patch_addresses(region, &patched);
        Some(Program {
            flat: self.flat.clone(),
            classifier,
            log_rules: self.log_rules.clone(),
            patches: Arc::new(patches),
            splices: Vec::new(),
        })
    }

    /// [`Program::evaluate`] with the linear scan instead of the classifier (the benchmark baseline).
    pub fn evaluate_linear(&self, key: &FlowKey, mut on_log: impl FnMut(u32)) -> ProgramEnd {
        if !self.splices.is_empty() {
            let base = |start: usize, limit: usize| (start..limit).find(|&i| self.term_holds(i, key));
            let first = |start: usize| self.spliced_first(start, base, |c| c.holds(key));
            return self.run(first, None, |r, _| on_log(r));
        }
        let first = |start: usize| (start..self.flat.terms.len()).find(|&i| self.term_holds(i, key));
        self.run(first, None, |r, _| on_log(r))
    }

    /// Runs the program: first match from the start, Log rules that match reported to `on_log` and
    /// skipped, Pass resuming at the next section. No allocation.
    #[inline]
    pub fn evaluate(&self, key: &FlowKey, mut on_log: impl FnMut(u32)) -> ProgramEnd {
        let mut prepared = Prepared::EMPTY;
        self.classifier.prepare_into(key, &mut prepared);
        let on_log = |r, matched| {
            if matched {
                on_log(r)
            }
        };
        if !self.splices.is_empty() {
            let base = |start: usize, _| prepared.first_match(start);
            return self.run(|start| self.spliced_first(start, base, |c| c.holds(key)), None, on_log);
        }
        self.run(|start| prepared.first_match(start), None, on_log)
    }

    /// [`Program::evaluate`], reporting every Log rule of the packet's family the walk passes as
    /// `on_log(rule, matched)`: a rate-limited LOG rule takes a token from any packet that reaches it
    /// (semantics §9.1). Only programs with Log rules do more work.
    #[inline]
    pub fn evaluate_reaching(&self, key: &FlowKey, on_log: impl FnMut(u32, bool)) -> ProgramEnd {
        let mut prepared = Prepared::EMPTY;
        self.classifier.prepare_into(key, &mut prepared);
        let family = if key.proto >= 256 { 0b10 } else { 0b01 };
        if !self.splices.is_empty() {
            let base = |start: usize, _| prepared.first_match(start);
            return self.run(|start| self.spliced_first(start, base, |c| c.holds(key)), Some(family), on_log);
        }
        self.run(|start| prepared.first_match(start), Some(family), on_log)
    }

    /// Reports the Log rules of `family` from rule `first_rule` on whose terms end by term `stop` (passed
    /// without a match). Rules are in program order, so their terms are too.
    #[inline]
    fn passed_logs(&self, first_rule: u32, stop: usize, family: u8, on_log: &mut impl FnMut(u32, bool)) {
        let from = self.log_rules.partition_point(|l| l.order < first_rule);
        for l in &self.log_rules[from..] {
            if l.term_end as usize > stop {
                break;
            }
            if l.families & family != 0 {
                on_log(l.rule, false);
            }
        }
    }

    #[inline]
    fn run(
        &self,
        first_match: impl Fn(usize) -> Option<usize>,
        reaching: Option<u8>,
        mut on_log: impl FnMut(u32, bool),
    ) -> ProgramEnd {
        let mut start = 0usize;
        // The first rule the walk can still reach (rules with no terms sit between terms).
        let mut first_rule = 0u32;
        loop {
            let found = first_match(start);
            if let Some(family) = reaching.filter(|_| !self.log_rules.is_empty()) {
                let stop = found.map_or_else(|| self.term_count(), |i| self.term_order(i));
                self.passed_logs(first_rule, stop, family, &mut on_log);
            }
            let Some(i) = found else { return ProgramEnd::FellThrough };
            match self.action(i) {
                TermAction::Rule { rule, action, resume } => match action {
                    Action::Allow => return ProgramEnd::Allow(rule),
                    Action::Deny => return ProgramEnd::Deny(rule),
                    Action::Log => {
                        on_log(rule, true);
                        start = resume as usize;
                        first_rule = self.rule_order(rule) + 1;
                    }
                    Action::Pass => {
                        start = resume as usize;
                        if reaching.is_some() {
                            first_rule = self.pass_next_rule(rule);
                        }
                    }
                },
                TermAction::EndOfTier { tier } => return ProgramEnd::EndOfTier(tier),
                TermAction::NoProfileMatched => return ProgramEnd::NoProfileMatched,
            }
        }
    }
}

/// The classifier's key for a packet.
#[inline]
pub fn flow_key(pkt: &PacketHeader) -> FlowKey {
    let family = match pkt.family() {
        IpFamily::V4 => 0u16,
        IpFamily::V6 => 1u16,
    };
    let (src_port, dst_port) =
        if pkt.has_ports() { (pkt.src_port as u32, pkt.dst_port as u32) } else { (NO_VALUE, NO_VALUE) };
    let icmp = if pkt.is_icmp() { (pkt.icmp_type as u32) << 8 | pkt.icmp_code as u32 } else { NO_VALUE };
    FlowKey {
        proto: family * 256 + pkt.protocol.0 as u16,
        src_ip: ip_key(pkt.src),
        dst_ip: ip_key(pkt.dst),
        src_port,
        dst_port,
        icmp,
    }
}

/// The walks of all four stages and both directions of one endpoint: `[stage][direction]`.
#[derive(Clone, Debug, Default)]
pub struct EndpointPrograms {
    programs: [[Option<Arc<Program>>; 2]; 4],
}

fn stage_index(s: Stage) -> usize {
    match s {
        Stage::Untracked => 0,
        Stage::PreDnat => 1,
        Stage::Normal => 2,
        Stage::Forward => 3,
    }
}

fn dir_index(d: Direction) -> usize {
    match d {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

impl EndpointPrograms {
    pub fn get(&self, stage: Stage, d: Direction) -> Option<&Arc<Program>> {
        self.programs[stage_index(stage)][dir_index(d)].as_ref()
    }
}

/// Everything the hot path needs to decide policy for this node's endpoints, built as a whole and
/// published at once.
#[derive(Debug, Default)]
pub struct CompiledTables {
    pub epoch: u64,
    /// Every rule of the programs by its dense id: names for counters, traces and the admin API.
    pub rules: Arc<RuleTable>,
    /// Same order as the node's workloads.
    pub workloads: Vec<EndpointPrograms>,
    /// Same order as [`ResolvedNode::host_endpoints`].
    pub host_endpoints: Vec<EndpointPrograms>,
    pub stats: CompileStats,
}

impl CompiledTables {
    /// The compiled walk of `ep` for `stage` and direction `d`.
    pub fn program(&self, ep: crate::ids::EndpointRef, stage: Stage, d: Direction) -> Option<&Program> {
        let programs = match ep {
            crate::ids::EndpointRef::Workload(i) => self.workloads.get(i)?,
            crate::ids::EndpointRef::Host(h) => self.host_endpoints.get(h)?,
        };
        programs.get(stage, d).map(|p| &**p)
    }

    /// Whether any policy of `stage` selects `ep` (for direction `d`, or either when `None`).
    pub fn has_policies(&self, ep: crate::ids::EndpointRef, stage: Stage, d: Option<Direction>) -> bool {
        let has = |d| self.program(ep, stage, d).is_some_and(|p| p.flat.has_policies);
        match d {
            Some(d) => has(d),
            None => has(Direction::Ingress) || has(Direction::Egress),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompileStats {
    /// Distinct programs in the tables.
    pub programs: usize,
    /// Programs built by this compile (the rest came from the cache).
    pub built: usize,
    pub terms: usize,
    pub table_bytes: usize,
}

/// What a rule's dense id stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    pub owner: crate::verdict::RuleOwner,
    pub direction: Direction,
    pub index: usize,
    pub action: Action,
    /// The stage of the programs the rule is in (an applyOnForward policy's rules count once, as normal).
    pub stage: Stage,
}

/// The rules of one table version by dense id, with the generation of each id: an id given to another rule
/// after its old rule went away has a new generation, so counters kept for the old rule are not read as
/// the new one's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleTable {
    pub info: Vec<Option<RuleInfo>>,
    pub generation: Vec<u32>,
}

impl RuleTable {
    /// Ids in use, with what they stand for.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &RuleInfo)> + '_ {
        self.info.iter().enumerate().filter_map(|(i, r)| r.as_ref().map(|r| (i as u32, r)))
    }
}

/// Dense rule ids, kept across compiles: a rule keeps its id while its owner, direction, position and
/// contents stay the same; an id whose rule is gone is reused only after many others were freed, and with
/// a new generation.
#[derive(Debug, Default)]
struct RuleIds {
    by_key: HashMap<(crate::verdict::RuleOwner, Direction, usize, u64), u32>,
    table: RuleTable,
    free: std::collections::VecDeque<u32>,
}

/// Freed ids wait behind this many others before reuse.
const RULE_ID_QUARANTINE: usize = 1024;

impl RuleIds {
    fn assign(&mut self, flat: &mut FlatProgram, stage: Stage) {
        for r in &mut flat.rules {
            let key = (r.owner.clone(), r.direction, r.index, r.fingerprint);
            if let Some(id) = self.by_key.get(&key) {
                r.id = *id;
                continue;
            }
            let id = if self.free.len() > RULE_ID_QUARANTINE {
                self.free.pop_front().expect("ids to reuse")
            } else {
                self.table.info.push(None);
                self.table.generation.push(0);
                (self.table.info.len() - 1) as u32
            };
            let stage = if stage == Stage::Forward { Stage::Normal } else { stage };
            self.table.info[id as usize] = Some(RuleInfo {
                owner: r.owner.clone(),
                direction: r.direction,
                index: r.index,
                action: r.action,
                stage,
            });
            self.table.generation[id as usize] = self.table.generation[id as usize].wrapping_add(1);
            self.by_key.insert(key, id);
            r.id = id;
        }
    }

    /// Frees the ids no program of the new tables uses.
    fn retain(&mut self, used: &HashSet<u32>) {
        let table = &mut self.table;
        let free = &mut self.free;
        self.by_key.retain(|_, id| {
            let keep = used.contains(id);
            if !keep {
                table.info[*id as usize] = None;
                free.push_back(*id);
            }
            keep
        });
    }
}

/// Keeps built programs by a fingerprint of what they were built from, across compiles.
#[derive(Debug, Default)]
pub struct ProgramCache {
    rule_ids: RuleIds,
    by_key: HashMap<u64, Cached>,
    deps: deps::DepTracker,
    /// The programs of the last tables' workload endpoints by what they depend on of the endpoint: its
    /// labels and profiles. A workload that comes with the labels and profiles of one already there gets
    /// these programs without keying ([`ProgramCache::patch`]).
    shapes: HashMap<u64, Vec<(Arc<Shape>, EndpointPrograms)>>,
    /// Programs in force that were spliced since the last compile ([`ProgramCache::patch_policies`]). No key
    /// names them (the next compile builds their walks afresh); their atoms are the base's and the new
    /// rules', so an IP set change they read rebuilds them instead of patching.
    spliced: Vec<Cached>,
    /// Policy patches since the rule ids were last pruned (a compile prunes them each time).
    policy_patches: usize,
}

/// Policy patches between prunings of the rule ids the patches' replaced rules still hold.
const PRUNE_RULE_IDS_EVERY: usize = 32;

/// What a workload endpoint's programs depend on of it (the world's policies, tiers and profiles aside).
#[derive(Debug, PartialEq, Hash)]
struct Shape {
    labels: crate::resource::Labels,
    profiles: Vec<String>,
}

fn shape_hash(labels: &crate::resource::Labels, profiles: &[String]) -> u64 {
    let mut h = foldhash::quality::FixedState::default().build_hasher();
    (labels, profiles).hash(&mut h);
    h.finish()
}

/// A program in the cache with its key's parts: what it is built from apart from set contents, and the
/// atoms (sets) it reads, whose versions complete the key (`DepTracker::key`).
#[derive(Debug, Clone)]
struct Cached {
    program: Arc<Program>,
    structure: u64,
    atoms: Arc<[u32]>,
}

/// Stages a workload endpoint has (semantics §2.1: only the normal bucket applies to pods).
const WORKLOAD_STAGES: &[Stage] = &[Stage::Normal];
const HOST_STAGES: &[Stage] = &[Stage::Untracked, Stage::PreDnat, Stage::Normal, Stage::Forward];

impl ProgramCache {
    pub fn new() -> ProgramCache {
        ProgramCache::default()
    }

    /// Compiles tables for the resolved node, reusing cached programs whose inputs did not change.
    pub fn compile<'w>(&mut self, world: &'w ResolvedNode, epoch: u64) -> CompiledTables {
        let fingerprints = self.deps.update(world);
        let selectors = DistinctSelectors::new(world);
        let mut stats = CompileStats::default();
        // Endpoints with the same labels and profiles get the same programs: key them once, evaluating each
        // policy's selector once per label set.
        type Keys = [[(u64, u64, Arc<[u32]>); 2]; 4];
        let mut keys: HashMap<(&'w crate::resource::Labels, &'w [String]), Arc<Keys>> = HashMap::new();
        // The programs neither cached nor already wanted, each once, in the order endpoints first need them.
        let mut wanted: Vec<Wanted<'w>> = Vec::new();
        let mut wanted_keys: HashSet<u64> = HashSet::default();
        let mut key_endpoint = |labels: &'w crate::resource::Labels,
                                profiles: &'w [String],
                                stages: &'static [Stage]|
         -> (Arc<Keys>, &'static [Stage]) {
            let k = keys
                .entry((labels, profiles))
                .or_insert_with(|| {
                    let verdicts: Vec<bool> = selectors.distinct.iter().map(|sel| sel.matches(labels)).collect();
                    let selecting: Arc<Vec<bool>> =
                        Arc::new(selectors.of_policy.iter().map(|&d| verdicts[d]).collect());
                    let none: Arc<[u32]> = Arc::new([]);
                    let mut k: Keys = Default::default();
                    for row in k.iter_mut() {
                        for slot in row.iter_mut() {
                            slot.2 = none.clone();
                        }
                    }
                    for &stage in stages {
                        for d in [Direction::Ingress, Direction::Egress] {
                            let (structure, atoms) = program_key(&fingerprints, world, &selecting, profiles, d, stage);
                            let key = fingerprints.key(structure, &atoms);
                            k[stage_index(stage)][dir_index(d)] = (key, structure, atoms.into());
                            if !self.by_key.contains_key(&key) && wanted_keys.insert(key) {
                                wanted.push(Wanted { key, selecting: selecting.clone(), profiles, d, stage });
                            }
                        }
                    }
                    Arc::new(k)
                })
                .clone();
            (k, stages)
        };
        let workload_keys: Vec<_> =
            world.workloads.iter().map(|w| key_endpoint(&w.labels, &w.profiles, WORKLOAD_STAGES)).collect();
        let host_keys: Vec<_> = world
            .host_endpoints
            .iter()
            .map(|h| key_endpoint(&h.endpoint.labels, &h.endpoint.profiles, HOST_STAGES))
            .collect();
        stats.built = wanted.len();
        let built: HashMap<u64, Arc<Program>> =
            wanted.iter().map(|w| w.key).zip(build_programs(world, &wanted, &mut self.rule_ids)).collect();
        let mut fresh: HashMap<u64, Cached> = HashMap::new();
        let mut programs_of = |(keys, stages): &(Arc<Keys>, &'static [Stage])| -> EndpointPrograms {
            let mut eps = EndpointPrograms::default();
            for &stage in stages.iter() {
                for d in [Direction::Ingress, Direction::Egress] {
                    let (key, structure, atoms) = &keys[stage_index(stage)][dir_index(d)];
                    let program = match built.get(key) {
                        Some(p) => p.clone(),
                        None => self.by_key[key].program.clone(),
                    };
                    fresh
                        .insert(*key, Cached { program: program.clone(), structure: *structure, atoms: atoms.clone() });
                    eps.programs[stage_index(stage)][dir_index(d)] = Some(program);
                }
            }
            eps
        };
        let workloads: Vec<EndpointPrograms> = workload_keys.iter().map(&mut programs_of).collect();
        let host_endpoints = host_keys.iter().map(&mut programs_of).collect();
        self.shapes.clear();
        for (w, programs) in world.workloads.iter().zip(&workloads) {
            if self.shape(&w.labels, &w.profiles).is_none() {
                let shape = Shape { labels: w.labels.clone(), profiles: w.profiles.clone() };
                let h = shape_hash(&w.labels, &w.profiles);
                self.shapes.entry(h).or_default().push((Arc::new(shape), programs.clone()));
            }
        }
        stats.programs = fresh.len();
        let mut used = HashSet::new();
        for c in fresh.values() {
            let p = &c.program;
            stats.terms += p.term_count();
            stats.table_bytes += p.classifier.table_bytes();
            used.extend(p.rules().map(|r| r.id));
        }
        self.by_key = fresh;
        self.spliced.clear();
        self.policy_patches = 0;
        self.rule_ids.retain(&used);
        let rules = Arc::new(self.rule_ids.table.clone());
        CompiledTables { epoch, rules, workloads, host_endpoints, stats }
    }
}

/// A program to build: its key and what `flatten` needs.
struct Wanted<'w> {
    key: u64,
    selecting: Arc<Vec<bool>>,
    profiles: &'w [String],
    d: Direction,
    stage: Stage,
}

/// How many threads build programs: the machine's cores. Programs are independent once flattened; only the
/// rule ids are given out in order, between flattening and building.
fn compile_threads() -> usize {
    // Read once: `available_parallelism` reads the affinity mask and cgroup files.
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map(usize::from).unwrap_or(1))
}

/// Builds the `wanted` programs, in order: flattened and built on [`compile_threads`] threads, rule ids
/// assigned on this one in between (in `wanted` order, so ids do not depend on the threads' timing).
fn build_programs(world: &ResolvedNode, wanted: &[Wanted<'_>], rule_ids: &mut RuleIds) -> Vec<Arc<Program>> {
    let threads = compile_threads();
    let mut flats = parallel_map(
        threads,
        wanted.iter().collect(),
        || SetResolver::new(world),
        |resolver, w| flatten(world, resolver, &w.selecting, w.profiles, w.d, w.stage),
    );
    for (flat, w) in flats.iter_mut().zip(wanted) {
        rule_ids.assign(flat, w.stage);
    }
    parallel_map(threads, flats, || (), |_, flat| Arc::new(Program::build(flat)))
}

/// `f` over `items` on up to `threads` threads (each with its own `state`), results in item order. Threads
/// take the next item as they finish one: programs differ in size by orders of magnitude.
fn parallel_map<T: Send, S, R: Send>(
    threads: usize,
    items: Vec<T>,
    state: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, T) -> R + Sync,
) -> Vec<R> {
    let threads = threads.min(items.len());
    if threads <= 1 {
        let mut s = state();
        return items.into_iter().map(|i| f(&mut s, i)).collect();
    }
    let queue = std::sync::Mutex::new(items.into_iter().enumerate());
    let mut out: Vec<(usize, R)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut s = state();
                    let mut done = Vec::new();
                    loop {
                        let next = queue.lock().expect("no thread panics holding the queue").next();
                        let Some((i, item)) = next else { break done };
                        done.push((i, f(&mut s, item)));
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("a compile thread panicked")).collect()
    });
    out.sort_unstable_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

impl ProgramCache {
    /// The programs of the last tables for a workload endpoint with these labels and profiles.
    fn shape(&self, labels: &crate::resource::Labels, profiles: &[String]) -> Option<&EndpointPrograms> {
        let bucket = self.shapes.get(&shape_hash(labels, profiles))?;
        bucket.iter().find(|(s, _)| s.labels == *labels && s.profiles == profiles).map(|(_, p)| p)
    }

    /// Tables for `world`, which is the world `previous` was compiled from (by this cache) with only entities
    /// and local workloads changed: entities `removed` taken out, `added` put in (an IP set member added or
    /// removed, a pod's address), and, when `workloads_changed`, workloads added, changed or removed (their
    /// entities among `removed` and `added`). The programs that read an address set the change touches are
    /// patched (`Program::patch_addresses`), the others are kept, each workload gets the programs of an
    /// endpoint with its labels and profiles, and none is built. `None` when the change cannot be a patch (a
    /// named-port set changed, a program has no term for an alternative a changed set left empty, or a
    /// workload's labels and profiles are new): [`ProgramCache::compile`] then builds what is needed, with
    /// the versions this call brought up to date.
    pub fn patch(
        &mut self,
        world: &ResolvedNode,
        previous: &CompiledTables,
        removed: &[crate::resolve::Entity],
        added: &[crate::resolve::Entity],
        workloads_changed: bool,
        epoch: u64,
    ) -> Option<CompiledTables> {
        let mut stats = CompileStats::default();
        let replaced = if removed.is_empty() && added.is_empty() {
            HashMap::new()
        } else {
            self.patch_programs(world, removed, added, &mut stats)?
        };
        let map = |eps: &EndpointPrograms| -> EndpointPrograms {
            let mut out = eps.clone();
            for p in out.programs.iter_mut().flatten().flatten() {
                if let Some(new) = replaced.get(&Arc::as_ptr(p)) {
                    *p = new.clone();
                }
            }
            out
        };
        if !replaced.is_empty() {
            for (_, programs) in self.shapes.values_mut().flatten() {
                *programs = map(programs);
            }
        }
        let workloads = if workloads_changed {
            world.workloads.iter().map(|w| self.shape(&w.labels, &w.profiles).cloned()).collect::<Option<_>>()?
        } else {
            previous.workloads.iter().map(map).collect()
        };
        let host_endpoints = previous.host_endpoints.iter().map(map).collect();
        stats.programs = self.by_key.len() + self.spliced.len();
        for c in self.by_key.values().chain(&self.spliced) {
            stats.terms += c.program.term_count();
            stats.table_bytes += c.program.classifier.table_bytes();
        }
        Some(CompiledTables { epoch, rules: previous.rules.clone(), workloads, host_endpoints, stats })
    }

    /// Patches the cached programs that read an address set the entity change touches; returns each replaced
    /// program's new version by the old one's address. `None` as [`ProgramCache::patch`] says.
    fn patch_programs(
        &mut self,
        world: &ResolvedNode,
        removed: &[crate::resolve::Entity],
        added: &[crate::resolve::Entity],
        stats: &mut CompileStats,
    ) -> Option<HashMap<*const Program, Arc<Program>>> {
        let (bumped, selectors, named_ports) = self.deps.change_entities(removed, added);
        if named_ports {
            return None;
        }
        let region = ranges::RangeSet::from_ranges(
            removed.iter().chain(added).flat_map(|e| terms::entity_range(e).ranges().to_vec()).collect(),
        );
        let near: Vec<&crate::resolve::Entity> =
            world.entities.iter().map(|e| &**e).filter(|e| terms::entity_overlaps(e, &region)).collect();
        // The few selectors the patched terms read, with their addresses inside the region.
        let mut inside: Vec<(crate::selector::Selector, ranges::RangeSet)> = Vec::new();
        let mut addresses = |sel: &crate::selector::Selector| -> ranges::RangeSet {
            if let Some((_, s)) = inside.iter().find(|(s, _)| s == sel) {
                return s.clone();
            }
            let s = terms::selector_addresses_within(near.iter().copied(), sel, &region);
            inside.push((sel.clone(), s.clone()));
            s
        };
        let changed: Vec<&crate::selector::Selector> = selectors.iter().collect();
        let bumped: HashSet<u32> = bumped.into_iter().collect();
        let mut replaced: HashMap<*const Program, Arc<Program>> = HashMap::new();
        let mut memo = SourceMemo::new();
        // Programs that read no changed set keep their entry and key (the versions it hashes did not move).
        let mut rekeyed: Vec<(u64, Cached)> = Vec::new();
        for (&key, c) in &self.by_key {
            if c.atoms.iter().any(|a| bumped.contains(a)) {
                let patched = Arc::new(c.program.patch_addresses(&region, &changed, &mut memo, &mut addresses)?);
                replaced.insert(Arc::as_ptr(&c.program), patched.clone());
                rekeyed.push((key, Cached { program: patched, structure: c.structure, atoms: c.atoms.clone() }));
                stats.built += 1;
            }
        }
        // A spliced program that reads a changed set: its base patched as any program, its splices' policies
        // flattened again from the changed world.
        let mut resolver: Option<SetResolver<'_>> = None;
        let mut respliced = Vec::new();
        for (i, c) in self.spliced.iter().enumerate() {
            if !c.atoms.iter().any(|a| bumped.contains(a)) {
                continue;
            }
            let base = c.program.base().patch_addresses(&region, &changed, &mut memo, &mut addresses)?;
            let first = c.program.splices.first()?;
            let (direction, stage) = (first.direction, first.stage);
            let resolver = resolver.get_or_insert_with(|| SetResolver::new(world));
            let mut policies = Vec::with_capacity(c.program.splices.len());
            for sp in &c.program.splices {
                let crate::verdict::RuleOwner::Policy { tier, id } = &sp.owner else { return None };
                let at = world.policies.iter().position(|p| p.id == *id && p.tier == *tier)?;
                let mut flat = terms::flatten_policy(world, resolver, at, direction);
                self.rule_ids.assign(&mut flat, stage);
                policies.push((sp.owner.clone(), flat));
            }
            respliced.push((i, Arc::new(base.splice(policies, direction, stage)?)));
        }
        for (i, program) in respliced {
            let c = &mut self.spliced[i];
            replaced.insert(Arc::as_ptr(&c.program), program.clone());
            c.program = program;
            stats.built += 1;
        }
        for (old, _) in &rekeyed {
            self.by_key.remove(old);
        }
        for (_, c) in rekeyed {
            self.by_key.insert(self.deps.key(c.structure, &c.atoms), c);
        }
        Some(replaced)
    }
}

impl ProgramCache {
    /// Tables for `world`, which is the world `previous` was compiled from (by this cache) with only the
    /// rules of some policies changed: `changed` gives each one's index in `world.policies` and its version
    /// in force before (same id, tier, order, selector, types and stage flags). Each program that walks a
    /// changed policy's rules gets the new rules spliced in place of the old (`Program::splice`: the new
    /// rules flattened, the classifier kept); none is built. `None` when a program cannot take a splice:
    /// [`ProgramCache::compile`] then builds what is needed.
    pub fn patch_policies(
        &mut self,
        world: &ResolvedNode,
        previous: &CompiledTables,
        changed: &[(usize, Arc<crate::resource::Policy>)],
        epoch: u64,
    ) -> Option<CompiledTables> {
        let mut resolver = SetResolver::new(world);
        // Endpoints alike share programs: each program is spliced once, by its address.
        let mut replaced: HashMap<*const Program, (Arc<Program>, Vec<u32>)> = HashMap::new();
        let endpoints =
            previous.workloads.iter().zip(world.workloads.iter().map(|w| (&w.labels, WORKLOAD_STAGES))).chain(
                previous
                    .host_endpoints
                    .iter()
                    .zip(world.host_endpoints.iter().map(|h| (&h.endpoint.labels, HOST_STAGES))),
            );
        for (eps, (labels, stages)) in endpoints {
            for &stage in stages {
                for d in [Direction::Ingress, Direction::Egress] {
                    let Some(program) = eps.get(stage, d) else { continue };
                    if replaced.contains_key(&Arc::as_ptr(program)) {
                        continue;
                    }
                    let walked: Vec<usize> = changed
                        .iter()
                        .filter(|(i, old)| {
                            let p = &world.policies[*i];
                            p.selector.matches(labels) && stage.holds(p) && p.applies(d) && p.rules(d) != old.rules(d)
                        })
                        .map(|(i, _)| *i)
                        .collect();
                    if walked.is_empty() {
                        continue;
                    }
                    let mut atoms = Vec::new();
                    let policies = walked
                        .iter()
                        .map(|&i| {
                            let p = &world.policies[i];
                            let mut flat = terms::flatten_policy(world, &mut resolver, i, d);
                            self.rule_ids.assign(&mut flat, stage);
                            atoms.extend(self.deps.rule_atoms(p.rules(d)));
                            (crate::verdict::RuleOwner::Policy { tier: p.tier.clone(), id: p.id.clone() }, flat)
                        })
                        .collect();
                    let spliced = Arc::new(program.splice(policies, d, stage)?);
                    replaced.insert(Arc::as_ptr(program), (spliced, atoms));
                }
            }
        }
        let map = |eps: &EndpointPrograms| -> EndpointPrograms {
            let mut out = eps.clone();
            for p in out.programs.iter_mut().flatten().flatten() {
                if let Some((new, _)) = replaced.get(&Arc::as_ptr(p)) {
                    *p = new.clone();
                }
            }
            out
        };
        let workloads = previous.workloads.iter().map(map).collect();
        let host_endpoints = previous.host_endpoints.iter().map(map).collect();
        for (_, programs) in self.shapes.values_mut().flatten() {
            *programs = map(programs);
        }
        let built = replaced.len();
        // The replaced programs leave the keyed cache (their keys name the old walks) for `spliced`.
        let mut spliced = std::mem::take(&mut self.spliced);
        for c in &mut spliced {
            if let Some((new, atoms)) = replaced.remove(&Arc::as_ptr(&c.program)) {
                c.program = new;
                c.atoms = c.atoms.iter().chain(&atoms).copied().collect();
            }
        }
        self.by_key.retain(|_, c| match replaced.remove(&Arc::as_ptr(&c.program)) {
            Some((new, atoms)) => {
                let atoms = c.atoms.iter().chain(&atoms).copied().collect();
                spliced.push(Cached { program: new, structure: 0, atoms });
                false
            }
            None => true,
        });
        self.spliced = spliced;
        let programs = || self.by_key.values().chain(&self.spliced).map(|c| &c.program);
        self.policy_patches += 1;
        if self.policy_patches % PRUNE_RULE_IDS_EVERY == 0 {
            let used: HashSet<u32> = programs().flat_map(|p| p.rules().map(|r| r.id)).collect();
            self.rule_ids.retain(&used);
        }
        let mut stats = CompileStats { built, programs: self.by_key.len() + self.spliced.len(), ..Default::default() };
        for p in programs() {
            stats.terms += p.term_count();
            stats.table_bytes += p.classifier.table_bytes();
        }
        let rules = Arc::new(self.rule_ids.table.clone());
        Some(CompiledTables { epoch, rules, workloads, host_endpoints, stats })
    }
}

/// Policies' selectors, deduplicated: many policies share one (every policy of an app, every
/// cluster-wide `all()`), so each distinct selector is evaluated once per label set.
struct DistinctSelectors<'w> {
    distinct: Vec<&'w crate::selector::Selector>,
    of_policy: Vec<usize>,
}

impl<'w> DistinctSelectors<'w> {
    fn new(world: &'w ResolvedNode) -> DistinctSelectors<'w> {
        let mut index: HashMap<&crate::selector::Selector, usize> = HashMap::new();
        let mut distinct = Vec::new();
        let of_policy = world
            .policies
            .iter()
            .map(|p| {
                *index.entry(&p.selector).or_insert_with(|| {
                    distinct.push(&p.selector);
                    distinct.len() - 1
                })
            })
            .collect();
        DistinctSelectors { distinct, of_policy }
    }
}

/// What a program is built from: the stage and direction, the tiers and policies that select the endpoint
/// (their walks' contents), its profiles likewise, and the services rules resolve to (`deps`); and the sets
/// (atoms) their rules read, whose versions complete the key (`DepTracker::key`).
fn program_key(
    deps: &deps::Deps<'_>,
    world: &ResolvedNode,
    selecting: &[bool],
    profiles: &[String],
    d: Direction,
    stage: Stage,
) -> (u64, Vec<u32>) {
    let mut h = hasher();
    let mut atoms = Vec::new();
    (stage_index(stage), dir_index(d), deps.services()).hash(&mut h);
    for tier in world.tiers.iter() {
        let mut any = false;
        for &i in &tier.policies {
            let p = &world.policies[i];
            if selecting[i] && stage.holds(p) && p.applies(d) {
                any = true;
                deps.policy(i, d, &mut h, &mut atoms);
            }
        }
        if any {
            (&tier.name, tier.default_action == crate::resource::TierDefault::Deny).hash(&mut h);
        }
    }
    if stage == Stage::Normal {
        for p in profiles {
            deps.profile(p, d, &mut h, &mut atoms);
        }
    }
    (h.finish(), atoms)
}

#[cfg(test)]
mod rule_id_tests {
    use super::*;
    use crate::node::NodeConfig;
    use crate::resource::{load_text, ResourceSet};
    use crate::yaml::{parse_documents, Field, Origin};

    fn node() -> NodeConfig {
        let text = "name: n1\nworkloads:\n  - {name: a, namespace: app, interface: calia, ips: [10.1.0.1], labels: {app: a}}\n  - {name: b, namespace: app, interface: calib, ips: [10.1.0.2], labels: {app: b}}\n";
        let origin = Origin::file("node.yaml");
        let docs = parse_documents(text, &origin).unwrap();
        NodeConfig::parse(Field::root(&docs[0], &origin)).unwrap()
    }

    fn policy(name: &str, selector: &str, ports: &str) -> String {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  selector: {selector}\n  types: [Ingress]\n  ingress:\n    - {{action: Allow, protocol: TCP, destination: {{ports: [{ports}]}}}}\n    - {{action: Deny, protocol: UDP}}\n---\n"
        )
    }

    fn compile(cache: &mut ProgramCache, yaml: &str) -> CompiledTables {
        let mut rs = ResourceSet::new();
        rs.apply_all(load_text(yaml, &Origin::file("p.yaml")).unwrap().into_iter().map(|d| d.resource));
        cache.compile(&ResolvedNode::new(&node(), &rs), 1)
    }

    fn ids(t: &CompiledTables, policy: &str) -> Vec<(usize, u32, u32)> {
        let mut v: Vec<(usize, u32, u32)> = t
            .rules
            .iter()
            .filter(|(_, r)| matches!(&r.owner, crate::verdict::RuleOwner::Policy { id, .. } if id.name == policy))
            .map(|(id, r)| (r.index, id, t.rules.generation[id as usize]))
            .collect();
        v.sort();
        v
    }

    /// Counters follow rules, not program addresses: a rule keeps its id while it is unchanged, a changed
    /// rule gets another, and a removed rule's id is not given to anything else right away.
    #[test]
    fn rules_keep_their_ids_across_compiles_while_they_do_not_change() {
        let mut cache = ProgramCache::new();
        let first = compile(&mut cache, &(policy("p1", "app == 'a'", "80") + &policy("p2", "all()", "443")));
        let p1 = ids(&first, "p1");
        let p2 = ids(&first, "p2");
        assert_eq!(p1.len(), 2);
        // p2's first rule changes; p1 and p2's second rule do not.
        let second = compile(&mut cache, &(policy("p1", "app == 'a'", "80") + &policy("p2", "all()", "8443")));
        assert_eq!(ids(&second, "p1"), p1, "an unchanged policy keeps its rule ids");
        let p2b = ids(&second, "p2");
        assert_eq!(p2b[1], p2[1], "an unchanged rule keeps its id");
        assert_ne!(p2b[0].1, p2[0].1, "a changed rule gets a new id");
        assert!(second.rules.info[p2[0].1 as usize].is_none(), "the old rule's id is free");
        // p1 removed: its ids are not reused by the next new rule.
        let third = compile(&mut cache, &(policy("p2", "all()", "8443") + &policy("p3", "all()", "22")));
        let p3 = ids(&third, "p3");
        assert!(p3.iter().all(|(_, id, _)| !p1.iter().any(|(_, old, _)| old == id)), "{p3:?} {p1:?}");
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;
    use crate::node::NodeConfig;
    use crate::resource::{load_text, ResourceSet};
    use crate::yaml::{parse_documents, Field, Origin};

    /// A node: two local pods and the remote endpoints given (YAML flow mappings).
    fn node(remote: &[&str], b_labels: &str) -> NodeConfig {
        let mut text = format!(
            "name: n1\nworkloads:\n  - {{name: a, namespace: app, interface: calia, ips: [10.1.0.1], labels: {{app: a}}, ports: [{{name: http, port: 8080}}]}}\n  - {{name: b, namespace: app, interface: calib, ips: [10.1.0.2], labels: {b_labels}}}\n"
        );
        if !remote.is_empty() {
            text.push_str("remoteEndpoints:\n");
            for r in remote {
                text.push_str(&format!("  - {r}\n"));
            }
        }
        let origin = Origin::file("node.yaml");
        let docs = parse_documents(&text, &origin).unwrap();
        NodeConfig::parse(Field::root(&docs[0], &origin)).unwrap()
    }

    fn resources(yaml: &str) -> ResourceSet {
        let mut rs = ResourceSet::new();
        rs.apply_all(load_text(yaml, &Origin::file("p.yaml")).unwrap().into_iter().map(|d| d.resource));
        rs
    }

    const POLICIES: &str = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: from-web}\nspec:\n  selector: all()\n  ingress:\n    - {action: Allow, protocol: TCP, source: {selector: \"role == 'web'\"}}\n    - {action: Allow, protocol: TCP, destination: {ports: [http]}}\n    - {action: Deny, source: {notSelector: \"role == 'db'\"}}\n---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: only-b}\nspec:\n  order: 5\n  selector: \"app == 'b'\"\n  ingress:\n    - {action: Pass, source: {selector: \"role == 'db'\"}}\n";

    /// The programs of every endpoint, without rule ids (a cache keeps ids a fresh compile renumbers).
    fn programs(t: &CompiledTables) -> Vec<Vec<(Vec<terms::Term>, Vec<(String, usize)>)>> {
        t.workloads
            .iter()
            .chain(&t.host_endpoints)
            .map(|eps| {
                eps.programs
                    .iter()
                    .flatten()
                    .flatten()
                    .map(|p| {
                        let rules = p.flat.rules.iter().map(|r| (format!("{:?}", r.owner), r.index)).collect();
                        (p.flat.terms.clone(), rules)
                    })
                    .collect()
            })
            .collect()
    }

    /// A program is reused only while everything it was built from is the same: after each change, the
    /// tables one cache compiles incrementally equal the tables a fresh cache compiles, and the changes that
    /// touch nothing a program reads rebuild nothing.
    #[test]
    fn an_incremental_compile_equals_a_fresh_one_after_every_change() {
        let web = "{name: w1, namespace: app, ips: [10.2.0.1], labels: {role: web}}";
        let web2 = "{name: w2, namespace: app, ips: [10.2.0.2], labels: {role: web}}";
        let db = "{name: d1, namespace: app, ips: [10.3.0.1], labels: {role: db}}";
        let other = "{name: o1, namespace: app, ips: [10.4.0.1], labels: {role: cache}}";
        let db_http =
            "{name: d1, namespace: app, ips: [10.3.0.1], labels: {role: db}, ports: [{name: http, port: 81}]}";
        let other_policy = POLICIES.replace("action: Pass", "action: Deny");
        // (remote endpoints, labels of pod b, policies, whether some program must be rebuilt)
        let steps: Vec<(Vec<&str>, &str, &str, bool)> = vec![
            (vec![web], "{app: b}", POLICIES, true),
            (vec![web, web2], "{app: b}", POLICIES, true), // a member joins role == 'web'
            (vec![web, web2, other], "{app: b}", POLICIES, false), // an entity no rule sees
            (vec![web, web2, other, db], "{app: b}", POLICIES, true), // notSelector's set grows
            (vec![web, web2, other, db_http], "{app: b}", POLICIES, true), // a named port appears
            (vec![web, web2, other, db_http], "{app: b}", &other_policy, true), // a rule changes
            // b leaves only-b: its walk is now a's, which is built already.
            (vec![web, web2, other, db_http], "{app: c}", &other_policy, false),
            (vec![web2, other, db_http], "{app: c}", &other_policy, true), // a member leaves
            (vec![web2, other, db_http], "{app: c}", &other_policy, false), // nothing changes
        ];
        let mut cache = ProgramCache::new();
        for (i, (remote, b, yaml, rebuilds)) in steps.into_iter().enumerate() {
            let n = node(&remote, b);
            let rs = resources(yaml);
            let world = ResolvedNode::new(&n, &rs);
            let incremental = cache.compile(&world, i as u64);
            let fresh = ProgramCache::new().compile(&world, i as u64);
            assert_eq!(programs(&incremental), programs(&fresh), "step {i}");
            if i > 0 {
                assert_eq!(incremental.stats.built > 0, rebuilds, "step {i}: built {}", incremental.stats.built);
            }
        }
    }
}

#[cfg(test)]
mod patch_tests {
    use super::*;
    use crate::node::NodeConfig;
    use crate::resolve::Entity;
    use crate::resource::{load_text, ResourceSet};
    use crate::yaml::{parse_documents, Field, Origin};

    fn node() -> NodeConfig {
        let text = "name: n1\nworkloads:\n  - {name: a, namespace: app, interface: calia, ips: [10.1.0.1], labels: {app: a}}\n  - {name: b, namespace: app, interface: calib, ips: [10.1.0.2], labels: {app: b}}\n";
        let origin = Origin::file("node.yaml");
        let docs = parse_documents(text, &origin).unwrap();
        NodeConfig::parse(Field::root(&docs[0], &origin)).unwrap()
    }

    /// Rules reading sets `s0`..`s3` every way a Felix rule can: a set, an intersection, a negated union, a
    /// set with nets, on either side, with and without ports, across tiers with Pass.
    const POLICIES: &str = r#"apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: p1}
spec:
  order: 1
  selector: all()
  types: [Ingress, Egress]
  ingress:
    - {action: Deny, protocol: TCP, source: {selector: "has(s0)"}, destination: {ports: [22]}}
    - {action: Allow, source: {selector: "has(s0) && has(s1)"}}
    - {action: Pass, source: {notSelector: "has(s2) || has(s3)", nets: [10.5.0.0/16]}}
    - {action: Deny, protocol: UDP, source: {selector: "has(s3)", notSelector: "has(s1)"}}
  egress:
    - {action: Deny, destination: {selector: "has(s1)", nets: [10.5.1.0/24]}}
    - {action: Allow, protocol: TCP, destination: {selector: "has(s2)", ports: [80, 443]}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: p2}
spec:
  order: 2
  selector: "app == 'b'"
  types: [Ingress, Egress]
  ingress:
    - {action: Allow, protocol: TCP, source: {selector: "has(s2)"}}
    - {action: Deny, source: {notSelector: "has(s0)"}}
  egress:
    - {action: Deny, destination: {notSelector: "has(s0) || has(s2)"}}
    - {action: Allow, destination: {selector: "has(s3)"}}
"#;

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % n
        }
    }

    const PREFIXES: &[&str] =
        &["10.5.0.1/32", "10.5.0.2/32", "10.5.0.0/30", "10.5.1.7/32", "10.5.1.0/24", "10.5.0.0/16", "10.6.0.9/32"];
    const ADDRESSES: &[&str] = &[
        "10.5.3.3", "10.5.1.3", "10.5.0.0", "10.5.0.1", "10.5.0.2", "10.5.0.3", "10.5.0.4", "10.5.1.7", "10.5.1.8",
        "10.5.2.1", "10.6.0.9", "10.1.0.1", "10.1.0.2", "10.7.0.1",
    ];

    fn entity(rng: &mut Rng) -> Entity {
        let mut labels = crate::resource::Labels::new();
        for s in 0..4 {
            if rng.below(2) == 0 {
                labels.insert(format!("s{s}"), String::new());
            }
        }
        let net = PREFIXES[rng.below(PREFIXES.len() as u64) as usize].parse().unwrap();
        Entity { labels, nets: vec![net], ports: Vec::new() }
    }

    /// Flows between the addresses the member changes move and the workloads.
    fn member_keys() -> Vec<FlowKey> {
        let mut keys = Vec::new();
        for src in ADDRESSES {
            for dst in ["10.1.0.1", "10.1.0.2", "10.5.0.1", "10.5.1.7", "10.5.2.1"] {
                for (proto, port) in [(6u8, 22u16), (6, 80), (17, 53), (1, 0)] {
                    let ip = |a: &str| terms::ip_key(a.parse().unwrap());
                    let (sp, dp) = if proto == 1 { (NO_VALUE, NO_VALUE) } else { (40000, port as u32) };
                    let icmp = if proto == 1 { 8 << 8 } else { NO_VALUE };
                    keys.push(FlowKey {
                        proto: proto as u16,
                        src_ip: ip(src),
                        dst_ip: ip(dst),
                        src_port: sp,
                        dst_port: dp,
                        icmp,
                    });
                }
            }
        }
        keys
    }

    /// A node's life under churn: a thousand member changes in a row, each a patch where one can be. The
    /// tables keep deciding as a fresh compile, patches keep being taken (a refused one compiles, and the
    /// compile is the next patches' base), and what the patches add stays bounded: the tables never hold
    /// more than a few times a fresh compile's bytes.
    #[test]
    fn a_thousand_member_changes_in_a_row_stay_bounded_and_decide_like_a_fresh_compile() {
        let mut rs = ResourceSet::new();
        rs.apply_all(load_text(POLICIES, &Origin::file("p.yaml")).unwrap().into_iter().map(|d| d.resource));
        let keys = member_keys();
        let mut rng = Rng(7);
        let mut world = ResolvedNode::new(&node(), &rs);
        for at in ["10.5.3.3/32", "10.5.1.3/32"] {
            let labels = (0..4).map(|s| (format!("s{s}"), String::new())).collect();
            world.entities.push(Arc::new(Entity { labels, nets: vec![at.parse().unwrap()], ports: Vec::new() }));
        }
        let fixed = world.entities.len();
        let mut cache = ProgramCache::new();
        let mut tables = cache.compile(&world, 1);
        let (mut patched, mut compiled, mut most_bytes_ratio) = (0, 0, 0.0f64);
        for step in 0..1000u64 {
            // Members come and go around a few: a pod started, one deleted, one relabelled.
            let grow = world.entities.len() < fixed + 6 && rng.below(2) == 0;
            let (removed, added) = if world.entities.len() > fixed && !grow {
                let at = fixed + rng.below((world.entities.len() - fixed) as u64) as usize;
                if rng.below(2) == 0 {
                    (vec![(*world.entities.remove(at)).clone()], vec![])
                } else {
                    let mut e = entity(&mut rng);
                    e.nets = world.entities[at].nets.clone();
                    let old = std::mem::replace(&mut world.entities[at], Arc::new(e.clone()));
                    (vec![(*old).clone()], vec![e])
                }
            } else {
                let e = entity(&mut rng);
                world.entities.push(Arc::new(e.clone()));
                (vec![], vec![e])
            };
            tables = match cache.patch(&world, &tables, &removed, &added, false, step + 2) {
                Some(t) => {
                    patched += 1;
                    t
                }
                None => {
                    compiled += 1;
                    cache.compile(&world, step + 2)
                }
            };
            if step % 50 == 49 {
                let fresh = ProgramCache::new().compile(&world, step + 2);
                assert_eq!(decisions(&tables, &keys), decisions(&fresh, &keys), "step {step}");
                let ratio = tables.stats.table_bytes as f64 / fresh.stats.table_bytes as f64;
                most_bytes_ratio = most_bytes_ratio.max(ratio);
                assert!(ratio < 4.0, "step {step}: the patched tables hold {ratio:.1}× a fresh compile's bytes");
            }
        }
        // Refused: a change inside a rule alternative its set had left empty (no term to patch), or a term
        // patched 64 times.
        assert!(patched > 750 && compiled > 5, "{patched} patches, {compiled} compiles");
        eprintln!("{patched} patches, {compiled} compiles, at most {most_bytes_ratio:.2}× a fresh compile's bytes");
    }

    fn decisions(t: &CompiledTables, keys: &[FlowKey]) -> Vec<ProgramEnd> {
        let mut out = Vec::new();
        for eps in &t.workloads {
            for d in [Direction::Ingress, Direction::Egress] {
                let p = eps.get(Stage::Normal, d).expect("a workload has normal programs");
                for k in keys {
                    let end = p.evaluate(k, |_| {});
                    assert_eq!(end, p.evaluate_linear(k, |_| {}), "the terms and the classifier agree");
                    out.push(end);
                }
            }
        }
        out
    }

    /// After every random set-member change the patched tables decide as tables compiled afresh from the
    /// changed world, over every address around the changed prefixes, and a compile after the patch builds
    /// nothing (the patched programs are found under their new keys).
    #[test]
    fn patched_tables_decide_like_a_fresh_compile_after_every_member_change() {
        let mut rs = ResourceSet::new();
        rs.apply_all(load_text(POLICIES, &Origin::file("p.yaml")).unwrap().into_iter().map(|d| d.resource));
        let base = ResolvedNode::new(&node(), &rs);
        let keys = member_keys();
        let mut patches = 0;
        for seed in 0..40 {
            let mut rng = Rng(seed);
            let mut world = base.clone();
            // Members that stay, in every set, so no rule's alternative starts empty (that is a rebuild).
            for at in ["10.5.3.3/32", "10.5.1.3/32"] {
                let labels = (0..4).map(|s| (format!("s{s}"), String::new())).collect();
                world.entities.push(Arc::new(Entity { labels, nets: vec![at.parse().unwrap()], ports: Vec::new() }));
            }
            let fixed = world.entities.len();
            for _ in 0..3 {
                world.entities.push(Arc::new(entity(&mut rng)));
            }
            let mut cache = ProgramCache::new();
            let mut tables = cache.compile(&world, 1);
            for step in 0..12 {
                let (removed, added) = match rng.below(3) {
                    0 if world.entities.len() > fixed => {
                        let at = fixed + rng.below((world.entities.len() - fixed) as u64) as usize;
                        (vec![(*world.entities.remove(at)).clone()], vec![])
                    }
                    1 if world.entities.len() > fixed => {
                        // A member whose sets change: one entity's labels replaced.
                        let at = fixed + rng.below((world.entities.len() - fixed) as u64) as usize;
                        let mut e = entity(&mut rng);
                        e.nets = world.entities[at].nets.clone();
                        let old = std::mem::replace(&mut world.entities[at], Arc::new(e.clone()));
                        (vec![(*old).clone()], vec![e])
                    }
                    _ => {
                        let e = entity(&mut rng);
                        world.entities.push(Arc::new(e.clone()));
                        (vec![], vec![e])
                    }
                };
                let next = match cache.patch(&world, &tables, &removed, &added, false, step + 2) {
                    Some(t) => {
                        patches += 1;
                        let again = cache.compile(&world, step + 2);
                        assert_eq!(again.stats.built, 0, "seed {seed} step {step}: the patched programs are cached");
                        t
                    }
                    None => cache.compile(&world, step + 2),
                };
                let fresh = ProgramCache::new().compile(&world, step + 2);
                assert_eq!(decisions(&next, &keys), decisions(&fresh, &keys), "seed {seed} step {step}");
                tables = next;
            }
        }
        assert!(patches > 200, "the patch path ran {patches} times");
    }

    /// Rules of every kind a splice must walk in place: ports, protocols, nets and their negations,
    /// selectors, Pass out of a tier, and Log (reported where the walk meets it).
    const SPLICE_RULES: &[&str] = &[
        "{action: Allow, protocol: TCP, destination: {ports: [80]}}",
        "{action: Deny, protocol: UDP}",
        "{action: Pass, source: {nets: [10.5.0.0/16]}}",
        "{action: Allow, source: {selector: \"has(s0)\"}}",
        "{action: Deny, protocol: TCP, source: {selector: \"has(s1) && !has(s2)\"}}",
        "{action: Deny, protocol: TCP, source: {notNets: [10.5.1.0/24]}, destination: {ports: [22]}}",
        "{action: Allow, protocol: ICMP}",
        "{action: Deny, destination: {notNets: [10.1.0.2/32]}}",
        "{action: Pass, protocol: TCP}",
        "{action: Allow, source: {nets: [10.5.0.0/30, 10.7.0.0/16]}}",
        "{action: Log, protocol: UDP}",
        "{action: Log, source: {nets: [10.5.0.0/16]}}",
    ];

    /// Four policies in two tiers (one ending in Pass, one in Deny), each with random rules.
    fn splice_policies(rng: &mut Rng) -> String {
        let mut y = String::from("apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: t1}\nspec: {order: 10, defaultAction: Pass}\n");
        for (name, tier, order, selector) in [
            ("q1", "t1", 1, "all()"),
            ("q2", "t1", 2, "app == 'b'"),
            ("q3", "default", 1, "all()"),
            ("q4", "default", 2, "app == 'a'"),
        ] {
            let rules = |rng: &mut Rng| -> String {
                // Mostly one to three rules; now and then none (no place to splice: a rebuild).
                let n = if rng.below(12) == 0 { 0 } else { 1 + rng.below(3) };
                let mut pick = || SPLICE_RULES[rng.below(SPLICE_RULES.len() as u64) as usize];
                let rules: Vec<&str> = (0..n).map(|_| pick()).collect();
                format!("[{}]", rules.join(", "))
            };
            let (ingress, egress) = (rules(rng), rules(rng));
            y.push_str(&format!("---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  tier: {tier}\n  order: {order}\n  selector: \"{selector}\"\n  types: [Ingress, Egress]\n  ingress: {ingress}\n  egress: {egress}\n"));
        }
        y
    }

    /// A program's decision with its rule named by owner and index (spliced and fresh programs number their
    /// rules differently).
    fn named(p: &Program, end: ProgramEnd) -> String {
        let rule = |r: u32| p.rule(r).map(|o| format!("{:?} #{}", o.owner, o.index)).unwrap_or_default();
        match end {
            ProgramEnd::Allow(r) => format!("allow {}", rule(r)),
            ProgramEnd::Deny(r) => format!("deny {}", rule(r)),
            other => format!("{other:?}"),
        }
    }

    /// After every random change of some policies' rules, the spliced tables decide as tables compiled
    /// afresh, by the classifier and by the linear scan, naming the same rule; a compile after a splice
    /// builds the spliced walks afresh.
    #[test]
    fn spliced_tables_decide_like_a_fresh_compile_after_every_policy_change() {
        let keys: Vec<FlowKey> = ADDRESSES
            .iter()
            .flat_map(|src| ["10.1.0.1", "10.1.0.2", "10.5.0.1"].map(move |dst| (src, dst)))
            .flat_map(|(src, dst)| {
                [(6u8, 22u32), (6, 80), (17, 53), (1, 0)].map(|(proto, port)| FlowKey {
                    proto: proto as u16,
                    src_ip: terms::ip_key(src.parse().unwrap()),
                    dst_ip: terms::ip_key(dst.parse().unwrap()),
                    src_port: if proto == 1 { NO_VALUE } else { 40000 },
                    dst_port: if proto == 1 { NO_VALUE } else { port },
                    icmp: if proto == 1 { 8 << 8 } else { NO_VALUE },
                })
            })
            .collect();
        let decide = |t: &CompiledTables| -> Vec<String> {
            let mut out = Vec::new();
            for eps in &t.workloads {
                for d in [Direction::Ingress, Direction::Egress] {
                    let p = eps.get(Stage::Normal, d).expect("a workload has normal programs");
                    let name = |r: u32| p.rule(r).map(|o| format!("{:?} #{}", o.owner, o.index)).unwrap_or_default();
                    for k in &keys {
                        let mut logged = Vec::new();
                        let end = p.evaluate(k, |r| logged.push(name(r)));
                        let mut scanned = Vec::new();
                        let linear = p.evaluate_linear(k, |r| scanned.push(name(r)));
                        assert_eq!(
                            (named(p, end), &logged),
                            (named(p, linear), &scanned),
                            "the classifier and the scan"
                        );
                        // Every Log rule the walk reaches, matched or not (rate-limited LOG, semantics §9.1).
                        let mut reached = Vec::new();
                        let again = p.evaluate_reaching(k, |r, matched| reached.push(format!("{} {matched}", name(r))));
                        assert_eq!(named(p, again), named(p, end));
                        out.push(format!("{} logs {logged:?} reached {reached:?}", named(p, end)));
                    }
                }
            }
            out
        };
        let load = |y: &str| {
            let mut rs = ResourceSet::new();
            rs.apply_all(load_text(y, &Origin::file("p.yaml")).unwrap().into_iter().map(|d| d.resource));
            rs
        };
        let mut entities = Rng(99);
        let (mut spliced, mut rebuilt, mut respliced) = (0, 0, 0);
        for seed in 0..40 {
            let mut rng = Rng(seed);
            let mut cache = ProgramCache::new();
            let mut world = ResolvedNode::new(&node(), &load(&splice_policies(&mut rng)));
            for _ in 0..4 {
                world.entities.push(Arc::new(entity(&mut entities)));
            }
            let mut tables = cache.compile(&world, 1);
            for step in 0..10u64 {
                // Now and then a set member changes instead (a spliced program's base is patched and its
                // splices flattened again); mostly some policies' rules change, the rest of the world staying.
                if rng.below(3) == 0 {
                    let (removed, added) = if world.entities.len() > 4 && rng.below(2) == 0 {
                        let at = rng.below(world.entities.len() as u64) as usize;
                        (vec![(*world.entities.remove(at)).clone()], vec![])
                    } else {
                        let e = entity(&mut entities);
                        world.entities.push(Arc::new(e.clone()));
                        (vec![], vec![e])
                    };
                    let before: Vec<*const Program> = cache.spliced.iter().map(|c| Arc::as_ptr(&c.program)).collect();
                    tables = match cache.patch(&world, &tables, &removed, &added, false, step + 2) {
                        Some(t) => {
                            // Spliced programs this change patched and spliced again.
                            respliced +=
                                cache.spliced.iter().filter(|c| !before.contains(&Arc::as_ptr(&c.program))).count();
                            t
                        }
                        None => cache.compile(&world, step + 2),
                    };
                    let fresh = ProgramCache::new().compile(&world, step + 2);
                    assert_eq!(decide(&tables), decide(&fresh), "seed {seed} step {step}: after a member change");
                    continue;
                }
                let fresh_world = ResolvedNode::new(&node(), &load(&splice_policies(&mut rng)));
                let mut policies = (*world.policies).clone();
                let mut changed = Vec::new();
                for (i, p) in fresh_world.policies.iter().enumerate() {
                    if rng.below(2) == 0 && (p.ingress != policies[i].ingress || p.egress != policies[i].egress) {
                        assert_eq!(p.id, policies[i].id);
                        changed.push((i, std::mem::replace(&mut policies[i], p.clone())));
                    }
                }
                world.policies = Arc::new(policies);
                let next = match cache.patch_policies(&world, &tables, &changed, step + 2) {
                    Some(t) => {
                        spliced += t.stats.built;
                        t
                    }
                    None => {
                        rebuilt += 1;
                        cache.compile(&world, step + 2)
                    }
                };
                let fresh = ProgramCache::new().compile(&world, step + 2);
                let (got, want) = (decide(&next), decide(&fresh));
                if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
                    let per = keys.len();
                    panic!(
                        "seed {seed} step {step}: workload {} direction {} key {:?}: spliced {} fresh {}",
                        i / per / 2,
                        i / per % 2,
                        keys[i % per],
                        got[i],
                        want[i]
                    );
                }
                tables = next;
            }
            // A compile after splices builds the spliced walks afresh, and they decide alike.
            let again = cache.compile(&world, 100);
            assert_eq!(decide(&again), decide(&ProgramCache::new().compile(&world, 100)), "seed {seed}: recompiled");
            tables = again;
            let _ = tables;
        }
        assert!(
            spliced > 200 && rebuilt > 10 && respliced > 20,
            "{spliced} programs spliced, {rebuilt} changes rebuilt, {respliced} member changes patched over splices"
        );
    }

    /// After every random change of the node's workloads (a pod added, removed, or given other labels or
    /// addresses; labels that rules' selectors read, from a few shapes so most pods look like one already
    /// there) the patched tables decide as tables compiled afresh from the node resolved whole, for every
    /// workload in order; a pod with labels no pod had is not a patch.
    #[test]
    fn patched_tables_decide_like_a_fresh_compile_after_every_workload_change() {
        let mut rs = ResourceSet::new();
        rs.apply_all(load_text(POLICIES, &Origin::file("p.yaml")).unwrap().into_iter().map(|d| d.resource));
        let keys: Vec<FlowKey> = ADDRESSES
            .iter()
            .flat_map(|src| ADDRESSES.iter().map(move |dst| (src, dst)))
            .flat_map(|(src, dst)| {
                [(6u8, 22u32), (6, 80), (17, 53)].map(|(proto, port)| FlowKey {
                    proto: proto as u16,
                    src_ip: terms::ip_key(src.parse().unwrap()),
                    dst_ip: terms::ip_key(dst.parse().unwrap()),
                    src_port: 40000,
                    dst_port: port,
                    icmp: NO_VALUE,
                })
            })
            .collect();
        let shapes: [&[(&str, &str)]; 4] =
            [&[("app", "a")], &[("app", "b"), ("s0", "")], &[("s2", "")], &[("app", "b")]];
        let pod = |rng: &mut Rng, name: usize, shapes_in_use: usize| crate::node::Workload {
            name: format!("pod{name}"),
            namespace: "app".into(),
            interface: Some(format!("cali{name}")),
            ips: vec![ADDRESSES[rng.below(ADDRESSES.len() as u64) as usize].parse().unwrap()],
            labels: shapes[rng.below(shapes_in_use as u64) as usize]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            service_account: "default".into(),
            ports: Vec::new(),
            mac: None,
            profiles: None,
        };
        let (mut patches, mut whole) = (0, 0);
        for seed in 0..30 {
            let mut rng = Rng(seed);
            let mut node = node();
            let mut cache = ProgramCache::new();
            let mut world = ResolvedNode::new(&node, &rs);
            let mut tables = cache.compile(&world, 1);
            let mut next_name = 0;
            for step in 0..12u64 {
                // Mostly the shapes of the first pods; now and then one no pod had.
                let in_use = if rng.below(6) == 0 { 4 } else { 3 };
                match rng.below(3) {
                    0 if node.workloads.len() > 1 => {
                        node.workloads.remove(rng.below(node.workloads.len() as u64) as usize);
                    }
                    1 if !node.workloads.is_empty() => {
                        let at = rng.below(node.workloads.len() as u64) as usize;
                        let mut changed = pod(&mut rng, 0, in_use);
                        changed.name = node.workloads[at].name.clone();
                        changed.interface = node.workloads[at].interface.clone();
                        node.workloads[at] = changed;
                    }
                    _ => {
                        next_name += 1;
                        node.workloads.push(pod(&mut rng, next_name, in_use));
                    }
                }
                let fresh_world = ResolvedNode::new(&node, &rs);
                let (patched_world, removed, added) =
                    world.with_workloads(&node, &rs).expect("only workloads changed, in one namespace and account");
                let next = match cache.patch(&patched_world, &tables, &removed, &added, true, step + 2) {
                    Some(t) => {
                        patches += 1;
                        t
                    }
                    None => {
                        whole += 1;
                        cache.compile(&patched_world, step + 2)
                    }
                };
                let fresh = ProgramCache::new().compile(&fresh_world, step + 2);
                assert_eq!(next.workloads.len(), node.workloads.len());
                assert_eq!(decisions(&next, &keys), decisions(&fresh, &keys), "seed {seed} step {step}");
                assert_eq!(patched_world.entities, fresh_world.entities, "seed {seed} step {step}");
                tables = next;
                world = patched_world;
            }
        }
        assert!(patches > 150 && whole > 10, "patched {patches} times, compiled {whole} times");
        // A pod in a namespace no pod was in brings Kubernetes' generated profiles for it: resolve whole.
        let base = node();
        let mut other = base.clone();
        other.workloads.push(crate::node::Workload { namespace: "other".into(), ..pod(&mut Rng(1), 99, 1) });
        assert!(ResolvedNode::new(&base, &rs).with_workloads(&other, &rs).is_none());
    }
}
