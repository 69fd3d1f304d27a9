//! `calxdp run` under the faults of a real node (issue 18): pods' veths that vanish and come back while
//! traffic flows, workloads added to and removed from the node file without a restart, and a log reader that
//! stops reading or goes away. The node must keep forwarding through all of them.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use calxdp::live::Namespaces;
use calxdp_dataplane::sys::netns;
use calxdp_dataplane::sys::packet::PacketSocket;
use calxdp_dataplane::wire::FrameSpec;
use calxdp_policy::packet::PacketHeader;
use calxdp_policy::resource::Protocol;

fn ip(args: &[&str]) {
    let s = Command::new("ip").args(args).status().expect("ip runs");
    assert!(s.success(), "ip {args:?}");
}

/// A node namespace and a wire namespace, the node's files, and the calxdp process; all removed on drop.
struct Node {
    node: String,
    wire: String,
    dir: PathBuf,
    child: Option<Child>,
    _namespaces: Namespaces,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn node_file(pods: &[(&str, &str, &str)]) -> String {
    let mut s = String::from(
        "name: node1\ninterfaces:\n  - {name: eth0, ips: [10.1.0.10/24], gateway: 10.1.0.1, gatewayMac: \"02:00:00:00:01:01\"}\nnamespaces:\n  - {name: app, labels: {}}\nworkloads:\n",
    );
    for (name, iface, addr) in pods {
        s.push_str(&format!(
            "  - {{name: {name}, namespace: app, interface: {iface}, ips: [{addr}], labels: {{app: db}}}}\n"
        ));
    }
    s
}

const LOG_POLICY: &str = "apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: db-in, namespace: app}
spec:
  selector: app == 'db'
  types: [Ingress]
  ingress:
    - action: Log
      protocol: UDP
    - action: Allow
";

impl Node {
    fn new(tag: &str, pods: &[(&str, &str, &str)]) -> Node {
        assert!(calxdp::live::is_root(), "calxdp run needs root (network namespaces, XDP, AF_XDP)");
        let id = std::process::id();
        let (node, wire) = (format!("cxf{tag}{id}n"), format!("cxf{tag}{id}w"));
        let mut namespaces = Namespaces::default();
        namespaces.add(&node).unwrap();
        namespaces.add(&wire).unwrap();
        let dir = std::env::temp_dir().join(format!("calxdp-faults-{tag}-{id}"));
        std::fs::create_dir_all(dir.join("policies")).unwrap();
        std::fs::write(dir.join("node.yaml"), node_file(pods)).unwrap();
        std::fs::write(dir.join("policies/db.yaml"), LOG_POLICY).unwrap();
        let n = Node { node, wire, dir, child: None, _namespaces: namespaces };
        n.veth("eth0", "wup");
        for (_, iface, _) in pods {
            n.veth(iface, &format!("w{iface}"));
        }
        n
    }

    fn veth(&self, inner: &str, outer: &str) {
        ip(&["link", "add", inner, "netns", &self.node, "type", "veth", "peer", "name", outer, "netns", &self.wire]);
        ip(&["-n", &self.node, "link", "set", inner, "up"]);
        ip(&["-n", &self.wire, "link", "set", outer, "up"]);
    }

    fn spawn(&mut self) -> std::process::ChildStderr {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node, env!("CARGO_BIN_EXE_calxdp"), "run", "--node"])
            .arg(self.dir.join("node.yaml"))
            .arg("--policies")
            .arg(self.dir.join("policies"))
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        self.child = Some(child);
        err
    }

    fn socket(&self, name: &str) -> PacketSocket {
        let name = name.to_string();
        netns::run_in(&self.wire, move || PacketSocket::open(&name).unwrap()).unwrap()
    }

    /// CPU seconds the calxdp process has used.
    fn cpu_seconds(&self) -> f64 {
        let pid = self.child.as_ref().unwrap().id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / 100.0
    }

    fn alive(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }
}

fn lines(err: std::process::ChildStderr) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(rx: &Receiver<String>, what: &str, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push(l.clone());
            if l.contains(what) {
                return l;
            }
        }
    }
    panic!("no line with {what:?}; saw:\n{}", seen.join("\n"));
}

/// Whether a frame the pod's end received is an IPv4 frame; ARP requests for the pod are answered (the pod
/// has no MAC in the node file, so the dataplane asks for it).
fn take(pod: &PacketSocket, frame: &[u8]) -> bool {
    if let Some(answer) = calxdp::wire_hosts::answer(frame) {
        let _ = pod.send(&answer);
    }
    frame.len() > 14 && frame[12..14] == [8, 0]
}

/// Sends UDP frames from the uplink's wire to `dst` and counts those that come out of the pod's veth.
fn send_and_count(uplink: &PacketSocket, pod: &PacketSocket, dst: &str, frames: u16, first_port: u16) -> usize {
    let mut buf = [0u8; 2048];
    while let Some(n) = pod.recv(&mut buf) {
        take(pod, &buf[..n]);
    }
    let mut arrived = 0;
    for k in 0..frames {
        let h = PacketHeader {
            src: "10.1.0.1".parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: Protocol::UDP,
            src_port: first_port.wrapping_add(k),
            dst_port: 5432,
            ..PacketHeader::EMPTY
        };
        uplink.send(&FrameSpec::new(h).build()).unwrap();
        if k % 16 == 15 {
            std::thread::sleep(Duration::from_millis(1));
        }
        while let Some(n) = pod.recv(&mut buf) {
            if take(pod, &buf[..n]) {
                arrived += 1;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline && arrived < frames as usize {
        match pod.recv(&mut buf) {
            Some(n) if take(pod, &buf[..n]) => arrived += 1,
            Some(_) => {}
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    arrived
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

#[test]
#[ignore = "needs root (network namespaces, XDP, AF_XDP): scripts/test runs it with --include-ignored as root"]
fn veths_that_vanish_and_come_back_and_pods_added_to_the_node_file_are_followed_without_loss_for_others() {
    let pods = [("db", "calidb", "192.168.5.2"), ("cache", "calicache", "192.168.5.3")];
    let mut n = Node::new("p", &pods);
    let rx = lines(n.spawn());
    let mut seen = Vec::new();
    wait_for(&rx, "calxdp: running", &mut seen);
    let uplink = n.socket("wup");
    let db = n.socket("wcalidb");
    assert_eq!(send_and_count(&uplink, &db, "192.168.5.2", 50, 1000), 50, "traffic to db before anything");

    // The cache pod's veth goes away while frames are sent to it: released, and db loses nothing.
    let cache = n.socket("wcalicache");
    assert_eq!(send_and_count(&uplink, &cache, "192.168.5.3", 20, 2000), 20);
    ip(&["-n", &n.node, "link", "del", "calicache"]);
    for k in 0..200u16 {
        let h = PacketHeader {
            src: "10.1.0.1".parse().unwrap(),
            dst: "192.168.5.3".parse().unwrap(),
            protocol: Protocol::UDP,
            src_port: 3000 + k,
            dst_port: 5432,
            ..PacketHeader::EMPTY
        };
        let _ = uplink.send(&FrameSpec::new(h).build());
    }
    wait_for(&rx, "calicache: released", &mut seen);
    assert_eq!(send_and_count(&uplink, &db, "192.168.5.2", 200, 4000), 200, "db keeps all its traffic");
    // The worker goes back to idle (a detached port is not congested forever).
    std::thread::sleep(Duration::from_millis(300));
    let before = n.cpu_seconds();
    std::thread::sleep(Duration::from_secs(2));
    let busy = (n.cpu_seconds() - before) / 2.0;
    assert!(busy < 0.5, "an idle node with a vanished port uses {:.0}% of a core", busy * 100.0);

    // Made again under the same name: taken over again.
    n.veth("calicache", "wcalicache");
    wait_for(&rx, "calicache: taken over", &mut seen);
    let cache = n.socket("wcalicache");
    assert_eq!(send_and_count(&uplink, &cache, "192.168.5.3", 20, 5000), 20, "the recreated veth gets traffic");

    // A pod added to the node file before its veth exists, then the veth: attached without a restart.
    let three = [pods[0], pods[1], ("search", "calisearch", "192.168.5.4")];
    write(&n.dir.join("node.yaml"), &node_file(&three));
    wait_for(&rx, "node updated: 3 local workloads", &mut seen);
    n.veth("calisearch", "wcalisearch");
    wait_for(&rx, "calisearch: taken over", &mut seen);
    let search = n.socket("wcalisearch");
    assert_eq!(send_and_count(&uplink, &search, "192.168.5.4", 20, 6000), 20, "the added pod gets traffic");

    // Removed from the node file: released, and its address is no longer a local pod.
    write(&n.dir.join("node.yaml"), &node_file(&pods));
    wait_for(&rx, "calisearch: released (its workload was removed)", &mut seen);
    assert_eq!(send_and_count(&uplink, &search, "192.168.5.4", 10, 7000), 0, "a removed pod gets nothing");
    assert_eq!(send_and_count(&uplink, &db, "192.168.5.2", 50, 8000), 50, "db still gets everything");
    assert!(n.alive());
}

#[test]
#[ignore = "needs root (network namespaces, XDP, AF_XDP): scripts/test runs it with --include-ignored as root"]
fn a_log_reader_that_stops_reading_or_goes_away_never_stops_forwarding() {
    let pods = [("db", "calidb", "192.168.5.2")];
    let mut n = Node::new("l", &pods);
    let mut err = n.spawn();
    // Read up to the running line, then stop reading: the pipe fills with Log lines nobody takes.
    let mut text = String::new();
    let mut byte = [0u8; 1];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !text.contains("calxdp: running") {
        assert!(Instant::now() < deadline, "no running line: {text}");
        if err.read(&mut byte).unwrap() == 0 {
            panic!("calxdp exited: {text}");
        }
        text.push(byte[0] as char);
    }
    let uplink = n.socket("wup");
    let db = n.socket("wcalidb");
    // The pod's MAC is learnt first (the node file gives none): until its ARP answer comes, at most 64
    // frames are held for it, as Linux queues a bounded number, and a slow answer on a busy machine would
    // cost frames that have nothing to do with logging.
    assert_eq!(send_and_count(&uplink, &db, "192.168.5.2", 10, 9_000), 10, "db answers its ARP");
    // Every frame hits a Log rule (no rate limit): far more lines than a pipe holds.
    let arrived = send_and_count(&uplink, &db, "192.168.5.2", 3000, 10_000);
    assert_eq!(arrived, 3000, "a stuck log reader costs log lines, not frames");
    // The reader goes away: writes fail with EPIPE.
    drop(err);
    let arrived = send_and_count(&uplink, &db, "192.168.5.2", 500, 20_000);
    assert_eq!(arrived, 500, "a gone log reader costs log lines, not frames");
    assert!(n.alive(), "calxdp survives a broken stderr");
    let pid = n.child.as_ref().unwrap().id().to_string();
    Command::new("sh").args(["-c", &format!("kill -TERM {pid}")]).status().unwrap();
    let status = n.child.take().unwrap().wait().unwrap();
    assert!(status.success(), "a clean stop after a broken stderr: {status:?}");
}

/// Sends one UDP frame from a pod's end (its address `src`) to `dst`.
fn from_pod(pod: &PacketSocket, src: &str, dst: &str, port: u16) {
    let h = PacketHeader {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        protocol: Protocol::UDP,
        src_port: port,
        dst_port: 53,
        ..PacketHeader::EMPTY
    };
    let mut spec = FrameSpec::new(h);
    spec.dst_mac = [0xee; 6];
    pod.send(&spec.build()).unwrap();
}

#[test]
#[ignore = "needs root (network namespaces, XDP, AF_XDP): scripts/test runs it with --include-ignored as root"]
fn a_pod_talking_to_a_dead_neighbour_does_not_hold_up_another_pods_first_packet_to_a_live_one() {
    let pods = [("db", "calidb", "192.168.5.2"), ("cache", "calicache", "192.168.5.3")];
    let mut n = Node::new("n", &pods);
    let rx = lines(n.spawn());
    let mut seen = Vec::new();
    wait_for(&rx, "calxdp: running", &mut seen);
    let uplink = n.socket("wup");
    let (db, cache) = (n.socket("wcalidb"), n.socket("wcalicache"));
    // db talks to 10.1.0.99, which nobody answers for, at 100 packets a second for two seconds; meanwhile
    // cache sends its first packet to 10.1.0.77, which answers.
    let mut buf = [0u8; 2048];
    let (mut asked_dead, mut arrived) = (0, false);
    let start = Instant::now();
    let mut k = 0u16;
    while start.elapsed() < Duration::from_secs(2) {
        from_pod(&db, "192.168.5.2", "10.1.0.99", 30_000 + k);
        if k == 20 {
            from_pod(&cache, "192.168.5.3", "10.1.0.77", 31_000);
        }
        k += 1;
        std::thread::sleep(Duration::from_millis(10));
        while let Some(len) = uplink.recv(&mut buf) {
            let f = &buf[..len];
            if let Some(a) = calxdp_dataplane::arp::parse(f).filter(|a| a.request) {
                if a.target_ip == std::net::Ipv4Addr::new(10, 1, 0, 99) {
                    asked_dead += 1;
                } else if let Some(answer) = calxdp::wire_hosts::answer(f) {
                    let _ = uplink.send(&answer);
                }
            } else if let Ok(p) = calxdp_dataplane::wire::parse(f) {
                if p.header.dst == "10.1.0.77".parse::<std::net::IpAddr>().unwrap() {
                    arrived = true;
                }
            }
        }
    }
    assert!(arrived, "the live neighbour's first packet arrived while a dead one was being asked for");
    // Linux asks three times, a second apart, then gives up and starts over with the next packet.
    assert!((2..=4).contains(&asked_dead), "{asked_dead} ARP requests for the dead address in two seconds");
    assert!(n.alive());
}

#[test]
#[ignore = "needs root (network namespaces, XDP, AF_XDP): scripts/test runs it with --include-ignored as root"]
fn an_uplink_mtu_larger_than_the_frames_is_refused_with_a_sentence() {
    let mut n = Node::new("m", &[]);
    ip(&["-n", &n.node, "link", "set", "eth0", "mtu", "9000"]);
    let rx = lines(n.spawn());
    let mut seen = Vec::new();
    let line = wait_for(&rx, "has MTU 9000", &mut seen);
    assert!(line.contains("interface eth0 has MTU 9000") && line.contains("MTU 1774 at most"), "{line}");
    let status = n.child.as_mut().unwrap().wait().unwrap();
    assert_eq!(status.code(), Some(1), "{}", seen.join("\n"));
}

#[test]
#[ignore = "needs root (network namespaces, XDP, AF_XDP): scripts/test runs it with --include-ignored as root"]
fn a_policy_file_being_written_is_never_enforced_half_written_and_an_emptied_folder_is_slow_and_loud() {
    let pods = [("db", "calidb", "192.168.5.2")];
    let mut n = Node::new("w", &pods);
    let rx = lines(n.spawn());
    let mut seen = Vec::new();
    wait_for(&rx, "calxdp: running", &mut seen);
    let uplink = n.socket("wup");
    let db = n.socket("wcalidb");
    assert_eq!(send_and_count(&uplink, &db, "192.168.5.2", 5, 1000), 5, "the first policy allows UDP");
    // A new file written slowly: its first part alone would deny nothing new, the whole file denies UDP.
    let path = n.dir.join("policies/late.yaml");
    let whole = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: deny-udp}\nspec:\n  order: 1\n  selector: app == 'db'\n  types: [Ingress]\n  ingress:\n    - action: Deny\n      protocol: UDP\n";
    let mut f = std::fs::File::create(&path).unwrap();
    for (k, chunk) in whole.as_bytes().chunks(12).enumerate() {
        use std::io::Write as _;
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(120));
        if k % 4 == 3 {
            // While the file is being written, nothing of it is enforced and no partial file is reported.
            assert!(rx.try_iter().all(|l| !l.contains("published") && !l.contains("rejected")));
        }
    }
    drop(f);
    wait_for(&rx, "published", &mut seen);
    assert_eq!(send_and_count(&uplink, &db, "192.168.5.2", 5, 2000), 0, "the whole file denies UDP");
    // The folder emptied: published only after it has stayed empty a while, with a warning.
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_file(n.dir.join("policies/db.yaml")).unwrap();
    let started = Instant::now();
    let line = wait_for(&rx, "is empty; publishing NO policies", &mut seen);
    assert!(started.elapsed() >= Duration::from_secs(3), "{line}");
    assert!(n.alive());
}

#[test]
#[ignore = "needs root (network namespaces, XDP, AF_XDP): scripts/test runs it with --include-ignored as root"]
fn a_second_instance_on_the_same_interfaces_is_refused_before_it_changes_anything() {
    let pods = [("db", "calidb", "192.168.5.2")];
    let mut n = Node::new("s", &pods);
    let rx = lines(n.spawn());
    let mut seen = Vec::new();
    wait_for(&rx, "calxdp: running", &mut seen);
    let routes = || {
        let out = Command::new("ip").args(["-n", &n.node, "route", "show"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = routes();
    assert!(before.contains("calxdp-host"), "the first instance's routes: {before}");
    let second = Command::new("ip")
        .args(["netns", "exec", &n.node, env!("CARGO_BIN_EXE_calxdp"), "run", "--tap", "cxother", "--node"])
        .arg(n.dir.join("node.yaml"))
        .arg("--policies")
        .arg(n.dir.join("policies"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(err.contains("another calxdp already runs on eth0") && err.contains("nothing was changed"), "{err}");
    assert_eq!(routes(), before, "the second instance changed the routes");
    let (uplink, db) = (n.socket("wup"), n.socket("wcalidb"));
    assert_eq!(send_and_count(&uplink, &db, "192.168.5.2", 20, 1000), 20, "the first instance still forwards");
}
