//! `calxdp run` as an operator meets it: plain-sentence startup errors, a watched policy directory whose
//! bad files are reported while the running tables stay, enforcement that follows a good change, and a
//! shutdown on SIGTERM that leaves the node's interfaces as they were.

use std::io::{BufRead, BufReader};
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

fn root() -> bool {
    calxdp::live::is_root()
}

fn ip(args: &[&str]) {
    let s = Command::new("ip").args(args).status().expect("ip runs");
    assert!(s.success(), "ip {args:?}");
}

#[test]
fn a_missing_interface_or_privilege_is_a_sentence_and_nothing_starts() {
    let dir = std::env::temp_dir().join(format!("calxdp-run-missing-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("node.yaml"),
        "name: n\ninterfaces:\n  - {name: cxnope0, ips: [10.1.0.10/24]}\nworkloads: []\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_calxdp"))
        .args(["run", "--node"])
        .arg(dir.join("node.yaml"))
        .arg("--policies")
        .arg(dir.join("policies"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    if root() {
        assert!(err.contains("interface cxnope0 (uplink) does not exist in this network namespace"), "{err}");
    } else {
        assert!(err.contains("the node dataplane needs root"), "{err}");
    }
    std::fs::remove_dir_all(dir).ok();
}

/// A node namespace with an uplink and one pod veth whose other ends sit in a wire namespace, and the
/// node's files; all removed on drop.
struct Topology {
    node: String,
    wire: String,
    dir: PathBuf,
    _namespaces: Namespaces,
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const NODE: &str = "name: node1
interfaces:
  - {name: eth0, ips: [10.1.0.10/24], gateway: 10.1.0.1, gatewayMac: \"02:00:00:00:01:01\"}
namespaces:
  - {name: app, labels: {}}
workloads:
  - {name: pod, namespace: app, interface: calipod, ips: [192.168.5.2], labels: {app: db}, mac: \"0a:58:c0:a8:05:02\"}
";

fn policy(port: u16) -> String {
    format!(
        "apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {{name: db-in, namespace: app}}
spec:
  selector: app == 'db'
  types: [Ingress]
  ingress:
    - action: Log
      protocol: UDP
      destination: {{ports: [{port}]}}
    - action: Allow
      protocol: UDP
      destination: {{ports: [{port}]}}
"
    )
}

fn lines(child: &mut Child) -> Receiver<String> {
    let (tx, rx) = channel();
    let err = child.stderr.take().unwrap();
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

/// Sends a UDP frame from the uplink's wire to the pod and says whether it came out of the pod's veth.
fn crosses(uplink: &PacketSocket, pod: &PacketSocket, port: u16) -> bool {
    let mut buf = [0u8; 2048];
    while pod.recv(&mut buf).is_some() {}
    let h = PacketHeader {
        src: "10.1.0.1".parse().unwrap(),
        dst: "192.168.5.2".parse().unwrap(),
        protocol: Protocol::UDP,
        src_port: 40000 + port,
        dst_port: port,
        ..PacketHeader::EMPTY
    };
    uplink.send(&FrameSpec::new(h).build()).unwrap();
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        if let Some(n) = pod.recv(&mut buf) {
            if n > 14 && buf[12..14] == [8, 0] {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

fn write(path: &Path, text: &str) {
    // Write then rename, so the watcher never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

#[test]
#[ignore = "needs root (network namespaces, XDP, AF_XDP): scripts/test runs it with --include-ignored as root"]
fn reloads_on_change_keeps_tables_on_a_bad_file_and_cleans_up_on_sigterm() {
    assert!(root(), "calxdp run needs root (network namespaces, XDP, AF_XDP)");
    let id = std::process::id();
    let (node, wire) = (format!("cxr{id}n"), format!("cxr{id}w"));
    let mut namespaces = Namespaces::default();
    namespaces.add(&node).unwrap();
    namespaces.add(&wire).unwrap();
    let topo =
        Topology { node, wire, dir: std::env::temp_dir().join(format!("calxdp-run-{id}")), _namespaces: namespaces };
    for (inner, outer) in [("eth0", "wup"), ("calipod", "wpod")] {
        ip(&["link", "add", inner, "netns", &topo.node, "type", "veth", "peer", "name", outer, "netns", &topo.wire]);
        ip(&["-n", &topo.node, "link", "set", inner, "up"]);
        ip(&["-n", &topo.wire, "link", "set", outer, "up"]);
    }
    let policies = topo.dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(topo.dir.join("node.yaml"), NODE).unwrap();
    write(&policies.join("db.yaml"), &policy(5432));

    let mut child = Command::new("ip")
        .args(["netns", "exec", &topo.node, env!("CARGO_BIN_EXE_calxdp"), "run", "--node"])
        .arg(topo.dir.join("node.yaml"))
        .arg("--policies")
        .arg(&policies)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let rx = lines(&mut child);
    let mut seen = Vec::new();
    wait_for(&rx, "calxdp: running", &mut seen);
    let (uplink, pod) =
        netns::run_in(&topo.wire, || (PacketSocket::open("wup").unwrap(), PacketSocket::open("wpod").unwrap()))
            .unwrap();
    assert!(crosses(&uplink, &pod, 5432), "the first tables allow 5432");
    let log = wait_for(&rx, "calico-packet:", &mut seen);
    assert!(log.contains("IN=eth0 OUT=calipod") && log.contains("DPT=5432"), "{log}");
    assert!(!crosses(&uplink, &pod, 6379), "the first tables deny 6379");

    // A bad file: reported with its position, and the running tables stay.
    write(&policies.join("broken.yaml"), "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: x, namespace: app}\nspec:\n  ingress: [{action: Allow, protocol: UDP, destination: {ports: [99999]}}]\n");
    let line = wait_for(&rx, "policy update rejected", &mut seen);
    assert!(line.contains("broken.yaml:5:") && line.contains("ports[0]"), "{line}");
    assert!(crosses(&uplink, &pod, 5432), "the running tables stay after a bad file");

    // A good change: published and enforced.
    std::fs::remove_file(policies.join("broken.yaml")).unwrap();
    wait_for(&rx, "published", &mut seen);
    write(&policies.join("db.yaml"), &policy(6379));
    wait_for(&rx, "tables v", &mut seen);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !crosses(&uplink, &pod, 6379) {
        assert!(Instant::now() < deadline, "the new tables never allowed 6379");
    }
    assert!(!crosses(&uplink, &pod, 5433), "a port neither version allows stays denied");

    // SIGTERM: a clean stop, XDP detached and the tap gone.
    let pid = child.id().to_string();
    Command::new("sh").args(["-c", &format!("kill -TERM {pid}")]).status().unwrap();
    let status = child.wait().unwrap();
    wait_for(&rx, "stopped; XDP detached", &mut seen);
    assert!(status.success(), "{status:?}");
    let links = Command::new("ip").args(["-n", &topo.node, "link", "show"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("xdp"), "an XDP program is still attached:\n{links}");
    assert!(!links.contains("calxdp-host"), "the tap is still there:\n{links}");
}
