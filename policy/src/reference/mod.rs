//! The reference evaluator: Felix's Linux dataplane interpreted directly from the resources, one packet at a
//! time, following the kernel path hook by hook (semantics §7, restated as one procedure in §12). It is
//! slow and meant to be obviously right; every faster level is checked against it.

pub mod flows;
pub mod matching;
pub mod walk;
pub mod walker;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use flows::{Flows, Lookup};
pub use walker::{Interpreted, PolicyWalker};

use crate::conntrack::{CtState, FlowDir};
use crate::felix::DenyAction;
use crate::ids::{EndpointRef, Tuple};
use crate::limit::Rate;
use crate::net::IpFamily;
use crate::node::{EndpointToHostAction, Failsafe, NodeConfig};
use crate::packet::PacketHeader;
use crate::resolve::{Direction, ResolvedNode, Stage, LOOPBACK};
use crate::resource::{Protocol, ResourceSet};
use crate::service::{find_service, pick_backend, ServiceNat};
use crate::verdict::{Egress, LogEvent, Outcome, Reason, RuleOwner, Verdict};
use crate::walk_end::{ChainEnd, WalkEnd};

/// Where a packet enters the node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Attach {
    /// Arrives on this uplink from outside.
    Uplink(String),
    /// Sent by this local pod (by name).
    Workload(String),
    /// Sent by a process in the host's network stack.
    Host,
}

/// Where routing sends a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// To the host itself.
    Local,
    Workload(usize),
    Uplink(usize),
}

/// One endpoint chain's answer (the iptables chain returning ACCEPT, DROP, or nothing), with its reason.
type Chain = ChainEnd<Reason>;

/// A node with state: resources in force, conntrack and a clock. The hooks are followed here; the policy
/// walks inside them are done by `W` (interpreted from the resources, or by compiled programs).
#[derive(Debug)]
pub struct NodeModel<W: PolicyWalker> {
    /// The node as given (its own `config:`); `world.node` has the FelixConfigurations over it.
    node: NodeConfig,
    resources: ResourceSet,
    world: ResolvedNode,
    walker: W,
    flows: Flows,
    now: Duration,
    /// Each Log rule's token bucket (semantics §9.1: `-m limit` on its LOG rule, one per rule of a policy
    /// or profile chain and IP family), kept while the rule is unchanged.
    log_buckets: HashMap<LogBucketKey, u64>,
    /// The kernel's ICMP error buckets: per destination, and the host's global one.
    icmp_peers: HashMap<IpAddr, u64>,
    icmp_global: u64,
}

/// A Log rule's bucket: its owner, direction, position and contents, and the packet's family.
type LogBucketKey = (RuleOwner, Direction, usize, u64, IpFamily);

/// A packet said to arrive where the node has no port.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoSuchPort {
    #[error("the node has no interface '{0}'")]
    Interface(String),
    #[error("the node has no workload '{0}'")]
    Workload(String),
}

/// The reference evaluator: every walk interpreted directly from the resources.
pub type ReferenceNode = NodeModel<Interpreted>;

/// The packet being followed through the hooks, with what earlier hooks recorded.
#[derive(Default)]
struct Walk {
    logs: Vec<LogEvent>,
    trace: Vec<Reason>,
    /// The drop came from a filter-table chain, where Felix's deny action applies (not raw, mangle or
    /// DefaultEndpointToHostAction).
    filter_drop: bool,
    /// Service NAT changed the packet's destination.
    translated: bool,
    /// Conntrack called the packet NEW (it has an entry, not yet confirmed, that an answer carries).
    new_flow: bool,
    /// The packet is a Reject answer: conntrack finds it RELATED (the refused packet's entry is attached).
    answer: bool,
}

impl ReferenceNode {
    pub fn new(node: NodeConfig, resources: ResourceSet) -> ReferenceNode {
        NodeModel::with_walker(node, resources, Interpreted)
    }
}

impl<W: PolicyWalker> NodeModel<W> {
    /// A node whose walks `walker` does.
    pub fn with_walker(node: NodeConfig, resources: ResourceSet, mut walker: W) -> NodeModel<W> {
        let world = ResolvedNode::new(&node, &resources);
        walker.rebuild(&world);
        let felix = &world.node.felix;
        let flows = Flows::new(Some(felix.conntrack_capacity), felix.conntrack_timeouts);
        NodeModel {
            node,
            resources,
            world,
            walker,
            flows,
            now: Duration::ZERO,
            log_buckets: HashMap::new(),
            icmp_peers: HashMap::new(),
            icmp_global: 0,
        }
    }

    pub fn walker(&self) -> &W {
        &self.walker
    }

    pub fn resources(&self) -> &ResourceSet {
        &self.resources
    }

    pub fn world(&self) -> &ResolvedNode {
        &self.world
    }

    /// Replaces the resources in force. Conntrack is kept: Felix does not flush it on policy change
    /// (semantics §8.2).
    pub fn set_resources(&mut self, resources: ResourceSet) {
        let world = ResolvedNode::new(&self.node, &resources);
        self.walker.rebuild(&world);
        self.flows.timeouts = world.node.felix.conntrack_timeouts;
        self.world = world;
        self.resources = resources;
    }

    /// Puts a changed node in force (workloads added, changed or removed; namespaces relabelled). The
    /// flows of every address a local workload no longer has are flushed, as Felix does when an address's
    /// route owner goes away (semantics §8.2).
    pub fn set_node(&mut self, node: NodeConfig) {
        let world = ResolvedNode::new(&node, &self.resources);
        self.walker.rebuild(&world);
        for ip in crate::node::removed_workload_addresses(&self.world.node, &node) {
            self.flows.flush_ip(ip);
        }
        self.flows.timeouts = world.node.felix.conntrack_timeouts;
        self.world = world;
        self.node = node;
    }

    /// Lets time pass (conntrack expiry).
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.flows.expire(self.now);
    }

    /// Follows one packet through the node. `inner` is the flow an ICMP error quotes, if any.
    /// Errors only for an attachment point the node does not have.
    pub fn process(&mut self, at: &Attach, pkt: &PacketHeader, inner: Option<Tuple>) -> Result<Outcome, NoSuchPort> {
        self.flows.expire(self.now);
        let node = &self.world.node;
        let source = match at {
            Attach::Uplink(name) => {
                Source::Uplink(node.uplink_by_name(name).ok_or_else(|| NoSuchPort::Interface(name.clone()))?)
            }
            Attach::Workload(name) => {
                Source::Workload(node.workload_by_name(name).ok_or_else(|| NoSuchPort::Workload(name.clone()))?)
            }
            Attach::Host => Source::Host,
        };
        let mut w = Walk::default();
        let result = self.follow(source, pkt, inner, &mut w);
        let reject =
            result.is_err() && w.filter_drop && self.world.node.felix.filter_deny_action() == DenyAction::Reject;
        let (translated, new_flow) = (w.translated, w.new_flow);
        let mut outcome = self.finish(result, pkt, w);
        if reject {
            outcome.rejected = self.answer_reject(pkt, translated, new_flow);
        }
        Ok(outcome)
    }

    /// Felix's Reject deny action (semantics §10 `IptablesFilterDenyAction`, crate::reject): the kernel's
    /// port unreachable back to the sender, if it sends one (eligibility, rate limits), and if the host's
    /// OUTPUT path lets it out (RELATED to the flow it refuses when that flow was NEW, so only raw-table
    /// policy can stop it; looked up like any ICMP error when conntrack called the packet INVALID). True
    /// when it left the node.
    fn answer_reject(&mut self, pkt: &PacketHeader, translated: bool, new_flow: bool) -> bool {
        let node = &self.world.node;
        if !crate::reject::eligible(pkt, node) {
            return false;
        }
        let Some(answer) = crate::reject::answer(pkt, node, translated) else { return false };
        let now = self.now.as_nanos() as u64;
        if !crate::reject::GLOBAL.would_admit(self.icmp_global, now) {
            return false;
        }
        if let Some(rate) = crate::reject::peer_rate(node, answer.dst) {
            let tat = self.icmp_peers.entry(answer.dst).or_insert(0);
            match rate.admit(*tat, now) {
                Some(next) => *tat = next,
                None => return false,
            }
        }
        if let Some(next) = crate::reject::GLOBAL.admit(self.icmp_global, now) {
            self.icmp_global = next;
        }
        let mut w = Walk { answer: new_flow, ..Walk::default() };
        let sent = self.follow(Source::Host, &answer, Some(Tuple::of(pkt)), &mut w).is_ok();
        // Its Log rules (if its walk reached any) use their buckets as the step's do.
        self.limit_logs(w.logs, &answer);
        sent
    }

    /// The Log rules that fired: those the packet matched, within their rules' rate limits (semantics §9.1).
    /// Every Log rule the walk reached takes a token if one is left, matched or not: Felix puts the `limit`
    /// match before the rule's own criteria (`CombineMatches(logMatch, match)` in `rules/policy.go`).
    fn limit_logs(&mut self, logs: Vec<LogEvent>, pkt: &PacketHeader) -> Vec<LogEvent> {
        let felix = &self.world.node.felix;
        let Some(limit) = felix.log_rate_limit else { return logs.into_iter().filter(|e| e.matched).collect() };
        let rate = Rate { interval: limit.interval_nanos(), burst: u64::from(felix.log_burst()) };
        let now = self.now.as_nanos() as u64;
        let mut kept = Vec::with_capacity(logs.len());
        for e in logs {
            let key = (e.rule.owner.clone(), e.rule.direction, e.rule.index, self.rule_hash(&e), pkt.family());
            let tat = self.log_buckets.entry(key).or_insert(0);
            if let Some(next) = rate.admit(*tat, now) {
                *tat = next;
                if e.matched {
                    kept.push(e);
                }
            }
        }
        kept
    }

    /// The contents of the rule a Log event names, hashed: a changed rule is another rule with a new bucket,
    /// as a rewritten chain gets new `limit` matches.
    fn rule_hash(&self, e: &LogEvent) -> u64 {
        use std::hash::{Hash, Hasher};
        let rule = match &e.rule.owner {
            RuleOwner::Policy { id, .. } => self
                .world
                .policies
                .iter()
                .find(|p| &p.id == id)
                .and_then(|p| p.rules(e.rule.direction).get(e.rule.index)),
            RuleOwner::Profile(name) => {
                self.world.profiles.get(name).and_then(|p| p.rules(e.rule.direction).get(e.rule.index))
            }
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        rule.hash(&mut h);
        h.finish()
    }

    fn finish(&mut self, result: Result<Delivered, Reason>, pkt: &PacketHeader, mut w: Walk) -> Outcome {
        w.logs = self.limit_logs(std::mem::take(&mut w.logs), pkt);
        match result {
            Err(reason) => {
                let tracked = self.flows.tracks(pkt);
                Outcome {
                    verdict: Verdict::Drop,
                    out: None,
                    translated: None,
                    tracked,
                    logs: w.logs,
                    reason,
                    trace: w.trace,
                    rejected: false,
                }
            }
            Ok(d) => {
                if let Some((lookup, reply)) = d.commit {
                    if self.flows.commit(pkt, &lookup, reply, self.now).is_err() {
                        return self.finish(Err(Reason::ConntrackFull), pkt, w);
                    }
                }
                let tracked = self.flows.tracks(pkt);
                let reason = w.trace.last().cloned().unwrap_or(Reason::NoCalicoVerdict);
                Outcome {
                    verdict: Verdict::Allow,
                    out: Some(d.out),
                    translated: Some(SocketAddr::new(d.dst, d.dst_port)),
                    tracked,
                    logs: w.logs,
                    reason,
                    trace: w.trace,
                    rejected: false,
                }
            }
        }
    }

    fn follow(
        &self,
        source: Source,
        pkt: &PacketHeader,
        inner: Option<Tuple>,
        w: &mut Walk,
    ) -> Result<Delivered, Reason> {
        let node = &self.world.node;

        // raw PREROUTING / OUTPUT.
        if let Source::Workload(i) = source {
            // Strict reverse-path check: a pod may only send from its own addresses (semantics §7.1 (R) 3).
            if !node.workloads[i].ips.contains(&pkt.src) {
                return Err(Reason::SourceSpoofed);
            }
        }
        let first_route = self.route(pkt.dst);
        let mut accepted: Option<Reason> = None;
        let untracked_hep = match source {
            Source::Uplink(u) => self.world.interface_hep.get(&node.uplinks[u].name).copied(),
            Source::Host => self.world.interface_hep.get(self.interface_name(first_route)).copied(),
            Source::Workload(_) => None,
        };
        // Untracked policy applies only on a named host endpoint that has some (semantics §7.7).
        let has_untracked =
            |h: &usize| self.walker.has_policies(&self.world, EndpointRef::Host(*h), Stage::Untracked, None);
        if let Some(h) = untracked_hep.filter(has_untracked) {
            let direction = if source == Source::Host { Direction::Egress } else { Direction::Ingress };
            match self.untracked_chain(h, direction, pkt, w) {
                Chain::Drop(r) => return Err(self.note(w, r)),
                Chain::Accept(r) => {
                    self.note(w, r);
                    accepted = Some(Reason::UntrackedAllow);
                }
                Chain::Return(_) => {}
            }
        }

        // conntrack.
        let lookup = if accepted.is_some() {
            Lookup { state: CtState::Untracked, entry: None, tcp_next: None }
        } else if w.answer {
            Lookup { state: CtState::Related, entry: None, tcp_next: None }
        } else {
            self.flows.lookup(pkt, inner)
        };
        w.new_flow = lookup.state == CtState::New;
        if matches!(lookup.state, CtState::Established | CtState::Related) {
            // Every tracked chain accepts ESTABLISHED/RELATED first (semantics §8.1).
            let reason = if lookup.state == CtState::Established { Reason::Established } else { Reason::Related };
            self.note(w, reason);
            let (dst, dst_port) = match lookup.entry {
                Some((i, FlowDir::Original)) => {
                    let e = &self.flows.entries[i];
                    (e.reply.src, e.reply.src_port)
                }
                Some((i, FlowDir::Reply)) => {
                    let e = &self.flows.entries[i];
                    (e.original.src, e.original.src_port)
                }
                None => (pkt.dst, pkt.dst_port),
            };
            let dst_port = if pkt.has_ports() { dst_port } else { pkt.dst_port };
            let out = self.egress_of(self.route(dst));
            // A RELATED error changes nothing in its flow's entry (no refresh, no reply seen), as in Linux.
            let commit = (lookup.state == CtState::Established).then(|| (lookup, Tuple::of(pkt).reversed()));
            return Ok(Delivered { out, dst, dst_port, commit });
        }

        // mangle PREROUTING: pre-DNAT policy on the ingress host endpoint (semantics §7.1 (M)).
        if accepted.is_none() && source != Source::Host {
            if let Some(h) = self.prednat_hep(source) {
                match self.prednat_chain(h, pkt, lookup.state, w) {
                    Chain::Drop(r) => return Err(self.note(w, r)),
                    Chain::Accept(r) => {
                        self.note(w, r);
                        accepted = Some(Reason::PreDnatAllow);
                    }
                    Chain::Return(_) => {}
                }
            }
        }

        // nat PREROUTING / OUTPUT: service DNAT (semantics §3 "What addresses policy sees").
        let mut post = *pkt;
        let mut snat: Option<IpAddr> = None;
        if pkt.has_ports() && lookup.state == CtState::New {
            if let Some(svc) = find_service(node, pkt.protocol, pkt.dst, pkt.dst_port) {
                match pick_backend(svc, pkt.src, pkt.src_port) {
                    ServiceNat::NoBackends => return Err(self.note(w, Reason::ServiceWithoutEndpoints)),
                    ServiceNat::Backend(b) => {
                        w.translated = true;
                        let via_node_port = svc.node_port == Some(pkt.dst_port) && node.is_host_ip(pkt.dst);
                        post.dst = b.ip();
                        post.dst_port = b.port();
                        // kube-proxy masquerades every NodePort flow from outside the host (externalTrafficPolicy
                        // Cluster, `KUBE-EXT-…`), to a local backend too, and a pod that reaches itself through
                        // its service (the hairpin, `KUBE-SEP-…`).
                        if (via_node_port && source != Source::Host) || b.ip() == pkt.src {
                            let route = self.route(b.ip());
                            let via = if let Route::Uplink(u) = route { Some(u) } else { None };
                            snat = node.masquerade_source(via, b.ip());
                        }
                    }
                }
            }
        }
        let route = self.route(post.dst);
        let ct = lookup.state;

        let filtered = match source {
            Source::Host => self.local_output(route, &post, ct, accepted, w),
            Source::Workload(_) | Source::Uplink(_) => match route {
                Route::Local => self.local_input(source, &post, ct, accepted, w),
                _ => self.forward(source, route, &post, ct, accepted, w),
            },
        };
        // filter INPUT, FORWARD and OUTPUT: Felix's deny action applies to their drops, except
        // DefaultEndpointToHostAction's (always DROP).
        if let Err(r) = &filtered {
            w.filter_drop = !matches!(r, Reason::EndpointToHost(_));
        }
        let out = filtered?;

        let mut reply = Tuple::of(&post).reversed();
        if let Some(a) = snat {
            reply.dst = a;
        }
        let commit = (ct == CtState::New).then_some((lookup, reply));
        Ok(Delivered { out, dst: post.dst, dst_port: post.dst_port, commit })
    }

    /// filter INPUT (semantics §7.1 (I)).
    fn local_input(
        &self,
        source: Source,
        pkt: &PacketHeader,
        ct: CtState,
        accepted: Option<Reason>,
        w: &mut Walk,
    ) -> Result<Egress, Reason> {
        let felix = &self.world.node.felix;
        if let Source::Workload(i) = source {
            // Workload-to-host: the pod's egress policy, then DefaultEndpointToHostAction (§7.6).
            if pkt.protocol == Protocol::ICMPV6 && matches!(pkt.icmp_type, 130..=133 | 135 | 136) {
                self.note(w, Reason::Icmpv6FromWorkload);
                return Ok(Egress::Host);
            }
            match self.workload_chain(i, Direction::Egress, pkt, ct, w) {
                Chain::Drop(r) => return Err(self.note(w, r)),
                Chain::Accept(r) | Chain::Return(r) => self.note(w, r),
            };
            let action = felix.default_endpoint_to_host_action;
            let r = self.note(w, Reason::EndpointToHost(action));
            return match action {
                EndpointToHostAction::Drop => Err(r),
                EndpointToHostAction::Accept | EndpointToHostAction::Return => Ok(Egress::Host),
            };
        }
        if let Some(r) = accepted {
            self.note(w, r);
            return Ok(Egress::Host);
        }
        let Source::Uplink(u) = source else { return Ok(Egress::Host) };
        self.host_input(&self.world.node.uplinks[u].name.clone(), pkt, ct, w)?;
        Ok(Egress::Host)
    }

    /// The normal ingress chain of the host endpoint of `iface` (named, else `*`).
    fn host_input(&self, iface: &str, pkt: &PacketHeader, ct: CtState, w: &mut Walk) -> Result<(), Reason> {
        match self.world.hep_for_interface(iface, true) {
            None => {
                self.note(w, Reason::NoHostEndpoint);
                Ok(())
            }
            Some(h) => match self.host_normal_chain(h, Direction::Ingress, pkt, ct, w) {
                Chain::Drop(r) => Err(self.note(w, r)),
                Chain::Accept(r) | Chain::Return(r) => {
                    self.note(w, r);
                    Ok(())
                }
            },
        }
    }

    /// filter FORWARD (semantics §7.1 (F)): ingress HEP forward chain, source pod egress, destination pod
    /// ingress, egress HEP forward chain. Each must not drop.
    fn forward(
        &self,
        source: Source,
        route: Route,
        pkt: &PacketHeader,
        ct: CtState,
        accepted: Option<Reason>,
        w: &mut Walk,
    ) -> Result<Egress, Reason> {
        let node = &self.world.node;
        // Chains run in order and the first DROP ends the packet: later chains (and their Log rules) are
        // never reached, as in the kernel's FORWARD chain.
        let run = |c: Chain, w: &mut Walk| match c {
            Chain::Drop(r) => Err(self.note(w, r)),
            Chain::Accept(r) | Chain::Return(r) => {
                self.note(w, r);
                Ok(())
            }
        };
        if let Some(r) = accepted {
            self.note(w, r);
        } else {
            let in_hep = match source {
                Source::Uplink(u) => self.world.hep_for_interface(&node.uplinks[u].name, true),
                // Named host endpoints never bind to pod interfaces: only `*` applies (semantics §7.7).
                _ => self.world.star_hep,
            };
            if let Some(h) = in_hep {
                let c = self.host_forward_chain(h, Direction::Ingress, pkt, ct, w);
                run(c, w)?;
            }
        }
        if let Source::Workload(i) = source {
            let c = self.workload_chain(i, Direction::Egress, pkt, ct, w);
            run(c, w)?;
        }
        let out_hep = match route {
            Route::Workload(j) => {
                let c = self.workload_chain(j, Direction::Ingress, pkt, ct, w);
                run(c, w)?;
                self.world.star_hep
            }
            Route::Uplink(u) => self.world.hep_for_interface(&node.uplinks[u].name, true),
            Route::Local => None,
        };
        if let Some(h) = out_hep {
            let c = self.host_forward_chain(h, Direction::Egress, pkt, ct, w);
            run(c, w)?;
        }
        if w.trace.is_empty() {
            self.note(w, Reason::NoCalicoVerdict);
        }
        Ok(self.egress_of(route))
    }

    /// raw OUTPUT was done by the caller; filter OUTPUT and mangle POSTROUTING (semantics §7.2).
    fn local_output(
        &self,
        route: Route,
        pkt: &PacketHeader,
        ct: CtState,
        accepted: Option<Reason>,
        w: &mut Walk,
    ) -> Result<Egress, Reason> {
        if let Some(r) = accepted {
            self.note(w, r);
            return Ok(self.egress_of(route));
        }
        match route {
            Route::Workload(_) => {
                self.note(w, Reason::HostToLocalWorkload);
                Ok(self.egress_of(route))
            }
            Route::Local => {
                // To one of its own addresses the host talks over `lo`: out through OUTPUT, in through INPUT.
                self.host_output(LOOPBACK, pkt, ct, w)?;
                self.host_input(LOOPBACK, pkt, ct, w)?;
                Ok(Egress::Host)
            }
            Route::Uplink(u) => {
                let name = self.world.node.uplinks[u].name.clone();
                self.host_output(&name, pkt, ct, w)?;
                Ok(self.egress_of(route))
            }
        }
    }

    fn host_output(&self, iface: &str, pkt: &PacketHeader, ct: CtState, w: &mut Walk) -> Result<(), Reason> {
        match self.world.hep_for_interface(iface, true) {
            None => {
                self.note(w, Reason::NoHostEndpoint);
                Ok(())
            }
            Some(h) => match self.host_normal_chain(h, Direction::Egress, pkt, ct, w) {
                Chain::Drop(r) => Err(self.note(w, r)),
                Chain::Accept(r) | Chain::Return(r) => {
                    self.note(w, r);
                    Ok(())
                }
            },
        }
    }

    /// The conntrack head of every tracked endpoint chain (semantics §8.1).
    fn conntrack_head(&self, ct: CtState) -> Option<Chain> {
        match ct {
            CtState::Established => Some(Chain::Accept(Reason::Established)),
            CtState::Related => Some(Chain::Accept(Reason::Related)),
            CtState::Invalid if !self.world.node.felix.disable_conntrack_invalid_check => {
                Some(Chain::Drop(Reason::Invalid))
            }
            _ => None,
        }
    }

    /// A pod's chain (semantics §4.4 "WEP normal", §7.8 encapsulation drops).
    fn workload_chain(&self, i: usize, d: Direction, pkt: &PacketHeader, ct: CtState, w: &mut Walk) -> Chain {
        if let Some(c) = self.conntrack_head(ct) {
            return c;
        }
        let felix = &self.world.node.felix;
        if d == Direction::Egress {
            let vxlan =
                pkt.protocol == Protocol::UDP && pkt.dst_port == felix.vxlan_port && !felix.allow_vxlan_from_workloads;
            let ipip = pkt.protocol == Protocol(4) && !felix.allow_ipip_from_workloads;
            if vxlan || ipip {
                return Chain::Drop(Reason::EncapFromWorkload);
            }
        }
        self.normal_walk(EndpointRef::Workload(i), d, pkt, w)
    }

    /// Tiers, profiles, then drop (semantics §4.2).
    fn normal_walk(&self, ep: EndpointRef, d: Direction, pkt: &PacketHeader, w: &mut Walk) -> Chain {
        match self.walker.walk(&self.world, ep, d, Stage::Normal, pkt, &mut w.logs) {
            WalkEnd::Allow(r) => Chain::Accept(Reason::Rule(r)),
            WalkEnd::Deny(r) => Chain::Drop(Reason::Rule(r)),
            WalkEnd::EndOfTier(tier) => Chain::Drop(Reason::EndOfTier {
                stage: Stage::Normal,
                direction: d,
                endpoint: self.endpoint_id(ep),
                tier,
            }),
            WalkEnd::NoProfileMatched | WalkEnd::FellThrough => {
                Chain::Drop(Reason::NoProfileMatched { direction: d, endpoint: self.endpoint_id(ep) })
            }
        }
    }

    fn endpoint_id(&self, ep: EndpointRef) -> String {
        match ep {
            EndpointRef::Workload(i) => self.world.workloads[i].id.clone(),
            EndpointRef::Host(h) => self.world.host_endpoints[h].endpoint.id.clone(),
        }
    }

    /// A host endpoint's normal chain (semantics §4.4 "HEP normal"): conntrack, failsafes, tiers, profiles.
    fn host_normal_chain(&self, h: usize, d: Direction, pkt: &PacketHeader, ct: CtState, w: &mut Walk) -> Chain {
        if let Some(c) = self.conntrack_head(ct) {
            return c;
        }
        let felix = &self.world.node.felix;
        let failsafe = match d {
            Direction::Ingress => {
                Failsafe::find(&felix.failsafe_inbound, pkt, pkt.dst_port, pkt.src).map(|f| (true, f))
            }
            Direction::Egress => {
                Failsafe::find(&felix.failsafe_outbound, pkt, pkt.dst_port, pkt.dst).map(|f| (false, f))
            }
        };
        if let Some((inbound, f)) = failsafe {
            return Chain::Accept(Reason::Failsafe { inbound, protocol: f.protocol.0, port: f.port });
        }
        self.normal_walk(EndpointRef::Host(h), d, pkt, w)
    }

    /// A host endpoint's forward chain (semantics §4.4 "HEP forward", §7.4).
    fn host_forward_chain(&self, h: usize, d: Direction, pkt: &PacketHeader, ct: CtState, w: &mut Walk) -> Chain {
        if let Some(c) = self.conntrack_head(ct) {
            return c;
        }
        let ep = EndpointRef::Host(h);
        if !self.walker.has_policies(&self.world, ep, Stage::Forward, Some(d)) {
            return Chain::Accept(Reason::ForwardDefaultAllow);
        }
        match self.walker.walk(&self.world, ep, d, Stage::Forward, pkt, &mut w.logs) {
            WalkEnd::Allow(r) => Chain::Accept(Reason::Rule(r)),
            WalkEnd::Deny(r) => Chain::Drop(Reason::Rule(r)),
            WalkEnd::EndOfTier(tier) => Chain::Drop(Reason::EndOfTier {
                stage: Stage::Forward,
                direction: d,
                endpoint: self.endpoint_id(ep),
                tier,
            }),
            // Passed out of the last tier: no verdict, the kernel FORWARD chain's default accepts.
            WalkEnd::FellThrough | WalkEnd::NoProfileMatched => Chain::Return(Reason::NoCalicoVerdict),
        }
    }

    /// The pre-DNAT chain (semantics §7.1 (M) 3): INVALID drop, inbound failsafes, pre-DNAT tiers.
    fn prednat_chain(&self, h: usize, pkt: &PacketHeader, ct: CtState, w: &mut Walk) -> Chain {
        if ct == CtState::Invalid && !self.world.node.felix.disable_conntrack_invalid_check {
            return Chain::Drop(Reason::Invalid);
        }
        let felix = &self.world.node.felix;
        if let Some(f) = Failsafe::find(&felix.failsafe_inbound, pkt, pkt.dst_port, pkt.src) {
            return Chain::Return(Reason::Failsafe { inbound: true, protocol: f.protocol.0, port: f.port });
        }
        self.passing_walk(EndpointRef::Host(h), Direction::Ingress, Stage::PreDnat, pkt, w)
    }

    /// A walk whose tiers never end in a drop (untracked, pre-DNAT): Allow, Deny, or no verdict.
    fn passing_walk(&self, ep: EndpointRef, d: Direction, stage: Stage, pkt: &PacketHeader, w: &mut Walk) -> Chain {
        match self.walker.walk(&self.world, ep, d, stage, pkt, &mut w.logs) {
            WalkEnd::Allow(r) => Chain::Accept(Reason::Rule(r)),
            WalkEnd::Deny(r) => Chain::Drop(Reason::Rule(r)),
            // These stages' tiers never end in a drop (semantics §2.1) and they have no profiles.
            WalkEnd::EndOfTier(_) | WalkEnd::NoProfileMatched | WalkEnd::FellThrough => {
                Chain::Return(Reason::NoCalicoVerdict)
            }
        }
    }

    /// The untracked chain (semantics §7.1 (R) 4, §7.2 (R), §7.5 raw failsafes).
    fn untracked_chain(&self, h: usize, d: Direction, pkt: &PacketHeader, w: &mut Walk) -> Chain {
        let felix = &self.world.node.felix;
        let failsafe = match d {
            Direction::Ingress => Failsafe::find(&felix.failsafe_inbound, pkt, pkt.dst_port, pkt.src)
                .or_else(|| Failsafe::find(&felix.failsafe_outbound, pkt, pkt.src_port, pkt.src)),
            Direction::Egress => Failsafe::find(&felix.failsafe_outbound, pkt, pkt.dst_port, pkt.dst)
                .or_else(|| Failsafe::find(&felix.failsafe_inbound, pkt, pkt.src_port, pkt.dst)),
        };
        if let Some(f) = failsafe {
            // Accepted but still tracked: the rest of the path runs as usual.
            return Chain::Return(Reason::Failsafe {
                inbound: d == Direction::Ingress,
                protocol: f.protocol.0,
                port: f.port,
            });
        }
        self.passing_walk(EndpointRef::Host(h), d, Stage::Untracked, pkt, w)
    }

    /// The host endpoint whose pre-DNAT policy applies to packets arriving from `source`: the interface's
    /// own if it has pre-DNAT policy, else the `*` one if it has (semantics §7.7 [derived]).
    fn prednat_hep(&self, source: Source) -> Option<usize> {
        let has = |h: usize| {
            self.walker.has_policies(&self.world, EndpointRef::Host(h), Stage::PreDnat, Some(Direction::Ingress))
        };
        let named = match source {
            Source::Uplink(u) => self.world.interface_hep.get(&self.world.node.uplinks[u].name).copied(),
            _ => None,
        };
        named.filter(|h| has(*h)).or(self.world.star_hep.filter(|h| has(*h)))
    }

    fn route(&self, dst: IpAddr) -> Route {
        let node = &self.world.node;
        if node.is_host_ip(dst) {
            Route::Local
        } else if let Some(i) = node.local_workload_by_ip(dst) {
            Route::Workload(i)
        } else {
            node.uplink_for(dst).map(Route::Uplink).unwrap_or(Route::Local)
        }
    }

    fn interface_name(&self, route: Route) -> &str {
        let node = &self.world.node;
        match route {
            Route::Local => LOOPBACK,
            Route::Workload(i) => node.workloads[i].interface.as_deref().unwrap_or(""),
            Route::Uplink(u) => &node.uplinks[u].name,
        }
    }

    fn egress_of(&self, route: Route) -> Egress {
        let node = &self.world.node;
        match route {
            Route::Local => Egress::Host,
            Route::Workload(i) => Egress::Workload(node.workloads[i].name.clone()),
            Route::Uplink(u) => Egress::Uplink(node.uplinks[u].name.clone()),
        }
    }

    fn note(&self, w: &mut Walk, r: Reason) -> Reason {
        w.trace.push(r.clone());
        r
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Uplink(usize),
    Workload(usize),
    Host,
}

/// An allowed packet: where it goes, its destination after NAT, and what conntrack records.
struct Delivered {
    out: Egress,
    dst: IpAddr,
    dst_port: u16,
    commit: Option<(Lookup, Tuple)>,
}

#[cfg(test)]
mod tests;
