//! Live: `calxdp felix-driver` under an emulated Felix, endpoints added and removed under traffic.
//!
//! A node namespace with an uplink and three Calico-style pod veths (pods A, B, C in their own namespaces).
//! The emulated Felix (`calxdp::felix::emulator`) sends the snapshot for pods A and B — a policy that lets
//! only `app == a` reach `app in {b, c}`, so B's ingress matches by IP set — over a real pipe into the
//! driver (`driver::run`, reading the pipe as Felix's fd 3 and answering on another pipe as fd 4). Then,
//! while A pings B every 10 ms: pod C's endpoint is added (its veth is made after the message), A reaches C; C's
//! endpoint is removed, A no longer reaches C. Checked: the status Felix receives (up for A, B and C as
//! their ports attach; C's status removed when its endpoint goes), that A→B lost no ping throughout, and
//! that the driver serves the admin API (`status`: A's and B's ports up, A's pings received) and removes
//! its socket when Felix goes.
//!
//! Needs root and network namespaces: `#[ignore]`d, and run by scripts/test with --include-ignored as root.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use calxdp::admin::client::ask;
use calxdp::admin::proto::Request;
use calxdp::admin::server::ServeOptions;
use calxdp::felix::driver::{run as run_driver, DriverOptions};
use calxdp::felix::emulator::{Emulator, FelixView};
use calxdp::felix::framing::{pipe, read_message, write_frame};
use calxdp::felix::proto::{from_dataplane::Payload as BackPayload, FromDataplane, ToDataplane};
use calxdp::live::LiveOptions;
use calxdp_dataplane::sys::netns;
use calxdp_policy::node::NodeConfig;
use calxdp_policy::resource::{load_text, ResourceSet};
use calxdp_policy::yaml::{parse_documents, Field, Origin};

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

const PODS: [(&str, &str, &str, &str); 3] = [
    ("a", "cxfA", "10.66.0.1", "0a:58:0a:42:00:01"),
    ("b", "cxfB", "10.66.0.2", "0a:58:0a:42:00:02"),
    ("c", "cxfC", "10.66.0.3", "0a:58:0a:42:00:03"),
];

struct Topology {
    node: String,
    pods: Vec<String>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.pods.iter().chain(std::iter::once(&self.node)) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

impl Topology {
    fn create(prefix: &str) -> Result<Topology, String> {
        let mut t = Topology { node: format!("{prefix}-node"), pods: Vec::new() };
        let mut all = vec![t.node.clone()];
        all.extend(PODS.iter().map(|p| format!("{prefix}-{}", p.0)));
        for (i, ns) in all.iter().enumerate() {
            ip(&["netns", "add", ns])?;
            if i == 0 {
                t.node = ns.clone();
            } else {
                t.pods.push(ns.clone());
            }
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ],
            )?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // Pod C's veth is made later, after its endpoint was sent.
        for i in 0..2 {
            t.add_veth(i)?;
        }
        ip(&["-n", &t.node, "link", "add", "cxfU", "type", "veth", "peer", "name", "cxfUp"])?;
        ip(&["-n", &t.node, "link", "set", "cxfU", "up"])?;
        ip(&["-n", &t.node, "link", "set", "cxfUp", "up"])?;
        Ok(t)
    }
}

impl Topology {
    /// Pod `i`'s veth: the host side (Calico's MAC) in the node namespace, `eth0` in the pod's.
    fn add_veth(&self, i: usize) -> Result<(), String> {
        let (_, host_if, addr, mac) = PODS[i];
        let pod_ns = &self.pods[i];
        ip(&[
            "-n",
            &self.node,
            "link",
            "add",
            host_if,
            "address",
            "ee:ee:ee:ee:ee:ee",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "address",
            mac,
            "netns",
            pod_ns,
        ])?;
        ip(&["-n", &self.node, "link", "set", host_if, "up"])?;
        ip(&["-n", pod_ns, "addr", "add", &format!("{addr}/32"), "dev", "eth0"])?;
        ip(&["-n", pod_ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", pod_ns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"])?;
        ip(&["-n", pod_ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"])?;
        Ok(())
    }
}

const NODE_OPTIONS: &str = "name: cxf-node\ninterfaces:\n  - {name: cxfU, ips: [10.89.0.10/24], gateway: 10.89.0.1}\n";

/// The cluster as the emulated Felix sees it: the node options plus the pods in `pods`.
fn cluster(pods: &[&str]) -> NodeConfig {
    let mut text = format!("{NODE_OPTIONS}namespaces:\n  - {{name: demo}}\nworkloads:\n");
    for (name, iface, addr, mac) in PODS.iter().filter(|p| pods.contains(&p.0)) {
        text.push_str(&format!(
            "  - {{name: pod-{name}, namespace: demo, interface: {iface}, ips: [{addr}], labels: {{app: {name}}}, mac: \"{mac}\"}}\n"
        ));
    }
    let origin = Origin::file("cluster");
    let docs = parse_documents(&text, &origin).expect("node parses");
    NodeConfig::parse(Field::root(&docs[0], &origin)).expect("node is valid")
}

fn policy() -> ResourceSet {
    let text = "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: only-a-in}
spec:
  selector: app in {'b', 'c'}
  types: [Ingress]
  ingress:
    - {action: Allow, protocol: ICMP, source: {selector: app == 'a'}}
";
    let mut rs = ResourceSet::new();
    rs.apply_all(load_text(text, &Origin::file("policy")).expect("policy loads").into_iter().map(|d| d.resource));
    rs
}

/// Collects what the driver tells Felix.
fn collect(mut r: std::fs::File) -> Receiver<FromDataplane> {
    let (tx, rx) = channel();
    thread::spawn(move || {
        while let Ok(Some(m)) = read_message::<FromDataplane>(&mut r) {
            if tx.send(m).is_err() {
                return;
            }
        }
    });
    rx
}

/// What the driver told Felix so far, and the pipe it tells it on.
struct Back {
    rx: Receiver<FromDataplane>,
    seen: Vec<FromDataplane>,
}

impl Back {
    /// Waits for a message `want` accepts (or finds one already seen); panics after `within`.
    fn wait_for(&mut self, within: Duration, what: &str, want: impl Fn(&BackPayload) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            if self.seen.iter().any(|m| m.payload.as_ref().is_some_and(&want)) {
                return;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
            if let Ok(m) = self.rx.recv_timeout(left) {
                self.seen.push(m);
            }
        }
        panic!("no {what} within {within:?}; seen: {:?}", self.seen);
    }
}

fn status<'a>(pod: &'a str, st: &'static str) -> impl Fn(&BackPayload) -> bool + 'a {
    move |b| {
        matches!(b, BackPayload::WorkloadEndpointStatusUpdate(u)
        if u.id.as_ref().is_some_and(|i| i.workload_id == format!("demo/pod-{pod}"))
            && u.status.as_ref().is_some_and(|s| s.status == st))
    }
}

/// `ping` from pod A's namespace: (sent, received).
fn ping(ns: &str, dst: &str, count: u32, interval: &str) -> (u32, u32) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-n", "-q", "-c", &count.to_string(), "-i", interval, "-W", "1", dst])
        .output()
        .expect("run ping");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or("");
    let num = |word: &str| -> u32 {
        line.split(',')
            .find(|p| p.contains(word))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (num("transmitted"), num("received"))
}

#[test]
#[ignore = "needs root (network namespaces, XDP, AF_XDP): scripts/test runs it with --include-ignored as root"]
fn endpoints_come_and_go_under_traffic() {
    let prefix = format!("cxf-{}", std::process::id());
    if !calxdp::live::is_root() || ip(&["netns", "add", &format!("{prefix}-probe")]).is_err() {
        panic!("live_felix_driver: needs root and network namespaces");
    }
    let _ = ip(&["netns", "del", &format!("{prefix}-probe")]);
    let topo = Topology::create(&prefix).expect("topology");
    let (pod_a, node_ns) = (topo.pods[0].clone(), topo.node.clone());

    let dir = std::env::temp_dir().join(format!("{prefix}-driver"));
    let socket = PathBuf::from(format!("/run/calxdp/{prefix}-driver.sock"));
    std::fs::create_dir_all(&dir).unwrap();
    let node_file = dir.join("node.yaml");
    std::fs::write(&node_file, NODE_OPTIONS).unwrap();

    // Felix's two pipes; the driver opens its ends through /proc, as it would open fd 3 and 4.
    let (to_read, mut to_driver) = pipe().unwrap();
    let (from_driver, from_write) = pipe().unwrap();
    let path = |fd: i32| PathBuf::from(format!("/proc/self/fd/{fd}"));
    let opts = DriverOptions {
        node: Some(node_file.clone()),
        input: Some(path(to_read.as_raw_fd())),
        output: Some(path(from_write.as_raw_fd())),
        live: LiveOptions {
            tap: "cxf-host".into(),
            netns: Some(node_ns.clone()),
            host_addresses: false,
            ..LiveOptions::default()
        },
        check: false,
        status_every: Duration::from_secs(10),
        serve: ServeOptions { admin: Some(socket.clone()), metrics: None },
    };
    let stop = Arc::new(AtomicBool::new(false));
    let ns = node_ns.clone();
    let driver = thread::spawn(move || {
        netns::enter(&ns).map_err(|e| e.to_string())?;
        run_driver(&opts, stop).map_err(|e| e.to_string())
    });
    let mut back = Back { rx: collect(from_driver), seen: Vec::new() };

    let mut felix = Emulator::new();
    let send = |msgs: Vec<ToDataplane>, w: &mut std::fs::File| {
        for m in &msgs {
            write_frame(w, m).expect("write to the driver");
        }
    };
    let resources = policy();
    send(felix.update(FelixView::compute(&cluster(&["a", "b"]), &resources).unwrap()), &mut to_driver);
    back.wait_for(Duration::from_secs(30), "status up for pod-a", status("a", "up"));
    back.wait_for(Duration::from_secs(30), "status up for pod-b", status("b", "up"));
    // Neighbour resolution and the first flow settle.
    let warm = (0..20).any(|_| ping(&pod_a, PODS[1].2, 1, "0.2").1 == 1);
    assert!(warm, "A never reached B");

    // The operator's view of the driver's node: its ports, up, and the pings counted on A's.
    // Workers publish their counters every 100 ms: the pings show on A's port within a moment.
    // A's rx from the same answer.
    let ask_status = || {
        let s = ask(&socket, &Request::Status {}, Duration::from_secs(5)).expect("the driver serves status");
        let rx = s["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == PODS[0].1)
            .map_or(0, |p| p["rx"].as_u64().unwrap());
        (s, rx)
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let (node_status, rx_a) = loop {
        let (s, rx) = ask_status();
        if rx > 0 || Instant::now() > deadline {
            break (s, rx);
        }
        thread::sleep(Duration::from_millis(100));
    };
    let ports = node_status["ports"].as_array().unwrap();
    let port =
        |name: &str| ports.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no {name}: {node_status}"));
    for p in [PODS[0].1, PODS[1].1] {
        assert_eq!(port(p)["up"], true, "{node_status}");
    }
    assert!(rx_a > 0, "{node_status}");
    assert_eq!(node_status["tables"]["local_endpoints"], 2, "{node_status}");

    // Under a steady ping A→B: C comes, is reached, goes.
    let a = pod_a.clone();
    let steady = thread::spawn(move || ping(&a, PODS[1].2, 1500, "0.01"));
    thread::sleep(Duration::from_millis(300));
    // C's endpoint arrives before its veth exists: the port is taken over when the veth appears.
    send(felix.update(FelixView::compute(&cluster(&["a", "b", "c"]), &resources).unwrap()), &mut to_driver);
    thread::sleep(Duration::from_millis(300));
    assert!(!back.seen.iter().any(|m| m.payload.as_ref().is_some_and(status("c", "up"))), "C up before its veth");
    topo.add_veth(2).expect("pod C's veth");
    back.wait_for(Duration::from_secs(30), "status up for pod-c", status("c", "up"));
    let reached = (0..20).any(|_| ping(&pod_a, PODS[2].2, 1, "0.2").1 == 1);
    assert!(reached, "A never reached C after its endpoint was added");
    send(felix.update(FelixView::compute(&cluster(&["a", "b"]), &resources).unwrap()), &mut to_driver);
    back.wait_for(Duration::from_secs(30), "status removed for pod-c", |b| {
        matches!(b, BackPayload::WorkloadEndpointStatusRemove(r) if r.id.as_ref().is_some_and(|i| i.workload_id == "demo/pod-c"))
    });
    thread::sleep(Duration::from_millis(300));
    let (_, after) = ping(&pod_a, PODS[2].2, 3, "0.2");
    assert_eq!(after, 0, "A still reaches C after its endpoint was removed");
    let (sent, received) = steady.join().unwrap();
    assert!(sent >= 1500, "ping sent {sent}");
    assert_eq!(received, sent, "A→B lost pings while C came and went");

    // Felix goes away: the driver stops and gives the interfaces back, and its admin socket.
    drop(to_driver);
    let result = driver.join().expect("driver thread");
    assert!(result.is_ok(), "{result:?}");
    assert!(!socket.exists(), "the driver left its admin socket behind");
    drop(from_write);
    let mut rest = Vec::new();
    let _ = to_read.take(0).read_to_end(&mut rest);
    let _ = std::fs::remove_dir_all(&dir);
    drop(topo);
}
