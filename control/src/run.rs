//! `calxdp run`: the node dataplane, with its policies read from a directory the control thread watches.
//! A change is compiled whole and published with one table swap; a bad file is reported (file, line,
//! field) and the running tables stay. SIGINT or SIGTERM stop the workers and undo the setup.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use calxdp_dataplane::pipeline::explain;

use calxdp_dataplane::decision::DropReason;
use calxdp_dataplane::worker::TraceRecord;
use calxdp_policy::node::NodeConfig;
use calxdp_policy::resource::{load_path, ResourceSet};
use calxdp_policy::verdict::Verdict;
use calxdp_policy::yaml::LoadError;

use crate::admin::server::{AdminServer, ServeOptions};
use crate::admin::NodeView;
use crate::live::{LiveNode, LiveOptions, PortEvent};

/// Why `calxdp run` stopped with an error, as it prints it.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The node file does not load (file:line:col: field: message).
    #[error(transparent)]
    Node(#[from] LoadError),
    #[error("{0}\n(the policies must load before the node starts; nothing was changed)")]
    Policies(LoadError),
    #[error(transparent)]
    Start(#[from] crate::live::StartError),
    #[error(transparent)]
    Admin(#[from] crate::admin::server::ServeError),
    /// A worker stopped on its own (its panic, as the worker's death notice says it).
    #[error("{0}; the dataplane cannot run without it")]
    WorkerDied(String),
}

/// What the directory looked like: every policy file with its size and modification time (or why it
/// could not be listed).
pub type DirState = Result<Vec<(PathBuf, u64, Option<SystemTime>)>, String>;

/// The policy files under `dir` as the loader sees them (symbolic links followed once, hidden entries
/// skipped), with their sizes and modification times.
pub fn dir_state(dir: &Path) -> DirState {
    let files = calxdp_policy::resource::policy_files(dir).map_err(|(p, e)| format!("{}: {e}", p.display()))?;
    Ok(files
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).ok();
            let (len, modified) = m.map(|m| (m.len(), m.modified().ok())).unwrap_or((0, None));
            (p, len, modified)
        })
        .collect())
}

/// Reads every policy file under `dir` into one resource set, or the first error (file:line:col field).
pub fn load_dir(dir: &Path) -> Result<ResourceSet, LoadError> {
    let docs = load_path(dir)?;
    let mut set = ResourceSet::new();
    set.apply_all(docs.into_iter().map(|d| d.resource));
    Ok(set)
}

/// Writes one line to stderr; a stderr that is gone (a killed log reader) costs the line, never the node:
/// `eprintln!` would panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// How often the control loop looks at the policy directory, the node file and the interfaces.
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// Runs until `stop` is raised. Prints one line per table publication, rejected update and port change,
/// and with `trace` one line per frame decided. The node file is watched too: workloads added, changed or
/// removed there are put in force without a restart. A worker that dies ends the run with an error (so a
/// supervisor restarts calxdp, and the XDP programs detach with the process).
pub fn run(
    node_file: &Path,
    policies: &Path,
    opts: &LiveOptions,
    stop: Arc<AtomicBool>,
    trace: bool,
    ready: Option<Arc<AtomicBool>>,
) -> Result<RunReport, RunError> {
    run_serving(node_file, policies, opts, stop, trace, ready, &ServeOptions::default())
}

/// [`run`], serving the admin API and metrics as `serve` says (`calxdp run --admin --metrics`). The
/// socket and the metrics port are taken before the first frame is forwarded; failing to take them ends
/// the run with nothing left behind.
pub fn run_serving(
    node_file: &Path,
    policies: &Path,
    opts: &LiveOptions,
    stop: Arc<AtomicBool>,
    trace: bool,
    ready: Option<Arc<AtomicBool>>,
    serve: &ServeOptions,
) -> Result<RunReport, RunError> {
    let node = NodeConfig::load(node_file)?;
    let resources = load_dir(policies).map_err(RunError::Policies)?;
    let (tx, rx) = if trace {
        let (tx, rx) = std::sync::mpsc::sync_channel(4096);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let mut live = LiveNode::start(node, resources, opts, tx)?;
    for (iface, mode) in &live.attach_modes {
        say!("calxdp: {iface}: XDP attached ({mode}), AF_XDP copy mode, {} queue(s)", opts.workers);
    }
    report_events(&mut live);
    let view = NodeView::new(&mut live);
    let server = match AdminServer::start(serve, view.clone()) {
        Ok(s) => s,
        Err(e) => {
            live.stop();
            return Err(e.into());
        }
    };
    if let Some(p) = &server.socket {
        say!("calxdp: admin socket {} (calxdp status, conntrack, rules, explain, trace)", p.display());
    }
    if let Some(a) = server.metrics {
        say!("calxdp: Prometheus metrics on http://{a}/metrics");
    }
    say!(
        "calxdp: running; tables v{} with {} policies; conntrack {} entries ({} per worker), timeouts {}; \
         watching {} and {} (Ctrl-C stops)",
        live.publisher.slot().epoch(),
        live.publisher.resources().len(),
        live.flow_capacity(),
        live.flow_capacity() / opts.workers.max(1),
        timeouts_summary(&live.publisher.slot().hold().world.node.felix.conntrack_timeouts),
        policies.display(),
        node_file.display()
    );
    if let Some(r) = &ready {
        r.store(true, Ordering::Release);
    }
    let mut policy_watch = Watch::new(dir_state(policies));
    let mut node_watch = Watch::new(file_state(node_file));
    let mut last_check = Instant::now();
    let mut last_stats = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(rx) = &rx {
            print_trace(&live, rx);
        }
        std::thread::sleep(Duration::from_millis(20));
        if let Some(death) = live.dead_worker() {
            say!("calxdp: {death}; stopping so the node can be restarted (XDP detaches with the process)");
            live.stop();
            return Err(RunError::WorkerDied(death));
        }
        if last_check.elapsed() >= CHECK_EVERY {
            last_check = Instant::now();
            if let Some(settled) = policy_watch.settled(dir_state(policies)) {
                if reload(&mut live, policies, settled.1, &settled.0) {
                    policy_watch.loaded(settled.0);
                }
            }
            if let Some(settled) = node_watch.settled(file_state(node_file)) {
                reload_node(&mut live, node_file);
                node_watch.loaded(settled.0);
            }
            live.supervise();
            report_events(&mut live);
            view.refresh(&mut live);
        }
        if last_stats.elapsed() >= Duration::from_secs(30) {
            last_stats = Instant::now();
            say!("calxdp: {}", summary(&live));
        }
    }
    say!("calxdp: stopping: {}", summary(&live));
    server.stop();
    let capacity = live.flow_capacity();
    let (counters, io, flows, entries) = live.stop_with_stats();
    say!("calxdp: stopped; XDP detached and the tap removed");
    Ok(RunReport { counters, io, flows, entries, capacity })
}

/// What a run did, as its workers counted it at the end.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub counters: calxdp_dataplane::pipeline::Counters,
    pub io: calxdp_dataplane::worker::IoCounters,
    pub flows: calxdp_dataplane::flow::FlowStats,
    pub entries: usize,
    pub capacity: usize,
}

fn timeouts_summary(t: &calxdp_policy::conntrack::Timeouts) -> String {
    format!(
        "tcp established {}s, syn {}s, udp {}s/{}s replied, icmp {}s, other {}s",
        t.tcp_established.as_secs(),
        t.tcp_syn_sent.as_secs(),
        t.udp_unreplied.as_secs(),
        t.udp_replied.as_secs(),
        t.icmp.as_secs(),
        t.generic.as_secs()
    )
}

/// A file's size and modification time, to notice a change.
fn file_state(p: &Path) -> Option<(u64, Option<SystemTime>)> {
    std::fs::metadata(p).ok().map(|m| (m.len(), m.modified().ok()))
}

/// Prints the ports that came up, went down or failed since the last call.
fn report_events(live: &mut LiveNode) {
    for e in live.take_events() {
        match e {
            PortEvent::Up { interface, mode } => say!("calxdp: {interface}: taken over (XDP {mode}, AF_XDP)"),
            PortEvent::Down { interface, why } => say!("calxdp: {interface}: released ({why})"),
            PortEvent::Failed { interface, error } => say!("calxdp: {interface}: cannot take it over: {error}"),
        }
    }
}

/// Re-reads the node file: workloads and namespaces added, changed or removed are put in force; a bad file
/// is reported and the node stays as it was.
pub fn reload_node(live: &mut LiveNode, node_file: &Path) {
    match NodeConfig::load(node_file) {
        Err(e) => {
            live.rejected_updates += 1;
            say!("calxdp: node update rejected, node unchanged: {e}")
        }
        Ok(node) => match live.set_node(node) {
            Ok(()) => say!(
                "calxdp: node updated: {} local workloads, tables v{}",
                live.node.workloads.len(),
                live.publisher.slot().epoch()
            ),
            Err(e) => {
                live.rejected_updates += 1;
                say!("calxdp: node update rejected, node unchanged: {e}")
            }
        },
    }
}

/// How long a change must stay still before it is read: a file being written changes size or time from one
/// look to the next, so only a folder that has stopped changing is published (never half a file).
const SETTLE: Duration = Duration::from_millis(400);
/// How long a policy folder must stay empty before its emptiness replaces a populated set.
const EMPTY_SETTLE: Duration = Duration::from_secs(3);

/// A watched file or folder: what the running state was loaded from, and a change waiting to settle.
struct Watch<S: PartialEq + Clone> {
    loaded: S,
    candidate: Option<(S, Instant)>,
}

impl<S: PartialEq + Clone> Watch<S> {
    fn new(now: S) -> Watch<S> {
        Watch { loaded: now, candidate: None }
    }

    /// The state to load, once it differs from what was loaded and has not changed for [`SETTLE`], with how
    /// long it has been still.
    fn settled(&mut self, now: S) -> Option<(S, Duration)> {
        if now == self.loaded {
            self.candidate = None;
            return None;
        }
        match &self.candidate {
            Some((c, since)) if *c == now => (since.elapsed() >= SETTLE).then(|| (now, since.elapsed())),
            _ => {
                self.candidate = Some((now, Instant::now()));
                None
            }
        }
    }

    fn loaded(&mut self, state: S) {
        self.loaded = state;
        self.candidate = None;
    }
}

/// Re-reads the directory and publishes, or reports why not (the running tables stay). `state` is what the
/// folder looked like when it settled: a folder that changed while it was read is left for the next look.
/// A folder that empties is published only after staying empty for [`EMPTY_SETTLE`], and loudly. Returns
/// whether this state is dealt with (published or rejected).
pub fn reload(live: &mut LiveNode, policies: &Path, still_for: Duration, state: &DirState) -> bool {
    let loaded = load_dir(policies);
    if dir_state(policies) != *state {
        return false;
    }
    match loaded {
        Err(e) => {
            live.rejected_updates += 1;
            say!("calxdp: policy update rejected, tables unchanged: {e}")
        }
        Ok(set) => {
            if set.is_empty() && !live.publisher.resources().is_empty() {
                if still_for < EMPTY_SETTLE {
                    return false;
                }
                say!(
                    "calxdp: WARNING: the policy folder {} is empty; publishing NO policies (it was {} resources). \
                     Pods fall back to their profiles and host endpoints to default-deny.",
                    policies.display(),
                    live.publisher.resources().len()
                );
            }
            match live.publisher.replace(set) {
                Ok(p) => say!(
                    "calxdp: tables v{} published: {} policies, {} programs rebuilt, in {:.1} ms",
                    p.epoch,
                    live.publisher.resources().len(),
                    p.stats.built,
                    p.took.as_secs_f64() * 1e3
                ),
                Err(e) => {
                    live.rejected_updates += 1;
                    say!("calxdp: policy update rejected, tables unchanged: {e}")
                }
            }
        }
    }
    true
}

/// The summary's first part: frames, allowed, and each drop reason with its count; malformed frames by
/// their own reasons, never as one lump; fragments and the datagrams they made.
fn frames_part(c: &calxdp_dataplane::pipeline::Counters) -> String {
    let mut s = format!("{} frames: {} allowed", c.packets, c.allowed);
    for r in DropReason::ALL {
        if r == DropReason::Malformed {
            for m in calxdp_dataplane::wire::Malformed::ALL {
                if c.malformed[m.index()] > 0 {
                    s.push_str(&format!(", {} malformed {}", c.malformed[m.index()], m.as_str()));
                }
            }
        } else if c.dropped(r) > 0 {
            s.push_str(&format!(", {} {}", c.dropped(r), r.name()));
        }
    }
    if c.fragments > 0 {
        s.push_str(&format!("; {} fragments made {} datagrams", c.fragments, c.reassembled));
    }
    s
}

fn summary(live: &LiveNode) -> String {
    let (c, io, flows, entries) = live.stats();
    let mut s = frames_part(&c);
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
    s.push_str(&format!(
        "; conntrack {entries}/{} entries, {} created, {} expired, {} early-dropped, {} refused (full), {} flushed",
        live.flow_capacity(),
        flows.created,
        flows.expired,
        flows.early_dropped,
        flows.refused,
        flows.flushed
    ));
    if io.log_lines + c.logs_suppressed + io.log_dropped > 0 {
        s.push_str(&format!(
            "; log lines {} written, {} over their rule's rate limit, {} lost to a slow log reader",
            io.log_lines, c.logs_suppressed, io.log_dropped
        ));
    }
    if io.rejected + c.reject_limited > 0 {
        s.push_str(&format!(
            "; {} denied frames answered (Reject), {} answers held back by the ICMP rate limits",
            io.rejected, c.reject_limited
        ));
    }
    if let Some(w) = &live.log_writer {
        let failed = w.failed.load(Ordering::Relaxed);
        if failed > 0 {
            s.push_str(&format!("; {failed} log lines could not be written (stderr is gone)"));
        }
    }
    s
}

fn print_trace(live: &LiveNode, rx: &Receiver<TraceRecord>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    while let Ok(r) = rx.try_recv() {
        // A closed stdout costs the trace, not the node.
        let _ = writeln!(out, "{}", trace_line(live, &r));
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
    let out = r.out.map(|o| o.name_in(&live.node)).unwrap_or_default();
    // A rule is named by its index in the program that decided; after a swap the tables at hand may not be
    // the ones that decided, so say so rather than name a rule of another version as if it were that one.
    let version = if r.epoch == tables.epoch {
        String::new()
    } else {
        format!(" (decided by tables v{}, named from v{})", r.epoch, tables.epoch)
    };
    format!(
        "trace {:<10} proto {:<3} {:<44} {:<5} {:<10} {}{version}",
        r.port.name_in(&live.node),
        h.protocol.0,
        flow,
        verdict,
        out,
        explain(&tables, &r.decision)
    )
}

#[cfg(test)]
mod summary_tests {
    use calxdp_dataplane::decision::DropReason;
    use calxdp_dataplane::pipeline::Counters;
    use calxdp_dataplane::wire::Malformed;

    /// The 30 s line names each malformed reason with its own count.
    #[test]
    fn malformed_frames_are_listed_by_reason() {
        let mut c = Counters { packets: 10, allowed: 4, ..Counters::default() };
        c.drops[DropReason::Malformed as usize] = 5;
        c.malformed[Malformed::BadIpv4Checksum.index()] = 3;
        c.malformed[Malformed::TooShortIp.index()] = 2;
        c.drops[DropReason::PolicyDeny as usize] = 1;
        assert_eq!(
            super::frames_part(&c),
            "10 frames: 4 allowed, 1 policy_deny, 2 malformed too_short_ip, 3 malformed bad_ipv4_checksum"
        );
    }
}
