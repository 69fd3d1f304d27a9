//! The end-to-end benchmark's topology: three network namespaces in a line,
//!
//! ```text
//!   cxb-gen: cxg0 ──veth── cxng :cxb-node: cxns ──veth── cxs0 :cxb-sink
//! ```
//!
//! and the plumbing to work inside them from this process: a thread enters a namespace (network namespace
//! and a private sysfs, as `ip netns exec` does, so `/sys/class/net` shows that namespace's interfaces),
//! threads it spawns inherit both; CPU pinning; interface counters read by re-reading one open sysfs file.
//! The namespaces are deleted when the [`Topology`] is dropped, also on error and on panic.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::process::Command;

use calxdp_dataplane::sys::{netns, process};

pub const GEN_NS: &str = "cxb-gen";
pub const NODE_NS: &str = "cxb-node";
pub const SINK_NS: &str = "cxb-sink";

/// The generator's veth (in `cxb-gen`) and its peer in the node (the node's uplink).
pub const GEN_IF: &str = "cxg0";
pub const NODE_UP_IF: &str = "cxng";
/// The node's veth toward the sink (the pod's host-side veth) and its peer in `cxb-sink` (the pod).
pub const NODE_POD_IF: &str = "cxns";
pub const SINK_IF: &str = "cxs0";

pub const GEN_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x01];
pub const NODE_UP_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x0a];
pub const NODE_POD_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 1, 0x0a];
pub const SINK_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 1, 0x02];

/// The uplink's subnet: the node is .10, the generator's side (the node's gateway) .1.
pub const NODE_UP_IP: [u8; 4] = [10, 77, 0, 10];
pub const GATEWAY_IP: [u8; 4] = [10, 77, 0, 1];
/// The client the generator plays: beyond the gateway, outside every CIDR the synthetic policies name.
pub const CLIENT_IP: [u8; 4] = [220, 77, 0, 1];
/// The pod in the sink namespace.
pub const SINK_IP: [u8; 4] = [192, 168, 77, 2];
pub const SINK_PORT: u16 = 9999;
/// The client's one-way flow: never answered, so it stays NEW in every conntrack.
pub const CLIENT_PORT: u16 = 40000;
/// The client's answered flow: the sink replies to it before it is measured, so the forwarders' conntrack
/// has seen both directions (ESTABLISHED). A port of its own, so the one-way flow's entry never sees a reply.
pub const ESTABLISHED_PORT: u16 = 40001;
/// The pod's gateway, as Calico configures every pod (answered by the node's veth MAC here, a permanent
/// neighbour entry in the sink).
pub const POD_GATEWAY_IP: [u8; 4] = [169, 254, 1, 1];

pub fn mac_text(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn ip_text(a: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
}

/// Runs a command; the error names it and carries its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("cannot run `{cmd}`: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("`{cmd} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Runs a command inside a namespace (`ip netns exec`).
pub fn run_in(ns: &str, cmd: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["netns", "exec", ns, cmd];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// The three namespaces and two veth pairs; deleted on drop.
#[derive(Debug)]
pub struct Topology {
    created: Vec<&'static str>,
}

impl Topology {
    pub fn create() -> Result<Topology, String> {
        // Leftovers of an earlier run that was killed before it could clean up.
        for ns in [GEN_NS, NODE_NS, SINK_NS] {
            let _ = run("ip", &["netns", "del", ns]);
        }
        let mut topo = Topology { created: Vec::new() };
        for ns in [GEN_NS, NODE_NS, SINK_NS] {
            run("ip", &["netns", "add", ns])?;
            topo.created.push(ns);
        }
        run(
            "ip",
            &["link", "add", GEN_IF, "netns", GEN_NS, "type", "veth", "peer", "name", NODE_UP_IF, "netns", NODE_NS],
        )?;
        run(
            "ip",
            &["link", "add", NODE_POD_IF, "netns", NODE_NS, "type", "veth", "peer", "name", SINK_IF, "netns", SINK_NS],
        )?;
        for (ns, ifname, mac) in [
            (GEN_NS, GEN_IF, GEN_MAC),
            (NODE_NS, NODE_UP_IF, NODE_UP_MAC),
            (NODE_NS, NODE_POD_IF, NODE_POD_MAC),
            (SINK_NS, SINK_IF, SINK_MAC),
        ] {
            run("ip", &["-n", ns, "link", "set", "dev", ifname, "address", &mac_text(mac)])?;
        }
        for ns in [GEN_NS, NODE_NS, SINK_NS] {
            // No IPv6 autoconfiguration chatter on the wires being measured.
            run_in(ns, "sysctl", &["-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"])?;
            run_in(ns, "sysctl", &["-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"])?;
            run("ip", &["-n", ns, "link", "set", "dev", "lo", "up"])?;
        }
        for (ns, ifname) in [(GEN_NS, GEN_IF), (NODE_NS, NODE_UP_IF), (NODE_NS, NODE_POD_IF), (SINK_NS, SINK_IF)] {
            run("ip", &["-n", ns, "link", "set", "dev", ifname, "up"])?;
        }
        // Frames a veth sends into an XDP program must carry full checksums, not offloaded partial ones.
        for (ns, ifname) in [(GEN_NS, GEN_IF), (SINK_NS, SINK_IF)] {
            run_in(ns, "ethtool", &["-K", ifname, "tx", "off"])?;
        }
        run("ip", &["-n", SINK_NS, "addr", "add", &format!("{}/32", ip_text(SINK_IP)), "dev", SINK_IF])?;
        // The pod's way back to the client (its replies), as Calico configures a pod: a default route via
        // 169.254.1.1 on its veth, here with the gateway's MAC fixed to the node's veth.
        let gw = ip_text(POD_GATEWAY_IP);
        run("ip", &["-n", SINK_NS, "route", "add", &gw, "dev", SINK_IF, "scope", "link"])?;
        run("ip", &["-n", SINK_NS, "route", "add", "default", "via", &gw, "dev", SINK_IF])?;
        run(
            "ip",
            &[
                "-n",
                SINK_NS,
                "neigh",
                "replace",
                &gw,
                "lladdr",
                &mac_text(NODE_POD_MAC),
                "dev",
                SINK_IF,
                "nud",
                "permanent",
            ],
        )?;
        Ok(topo)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.created.drain(..).rev() {
            if let Err(e) = run("ip", &["netns", "del", ns]) {
                eprintln!("e2e: cleanup: {e}");
            }
        }
    }
}

/// Moves the calling thread into namespace `ns`: its network namespace, and a private mount namespace with
/// that network namespace's sysfs on /sys (what `ip netns exec` does). Threads it spawns afterwards
/// inherit both. Other threads of the process are not affected.
pub fn enter(ns: &str) -> Result<(), String> {
    netns::enter_with_sysfs(ns).map_err(|e| format!("entering namespace {ns}: {e}"))
}

/// Runs `f` on a new thread inside namespace `ns` and returns its result.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T, String> + Send) -> Result<T, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns)?;
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Sends `count` UDP datagrams from the sink pod's port [`SINK_PORT`] to the client's
/// [`ESTABLISHED_PORT`], `gap` apart: the replies that make the answered flow ESTABLISHED in the forwarder's
/// conntrack. Call on a thread inside the sink namespace. Returns how many the socket took.
pub fn reply(count: usize, gap: std::time::Duration) -> Result<usize, String> {
    use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
    let local = SocketAddrV4::new(Ipv4Addr::from(SINK_IP), SINK_PORT);
    let sock = UdpSocket::bind(local).map_err(|e| format!("bind {local} in {SINK_NS}: {e}"))?;
    let to = SocketAddrV4::new(Ipv4Addr::from(CLIENT_IP), ESTABLISHED_PORT);
    let mut sent = 0;
    for _ in 0..count {
        if sock.send_to(b"reply", to).is_ok() {
            sent += 1;
        }
        std::thread::sleep(gap);
    }
    Ok(sent)
}

/// Pins the calling thread to one CPU (None: every CPU). Best effort: returns whether it worked.
pub fn pin(cpu: Option<usize>) -> bool {
    process::pin_to_cpu(cpu)
}

/// One interface counter of one namespace: a sysfs file opened inside that namespace, re-read on demand
/// (a positioned read at 0 makes sysfs produce the current value), from any thread.
#[derive(Debug)]
pub struct Counter {
    file: File,
}

impl Counter {
    /// Opens `/sys/class/net/<ifname>/statistics/<stat>`; call on a thread that has [`enter`]ed the namespace.
    pub fn open(ifname: &str, stat: &str) -> Result<Counter, String> {
        let path = format!("/sys/class/net/{ifname}/statistics/{stat}");
        let file = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        Ok(Counter { file })
    }

    pub fn read(&self) -> u64 {
        let mut buf = [0u8; 32];
        let n = self.file.read_at(&mut buf, 0).unwrap_or(0);
        std::str::from_utf8(&buf[..n]).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    }
}
