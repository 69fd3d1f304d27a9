//! Felix's chains for one IP family (notes/felix-iptables.md §1–§6, §10, §11): the hooks into the kernel
//! chains, the static top-level chains, the workload and host-endpoint dispatch trees, the endpoint chains
//! with their tiers, policy groups, profiles and failsafes, and the policy and profile chains they reach.
//! Felix's defaults otherwise: no overlay, no flow logs, no IPVS, `InterfacePrefix=cali`, ACCEPT as the
//! allow action, `ChainInsertMode=insert`. The deny action is the configuration's (`FilterDenyAction`):
//! REJECT, where configured, in the filter table only — Felix also puts it in raw and mangle, where
//! iptables refuses it and Felix cannot program at all (projectcalico/calico#7914; its fix keeps DROP
//! there), so those stay DROP.

use std::collections::{BTreeMap, BTreeSet};

use calxdp_policy::net::IpFamily;
use calxdp_policy::node::{EndpointToHostAction, Failsafe};
use calxdp_policy::resolve::{Direction, ResolvedNode, Stage};
use calxdp_policy::resource::{Action, Labels, Profile, Protocol, Rule as CalicoRule, TierDefault};

use super::hash::{chain_name, group_uid};
use super::policy::{
    clear_mark, mark_clear, mark_set, owner_chain, policy_chain, profile_chain, set_mark, LogConfig, Owner,
    SetRegistry, MARK_ACCEPT, MARK_PASS, MARK_SCRATCH0,
};
use super::{Chain, Hook, Position, Rule, SetKind, Table};

/// The workload interface prefix (Felix `InterfacePrefix`).
pub const WORKLOAD_PREFIX: &str = "cali";
/// The pseudo-interface the `*` host endpoint's chains are named after.
const STAR_IFACE: &str = "any-interface-at-all";
/// accept | pass | scratch0 | scratch1: what "clear all Calico marks" clears (the drop bit is not in it).
const ALL_MARKS: u32 = 0x1b0000;

/// One tier of an endpoint's walk for one direction: its name, whether it ends in a drop, its policies.
struct TierEntry {
    name: String,
    drops: bool,
    policies: Vec<usize>,
}

/// What kind of endpoint chain (notes §5.3).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavour {
    /// WEP or host-endpoint normal chain: conntrack, tiers, profiles, final drop.
    Normal,
    /// applyOnForward chain: conntrack, tiers, default allow when there are no forward tiers at all.
    Forward { any_tiers: bool },
    /// Pre-DNAT (mangle): conntrack, failsafe, tiers with no end drop.
    PreDnat,
    /// Untracked (raw): failsafe, tiers, NOTRACK on accept.
    Untracked,
}

struct EndpointChain<'a> {
    name: String,
    flavour: Flavour,
    direction: Direction,
    tiers: Vec<TierEntry>,
    profiles: &'a [String],
    failsafe: Option<&'static str>,
    /// The conntrack rules' allow: ACCEPT, or set the accept mark and RETURN (mangle egress).
    allow_return: bool,
    workload_egress: bool,
}

/// Everything the rendering of one family collects on the way: chains needed per table.
struct Builder<'w, 's> {
    world: &'w ResolvedNode,
    sets: &'s mut SetRegistry<'w>,
    log: LogConfig,
    /// Policy chains (policy index, direction) and profile chains each table needs.
    policies: BTreeMap<&'static str, BTreeSet<(usize, Direction)>>,
    profiles: BTreeMap<&'static str, BTreeSet<(String, Direction)>>,
    groups: BTreeMap<&'static str, Vec<Chain>>,
}

fn tiers_for(world: &ResolvedNode, labels: &Labels, stage: Stage, d: Direction) -> Vec<TierEntry> {
    world
        .tiers
        .iter()
        .filter_map(|t| {
            let policies: Vec<usize> = t
                .policies
                .iter()
                .copied()
                .filter(|&i| {
                    let p = &world.policies[i];
                    stage.holds(p) && p.applies(d) && p.selector.matches(labels)
                })
                .collect();
            (!policies.is_empty()).then(|| TierEntry {
                name: t.name.clone(),
                drops: !stage.forces_pass() && t.default_action == TierDefault::Deny,
                policies,
            })
        })
        .collect()
}

fn conntrack_rules(allow_return: bool, invalid_check: bool, deny: &str) -> Vec<Rule> {
    let mut out = Vec::new();
    if allow_return {
        out.push(Rule::new("-m conntrack --ctstate RELATED,ESTABLISHED", set_mark(MARK_ACCEPT)));
        out.push(Rule::new("-m conntrack --ctstate RELATED,ESTABLISHED", "--jump RETURN"));
    } else {
        out.push(Rule::new("-m conntrack --ctstate RELATED,ESTABLISHED", "--jump ACCEPT"));
    }
    if invalid_check {
        out.push(Rule::new("-m conntrack --ctstate INVALID", format!("--jump {deny}")));
    }
    out
}

impl<'w, 's> Builder<'w, 's> {
    /// An endpoint chain (Felix `endpointIptablesChain`), registering the policy chains it jumps to.
    /// A table's deny action: REJECT in filter when Felix's `FilterDenyAction` says so, else DROP.
    fn deny(&self, table: &str) -> &'static str {
        deny_action(self.world, table)
    }

    fn endpoint_chain(&mut self, table: &'static str, spec: EndpointChain<'_>) -> Chain {
        let felix = &self.world.node.felix;
        let deny = self.deny(table);
        let mut rules = Vec::new();
        if spec.flavour != Flavour::Untracked {
            rules.extend(conntrack_rules(spec.allow_return, !felix.disable_conntrack_invalid_check, deny));
        }
        if let Some(fs) = spec.failsafe {
            rules.push(Rule::new("", format!("--jump {fs}")));
        }
        rules.push(Rule::new("", clear_mark(MARK_ACCEPT | MARK_PASS)));
        if spec.workload_egress {
            if !felix.allow_vxlan_from_workloads {
                rules.push(
                    Rule::new(
                        format!("-p 17 -m multiport --destination-ports {}", felix.vxlan_port),
                        format!("--jump {deny}"),
                    )
                    .comment("Drop VXLAN encapped packets originating in workloads"),
                );
            }
            if !felix.allow_ipip_from_workloads {
                rules.push(
                    Rule::new("-p 4", format!("--jump {deny}"))
                        .comment("Drop IPinIP encapped packets originating in workloads"),
                );
            }
        }
        let (group_prefix, dir_word) = match spec.direction {
            Direction::Ingress => ("cali-gi-", "inbound"),
            Direction::Egress => ("cali-go-", "outbound"),
        };
        for tier in &spec.tiers {
            rules.push(Rule::new("", clear_mark(MARK_PASS)).comment(format!("Start of tier {}", tier.name)));
            for group in self.groups_of(&tier.policies) {
                let target = if group.len() == 1 {
                    self.need_policy(table, group[0], spec.direction)
                } else {
                    self.group_chain(table, &group, spec.direction, group_prefix, dir_word)
                };
                rules.push(Rule::new(mark_clear(MARK_PASS), format!("--jump {target}")));
                if spec.flavour == Flavour::Untracked {
                    rules.push(Rule::new(mark_set(MARK_ACCEPT), "--jump NOTRACK"));
                }
                rules.push(Rule::new(mark_set(MARK_ACCEPT), "--jump RETURN").comment("Return if policy accepted"));
            }
            let ends = matches!(spec.flavour, Flavour::Normal | Flavour::Forward { .. });
            if ends && tier.drops {
                rules.push(
                    Rule::new(mark_clear(MARK_PASS), format!("--jump {deny}"))
                        .comment(format!("End of tier {}. Drop if no policies passed packet", tier.name)),
                );
            }
        }
        match spec.flavour {
            Flavour::Forward { any_tiers: false } => {
                rules.push(Rule::new("", set_mark(MARK_ACCEPT)).comment("Allow forwarded traffic by default"));
                rules.push(Rule::new("", "--jump RETURN").comment("Return for accepted forward traffic"));
            }
            Flavour::Normal => {
                for p in spec.profiles {
                    self.profiles.entry(table).or_default().insert((p.clone(), spec.direction));
                    rules.push(Rule::new("", format!("--jump {}", profile_chain(p, spec.direction))));
                    rules.push(Rule::new(mark_set(MARK_ACCEPT), "--jump RETURN").comment("Return if profile accepted"));
                }
                rules.push(Rule::new("", format!("--jump {deny}")).comment("Drop if no profiles matched"));
            }
            _ => {}
        }
        Chain::new(spec.name, rules)
    }

    /// Consecutive policies with the same selector form one group (notes §6).
    fn groups_of(&self, policies: &[usize]) -> Vec<Vec<usize>> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut last: Option<String> = None;
        for &i in policies {
            let sel = self.world.policies[i].selector.to_string();
            match groups.last_mut() {
                Some(g) if last.as_deref() == Some(sel.as_str()) => g.push(i),
                _ => groups.push(vec![i]),
            }
            last = Some(sel);
        }
        groups
    }

    fn need_policy(&mut self, table: &'static str, p: usize, d: Direction) -> String {
        self.policies.entry(table).or_default().insert((p, d));
        policy_chain(&self.world.policies[p], d)
    }

    fn group_chain(
        &mut self,
        table: &'static str,
        group: &[usize],
        d: Direction,
        prefix: &str,
        dir_word: &str,
    ) -> String {
        let world = self.world;
        let mut lines =
            vec![world.policies[group[0]].selector.to_string(), dir_word.to_string(), group.len().to_string()];
        for &i in group {
            let id = &world.policies[i].id;
            lines.push(format!(
                "{{Name: {}, Namespace: {}, Kind: {}}}",
                id.name,
                id.namespace.as_deref().unwrap_or(""),
                id.kind.name()
            ));
        }
        let name = format!("{prefix}{}", group_uid(&lines));
        let mut rules = Vec::new();
        for (n, &i) in group.iter().enumerate() {
            let target = self.need_policy(table, i, d);
            if n > 0 && n % 5 == 0 {
                rules.push(
                    Rule::new(format!("-m mark ! --mark 0/{:#x}", MARK_ACCEPT | MARK_PASS), "--jump RETURN")
                        .comment("Return on verdict"),
                );
            }
            let guard = if n % 5 == 0 { String::new() } else { mark_clear(MARK_ACCEPT | MARK_PASS) };
            rules.push(Rule::new(guard, format!("--jump {target}")));
        }
        let chains = self.groups.entry(table).or_default();
        if !chains.iter().any(|c| c.name == name) {
            chains.push(Chain::new(name.clone(), rules));
        }
        name
    }

    /// The policy, profile and group chains a table's endpoint chains reached.
    fn owner_chains(&mut self, table: &'static str) -> Vec<Chain> {
        let mut out = Vec::new();
        let world = self.world;
        for (i, d) in self.policies.get(table).cloned().unwrap_or_default() {
            let p = &world.policies[i];
            let tier = p.tier.as_str();
            out.push(owner_chain(self.sets, &Owner::Policy { policy: p, tier }, d, &self.log, self.deny(table)));
        }
        for (name, d) in self.profiles.get(table).cloned().unwrap_or_default() {
            // A profile that does not exist denies (semantics §1.4).
            let missing;
            let profile = match world.profiles.get(&name) {
                Some(p) => p,
                None => {
                    missing = Profile {
                        name: name.clone(),
                        ingress: vec![CalicoRule::new(Action::Deny)],
                        egress: vec![CalicoRule::new(Action::Deny)],
                        labels_to_apply: Labels::new(),
                    };
                    &missing
                }
            };
            out.push(owner_chain(self.sets, &Owner::Profile(profile), d, &self.log, self.deny(table)));
        }
        out.extend(self.groups.remove(table).unwrap_or_default());
        out
    }
}

/// The deny action of `table` (Felix's `FilterDenyAction`, in the filter table only: module doc).
fn deny_action(world: &ResolvedNode, table: &str) -> &'static str {
    let reject = world.node.felix.filter_deny_action() == calxdp_policy::node::DenyAction::Reject;
    if reject && table == "filter" {
        "REJECT"
    } else {
        "DROP"
    }
}

fn proto_name(p: Protocol) -> String {
    match p {
        Protocol::TCP => "tcp".into(),
        Protocol::UDP => "udp".into(),
        Protocol::SCTP => "sctp".into(),
        Protocol(n) => n.to_string(),
    }
}

/// `cali-failsafe-in` / `cali-failsafe-out` (notes §3.5); raw adds the replies' direction.
fn failsafe_chain(
    name: &str,
    family: IpFamily,
    primary: &[Failsafe],
    reverse: Option<&[Failsafe]>,
    inbound: bool,
) -> Chain {
    let mut rules = Vec::new();
    let net_flag = |inbound: bool| if inbound { "--source" } else { "--destination" };
    for f in primary {
        if f.net.is_some_and(|n| n.family() != family) {
            continue;
        }
        let mut m = format!("-p {} -m multiport --destination-ports {}", proto_name(f.protocol), f.port);
        if let Some(n) = f.net {
            m.push_str(&format!(" {} {n}", net_flag(inbound)));
        }
        rules.push(Rule::new(m, "--jump ACCEPT"));
    }
    for f in reverse.unwrap_or(&[]) {
        if f.net.is_some_and(|n| n.family() != family) {
            continue;
        }
        let mut m = format!("-p {} -m multiport --source-ports {}", proto_name(f.protocol), f.port);
        if let Some(n) = f.net {
            m.push_str(&format!(" {} {n}", net_flag(inbound)));
        }
        rules.push(Rule::new(m, "--jump ACCEPT"));
    }
    Chain::new(name, rules)
}

/// A dispatch chain tree over interface names (Felix `buildSingleDispatchChainTree`): one `--goto` per
/// name, names sharing the next character after the common prefix grouped in a child chain.
fn dispatch(root: &str, names: &[String], flag: &str, target_prefix: &str, end: &[Rule]) -> Vec<Chain> {
    let mut sorted: Vec<String> = names.to_vec();
    sorted.sort();
    sorted.dedup();
    let common = common_prefix(&sorted);
    let mut order: Vec<String> = Vec::new();
    let mut bins: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in &sorted {
        let key = if n.len() > common.len() { n[..common.len() + 1].to_string() } else { common.clone() };
        if !bins.contains_key(&key) {
            order.push(key.clone());
        }
        bins.entry(key).or_default().push(n.clone());
    }
    let goto = |n: &str| Rule::new(format!("{flag} {n}"), format!("--goto {}", chain_name(target_prefix, n)));
    let mut chains = Vec::new();
    let mut root_rules = Vec::new();
    for key in order {
        let members = &bins[&key];
        if members.len() > 1 {
            let child = format!("{root}-{}", &key[common.len()..]);
            root_rules.push(Rule::new(format!("{flag} {key}+"), format!("--goto {child}")));
            let mut rules: Vec<Rule> = members.iter().map(|n| goto(n)).collect();
            rules.extend(end.iter().cloned());
            chains.push(Chain::new(child, rules));
        } else {
            root_rules.push(goto(&members[0]));
        }
    }
    root_rules.extend(end.iter().cloned());
    chains.push(Chain::new(root, root_rules));
    chains
}

fn common_prefix(names: &[String]) -> String {
    let Some(first) = names.first() else { return String::new() };
    let mut len = first.len();
    for n in &names[1..] {
        len = len.min(first.bytes().zip(n.bytes()).take_while(|(a, b)| a == b).count());
    }
    first[..len].to_string()
}

fn hook(kernel_chain: &'static str, position: Position, target: &str) -> Hook {
    Hook { kernel_chain, position, rule: Rule::new("", format!("--jump {target}")) }
}

/// The raw, mangle, nat and filter tables of one family.
pub fn tables<'w>(
    world: &'w ResolvedNode,
    family: IpFamily,
    sets: &mut SetRegistry<'w>,
    prefixes: &[String],
) -> Vec<Table> {
    let felix = &world.node.felix;
    let log = LogConfig {
        prefix: felix.log_prefix.clone(),
        rate_limit: felix.log_rate_limit.map(|r| r.to_string()),
        burst: u64::from(felix.log_rate_burst),
    };
    let mut b =
        Builder { world, sets, log, policies: BTreeMap::new(), profiles: BTreeMap::new(), groups: BTreeMap::new() };
    // One rule per workload interface prefix wherever the prefix matters (Felix `InterfacePrefix`).
    let per_prefix = |flag: &str, action: &str| -> Vec<Rule> {
        prefixes.iter().map(|p| Rule::new(format!("{flag} {p}+"), action.to_string())).collect()
    };

    // Host endpoints: each named interface's, and the `*` one as the default.
    let mut heps: Vec<(String, usize)> = world.interface_hep.iter().map(|(i, h)| (i.clone(), *h)).collect();
    heps.sort();
    let star = world.star_hep;
    let mut all_heps = heps.clone();
    if let Some(s) = star {
        all_heps.push((STAR_IFACE.to_string(), s));
    }
    let has = |h: usize, stage: Stage| world.has_policies(&world.host_endpoints[h].endpoint, stage);

    // ---- filter ----
    let mut filter = Table { name: "filter", ..Table::default() };
    filter.hooks = vec![
        hook("INPUT", Position::Insert, "cali-INPUT"),
        hook("FORWARD", Position::Insert, "cali-FORWARD"),
        hook("OUTPUT", Position::Insert, "cali-OUTPUT"),
        Hook {
            kernel_chain: "FORWARD",
            position: Position::Append,
            rule: Rule::new(mark_set(MARK_ACCEPT), "--jump ACCEPT").comment("Policy explicitly accepted packet."),
        },
        Hook { kernel_chain: "FORWARD", position: Position::Append, rule: Rule::new("", set_mark(MARK_ACCEPT)) },
    ];
    let accepted = |action: &str| {
        Rule::new(mark_set(MARK_ACCEPT), format!("--jump {action}")).comment("Host endpoint policy accepted packet.")
    };
    filter.chains.push(Chain::new(
        "cali-INPUT",
        [
            per_prefix("--in-interface", "--goto cali-wl-to-host"),
            vec![
                Rule::new(mark_set(MARK_ACCEPT), "--jump ACCEPT"),
                Rule::new("", clear_mark(ALL_MARKS)),
                Rule::new("", "--jump cali-from-host-endpoint"),
                accepted("ACCEPT"),
            ],
        ]
        .concat(),
    ));
    let mut wl_to_host = Vec::new();
    if family == IpFamily::V6 {
        for t in [130, 131, 132, 133, 135, 136] {
            wl_to_host.push(Rule::new(format!("-p 58 -m icmp6 --icmpv6-type {t}"), "--jump ACCEPT"));
        }
    }
    wl_to_host.push(Rule::new("", "--jump cali-from-wl-dispatch"));
    let epha = match felix.default_endpoint_to_host_action {
        EndpointToHostAction::Drop => "DROP",
        EndpointToHostAction::Accept => "ACCEPT",
        EndpointToHostAction::Return => "RETURN",
    };
    wl_to_host.push(Rule::new("", format!("--jump {epha}")).comment("Configured DefaultEndpointToHostAction"));
    filter.chains.push(Chain::new("cali-wl-to-host", wl_to_host));
    filter.chains.push(Chain::new(
        "cali-FORWARD",
        [
            vec![
                Rule::new("", clear_mark(ALL_MARKS & !MARK_ACCEPT)),
                Rule::new(mark_clear(MARK_ACCEPT), "--jump cali-from-hep-forward"),
            ],
            prefixes
                .iter()
                .flat_map(|p| {
                    [
                        Rule::new(format!("--in-interface {p}+"), "--jump cali-from-wl-dispatch"),
                        Rule::new(format!("--out-interface {p}+"), "--jump cali-to-wl-dispatch"),
                    ]
                })
                .collect(),
            vec![Rule::new("", "--jump cali-to-hep-forward"), Rule::new("", "--jump cali-cidr-block")],
        ]
        .concat(),
    ));
    filter.chains.push(Chain::new("cali-cidr-block", Vec::new()));
    filter.chains.push(Chain::new(
        "cali-OUTPUT",
        [
            vec![Rule::new(mark_set(MARK_ACCEPT), "--jump ACCEPT")],
            per_prefix("--out-interface", "--jump RETURN"),
            vec![
                Rule::new("", clear_mark(ALL_MARKS)),
                Rule::new("-m conntrack ! --ctstate DNAT", "--jump cali-to-host-endpoint"),
                accepted("ACCEPT"),
            ],
        ]
        .concat(),
    ));
    // Workload dispatch and endpoint chains.
    let unknown = [Rule::new("", format!("--jump {}", deny_action(world, "filter"))).comment("Unknown interface")];
    let wl_names: Vec<String> = world.node.workloads.iter().filter_map(|w| w.interface.clone()).collect();
    filter.chains.extend(dispatch("cali-from-wl-dispatch", &wl_names, "--in-interface", "cali-fw-", &unknown));
    filter.chains.extend(dispatch("cali-to-wl-dispatch", &wl_names, "--out-interface", "cali-tw-", &unknown));
    for (i, w) in world.node.workloads.iter().enumerate() {
        let Some(iface) = &w.interface else { continue };
        let ep = &world.workloads[i];
        for (d, prefix) in [(Direction::Ingress, "cali-tw-"), (Direction::Egress, "cali-fw-")] {
            let spec = EndpointChain {
                name: chain_name(prefix, iface),
                flavour: Flavour::Normal,
                direction: d,
                tiers: tiers_for(world, &ep.labels, Stage::Normal, d),
                profiles: &ep.profiles,
                failsafe: None,
                allow_return: false,
                workload_egress: d == Direction::Egress,
            };
            let c = b.endpoint_chain("filter", spec);
            filter.chains.push(c);
        }
    }
    // Host endpoint dispatch (filter) and chains.
    let named: Vec<String> = heps.iter().map(|(i, _)| i.clone()).collect();
    let star_end = |prefix: &str| -> Vec<Rule> {
        star.map(|_| vec![Rule::new("", format!("--goto {}", chain_name(prefix, STAR_IFACE)))]).unwrap_or_default()
    };
    filter.chains.extend(dispatch(
        "cali-from-host-endpoint",
        &named,
        "--in-interface",
        "cali-fh-",
        &star_end("cali-fh-"),
    ));
    filter.chains.extend(dispatch(
        "cali-to-host-endpoint",
        &named,
        "--out-interface",
        "cali-th-",
        &star_end("cali-th-"),
    ));
    filter.chains.extend(dispatch(
        "cali-from-hep-forward",
        &named,
        "--in-interface",
        "cali-fhfw-",
        &star_end("cali-fhfw-"),
    ));
    filter.chains.extend(dispatch(
        "cali-to-hep-forward",
        &named,
        "--out-interface",
        "cali-thfw-",
        &star_end("cali-thfw-"),
    ));
    for (iface, h) in &all_heps {
        let ep = &world.host_endpoints[*h].endpoint;
        let any_forward = has(*h, Stage::Forward);
        let specs = [
            ("cali-fh-", Direction::Ingress, Flavour::Normal, Stage::Normal, Some("cali-failsafe-in")),
            ("cali-th-", Direction::Egress, Flavour::Normal, Stage::Normal, Some("cali-failsafe-out")),
            ("cali-fhfw-", Direction::Ingress, Flavour::Forward { any_tiers: any_forward }, Stage::Forward, None),
            ("cali-thfw-", Direction::Egress, Flavour::Forward { any_tiers: any_forward }, Stage::Forward, None),
        ];
        for (prefix, d, flavour, stage, failsafe) in specs {
            let spec = EndpointChain {
                name: chain_name(prefix, iface),
                flavour,
                direction: d,
                tiers: tiers_for(world, &ep.labels, stage, d),
                profiles: &ep.profiles,
                failsafe,
                allow_return: false,
                workload_egress: false,
            };
            let c = b.endpoint_chain("filter", spec);
            filter.chains.push(c);
        }
    }
    filter.chains.push(failsafe_chain("cali-failsafe-in", family, &felix.failsafe_inbound, None, true));
    filter.chains.push(failsafe_chain("cali-failsafe-out", family, &felix.failsafe_outbound, None, false));

    // ---- mangle ----
    let mut mangle = Table { name: "mangle", ..Table::default() };
    mangle.hooks = vec![
        hook("PREROUTING", Position::Insert, "cali-PREROUTING"),
        hook("POSTROUTING", Position::Insert, "cali-POSTROUTING"),
    ];
    mangle.chains.push(Chain::new(
        "cali-PREROUTING",
        vec![
            Rule::new("-m conntrack --ctstate RELATED,ESTABLISHED", "--jump ACCEPT"),
            Rule::new(mark_set(MARK_ACCEPT), "--jump ACCEPT"),
            Rule::new("", "--jump cali-from-host-endpoint"),
            accepted("ACCEPT"),
        ],
    ));
    let host_ips: BTreeSet<String> = world
        .node
        .uplinks
        .iter()
        .flat_map(|u| &u.addrs)
        .filter(|a| IpFamily::of(**a) == family)
        .map(|a| a.to_string())
        .collect();
    let dscp_src = b.sets.fixed("dscp-src-net", SetKind::Net, BTreeSet::new());
    let pools = b.sets.fixed("network-ip-pools", SetKind::Net, BTreeSet::new());
    let this_host = b.sets.fixed("this-host", SetKind::Ip, host_ips);
    mangle.chains.push(Chain::new(
        "cali-POSTROUTING",
        vec![
            Rule::new(
                format!(
                    "-m set --match-set {dscp_src} src -m set ! --match-set {pools} dst -m set ! --match-set {this_host} dst"
                ),
                "--jump cali-egress-dscp",
            )
            .comment("set dscp for traffic leaving cluster."),
            Rule::new(mark_set(MARK_ACCEPT), "--jump RETURN"),
            Rule::new("", clear_mark(ALL_MARKS)),
            Rule::new("-m conntrack --ctstate DNAT", "--jump cali-to-host-endpoint"),
            accepted("RETURN"),
        ],
    ));
    mangle.chains.push(Chain::new("cali-egress-dscp", Vec::new()));
    let prednat: Vec<String> = heps.iter().filter(|(_, h)| has(*h, Stage::PreDnat)).map(|(i, _)| i.clone()).collect();
    let prednat_star = star.filter(|s| has(*s, Stage::PreDnat));
    let end = prednat_star
        .map(|_| vec![Rule::new("", format!("--goto {}", chain_name("cali-fh-", STAR_IFACE)))])
        .unwrap_or_default();
    mangle.chains.extend(dispatch("cali-from-host-endpoint", &prednat, "--in-interface", "cali-fh-", &end));
    let mut to_end = Vec::new();
    if star.is_some() {
        for r in per_prefix("--out-interface", "--jump RETURN") {
            to_end.push(r.comment("Skip egress WHEP policy for traffic to local workload"));
        }
        to_end.push(Rule::new("", format!("--goto {}", chain_name("cali-th-", STAR_IFACE))));
    }
    mangle.chains.extend(dispatch("cali-to-host-endpoint", &named, "--out-interface", "cali-th-", &to_end));
    for (iface, h) in &all_heps {
        let ep = &world.host_endpoints[*h].endpoint;
        let spec = EndpointChain {
            name: chain_name("cali-th-", iface),
            flavour: Flavour::Normal,
            direction: Direction::Egress,
            tiers: tiers_for(world, &ep.labels, Stage::Normal, Direction::Egress),
            profiles: &ep.profiles,
            failsafe: Some("cali-failsafe-out"),
            allow_return: true,
            workload_egress: false,
        };
        let c = b.endpoint_chain("mangle", spec);
        mangle.chains.push(c);
        if has(*h, Stage::PreDnat) {
            let spec = EndpointChain {
                name: chain_name("cali-fh-", iface),
                flavour: Flavour::PreDnat,
                direction: Direction::Ingress,
                tiers: tiers_for(world, &ep.labels, Stage::PreDnat, Direction::Ingress),
                profiles: &[],
                failsafe: Some("cali-failsafe-in"),
                allow_return: false,
                workload_egress: false,
            };
            let c = b.endpoint_chain("mangle", spec);
            mangle.chains.push(c);
        }
    }
    mangle.chains.push(failsafe_chain("cali-failsafe-in", family, &felix.failsafe_inbound, None, true));
    mangle.chains.push(failsafe_chain("cali-failsafe-out", family, &felix.failsafe_outbound, None, false));

    // ---- raw ----
    let mut raw = Table { name: "raw", ..Table::default() };
    raw.hooks =
        vec![hook("PREROUTING", Position::Insert, "cali-PREROUTING"), hook("OUTPUT", Position::Insert, "cali-OUTPUT")];
    raw.chains.push(Chain::new(
        "cali-PREROUTING",
        [
            vec![Rule::new("", clear_mark(ALL_MARKS))],
            per_prefix("--in-interface", &set_mark(MARK_SCRATCH0)),
            vec![
                Rule::new(mark_set(MARK_SCRATCH0), "--jump cali-rpf-skip"),
                Rule::new(format!("{} -m rpfilter --invert --validmark", mark_set(MARK_SCRATCH0)), "--jump DROP"),
                Rule::new(mark_clear(MARK_SCRATCH0), "--jump cali-from-host-endpoint"),
                Rule::new(mark_set(MARK_ACCEPT), "--jump ACCEPT"),
            ],
        ]
        .concat(),
    ));
    raw.chains.push(Chain::new(
        "cali-OUTPUT",
        vec![
            Rule::new("", clear_mark(ALL_MARKS)),
            Rule::new("", "--jump cali-to-host-endpoint"),
            Rule::new(mark_set(MARK_ACCEPT), "--jump ACCEPT"),
        ],
    ));
    raw.chains.push(Chain::new("cali-rpf-skip", Vec::new()));
    // Untracked policy only on named host endpoints that have some (the `*` one is ignored).
    let untracked: Vec<(String, usize)> = heps.iter().filter(|(_, h)| has(*h, Stage::Untracked)).cloned().collect();
    let untracked_names: Vec<String> = untracked.iter().map(|(i, _)| i.clone()).collect();
    raw.chains.extend(dispatch("cali-from-host-endpoint", &untracked_names, "--in-interface", "cali-fh-", &[]));
    raw.chains.extend(dispatch("cali-to-host-endpoint", &untracked_names, "--out-interface", "cali-th-", &[]));
    for (iface, h) in &untracked {
        let ep = &world.host_endpoints[*h].endpoint;
        for (prefix, d, fs) in
            [("cali-fh-", Direction::Ingress, "cali-failsafe-in"), ("cali-th-", Direction::Egress, "cali-failsafe-out")]
        {
            let spec = EndpointChain {
                name: chain_name(prefix, iface),
                flavour: Flavour::Untracked,
                direction: d,
                tiers: tiers_for(world, &ep.labels, Stage::Untracked, d),
                profiles: &[],
                failsafe: Some(fs),
                allow_return: false,
                workload_egress: false,
            };
            let c = b.endpoint_chain("raw", spec);
            raw.chains.push(c);
        }
    }
    raw.chains.push(failsafe_chain(
        "cali-failsafe-in",
        family,
        &felix.failsafe_inbound,
        Some(&felix.failsafe_outbound),
        true,
    ));
    raw.chains.push(failsafe_chain(
        "cali-failsafe-out",
        family,
        &felix.failsafe_outbound,
        Some(&felix.failsafe_inbound),
        false,
    ));

    // ---- nat ----
    let mut nat = Table { name: "nat", ..Table::default() };
    nat.hooks = vec![
        hook("PREROUTING", Position::Insert, "cali-PREROUTING"),
        hook("OUTPUT", Position::Insert, "cali-OUTPUT"),
        hook("POSTROUTING", Position::Append, "cali-POSTROUTING"),
    ];
    nat.chains.push(Chain::new("cali-PREROUTING", vec![Rule::new("", "--jump cali-fip-dnat")]));
    nat.chains.push(Chain::new("cali-OUTPUT", vec![Rule::new("", "--jump cali-fip-dnat")]));
    nat.chains.push(Chain::new(
        "cali-POSTROUTING",
        vec![Rule::new("", "--jump cali-fip-snat"), Rule::new("", "--jump cali-nat-outgoing")],
    ));
    for c in ["cali-fip-dnat", "cali-fip-snat", "cali-nat-outgoing"] {
        nat.chains.push(Chain::new(c, Vec::new()));
    }

    // Policy, profile and group chains, wherever endpoint chains reached them.
    for t in [&mut raw, &mut mangle, &mut filter] {
        let extra = b.owner_chains(t.name);
        t.chains.extend(extra);
    }
    vec![raw, mangle, nat, filter]
}
