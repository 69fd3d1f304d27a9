//! `calxdp demo`: a node in network namespaces, the sample policies of `examples/demo`, real traffic, and a
//! table of what happened to each flow and which policy decided it. Everything is built from scratch and
//! torn down at the end.
//!
//! ```text
//!  cxdemo-ext (10.0.0.1) ── eth0 ┐                      ┌ caliweb ── cxdemo-web   (shop/web, 192.168.1.10)
//!                                │  cxdemo-node: calxdp ├ califront ── cxdemo-front (shop/frontend, .11)
//!        host stack (10.0.0.10) ─┘  (tap calxdp-host)   └ calidns ── cxdemo-dns   (kube-system/coredns, .53)
//! ```

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use calxdp_dataplane::sys::netns;
use calxdp_dataplane::worker::TraceRecord;
use calxdp_policy::node::NodeConfig;
use calxdp_policy::resource::Protocol;
use calxdp_policy::resource::{load_text, ResourceSet};
use calxdp_policy::verdict::Verdict;
use calxdp_policy::yaml::{parse_documents, Field, Origin};

use crate::admin::server::{AdminServer, ServeOptions};
use crate::admin::NodeView;
use crate::live::{ip, LiveNode, LiveOptions, Namespaces};

const NODE_YAML: &str = include_str!("../../examples/demo/node.yaml");
const POLICIES_YAML: &str = include_str!("../../examples/demo/policies.yaml");

/// The hosts of the demo: namespace, interface on the node, address, MAC.
const PODS: [(&str, &str, &str, &str); 3] = [
    ("cxdemo-web", "caliweb", "192.168.1.10", "0a:58:c0:a8:01:0a"),
    ("cxdemo-front", "califront", "192.168.1.11", "0a:58:c0:a8:01:0b"),
    ("cxdemo-dns", "calidns", "192.168.1.53", "0a:58:c0:a8:01:35"),
];
/// The pods with an IPv6 address too, and Calico's link-local gateway for pods (the veth's EUI-64 address
/// for ee:ee:ee:ee:ee:ee).
const DUAL_STACK: [(&str, &str); 2] = [("cxdemo-web", "fd00:1::10"), ("cxdemo-front", "fd00:1::11")];
const IPV6_GATEWAY: &str = "fe80::ecee:eeff:feee:eeee";
const NODE: &str = "cxdemo-node";
const EXT: &str = "cxdemo-ext";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Tcp,
    Udp,
    /// UDP to a port nothing listens on: "works" when the client is told at once (ICMP port unreachable,
    /// translated back through the service's NAT), rather than waiting for a reply that never comes.
    UdpRefused,
    Ping,
    /// A 3000-byte UDP datagram and its echo: on 1500-byte links both go as fragments, which the dataplane
    /// reassembles before conntrack and sends on as fragments, as Linux's defrag does.
    UdpLarge,
}

/// One thing the demo tries, and what Linux Calico would do with it.
#[derive(Debug)]
struct Flow {
    what: &'static str,
    from: &'static str,
    src: &'static str,
    kind: Kind,
    dst: &'static str,
    port: u16,
    expect_ok: bool,
}

const FLOWS: [Flow; 15] = [
    flow(
        "frontend -> outside:80, pod egress; 10.0.0.1 resolved by ARP",
        "cxdemo-front",
        "192.168.1.11",
        Kind::Tcp,
        "10.0.0.1",
        80,
        true,
    ),
    flow(
        "frontend -> web:8080, allowed by the Kubernetes NetworkPolicy",
        "cxdemo-front",
        "192.168.1.11",
        Kind::Tcp,
        "192.168.1.10",
        8080,
        true,
    ),
    flow(
        "frontend -> web [fd00:1::10]:8080 over IPv6 (proxy NDP)",
        "cxdemo-front",
        "fd00:1::11",
        Kind::Tcp,
        "fd00:1::10",
        8080,
        true,
    ),
    flow(
        "frontend -> service web 10.96.0.20:80, DNAT to web:8080",
        "cxdemo-front",
        "192.168.1.11",
        Kind::Tcp,
        "10.96.0.20",
        80,
        true,
    ),
    flow(
        "coredns -> web:8080, not a peer the NetworkPolicy names",
        "cxdemo-dns",
        "192.168.1.53",
        Kind::Tcp,
        "192.168.1.10",
        8080,
        false,
    ),
    flow(
        "frontend -> coredns:53/udp, egress by the platform tier DNS rule",
        "cxdemo-front",
        "192.168.1.11",
        Kind::Udp,
        "192.168.1.53",
        53,
        true,
    ),
    flow(
        "frontend -> coredns:53/udp, 3000 bytes each way, as fragments",
        "cxdemo-front",
        "192.168.1.11",
        Kind::UdpLarge,
        "192.168.1.53",
        53,
        true,
    ),
    flow(
        "frontend -> svc 10.96.0.53:53/udp, backend port closed: refused",
        "cxdemo-front",
        "192.168.1.11",
        Kind::UdpRefused,
        "10.96.0.53",
        53,
        true,
    ),
    flow(
        "outside -> web:8080, forwarded; applyOnForward policy allows",
        EXT,
        "10.0.0.1",
        Kind::Tcp,
        "192.168.1.10",
        8080,
        true,
    ),
    flow(
        "outside -> web:9090, forwarded; applyOnForward policy denies",
        EXT,
        "10.0.0.1",
        Kind::Tcp,
        "192.168.1.10",
        9090,
        false,
    ),
    flow(
        "outside -> host:22, failsafe port open whatever the policy",
        EXT,
        "10.0.0.1",
        Kind::Tcp,
        "10.0.0.10",
        22,
        true,
    ),
    flow(
        "outside -> host:10250, host endpoint policy has no rule for it",
        EXT,
        "10.0.0.1",
        Kind::Tcp,
        "10.0.0.10",
        10250,
        false,
    ),
    flow("outside pings the host, host endpoint policy allows ICMP", EXT, "10.0.0.1", Kind::Ping, "10.0.0.10", 0, true),
    flow(
        "web -> its own host:10250, DefaultEndpointToHostAction Drop",
        "cxdemo-web",
        "192.168.1.10",
        Kind::Tcp,
        "10.0.0.10",
        10250,
        false,
    ),
    flow(
        "host -> web:8080, a host reaches its own pods whatever their policy",
        NODE,
        "10.0.0.10",
        Kind::Tcp,
        "192.168.1.10",
        8080,
        true,
    ),
];

#[allow(clippy::too_many_arguments)]
const fn flow(
    what: &'static str,
    from: &'static str,
    src: &'static str,
    kind: Kind,
    dst: &'static str,
    port: u16,
    expect_ok: bool,
) -> Flow {
    Flow { what, from, src, kind, dst, port, expect_ok }
}

/// The servers each namespace runs: TCP ports (echo) and UDP ports (echo).
const SERVERS: [(&str, &[u16], &[u16]); 4] =
    [("cxdemo-web", &[8080, 9090], &[]), ("cxdemo-dns", &[], &[53]), (NODE, &[22, 10250], &[]), (EXT, &[80], &[])];

fn all_namespaces() -> Vec<&'static str> {
    let mut v = vec![NODE, EXT];
    v.extend(PODS.iter().map(|p| p.0));
    v
}

/// Why a command run in a namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot run {program}: {error}")]
    Spawn { program: String, error: std::io::Error },
    /// The command joined by spaces, and what it wrote to stderr (trimmed).
    #[error("`{command}` in {ns} failed: {stderr}")]
    Failed { command: String, ns: String, stderr: String },
}

/// Why the demo could not run (not a flow that misbehaved: those are the table's).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the demo needs root and iproute2: it builds network namespaces and attaches XDP programs")]
    Unavailable,
    /// The node or policies shipped with the demo do not load.
    #[error(transparent)]
    Load(#[from] calxdp_policy::yaml::LoadError),
    #[error(transparent)]
    Ip(#[from] crate::live::IpError),
    #[error("namespace {0}: {1}")]
    Namespace(&'static str, std::io::Error),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("{0} (install ethtool: apt-get install ethtool)")]
    Ethtool(ExecError),
    #[error("{0} (install iputils-ping)")]
    Ping(ExecError),
    #[error(transparent)]
    Start(#[from] crate::live::StartError),
    #[error(transparent)]
    Admin(#[from] crate::admin::server::ServeError),
}

fn exec(ns: &str, cmd: &[&str]) -> Result<(), ExecError> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .map_err(|error| ExecError::Spawn { program: cmd[0].to_string(), error })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ExecError::Failed {
            command: cmd.join(" "),
            ns: ns.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Builds the demo's namespaces and links; they are deleted when the returned value is dropped.
fn build_topology(workers: usize) -> Result<Namespaces, DemoError> {
    for ns in all_namespaces() {
        let _ = ip(&["netns", "del", ns]); // a previous demo that was killed
    }
    let mut topo = Namespaces::default();
    for ns in all_namespaces() {
        topo.add(ns)?;
        // ICMP datagram sockets for any user, so ping needs no raw socket.
        netns::run_in(ns, || std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647").ok())
            .map_err(|e| DemoError::Namespace(ns, e))?;
    }
    // The uplink's wire: the external host at 10.0.0.1, routing the pod network via the node.
    ip(&["link", "add", "eth0", "netns", NODE, "type", "veth", "peer", "name", "eth0", "netns", EXT])?;
    ip(&["-n", NODE, "link", "set", "eth0", "address", "02:00:00:00:00:0a", "up"])?;
    ip(&["-n", EXT, "link", "set", "eth0", "address", "02:00:00:00:00:01", "up"])?;
    ip(&["-n", EXT, "addr", "add", "10.0.0.1/24", "dev", "eth0"])?;
    ip(&["-n", EXT, "route", "add", "192.168.1.0/24", "via", "10.0.0.10"])?;
    // Each pod as the Calico CNI plumbs it: a /32 address and a default route via 169.254.1.1, which the
    // dataplane answers by proxy ARP.
    for (ns, iface, addr, mac) in PODS {
        ip(&["link", "add", iface, "netns", NODE, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
        ip(&["-n", NODE, "link", "set", iface, "up"])?;
        ip(&["-n", ns, "link", "set", "eth0", "address", mac, "up"])?;
        ip(&["-n", ns, "addr", "add", &format!("{addr}/32"), "dev", "eth0"])?;
        ip(&["-n", ns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"])?;
        ip(&["-n", ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"])?;
    }
    // Dual-stack pods, as Calico's CNI plumbs them: a /128 and a default route via the link-local gateway
    // the dataplane answers by proxy NDP.
    for (ns, addr) in DUAL_STACK {
        netns::run_in(ns, || {
            for f in ["all", "default", "eth0"] {
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{f}/accept_dad"), "0");
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{f}/disable_ipv6"), "0");
            }
        })
        .map_err(|e| DemoError::Namespace(ns, e))?;
        ip(&["-n", ns, "-6", "addr", "add", &format!("{addr}/128"), "dev", "eth0", "nodad"])?;
        ip(&["-n", ns, "-6", "route", "add", "default", "via", IPV6_GATEWAY, "dev", "eth0"])?;
    }
    // Senders into an XDP program on veth must not leave checksums to offload: XDP sees the frame as is.
    for ns in PODS.iter().map(|p| p.0).chain([EXT]) {
        exec(ns, &["ethtool", "-K", "eth0", "tx", "off"]).map_err(DemoError::Ethtool)?;
    }
    // One queue per worker on both ends of every veth, so the flows spread over the workers.
    if workers > 1 {
        let q = workers.to_string();
        for ns in PODS.iter().map(|p| p.0).chain([EXT]) {
            exec(ns, &["ethtool", "-L", "eth0", "rx", &q, "tx", &q])?;
        }
        for iface in PODS.iter().map(|p| p.1).chain(["eth0"]) {
            exec(NODE, &["ethtool", "-L", iface, "rx", &q, "tx", &q])?;
        }
    }
    Ok(topo)
}

/// Echo servers in a namespace until `stop`.
fn serve(ns: &'static str, tcp: &'static [u16], udp: &'static [u16], stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        if netns::enter(ns).is_err() {
            return;
        }
        let listeners: Vec<TcpListener> = tcp
            .iter()
            // Dual-stack where the namespace has IPv6, else IPv4 only.
            .filter_map(|p| TcpListener::bind(("::", *p)).or_else(|_| TcpListener::bind(("0.0.0.0", *p))).ok())
            .inspect(|l| {
                let _ = l.set_nonblocking(true);
            })
            .collect();
        let sockets: Vec<UdpSocket> = udp
            .iter()
            .filter_map(|p| UdpSocket::bind(("0.0.0.0", *p)).ok())
            .inspect(|s| {
                let _ = s.set_nonblocking(true);
            })
            .collect();
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::Relaxed) {
            for l in &listeners {
                if let Ok((mut c, _)) = l.accept() {
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
                    if let Ok(n) = c.read(&mut buf) {
                        let _ = c.write_all(&buf[..n]);
                    }
                }
            }
            for s in &sockets {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(&buf[..n], from);
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })
}

/// Tries a flow from inside its namespace; true if the application got its answer.
fn attempt(f: &Flow) -> Result<bool, DemoError> {
    let (kind, src, dst, port) = (f.kind, f.src, f.dst, f.port);
    if kind == Kind::Ping {
        return exec(f.from, &["ping", "-c", "1", "-W", "1", dst]).map(|()| true).or_else(|e| match e {
            ExecError::Spawn { .. } => Err(DemoError::Ping(e)),
            ExecError::Failed { .. } => Ok(false),
        });
    }
    netns::run_in(f.from, move || {
        let src_ip: IpAddr = src.parse().expect("demo addresses parse");
        let to = SocketAddr::new(dst.parse().expect("demo addresses parse"), port);
        let wait = Duration::from_millis(1500);
        match kind {
            Kind::Tcp => {
                let Ok(mut s) = TcpStream::connect_timeout(&to, wait) else { return false };
                let _ = s.set_read_timeout(Some(wait));
                let mut buf = [0u8; 16];
                s.write_all(b"hello").is_ok() && s.read(&mut buf).is_ok_and(|n| &buf[..n] == b"hello")
            }
            Kind::Udp => {
                let Ok(s) = UdpSocket::bind((src_ip, 0)) else { return false };
                let _ = s.set_read_timeout(Some(wait));
                let mut buf = [0u8; 16];
                s.send_to(b"hello", to).is_ok() && s.recv_from(&mut buf).is_ok_and(|(n, _)| &buf[..n] == b"hello")
            }
            Kind::UdpRefused => {
                let Ok(s) = UdpSocket::bind((src_ip, 0)) else { return false };
                let _ = s.set_read_timeout(Some(wait));
                let mut buf = [0u8; 16];
                // A connected UDP socket hears of the ICMP error as ECONNREFUSED.
                s.connect(to).is_ok()
                    && s.send(b"hello").is_ok()
                    && s.recv(&mut buf).is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
            }
            Kind::UdpLarge => {
                let Ok(s) = UdpSocket::bind((src_ip, 0)) else { return false };
                let _ = s.set_read_timeout(Some(wait));
                let sent: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
                let mut buf = [0u8; 4096];
                s.send_to(&sent, to).is_ok() && s.recv_from(&mut buf).is_ok_and(|(n, _)| buf[..n] == sent[..])
            }
            Kind::Ping => unreachable!("handled above"),
        }
    })
    .map_err(|e| DemoError::Namespace(f.from, e))
}

/// Runs the whole demo and prints its table; false if any flow did not behave as Linux Calico would.
pub fn demo(workers: usize, show_trace: bool) -> Result<bool, DemoError> {
    demo_keep(workers, show_trace, None)
}

/// What `demo --keep` needs: where to serve the admin API and metrics, and the flag SIGINT or SIGTERM
/// raise to end it.
#[derive(Debug, Clone)]
pub struct Keep {
    pub serve: ServeOptions,
    pub stop: Arc<AtomicBool>,
}

/// [`demo`]; with `keep`, after the table the node keeps running (its echo servers too, so traffic can be
/// sent from the namespaces), serving the admin API, until `keep.stop` is raised; then everything is torn
/// down as without it.
pub fn demo_keep(workers: usize, show_trace: bool, keep: Option<Keep>) -> Result<bool, DemoError> {
    if crate::parity::live_level::unavailable().is_some() {
        return Err(DemoError::Unavailable);
    }
    let origin = Origin::file("examples/demo/node.yaml");
    let docs = parse_documents(NODE_YAML, &origin)?;
    let node = NodeConfig::parse(Field::root(&docs[0], &origin))?;
    let mut resources = ResourceSet::new();
    let loaded = load_text(POLICIES_YAML, &Origin::file("examples/demo/policies.yaml"))?;
    resources.apply_all(loaded.into_iter().map(|d| d.resource));

    println!("calxdp demo: building the node in network namespaces (cxdemo-*)");
    let topo = build_topology(workers)?;
    let (tx, trace) = sync_channel(65_536);
    let (n, r) = (node.clone(), resources.clone());
    let opts = LiveOptions { workers, ..LiveOptions::default() };
    let mut live = netns::run_in(NODE, move || LiveNode::start(n, r, &opts, Some(tx)))
        .map_err(|e| DemoError::Namespace(NODE, e))??;
    // The admin API is served from this thread's namespace: the socket is a file, and the metrics port is
    // where the operator's tools are.
    let served = match &keep {
        Some(k) => {
            let view = NodeView::new(&mut live);
            Some((AdminServer::start(&k.serve, view.clone())?, view))
        }
        None => None,
    };
    println!(
        "calxdp demo: dataplane up: XDP on {}, host stack on tap calxdp-host, {} policy resources, {workers} worker(s)",
        live.attach_modes.iter().map(|(i, m)| format!("{i} ({m})")).collect::<Vec<_>>().join(", "),
        resources.len()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let servers: Vec<JoinHandle<()>> = SERVERS.iter().map(|&(ns, t, u)| serve(ns, t, u, stop.clone())).collect();
    std::thread::sleep(Duration::from_millis(200));

    let started = Instant::now();
    let mut results = Vec::new();
    for f in &FLOWS {
        results.push(attempt(f));
    }
    std::thread::sleep(Duration::from_millis(100));
    let records: Vec<TraceRecord> = std::iter::from_fn(|| trace.try_recv().ok()).collect();
    let ok = print_table(&live, &records, &results);
    if show_trace {
        println!("\nEvery frame the dataplane decided, in order:");
        for r in &records {
            println!("{}", crate::run::trace_line(&live, r));
        }
    }
    if let (Some(k), Some((server, view))) = (&keep, &served) {
        let socket = server.socket.as_ref().map_or_else(|| "none".into(), |p| p.display().to_string());
        let metrics = server.metrics.map_or_else(|| "off".into(), |a| format!("http://{a}/metrics"));
        println!(
            "\ncalxdp demo: kept running; admin socket {socket}, metrics {metrics}; send traffic from the cxdemo-* \
             namespaces (ip netns exec cxdemo-front ...); Ctrl-C tears it down"
        );
        let _ = std::io::stdout().flush();
        while !k.stop.load(Ordering::Relaxed) {
            drain(&trace);
            if let Some(death) = live.dead_worker() {
                println!("calxdp demo: {death}; tearing down");
                break;
            }
            view.refresh(&mut live);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if let Some((server, _)) = served {
        server.stop();
    }
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        let _ = s.join();
    }
    let (c, io) = live.stop();
    println!(
        "\n{} frames in {:.1} s: {} allowed, {} dropped; ARP: {} answered, {} passed between uplink and tap; \
         {} neighbour solicitations answered; {} handed to the worker owning their flow",
        c.packets,
        started.elapsed().as_secs_f64(),
        c.allowed,
        c.packets - c.allowed,
        io.arp_replied,
        io.arp_passed,
        io.ndp_answered,
        io.handed_off
    );
    let reasons: Vec<String> = calxdp_dataplane::decision::DropReason::ALL
        .iter()
        .filter(|r| c.dropped(**r) > 0)
        .map(|r| format!("{} {}", c.dropped(*r), r.name()))
        .collect();
    println!("drops by reason: {}", reasons.join(", "));
    println!("fragments: {} reassembled into {} datagrams before conntrack", c.fragments, c.reassembled);
    drop(topo);
    println!("calxdp demo: torn down (namespaces deleted, XDP detached, tap removed)");
    drain(&trace);
    Ok(ok)
}

fn drain(rx: &Receiver<TraceRecord>) {
    while rx.try_recv().is_ok() {}
}

/// One line per flow: what was tried, what Linux Calico does, what the application saw, and the verdict of
/// the flow's first packet with the rule that decided it.
fn print_table(live: &LiveNode, records: &[TraceRecord], results: &[Result<bool, DemoError>]) -> bool {
    let tables = live.publisher.slot().hold();
    let mut all_ok = true;
    println!("\n{:<3} {:<66} {:<8} {:<8} {:<6} why (first packet of the flow)", "#", "flow", "calico", "seen", "match");
    for (i, (f, r)) in FLOWS.iter().zip(results).enumerate() {
        let seen = match r {
            Ok(true) => "works",
            Ok(false) => "blocked",
            Err(_) => "error",
        };
        let matches = matches!(r, Ok(ok) if *ok == f.expect_ok);
        all_ok &= matches;
        let (src, dst): (IpAddr, IpAddr) = (f.src.parse().expect("parses"), f.dst.parse().expect("parses"));
        let first = records.iter().find(|rec| {
            let h = &rec.header;
            h.src == src
                && h.dst == dst
                && match f.kind {
                    Kind::Ping => h.protocol == Protocol::ICMP,
                    Kind::Tcp => h.protocol == Protocol::TCP && h.dst_port == f.port,
                    Kind::Udp | Kind::UdpRefused | Kind::UdpLarge => {
                        h.protocol == Protocol::UDP && h.dst_port == f.port
                    }
                }
        });
        // Every stage that decided, not only the last (a pod's egress and the other pod's ingress, say).
        let why = match first {
            Some(rec) => format!(
                "{} {} -> {}: {}",
                if rec.verdict == Verdict::Allow { "allow" } else { "drop" },
                rec.port.name_in(&live.node),
                rec.out.map(|o| o.name_in(&live.node)).unwrap_or_else(|| "-".into()),
                crate::admin::answer::stages(&tables, rec).join("; then ")
            ),
            None => "(no packet seen by the dataplane)".into(),
        };
        println!(
            "{:<3} {:<66} {:<8} {:<8} {:<6} {why}",
            i + 1,
            f.what,
            if f.expect_ok { "works" } else { "blocked" },
            seen,
            if matches { "yes" } else { "NO" }
        );
        if let Err(e) = r {
            println!("    error: {e}");
        }
    }
    all_ok
}
