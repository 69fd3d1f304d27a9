//! Parity scenario files (shared/parity/FORMAT.md): a node, the resources in force, and steps — frames with
//! Linux Calico's verdict, policy changes, and the passing of time.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use calxdp_policy::ids::Tuple;
use calxdp_policy::node::NodeConfig;
use calxdp_policy::packet::{tcp_flags, PacketHeader};
use calxdp_policy::reference::Attach;
use calxdp_policy::resource::{load_text, Protocol, ResourceDoc, ResourceKey};
use calxdp_policy::verdict::Verdict;
use calxdp_policy::yaml::{parse_documents, Field, LoadError, Origin};

/// A parsed scenario file.
#[derive(Debug)]
pub enum ScenarioFile {
    Scenario(Box<Scenario>),
    Selectors(SelectorVectors),
}

#[derive(Debug)]
pub struct Scenario {
    pub name: String,
    pub file: String,
    pub node: NodeConfig,
    pub resources: Vec<ResourceDoc>,
    pub steps: Vec<Step>,
}

#[derive(Debug)]
pub enum Step {
    Packet(PacketStep),
    Apply {
        line: usize,
        docs: Vec<ResourceDoc>,
    },
    Delete {
        line: usize,
        key: ResourceKey,
    },
    Advance {
        line: usize,
        by: Duration,
    },
    /// The node changes: a workload added, replaced or deleted, a namespace added or relabelled. The
    /// node as it is after the step.
    Node {
        line: usize,
        what: String,
        node: Box<NodeConfig>,
    },
}

/// A frame arriving somewhere, and what Linux Calico does with it.
#[derive(Debug, Clone)]
pub struct PacketStep {
    pub name: String,
    pub line: usize,
    pub attach: Attach,
    pub header: PacketHeader,
    /// The flow an ICMP error quotes (optional `inner:` field).
    pub inner: Option<Tuple>,
    pub expect: Verdict,
    pub out: Option<String>,
    pub translated: Option<SocketAddr>,
    pub tracked: Option<bool>,
    pub logged: Option<bool>,
    /// Whether the node answered the dropped frame with an ICMP port unreachable (Felix's Reject deny
    /// action; optional `rejected:` field).
    pub rejected: Option<bool>,
}

#[derive(Debug)]
pub struct SelectorVectors {
    pub name: String,
    pub file: String,
    pub cases: Vec<SelectorCase>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorExpect {
    Match,
    NoMatch,
    Error,
}

#[derive(Debug)]
pub struct SelectorCase {
    pub line: usize,
    pub selector: String,
    pub labels: BTreeMap<String, String>,
    pub expect: SelectorExpect,
}

/// Whether a YAML text looks like a parity scenario rather than a resource manifest.
pub fn looks_like_scenario(text: &str) -> bool {
    let has = |key: &str| text.lines().any(|l| l.starts_with(key));
    (has("steps:") || has("selectors:")) && has("name:") && !has("apiVersion:")
}

/// Parses a scenario file. Every embedded resource is loaded, so a bad manifest inside a scenario is reported
/// with the scenario file's line numbers.
pub fn parse_scenario(text: &str, file: &str) -> Result<ScenarioFile, LoadError> {
    let origin = Origin::file(file);
    let docs = parse_documents(text, &origin)?;
    let Some(doc) = docs.first() else {
        return Err(LoadError {
            file: file.into(),
            line: 1,
            col: 1,
            field: String::new(),
            message: "empty scenario file".into(),
        });
    };
    let root = Field::root(doc, &origin);
    let name = root.require("name", |n| n.string())?;
    if root.with("selectors", |s| Ok(s.is_some()))? {
        root.only_keys(&["name", "source", "selectors"])?;
        let cases = root.require("selectors", |s| s.each(parse_selector_case))?;
        return Ok(ScenarioFile::Selectors(SelectorVectors { name, file: file.into(), cases }));
    }
    root.only_keys(&["name", "source", "node", "resources", "steps"])?;
    let node = root.require("node", NodeConfig::parse)?;
    let resources = root.with("resources", |r| match r {
        Some(r) => load_block(text, r),
        None => Ok(Vec::new()),
    })?;
    // Steps may change the node; each step is read against the node as the steps before it left it.
    let mut current = node.clone();
    let steps = root.with("steps", |s| match s {
        Some(s) => s.each(|st| parse_step(text, st, &mut current)),
        None => Ok(Vec::new()),
    })?;
    Ok(ScenarioFile::Scenario(Box::new(Scenario { name, file: file.into(), node, resources, steps })))
}

/// Loads the resources of a block string (`resources: |`), reporting positions in the scenario file.
fn load_block(file_text: &str, f: Field<'_>) -> Result<Vec<ResourceDoc>, LoadError> {
    let text = f.str()?;
    load_text(text, &block_origin(file_text, f))
}

/// Where the text of a scalar starts in the file: a block scalar (`|`, `>`) starts on the next line with the
/// block's indentation; any other scalar where it stands.
fn block_origin(file_text: &str, f: Field<'_>) -> Origin {
    let pos = f.pos();
    let line_text = file_text.lines().nth(pos.line.saturating_sub(1)).unwrap_or("");
    let rest = line_text.get(pos.col.saturating_sub(1)..).unwrap_or("");
    if rest.starts_with('|') || rest.starts_with('>') {
        let indent = file_text
            .lines()
            .skip(pos.line)
            .find(|l| !l.trim().is_empty())
            .map(|l| l.len() - l.trim_start().len())
            .unwrap_or(0);
        Origin { file: f.origin.file.clone(), line_offset: pos.line, col_offset: indent }
    } else {
        let quoted = rest.starts_with('"') || rest.starts_with('\'');
        Origin { file: f.origin.file.clone(), line_offset: pos.line - 1, col_offset: pos.col - 1 + usize::from(quoted) }
    }
}

fn parse_selector_case(f: Field<'_>) -> Result<SelectorCase, LoadError> {
    f.only_keys(&["selector", "labels", "expect"])?;
    let selector = f.require("selector", |s| s.string())?;
    let labels = f.with("labels", |l| l.map(|l| l.string_map()).transpose())?.unwrap_or_default();
    let expect = f.require("expect", |e| match e.str()? {
        "match" => Ok(SelectorExpect::Match),
        "nomatch" => Ok(SelectorExpect::NoMatch),
        "error" => Ok(SelectorExpect::Error),
        other => Err(e.error(format!("expected match, nomatch or error, found '{other}'"))),
    })?;
    Ok(SelectorCase { line: f.pos().line, selector, labels, expect })
}

fn parse_step(file_text: &str, f: Field<'_>, node: &mut NodeConfig) -> Result<Step, LoadError> {
    let line = f.pos().line;
    if f.with("workload", |w| Ok(w.is_some()))? {
        f.only_keys(&["workload", "name"])?;
        let w = f.require("workload", calxdp_policy::node::parse_any_workload)?;
        let what = format!("workload {}/{}", w.namespace, w.name);
        let mut next = node.clone();
        next.upsert_workload(w);
        next.check().map_err(|e| f.error(e.to_string()))?;
        *node = next;
        return Ok(Step::Node { line, what, node: Box::new(node.clone()) });
    }
    if f.with("namespace", |n| Ok(n.is_some()))? {
        f.only_keys(&["namespace", "name"])?;
        let ns = f.require("namespace", calxdp_policy::node::parse_namespace)?;
        let what = format!("namespace {}", ns.name);
        node.upsert_namespace(ns);
        return Ok(Step::Node { line, what, node: Box::new(node.clone()) });
    }
    if let Some(text) = f.with("delete", |d| d.map(|d| d.string()).transpose())? {
        let parts: Vec<&str> = text.split('/').collect();
        let removed = match parts.as_slice() {
            [kind, ns, name]
                if kind.eq_ignore_ascii_case("Workload") || kind.eq_ignore_ascii_case("WorkloadEndpoint") =>
            {
                Some(node.remove_workload(ns, name))
            }
            [kind, name] if kind.eq_ignore_ascii_case("Namespace") => Some(node.remove_namespace(name)),
            _ => None,
        };
        match removed {
            Some(true) => {
                f.only_keys(&["delete", "name"])?;
                return Ok(Step::Node { line, what: format!("delete {text}"), node: Box::new(node.clone()) });
            }
            Some(false) => {
                return Err(f.error(format!("delete {text}: the node has no such workload or namespace at this step")))
            }
            None => {}
        }
    }
    if f.with("apply", |a| Ok(a.is_some()))? {
        f.only_keys(&["apply", "name"])?;
        let docs = f.require("apply", |a| load_block(file_text, a))?;
        return Ok(Step::Apply { line, docs });
    }
    if f.with("delete", |d| Ok(d.is_some()))? {
        f.only_keys(&["delete", "name"])?;
        let key = f.require("delete", |d| {
            let text = d.str()?;
            ResourceKey::parse(text)
                .ok_or_else(|| d.error(format!("expected Kind/name or Kind/namespace/name, found '{text}'")))
        })?;
        return Ok(Step::Delete { line, key });
    }
    if f.with("advance", |a| Ok(a.is_some()))? {
        f.only_keys(&["advance", "name"])?;
        let by = f.require("advance", |a| {
            let text = a.str()?;
            parse_duration(text)
                .ok_or_else(|| a.error(format!("expected a duration like 130s, 5m, 2h or 500ms, found '{text}'")))
        })?;
        return Ok(Step::Advance { line, by });
    }
    parse_packet_step(f, &*node).map(Step::Packet)
}

/// `130s`, `5m`, `2h`, `500ms`, `1d`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

fn parse_packet_step(f: Field<'_>, node: &NodeConfig) -> Result<PacketStep, LoadError> {
    // (`node` is the node as the earlier steps left it.)
    f.only_keys(&[
        "name",
        "in",
        "proto",
        "src",
        "dst",
        "flags",
        "icmp",
        "inner",
        "expect",
        "out",
        "translated",
        "tracked",
        "logged",
        "rejected",
    ])?;
    let name = f
        .with("name", |n| n.map(|n| n.string()).transpose())?
        .unwrap_or_else(|| format!("step at line {}", f.pos().line));
    let attach = f.require("in", |i| {
        let text = i.str()?;
        if text == "host" {
            Ok(Attach::Host)
        } else if node.uplink_by_name(text).is_some() {
            Ok(Attach::Uplink(text.to_string()))
        } else if node.workload_by_name(text).is_some() {
            Ok(Attach::Workload(text.to_string()))
        } else {
            Err(i.error(format!("'{text}' is not an interface of the node, a workload, or host")))
        }
    })?;
    let protocol = f.require("proto", |p| {
        let text = p.str()?;
        Protocol::parse(text).ok_or_else(|| {
            p.error(format!("unknown protocol '{text}' (expected tcp, udp, icmp, icmpv6, sctp or a number)"))
        })
    })?;
    let with_ports = matches!(protocol, Protocol::TCP | Protocol::UDP | Protocol::SCTP | Protocol::UDPLITE);
    let (src, src_port) = f.require("src", |s| parse_endpoint(s, with_ports))?;
    let (dst, dst_port) = f.require("dst", |d| parse_endpoint(d, with_ports))?;
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(f.error("src and dst are of different IP families"));
    }
    let flags = if protocol == Protocol::TCP {
        f.with("flags", |fl| fl.map(parse_flags).transpose())?.unwrap_or(tcp_flags::SYN)
    } else {
        0
    };
    let (icmp_type, icmp_code, icmp_id) = f.with("icmp", |i| match i {
        None => Ok((0, 0, 0)),
        Some(i) => {
            i.only_keys(&["type", "code", "id"])?;
            let t = i.require("type", |t| t.uint(255).map(|v| v as u8))?;
            let c = i.with("code", |c| c.map(|c| c.uint(255).map(|v| v as u8)).transpose())?.unwrap_or(0);
            let id = i.with("id", |c| c.map(|c| c.uint(65535).map(|v| v as u16)).transpose())?.unwrap_or(0);
            Ok((t, c, id))
        }
    })?;
    if matches!(protocol, Protocol::ICMP | Protocol::ICMPV6) && !f.with("icmp", |i| Ok(i.is_some()))? {
        return Err(f.error("an icmp step needs icmp: {type, code}"));
    }
    let inner = f.with("inner", |i| {
        i.map(|i| {
            i.only_keys(&["proto", "src", "dst"])?;
            let protocol = i.require("proto", |p| {
                let text = p.str()?;
                Protocol::parse(text).ok_or_else(|| p.error(format!("unknown protocol '{text}'")))
            })?;
            let ports = matches!(protocol, Protocol::TCP | Protocol::UDP | Protocol::SCTP | Protocol::UDPLITE);
            let (src, src_port) = i.require("src", |s| parse_endpoint(s, ports))?;
            let (dst, dst_port) = i.require("dst", |d| parse_endpoint(d, ports))?;
            // A quoted ICMP packet is an echo request with identifier 0 (what the levels' frames quote).
            if matches!(protocol, Protocol::ICMP | Protocol::ICMPV6) {
                return Ok(Tuple::echo(src, dst, protocol, true, 0));
            }
            Ok(Tuple { src, dst, protocol, src_port, dst_port })
        })
        .transpose()
    })?;
    let expect = f.require("expect", |e| match e.str()? {
        "allow" => Ok(Verdict::Allow),
        "drop" => Ok(Verdict::Drop),
        other => Err(e.error(format!("expected allow or drop, found '{other}'"))),
    })?;
    let out = f.with("out", |o| o.map(|o| o.string()).transpose())?;
    let translated = f.with("translated", |t| {
        t.map(|t| {
            let (ip, port) = parse_endpoint(t, false)?;
            Ok(SocketAddr::new(ip, port))
        })
        .transpose()
    })?;
    let tracked = f.with("tracked", |t| t.map(|t| t.bool()).transpose())?;
    let logged = f.with("logged", |t| t.map(|t| t.bool()).transpose())?;
    let rejected = f.with("rejected", |t| t.map(|t| t.bool()).transpose())?;
    let header =
        PacketHeader { src, dst, protocol, src_port, dst_port, tcp_flags: flags, icmp_type, icmp_code, icmp_id };
    Ok(PacketStep {
        name,
        line: f.pos().line,
        attach,
        header,
        inner,
        expect,
        out,
        translated,
        tracked,
        logged,
        rejected,
    })
}

/// `ip:port`, `[v6]:port`, a bare address (v4 or v6). `need_port` makes a missing port an error.
fn parse_endpoint(f: Field<'_>, need_port: bool) -> Result<(IpAddr, u16), LoadError> {
    let text = f.str()?;
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Ok((sa.ip(), sa.port()));
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) if !need_port => Ok((ip, 0)),
        Ok(_) => Err(f.error(format!("'{text}' needs a port (ip:port, IPv6 as [fd00::1]:80)"))),
        Err(_) => Err(f.error(format!("'{text}' is not ip:port or an IP address"))),
    }
}

fn parse_flags(f: Field<'_>) -> Result<u8, LoadError> {
    let text = f.str()?;
    let mut flags = 0;
    for c in text.chars() {
        flags |= match c.to_ascii_uppercase() {
            'S' => tcp_flags::SYN,
            'A' => tcp_flags::ACK,
            'F' => tcp_flags::FIN,
            'R' => tcp_flags::RST,
            'P' => tcp_flags::PSH,
            'U' => tcp_flags::URG,
            _ => return Err(f.error(format!("unknown TCP flag '{c}' in '{text}' (expected any of S A F R P U)"))),
        };
    }
    Ok(flags)
}
