//! The admin API of `calxdp run` (root, network namespaces with this process's id in their names): a
//! policy change made on disk shows in `status` (the new version, its compile time, when every worker
//! enforced it), in `explain` (the same flow first denied, then allowed, each naming the rule of the
//! policy), in `rules` and in the metrics (the enforcement histogram, checked by promtool); SIGINT removes
//! the socket.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use calxdp_dataplane::sys::netns;
use serde_json::Value;

use common::{json, port_drops, promtool_check, sample, Node, BIN};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The namespaces of one run, deleted on drop (with their veths).
struct Topology {
    names: Vec<String>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Every reason's drops, summed over the ports and the unattributed, equal the node-wide count of the same
/// answer (no port of this node has been released, so every row is shown).
fn drops_add_up(status: &Value) {
    for d in status["drops"].as_array().unwrap() {
        let reason = d["reason"].as_str().unwrap();
        let by_port: u64 = status["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| port_drops(status, p["name"].as_str().unwrap(), reason))
            .sum();
        let unattributed: u64 = status["unattributed_drops"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|u| u["reason"] == reason)
            .map(|u| u["count"].as_u64().unwrap())
            .sum();
        assert_eq!(by_port + unattributed, d["count"].as_u64().unwrap(), "{reason}: {status}");
    }
}

/// The metrics at `addr`, scraped from namespace `ns` (where the node listens).
fn scrape_in(ns: &str, addr: &str) -> String {
    let addr = addr.to_string();
    netns::run_in(ns, move || common::scrape(&addr)).unwrap()
}

fn tcp_from(ns: &str, to: &'static str) -> bool {
    netns::run_in(ns, move || {
        let to: SocketAddr = to.parse().unwrap();
        let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(1)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 2];
        s.write_all(b"hi").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"hi"
    })
    .unwrap_or(false)
}

const NODE_YAML: &str = "name: n1
interfaces:
  - {name: up0, ips: [10.77.0.10/24], gateway: 10.77.0.1}
namespaces:
  - {name: app, labels: {}}
workloads:
  - {name: a, namespace: app, interface: calia, ips: [10.78.0.1], labels: {app: a}}
  - {name: b, namespace: app, interface: calib, ips: [10.78.0.2], labels: {app: b}}
";

fn policy(action: &str) -> String {
    format!(
        "apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {{name: b-ingress, namespace: app}}
spec:
  selector: app == 'b'
  types: [Ingress]
  ingress:
    - action: {action}
      protocol: TCP
      destination: {{ports: [8080]}}
"
    )
}

#[test]
#[ignore = "needs root (network namespaces, XDP, AF_XDP): scripts/test runs it with --include-ignored as root"]
fn run_serves_status_explain_rules_and_metrics_that_follow_a_policy_change() {
    if let Some(why) = calxdp::parity::live_level::unavailable() {
        panic!("cannot run: {why}");
    }
    assert!(Command::new("ethtool").arg("-V").output().is_ok(), "the test needs ethtool (apt-get install ethtool)");
    let pid = std::process::id();
    let (n, e, a, b) = (format!("cxa{pid}n"), format!("cxa{pid}e"), format!("cxa{pid}a"), format!("cxa{pid}b"));
    let _topo = Topology { names: vec![n.clone(), e.clone(), a.clone(), b.clone()] };
    for ns in [&n, &e, &a, &b] {
        ip(&["netns", "add", ns]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        netns::run_in(ns, || {
            let _ = std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1");
            let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
        })
        .unwrap();
    }
    ip(&["link", "add", "up0", "netns", &n, "type", "veth", "peer", "name", "eth0", "netns", &e]);
    ip(&["-n", &n, "link", "set", "up0", "up"]);
    ip(&["-n", &e, "addr", "add", "10.77.0.1/24", "dev", "eth0"]);
    ip(&["-n", &e, "link", "set", "eth0", "up"]);
    for (ns, iface, addr) in [(&a, "calia", "10.78.0.1"), (&b, "calib", "10.78.0.2")] {
        ip(&["link", "add", iface, "netns", &n, "type", "veth", "peer", "name", "eth0", "netns", ns]);
        ip(&["-n", &n, "link", "set", iface, "up"]);
        ip(&["-n", ns, "addr", "add", &format!("{addr}/32"), "dev", "eth0"]);
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
        ip(&["-n", ns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"]);
        ip(&["-n", ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"]);
        let out =
            Command::new("ip").args(["netns", "exec", ns, "ethtool", "-K", "eth0", "tx", "off"]).output().unwrap();
        assert!(out.status.success());
    }
    // Pod b echoes on 8080 until the test ends.
    let stop = Arc::new(AtomicBool::new(false));
    let (server_stop, bns) = (stop.clone(), b.clone());
    let server = std::thread::spawn(move || {
        netns::enter(&bns).unwrap();
        let l = TcpListener::bind("0.0.0.0:8080").unwrap();
        l.set_nonblocking(true).unwrap();
        while !server_stop.load(Ordering::Relaxed) {
            if let Ok((mut c, _)) = l.accept() {
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
                let mut buf = [0u8; 2];
                if c.read_exact(&mut buf).is_ok() {
                    let _ = c.write_all(&buf);
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });

    let dir = std::env::temp_dir().join(format!("calxdp-admin-run-{pid}"));
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(dir.join("node.yaml"), NODE_YAML).unwrap();
    std::fs::write(policies.join("b.yaml"), policy("Deny")).unwrap();
    let socket = PathBuf::from(format!("/run/calxdp/admin-run-test-{pid}.sock"));

    let node = Node::start(
        Command::new("ip")
            .args(["netns", "exec", &n, BIN, "run", "--metrics", "127.0.0.1:0", "--node"])
            .arg(dir.join("node.yaml"))
            .arg("--policies")
            .arg(&policies)
            .arg("--admin")
            .arg(&socket)
            .stderr(Stdio::piped()),
        common::stderr,
    );
    let seen = node.wait_for("calxdp: running", Duration::from_secs(60));
    let metrics = seen
        .iter()
        .find_map(|l| l.split("metrics on http://").nth(1).and_then(|r| r.split("/metrics").next()))
        .expect("the metrics address")
        .to_string();

    // Denied, and explain says by which rule.
    let denied = json(&socket, &["explain", "--from", "app/a", "--to", "app/b:8080/tcp"]);
    assert_eq!(denied["verdict"], "drop", "{denied}");
    let d = denied["deciding"].as_str().unwrap();
    assert!(d.contains("NetworkPolicy/app/b-ingress") && d.contains("Deny"), "{denied}");
    assert!(!tcp_from(&a, "10.78.0.2:8080"), "a reached b through a Deny");
    let status = json(&socket, &["status"]);
    assert_eq!(status["tables"]["version"], 1, "{status}");
    assert!(status["last_update"].is_null(), "{status}");

    // Those SYNs were dropped by the policy, counted on the port they arrived on (a's veth) and nowhere
    // else, in status and in the metrics alike. Workers publish their counters every 100 ms.
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let s = json(&socket, &["status"]);
        if port_drops(&s, "calia", "policy_deny") > 0 {
            break s;
        }
        assert!(Instant::now() < deadline, "no policy_deny drop counted on calia: {s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let denied_on_a = port_drops(&status, "calia", "policy_deny");
    assert_eq!(port_drops(&status, "calib", "policy_deny"), 0, "{status}");
    assert_eq!(port_drops(&status, "up0", "policy_deny"), 0, "{status}");
    drops_add_up(&status);
    let calia = status["ports"].as_array().unwrap().iter().find(|p| p["name"] == "calia").unwrap();
    assert!(calia["dropped"].as_u64().unwrap() >= denied_on_a, "{calia}");
    let text = Command::new(BIN).args(["status", "--admin"]).arg(&socket).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines().any(|l| l.contains("calia") && l.contains("policy_deny")),
        "the table shows calia's policy drops: {text}"
    );
    let body = scrape_in(&n, &metrics);
    let series = "calxdp_drops_total{port=\"calia\",reason=\"policy_deny\"}";
    let scraped = sample(&body, series).unwrap_or_else(|| panic!("no {series}: {body}"));
    assert!(scraped >= denied_on_a as f64, "{series} {scraped} < status's {denied_on_a}");
    assert!(sample(&body, "calxdp_drops_total{port=\"calib\",reason=\"policy_deny\"}").is_none(), "{body}");
    promtool_check(&body);

    // The change on disk is published; status tells when, how long it took, and that every worker has it.
    std::fs::write(policies.join("b.yaml"), policy("Allow")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let s = json(&socket, &["status"]);
        if s["tables"]["version"] == 2 {
            break s;
        }
        assert!(Instant::now() < deadline, "the update was not published: {s}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let u = &status["last_update"];
    assert_eq!(u["version"], 2, "{status}");
    assert!(u["compile_ms"].as_f64().unwrap() > 0.0, "{status}");
    let enforced = u["enforced_ms"].as_f64().expect("every worker took the new tables");
    assert!(enforced >= u["compile_ms"].as_f64().unwrap(), "{status}");

    let text = Command::new(BIN).args(["status", "--admin"]).arg(&socket).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("last policy update: v2") && text.contains("enforced on every worker after"), "{text}");
    eprintln!("{text}");
    let allowed = json(&socket, &["explain", "--from", "10.78.0.1", "--to", "10.78.0.2:8080/tcp"]);
    assert_eq!(allowed["verdict"], "allow", "{allowed}");
    let d = allowed["deciding"].as_str().unwrap();
    assert!(d.contains("NetworkPolicy/app/b-ingress") && d.contains("Allow"), "{allowed}");
    assert!(tcp_from(&a, "10.78.0.2:8080"), "a did not reach b once allowed");
    let rules = json(&socket, &["rules"]);
    let hit = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["policy"] == "NetworkPolicy/app/b-ingress" && r["action"] == "Allow")
        .unwrap_or_else(|| panic!("{rules}"))["packets"]
        .as_u64()
        .unwrap();
    assert!(hit >= 1, "{rules}");
    let flows = json(&socket, &["conntrack", "list", "--dst", "10.78.0.2"]);
    assert!(flows["entries"].as_array().unwrap().iter().any(|f| f["dport"] == 8080), "{flows}");

    // The metrics, scraped where the node listens (its namespace).
    let body = scrape_in(&n, &metrics);
    assert!(body.contains("calxdp_policy_enforce_seconds_count 1"), "{body}");
    assert!(body.contains("calxdp_table_publications_total 1"), "{body}");
    assert!(body.contains("felix_active_local_policies 1"), "{body}");
    assert_eq!(sample(&body, "felix_int_dataplane_apply_time_seconds_count"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "felix_int_dataplane_failures"), Some(0.0), "{body}");
    assert_eq!(sample(&body, "felix_cluster_num_workload_endpoints"), Some(2.0), "{body}");
    assert_eq!(sample(&body, "felix_active_local_endpoints"), Some(2.0), "{body}");
    promtool_check(&body);

    // SIGINT: the node stops and takes its socket with it.
    let mut node = node;
    node.interrupt(Duration::from_secs(30));
    node.wait_for("calxdp: stopped", Duration::from_secs(5));
    assert!(!socket.exists(), "the admin socket was left behind");
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    let _ = std::fs::remove_dir_all(&dir);
}
