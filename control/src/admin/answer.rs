//! The answers to the admin API's requests, built on the admin thread's blocking pool from the view of the
//! node (`NodeView`): the tables in force, the workers' published counters, and what the workers answer
//! between rounds.

use std::net::IpAddr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::{Duration, Instant, SystemTime};

use calxdp_dataplane::decision::{Decision, DropReason};
use calxdp_dataplane::flow::FlowView;
use calxdp_dataplane::path::Port;
use calxdp_dataplane::pipeline::{explain, Counters, RuleHits};
use calxdp_dataplane::port_drops::{kind_name, DropRow, IoDrop};
use calxdp_dataplane::tables::TableSet;
use calxdp_dataplane::worker::{FlowFilter, IoCounters, TraceRecord, WorkerCommand, WorkerCounters};
use calxdp_policy::conntrack::TcpState;
use calxdp_policy::node::NodeConfig;
use calxdp_policy::packet::{tcp_flags, PacketHeader};
use calxdp_policy::reference::{Attach, ReferenceNode};
use calxdp_policy::resource::Protocol;
use calxdp_policy::verdict::{Reason, RuleOwner, Verdict};

use super::proto::{self, Request, Response};
use super::NodeView;

/// How long a worker may take to answer (it answers between two rounds: microseconds when it is alive).
const ASK_WITHIN: Duration = Duration::from_secs(2);
/// Most conntrack entries one listing returns, per worker.
pub const MAX_LISTED: usize = 100_000;
/// Most frames one trace returns.
pub const MAX_TRACE: u32 = 10_000;
/// The longest a trace waits for its frames.
pub const MAX_TRACE_WAIT: Duration = Duration::from_secs(60);

/// The answer to one request.
pub fn answer(view: &NodeView, req: Request) -> Response {
    let result = match req {
        Request::Status {} => to_json(status(view)),
        Request::ConntrackList { filter } => flows(view, filter).and_then(to_json),
        Request::ConntrackFlush { filter } => flush(view, filter).and_then(to_json),
        Request::Rules {} => rules(view).and_then(to_json),
        Request::Explain { from, to } => explain_flow(view, &from, &to).and_then(to_json),
        Request::Trace { count, timeout_ms } => trace(view, count, timeout_ms).and_then(to_json),
    };
    match result {
        Ok(v) => Response::Ok(v),
        Err(e) => Response::Error(e),
    }
}

fn to_json<T: serde::Serialize>(v: T) -> Result<serde_json::Value, String> {
    serde_json::to_value(v).map_err(|e| format!("internal: cannot encode the answer: {e}"))
}

/// Every worker's published counters, one entry per worker.
pub fn worker_counters(view: &NodeView) -> Vec<WorkerCounters> {
    view.workers
        .iter()
        .map(|w| {
            let g = match w.shared.snapshot.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            g.clone()
        })
        .collect()
}

/// The workers' counters summed.
pub fn total(per_worker: &[WorkerCounters]) -> WorkerCounters {
    let mut sum = WorkerCounters::default();
    for w in per_worker {
        sum.add(w);
    }
    sum
}

/// The name of a port of `t`, as the node file gives it.
pub fn port_name(t: &TableSet, p: Port) -> String {
    let node = &t.world.node;
    match p {
        Port::Host => "host".into(),
        Port::Uplink(u) => node.uplinks.get(u as usize).map_or_else(|| format!("uplink {u}"), |u| u.name.clone()),
        Port::Workload(w) => node.workloads.get(w as usize).map_or_else(|| format!("workload {w}"), |w| w.name.clone()),
    }
}

/// Local endpoints: pods with an interface here, and host endpoints.
pub fn local_endpoints(t: &TableSet) -> usize {
    t.world.node.workloads.iter().filter(|w| w.interface.is_some()).count() + t.world.host_endpoints.len()
}

/// The local endpoints of `t`: pods with an interface here, and host endpoints.
fn local_endpoint_list(t: &TableSet) -> Vec<&calxdp_policy::resolve::Endpoint> {
    let w = &t.world;
    w.workloads
        .iter()
        .zip(&w.node.workloads)
        .filter(|(_, wl)| wl.interface.is_some())
        .map(|(e, _)| e)
        .chain(w.host_endpoints.iter().map(|h| &h.endpoint))
        .collect()
}

/// Policies that select at least one local endpoint (Felix's `felix_active_local_policies`).
pub fn active_local_policies(t: &TableSet) -> usize {
    let local = local_endpoint_list(t);
    t.world.policies.iter().filter(|p| local.iter().any(|e| p.selector.matches(&e.labels))).count()
}

/// Distinct rule selectors (`selector` and `notSelector` of sources and destinations) of the policies
/// that select a local endpoint and of the profiles local endpoints have: the selectors whose members the
/// node's rules match on (Felix's `felix_active_local_selectors` counts its active rule selectors the same
/// way).
pub fn active_local_selectors(t: &TableSet) -> usize {
    let local = local_endpoint_list(t);
    let w = &t.world;
    let policy_rules = w
        .policies
        .iter()
        .filter(|p| local.iter().any(|e| p.selector.matches(&e.labels)))
        .flat_map(|p| p.ingress.iter().chain(&p.egress));
    let profile_rules = local
        .iter()
        .flat_map(|e| &e.profiles)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter_map(|name| w.profiles.get(name))
        .flat_map(|p| p.ingress.iter().chain(&p.egress));
    let mut selectors = std::collections::BTreeSet::new();
    for r in policy_rules.chain(profile_rules) {
        for side in [&r.source, &r.destination] {
            selectors.extend(side.selector.iter().chain(&side.not_selector));
        }
    }
    selectors.len()
}

fn status(view: &NodeView) -> proto::Status {
    let t = view.slot.hold();
    let per_worker = worker_counters(view);
    let sum = total(&per_worker);
    let (c, io) = (&sum.pipeline, &sum.io);
    let fs = &sum.flows;
    let ct = proto::ConntrackStatus {
        capacity: view.capacity,
        entries: sum.entries,
        created: fs.created,
        expired: fs.expired,
        early_dropped: fs.early_dropped,
        refused: fs.refused,
        flushed: fs.flushed,
    };
    let workers = per_worker
        .iter()
        .enumerate()
        .map(|(i, w)| proto::WorkerStatus {
            id: i,
            frames: view.workers[i].shared.frames_done.load(std::sync::atomic::Ordering::Relaxed),
            batches: w.io.batches,
            busy_seconds: w.io.busy_nanos as f64 / 1e9,
            conntrack_entries: w.entries,
        })
        .collect();
    let control = view.control().clone();
    let ports = control
        .ports
        .iter()
        .map(|p| {
            let drops = row_counts(&sum.port_drops.get(p.id));
            proto::PortStatus {
                name: p.name.clone(),
                id: p.id,
                up: p.up,
                state: p.state.clone(),
                rx: io.rx.get(p.id as usize).copied().unwrap_or(0),
                tx: io.tx.get(p.id as usize).copied().unwrap_or(0),
                dropped: drops.iter().map(|d| d.count).sum(),
                drops,
            }
        })
        .collect();
    let since = |at: SystemTime| SystemTime::now().duration_since(at).unwrap_or_default().as_secs_f64();
    proto::Status {
        node: t.world.node.name.clone(),
        uptime_seconds: view.started.elapsed().as_secs_f64(),
        tables: proto::TablesStatus {
            version: t.epoch,
            age_seconds: since(control.tables_since),
            policies: t.world.policies.len(),
            rules: t.compiled.rules.iter().count(),
            programs: t.compiled.stats.programs,
            local_endpoints: local_endpoints(&t),
        },
        last_update: control.last_update.map(|u| proto::UpdateStatus {
            version: u.version,
            seconds_ago: since(u.at),
            compile_ms: u.compile.as_secs_f64() * 1e3,
            enforced_ms: u.enforced.map(|e| e.as_secs_f64() * 1e3),
            publications: control.publications,
        }),
        ports,
        workers,
        frames: c.packets,
        allowed: c.allowed,
        drops: drop_counts(c, io),
        unattributed_drops: row_counts(&sum.port_drops.unattributed),
        conntrack: ct,
    }
}

/// Drops by reason, node-wide: the pipeline's, then those around it (a full transmit queue, a frame too
/// long, a port being attached, a next hop that never answered).
pub fn drop_counts(c: &Counters, io: &IoCounters) -> Vec<proto::Count> {
    let mut out: Vec<proto::Count> =
        DropReason::ALL.iter().map(|r| proto::Count { reason: r.name().into(), count: c.dropped(*r) }).collect();
    for d in IoDrop::ALL {
        let count = match d {
            IoDrop::TxQueueFull => io.tx_full,
            IoDrop::Oversize => io.oversize,
            IoDrop::NoPort => io.no_port,
            IoDrop::NoNeighbour => io.no_neighbour,
            IoDrop::HandoffRingFull => io.handoff_full,
            IoDrop::ArpDropped => io.arp_dropped,
        };
        out.push(proto::Count { reason: d.name().into(), count });
    }
    out
}

/// One port's drops by reason, the reasons with drops only.
pub fn row_counts(row: &DropRow) -> Vec<proto::Count> {
    row.iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| proto::Count { reason: kind_name(k).into(), count: *n })
        .collect()
}

/// Asks every worker the same question and waits for every answer.
fn ask<T>(view: &NodeView, make: impl Fn(SyncSender<T>) -> WorkerCommand) -> Result<Vec<T>, String> {
    let mut waits: Vec<Receiver<T>> = Vec::new();
    for (i, w) in view.workers.iter().enumerate() {
        let (tx, rx) = sync_channel(1);
        w.commands.send(make(tx)).map_err(|_| format!("worker {i} has stopped"))?;
        waits.push(rx);
    }
    waits
        .into_iter()
        .enumerate()
        .map(|(i, rx)| {
            rx.recv_timeout(ASK_WITHIN).map_err(|_| format!("worker {i} did not answer within {ASK_WITHIN:?}"))
        })
        .collect()
}

fn flow_filter(f: proto::Filter) -> FlowFilter {
    FlowFilter { src: f.src, dst: f.dst, protocol: f.protocol }
}

fn tcp_state_name(s: TcpState) -> &'static str {
    match s {
        TcpState::SynSent => "SYN_SENT",
        TcpState::SynRecv => "SYN_RECV",
        TcpState::Established => "ESTABLISHED",
        TcpState::FinWait => "FIN_WAIT",
        TcpState::CloseWait => "CLOSE_WAIT",
        TcpState::LastAck => "LAST_ACK",
        TcpState::TimeWait => "TIME_WAIT",
        TcpState::Close => "CLOSE",
        TcpState::SynSent2 => "SYN_SENT2",
    }
}

fn flows(view: &NodeView, filter: proto::Filter) -> Result<proto::Flows, String> {
    let f = flow_filter(filter);
    let per_worker = ask(view, |reply| WorkerCommand::Flows { filter: f, limit: MAX_LISTED + 1, reply })?;
    let now = view.clock.now();
    let mut out = proto::Flows::default();
    for (worker, flows) in per_worker.into_iter().enumerate() {
        out.truncated |= flows.len() > MAX_LISTED;
        out.entries.extend(flows.iter().take(MAX_LISTED).map(|v: &FlowView| proto::FlowEntry {
            protocol: v.original.protocol.to_string(),
            state: v.tcp.map(|s| tcp_state_name(s).to_string()),
            expires_seconds: v.expires.saturating_sub(now) as f64 / 1e9,
            src: v.original.src,
            dst: v.original.dst,
            sport: v.original.src_port,
            dport: v.original.dst_port,
            reply_src: v.reply.src,
            reply_dst: v.reply.dst,
            reply_sport: v.reply.src_port,
            reply_dport: v.reply.dst_port,
            replied: v.seen_reply,
            table_version: v.epoch,
            worker,
        }));
    }
    out.entries.sort_by_key(|e| (e.src, e.dst, e.sport, e.dport));
    Ok(out)
}

fn flush(view: &NodeView, filter: proto::Filter) -> Result<proto::Flushed, String> {
    let f = flow_filter(filter);
    let n = ask(view, |reply| WorkerCommand::FlushFlows { filter: f, reply })?;
    Ok(proto::Flushed { flushed: n.iter().sum() })
}

fn rules(view: &NodeView) -> Result<proto::Rules, String> {
    let t = view.slot.hold();
    let mut hits = RuleHits::default();
    for h in ask(view, |reply| WorkerCommand::RuleHits { reply })? {
        hits.add_all(&h);
    }
    let mut rules: Vec<proto::RuleRow> = t
        .compiled
        .rules
        .iter()
        .map(|(id, info)| {
            let (tier, policy, profile) = match &info.owner {
                RuleOwner::Policy { tier, id } => (Some(tier.clone()), Some(id.to_string()), None),
                RuleOwner::Profile(p) => (None, None, Some(p.clone())),
            };
            proto::RuleRow {
                id,
                packets: hits.get(&t, id),
                tier,
                policy,
                profile,
                stage: info.stage.name().into(),
                direction: info.direction.name().into(),
                index: info.index,
                action: info.action.to_string(),
            }
        })
        .collect();
    // In evaluation order as far as names allow: tiers as the tables order them, then profiles.
    let tier_rank = |r: &proto::RuleRow| {
        r.tier.as_ref().and_then(|n| t.world.tiers.iter().position(|x| &x.name == n)).unwrap_or(usize::MAX)
    };
    rules.sort_by(|a, b| {
        (tier_rank(a), &a.tier, &a.policy, &a.profile, &a.stage, &a.direction, a.index).cmp(&(
            tier_rank(b),
            &b.tier,
            &b.policy,
            &b.profile,
            &b.stage,
            &b.direction,
            b.index,
        ))
    });
    Ok(proto::Rules { version: t.epoch, rules })
}

/// Every stage that decided a traced frame, in order: the rule of each chain it crossed, then the final
/// reason when it is not that last rule (a static behaviour, a conntrack state). Named from `t`.
pub fn stages(t: &TableSet, r: &TraceRecord) -> Vec<String> {
    let mut out = Vec::new();
    let mut last = None;
    for h in r.rule_hits.iter().flatten() {
        let d = Decision::Rule { ep: h.ep, stage: h.stage, dir: h.dir, rule: h.rule };
        out.push(explain(t, &d).to_string());
        last = Some(d);
    }
    if last != Some(r.decision) {
        out.push(explain(t, &r.decision).to_string());
    }
    out
}

/// A flow as a line: `src:port -> dst:port` (addresses alone for protocols without ports).
pub fn flow_text(h: &PacketHeader) -> String {
    if h.has_ports() {
        format!("{} -> {}", sock(h.src, h.src_port), sock(h.dst, h.dst_port))
    } else {
        format!("{} -> {}", h.src, h.dst)
    }
}

fn sock(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

/// One traced frame, named from `t`.
pub fn traced(t: &TableSet, r: &TraceRecord) -> proto::TracedFrame {
    proto::TracedFrame {
        arrived: port_name(t, r.port),
        protocol: r.header.protocol.0,
        flow: flow_text(&r.header),
        verdict: if r.verdict == Verdict::Allow { "allow" } else { "drop" }.into(),
        leaves: r.out.map(|o| port_name(t, o)),
        translated: r
            .translated
            .filter(|a| a.ip() != r.header.dst || a.port() != r.header.dst_port)
            .map(|a| a.to_string()),
        stages: stages(t, r),
        rejected: r.rejected,
        version: r.epoch,
    }
}

fn trace(view: &NodeView, count: u32, timeout_ms: Option<u64>) -> Result<proto::Traced, String> {
    if count == 0 || count > MAX_TRACE {
        return Err(format!("count must be between 1 and {MAX_TRACE}"));
    }
    let wait = timeout_ms.map_or(Duration::from_secs(10), Duration::from_millis).min(MAX_TRACE_WAIT);
    let Ok(_one) = view.tracing.try_lock() else {
        return Err("another trace is running on this node; try again when it ends".into());
    };
    let (tx, rx) = sync_channel::<TraceRecord>(count as usize);
    for (i, w) in view.workers.iter().enumerate() {
        w.commands
            .send(WorkerCommand::Trace { count, to: tx.clone() })
            .map_err(|_| format!("worker {i} has stopped"))?;
    }
    drop(tx);
    let deadline = Instant::now() + wait;
    let mut records = Vec::new();
    while records.len() < count as usize {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(r) => records.push(r),
            Err(_) => break,
        }
    }
    // Every worker stops tracing now, whether or not it traced its share.
    let (stop, _) = sync_channel(0);
    for w in &view.workers {
        let _ = w.commands.send(WorkerCommand::Trace { count: 0, to: stop.clone() });
    }
    let t = view.slot.hold();
    Ok(proto::Traced {
        timed_out: records.len() < count as usize,
        frames: records.iter().map(|r| traced(&t, r)).collect(),
    })
}

/// Where a packet from `from` enters the node, and its source address and port. `from` is a pod
/// (`namespace/name`), or an address with an optional port.
fn source(node: &NodeConfig, from: &str, family_of: Option<IpAddr>) -> Result<(Attach, IpAddr, u16), String> {
    let (host, port) = split_port(from)?;
    let port = port.unwrap_or(40_000);
    if let Ok(ip) = host.parse::<IpAddr>() {
        if let Some(w) = node.workloads.iter().find(|w| w.ips.contains(&ip)) {
            if w.interface.is_some() {
                return Ok((Attach::Workload(w.name.clone()), ip, port));
            }
        }
        if node.uplinks.iter().any(|u| u.addrs.contains(&ip)) {
            return Ok((Attach::Host, ip, port));
        }
        let uplink = node
            .uplinks
            .iter()
            .find(|u| u.ips.iter().any(|n| n.contains(ip)))
            .or(node.uplinks.first())
            .ok_or_else(|| format!("{ip} is not on this node and the node has no uplink for it to arrive on"))?;
        return Ok((Attach::Uplink(uplink.name.clone()), ip, port));
    }
    let w = find_pod(node, host)?;
    let ip = pick_ip(&w.ips, family_of).ok_or_else(|| format!("pod {host} has no address"))?;
    match &w.interface {
        Some(_) => Ok((Attach::Workload(w.name.clone()), ip, port)),
        None => {
            let up = node.uplinks.first().ok_or("the node has no uplink for a remote pod's packet to arrive on")?;
            Ok((Attach::Uplink(up.name.clone()), ip, port))
        }
    }
}

fn find_pod<'a>(node: &'a NodeConfig, name: &str) -> Result<&'a calxdp_policy::node::Workload, String> {
    let (ns, pod) =
        name.split_once('/').ok_or_else(|| format!("'{name}' is neither an address nor a pod named namespace/name"))?;
    node.workloads
        .iter()
        .find(|w| w.namespace == ns && w.name == pod)
        .ok_or_else(|| format!("the node has no pod {ns}/{pod}"))
}

fn pick_ip(ips: &[IpAddr], family_of: Option<IpAddr>) -> Option<IpAddr> {
    match family_of {
        Some(f) => ips.iter().find(|i| i.is_ipv4() == f.is_ipv4()).or(ips.first()).copied(),
        None => ips.first().copied(),
    }
}

/// `host:port`, `[v6]:port`, `host` or a bare IPv6 address.
fn split_port(text: &str) -> Result<(&str, Option<u16>), String> {
    if let Some(rest) = text.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(|| format!("'{text}': missing ']'"))?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((ip, Some(p.parse().map_err(|_| format!("'{text}': bad port '{p}'"))?))),
            None if after.is_empty() => Ok((ip, None)),
            None => Err(format!("'{text}': expected ':PORT' after ']'")),
        };
    }
    if text.parse::<IpAddr>().is_ok() {
        return Ok((text, None));
    }
    match text.rsplit_once(':') {
        Some((h, p)) => Ok((h, Some(p.parse().map_err(|_| format!("'{text}': bad port '{p}'"))?))),
        None => Ok((text, None)),
    }
}

/// What `explain` follows: `to` is `ENDPOINT|IP[:PORT]/PROTO` (the protocol by name or number; TCP when
/// left out).
fn packet(node: &NodeConfig, from: &str, to: &str) -> Result<(Attach, PacketHeader), String> {
    let (dest, proto) = match to.rsplit_once('/') {
        Some((d, p)) if Protocol::parse(p).is_some() || p.parse::<u8>().is_ok() => {
            (d, Protocol::parse(p).or_else(|| p.parse().ok().map(Protocol)).expect("checked"))
        }
        _ => (to, Protocol::TCP),
    };
    let (host, dport) = split_port(dest)?;
    let dst = match host.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => {
            let w = find_pod(node, host)?;
            // The source's family decides which address of a dual-stack pod.
            let src_hint = split_port(from).ok().and_then(|(h, _)| h.parse::<IpAddr>().ok());
            pick_ip(&w.ips, src_hint).ok_or_else(|| format!("pod {host} has no address"))?
        }
    };
    let (attach, src, sport) = source(node, from, Some(dst))?;
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(format!("{src} and {dst} are not of the same IP family"));
    }
    let proto = match proto {
        Protocol::ICMP if dst.is_ipv6() => Protocol::ICMPV6,
        p => p,
    };
    let mut h = PacketHeader { src, dst, protocol: proto, ..PacketHeader::EMPTY };
    if proto.has_ports() {
        h.src_port = sport;
        h.dst_port = dport.ok_or_else(|| format!("'{to}': {proto} needs a destination port (IP:PORT/PROTO)"))?;
        if proto == Protocol::TCP {
            h.tcp_flags = tcp_flags::SYN;
        }
    } else if proto == Protocol::ICMP || proto == Protocol::ICMPV6 {
        // An echo request: the usual new ICMP flow.
        h.icmp_type = if proto == Protocol::ICMP { 8 } else { 128 };
        h.icmp_id = 1;
    }
    Ok((attach, h))
}

fn explain_flow(view: &NodeView, from: &str, to: &str) -> Result<proto::Explained, String> {
    let (node, resources) = {
        let c = view.control();
        (c.node.clone(), c.resources.clone())
    };
    let version = view.slot.epoch();
    let (attach, pkt) = packet(&node, from, to)?;
    // The reference evaluator with the node and resources the tables in force were compiled from, and an
    // empty conntrack: the answer for a new connection, stage by stage, with nothing sent.
    let mut model = ReferenceNode::new(node, resources);
    let outcome = model.process(&attach, &pkt, None).map_err(|e| e.to_string())?;
    let enters = match &attach {
        Attach::Workload(w) => format!("from pod {w}"),
        Attach::Uplink(u) => format!("from outside, on uplink {u}"),
        Attach::Host => "from the host's own stack".to_string(),
    };
    let translated = outcome
        .translated
        .filter(|a| a.ip() != pkt.dst || (pkt.has_ports() && a.port() != pkt.dst_port))
        .map(|a| a.to_string());
    Ok(proto::Explained {
        enters,
        packet: format!("{} {}", pkt.protocol, flow_text(&pkt)),
        verdict: if outcome.verdict == Verdict::Allow { "allow" } else { "drop" }.into(),
        leaves: outcome.out.map(|o| o.to_string()),
        translated,
        stages: outcome.trace.iter().map(Reason::to_string).collect(),
        deciding: outcome.reason.to_string(),
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_with_and_without_ports_split() {
        assert_eq!(split_port("10.0.0.1:80"), Ok(("10.0.0.1", Some(80))));
        assert_eq!(split_port("10.0.0.1"), Ok(("10.0.0.1", None)));
        assert_eq!(split_port("fd00::1"), Ok(("fd00::1", None)));
        assert_eq!(split_port("[fd00::1]:443"), Ok(("fd00::1", Some(443))));
        assert_eq!(split_port("shop/web:8080"), Ok(("shop/web", Some(8080))));
        assert!(split_port("10.0.0.1:http").is_err());
        assert!(split_port("[fd00::1").is_err());
    }
}
