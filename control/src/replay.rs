//! `calxdp replay`: a capture through the pipeline, offline and without root. Every frame's verdict and
//! what decided it, as a table; optionally the frames that left, one pcap per output port.
//!
//! A pcap does not say where a frame arrived, so its ingress is inferred from its source address: a
//! local pod's address means that pod's interface, one of the host's addresses means the host stack,
//! anything else the first uplink.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use calxdp_dataplane::frames::{ingest, rewrite, time_exceeded};
use calxdp_dataplane::io::pcap::{self, Record};
use calxdp_dataplane::log::{log_line, LogLimiter};
use calxdp_dataplane::path::Port;
use calxdp_dataplane::pipeline::{explain, rule_ref, Decision, Pipeline};
use calxdp_policy::node::NodeConfig;
use calxdp_policy::reference::walker::log_for;
use calxdp_policy::resource::{load_path, ResourceSet};
use calxdp_policy::verdict::Verdict;
use calxdp_policy::yaml::{parse_documents, Field, LoadError, Origin};

use crate::publisher::TablePublisher;

/// Reads a node file (the schema of a parity scenario's `node:` section).
pub fn load_node(path: &Path) -> Result<NodeConfig, String> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{file}: cannot read: {e}"))?;
    let origin = Origin::file(file.clone());
    let docs = parse_documents(&text, &origin).map_err(|e| e.to_string())?;
    let doc = docs.first().ok_or_else(|| format!("{file}: empty node file"))?;
    NodeConfig::parse(Field::root(doc, &origin)).map_err(|e: LoadError| e.to_string())
}

/// What a replay produced.
#[derive(Debug)]
pub struct Replay {
    /// The table, one line per frame, then the counters.
    pub report: String,
    pub allowed: usize,
    pub dropped: usize,
    /// Frames that left, by output port name.
    pub out: BTreeMap<String, Vec<Record>>,
}

pub fn replay(node: NodeConfig, policies: &Path, capture: &Path) -> Result<Replay, String> {
    let mut resources = ResourceSet::new();
    resources.apply_all(load_path(policies).map_err(|e| e.to_string())?.into_iter().map(|d| d.resource));
    let file = std::fs::File::open(capture).map_err(|e| format!("{}: {e}", capture.display()))?;
    let records = pcap::read_all(std::io::BufReader::new(file)).map_err(|e| format!("{}: {e}", capture.display()))?;

    let publisher = TablePublisher::new(node.clone(), resources);
    let mut pipeline = Pipeline::new(publisher.slot(), node.felix.conntrack_capacity);
    let felix = &node.felix;
    let mut limiter = LogLimiter::new(felix.log_rate_limit.as_deref(), felix.log_rate_burst)?;
    let mut log_lines: Vec<String> = Vec::new();
    let start = records.first().map(|r| r.nanos).unwrap_or(0);
    let port_name = |p: Port| crate::run::port_name(&node, p);
    let mut report = String::new();
    let _ = writeln!(
        report,
        "{:>4}  {:>9}  {:<10} {:<5} {:<44} {:<7} {:<10} {:<22} why",
        "#", "time_s", "in", "proto", "flow", "verdict", "out", "translated"
    );
    let (mut allowed, mut dropped) = (0, 0);
    let mut out: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for (i, rec) in records.iter().enumerate() {
        let mut frame = rec.data.clone();
        let port = match calxdp_dataplane::wire::parse(&frame) {
            Ok(p) if p.is_ip() => ingress_of(&node, p.header.src),
            _ => Port::Uplink(0),
        };
        let (packet, parsed) = ingest(port, &frame);
        let mut batch = [packet];
        let now = rec.nanos.saturating_sub(start);
        pipeline.process(&mut batch, now);
        let p = &batch[0];
        let tables = pipeline.tables();
        let h = &p.header;
        let malformed = matches!(p.decision, Decision::Malformed(_) | Decision::NotIp);
        let flow = if malformed {
            format!("({} bytes)", rec.data.len())
        } else if h.has_ports() {
            format!("{}:{} -> {}:{}", h.src, h.src_port, h.dst, h.dst_port)
        } else {
            format!("{} -> {}", h.src, h.dst)
        };
        let why = match p.decision {
            Decision::Malformed(reason) => format!("malformed frame: {}", reason.as_str()),
            Decision::NotIp => "not an IP frame".to_string(),
            d => explain(&tables, &d).to_string(),
        };
        if let Some(parsed) = &parsed {
            for hit in p.logs.iter().flatten() {
                if limiter.admit(now) {
                    let prefix = log_for(&tables.world, rule_ref(&tables, hit.ep, hit.stage, hit.dir, hit.rule)).prefix;
                    let in_if = if port == Port::Host { String::new() } else { port_name(port) };
                    let out_if = match p.out {
                        Some(Port::Host) | None => String::new(),
                        Some(o) => port_name(o),
                    };
                    log_lines.push(format!("{:>4}  {}", i + 1, log_line(&prefix, &in_if, &out_if, &rec.data, parsed)));
                }
            }
        }
        let mut verdict = p.verdict;
        let mut why = why;
        if verdict == Verdict::Allow {
            if let Some(parsed) = &parsed {
                if rewrite(&mut frame, parsed, p, &tables.ports).is_err() {
                    verdict = Verdict::Drop;
                    why = "TTL exceeded in transit (ICMP time exceeded sent back)".into();
                    pipeline.dropped_after_rewrite(calxdp_dataplane::pipeline::DropReason::TtlExceeded);
                    if let Some(icmp) = time_exceeded(parsed, &tables.ports) {
                        out.entry(port_name(port)).or_default().push(Record { nanos: rec.nanos, data: icmp });
                    }
                }
            }
        }
        let (v, o, t) = match verdict {
            Verdict::Allow => {
                allowed += 1;
                let o = p.out.map(port_name).unwrap_or_default();
                out.entry(o.clone()).or_default().push(Record { nanos: rec.nanos, data: frame });
                ("allow", o, p.translated.map(|s| s.to_string()).unwrap_or_default())
            }
            Verdict::Drop => {
                dropped += 1;
                ("drop", String::new(), String::new())
            }
        };
        let _ = writeln!(
            report,
            "{:>4}  {:>9.3}  {:<10} {:<5} {:<44} {:<7} {:<10} {:<22} {}",
            i + 1,
            now as f64 / 1e9,
            port_name(port),
            if malformed { "-".to_string() } else { proto_name(h.protocol.0) },
            flow,
            v,
            o,
            t,
            why
        );
    }
    if !log_lines.is_empty() || limiter.suppressed > 0 {
        let _ =
            writeln!(report, "\nLog rules ({} lines, {} over the rate limit):", log_lines.len(), limiter.suppressed);
        for l in &log_lines {
            let _ = writeln!(report, "{l}");
        }
    }
    let tables = pipeline.tables();
    let hits = pipeline.rule_hits.by_rule(&tables);
    if !hits.is_empty() {
        let _ = writeln!(report, "\nRule hits (like iptables -c):");
        for (r, n) in &hits {
            let owner = match &r.owner {
                calxdp_policy::verdict::RuleOwner::Policy { tier, id } => format!("tier {tier} policy {id}"),
                calxdp_policy::verdict::RuleOwner::Profile(p) => format!("profile {p}"),
            };
            let _ = writeln!(
                report,
                "  {n:>5}  {} {} rule {} ({}) of {owner}",
                r.stage.name(),
                r.direction.name(),
                r.index,
                r.action
            );
        }
    }
    let c = &pipeline.counters;
    let _ = writeln!(report, "\n{} frames: {allowed} allowed, {dropped} dropped", records.len());
    for r in calxdp_dataplane::pipeline::DropReason::ALL {
        if c.dropped(r) > 0 {
            let _ = writeln!(report, "  dropped {:<26} {}", r.name(), c.dropped(r));
        }
    }
    for m in calxdp_dataplane::wire::Malformed::ALL {
        if c.malformed[m.index()] > 0 {
            let _ = writeln!(report, "    malformed {:<24} {}", m.as_str(), c.malformed[m.index()]);
        }
    }
    let _ = writeln!(report, "  conntrack entries at the end: {}", pipeline.flows.len());
    let ports: Vec<Port> = (0..node.uplinks.len() as u16)
        .map(Port::Uplink)
        .chain((0..node.workloads.len() as u16).map(Port::Workload))
        .chain(std::iter::once(Port::Host))
        .collect();
    for port in ports {
        let slot = calxdp_dataplane::pipeline::Counters::port_slot(port, node.uplinks.len(), node.workloads.len());
        let (rx, tx) = (c.rx.get(slot).copied().unwrap_or(0), c.tx.get(slot).copied().unwrap_or(0));
        if rx + tx > 0 {
            let _ = writeln!(report, "  port {:<10} rx {rx:>4}  tx {tx:>4}", port_name(port));
        }
    }
    Ok(Replay { report, allowed, dropped, out })
}

/// Where a captured frame arrived, from its source address (see the module comment).
fn ingress_of(node: &NodeConfig, src: std::net::IpAddr) -> Port {
    if let Some(w) = node.local_workload_by_ip(src) {
        return Port::Workload(w as u16);
    }
    if node.is_host_ip(src) {
        return Port::Host;
    }
    Port::Uplink(0)
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmp6".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

/// Writes one pcap per output port into `dir`.
pub fn write_outputs(dir: &Path, out: &BTreeMap<String, Vec<Record>>) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (port, records) in out {
        let path = dir.join(format!("{port}.pcap"));
        let f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        pcap::write_all(std::io::BufWriter::new(f), records).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
