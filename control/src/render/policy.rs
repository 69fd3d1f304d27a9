//! Policy and profile chains (`cali-pi-`/`cali-po-`, `cali-pri-`/`cali-pro-`) and the IP sets their rules
//! match on (notes/felix-iptables.md §7, §8): Felix's per-rule pipeline — family filter, match blocks for
//! what one iptables rule cannot OR, the main match in Felix's fragment order, the mark-and-return actions.

use std::collections::{BTreeMap, BTreeSet};

use calxdp_policy::net::{IpFamily, IpNet};
use calxdp_policy::resolve::{Direction, ResolvedNode};
use calxdp_policy::resource::{Action, EntityRule, IcmpMatch, Policy, Port, Profile, Protocol, Rule as CalicoRule};
use calxdp_policy::selector::Selector;

use super::hash::{chain_name, unique_id};
use super::{Chain, IpSet, Rule, SetKind};

pub const MARK_ACCEPT: u32 = 0x10000;
pub const MARK_PASS: u32 = 0x20000;
pub const MARK_DROP: u32 = 0x40000;
pub const MARK_SCRATCH0: u32 = 0x80000;
pub const MARK_SCRATCH1: u32 = 0x100000;

/// `--jump MARK --set-mark <bit>/<bit>`.
pub fn set_mark(bit: u32) -> String {
    format!("--jump MARK --set-mark {bit:#x}/{bit:#x}")
}

/// `--jump MARK --set-mark 0/<bits>`.
pub fn clear_mark(bits: u32) -> String {
    format!("--jump MARK --set-mark 0/{bits:#x}")
}

/// `-m mark --mark <bit>/<bit>`.
pub fn mark_set(bit: u32) -> String {
    format!("-m mark --mark {bit:#x}/{bit:#x}")
}

/// `-m mark --mark 0/<bits>`.
pub fn mark_clear(bits: u32) -> String {
    format!("-m mark --mark 0/{bits:#x}")
}

/// The IP sets a family's rules use, by name, with members computed from the node's entities.
pub struct SetRegistry<'w> {
    world: &'w ResolvedNode,
    family: IpFamily,
    sets: BTreeMap<String, IpSet>,
}

/// `cali40` / `cali60` and the ID, cut to ipset's 31 characters (Felix `NameForMainIPSet`).
pub fn set_name(family: IpFamily, id: &str) -> String {
    let mut n = format!("cali{}0{id}", if family == IpFamily::V4 { 4 } else { 6 });
    n.truncate(31);
    n
}

/// A prefix as an ipset `hash:net` member: `/0` is not allowed there, so Felix splits it in two halves.
fn net_members(n: &IpNet, out: &mut BTreeSet<String>) {
    if n.prefix_len() == 0 {
        match n.family() {
            IpFamily::V4 => {
                out.insert("0.0.0.0/1".into());
                out.insert("128.0.0.0/1".into());
            }
            IpFamily::V6 => {
                out.insert("::/1".into());
                out.insert("8000::/1".into());
            }
        }
    } else {
        out.insert(n.to_string());
    }
}

fn proto_word(p: Protocol) -> &'static str {
    match p {
        Protocol::TCP => "tcp",
        Protocol::UDP => "udp",
        Protocol::SCTP => "sctp",
        _ => "any",
    }
}

impl<'w> SetRegistry<'w> {
    pub fn new(world: &'w ResolvedNode, family: IpFamily) -> SetRegistry<'w> {
        SetRegistry { world, family, sets: BTreeMap::new() }
    }

    pub fn family(&self) -> IpFamily {
        self.family
    }

    pub fn into_sets(self) -> BTreeMap<String, IpSet> {
        self.sets
    }

    /// Registers a set by hand (Felix's static sets) and returns its name.
    pub fn fixed(&mut self, id: &str, kind: SetKind, members: BTreeSet<String>) -> String {
        let name = set_name(self.family, id);
        self.sets.insert(name.clone(), IpSet { name: name.clone(), kind, members });
        name
    }

    /// The `NET` set of a selector: the addresses of every entity it matches (semantics §2.2).
    pub fn selector(&mut self, sel: &Selector) -> String {
        let name = set_name(self.family, &unique_id("s", &sel.to_string()));
        if !self.sets.contains_key(&name) {
            let mut members = BTreeSet::new();
            for e in self.world.entities.iter().filter(|e| sel.matches(&e.labels)) {
                for n in e.nets.iter().filter(|n| n.family() == self.family) {
                    net_members(n, &mut members);
                }
            }
            self.sets.insert(name.clone(), IpSet { name: name.clone(), kind: SetKind::Net, members });
        }
        name
    }

    /// The `IP_AND_PORT` set of a named port: (ip, protocol, port) of entities matching `sel` (all when
    /// none) that declare `port` with a protocol the rule allows (semantics §3 "Named port").
    pub fn named_port(&mut self, sel: Option<&Selector>, rule_protocol: Option<Protocol>, port: &str) -> String {
        let all = Selector::all();
        let sel = sel.unwrap_or(&all);
        let proto = rule_protocol.map(proto_word).unwrap_or("any");
        let sel_id = unique_id("s", &sel.to_string());
        let name = set_name(self.family, &unique_id("n", &format!("{sel_id},{proto},{port}")));
        if !self.sets.contains_key(&name) {
            let mut members = BTreeSet::new();
            for e in self.world.entities.iter().filter(|e| sel.matches(&e.labels)) {
                for np in e.ports.iter().filter(|np| np.name == port) {
                    if rule_protocol.is_some_and(|p| p != np.protocol) || proto_word(np.protocol) == "any" {
                        continue;
                    }
                    for n in e.nets.iter().filter(|n| n.family() == self.family) {
                        members.insert(format!("{},{}:{}", n.addr(), proto_word(np.protocol), np.port));
                    }
                }
            }
            self.sets.insert(name.clone(), IpSet { name: name.clone(), kind: SetKind::IpPort, members });
        }
        name
    }

    /// A service's endpoints: with ports (`svc`, for destinations) or addresses only (`svcnoport`).
    pub fn service(&mut self, namespace: &str, svc_name: &str, with_ports: bool) -> String {
        let key = format!("{namespace}/{svc_name}");
        let id = unique_id(if with_ports { "svc" } else { "svcnoport" }, &key);
        let name = set_name(self.family, &id);
        if !self.sets.contains_key(&name) {
            let mut members = BTreeSet::new();
            let family = self.family;
            for s in self.world.node.services.iter().filter(|s| s.name == svc_name && s.namespace == namespace) {
                for b in s.backends.iter().filter(|b| IpFamily::of(b.ip()) == family) {
                    if with_ports {
                        members.insert(format!("{},{}:{}", b.ip(), proto_word(s.protocol), b.port()));
                    } else {
                        members.insert(IpNet::host(b.ip()).to_string());
                    }
                }
            }
            let kind = if with_ports { SetKind::IpPort } else { SetKind::Net };
            self.sets.insert(name.clone(), IpSet { name: name.clone(), kind, members });
        }
        name
    }
}

/// What a chain's rules belong to, for comments, log prefixes and chain names.
pub enum Owner<'a> {
    Policy { policy: &'a Policy, tier: &'a str },
    Profile(&'a Profile),
}

/// `cali-pi-`/`cali-po-` + the policy's ID (v3.32+: `<kind>/[<ns>/]<name>`, notes §9.2).
pub fn policy_chain(p: &Policy, d: Direction) -> String {
    let id = match &p.id.namespace {
        Some(ns) => format!("{}/{ns}/{}", p.id.kind.short_name(), p.id.name),
        None => format!("{}/{}", p.id.kind.short_name(), p.id.name),
    };
    chain_name(if d == Direction::Ingress { "cali-pi-" } else { "cali-po-" }, &id)
}

pub fn profile_chain(name: &str, d: Direction) -> String {
    chain_name(if d == Direction::Ingress { "cali-pri-" } else { "cali-pro-" }, name)
}

/// The chain of one policy or profile for one direction (Felix `PolicyToIptablesChains`).
/// `deny` is the table's deny action (`DROP`, or `REJECT` in the filter table: Felix's `FilterDenyAction`).
pub fn owner_chain(sets: &mut SetRegistry<'_>, owner: &Owner<'_>, d: Direction, log: &LogConfig, deny: &str) -> Chain {
    let (name, rules, comment): (String, &[CalicoRule], String) = match owner {
        Owner::Policy { policy, .. } => {
            let who = match &policy.id.namespace {
                Some(ns) => format!("{} {ns}/{}", policy.id.kind.name(), policy.id.name),
                None => format!("{} {}", policy.id.kind.name(), policy.id.name),
            };
            (policy_chain(policy, d), policy.rules(d), format!("{who} {}", d.name()))
        }
        Owner::Profile(p) => (profile_chain(&p.name, d), p.rules(d), format!("Profile {} {}", p.name, d.name())),
    };
    let mut out: Vec<Rule> = Vec::new();
    for r in rules {
        out.extend(rule_rules(sets, r, owner, log, deny));
    }
    // Felix strips trailing RETURNs: a final Allow contributes only its set-mark rule.
    while out.last().is_some_and(|r| r.action == "--jump RETURN") {
        out.pop();
    }
    match out.first_mut() {
        Some(first) => first.comments.insert(0, comment),
        None => out.push(Rule::new("", "").comment(comment)),
    }
    Chain::new(name, out)
}

/// Felix's `LogPrefix` and `LogActionRateLimit`.
pub struct LogConfig {
    pub prefix: String,
    pub rate_limit: Option<String>,
    pub burst: u64,
}

impl LogConfig {
    /// The LOG prefix for a rule of `owner` (`%t`, `%k`, `%n`, `%p` substituted).
    fn prefix_for(&self, owner: &Owner<'_>) -> String {
        let p = &self.prefix;
        if !p.contains('%') {
            return p.clone();
        }
        let (kind, name, ns, tier) = match owner {
            Owner::Policy { policy, tier } => {
                (policy.id.kind.short_name(), policy.id.name.as_str(), policy.id.namespace.as_deref(), *tier)
            }
            Owner::Profile(pr) => ("pro", pr.name.as_str(), None, ""),
        };
        let full = match ns {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        };
        let mut out = String::new();
        let mut chars = p.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '%' {
                match chars.peek() {
                    Some('t') => out.push_str(tier),
                    Some('k') => out.push_str(kind),
                    Some('n') => out.push_str(name),
                    Some('p') => out.push_str(&full),
                    _ => {
                        out.push('%');
                        continue;
                    }
                }
                chars.next();
            } else {
                out.push(c);
            }
        }
        out
    }
}

fn protocol_text(p: Protocol) -> String {
    match p {
        Protocol::TCP => "tcp".into(),
        Protocol::UDP => "udp".into(),
        Protocol::ICMP => "icmp".into(),
        Protocol::ICMPV6 => "icmpv6".into(),
        Protocol::SCTP => "sctp".into(),
        Protocol::UDPLITE => "udplite".into(),
        Protocol(n) => n.to_string(),
    }
}

/// One side of a rule after Felix's conversion (rule scanner) and family filter.
#[derive(Default)]
struct Side {
    nets: Vec<String>,
    not_nets: Vec<String>,
    ip_sets: Vec<String>,
    not_ip_sets: Vec<String>,
    ip_port_sets: Vec<String>,
    ports: Vec<(u16, u16)>,
    named_sets: Vec<String>,
    not_ports: Vec<(u16, u16)>,
    not_named_sets: Vec<String>,
}

/// The family's CIDRs of a list; `None` when the list was non-empty and none is of the family.
fn family_nets(list: &[IpNet], family: IpFamily) -> Option<Vec<IpNet>> {
    let kept: Vec<IpNet> = list.iter().copied().filter(|n| n.family() == family).collect();
    if !list.is_empty() && kept.is_empty() {
        None
    } else {
        Some(kept)
    }
}

fn side(sets: &mut SetRegistry<'_>, e: &EntityRule, protocol: Option<Protocol>, is_src: bool) -> Option<Side> {
    let family = sets.family();
    let nets = family_nets(&e.nets, family)?;
    let not_nets = family_nets(&e.not_nets, family)?;
    // A negated catch-all makes the rule match nothing: Felix drops it (semantics §3).
    if not_nets.iter().any(IpNet::is_catch_all) {
        return None;
    }
    let mut s = Side {
        nets: nets.iter().map(|n| n.to_string()).collect(),
        not_nets: not_nets.iter().map(|n| n.to_string()).collect(),
        ..Side::default()
    };
    // A positive selector and a notSelector fold into one (Felix `combineMatchesIfPossible`).
    let (positive, negative) = match (&e.selector, &e.not_selector) {
        (Some(p), Some(n)) => (Some(p.clone().and(n.clone().negate())), None),
        (p, n) => (p.clone(), n.clone()),
    };
    let numeric = |ports: &[Port]| -> Vec<(u16, u16)> {
        ports
            .iter()
            .filter_map(|p| match p {
                Port::Range(a, b) => Some((*a, *b)),
                Port::Named(_) => None,
            })
            .collect()
    };
    let named = |ports: &[Port]| -> Vec<String> {
        ports
            .iter()
            .filter_map(|p| match p {
                Port::Named(n) => Some(n.clone()),
                Port::Range(..) => None,
            })
            .collect()
    };
    s.ports = numeric(&e.ports);
    s.not_ports = numeric(&e.not_ports);
    let names = named(&e.ports);
    for n in &names {
        s.named_sets.push(sets.named_port(positive.as_ref(), protocol, n));
    }
    for n in named(&e.not_ports) {
        s.not_named_sets.push(sets.named_port(positive.as_ref(), protocol, &n));
    }
    if let Some(p) = &positive {
        if !s.ports.is_empty() || names.is_empty() {
            s.ip_sets.push(sets.selector(p));
        }
    }
    if let Some(n) = &negative {
        s.not_ip_sets.push(sets.selector(n));
    }
    if let Some(svc) = &e.services {
        if is_src {
            s.ip_sets.push(sets.service(&svc.namespace, &svc.name, false));
        } else {
            s.ip_port_sets.push(sets.service(&svc.namespace, &svc.name, true));
        }
    }
    Some(s)
}

/// At most 15 multiport slots per match; a range takes two (Felix `SplitPortList`).
fn split_ports(ports: &[(u16, u16)]) -> Vec<Vec<(u16, u16)>> {
    let mut splits = Vec::new();
    let mut cur: Vec<(u16, u16)> = Vec::new();
    let mut room = 15;
    for &(a, b) in ports {
        let need = if a == b { 1 } else { 2 };
        if room < need {
            splits.push(std::mem::take(&mut cur));
            room = 15;
        }
        cur.push((a, b));
        room -= need;
    }
    if !cur.is_empty() {
        splits.push(cur);
    }
    splits
}

fn ports_text(ports: &[(u16, u16)]) -> String {
    ports.iter().map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}:{b}") }).collect::<Vec<_>>().join(",")
}

fn dir_word(is_src: bool) -> &'static str {
    if is_src {
        "src"
    } else {
        "dst"
    }
}

/// Felix's match blocks (scratch0: all blocks so far matched; scratch1: this block matched).
#[derive(Default)]
struct Blocks {
    using: bool,
    done_first_positive: bool,
    rules: Vec<Rule>,
}

impl Blocks {
    fn initial(&mut self, bits: u32) {
        if !self.using {
            self.rules
                .push(Rule::new("", format!("--jump MARK --set-mark {bits:#x}/{:#x}", MARK_SCRATCH0 | MARK_SCRATCH1)));
            self.using = true;
        }
    }

    fn positive_mark(&self) -> u32 {
        if self.done_first_positive {
            MARK_SCRATCH1
        } else {
            MARK_SCRATCH0
        }
    }

    fn finish_positive(&mut self) {
        if !self.done_first_positive {
            self.done_first_positive = true;
            return;
        }
        self.rules.push(Rule::new(mark_clear(MARK_SCRATCH1), clear_mark(MARK_SCRATCH0)));
    }

    fn ports(&mut self, protocol: Option<Protocol>, splits: &[Vec<(u16, u16)>], named: &[String], is_src: bool) {
        self.initial(0);
        let mark = self.positive_mark();
        let flag = if is_src { "--source-ports" } else { "--destination-ports" };
        for split in splits {
            let mut m = Vec::new();
            if let Some(p) = protocol {
                m.push(format!("-p {}", protocol_text(p)));
            }
            m.push(format!("-m multiport {flag} {}", ports_text(split)));
            self.rules.push(Rule::new(m.join(" "), set_mark(mark)));
        }
        for set in named {
            let w = dir_word(is_src);
            self.rules.push(Rule::new(format!("-m set --match-set {set} {w},{w}"), set_mark(mark)));
        }
        self.finish_positive();
    }

    fn cidrs(&mut self, cidrs: &[String], is_src: bool) {
        self.initial(0);
        let mark = self.positive_mark();
        let flag = if is_src { "--source" } else { "--destination" };
        for c in cidrs {
            self.rules.push(Rule::new(format!("{flag} {c}"), set_mark(mark)));
        }
        self.finish_positive();
    }

    fn negated_cidrs(&mut self, cidrs: &[String], is_src: bool) {
        self.initial(MARK_SCRATCH0);
        let flag = if is_src { "--source" } else { "--destination" };
        for c in cidrs {
            self.rules.push(Rule::new(format!("{flag} {c}"), clear_mark(MARK_SCRATCH0)));
        }
    }
}

fn icmp_text(family: IpFamily, m: IcmpMatch, negated: bool) -> String {
    let not = if negated { "! " } else { "" };
    let value = match m.code {
        Some(c) => format!("{}/{c}", m.icmp_type),
        None => m.icmp_type.to_string(),
    };
    match family {
        IpFamily::V4 => format!("-m icmp {not}--icmp-type {value}"),
        IpFamily::V6 => format!("-m icmp6 {not}--icmpv6-type {value}"),
    }
}

/// The iptables rules of one Calico rule in this family (none when the rule is filtered out).
fn rule_rules(sets: &mut SetRegistry<'_>, r: &CalicoRule, owner: &Owner<'_>, log: &LogConfig, deny: &str) -> Vec<Rule> {
    let family = sets.family();
    if r.family().is_some_and(|f| f != family) {
        return Vec::new();
    }
    let Some(mut src) = side(sets, &r.source, r.protocol, true) else { return Vec::new() };
    let Some(mut dst) = side(sets, &r.destination, r.protocol, false) else { return Vec::new() };

    let mut blocks = Blocks::default();
    let src_splits = split_ports(&src.ports);
    if src_splits.len() + src.named_sets.len() > 1 {
        blocks.ports(r.protocol, &src_splits, &src.named_sets, true);
        src.ports.clear();
        src.named_sets.clear();
    }
    let dst_splits = split_ports(&dst.ports);
    if dst_splits.len() + dst.named_sets.len() > 1 {
        blocks.ports(r.protocol, &dst_splits, &dst.named_sets, false);
        dst.ports.clear();
        dst.named_sets.clear();
    }
    if src.nets.len() > 1 {
        blocks.cidrs(&src.nets, true);
        src.nets.clear();
    }
    if dst.nets.len() > 1 {
        blocks.cidrs(&dst.nets, false);
        dst.nets.clear();
    }
    if src.nets.len() + src.not_nets.len() > 1 {
        blocks.negated_cidrs(&src.not_nets, true);
        src.not_nets.clear();
    }
    if dst.nets.len() + dst.not_nets.len() > 1 {
        blocks.negated_cidrs(&dst.not_nets, false);
        dst.not_nets.clear();
    }

    // The main match, in Felix's fragment order (`CalculateRuleMatch`).
    let mut m: Vec<String> = Vec::new();
    if let Some(p) = r.protocol {
        m.push(format!("-p {}", protocol_text(p)));
    }
    for (s, is_src) in [(&src, true), (&dst, false)] {
        let w = dir_word(is_src);
        if let Some(n) = s.nets.first() {
            m.push(format!("{} {n}", if is_src { "--source" } else { "--destination" }));
        }
        for set in &s.ip_sets {
            m.push(format!("-m set --match-set {set} {w}"));
        }
        if !is_src {
            for set in &s.ip_port_sets {
                m.push(format!("-m set --match-set {set} dst,dst"));
            }
        }
        if !s.ports.is_empty() {
            let flag = if is_src { "--source-ports" } else { "--destination-ports" };
            m.push(format!("-m multiport {flag} {}", ports_text(&s.ports)));
        }
        for set in &s.named_sets {
            m.push(format!("-m set --match-set {set} {w},{w}"));
        }
    }
    if let Some(i) = r.icmp {
        m.push(icmp_text(family, i, false));
    }
    if let Some(p) = r.not_protocol {
        m.push(format!("! -p {}", protocol_text(p)));
    }
    for (s, is_src) in [(&src, true), (&dst, false)] {
        let w = dir_word(is_src);
        if let Some(n) = s.not_nets.first() {
            m.push(format!("! {} {n}", if is_src { "--source" } else { "--destination" }));
        }
        for set in &s.not_ip_sets {
            m.push(format!("-m set ! --match-set {set} {w}"));
        }
        let flag = if is_src { "--source-ports" } else { "--destination-ports" };
        for split in split_ports(&s.not_ports) {
            m.push(format!("-m multiport ! {flag} {}", ports_text(&split)));
        }
        for set in &s.not_named_sets {
            m.push(format!("-m set ! --match-set {set} {w},{w}"));
        }
    }
    if let Some(i) = r.not_icmp {
        m.push(icmp_text(family, i, true));
    }
    if blocks.using {
        m.push(mark_set(MARK_SCRATCH0));
    }
    let main = m.join(" ");

    // Actions (`CombineMatchAndActionsForProtoRule`); no flow logs, so no NFLOG rules.
    let mut out = blocks.rules;
    let join = |a: &str, b: &str| -> String {
        match (a.is_empty(), b.is_empty()) {
            (true, _) => b.to_string(),
            (_, true) => a.to_string(),
            _ => format!("{a} {b}"),
        }
    };
    match r.action {
        Action::Log => {
            let limit = match &log.rate_limit {
                Some(rate) if log.burst > 0 => format!("-m limit --limit {rate} --limit-burst {}", log.burst),
                Some(rate) => format!("-m limit --limit {rate}"),
                None => String::new(),
            };
            out.push(Rule::new(
                join(&limit, &main),
                format!("--jump LOG --log-prefix \"{}: \" --log-level 5", log.prefix_for(owner)),
            ));
        }
        Action::Allow => {
            out.push(Rule::new(main, set_mark(MARK_ACCEPT)));
            out.push(Rule::new(mark_set(MARK_ACCEPT), "--jump RETURN"));
        }
        Action::Pass => {
            out.push(Rule::new(main, set_mark(MARK_PASS)));
            out.push(Rule::new(mark_set(MARK_PASS), "--jump RETURN"));
        }
        Action::Deny => {
            out.push(Rule::new(main, set_mark(MARK_DROP)));
            out.push(Rule::new(mark_set(MARK_DROP), format!("--jump {deny}")));
        }
    }
    out
}
