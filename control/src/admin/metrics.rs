//! Prometheus metrics in the text exposition format (version 0.0.4). Felix's names where Felix has the
//! metric and calxdp can give it an honest value (the Calico docs' "Monitoring Felix with Prometheus"
//! page lists Felix's), `calxdp_*` for the rest. Each family is written by one writer from its name, type,
//! help and samples, so no family can miss its header or get another family's.

use std::fmt::Write as _;

use super::answer::{active_local_policies, active_local_selectors, local_endpoints, total, worker_counters};
use super::{Histogram, NodeView};
use calxdp_dataplane::port_drops::{kind_name, DropRow};

/// A metric family's type, as the format names it.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    /// For a Felix counter whose name lacks `_total` (promtool refuses such a counter; Prometheus takes an
    /// untyped metric the same way).
    Untyped,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
            Kind::Untyped => "untyped",
        }
    }
}

/// One sample of a family: the suffix of its name (`_bucket`, `_sum`, … or none), its labels and value.
struct Sample {
    suffix: &'static str,
    labels: Vec<(&'static str, String)>,
    value: f64,
}

impl Sample {
    fn plain(value: f64) -> Sample {
        Sample { suffix: "", labels: Vec::new(), value }
    }

    fn labelled(labels: Vec<(&'static str, String)>, value: f64) -> Sample {
        Sample { suffix: "", labels, value }
    }
}

/// Writes one family: its header, then every sample.
fn family(out: &mut String, name: &str, kind: Kind, help: &str, samples: impl IntoIterator<Item = Sample>) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {}", kind.name());
    for s in samples {
        out.push_str(name);
        out.push_str(s.suffix);
        if !s.labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in s.labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{k}=\"{}\"", escape(v));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {}", s.value);
    }
}

/// A family of one unlabelled sample.
fn single(out: &mut String, name: &str, kind: Kind, help: &str, value: f64) {
    family(out, name, kind, help, [Sample::plain(value)]);
}

/// A family with one label.
fn by_label(
    out: &mut String,
    name: &str,
    kind: Kind,
    help: &str,
    label: &'static str,
    values: impl IntoIterator<Item = (String, f64)>,
) {
    family(out, name, kind, help, values.into_iter().map(|(v, n)| Sample::labelled(vec![(label, v)], n)));
}

/// A histogram family from its cumulative buckets.
fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let buckets = h.buckets.iter().zip(h.bounds).map(|(b, bound)| (bound.to_string(), *b as f64));
    let samples = buckets
        .chain([("+Inf".to_string(), h.count as f64)])
        .map(|(le, n)| Sample { suffix: "_bucket", labels: vec![("le", le)], value: n })
        .chain([
            Sample { suffix: "_sum", labels: Vec::new(), value: h.sum },
            Sample { suffix: "_count", labels: Vec::new(), value: h.count as f64 },
        ]);
    family(out, name, Kind::Histogram, help, samples);
}

/// A label value as the format wants it: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The samples of `calxdp_drops_total` for one port's row: one per reason with drops.
fn drop_samples(port: &str, row: &DropRow) -> Vec<Sample> {
    row.iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| {
            Sample::labelled(vec![("port", port.to_string()), ("reason", kind_name(k).to_string())], *n as f64)
        })
        .collect()
}

/// Every metric of the node, now.
pub fn render(view: &NodeView) -> String {
    let t = view.slot.hold();
    let per_worker = worker_counters(view);
    let sum = total(&per_worker);
    let (c, io, flows) = (&sum.pipeline, &sum.io, &sum.flows);
    let control = view.control().clone();
    let w = &t.world;
    let mut out = String::with_capacity(8192);
    let o = &mut out;
    use Kind::{Counter, Gauge};

    // Felix's names.
    single(
        o,
        "felix_active_local_endpoints",
        Gauge,
        "Number of active endpoints on this node: pods with an interface here, and host endpoints.",
        local_endpoints(&t) as f64,
    );
    single(
        o,
        "felix_active_local_policies",
        Gauge,
        "Number of active policies on this node (selecting at least one local endpoint).",
        active_local_policies(&t) as f64,
    );
    single(
        o,
        "felix_active_local_selectors",
        Gauge,
        "Number of distinct rule selectors (selector, notSelector) in the active policies and the local \
         endpoints' profiles.",
        active_local_selectors(&t) as f64,
    );
    single(
        o,
        "felix_cluster_num_workload_endpoints",
        Gauge,
        "Workload endpoints this node knows of (its own pods and the remote pods its node file or Felix \
         names), not the whole cluster's.",
        w.node.workloads.len() as f64,
    );
    single(
        o,
        "felix_cluster_num_host_endpoints",
        Gauge,
        "Host endpoints in the resources this node has, local or not.",
        control.resources.host_endpoints().count() as f64,
    );
    single(
        o,
        "felix_cluster_num_policies",
        Gauge,
        "Enforced (not staged) policies this node has.",
        w.policies.len() as f64,
    );
    single(
        o,
        "felix_cluster_num_profiles",
        Gauge,
        "Profiles this node has (those generated from namespaces and service accounts included).",
        w.profiles.len() as f64,
    );
    single(
        o,
        "felix_cluster_num_tiers",
        Gauge,
        "Tiers this node has (the built-in ones and those only named by a policy included).",
        w.tiers.len() as f64,
    );
    family(
        o,
        "felix_int_dataplane_apply_time_seconds",
        Kind::Summary,
        "Time in seconds each table publication after the first took, from the start of its compile to the \
         swap (enforcement by every worker is calxdp_policy_enforce_seconds).",
        [
            Sample { suffix: "_sum", labels: Vec::new(), value: control.apply_seconds.sum },
            Sample { suffix: "_count", labels: Vec::new(), value: control.apply_seconds.count as f64 },
        ],
    );
    single(
        o,
        "felix_int_dataplane_failures",
        Kind::Untyped,
        "Policy and node updates rejected (bad input, the running tables stay); a counter, untyped because \
         Felix's name has no _total.",
        control.rejected_updates as f64,
    );

    // calxdp's own.
    single(o, "calxdp_frames_total", Counter, "Frames the pipeline decided.", c.packets as f64);
    single(o, "calxdp_allowed_total", Counter, "Frames the pipeline allowed.", c.allowed as f64);
    let mut drops: Vec<Sample> =
        control.ports.iter().flat_map(|p| drop_samples(&p.name, &sum.port_drops.get(p.id))).collect();
    drops.extend(drop_samples("unattributed", &sum.port_drops.unattributed));
    family(
        o,
        "calxdp_drops_total",
        Counter,
        "Frames dropped, by the port they arrived on and reason (reasons with drops only; port \
         \"unattributed\": arrival port no longer known). A port's counts restart when it is attached again.",
        drops,
    );
    by_label(
        o,
        "calxdp_malformed_total",
        Counter,
        "Frames that did not parse, by what was wrong.",
        "reason",
        calxdp_dataplane::wire::Malformed::ALL.iter().map(|m| (m.as_str().to_string(), c.malformed[m.index()] as f64)),
    );
    let per_port = |v: &Vec<u64>| -> Vec<(String, f64)> {
        control.ports.iter().map(|p| (p.name.clone(), v.get(p.id as usize).copied().unwrap_or(0) as f64)).collect()
    };
    by_label(o, "calxdp_port_rx_frames_total", Counter, "Frames received, by port.", "port", per_port(&io.rx));
    by_label(o, "calxdp_port_tx_frames_total", Counter, "Frames sent, by port.", "port", per_port(&io.tx));
    by_label(
        o,
        "calxdp_port_up",
        Gauge,
        "Whether the port is taken over (1) or not (0).",
        "port",
        control.ports.iter().map(|p| (p.name.clone(), if p.up { 1.0 } else { 0.0 })),
    );

    single(o, "calxdp_conntrack_entries", Gauge, "Conntrack entries held.", sum.entries as f64);
    single(o, "calxdp_conntrack_capacity", Gauge, "Conntrack entries the node can hold.", view.capacity as f64);
    single(o, "calxdp_conntrack_created_total", Counter, "Conntrack entries created.", flows.created as f64);
    single(o, "calxdp_conntrack_expired_total", Counter, "Conntrack entries expired.", flows.expired as f64);
    single(
        o,
        "calxdp_conntrack_early_dropped_total",
        Counter,
        "Unreplied conntrack entries dropped to make room.",
        flows.early_dropped as f64,
    );
    single(
        o,
        "calxdp_conntrack_refused_total",
        Counter,
        "New flows refused because the conntrack table was full.",
        flows.refused as f64,
    );
    single(o, "calxdp_conntrack_flushed_total", Counter, "Conntrack entries flushed.", flows.flushed as f64);

    single(o, "calxdp_table_version", Gauge, "Version of the tables in force.", t.epoch as f64);
    single(
        o,
        "calxdp_table_publications_total",
        Counter,
        "Table versions published after the first.",
        control.publications as f64,
    );
    histogram(
        o,
        "calxdp_policy_enforce_seconds",
        "Time from the start of a policy update's compile until every worker enforces it.",
        &control.enforce_seconds,
    );

    by_label(
        o,
        "calxdp_worker_busy_seconds_total",
        Counter,
        "Time each worker spent in rounds that moved frames.",
        "worker",
        per_worker.iter().enumerate().map(|(i, w)| (i.to_string(), w.io.busy_nanos as f64 / 1e9)),
    );
    by_label(
        o,
        "calxdp_worker_batches_total",
        Counter,
        "Batches each worker handled.",
        "worker",
        per_worker.iter().enumerate().map(|(i, w)| (i.to_string(), w.io.batches as f64)),
    );
    single(
        o,
        "calxdp_handed_off_total",
        Counter,
        "Frames handed to the worker owning their flow.",
        io.handed_off as f64,
    );
    single(o, "calxdp_arp_replied_total", Counter, "ARP requests answered.", io.arp_replied as f64);
    single(o, "calxdp_ndp_answered_total", Counter, "Neighbour solicitations answered.", io.ndp_answered as f64);
    single(o, "calxdp_log_lines_total", Counter, "Log rule lines written.", io.log_lines as f64);
    single(o, "calxdp_log_suppressed_total", Counter, "Log rule hits over their rate limit.", c.logs_suppressed as f64);
    single(o, "calxdp_rejected_total", Counter, "Denied packets answered (Reject deny action).", io.rejected as f64);
    single(o, "calxdp_trace_lost_total", Counter, "Trace records lost to a full queue.", io.trace_lost as f64);
    by_label(
        o,
        "calxdp_xsk_rx_dropped_total",
        Counter,
        "Frames the kernel dropped before the AF_XDP receive rings: no free frame in the fill ring, no room in \
         the receive ring, and all (every such drop, frames too big for a UMEM frame too; the total, not a third \
         reason).",
        "reason",
        [
            ("fill_ring_empty".to_string(), io.xsk_fill_empty as f64),
            ("rx_ring_full".to_string(), io.xsk_rx_ring_full as f64),
            ("all".to_string(), io.xsk_dropped() as f64),
        ],
    );
    single(
        o,
        "calxdp_uptime_seconds",
        Gauge,
        "Seconds since the node started serving.",
        view.started.elapsed().as_secs_f64(),
    );
    out
}
