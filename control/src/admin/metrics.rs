//! Prometheus metrics in the text exposition format (version 0.0.4). Felix's names where Felix has the
//! metric (`felix_active_local_endpoints`, `felix_active_local_policies`), `calxdp_*` for the rest.

use std::fmt::Write as _;

use calxdp_dataplane::pipeline::Counters;
use calxdp_dataplane::worker::IoCounters;

use super::answer::{active_local_policies, drop_counts, local_endpoints, worker_counters};
use super::NodeView;

/// A metric family under construction.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }
}

/// A label value as the format wants it: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// One family with one sample and no labels.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    Family::new(out, name, kind, help).sample(name, &[], value);
}

/// Every metric of the node, now.
pub fn render(view: &NodeView) -> String {
    let t = view.slot.hold();
    let per_worker = worker_counters(view);
    let mut c = Counters::default();
    let mut io = IoCounters::default();
    let mut flows = calxdp_dataplane::flow::FlowStats::default();
    let mut entries = 0;
    for (wc, wio, fs, e) in &per_worker {
        c.add(wc);
        io.add(wio);
        flows.created += fs.created;
        flows.expired += fs.expired;
        flows.early_dropped += fs.early_dropped;
        flows.refused += fs.refused;
        flows.flushed += fs.flushed;
        entries += e;
    }
    let control = view.control().clone();
    let mut out = String::with_capacity(8192);
    let o = &mut out;

    single(
        o,
        "felix_active_local_endpoints",
        "gauge",
        "Number of active endpoints on this node.",
        local_endpoints(&t) as f64,
    );
    single(
        o,
        "felix_active_local_policies",
        "gauge",
        "Number of active policies on this node (selecting at least one local endpoint).",
        active_local_policies(&t) as f64,
    );

    single(o, "calxdp_frames_total", "counter", "Frames the pipeline decided.", c.packets as f64);
    single(o, "calxdp_allowed_total", "counter", "Frames the pipeline allowed.", c.allowed as f64);
    let mut f = Family::new(o, "calxdp_drops_total", "counter", "Frames dropped, by reason.");
    for d in drop_counts(&c, &io) {
        f.sample("calxdp_drops_total", &[("reason", &d.reason)], d.count as f64);
    }
    let mut f = Family::new(o, "calxdp_malformed_total", "counter", "Frames that did not parse, by what was wrong.");
    for m in calxdp_dataplane::wire::Malformed::ALL {
        f.sample("calxdp_malformed_total", &[("reason", m.as_str())], c.malformed[m.index()] as f64);
    }

    let mut f = Family::new(o, "calxdp_port_rx_frames_total", "counter", "Frames received, by port.");
    for p in &control.ports {
        f.sample(
            "calxdp_port_rx_frames_total",
            &[("port", &p.name)],
            io.rx.get(p.id as usize).copied().unwrap_or(0) as f64,
        );
    }
    let mut f = Family::new(o, "calxdp_port_tx_frames_total", "counter", "Frames sent, by port.");
    for p in &control.ports {
        f.sample(
            "calxdp_port_tx_frames_total",
            &[("port", &p.name)],
            io.tx.get(p.id as usize).copied().unwrap_or(0) as f64,
        );
    }
    let mut f = Family::new(o, "calxdp_port_up", "gauge", "Whether the port is taken over (1) or not (0).");
    for p in &control.ports {
        f.sample("calxdp_port_up", &[("port", &p.name)], if p.up { 1.0 } else { 0.0 });
    }

    single(o, "calxdp_conntrack_entries", "gauge", "Conntrack entries held.", entries as f64);
    single(o, "calxdp_conntrack_capacity", "gauge", "Conntrack entries the node can hold.", view.capacity as f64);
    single(o, "calxdp_conntrack_created_total", "counter", "Conntrack entries created.", flows.created as f64);
    single(o, "calxdp_conntrack_expired_total", "counter", "Conntrack entries expired.", flows.expired as f64);
    single(
        o,
        "calxdp_conntrack_early_dropped_total",
        "counter",
        "Unreplied conntrack entries dropped to make room.",
        flows.early_dropped as f64,
    );
    single(
        o,
        "calxdp_conntrack_refused_total",
        "counter",
        "New flows refused because the conntrack table was full.",
        flows.refused as f64,
    );
    single(o, "calxdp_conntrack_flushed_total", "counter", "Conntrack entries flushed.", flows.flushed as f64);

    single(o, "calxdp_table_version", "gauge", "Version of the tables in force.", t.epoch as f64);
    single(
        o,
        "calxdp_table_publications_total",
        "counter",
        "Table versions published after the first.",
        control.publications as f64,
    );
    let h = &control.enforce_seconds;
    let name = "calxdp_policy_enforce_seconds";
    let mut f = Family::new(
        o,
        name,
        "histogram",
        "Time from the start of a policy update's compile until every worker enforces it.",
    );
    for (b, bound) in h.buckets.iter().zip(h.bounds) {
        f.sample(&format!("{name}_bucket"), &[("le", &bound.to_string())], *b as f64);
    }
    f.sample(&format!("{name}_bucket"), &[("le", "+Inf")], h.count as f64);
    f.sample(&format!("{name}_sum"), &[], h.sum);
    f.sample(&format!("{name}_count"), &[], h.count as f64);

    let mut f = Family::new(
        o,
        "calxdp_worker_busy_seconds_total",
        "counter",
        "Time each worker spent in rounds that moved frames.",
    );
    for (i, (_, wio, _, _)) in per_worker.iter().enumerate() {
        f.sample("calxdp_worker_busy_seconds_total", &[("worker", &i.to_string())], wio.busy_nanos as f64 / 1e9);
    }
    let mut f = Family::new(o, "calxdp_worker_batches_total", "counter", "Batches each worker handled.");
    for (i, (_, wio, _, _)) in per_worker.iter().enumerate() {
        f.sample("calxdp_worker_batches_total", &[("worker", &i.to_string())], wio.batches as f64);
    }
    single(
        o,
        "calxdp_handed_off_total",
        "counter",
        "Frames handed to the worker owning their flow.",
        io.handed_off as f64,
    );
    single(o, "calxdp_arp_replied_total", "counter", "ARP requests answered.", io.arp_replied as f64);
    single(o, "calxdp_ndp_answered_total", "counter", "Neighbour solicitations answered.", io.ndp_answered as f64);
    single(o, "calxdp_log_lines_total", "counter", "Log rule lines written.", io.log_lines as f64);
    single(
        o,
        "calxdp_log_suppressed_total",
        "counter",
        "Log rule hits over their rate limit.",
        c.logs_suppressed as f64,
    );
    single(o, "calxdp_rejected_total", "counter", "Denied packets answered (Reject deny action).", io.rejected as f64);
    single(o, "calxdp_trace_lost_total", "counter", "Trace records lost to a full queue.", io.trace_lost as f64);
    single(
        o,
        "calxdp_uptime_seconds",
        "gauge",
        "Seconds since the node started serving.",
        view.started.elapsed().as_secs_f64(),
    );
    out
}
