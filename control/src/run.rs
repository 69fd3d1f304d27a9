//! `calxdp run`: the node dataplane, with its policies read from a directory the control thread watches.
//! A change is compiled whole and published with one table swap; a bad file is reported (file, line,
//! field) and the running tables stay. SIGINT or SIGTERM stop the workers and undo the setup.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use calxdp_dataplane::path::Port;
use calxdp_dataplane::pipeline::{explain, DropReason};
use calxdp_dataplane::worker::TraceRecord;
use calxdp_policy::node::NodeConfig;
use calxdp_policy::resource::{load_path, ResourceSet};
use calxdp_policy::verdict::Verdict;

use crate::live::{LiveNode, LiveOptions};

/// What the directory looked like: every policy file with its size and modification time.
pub type DirState = Vec<(PathBuf, u64, Option<SystemTime>)>;

pub fn dir_state(dir: &Path) -> DirState {
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

fn walk(p: &Path, out: &mut DirState) {
    if p.is_dir() {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                walk(&e.path(), out);
            }
        }
    } else if let Ok(m) = std::fs::metadata(p) {
        out.push((p.to_path_buf(), m.len(), m.modified().ok()));
    }
}

/// Reads every policy file under `dir` into one resource set, or the first error (file:line:col field).
pub fn load_dir(dir: &Path) -> Result<ResourceSet, String> {
    let docs = load_path(dir).map_err(|e| e.to_string())?;
    let mut set = ResourceSet::new();
    set.apply_all(docs.into_iter().map(|d| d.resource));
    Ok(set)
}

/// Runs until `stop` is raised. Prints one line per table publication and per rejected update, and with
/// `trace` one line per frame decided.
pub fn run(
    node: NodeConfig,
    policies: &Path,
    opts: &LiveOptions,
    stop: Arc<AtomicBool>,
    trace: bool,
) -> Result<(), String> {
    let resources = load_dir(policies)
        .map_err(|e| format!("{e}\n(the policies must load before the node starts; nothing was changed)"))?;
    let (tx, rx) = if trace {
        let (tx, rx) = std::sync::mpsc::sync_channel(4096);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let mut live = LiveNode::start(node, resources, opts, tx)?;
    for (iface, mode) in &live.attach_modes {
        eprintln!("calxdp: {iface}: XDP attached ({mode}), AF_XDP copy mode, {} queue(s)", opts.workers);
    }
    eprintln!(
        "calxdp: running; tables v{} with {} policies; watching {} (Ctrl-C stops)",
        live.publisher.slot().epoch(),
        live.publisher.resources().len(),
        policies.display()
    );
    let mut seen = dir_state(policies);
    let mut last_check = Instant::now();
    let mut last_stats = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(rx) = &rx {
            print_trace(&live, rx);
        }
        std::thread::sleep(Duration::from_millis(20));
        if last_check.elapsed() >= Duration::from_millis(200) {
            last_check = Instant::now();
            let now = dir_state(policies);
            if now != seen {
                seen = now;
                reload(&mut live, policies);
            }
        }
        if last_stats.elapsed() >= Duration::from_secs(30) {
            last_stats = Instant::now();
            eprintln!("calxdp: {}", summary(&live));
        }
    }
    eprintln!("calxdp: stopping: {}", summary(&live));
    live.stop();
    eprintln!("calxdp: stopped; XDP detached and the tap removed");
    Ok(())
}

/// Re-reads the directory and publishes, or reports why not (the running tables stay).
pub fn reload(live: &mut LiveNode, policies: &Path) {
    match load_dir(policies) {
        Err(e) => eprintln!("calxdp: policy update rejected, tables unchanged: {e}"),
        Ok(set) => match live.publisher.replace(set) {
            Ok(p) => eprintln!(
                "calxdp: tables v{} published: {} policies, {} programs rebuilt, in {:.1} ms",
                p.epoch,
                live.publisher.resources().len(),
                p.stats.built,
                p.took.as_secs_f64() * 1e3
            ),
            Err(e) => eprintln!("calxdp: policy update rejected, tables unchanged: {e}"),
        },
    }
}

fn summary(live: &LiveNode) -> String {
    let (c, io) = live.counters();
    let mut s = format!("{} frames: {} allowed", c.packets, c.allowed);
    for r in DropReason::ALL {
        if c.dropped(r) > 0 {
            s.push_str(&format!(", {} {}", c.dropped(r), r.name()));
        }
    }
    s.push_str(&format!("; arp {} answered, {} passed", io.arp_replied, io.arp_passed));
    if io.handed_off + io.handoff_full > 0 {
        s.push_str(&format!(
            "; {} handed to their flow's worker ({} lost to a full handoff ring)",
            io.handed_off, io.handoff_full
        ));
    }
    if io.no_neighbour > 0 {
        s.push_str(&format!("; {} waiting for a neighbour's MAC ({} ARP requests)", io.no_neighbour, io.arp_asked));
    }
    if io.tx_full > 0 {
        s.push_str(&format!("; {} lost to full tx queues", io.tx_full));
    }
    s
}

/// The port's name as the node file gives it.
pub fn port_name(node: &NodeConfig, p: Port) -> String {
    match p {
        Port::Host => "host".into(),
        Port::Uplink(u) => node.uplinks[u as usize].name.clone(),
        Port::Workload(w) => node.workloads[w as usize].name.clone(),
    }
}

fn print_trace(live: &LiveNode, rx: &Receiver<TraceRecord>) {
    while let Ok(r) = rx.try_recv() {
        println!("{}", trace_line(live, &r));
    }
}

/// One traced frame as a line: where it came in, the flow, the verdict, where it went, and why.
pub fn trace_line(live: &LiveNode, r: &TraceRecord) -> String {
    let tables = live.publisher.slot().hold();
    let h = &r.header;
    let flow = if h.has_ports() {
        format!("{}:{} -> {}:{}", h.src, h.src_port, h.dst, h.dst_port)
    } else {
        format!("{} -> {}", h.src, h.dst)
    };
    let verdict = if r.verdict == Verdict::Allow { "allow" } else { "drop" };
    let out = r.out.map(|o| port_name(&live.node, o)).unwrap_or_default();
    // A rule is named by its index in the program that decided; after a swap the tables at hand may not be
    // the ones that decided, so say so rather than name a rule of another version as if it were that one.
    let version = if r.epoch == tables.epoch {
        String::new()
    } else {
        format!(" (decided by tables v{}, named from v{})", r.epoch, tables.epoch)
    };
    format!(
        "trace {:<10} proto {:<3} {:<44} {:<5} {:<10} {}{version}",
        port_name(&live.node, r.port),
        h.protocol.0,
        flow,
        verdict,
        out,
        explain(&tables, &r.decision)
    )
}
