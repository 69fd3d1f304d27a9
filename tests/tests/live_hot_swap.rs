//! Live: hot table swaps under load lose no allowed frame and pass no denied frame.
//!
//! A node namespace holds the dataplane (`LiveNode`) over two Calico-style pod veths and an uplink; pod A
//! sends hand-built UDP frames to pod B through an AF_PACKET socket while the control side replaces the whole
//! policy set every few milliseconds, cycling through three different sets that all allow UDP 5001 A→B and
//! all deny UDP 5002 A→B. Source ports change every few frames, so new flows keep needing a verdict from
//! whichever table version is current. Pod B captures on its eth0 with AF_PACKET.
//!
//! Checked: every allowed sequence number arrives exactly once, with good checksums; no denied frame
//! arrives; the dataplane's counters agree; every frame of the trace was decided the way the version of its
//! epoch decides it (one decision per version and flow kind, so a batch never mixes versions).
//!
//! Needs root and network namespaces: `#[ignore]`d, and run by scripts/test with --include-ignored as root.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use calxdp::live::{LiveNode, LiveOptions};
use calxdp_dataplane::decision::{Decision, DropReason};
use calxdp_dataplane::path::Port;
use calxdp_dataplane::pipeline::Counters;
use calxdp_dataplane::sys::netns;
use calxdp_dataplane::sys::packet::PacketSocket;
use calxdp_dataplane::worker::{IoCounters, TraceRecord};
use calxdp_policy::node::NodeConfig;
use calxdp_policy::resource::{load_text, ResourceSet};
use calxdp_policy::verdict::Verdict;
use calxdp_policy::yaml::{parse_documents, Field, Origin};

const ALLOWED_PORT: u16 = 5001;
const DENIED_PORT: u16 = 5002;
/// Allowed frames sent, each with its own sequence number.
const ALLOWED_FRAMES: u32 = 20_000;
/// One denied frame after every this many allowed ones.
const DENIED_EVERY: u32 = 4;
/// A new source port (a new flow) every this many frames of the flow.
const ALLOWED_PER_FLOW: u32 = 50;
const DENIED_PER_FLOW: u32 = 10;
/// Frames per second, both flows together: correctness, not speed.
const RATE_PPS: f64 = 5_000.0;
const SWAP_EVERY: Duration = Duration::from_millis(5);
/// How long the receiver may still take once the sender is done.
const RECEIVE_GRACE: Duration = Duration::from_secs(15);
/// The last this-many allowed frames (with their denied ones) go out unpaced after a 500 ms pause, so the
/// idle worker wakes to full batches: copy mode sends at most 32 TX descriptors per wakeup, and this proves
/// the transmit path keeps waking the kernel until the tail of a burst has left.
const FINAL_BURST: u32 = 300;
/// Whether a frame's trace record must name the epoch of the tables that decided it: the worker rewrites
/// and reports a batch with the very tables the pipeline decided it with.
const TRACE_EPOCH_IS_THE_DECIDING_EPOCH: bool = true;

/// The source port of allowed frame `seq`.
fn allowed_sport(seq: u32) -> u16 {
    20_000 + (seq / ALLOWED_PER_FLOW) as u16
}

/// B answers the first frame of every allowed flow with an even source port, so those flows turn
/// ESTABLISHED (a UDP flow stays NEW, and is classified frame by frame, until a reply is seen) and the
/// conntrack fast path crosses the swaps too.
fn gets_reply(sport: u16) -> bool {
    sport % 2 == 0
}

const POD_A_IP: [u8; 4] = [10, 65, 0, 1];
const POD_B_IP: [u8; 4] = [10, 65, 0, 2];
const POD_A_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0x41, 0x00, 0x01];
const POD_B_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0x41, 0x00, 0x02];
/// What Calico gives the host side of every pod veth.
const CALICO_MAC: [u8; 6] = [0xee; 6];
const MAGIC: &[u8; 4] = b"CXHS";
const ETH_P_IP: u16 = 0x0800;

fn mac_text(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn ip_text(a: &[u8; 4]) -> String {
    Ipv4Addr::from(*a).to_string()
}

/// Runs a command; the error names it and carries its stderr.
fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("cannot run `{cmd}`: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("`{cmd} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn ip(args: &[&str]) -> Result<String, String> {
    run("ip", args)
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// Why this machine cannot run the test, if it cannot.
fn skip_reason(prefix: &str) -> Option<String> {
    if !calxdp::live::is_root() {
        return Some("not root: the live test needs CAP_NET_ADMIN, CAP_BPF and network namespaces".into());
    }
    let probe = format!("{prefix}-probe");
    if let Err(e) = ip(&["netns", "add", &probe]) {
        return Some(format!("network namespaces unavailable: {e}"));
    }
    let _ = ip(&["netns", "del", &probe]);
    None
}

/// Namespaces left by earlier runs that died without cleaning up (their process is gone).
fn remove_stale_namespaces() {
    let Ok(list) = ip(&["netns", "list"]) else { return };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name.strip_prefix("cxh-").and_then(|r| r.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// The namespaces and links of the test, removed on drop (also when the test panics).
struct Topology {
    node: String,
    a: String,
    b: String,
    created: Vec<String>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veths in it, and with them their peers.
        for ns in self.created.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

impl Topology {
    fn create(prefix: &str) -> Result<Topology, String> {
        let mut t = Topology {
            node: format!("{prefix}-node"),
            a: format!("{prefix}-a"),
            b: format!("{prefix}-b"),
            created: Vec::new(),
        };
        for ns in [t.node.clone(), t.a.clone(), t.b.clone()] {
            ip(&["netns", "add", &ns])?;
            t.created.push(ns.clone());
            // Before any link exists, so no interface ever gets an IPv6 address or sends router solicitations.
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &ns,
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ],
            )?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let ethtool = have("ethtool");
        for (pod_ns, host_if, ip4, mac) in [(&t.a, "cxhA", POD_A_IP, POD_A_MAC), (&t.b, "cxhB", POD_B_IP, POD_B_MAC)] {
            ip(&[
                "-n",
                &t.node,
                "link",
                "add",
                host_if,
                "address",
                &mac_text(&CALICO_MAC),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "address",
                &mac_text(&mac),
                "netns",
                pod_ns,
            ])?;
            ip(&["-n", &t.node, "link", "set", host_if, "up"])?;
            ip(&["-n", pod_ns, "addr", "add", &format!("{}/32", ip_text(&ip4)), "dev", "eth0"])?;
            ip(&["-n", pod_ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", pod_ns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"])?;
            ip(&["-n", pod_ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"])?;
            if ethtool {
                // Our frames carry full checksums anyway; this keeps any kernel-sent frame honest too.
                run("ip", &["netns", "exec", pod_ns, "ethtool", "-K", "eth0", "tx", "off"])?;
            }
        }
        // The uplink the node needs; its peer stays in the node namespace, unused.
        ip(&["-n", &t.node, "link", "add", "cxhU", "type", "veth", "peer", "name", "cxhUp"])?;
        ip(&["-n", &t.node, "link", "set", "cxhU", "up"])?;
        ip(&["-n", &t.node, "link", "set", "cxhUp", "up"])?;
        Ok(t)
    }
}

/// Moves the calling thread into a named network namespace.
fn enter_netns(name: &str) -> Result<(), String> {
    netns::enter(name).map_err(|e| format!("setns {name}: {e}"))
}

fn node_config() -> NodeConfig {
    let text = format!(
        "name: cxh-node
interfaces:
  - {{name: cxhU, ips: [10.88.0.10/24], gateway: 10.88.0.1}}
namespaces:
  - {{name: demo, labels: {{team: demo}}}}
workloads:
  - {{name: pod-a, namespace: demo, interface: cxhA, ips: [{a}], labels: {{app: a}}, mac: \"{amac}\"}}
  - {{name: pod-b, namespace: demo, interface: cxhB, ips: [{b}], labels: {{app: b}}, mac: \"{bmac}\"}}
config:
  defaultEndpointToHostAction: Drop
",
        a = ip_text(&POD_A_IP),
        b = ip_text(&POD_B_IP),
        amac = mac_text(&POD_A_MAC),
        bmac = mac_text(&POD_B_MAC),
    );
    let origin = Origin::file("live_hot_swap node");
    let docs = parse_documents(&text, &origin).expect("the node file parses");
    NodeConfig::parse(Field::root(&docs[0], &origin)).expect("the node file is valid")
}

fn resource_set(name: &str, text: &str) -> ResourceSet {
    let docs = load_text(text, &Origin::file(name)).unwrap_or_else(|e| panic!("policy set {name}: {e}"));
    let mut set = ResourceSet::new();
    set.apply_all(docs.into_iter().map(|d| d.resource));
    set
}

/// `n` rules that never match the test's traffic (TCP from networks no pod is in).
fn unrelated_rules(n: u32, indent: &str) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{indent}- {{action: Allow, protocol: TCP, source: {{nets: [172.16.{i}.0/24]}}, destination: {{ports: [{}]}}}}\n",
                7000 + i
            )
        })
        .collect()
}

/// Three policy sets that differ in kinds, names, orders, rule positions and size, and all allow UDP 5001
/// A→B and deny UDP 5002 A→B.
fn policy_versions() -> Vec<(&'static str, ResourceSet)> {
    let a = ip_text(&POD_A_IP);
    // v1: one Calico NetworkPolicy on B, explicit deny first.
    let v1 = format!(
        "apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {{name: b-ingress, namespace: demo}}
spec:
  order: 100
  selector: app == 'b'
  types: [Ingress]
  ingress:
    - {{action: Deny, protocol: UDP, destination: {{ports: [{DENIED_PORT}]}}}}
    - {{action: Allow, protocol: UDP, source: {{selector: app == 'a'}}, destination: {{ports: [{ALLOWED_PORT}]}}}}
"
    );
    // v2: a 51-rule GlobalNetworkPolicy with the deny in the middle, the allow in a later policy by
    // source network, and an egress policy on A.
    let v2 = format!(
        "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: bulk-ingress}}
spec:
  order: 10
  selector: app == 'b'
  types: [Ingress]
  ingress:
{first}    - {{action: Deny, protocol: UDP, destination: {{ports: [{DENIED_PORT}]}}}}
{second}---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {{name: allow-5001-from-a, namespace: demo}}
spec:
  order: 300
  selector: app == 'b'
  types: [Ingress]
  ingress:
    - {{action: Allow, protocol: UDP, source: {{nets: [{a}/32]}}, destination: {{ports: [{ALLOWED_PORT}]}}}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: a-egress}}
spec:
  order: 20
  selector: app == 'a'
  types: [Egress]
  egress:
    - {{action: Deny, protocol: TCP, destination: {{ports: [25]}}}}
    - {{action: Allow}}
",
        first = unrelated_rules(25, "    "),
        second = unrelated_rules(25, "    "),
    );
    // v3: a Kubernetes NetworkPolicy (5002 falls to the end of the tier) and an unrelated 50-rule policy.
    let v3 = format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: b-from-a, namespace: demo}}
spec:
  podSelector: {{matchLabels: {{app: b}}}}
  policyTypes: [Ingress]
  ingress:
    - from: [{{podSelector: {{matchLabels: {{app: a}}}}}}]
      ports: [{{protocol: UDP, port: {ALLOWED_PORT}}}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: unrelated-50}}
spec:
  order: 1
  selector: app == 'nobody'
  ingress:
{rules}",
        rules = unrelated_rules(50, "    "),
    );
    vec![("v1", resource_set("v1", &v1)), ("v2", resource_set("v2", &v2)), ("v3", resource_set("v3", &v3))]
}

// ---- frames ----

fn checksum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn checksum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn udp_pseudo_sum(src: &[u8], dst: &[u8], udp_len: u16) -> u32 {
    let sum = checksum_add(0, src);
    let sum = checksum_add(sum, dst);
    sum + 17 + u32::from(udp_len)
}

/// One direction of the test traffic.
#[derive(Clone, Copy)]
struct Way {
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
}

const A_TO_B: Way = Way { src_mac: POD_A_MAC, src: POD_A_IP, dst: POD_B_IP };
const B_TO_A: Way = Way { src_mac: POD_B_MAC, src: POD_B_IP, dst: POD_A_IP };

/// An Ethernet/IPv4/UDP frame with full checksums, sent to the Calico gateway MAC; the payload is the magic
/// and `seq`.
fn udp_frame(way: Way, sport: u16, dport: u16, seq: u32) -> Vec<u8> {
    let mut payload = Vec::with_capacity(18);
    payload.extend_from_slice(MAGIC);
    payload.extend_from_slice(&seq.to_be_bytes());
    payload.resize(18, 0); // a 60-byte frame, the Ethernet minimum without FCS
    let udp_len = 8 + payload.len() as u16;
    let total = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + total as usize);
    f.extend_from_slice(&CALICO_MAC);
    f.extend_from_slice(&way.src_mac);
    f.extend_from_slice(&ETH_P_IP.to_be_bytes());
    let ip_start = f.len();
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&(seq as u16).to_be_bytes());
    f.extend_from_slice(&[0x40, 0, 64, 17, 0, 0]); // DF, TTL 64, UDP, checksum 0 for now
    f.extend_from_slice(&way.src);
    f.extend_from_slice(&way.dst);
    let ip_sum = checksum_fold(checksum_add(0, &f[ip_start..ip_start + 20]));
    f[ip_start + 10..ip_start + 12].copy_from_slice(&ip_sum.to_be_bytes());
    let udp_start = f.len();
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&payload);
    let mut udp_sum = checksum_fold(checksum_add(udp_pseudo_sum(&way.src, &way.dst, udp_len), &f[udp_start..]));
    if udp_sum == 0 {
        udp_sum = 0xffff;
    }
    f[udp_start + 6..udp_start + 8].copy_from_slice(&udp_sum.to_be_bytes());
    f
}

/// A received A→B test frame.
struct Seen {
    sport: u16,
    dport: u16,
    seq: u32,
    checksums_ok: bool,
    ttl: u8,
    dst_mac: [u8; 6],
}

fn parse_test_frame(f: &[u8]) -> Option<Seen> {
    if f.len() < 14 + 20 + 8 + 8 || u16::from_be_bytes([f[12], f[13]]) != ETH_P_IP {
        return None;
    }
    let ip4 = &f[14..];
    let ihl = usize::from(ip4[0] & 0x0f) * 4;
    if ip4[0] >> 4 != 4 || ihl < 20 || ip4[9] != 17 || ip4[12..16] != POD_A_IP || ip4[16..20] != POD_B_IP {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip4[2], ip4[3]]));
    if total > ip4.len() || total < ihl + 8 {
        return None;
    }
    let udp = &ip4[ihl..total];
    let payload = &udp[8..];
    if payload.len() < 8 || &payload[..4] != MAGIC {
        return None;
    }
    let ip_ok = checksum_fold(checksum_add(0, &ip4[..ihl])) == 0;
    let udp_field = u16::from_be_bytes([udp[6], udp[7]]);
    let udp_ok = udp_field != 0
        && checksum_fold(checksum_add(udp_pseudo_sum(&ip4[12..16], &ip4[16..20], udp.len() as u16), udp)) == 0;
    let mut dst_mac = [0; 6];
    dst_mac.copy_from_slice(&f[..6]);
    Some(Seen {
        sport: u16::from_be_bytes([udp[0], udp[1]]),
        dport: u16::from_be_bytes([udp[2], udp[3]]),
        seq: u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]),
        checksums_ok: ip_ok && udp_ok,
        ttl: ip4[8],
        dst_mac,
    })
}

// ---- AF_PACKET (the project's socket, `calxdp_dataplane::sys::packet`) ----

/// Sends one frame, retrying while the device queue pushes back; returns the retries it took.
fn send_retrying(sock: &PacketSocket, frame: &[u8]) -> Result<u64, String> {
    let mut retries = 0;
    loop {
        match sock.send(frame) {
            Ok(()) => return Ok(retries),
            Err(e)
                if retries < 10_000 && matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR)) =>
            {
                retries += 1;
                thread::sleep(Duration::from_micros(100));
            }
            Err(e) => return Err(format!("send(AF_PACKET) of {} bytes: {e}", frame.len())),
        }
    }
}

// ---- the roles ----

#[derive(Debug, Default)]
struct Sent {
    /// Where B's replies land in A (bound so A's stack does not answer them with ICMP port unreachable).
    reply_sinks: Vec<std::net::UdpSocket>,
    allowed: u64,
    denied: u64,
    allowed_flows: u64,
    denied_flows: u64,
    retries: u64,
    took: Duration,
}

/// Pod A: paced allowed and denied frames, new source ports every few frames.
fn send_traffic(ns: &str) -> Result<Sent, String> {
    enter_netns(ns)?;
    let sock = PacketSocket::open_with("eth0", 0, true).map_err(|e| format!("AF_PACKET on eth0: {e}"))?;
    let mut sent = Sent::default();
    let sports: BTreeSet<u16> = (0..ALLOWED_FRAMES).map(allowed_sport).filter(|p| gets_reply(*p)).collect();
    for p in sports {
        let s = std::net::UdpSocket::bind(("0.0.0.0", p)).map_err(|e| format!("bind UDP {p} in A: {e}"))?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        sent.reply_sinks.push(s);
    }
    let start = Instant::now();
    let (mut a_seq, mut d_seq, mut i) = (0u32, 0u32, 0u64);
    let (mut a_ports, mut d_ports) = (BTreeSet::new(), BTreeSet::new());
    let mut paused = Duration::ZERO;
    while a_seq < ALLOWED_FRAMES {
        let burst = FINAL_BURST != 0 && a_seq >= ALLOWED_FRAMES.saturating_sub(FINAL_BURST);
        if burst && paused.is_zero() {
            paused = Duration::from_millis(500);
            thread::sleep(paused);
        }
        let due = (start.elapsed().saturating_sub(paused).as_secs_f64() * RATE_PPS) as u64;
        if i >= due && !burst {
            thread::sleep(Duration::from_micros(200));
            continue;
        }
        let frame = if i % u64::from(DENIED_EVERY + 1) == u64::from(DENIED_EVERY) {
            let sport = 40_000 + (d_seq / DENIED_PER_FLOW) as u16;
            d_ports.insert(sport);
            d_seq += 1;
            sent.denied += 1;
            udp_frame(A_TO_B, sport, DENIED_PORT, d_seq - 1)
        } else {
            let sport = allowed_sport(a_seq);
            a_ports.insert(sport);
            a_seq += 1;
            sent.allowed += 1;
            udp_frame(A_TO_B, sport, ALLOWED_PORT, a_seq - 1)
        };
        sent.retries += send_retrying(&sock, &frame)?;
        i += 1;
    }
    sent.took = start.elapsed();
    sent.allowed_flows = a_ports.len() as u64;
    sent.denied_flows = d_ports.len() as u64;
    Ok(sent)
}

#[derive(Debug, Default)]
struct Received {
    /// Arrivals per allowed sequence number.
    allowed: Vec<u32>,
    denied: u64,
    replies_sent: u64,
    bad_checksums: u64,
    ttls: BTreeSet<u8>,
    dst_macs: BTreeSet<[u8; 6]>,
    /// The capture socket's own (delivered, dropped).
    socket_stats: (u32, u32),
}

/// Pod B: captures until `stop`, counting the test frames; `unique` tracks distinct allowed arrivals.
fn receive_traffic(
    ns: &str,
    ready: std::sync::mpsc::SyncSender<Result<(), String>>,
    stop: Arc<AtomicBool>,
    unique: Arc<AtomicU64>,
) -> Received {
    let setup = || -> Result<(PacketSocket, PacketSocket, Vec<std::net::UdpSocket>), String> {
        enter_netns(ns)?;
        let sock = PacketSocket::open_with("eth0", ETH_P_IP, true).map_err(|e| format!("AF_PACKET on eth0: {e}"))?;
        let replier = PacketSocket::open_with("eth0", 0, true).map_err(|e| format!("AF_PACKET on eth0: {e}"))?;
        sock.set_receive_buffer(32 << 20).map_err(|e| format!("SO_RCVBUFFORCE: {e}"))?;
        sock.set_receive_timeout(Duration::from_millis(50)).map_err(|e| format!("SO_RCVTIMEO: {e}"))?;
        // Bound (never read) so B's stack does not answer our frames with ICMP port unreachable.
        let sinks = [ALLOWED_PORT, DENIED_PORT]
            .iter()
            .map(|p| std::net::UdpSocket::bind(("0.0.0.0", *p)).map_err(|e| format!("bind UDP {p}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((sock, replier, sinks))
    };
    let (sock, replier, _sinks) = match setup() {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return Received::default();
        }
    };
    let mut r = Received { allowed: vec![0; ALLOWED_FRAMES as usize], ..Received::default() };
    let mut buf = vec![0u8; 4096];
    let mut flows = BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        let Some(n) = sock.recv(&mut buf) else { continue };
        let Some(seen) = parse_test_frame(&buf[..n]) else { continue };
        if !seen.checksums_ok {
            r.bad_checksums += 1;
        }
        r.ttls.insert(seen.ttl);
        r.dst_macs.insert(seen.dst_mac);
        match seen.dport {
            ALLOWED_PORT => {
                if flows.insert(seen.sport) && gets_reply(seen.sport) {
                    let reply = udp_frame(B_TO_A, ALLOWED_PORT, seen.sport, seen.seq);
                    if replier.send(&reply).is_ok() {
                        r.replies_sent += 1;
                    }
                }
                if let Some(c) = r.allowed.get_mut(seen.seq as usize) {
                    *c += 1;
                    if *c == 1 {
                        unique.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            DENIED_PORT => r.denied += 1,
            _ => {}
        }
    }
    r.socket_stats = sock.statistics().unwrap_or((0, 0));
    r
}

struct NodeRun {
    swaps: u64,
    swap_epochs: (u64, u64),
    slowest_swap: Duration,
    counters: Counters,
    io: IoCounters,
    attach_modes: Vec<(String, &'static str)>,
}

/// The node: starts the dataplane in the node namespace, swaps tables until `traffic_done`, then waits for
/// `finish` and stops it.
fn run_node(
    ns: &str,
    versions: Vec<(&'static str, ResourceSet)>,
    trace: std::sync::mpsc::SyncSender<TraceRecord>,
    ready: std::sync::mpsc::SyncSender<Result<(), String>>,
    traffic_done: Arc<AtomicBool>,
    finish: Arc<AtomicBool>,
) -> Result<NodeRun, String> {
    let started = (|| {
        enter_netns(ns)?;
        let opts = LiveOptions { tap: "cxh-host".into(), host_addresses: false, ..LiveOptions::default() };
        LiveNode::start(node_config(), versions[0].1.clone(), &opts, Some(trace)).map_err(|e| e.to_string())
    })();
    let mut live = match started {
        Ok(l) => {
            let _ = ready.send(Ok(()));
            l
        }
        Err(e) => {
            let _ = ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    let attach_modes = live.attach_modes.clone();
    let (mut swaps, mut first_epoch, mut last_epoch, mut slowest) = (0u64, 0u64, 0u64, Duration::ZERO);
    while !traffic_done.load(Ordering::Relaxed) {
        thread::sleep(SWAP_EVERY);
        let (_, next) = &versions[(swaps as usize + 1) % versions.len()];
        let published = live.publisher.replace(next.clone()).map_err(|r| format!("swap {swaps} rejected: {r}"))?;
        if swaps == 0 {
            first_epoch = published.epoch;
        }
        last_epoch = published.epoch;
        slowest = slowest.max(published.took);
        swaps += 1;
    }
    while !finish.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(10));
    }
    let (counters, io) = live.stop();
    Ok(NodeRun { swaps, swap_epochs: (first_epoch, last_epoch), slowest_swap: slowest, counters, io, attach_modes })
}

/// What the trace says about the test flows.
#[derive(Debug, Default)]
struct TraceSummary {
    records: u64,
    allowed_port_dropped: u64,
    denied_port_allowed: u64,
    /// By (policy version, destination port): the decisions of frames that needed a policy verdict.
    decisions: BTreeMap<(usize, u16), BTreeMap<String, u64>>,
    /// Epochs under which a new flow (or a denied frame) was decided.
    deciding_epochs: BTreeSet<u64>,
    established: u64,
    /// B's replies: seen, allowed.
    replies: (u64, u64),
}

fn summarize_trace(rx: Receiver<TraceRecord>, versions: usize) -> TraceSummary {
    let mut s = TraceSummary::default();
    let (a, b) = (IpAddr::from(POD_A_IP), IpAddr::from(POD_B_IP));
    for r in rx {
        if r.port == Port::Workload(1) && r.header.src == b && r.header.src_port == ALLOWED_PORT {
            s.replies.0 += 1;
            s.replies.1 += u64::from(r.verdict == Verdict::Allow);
            continue;
        }
        if r.port != Port::Workload(0) || r.header.src != a || r.header.dst != b {
            continue;
        }
        s.records += 1;
        let dport = r.header.dst_port;
        match (dport, r.verdict) {
            (ALLOWED_PORT, Verdict::Drop) => s.allowed_port_dropped += 1,
            (DENIED_PORT, Verdict::Allow) => s.denied_port_allowed += 1,
            _ => {}
        }
        if matches!(r.decision, Decision::Established) {
            s.established += 1;
            continue;
        }
        // Epoch 1 is the first version; each swap publishes the next version in turn.
        let version = ((r.epoch - 1) % versions as u64) as usize;
        s.deciding_epochs.insert(r.epoch);
        *s.decisions
            .entry((version, dport))
            .or_default()
            .entry(format!("{:?} {:?}", r.verdict, r.decision))
            .or_default() += 1;
    }
    s
}

fn interface_stats(ns: &str, dev: &str) -> String {
    ip(&["-n", ns, "-s", "link", "show", dev]).unwrap_or_else(|e| e)
}

#[test]
#[ignore = "needs root (network namespaces, XDP, AF_XDP): scripts/test runs it with --include-ignored as root"]
fn hot_table_swaps_under_load_lose_no_allowed_frame_and_pass_no_denied_frame() {
    let prefix = format!("cxh-{}", std::process::id());
    remove_stale_namespaces();
    if let Some(reason) = skip_reason(&prefix) {
        panic!("live_hot_swap: cannot run: {reason}");
    }
    let topo = Topology::create(&prefix).expect("the test topology");
    let versions = policy_versions();
    let version_names: Vec<&str> = versions.iter().map(|(n, _)| *n).collect();
    let nversions = versions.len();
    let began = Instant::now();

    let traffic_done = Arc::new(AtomicBool::new(false));
    let finish = Arc::new(AtomicBool::new(false));
    let rx_stop = Arc::new(AtomicBool::new(false));
    let unique = Arc::new(AtomicU64::new(0));

    let (trace_tx, trace_rx) = sync_channel::<TraceRecord>(1 << 16);
    let tracer = thread::spawn(move || summarize_trace(trace_rx, nversions));

    let (ready_tx, ready_rx) = sync_channel(1);
    let node = {
        let (ns, done, fin) = (topo.node.clone(), traffic_done.clone(), finish.clone());
        thread::spawn(move || run_node(&ns, versions, trace_tx, ready_tx, done, fin))
    };
    if let Err(e) = ready_rx.recv().expect("the node thread reports") {
        panic!("the live node did not start: {e}");
    }

    let (ready_tx, ready_rx) = sync_channel(1);
    let receiver = {
        let (ns, stop, unique) = (topo.b.clone(), rx_stop.clone(), unique.clone());
        thread::spawn(move || receive_traffic(&ns, ready_tx, stop, unique))
    };
    if let Err(e) = ready_rx.recv().expect("the receiver reports") {
        panic!("the receiver in pod B did not start: {e}");
    }

    let sender = {
        let ns = topo.a.clone();
        thread::spawn(move || send_traffic(&ns))
    };
    let sent = sender.join().expect("the sender does not panic").expect("pod A sends");
    traffic_done.store(true, Ordering::Relaxed);

    let deadline = Instant::now() + RECEIVE_GRACE;
    while unique.load(Ordering::Relaxed) < u64::from(ALLOWED_FRAMES) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let waited = RECEIVE_GRACE - deadline.saturating_duration_since(Instant::now());
    // Late duplicates or denied frames would show up now.
    thread::sleep(Duration::from_millis(500));
    rx_stop.store(true, Ordering::Relaxed);
    let received = receiver.join().expect("the receiver does not panic");
    let mut replies_at_a = 0u64;
    let mut buf = [0u8; 256];
    for s in &sent.reply_sinks {
        while s.recv(&mut buf).is_ok() {
            replies_at_a += 1;
        }
    }

    let stats_a = interface_stats(&topo.a, "eth0");
    let stats_na = interface_stats(&topo.node, "cxhA");
    let stats_nb = interface_stats(&topo.node, "cxhB");
    let stats_b = interface_stats(&topo.b, "eth0");
    finish.store(true, Ordering::Relaxed);
    let run = node.join().expect("the node thread does not panic").expect("the node runs");
    let trace = tracer.join().expect("the trace reader does not panic");
    let runtime = began.elapsed();
    drop(topo);

    let c = &run.counters;
    let io = &run.io;
    let missing: Vec<usize> = received.allowed.iter().enumerate().filter(|(_, n)| **n == 0).map(|(i, _)| i).collect();
    let duplicated: Vec<usize> = received.allowed.iter().enumerate().filter(|(_, n)| **n > 1).map(|(i, _)| i).collect();
    let arrived: u64 = received.allowed.iter().map(|n| u64::from(*n)).sum();
    let policy_drops = c.dropped(DropReason::PolicyDeny) + c.dropped(DropReason::EndOfTier);
    let all_drops: u64 = c.drops.iter().sum();
    // Port ids: the uplink 0, the host 1, then the pods in node order (pod-a 2, pod-b 3).
    let b_tx = io.tx.get(3).copied().unwrap_or(0);

    eprintln!("live_hot_swap: attach modes {:?}", run.attach_modes);
    eprintln!(
        "live_hot_swap: sent {} allowed ({} flows) + {} denied ({} flows) in {:.2?} ({:.0} fps), {} send retries",
        sent.allowed,
        sent.allowed_flows,
        sent.denied,
        sent.denied_flows,
        sent.took,
        (sent.allowed + sent.denied) as f64 / sent.took.as_secs_f64(),
        sent.retries
    );
    eprintln!(
        "live_hot_swap: B received {arrived} allowed ({} distinct, {} missing, {} duplicated), {} denied, {} bad \
         checksums, ttls {:?}, dst macs {:?}; capture socket delivered/dropped {:?}; waited {waited:.2?} after sending",
        received.allowed.len() - missing.len(),
        missing.len(),
        duplicated.len(),
        received.denied,
        received.bad_checksums,
        received.ttls,
        received.dst_macs.iter().map(mac_text).collect::<Vec<_>>(),
        received.socket_stats
    );
    eprintln!(
        "live_hot_swap: {} swaps (epochs {}..={}, versions {:?}), slowest compile+publish {:.2?}",
        run.swaps, run.swap_epochs.0, run.swap_epochs.1, version_names, run.slowest_swap
    );
    eprintln!(
        "live_hot_swap: dataplane packets {} allowed {} drops {} (policy {}) tx to B {}; io {:?}",
        c.packets, c.allowed, all_drops, policy_drops, b_tx, io
    );
    eprintln!(
        "live_hot_swap: trace {} test frames, {} established, new-flow/denied decisions under {} distinct epochs",
        trace.records,
        trace.established,
        trace.deciding_epochs.len()
    );
    for ((v, port), d) in &trace.decisions {
        eprintln!("live_hot_swap:   {} port {port}: {d:?}", version_names[*v]);
    }
    eprintln!(
        "live_hot_swap: replies B->A: {} sent, {} traced ({} allowed), {} arrived at A",
        received.replies_sent, trace.replies.0, trace.replies.1, replies_at_a
    );
    // Each version decides each kind of frame one way. A frame whose trace shows another decision than the
    // one its epoch's version makes was decided by one version and reported with another.
    let usual = |v: usize, port: u16| {
        trace.decisions.get(&(v, port)).and_then(|d| d.iter().max_by_key(|(_, n)| **n)).map(|(k, _)| k.clone())
    };
    let (mut off_epoch, mut off_by_one) = (0u64, 0u64);
    for ((v, port), d) in &trace.decisions {
        for (decision, n) in d {
            if Some(decision) != usual(*v, *port).as_ref() {
                off_epoch += n;
                // Decided by the version before the one the trace names?
                if Some(decision) == usual((*v + nversions - 1) % nversions, *port).as_ref() {
                    off_by_one += n;
                }
            }
        }
    }
    if off_epoch > 0 {
        eprintln!(
            "live_hot_swap: {off_epoch} traced frames carry another epoch than the one that decided them \
             ({off_by_one} of them were decided by the previous version): the worker loads the tables twice per \
             batch (dataplane/src/worker.rs, Worker::handle: `pipeline.process` loads once, then \
             `self.pipeline.tables()` loads again for the rewrite, the next-hop MAC and the trace)"
        );
    }
    eprintln!("live_hot_swap: runtime {runtime:.2?}");
    if !missing.is_empty() || !duplicated.is_empty() {
        eprintln!(
            "live_hot_swap: first missing {:?}, first duplicated {:?}",
            &missing[..missing.len().min(20)],
            &duplicated[..duplicated.len().min(20)]
        );
        eprintln!("pod A eth0:\n{stats_a}\nnode cxhA:\n{stats_na}\nnode cxhB:\n{stats_nb}\npod B eth0:\n{stats_b}");
    }

    assert!(run.swaps > 100, "only {} swaps happened while traffic ran", run.swaps);
    assert_eq!(
        received.socket_stats.1, 0,
        "the capture socket in B dropped frames: the count below is not trustworthy"
    );
    assert!(
        missing.is_empty(),
        "{} allowed frames never arrived at B, first {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert!(duplicated.is_empty(), "{} allowed frames arrived more than once", duplicated.len());
    assert_eq!(received.denied, 0, "denied frames (UDP {DENIED_PORT}) arrived at B");
    assert_eq!(received.bad_checksums, 0, "frames arrived at B with bad checksums");
    assert_eq!(received.dst_macs.iter().collect::<Vec<_>>(), vec![&POD_B_MAC], "frames to B carry B's MAC");
    assert!(c.allowed >= sent.allowed, "the dataplane counted {} allowed, {} were sent", c.allowed, sent.allowed);
    assert!(b_tx >= sent.allowed, "the dataplane sent {} frames to B, {} allowed were sent", b_tx, sent.allowed);
    assert!(
        policy_drops >= sent.denied,
        "the dataplane counted {policy_drops} policy drops, {} denied were sent",
        sent.denied
    );
    assert_eq!(io.tx_full, 0, "allowed frames lost to a full transmit queue");
    assert_eq!(io.oversize, 0);
    assert_eq!(trace.allowed_port_dropped, 0, "the trace shows allowed-port frames dropped");
    assert_eq!(trace.denied_port_allowed, 0, "the trace shows denied-port frames allowed");
    if TRACE_EPOCH_IS_THE_DECIDING_EPOCH {
        assert_eq!(off_epoch, 0, "traced frames carry another epoch than the one that decided them");
    }
    assert!(received.replies_sent > 0 && trace.replies.1 == trace.replies.0, "B's replies are allowed back");
    assert_eq!(replies_at_a, received.replies_sent, "every reply of B arrived at A");
    assert!(trace.established > 0, "flows that saw a reply run on the conntrack fast path across the swaps");
    if io.trace_lost == 0 {
        assert_eq!(trace.records, sent.allowed + sent.denied, "the trace saw every test frame");
        assert!(
            trace.deciding_epochs.len() > 50,
            "new flows were decided under only {} epochs",
            trace.deciding_epochs.len()
        );
    }
}
