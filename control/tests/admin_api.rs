//! The admin API end to end, against `calxdp demo --keep` (root, network namespaces): every command of the
//! CLI asks the running node and is checked for real content (a flow sent from a pod is listed by
//! conntrack, traced, counted by its rule; explain names the policy deciding a dropped and an allowed
//! flow), the metrics pass `promtool check metrics`, bad clients get errors while the node keeps
//! forwarding, and SIGINT leaves nothing behind. One test: the demo's namespaces have fixed names.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use common::{cli, json, promtool_check, scrape, Node, BIN};

/// One raw request line on the socket and the answer line (empty if the node closed the connection).
fn raw(socket: &Path, line: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(line);
    let mut answer = String::new();
    let _ = BufReader::new(s).read_line(&mut answer);
    answer
}

/// A TCP exchange from a pod's namespace (the demo's echo servers answer); returns the source port used.
fn tcp_from(ns: &'static str, to: &'static str) -> Option<u16> {
    calxdp_dataplane::sys::netns::run_in(ns, move || {
        let to: SocketAddr = to.parse().unwrap();
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"hello").ok()?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).ok()?;
        (&buf == b"hello").then(|| s.local_addr().ok().map(|a| a.port())).flatten()
    })
    .ok()
    .flatten()
}

fn rule_packets(rules: &Value, policy: &str, direction: &str, index: u64) -> u64 {
    rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["policy"] == policy && r["direction"] == direction && r["index"] == index)
        .unwrap_or_else(|| panic!("no rule {policy} {direction} {index} in {rules}"))["packets"]
        .as_u64()
        .unwrap()
}

#[test]
#[ignore = "needs root (network namespaces, XDP, AF_XDP): scripts/test runs it with --include-ignored as root"]
fn a_running_demo_answers_every_admin_command_and_leaves_nothing_behind() {
    if let Some(why) = calxdp::parity::live_level::unavailable() {
        panic!("cannot run: {why}");
    }
    for tool in ["ethtool", "ping"] {
        if Command::new(tool).arg("-V").output().is_err() {
            panic!("the demo needs {tool} (apt-get install ethtool iputils-ping)");
        }
    }
    let socket = PathBuf::from(format!("/run/calxdp/admin-test-{}.sock", std::process::id()));
    let demo = Node::start(
        Command::new(BIN)
            .args(["demo", "--keep", "--metrics", "127.0.0.1:0", "--admin"])
            .arg(&socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
        common::stdout,
    );
    let seen = demo.wait_for("kept running", Duration::from_secs(180));
    let table = seen.join("\n");
    // The why column names every stage that decided: the pod's egress, then the other pod's ingress.
    let row2 = seen.iter().find(|l| l.starts_with("2 ")).expect("row 2 of the table");
    assert!(
        row2.contains("shop/frontend egress") && row2.contains("then") && row2.contains("shop/web ingress"),
        "{row2}"
    );
    assert!(!table.lines().any(|l| l.contains(" NO ")), "a demo flow did not behave as Calico would:\n{table}");
    let kept = seen.last().unwrap();
    assert!(kept.contains(&socket.display().to_string()), "{kept}");
    let metrics = kept.split("http://").nth(1).and_then(|r| r.split("/metrics").next()).expect("metrics address");
    let metrics = metrics.to_string();

    // The socket is root's alone.
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin socket mode {mode:o}");

    // status
    let status = json(&socket, &["status"]);
    assert!(status["tables"]["version"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(status["tables"]["local_endpoints"], 4, "{status}");
    assert_eq!(status["workers"].as_array().unwrap().len(), 1, "{status}");
    let ports = status["ports"].as_array().unwrap();
    for p in ["eth0", "caliweb", "califront", "calidns"] {
        let port = ports.iter().find(|x| x["name"] == p).unwrap_or_else(|| panic!("no port {p}: {status}"));
        assert_eq!(port["up"], true, "{port}");
        assert!(port["rx"].as_u64().unwrap() > 0, "{port}");
    }
    assert!(status["conntrack"]["capacity"].as_u64().unwrap() > 0);
    let (ok, text, _) = cli(&socket, &["status"]);
    assert!(ok && text.contains("tables v") && text.contains("caliweb"), "{text}");

    // rules before, and a trace waiting for the next frames.
    let before = json(&socket, &["rules"]);
    let web_ingress = "KubernetesNetworkPolicy/shop/web-ingress";
    let hits_before = rule_packets(&before, web_ingress, "ingress", 0);
    let trace = Command::new(BIN)
        .args(["trace", "--count", "6", "--timeout", "20", "--output", "json", "--admin"])
        .arg(&socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let port = tcp_from("cxdemo-front", "192.168.1.10:8080").expect("frontend reaches web:8080");
    let trace = trace.wait_with_output().unwrap();
    assert!(trace.status.success());
    let trace: Value = serde_json::from_slice(&trace.stdout).unwrap();
    let frames = trace["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 6, "{trace}");
    let syn = format!("192.168.1.11:{port} -> 192.168.1.10:8080");
    let first =
        frames.iter().find(|f| f["flow"] == syn.as_str()).unwrap_or_else(|| panic!("{syn} not traced: {trace}"));
    let stages: Vec<&str> = first["stages"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(first["verdict"], "allow");
    assert!(stages.iter().any(|s| s.contains(web_ingress)), "{stages:?}");

    // conntrack list shows the flow just sent.
    let flows =
        json(&socket, &["conntrack", "list", "--src", "192.168.1.11", "--dst", "192.168.1.10", "--proto", "tcp"]);
    let entries = flows["entries"].as_array().unwrap();
    assert!(entries.iter().any(|e| e["sport"] == port && e["dport"] == 8080 && e["replied"] == true), "{flows}");
    assert!(entries.iter().all(|e| e["src"] == "192.168.1.11" && e["protocol"] == "TCP"), "{flows}");
    let (ok, text, _) = cli(&socket, &["conntrack", "list", "--proto", "tcp"]);
    assert!(ok && text.contains(&format!("sport={port} dport=8080")), "{text}");

    // rules: the NetworkPolicy's rule counted the new flow.
    let after = json(&socket, &["rules"]);
    assert!(rule_packets(&after, web_ingress, "ingress", 0) > hits_before, "{before}\n{after}");
    let (ok, text, _) = cli(&socket, &["rules"]);
    assert!(ok && text.contains(web_ingress) && text.contains("pkts"), "{text}");

    // explain: a dropped flow and an allowed one, each naming the deciding policy; nothing is sent.
    let frames_before = json(&socket, &["status"])["frames"].as_u64().unwrap();
    // Were a packet sent, the allowed flow's rule would count it (the node's own frame counter is no
    // witness: the pods' neighbour discovery and the like arrive at any time).
    let hits_before_explain = rule_packets(&json(&socket, &["rules"]), web_ingress, "ingress", 0);
    let dropped = json(&socket, &["explain", "--from", "10.0.0.1", "--to", "192.168.1.10:9090/tcp"]);
    assert_eq!(dropped["verdict"], "drop", "{dropped}");
    let deciding = dropped["deciding"].as_str().unwrap();
    assert!(
        deciding.contains("GlobalNetworkPolicy/forward-only-http-to-pods") && deciding.contains("Deny"),
        "{dropped}"
    );
    let allowed = json(&socket, &["explain", "--from", "shop/frontend", "--to", "shop/web:8080/tcp"]);
    assert_eq!(allowed["verdict"], "allow", "{allowed}");
    assert!(allowed["deciding"].as_str().unwrap().contains(web_ingress), "{allowed}");
    let stages = allowed["stages"].as_array().unwrap();
    assert!(stages.len() >= 2 && stages[0].as_str().unwrap().contains("shop/frontend egress"), "{allowed}");
    let not_peer = json(&socket, &["explain", "--from", "kube-system/coredns", "--to", "shop/web:8080/tcp"]);
    assert_eq!(not_peer["verdict"], "drop", "{not_peer}");
    let (ok, text, _) = cli(&socket, &["explain", "--from", "10.0.0.1", "--to", "10.96.0.20:80/tcp"]);
    assert!(ok && text.contains("service NAT: to 192.168.1.10:8080") && text.contains("verdict: ALLOW"), "{text}");
    let (ok, _, err) = cli(&socket, &["explain", "--from", "nowhere/nobody", "--to", "shop/web:8080/tcp"]);
    assert!(!ok && err.contains("no pod nowhere/nobody"), "{err}");
    let hits_after_explain = rule_packets(&json(&socket, &["rules"]), web_ingress, "ingress", 0);
    assert_eq!(hits_after_explain, hits_before_explain, "explain sent a packet");

    // Prometheus: the format as promtool reads it, and real values.
    let body = scrape(&metrics);
    assert!(body.contains("felix_active_local_endpoints 4"), "{body}");
    assert!(
        body.lines().any(|l| l.starts_with("calxdp_drops_total{port=") && l.contains("reason=\"policy_deny\"")),
        "{body}"
    );
    assert!(body.contains("calxdp_port_rx_frames_total{port=\"caliweb\"}"), "{body}");
    // The kernel's drops before the AF_XDP receive rings, by reason (the node's sockets, read by the workers).
    for reason in ["fill_ring_empty", "rx_ring_full", "all"] {
        assert!(body.contains(&format!("calxdp_xsk_rx_dropped_total{{reason=\"{reason}\"}} ")), "{body}");
    }
    assert!(body.contains("felix_active_local_selectors "), "{body}");
    promtool_check(&body);
    let (answer, _) = common::http_get(&metrics, "/other");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");

    // Bad requests get an error or are dropped; the node keeps forwarding meanwhile.
    assert!(raw(&socket, b"garbage\n").contains("bad request"));
    assert!(raw(&socket, b"{\"command\":\"launch\"}\n").contains("unknown variant"));
    assert!(raw(&socket, b"{\"command\":\"status\",\"extra\":1}\n").contains("unknown field"));
    assert!(raw(&socket, b"{\"command\":\"conntrack_flush\",\"src\":\"10.0.0.1\"}\n").contains("unknown field"));
    assert!(raw(&socket, b"{\"command\":\"trace\",\"count\":0}\n").contains("count must be"));
    let mut huge = vec![b'x'; 1 << 20];
    huge.push(b'\n');
    assert!(raw(&socket, &huge).contains("longer than"));
    let mut lazy = UnixStream::connect(&socket).unwrap();
    lazy.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    for _ in 0..2000 {
        if lazy.write_all(b"{\"command\":\"rules\"}\n").is_err() {
            break;
        }
    }
    let mut idle: Vec<UnixStream> = (0..40).filter_map(|_| UnixStream::connect(&socket).ok()).collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(raw(&socket, b"{\"command\":\"status\"}\n").contains("too many clients"));
    assert!(tcp_from("cxdemo-front", "192.168.1.10:8080").is_some(), "the node stopped forwarding");
    // Clients over the limit are told so; once they go, the node answers again.
    idle.truncate(0);
    drop(lazy);
    std::thread::sleep(Duration::from_millis(300));
    assert!(json(&socket, &["status"])["frames"].as_u64().unwrap() > frames_before);

    // conntrack flush by filter.
    let flushed = json(&socket, &["conntrack", "flush", "--src", "192.168.1.11", "--proto", "tcp"]);
    assert!(flushed["flushed"].as_u64().unwrap() >= 1, "{flushed}");
    let flows = json(&socket, &["conntrack", "list", "--src", "192.168.1.11", "--proto", "tcp"]);
    assert_eq!(flows["entries"].as_array().unwrap().len(), 0, "{flows}");

    // SIGINT: the demo tears down; nothing is left.
    let mut demo = demo;
    demo.interrupt(Duration::from_secs(60));
    let rest = demo.wait_for("torn down", Duration::from_secs(5));
    assert!(rest.iter().any(|l| l.contains("torn down")));
    assert!(!socket.exists(), "the admin socket was left behind");
    assert!(TcpStream::connect(&metrics).is_err(), "the metrics port is still open");
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(!left.contains("cxdemo-"), "namespaces left behind: {left}");
    let tap = Command::new("ip").args(["link", "show", "calxdp-host"]).output().unwrap();
    assert!(!tap.status.success(), "the host tap was left behind");
}
