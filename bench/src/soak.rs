//! `calxdp-bench soak [--quick | --minutes N]` (root): a node that runs long enough for its state to turn
//! over many times, under ordinary churn.
//!
//! ```text
//!   cxsoak-ext: ext0 ──veth── eth0 :cxsoak-node: calisoak ──veth── eth0 :cxsoak-pod
//!   (10.9.0.1; new UDP flows,      (calxdp run, conntrack of          (192.168.9.10: UDP sink,
//!    denied frames, a TCP client)   16 384 entries, UDP timeout 2 s)   TCP echo server)
//! ```
//!
//! The generator sends new allowed UDP flows (each frame its own flow) at 5 000 a second, so the table
//! turns over many times, and a steady share of frames policy denies; a TCP connection exchanges data the
//! whole time; half-way, `calxdp run` is stopped and started again. The last line is the report:
//! `soak_s=… flows_created=… ct_capacity=… peak_entries=… full_drops=… allowed_lost=… denied_passed=…
//! tcp_long_ok=… tcp_survived_restart=… rss_growth_kib=…` (allowed frames lost outside the restart window;
//! the process's RSS growth from the 10th second to the end).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use calxdp::live::{LiveOptions, Namespaces};
use calxdp::run::RunReport;
use calxdp_dataplane::sys::netns;
use calxdp_dataplane::sys::packet::PacketSocket;
use calxdp_dataplane::wire::FrameSpec;
use calxdp_policy::packet::PacketHeader;
use calxdp_policy::resource::Protocol;

const NODE: &str = "cxsoak-node";
const EXT: &str = "cxsoak-ext";
const POD: &str = "cxsoak-pod";
const CAPACITY: usize = 16_384;
const FLOWS_PER_SECOND: u64 = 5_000;
/// One frame in this many is one policy denies.
const DENIED_EVERY: u64 = 10;
const UDP_PORT: u16 = 7000;
const DENIED_PORT: u16 = 9999;
const TCP_PORT: u16 = 5001;
const NODE_MAC: &str = "02:5a:00:00:00:0a";
const EXT_MAC: [u8; 6] = [0x02, 0x5a, 0, 0, 0, 0x01];
const POD_MAC: &str = "02:5a:00:00:01:02";

const NODE_FILE: &str = "name: soak
interfaces:
  - {name: eth0, ips: [10.9.0.10/24], gateway: 10.9.0.1, gatewayMac: \"02:5a:00:00:00:01\"}
namespaces:
  - {name: app, labels: {}}
workloads:
  - {name: sink, namespace: app, interface: calisoak, ips: [192.168.9.10], labels: {app: sink}, mac: \"02:5a:00:00:01:02\"}
config:
  bpfMapSizeConntrack: 16384
  bpfConntrackTimeouts: {UDPTimeout: 2s, UDPStreamTimeout: 5s}
";

const POLICY: &str = "apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: sink, namespace: app}
spec:
  selector: app == 'sink'
  types: [Ingress, Egress]
  ingress:
    - {action: Deny, protocol: UDP, destination: {ports: [9999]}}
    - {action: Allow, protocol: UDP, destination: {ports: [7000]}}
    - {action: Allow, protocol: TCP, destination: {ports: [5001]}}
  egress:
    - {action: Allow}
";

fn ip(args: &[&str]) -> Result<(), String> {
    calxdp::live::ip(args).map_err(|e| e.to_string())
}

fn exec(ns: &str, cmd: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cmd[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`{}` in {ns} failed: {}", cmd.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn topology() -> Result<Namespaces, String> {
    for ns in [NODE, EXT, POD] {
        let _ = ip(&["netns", "del", ns]);
    }
    let mut ns = Namespaces::default();
    for n in [NODE, EXT, POD] {
        ns.add(n).map_err(|e| e.to_string())?;
    }
    ip(&["link", "add", "eth0", "netns", NODE, "type", "veth", "peer", "name", "ext0", "netns", EXT])?;
    ip(&["link", "add", "calisoak", "netns", NODE, "type", "veth", "peer", "name", "eth0", "netns", POD])?;
    ip(&["-n", NODE, "link", "set", "eth0", "address", NODE_MAC, "up"])?;
    ip(&["-n", NODE, "link", "set", "calisoak", "up"])?;
    let ext_mac = EXT_MAC.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    ip(&["-n", EXT, "link", "set", "ext0", "address", &ext_mac, "up"])?;
    ip(&["-n", EXT, "addr", "add", "10.9.0.1/24", "dev", "ext0"])?;
    ip(&["-n", EXT, "route", "add", "192.168.9.0/24", "via", "10.9.0.10"])?;
    ip(&["-n", EXT, "neigh", "replace", "10.9.0.10", "lladdr", NODE_MAC, "dev", "ext0"])?;
    ip(&["-n", POD, "link", "set", "eth0", "address", POD_MAC, "up"])?;
    ip(&["-n", POD, "addr", "add", "192.168.9.10/32", "dev", "eth0"])?;
    ip(&["-n", POD, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"])?;
    ip(&["-n", POD, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"])?;
    for (n, i) in [(EXT, "ext0"), (POD, "eth0")] {
        exec(n, &["ethtool", "-K", i, "tx", "off"]).map_err(|e| format!("{e} (apt-get install ethtool)"))?;
    }
    Ok(ns)
}

/// The allowed frame number `i`: a flow of its own (source address and port from `i`).
fn allowed_frame(i: u64) -> Vec<u8> {
    frame(i, UDP_PORT, 128)
}

fn denied_frame(i: u64) -> Vec<u8> {
    frame(i, DENIED_PORT, 129)
}

fn frame(i: u64, dst_port: u16, net: u8) -> Vec<u8> {
    let host = (i / 50_000) as u32;
    let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, net, 0, 0)) + host);
    let mut spec = FrameSpec::new(PacketHeader {
        src: src.into(),
        dst: "192.168.9.10".parse().expect("an address"),
        protocol: Protocol::UDP,
        src_port: 10_000 + (i % 50_000) as u16,
        dst_port,
        ..PacketHeader::EMPTY
    });
    spec.src_mac = EXT_MAC;
    spec.dst_mac = [0x02, 0x5a, 0, 0, 0, 0x0a];
    spec.build()
}

/// The frame number of a UDP frame that reached the pod, and whether it was a denied one.
fn number(frame: &[u8]) -> Option<(u64, bool)> {
    let p = calxdp_dataplane::wire::parse(frame).ok()?;
    let h = p.header;
    if h.protocol != Protocol::UDP {
        return None;
    }
    let std::net::IpAddr::V4(src) = h.src else { return None };
    let o = src.octets();
    let denied = match (o[0], o[1], h.dst_port) {
        (10, 128, UDP_PORT) => false,
        (10, 129, DENIED_PORT) => true,
        _ => return None,
    };
    let host = u64::from(u32::from(src) - u32::from(Ipv4Addr::new(10, o[1], 0, 0)));
    Some((host * 50_000 + u64::from(h.src_port - 10_000), denied))
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// One `calxdp run`, on its own thread inside the node namespace.
struct Run {
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
    handle: JoinHandle<Result<RunReport, String>>,
}

fn start(dir: &std::path::Path) -> Result<Run, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    let (s, r, d) = (stop.clone(), ready.clone(), dir.to_path_buf());
    let handle = std::thread::spawn(move || {
        netns::enter(NODE).map_err(|e| format!("namespace {NODE}: {e}"))?;
        let opts = LiveOptions { log_rules: false, ..LiveOptions::default() };
        calxdp::run::run(&d.join("node.yaml"), &d.join("policies"), &opts, s, false, Some(r)).map_err(|e| e.to_string())
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.load(Ordering::Acquire) {
        if handle.is_finished() {
            return Err(handle.join().map_err(|_| "calxdp run panicked")?.err().unwrap_or_default());
        }
        if Instant::now() > deadline {
            return Err("calxdp run did not start within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(Run { stop, ready, handle })
}

impl Run {
    fn finish(self) -> Result<RunReport, String> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = &self.ready;
        self.handle.join().map_err(|_| "calxdp run panicked".to_string())?
    }
}

/// The TCP conversation's record: when each echo came back.
#[derive(Default)]
struct Conversation {
    echoes: Vec<Instant>,
    error: Option<String>,
}

pub fn run(quick: bool, minutes: Option<u64>) -> Result<(), String> {
    if !calxdp::live::is_root() {
        return Err("the soak needs root (network namespaces, XDP, AF_XDP)".into());
    }
    let secs = match (quick, minutes) {
        (_, Some(m)) => m * 60,
        _ => 60,
    };
    let total = Duration::from_secs(secs);
    let _ns = topology()?;
    let dir: PathBuf = std::env::temp_dir().join(format!("calxdp-soak-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("policies")).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("node.yaml"), NODE_FILE).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("policies/sink.yaml"), POLICY).map_err(|e| e.to_string())?;
    let result = soak(&dir, total);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn soak(dir: &std::path::Path, total: Duration) -> Result<(), String> {
    let frames_max = (total.as_secs() + 5) * FLOWS_PER_SECOND;
    let received: Arc<Vec<AtomicU64>> = Arc::new((0..frames_max.div_ceil(64)).map(|_| AtomicU64::new(0)).collect());
    let denied_arrived = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));

    let mut first = Some(start(dir)?);
    let began = Instant::now();
    eprintln!("soak: calxdp running; {}s of churn", total.as_secs());

    // The pod: a UDP sink (so the kernel sends no port-unreachables), a TCP echo server, and a capture of
    // what arrives.
    let pod_threads = {
        let done2 = done.clone();
        let (done, received, denied) = (done.clone(), received.clone(), denied_arrived.clone());
        let capture = std::thread::spawn(move || -> Result<(), String> {
            netns::enter(POD).map_err(|e| e.to_string())?;
            let sock = PacketSocket::open("eth0").map_err(|e| e.to_string())?;
            let _ = sock.set_receive_buffer(64 << 20);
            let _sink = UdpSocket::bind(("0.0.0.0", UDP_PORT)).map_err(|e| e.to_string())?;
            let mut buf = [0u8; 2048];
            while !done.load(Ordering::Relaxed) {
                match sock.recv(&mut buf) {
                    Some(n) => match number(&buf[..n]) {
                        Some((i, false)) if (i / 64) < received.len() as u64 => {
                            received[(i / 64) as usize].fetch_or(1 << (i % 64), Ordering::Relaxed);
                        }
                        Some((_, true)) => {
                            denied.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    },
                    None => std::thread::sleep(Duration::from_micros(200)),
                }
            }
            Ok(())
        });
        let server = std::thread::spawn(move || -> Result<(), String> {
            netns::enter(POD).map_err(|e| e.to_string())?;
            let l = TcpListener::bind(("0.0.0.0", TCP_PORT)).map_err(|e| e.to_string())?;
            let (mut c, _) = l.accept().map_err(|e| e.to_string())?;
            c.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
            let mut buf = [0u8; 64];
            while !done2.load(Ordering::Relaxed) {
                match c.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => c.write_all(&buf[..n]).map_err(|e| e.to_string())?,
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        });
        (capture, server)
    };
    std::thread::sleep(Duration::from_millis(200));

    // The long-lived TCP connection, from outside.
    let conversation = Arc::new(Mutex::new(Conversation::default()));
    let client = {
        let (done, conv) = (done.clone(), conversation.clone());
        std::thread::spawn(move || {
            let fail = |conv: &Mutex<Conversation>, e: String| {
                if let Ok(mut c) = conv.lock() {
                    c.error.get_or_insert(e);
                }
            };
            if let Err(e) = netns::enter(EXT) {
                return fail(&conv, e.to_string());
            }
            let to = SocketAddr::from(([192, 168, 9, 10], TCP_PORT));
            let mut s = match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
                Ok(s) => s,
                Err(e) => return fail(&conv, format!("connect: {e}")),
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            let _ = s.set_nodelay(true);
            let mut buf = [0u8; 64];
            let mut k = 0u64;
            while !done.load(Ordering::Relaxed) {
                let msg = [(k % 251) as u8; 64];
                if let Err(e) = s.write_all(&msg) {
                    return fail(&conv, format!("write: {e}"));
                }
                if let Err(e) = s.read_exact(&mut buf) {
                    return fail(&conv, format!("read: {e}"));
                }
                if buf != msg {
                    return fail(&conv, "an echo came back changed".into());
                }
                if let Ok(mut c) = conv.lock() {
                    c.echoes.push(Instant::now());
                }
                k += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // The generator: new allowed flows and denied frames, paced in 2 ms ticks.
    let sent = Arc::new(AtomicU64::new(0));
    let generator = {
        let (done, sent) = (done.clone(), sent.clone());
        std::thread::spawn(move || -> Result<(), String> {
            netns::enter(EXT).map_err(|e| e.to_string())?;
            let sock = PacketSocket::open("ext0").map_err(|e| e.to_string())?;
            let start = Instant::now();
            let (mut i, mut d) = (0u64, 0u64);
            while !done.load(Ordering::Relaxed) && i < frames_max {
                let due = start.elapsed().as_micros() as u64 * FLOWS_PER_SECOND / 1_000_000;
                while i < due && i < frames_max {
                    let _ = sock.send(&allowed_frame(i));
                    i += 1;
                    if i % DENIED_EVERY == 0 {
                        let _ = sock.send(&denied_frame(d));
                        d += 1;
                    }
                    sent.store(i, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(())
        })
    };

    // Run, restart half-way, run on.
    let mut reports = Vec::new();
    let mut rss_at_10 = None;
    let mut window = (0u64, 0u64);
    let mut restart_at = (began, began);
    let mut second = None;
    while began.elapsed() < total {
        std::thread::sleep(Duration::from_millis(100));
        let t = began.elapsed();
        if rss_at_10.is_none() && t >= Duration::from_secs(10) {
            rss_at_10 = Some(rss_kib());
            eprintln!("soak: rss at 10 s {} KiB", rss_at_10.unwrap_or(0));
        }
        if let Some(run) = first.take_if(|_| t >= total / 2) {
            eprintln!("soak: rss before the restart {} KiB", rss_kib());
            // Frames sent shortly before the stop may still be in the node when it stops.
            window.0 = sent.load(Ordering::Relaxed).saturating_sub(FLOWS_PER_SECOND / 10);
            let stopped_at = Instant::now();
            reports.push(run.finish()?);
            second = Some(start(dir)?);
            restart_at = (stopped_at, Instant::now());
            window.1 = sent.load(Ordering::Relaxed) + FLOWS_PER_SECOND / 5;
            eprintln!("soak: rss after the restart {} KiB", rss_kib());
            eprintln!(
                "soak: calxdp stopped and started again in {:.0} ms (frames {}..{} are the restart window)",
                restart_at.1.duration_since(restart_at.0).as_secs_f64() * 1e3,
                window.0,
                window.1
            );
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = generator.join();
    let _ = client.join();
    std::thread::sleep(Duration::from_millis(500));
    let rss_end = rss_kib();
    if let Some(run) = second.take().or(first.take()) {
        reports.push(run.finish()?);
    }
    let _ = pod_threads.0.join();
    let _ = pod_threads.1.join();

    let sent = sent.load(Ordering::Relaxed);
    let got = |i: u64| received[(i / 64) as usize].load(Ordering::Relaxed) & (1 << (i % 64)) != 0;
    let lost_frames: Vec<u64> = (0..sent).filter(|&i| !(window.0..window.1).contains(&i) && !got(i)).collect();
    let lost = lost_frames.len();
    if !lost_frames.is_empty() {
        eprintln!(
            "soak: allowed frames lost outside the restart window: {:?}",
            &lost_frames[..lost_frames.len().min(20)]
        );
    }
    let created: u64 = reports.iter().map(|r| r.flows.created).sum();
    let peak = reports.iter().map(|r| r.flows.peak).max().unwrap_or(0);
    let full: u64 = reports.iter().map(|r| r.flows.refused).sum();
    let early: u64 = reports.iter().map(|r| r.flows.early_dropped).sum();
    let expired: u64 = reports.iter().map(|r| r.flows.expired).sum();
    let conv = conversation.lock().map_err(|_| "the TCP client panicked")?;
    let before = conv.echoes.iter().filter(|t| **t < restart_at.0).count();
    let after = conv.echoes.iter().filter(|t| **t > restart_at.1).count();
    let longest_gap = conv.echoes.windows(2).map(|w| w[1].duration_since(w[0])).max().unwrap_or_default();
    let tcp_long_ok = conv.error.is_none() && before > 100;
    let tcp_survived = conv.error.is_none() && after > 100;
    eprintln!(
        "soak: {sent} allowed frames sent, {} arrived; {} denied sent, {} arrived; conntrack {created} created, \
         {expired} expired, {early} early-dropped, {full} refused; TCP {} echoes ({before} before the restart, \
         {after} after; longest stall {:.0} ms){}",
        (0..sent).filter(|&i| got(i)).count(),
        sent / DENIED_EVERY,
        denied_arrived.load(Ordering::Relaxed),
        conv.echoes.len(),
        longest_gap.as_secs_f64() * 1e3,
        conv.error.as_ref().map(|e| format!("; TCP error: {e}")).unwrap_or_default()
    );
    println!(
        "soak_s={} flows_created={created} ct_capacity={CAPACITY} peak_entries={peak} full_drops={full} \
         allowed_lost={lost} denied_passed={} tcp_long_ok={tcp_long_ok} tcp_survived_restart={tcp_survived} \
         rss_growth_kib={}",
        total.as_secs(),
        denied_arrived.load(Ordering::Relaxed),
        rss_end.saturating_sub(rss_at_10.unwrap_or(rss_end))
    );
    Ok(())
}
