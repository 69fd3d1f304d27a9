//! `calxdp replay`: a capture through the pipeline, offline and without root. Every frame's verdict and
//! what decided it, as a table; optionally the frames that left, one pcap per output port.
//!
//! A pcap does not say where a frame arrived, so its ingress is inferred from its source address: a
//! local pod's address means that pod's interface, one of the host's addresses means the host stack,
//! anything else the first uplink.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use calxdp_dataplane::decision::Decision;
use calxdp_dataplane::io::pcap::{self, PcapError, Record};
use calxdp_dataplane::path::Port;
use calxdp_dataplane::pipeline::explain;
use calxdp_policy::node::NodeConfig;
use calxdp_policy::resource::{load_path, ResourceSet};
use calxdp_policy::verdict::Verdict;
use calxdp_policy::yaml::LoadError;

use crate::offline::OfflineNode;

/// Why a replay could not run or write its output. Each message is what `calxdp replay` prints.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The node file or a policy file does not load (file:line:col: field: message).
    #[error("{0}")]
    Load(#[from] LoadError),
    /// The capture cannot be read.
    #[error("{}: {error}", path.display())]
    Capture { path: PathBuf, error: PcapError },
    /// A frame named a port the offline node has not attached.
    #[error(transparent)]
    Inject(#[from] crate::offline::NotAttached),
    /// An output capture cannot be written.
    #[error("{}: {error}", path.display())]
    Output { path: PathBuf, error: std::io::Error },
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

pub fn replay(node: NodeConfig, policies: &Path, capture: &Path) -> Result<Replay, ReplayError> {
    let mut resources = ResourceSet::new();
    resources.apply_all(load_path(policies)?.into_iter().map(|d| d.resource));
    let unreadable = |error| ReplayError::Capture { path: capture.to_path_buf(), error };
    let file = std::fs::File::open(capture).map_err(|e| unreadable(PcapError::Io(e)))?;
    let records = pcap::read_all(std::io::BufReader::new(file)).map_err(unreadable)?;

    // The production worker on memory ports, one frame per round at the capture's own time.
    let mut offline = OfflineNode::new(node.clone(), resources, true);
    let start = records.first().map(|r| r.nanos).unwrap_or(0);
    let port_name = |p: Port| p.name_in(&node);
    let mut report = String::new();
    let _ = writeln!(
        report,
        "{:>4}  {:>9}  {:<10} {:<5} {:<44} {:<7} {:<10} {:<22} why",
        "#", "time_s", "in", "proto", "flow", "verdict", "out", "translated"
    );
    let (mut allowed, mut dropped) = (0, 0);
    let mut out: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    let mut log_lines: Vec<String> = Vec::new();
    for (i, rec) in records.iter().enumerate() {
        let parsed = calxdp_dataplane::wire::parse(&rec.data);
        let port = match &parsed {
            Ok(p) if p.is_ip() => ingress_of(&node, p.header.src),
            _ => Port::Uplink(0),
        };
        let now = rec.nanos.saturating_sub(start);
        offline.clock.set(now);
        let id = offline.id_of(port);
        offline.inject(id, rec.data.clone())?;
        let traced = offline.settle();
        let tables = offline.tables();
        let mine = traced.iter().find(|r| {
            r.in_port == id
                && parsed.as_ref().map_or(matches!(r.decision, Decision::Malformed(_)), |p| r.header == p.header)
        });
        for line in offline.take_log_lines() {
            log_lines.push(format!("{:>4}  {line}", i + 1));
        }
        for p in offline.port_ids() {
            let sent = offline.take_sent(p);
            if let Some(name) = tables.ports.port_of_id(p).map(port_name) {
                out.entry(name).or_default().extend(sent.into_iter().map(|data| Record { nanos: rec.nanos, data }));
            }
        }
        let (proto, flow, verdict, o, t, why) = match mine {
            None => {
                // Not a packet the pipeline decides: ARP and neighbour discovery, answered or passed on.
                allowed += 1;
                (
                    "-".to_string(),
                    format!("({} bytes)", rec.data.len()),
                    "pass",
                    String::new(),
                    String::new(),
                    "ARP or neighbour discovery: answered or passed by the dataplane".to_string(),
                )
            }
            Some(r) => {
                let h = &r.header;
                let malformed = matches!(r.decision, Decision::Malformed(_) | Decision::NotIp);
                let flow = if malformed {
                    format!("({} bytes)", rec.data.len())
                } else if h.has_ports() {
                    format!("{}:{} -> {}:{}", h.src, h.src_port, h.dst, h.dst_port)
                } else {
                    format!("{} -> {}", h.src, h.dst)
                };
                let why = match r.decision {
                    Decision::Malformed(reason) => format!("malformed frame: {}", reason.as_str()),
                    Decision::NotIp => "not an IP frame".to_string(),
                    _ if r.verdict == Verdict::Drop && r.decision == Decision::Established => {
                        "TTL exceeded in transit (ICMP time exceeded sent back)".into()
                    }
                    d => explain(&tables, &d).to_string(),
                };
                let proto = if malformed { "-".to_string() } else { proto_name(h.protocol.0) };
                match r.verdict {
                    Verdict::Allow => {
                        allowed += 1;
                        let o = r.out.map(port_name).unwrap_or_default();
                        (proto, flow, "allow", o, r.translated.map(|s| s.to_string()).unwrap_or_default(), why)
                    }
                    Verdict::Drop => {
                        dropped += 1;
                        (proto, flow, "drop", String::new(), String::new(), why)
                    }
                }
            }
        };
        let _ = writeln!(
            report,
            "{:>4}  {:>9.3}  {:<10} {:<5} {:<44} {:<7} {:<10} {:<22} {}",
            i + 1,
            now as f64 / 1e9,
            port_name(port),
            proto,
            flow,
            verdict,
            o,
            t,
            why
        );
    }
    let io = offline.worker.io.clone();
    let suppressed = offline.worker.pipeline.counters.logs_suppressed;
    if !log_lines.is_empty() || suppressed > 0 {
        let _ = writeln!(report, "\nLog rules ({} lines, {} over the rate limit):", log_lines.len(), suppressed);
        for l in &log_lines {
            let _ = writeln!(report, "{l}");
        }
    }
    let tables = offline.tables();
    let pipeline = &offline.worker.pipeline;
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
    for r in calxdp_dataplane::decision::DropReason::ALL {
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
    for id in offline.port_ids() {
        let (rx, tx) = (io.rx.get(id as usize).copied().unwrap_or(0), io.tx.get(id as usize).copied().unwrap_or(0));
        if let (true, Some(port)) = (rx + tx > 0, tables.ports.port_of_id(id)) {
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
pub fn write_outputs(dir: &Path, out: &BTreeMap<String, Vec<Record>>) -> Result<(), ReplayError> {
    let failed = |path: &Path, error| ReplayError::Output { path: path.to_path_buf(), error };
    std::fs::create_dir_all(dir).map_err(|e| failed(dir, e))?;
    for (port, records) in out {
        let path = dir.join(format!("{port}.pcap"));
        let f = std::fs::File::create(&path).map_err(|e| failed(&path, e))?;
        pcap::write_all(std::io::BufWriter::new(f), records).map_err(|e| failed(&path, e))?;
    }
    Ok(())
}
