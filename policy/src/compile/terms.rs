//! From one endpoint's policy walk (semantics §4.2) to a flat first-match list of terms, each a conjunction
//! of per-field predicates over ids and numbers: no selector, name or string survives this step.
//!
//! A rule becomes one term per IP family and per alternative of each side (a side with numeric and named
//! ports matches either way, semantics §3 "Ports"). Tier ends, Pass targets and profile boundaries become
//! terms and jump targets, so first-match over the list with "resume at" reproduces Felix's order.

use std::collections::BTreeSet;

use foldhash::{HashMap, HashMapExt};
use std::net::IpAddr;
use std::sync::Arc;

use super::ranges::RangeSet;
use crate::net::{IpFamily, IpNet};
use crate::resolve::{Direction, Entity, ResolvedNode, Stage};
use crate::resource::{Action, EntityRule, Port, Protocol, Rule, TierDefault};
use crate::selector::Selector;
use crate::verdict::RuleOwner;

/// An address on the classifier's one number line: IPv4 as `::ffff:a.b.c.d`, IPv6 as itself.
pub fn ip_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => V4_BASE | u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Where IPv4 addresses start on the number line (`::ffff:0.0.0.0`).
pub const V4_BASE: u128 = 0xffff_0000_0000;

/// Every address of a family on the number line.
pub fn family_range(f: IpFamily) -> RangeSet {
    match f {
        IpFamily::V4 => RangeSet::span(V4_BASE, V4_BASE | u32::MAX as u128),
        IpFamily::V6 => RangeSet::span(0, u128::MAX).difference(&RangeSet::span(V4_BASE, V4_BASE | u32::MAX as u128)),
    }
}

fn net_range(n: &IpNet) -> RangeSet {
    let (lo, hi) = net_span(n);
    RangeSet::span(lo, hi)
}

/// The first and last value of a net on the address line.
fn net_span(n: &IpNet) -> (u128, u128) {
    let bits = match n.family() {
        IpFamily::V4 => 32,
        IpFamily::V6 => 128,
    };
    let lo = ip_key(n.addr());
    let host_bits = bits - n.prefix_len() as u32;
    let span = if host_bits >= 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
    (lo, lo.saturating_add(span))
}

/// Whether one of the entity's nets holds a value of `region` (no set is built).
pub fn entity_overlaps(e: &Entity, region: &RangeSet) -> bool {
    e.nets.iter().any(|n| {
        let (lo, hi) = net_span(n);
        region.overlaps_span(lo, hi)
    })
}

/// The port/ICMP number line: 0–65535 are values, 65536 means "the packet has none".
pub const NO_VALUE: u32 = 65_536;

/// What a term requires of one (ip, protocol, port) tuple field (named ports, service endpoints).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TupleCond {
    Any,
    In(Arc<BTreeSet<TupleKey>>),
    NotIn(Arc<BTreeSet<TupleKey>>),
}

/// (address, protocol, port) as named ports and service endpoints resolve to.
pub type TupleKey = (u128, u8, u16);

/// A conjunction of field predicates; `None` means any value. The sets are shared: a rule's terms are made
/// once per compile and copied into every program that walks the rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Conditions {
    /// Allowed `family * 256 + protocol` keys.
    pub proto: Arc<RangeSet>,
    pub src_ip: Option<Arc<RangeSet>>,
    pub dst_ip: Option<Arc<RangeSet>>,
    pub src_port: Option<Arc<RangeSet>>,
    pub dst_port: Option<Arc<RangeSet>>,
    /// `type << 8 | code` for ICMP packets, [`NO_VALUE`] for others.
    pub icmp: Option<Arc<RangeSet>>,
    pub src_tuple: TupleCond,
    pub dst_tuple: TupleCond,
}

impl Conditions {
    /// Matches every packet.
    pub fn always() -> Conditions {
        Conditions {
            proto: Arc::new(RangeSet::span(0, 511)),
            src_ip: None,
            dst_ip: None,
            src_port: None,
            dst_port: None,
            icmp: None,
            src_tuple: TupleCond::Any,
            dst_tuple: TupleCond::Any,
        }
    }
}

/// What a term does when it is the first match at or after the resume point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TermAction {
    /// A rule: `rule` indexes [`Program::rules`]; Pass and Log carry where evaluation resumes.
    Rule { rule: u32, action: Action, resume: u32 },
    /// End of a tier whose default is Deny: `tier` indexes [`Program::tiers`].
    EndOfTier { tier: u32 },
    /// Nothing in the tiers or profiles allowed (normal stage only).
    NoProfileMatched,
}

/// Where a rule came from, for explanations: owner and index in its list.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RuleOrigin {
    pub owner: RuleOwner,
    pub index: usize,
    pub action: Action,
    pub direction: Direction,
    /// The rule's contents, hashed: with owner, direction and index, what its dense id is kept by.
    pub fingerprint: u64,
    /// Dense id for counters (`RuleIds`): stable across table versions while the rule is unchanged.
    pub id: u32,
    /// Where the rule stands among the program's terms: its terms are `terms[term_start..term_end]` (none,
    /// `term_start == term_end`, when it can match nothing), so a walk from `s` that stops at term `i` passed
    /// it when `s <= term_start && term_end <= i`.
    pub term_start: u32,
    pub term_end: u32,
    /// The families whose chains Felix renders the rule into (bit 0 IPv4, bit 1 IPv6; `Rule::in_family`).
    pub families: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Term {
    pub conditions: Conditions,
    pub action: TermAction,
}

/// The flattened walk of one (endpoint, direction, stage).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlatProgram {
    pub terms: Vec<Term>,
    pub rules: Vec<RuleOrigin>,
    pub tiers: Vec<String>,
    /// Whether any policy of the stage selects the endpoint for the direction.
    pub has_policies: bool,
    /// For each Pass rule (by rule index, ascending), the index of the first rule of the section it resumes
    /// at: rules that can match nothing have no terms, so the resume term alone cannot tell a passed
    /// tier's last such rules from the next section's first (a walk reports the Log rules it reaches).
    pub pass_resume_rules: Vec<(u32, u32)>,
    /// The terms whose address condition on one side depends on selectors, by the [`selector_hash`] of each
    /// selector it reads, in term order: (term, side: 0 source / 1 destination, how the condition was made).
    /// A change to those selectors' address sets is patched into the built program from these
    /// (`Program::patch_addresses`), which visits only the terms that read a changed selector.
    pub addr_sources: foldhash::HashMap<u64, Vec<(u32, u8, Arc<AddrSource>)>>,
    /// Alternatives of rules that got no term because their address set was empty through a selector (an
    /// IPv6 alternative of a set of IPv4 members, say): a change to one of those selectors inside the
    /// alternative's fixed addresses is not a patch, the program is built again. By the [`selector_hash`] of
    /// each selector it reads, as `addr_sources` (a program can hold thousands; a change visits its own).
    pub dropped: foldhash::HashMap<u64, Vec<Arc<AddrSource>>>,
}

/// How a term's address condition on one side was made when it depends on selectors: the part that does not
/// (the family, the side's nets and not-nets, a service's addresses) and the selectors. Its addresses are
/// `fixed ∩ addresses(selector) \ addresses(not_selector)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AddrSource {
    pub fixed: RangeSet,
    pub selector: Option<Selector>,
    pub not_selector: Option<Selector>,
    /// [`selector_hash`] of each selector (0 for none): a patch asks every source whether it reads a changed
    /// selector, and most answers are no after comparing one number instead of two expression trees.
    hashes: [u64; 2],
}

/// The hash [`AddrSource::reads`] compares first.
pub fn selector_hash(sel: &Selector) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = super::hasher();
    sel.hash(&mut h);
    h.finish() | 1
}

impl AddrSource {
    pub fn new(fixed: RangeSet, selector: Option<Selector>, not_selector: Option<Selector>) -> AddrSource {
        let hashes = [selector.as_ref().map_or(0, selector_hash), not_selector.as_ref().map_or(0, selector_hash)];
        AddrSource { fixed, selector, not_selector, hashes }
    }

    /// The [`selector_hash`] of each selector the condition reads, once each (what `FlatProgram` indexes it by).
    pub fn selector_hashes(&self) -> impl Iterator<Item = u64> {
        let [a, b] = self.hashes;
        [a, b].into_iter().filter(|&h| h != 0).take(if a == b { 1 } else { 2 })
    }

    /// Whether the condition reads one of `changed`, given with their [`selector_hash`]es.
    pub fn reads(&self, changed: &[(u64, &Selector)]) -> bool {
        let [a, b] = self.hashes;
        changed.iter().any(|&(h, sel)| {
            (h == a && self.selector.as_ref() == Some(sel)) || (h == b && self.not_selector.as_ref() == Some(sel))
        })
    }

    /// The condition's addresses inside `region`, given each selector's addresses inside `region`.
    pub fn within(&self, region: &RangeSet, mut addresses: impl FnMut(&Selector) -> RangeSet) -> RangeSet {
        let mut s = self.fixed.intersect(region);
        if let Some(sel) = &self.selector {
            s = s.intersect(&addresses(sel));
        }
        if let Some(sel) = &self.not_selector {
            s = s.difference(&addresses(sel));
        }
        s
    }
}

/// Resolves rule selectors to address sets and named ports to tuple sets, caching per selector.
#[derive(Debug)]
pub struct SetResolver<'a> {
    entities: &'a [Arc<Entity>],
    ips: HashMap<&'a Selector, RangeSet>,
    /// Named-port tuple sets by (names, selector, rule protocol): every rule of every program that names the
    /// same ports of the same peers shares one set, resolved once per compile.
    tuples: HashMap<NamedPortsKey<'a>, Arc<BTreeSet<TupleKey>>>,
    /// Each rule's terms per family, by the rule's address in the world: a rule is in the walk of every
    /// endpoint its policy selects (an `all()` policy in all of them), and its terms depend only on the
    /// rule and the world, so they are worked out once per compile and copied into each program.
    rules: HashMap<(usize, IpFamily), Arc<RuleTerms>>,
    families: [RangeSet; 2],
}

/// One rule's terms for one family, and the alternatives it lost to an empty selector (`FlatProgram::dropped`).
#[derive(Debug)]
struct RuleTerms {
    fingerprint: u64,
    terms: Vec<TermConditions>,
    dropped: Vec<Arc<AddrSource>>,
}

type NamedPortsKey<'a> = (Vec<&'a str>, Option<&'a Selector>, Option<Protocol>);

impl<'a> SetResolver<'a> {
    pub fn new(world: &'a ResolvedNode) -> SetResolver<'a> {
        SetResolver {
            entities: &world.entities,
            ips: HashMap::new(),
            tuples: HashMap::new(),
            rules: HashMap::new(),
            families: [family_range(IpFamily::V4), family_range(IpFamily::V6)],
        }
    }

    fn family(&self, f: IpFamily) -> &RangeSet {
        &self.families[f as usize]
    }

    /// `rule`'s terms for `family`, made once per compile.
    fn rule_terms(&mut self, world: &'a ResolvedNode, rule: &'a Rule, family: IpFamily) -> Arc<RuleTerms> {
        let key = (rule as *const Rule as usize, family);
        if let Some(made) = self.rules.get(&key) {
            return made.clone();
        }
        let fingerprint = {
            use std::hash::{Hash, Hasher};
            let mut h = super::hasher();
            rule.hash(&mut h);
            h.finish()
        };
        let mut dropped = Vec::new();
        let terms = rule_conditions(self, world, rule, family, &mut dropped);
        let made = Arc::new(RuleTerms { fingerprint, terms, dropped });
        self.rules.insert(key, made.clone());
        made
    }

    /// The addresses of every entity `sel` matches (semantics §2.2).
    fn selector_ips(&mut self, sel: &'a Selector) -> RangeSet {
        if let Some(s) = self.ips.get(sel) {
            return s.clone();
        }
        let ranges: Vec<(u128, u128)> = self
            .entities
            .iter()
            .filter(|e| sel.matches(&e.labels))
            .flat_map(|e| e.nets.iter().flat_map(|n| net_range(n).ranges().to_vec()))
            .collect();
        let set = RangeSet::from_ranges(ranges);
        self.ips.insert(sel, set.clone());
        set
    }

    /// (ip, protocol, port) of every named port `names` of entities matching `sel` (all if none), with a
    /// protocol compatible with `rule_protocol` (semantics §3 "Named port").
    fn named_ports(
        &mut self,
        names: &[&'a str],
        sel: Option<&'a Selector>,
        rule_protocol: Option<Protocol>,
    ) -> Arc<BTreeSet<TupleKey>> {
        let key = (names.to_vec(), sel, rule_protocol);
        if let Some(s) = self.tuples.get(&key) {
            return s.clone();
        }
        let mut out = BTreeSet::new();
        for e in self.entities {
            if sel.is_some_and(|s| !s.matches(&e.labels)) {
                continue;
            }
            for np in &e.ports {
                if names.contains(&np.name.as_str()) && rule_protocol.is_none_or(|p| p == np.protocol) {
                    for n in &e.nets {
                        // Named ports belong to endpoints, whose nets are single addresses.
                        out.insert((ip_key(n.addr()), np.protocol.0, np.port));
                    }
                }
            }
        }
        let out = Arc::new(out);
        self.tuples.insert(key, out.clone());
        out
    }
}

/// The addresses of the entities of `entities` that `sel` matches, inside `region` (semantics §2.2).
pub fn selector_addresses_within<'e>(
    entities: impl IntoIterator<Item = &'e Entity>,
    sel: &Selector,
    region: &RangeSet,
) -> RangeSet {
    let ranges: Vec<(u128, u128)> = entities
        .into_iter()
        .filter(|e| sel.matches(&e.labels))
        .flat_map(|e| e.nets.iter().flat_map(|n| net_range(n).ranges().to_vec()))
        .collect();
    RangeSet::from_ranges(ranges).intersect(region)
}

/// The addresses of an entity's nets.
pub fn entity_range(e: &Entity) -> RangeSet {
    RangeSet::from_ranges(e.nets.iter().flat_map(|n| net_range(n).ranges().to_vec()).collect())
}

/// Flattens the walk of an endpoint's policies for one direction and stage; profiles (normal stage only)
/// follow the tiers. `selecting[i]` says whether policy `i`'s selector matches the endpoint.
pub fn flatten<'a>(
    world: &'a ResolvedNode,
    resolver: &mut SetResolver<'a>,
    selecting: &[bool],
    profiles: &[String],
    d: Direction,
    stage: Stage,
) -> FlatProgram {
    let mut p = FlatProgram::default();
    // Pass targets are only known once the next section starts: remember which terms to patch.
    let mut pending_pass: Vec<usize> = Vec::new();
    for tier in world.tiers.iter() {
        let members: Vec<usize> = tier
            .policies
            .iter()
            .copied()
            .filter(|&i| {
                let pol = &world.policies[i];
                selecting[i] && stage.holds(pol) && pol.applies(d)
            })
            .collect();
        if members.is_empty() {
            continue;
        }
        p.has_policies = true;
        patch_resume(&mut p, &mut pending_pass);
        let tier_id = p.tiers.len() as u32;
        p.tiers.push(tier.name.clone());
        for &i in &members {
            let pol = &world.policies[i];
            for (index, rule) in pol.rules(d).iter().enumerate() {
                let owner = RuleOwner::Policy { tier: tier.name.clone(), id: pol.id.clone() };
                push_rule(&mut p, resolver, world, rule, (owner, d), index, &mut pending_pass);
            }
        }
        let default = if stage.forces_pass() { TierDefault::Pass } else { tier.default_action };
        if default == TierDefault::Deny {
            p.terms.push(Term { conditions: Conditions::always(), action: TermAction::EndOfTier { tier: tier_id } });
        }
    }
    if stage == Stage::Normal {
        for name in profiles {
            patch_resume(&mut p, &mut pending_pass);
            match world.profiles.get(name) {
                // A profile that does not exist denies (semantics §1.4).
                None => {
                    let rule = p.rules.len() as u32;
                    let at = p.terms.len() as u32;
                    p.rules.push(RuleOrigin {
                        owner: RuleOwner::Profile(name.clone()),
                        index: 0,
                        action: Action::Deny,
                        direction: d,
                        fingerprint: 0,
                        id: 0,
                        term_start: at,
                        term_end: at + 1,
                        families: 0b11,
                    });
                    p.terms.push(Term {
                        conditions: Conditions::always(),
                        action: TermAction::Rule { rule, action: Action::Deny, resume: 0 },
                    });
                }
                Some(profile) => {
                    for (index, rule) in profile.rules(d).iter().enumerate() {
                        push_rule(
                            &mut p,
                            resolver,
                            world,
                            rule,
                            (RuleOwner::Profile(name.clone()), d),
                            index,
                            &mut pending_pass,
                        );
                    }
                }
            }
        }
        patch_resume(&mut p, &mut pending_pass);
        p.terms.push(Term { conditions: Conditions::always(), action: TermAction::NoProfileMatched });
    } else {
        patch_resume(&mut p, &mut pending_pass);
    }
    p
}

/// One policy's rules for direction `d` flattened on their own, numbered from 0 (rules and terms), as
/// [`flatten`] makes them inside a walk; their Pass rules resume at 0 (the caller knows the next section).
pub fn flatten_policy<'a>(
    world: &'a ResolvedNode,
    resolver: &mut SetResolver<'a>,
    policy: usize,
    d: Direction,
) -> FlatProgram {
    let pol = &world.policies[policy];
    let mut p = FlatProgram::default();
    let mut pending_pass = Vec::new();
    for (index, rule) in pol.rules(d).iter().enumerate() {
        let owner = RuleOwner::Policy { tier: pol.tier.clone(), id: pol.id.clone() };
        push_rule(&mut p, resolver, world, rule, (owner, d), index, &mut pending_pass);
    }
    p
}

/// Points every pending Pass at the current end of the list (the next section's first term).
fn patch_resume(p: &mut FlatProgram, pending: &mut Vec<usize>) {
    let here = p.terms.len() as u32;
    let first_rule = p.rules.len() as u32;
    for t in pending.drain(..) {
        if let TermAction::Rule { resume, rule, .. } = &mut p.terms[t].action {
            *resume = here;
            if p.pass_resume_rules.last().is_none_or(|&(r, _)| r < *rule) {
                p.pass_resume_rules.push((*rule, first_rule));
            }
        }
    }
}

fn push_rule<'a>(
    p: &mut FlatProgram,
    resolver: &mut SetResolver<'a>,
    world: &'a ResolvedNode,
    rule: &'a Rule,
    (owner, direction): (RuleOwner, Direction),
    index: usize,
    pending_pass: &mut Vec<usize>,
) {
    let rule_id = p.rules.len() as u32;
    let made = [IpFamily::V4, IpFamily::V6].map(|family| resolver.rule_terms(world, rule, family));
    let term_start = p.terms.len() as u32;
    let families = u8::from(rule.in_family(IpFamily::V4)) | u8::from(rule.in_family(IpFamily::V6)) << 1;
    p.rules.push(RuleOrigin {
        owner,
        index,
        action: rule.action,
        direction,
        fingerprint: made[0].fingerprint,
        id: 0,
        term_start,
        term_end: term_start,
        families,
    });
    for family in &made {
        for source in &family.dropped {
            for h in source.selector_hashes() {
                p.dropped.entry(h).or_default().push(source.clone());
            }
        }
        for (conditions, sources) in &family.terms {
            let at = p.terms.len();
            for (side, source) in sources.iter().enumerate() {
                if let Some(source) = source {
                    for h in source.selector_hashes() {
                        p.addr_sources.entry(h).or_default().push((at as u32, side as u8, source.clone()));
                    }
                }
            }
            // Log resumes right after its own rule's terms; patched below.
            p.terms.push(Term {
                conditions: conditions.clone(),
                action: TermAction::Rule { rule: rule_id, action: rule.action, resume: 0 },
            });
            if rule.action == Action::Pass {
                pending_pass.push(at);
            }
        }
    }
    p.rules[rule_id as usize].term_end = p.terms.len() as u32;
    if rule.action == Action::Log {
        // A Log rule fires once however many of its terms match; evaluation continues after all of them.
        let after = p.terms.len() as u32;
        for t in p.terms.iter_mut().rev() {
            match &mut t.action {
                TermAction::Rule { rule, resume, .. } if *rule == rule_id => *resume = after,
                _ => break,
            }
        }
    }
}

/// One side's alternatives: (address set, port set, tuple condition, how the address set was made when it
/// depends on selectors). `None` when the side can never match.
type SideAlt = (Option<RangeSet>, Option<RangeSet>, TupleCond, Option<Arc<AddrSource>>);

/// A term's conditions and, per side, how its address condition was made when it depends on selectors.
type TermConditions = (Conditions, [Option<Arc<AddrSource>>; 2]);

fn rule_conditions<'a>(
    resolver: &mut SetResolver<'a>,
    world: &'a ResolvedNode,
    rule: &'a Rule,
    family: IpFamily,
    dropped: &mut Vec<Arc<AddrSource>>,
) -> Vec<TermConditions> {
    if rule.family().is_some_and(|f| f != family) {
        return Vec::new();
    }
    let base = (family as u128) * 256;
    let mut proto = RangeSet::span(base, base + 255);
    if let Some(p) = rule.protocol {
        proto = proto.intersect(&RangeSet::span(base + p.0 as u128, base + p.0 as u128));
    }
    if let Some(p) = rule.not_protocol {
        proto = proto.difference(&RangeSet::span(base + p.0 as u128, base + p.0 as u128));
    }
    if rule.source.has_port_criteria() || rule.destination.has_port_criteria() || rule.destination.services.is_some() {
        let with_ports = [Protocol::TCP, Protocol::UDP, Protocol::SCTP, Protocol::UDPLITE];
        let allowed =
            RangeSet::from_ranges(with_ports.iter().map(|p| (base + p.0 as u128, base + p.0 as u128)).collect());
        proto = proto.intersect(&allowed);
    }
    if proto.is_empty() {
        return Vec::new();
    }
    let icmp = icmp_set(rule);
    let Some(src_alts) = side_alternatives(resolver, world, rule, &rule.source, family, true, dropped) else {
        return Vec::new();
    };
    let Some(dst_alts) = side_alternatives(resolver, world, rule, &rule.destination, family, false, dropped) else {
        return Vec::new();
    };
    let (proto, icmp) = (Arc::new(proto), icmp.map(Arc::new));
    let shared = |alts: Vec<SideAlt>| -> Vec<(Option<Arc<RangeSet>>, Option<Arc<RangeSet>>, TupleCond, Option<Arc<AddrSource>>)> {
        alts.into_iter().map(|(ip, port, t, source)| (ip.map(Arc::new), port.map(Arc::new), t, source)).collect()
    };
    let (src_alts, dst_alts) = (shared(src_alts), shared(dst_alts));
    let mut out = Vec::new();
    for (src_ip, src_port, src_tuple, src_source) in &src_alts {
        for (dst_ip, dst_port, dst_tuple, dst_source) in &dst_alts {
            let conditions = Conditions {
                proto: proto.clone(),
                src_ip: src_ip.clone(),
                dst_ip: dst_ip.clone(),
                src_port: src_port.clone(),
                dst_port: dst_port.clone(),
                icmp: icmp.clone(),
                src_tuple: src_tuple.clone(),
                dst_tuple: dst_tuple.clone(),
            };
            out.push((conditions, [src_source.clone(), dst_source.clone()]));
        }
    }
    out
}

fn icmp_set(rule: &Rule) -> Option<RangeSet> {
    let one = |m: crate::resource::IcmpMatch| {
        let t = (m.icmp_type as u128) << 8;
        match m.code {
            Some(c) => RangeSet::span(t | c as u128, t | c as u128),
            None => RangeSet::span(t, t | 0xff),
        }
    };
    let everything = RangeSet::span(0, NO_VALUE as u128);
    match (rule.icmp, rule.not_icmp) {
        (None, None) => None,
        (Some(m), None) => Some(one(m)),
        // notICMP only excludes ICMP packets of that type/code; others (NO_VALUE) still match.
        (None, Some(n)) => Some(everything.difference(&one(n))),
        (Some(m), Some(n)) => Some(one(m).difference(&one(n))),
    }
}

/// semantics §3 "IP-family filtering": the list's nets of `family`; `None` when the list was non-empty and
/// none is of the family (the rule is then absent for the family).
fn family_nets(list: &[IpNet], family: IpFamily) -> Option<Vec<IpNet>> {
    let kept: Vec<IpNet> = list.iter().copied().filter(|n| n.family() == family).collect();
    if !list.is_empty() && kept.is_empty() {
        None
    } else {
        Some(kept)
    }
}

fn side_alternatives<'a>(
    resolver: &mut SetResolver<'a>,
    world: &'a ResolvedNode,
    rule: &'a Rule,
    side: &'a EntityRule,
    family: IpFamily,
    is_source: bool,
    dropped: &mut Vec<Arc<AddrSource>>,
) -> Option<Vec<SideAlt>> {
    let fam = resolver.family(family).clone();
    let nets = family_nets(&side.nets, family)?;
    let not_nets = family_nets(&side.not_nets, family)?;
    if not_nets.iter().any(IpNet::is_catch_all) {
        return None;
    }
    let mut base: Option<RangeSet> = None;
    let restrict = |base: &mut Option<RangeSet>, set: RangeSet| {
        *base = Some(match base.take() {
            Some(b) => b.intersect(&set),
            None => set.intersect(&fam),
        });
    };
    if !nets.is_empty() {
        restrict(&mut base, RangeSet::from_ranges(nets.iter().flat_map(|n| net_range(n).ranges().to_vec()).collect()));
    }
    if !not_nets.is_empty() {
        let excluded = RangeSet::from_ranges(not_nets.iter().flat_map(|n| net_range(n).ranges().to_vec()).collect());
        restrict(&mut base, excluded.complement_within(&fam));
    }
    // What does not depend on entities (the not-selector, below, does); service source addresses are added
    // to it where they restrict `base`.
    let mut fixed = base.clone().unwrap_or_else(|| fam.clone());
    if let Some(neg) = &side.not_selector {
        let excluded = resolver.selector_ips(neg);
        restrict(&mut base, excluded.complement_within(&fam));
    }
    let mut tuple = TupleCond::Any;
    if let Some(svc) = &side.services {
        let service = world.node.services.iter().find(|s| s.name == svc.name && s.namespace == svc.namespace);
        let backends: Vec<std::net::SocketAddr> = service.map(|s| s.backends.clone()).unwrap_or_default();
        if is_source {
            let ips = RangeSet::from_ranges(backends.iter().map(|b| (ip_key(b.ip()), ip_key(b.ip()))).collect());
            fixed = fixed.intersect(&ips);
            restrict(&mut base, ips);
        } else {
            let protocol = service.map(|s| s.protocol.0).unwrap_or(0);
            let set: BTreeSet<TupleKey> = backends.iter().map(|b| (ip_key(b.ip()), protocol, b.port())).collect();
            tuple = TupleCond::In(Arc::new(set));
        }
    }
    let positive = side.selector.as_ref();
    let numeric: Vec<(u128, u128)> = side
        .ports
        .iter()
        .filter_map(|p| match p {
            Port::Range(lo, hi) => Some((*lo as u128, *hi as u128)),
            Port::Named(_) => None,
        })
        .collect();
    let names: Vec<&str> = side
        .ports
        .iter()
        .filter_map(|p| match p {
            Port::Named(n) => Some(n.as_str()),
            Port::Range(..) => None,
        })
        .collect();
    let not_numeric: Vec<(u128, u128)> = side
        .not_ports
        .iter()
        .filter_map(|p| match p {
            Port::Range(lo, hi) => Some((*lo as u128, *hi as u128)),
            Port::Named(_) => None,
        })
        .collect();
    let not_names: Vec<&str> = side
        .not_ports
        .iter()
        .filter_map(|p| match p {
            Port::Named(n) => Some(n.as_str()),
            Port::Range(..) => None,
        })
        .collect();
    let port_universe = RangeSet::span(0, 65_535);
    let port_excluded = RangeSet::from_ranges(not_numeric);
    let has_criteria = side.has_port_criteria();
    let ports_of = |set: Option<RangeSet>| -> Option<RangeSet> {
        let mut s = set;
        if has_criteria {
            s = Some(s.unwrap_or_else(|| port_universe.clone()));
        }
        if !port_excluded.is_empty() {
            s = Some(s.unwrap_or_else(|| port_universe.clone()).difference(&port_excluded));
        }
        s
    };
    let not_named = (!not_names.is_empty()).then(|| resolver.named_ports(&not_names, positive, rule.protocol));
    let with_exclusion = |cond: TupleCond| -> TupleCond {
        match (&not_named, cond) {
            (None, c) => c,
            (Some(ex), TupleCond::Any) => TupleCond::NotIn(ex.clone()),
            (Some(ex), TupleCond::In(s)) => TupleCond::In(Arc::new(s.difference(ex).copied().collect())),
            (Some(ex), TupleCond::NotIn(s)) => TupleCond::NotIn(Arc::new(s.union(ex).copied().collect())),
        }
    };

    let source = |selector: Option<&Selector>| -> Option<Arc<AddrSource>> {
        (selector.is_some() || side.not_selector.is_some())
            .then(|| Arc::new(AddrSource::new(fixed.clone(), selector.cloned(), side.not_selector.clone())))
    };
    let mut alts: Vec<SideAlt> = Vec::new();
    if side.ports.is_empty() {
        let mut ip = base.clone();
        if let Some(sel) = positive {
            restrict(&mut ip, resolver.selector_ips(sel));
        }
        alts.push((ip, ports_of(None), with_exclusion(tuple.clone()), source(positive)));
    } else {
        if !numeric.is_empty() {
            let mut ip = base.clone();
            if let Some(sel) = positive {
                restrict(&mut ip, resolver.selector_ips(sel));
            }
            let ports = ports_of(Some(RangeSet::from_ranges(numeric)));
            alts.push((ip, ports, with_exclusion(tuple.clone()), source(positive)));
        }
        if !names.is_empty() {
            let named = resolver.named_ports(&names, positive, rule.protocol);
            alts.push((base.clone(), ports_of(None), with_exclusion(TupleCond::In(named)), source(None)));
        }
    }
    // Drop alternatives that can never match, remembering the selectors an address set was empty through.
    alts.retain(|(ip, port, t, source)| {
        let keep = ip.as_ref().is_none_or(|s| !s.is_empty())
            && port.as_ref().is_none_or(|s| !s.is_empty())
            && !matches!(t, TupleCond::In(s) if s.is_empty());
        if !keep {
            if let Some(s) = source {
                dropped.push(s.clone());
            }
        }
        keep
    });
    Some(alts)
}
