//! `calxdp-bench curves [--quick] [--out DIR]`: how the dataplane scales, each curve against its own first
//! point measured in the same run (ratios, since this machine is shared and noisy), written as a Markdown
//! table (`DIR/curves.md`) and one SVG plot per curve (`DIR/curves-<name>.svg`); DIR is the workspace's
//! `docs/` unless given.
//!
//! - **flows**: established packets through the pipeline (`Pipeline`, as `calxdp-bench pipeline` drives it)
//!   and conntrack bytes per flow, from 1k to 4M flows, every flow opened and answered first (so conntrack
//!   has seen both directions), the table sized to hold them;
//! - **policies**: full compile, one policy changed, and table bytes, from 10 to 10 000 policies (as
//!   `calxdp-bench compile` measures them);
//! - **rules**: new flows through the pipeline from 10 to 100 000 rules on the pod, with the admitting rule
//!   last and no rule before it matching the client (the classification cannot stop early);
//! - **workers**: established and new flows through the production worker on memory ports, one worker
//!   against two on their own threads (shared tables, each its own flows and flow table, as RSS splits a
//!   NIC's flows between queues).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use calxdp::publisher::TablePublisher;
use calxdp_dataplane::flow::FlowTable;
use calxdp_dataplane::path::Port;
use calxdp_dataplane::pipeline::{Packet, Pipeline};
use calxdp_dataplane::ports::{MemoryPort, PortIo};
use calxdp_dataplane::tables::{TableSet, TableSlot};
use calxdp_dataplane::wire::FrameSpec;
use calxdp_dataplane::worker::{Clock, Worker, WorkerShared};
use calxdp_policy::compile::ProgramCache;
use calxdp_policy::node::NodeConfig;
use calxdp_policy::packet::PacketHeader;
use calxdp_policy::resolve::ResolvedNode;
use calxdp_policy::resource::{load_text, Protocol, ResourceSet};
use calxdp_policy::yaml::Origin;

use crate::synth;

/// One column of a curve's table.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: &'static str,
    /// Drawn on the curve's plot (every plotted column shares the y axis and its unit).
    pub plot: bool,
    /// Followed in the table by its ratio to the first row.
    pub ratio: bool,
}

impl Column {
    pub fn new(name: &'static str, plot: bool, ratio: bool) -> Column {
        Column { name, plot, ratio }
    }
}

/// One measured point: x and a value per column.
#[derive(Debug, Clone)]
pub struct Row {
    pub x: f64,
    pub values: Vec<f64>,
    /// The baseline's values measured alternately with this point, when it was (the ratio columns divide
    /// by these; otherwise by the first row's values).
    pub base: Option<Vec<f64>>,
}

impl Row {
    pub fn new(x: f64, values: Vec<f64>) -> Row {
        Row { x, values, base: None }
    }
}

/// A curve: its points, what they are against (the first row), and how to draw it.
#[derive(Debug, Clone)]
pub struct Curve {
    /// The plot's file: `curves-<name>.svg`.
    pub name: &'static str,
    pub title: &'static str,
    /// The x column's name and axis label.
    pub x: &'static str,
    /// The plotted columns' unit.
    pub y: &'static str,
    pub log_x: bool,
    pub log_y: bool,
    /// How the points were measured, one sentence.
    pub method: String,
    pub columns: Vec<Column>,
    pub rows: Vec<Row>,
}

/// `1000` → `1k`, `4000000` → `4M`: the x values of the tables.
pub fn count_text(v: f64) -> String {
    let n = v.round() as u64;
    if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n % 1_000 == 0 {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

/// Three significant figures or so, without exponent.
pub fn value_text(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        "n/a".into()
    } else if v == 0.0 {
        "0".into()
    } else if a >= 100.0 || (a >= 10.0 && v.fract() == 0.0) {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Whether `v` is 1, 2 or 5 times a power of ten.
fn one_two_five(v: f64) -> bool {
    if v <= 0.0 || !v.is_finite() {
        return false;
    }
    let m = v / 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().any(|k| (m - k).abs() < 1e-6)
}

/// The Markdown of every curve: a section each, its method, and its table with the ratio columns.
pub fn markdown(curves: &[Curve], preamble: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Scale curves\n\n{preamble}");
    for c in curves {
        let _ = writeln!(out, "\n## {}\n\n{}\n\n![{}](curves-{}.svg)\n", c.title, c.method, c.title, c.name);
        let mut head = vec![c.x.to_string()];
        for col in &c.columns {
            head.push(col.name.to_string());
            if col.ratio {
                head.push(format!("× ({} = {})", c.x, count_text(c.rows.first().map_or(0.0, |r| r.x))));
            }
        }
        let _ = writeln!(out, "| {} |", head.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
        for r in &c.rows {
            let mut cells = vec![count_text(r.x)];
            for (i, col) in c.columns.iter().enumerate() {
                let v = r.values.get(i).copied().unwrap_or(f64::NAN);
                cells.push(value_text(v));
                if col.ratio {
                    let base = r.base.as_ref().unwrap_or(&c.rows[0].values).get(i).copied().unwrap_or(f64::NAN);
                    cells.push(if base != 0.0 { format!("{:.2}", v / base) } else { "n/a".into() });
                }
            }
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
    }
    out
}

/// The curve's plotted columns against x, as an SVG document (plotters' SVG backend; text is left to the
/// viewer's fonts, so no font is needed here).
pub fn svg(c: &Curve) -> Result<String, String> {
    use plotters::coord::combinators::IntoLogRange;
    use plotters::coord::ranged1d::ValueFormatter;
    use plotters::prelude::*;

    let plotted: Vec<usize> = (0..c.columns.len()).filter(|&i| c.columns[i].plot).collect();
    if c.rows.is_empty() || plotted.is_empty() {
        return Err(format!("curve {}: nothing to plot", c.name));
    }
    let xs = c.rows.iter().map(|r| r.x);
    let (x0, x1) = (xs.clone().fold(f64::INFINITY, f64::min), xs.fold(f64::NEG_INFINITY, f64::max));
    let ys = c.rows.iter().flat_map(|r| plotted.iter().filter_map(|&i| r.values.get(i).copied()));
    let ys: Vec<f64> = ys.filter(|v| v.is_finite() && (!c.log_y || *v > 0.0)).collect();
    let (y0, y1) = (ys.iter().copied().fold(f64::INFINITY, f64::min), ys.iter().copied().fold(0.0, f64::max));
    let (x0, x1) = match (x1 > x0, c.log_x) {
        (false, _) => (x0 * 0.5, x0 * 2.0 + 1.0),
        (true, true) => (x0, x1),
        // Room either side of the first and last point.
        (true, false) => (x0 - (x1 - x0) / 4.0, x1 + (x1 - x0) / 4.0),
    };
    let colours = [RGBColor(0x1f, 0x77, 0xb4), RGBColor(0xd6, 0x27, 0x28), RGBColor(0x2c, 0xa0, 0x2c)];
    let err = |e: &dyn std::fmt::Display| format!("curve {}: {e}", c.name);

    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (720, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut b = ChartBuilder::on(&root);
        b.caption(c.title, ("sans-serif", 18)).margin(12).x_label_area_size(40).y_label_area_size(64);
        // Four axis kinds (linear or log, each way): one drawing routine, generic over the coordinates.
        fn draw<'a, X, Y>(
            mut chart: ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
            c: &Curve,
            plotted: &[usize],
            colours: &[RGBColor],
        ) -> Result<(), String>
        where
            X: Ranged<ValueType = f64> + ValueFormatter<f64>,
            Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
        {
            let e = |e: &dyn std::fmt::Display| format!("curve {}: {e}", c.name);
            chart
                .configure_mesh()
                .x_desc(c.x)
                .y_desc(c.y)
                // Counts are whole: a linear axis's ticks between them stay unlabelled.
                .x_label_formatter(&|v| if (v - v.round()).abs() > 1e-6 { String::new() } else { count_text(*v) })
                // A log axis labels 1, 2 and 5 of each decade only (its other ticks would overlap).
                .y_label_formatter(&|v| if c.log_y && !one_two_five(*v) { String::new() } else { value_text(*v) })
                .draw()
                .map_err(|x| e(&x))?;
            for (k, &i) in plotted.iter().enumerate() {
                let colour = colours[k % colours.len()];
                let points: Vec<(f64, f64)> = c
                    .rows
                    .iter()
                    .filter_map(|r| r.values.get(i).map(|&v| (r.x, v)))
                    .filter(|p| p.1.is_finite())
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
                    .map_err(|x| e(&x))?
                    .label(c.columns[i].name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled()))).map_err(|x| e(&x))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|x| e(&x))?;
            Ok(())
        }
        let (ly0, ly1) = (y0 * 0.8, y1 * 1.25);
        match (c.log_x, c.log_y) {
            (true, true) => draw(
                b.build_cartesian_2d((x0..x1).log_scale(), (ly0..ly1).log_scale()).map_err(|e| err(&e))?,
                c,
                &plotted,
                &colours,
            )?,
            (true, false) => draw(
                b.build_cartesian_2d((x0..x1).log_scale(), 0.0..y1 * 1.15).map_err(|e| err(&e))?,
                c,
                &plotted,
                &colours,
            )?,
            (false, true) => {
                draw(b.build_cartesian_2d(x0..x1, (ly0..ly1).log_scale()).map_err(|e| err(&e))?, c, &plotted, &colours)?
            }
            (false, false) => {
                draw(b.build_cartesian_2d(x0..x1, 0.0..y1 * 1.15).map_err(|e| err(&e))?, c, &plotted, &colours)?
            }
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(text)
}

/// Writes `curves.md` and the plots into `dir`; returns the files written.
pub fn write(dir: &Path, curves: &[Curve], preamble: &str) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    let md = dir.join("curves.md");
    std::fs::write(&md, markdown(curves, preamble)).map_err(|e| format!("{}: {e}", md.display()))?;
    written.push(md);
    for c in curves {
        let path = dir.join(format!("curves-{}.svg", c.name));
        std::fs::write(&path, svg(c)?).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Measures every curve, prints the table, writes the files into `out` (default: the workspace's docs/).
pub fn run(quick: bool, out: Option<PathBuf>) -> Result<(), String> {
    let started = Instant::now();
    let load_before = load_average();
    let mut curves = Vec::new();
    for (name, measure) in [
        ("flows", flows as fn(bool) -> Curve),
        ("policies", policies as fn(bool) -> Curve),
        ("rules", rules as fn(bool) -> Curve),
        ("workers", workers as fn(bool) -> Curve),
    ] {
        let t = Instant::now();
        let c = measure(quick);
        eprintln!("curves: {name} measured in {:.1} s", t.elapsed().as_secs_f64());
        curves.push(c);
    }
    let preamble = format!(
        "Written by `cargo run --release -p calxdp-bench -- curves{}` in {:.0} s on a machine of {} CPUs, its load \
         average {} at the start and {} at the end (other work shares it): absolute figures move with that \
         load, so each curve is also given against a baseline measured in the same run (the `×` columns).",
        if quick { " --quick" } else { "" },
        started.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_before,
        load_average()
    );
    print!("{}", markdown(&curves, &preamble));
    let dir = out.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs"));
    for f in write(&dir, &curves, &preamble)? {
        eprintln!("curves: wrote {}", f.display());
    }
    Ok(())
}

/// The one-minute load average, as /proc/loadavg gives it ("?" where it cannot be read).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

const BATCH: usize = 32;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs `header(0..n)` through `p` from `port`, a batch at a time.
fn feed(p: &mut Pipeline, port: Port, n: usize, now: u64, header: impl Fn(usize) -> PacketHeader) {
    let mut batch = [Packet::new(port, header(0), None); BATCH];
    for start in (0..n).step_by(BATCH) {
        let len = BATCH.min(n - start);
        for (j, s) in batch[..len].iter_mut().enumerate() {
            *s = Packet::new(port, header(start + j), None);
        }
        p.process_current(&mut batch[..len], now);
    }
}

fn flows(quick: bool) -> Curve {
    let sizes: &[usize] = if quick {
        &[1_000, 10_000, 100_000, 1_000_000]
    } else {
        &[1_000, 4_000, 16_000, 64_000, 256_000, 1_000_000, 4_000_000]
    };
    let budget = Duration::from_millis(if quick { 450 } else { 2100 });
    let slot = synth::pipeline_tables();
    // An established table of `n` flows, every flow opened and answered; and how many were answered.
    let open = |n: usize| {
        let mut p = Pipeline::new(slot.clone(), n + n / 4);
        feed(&mut p, Port::Uplink(0), n, 0, synth::dns_flow);
        feed(&mut p, Port::Workload(0), n, 0, synth::dns_reply);
        let answered = p.flows.entries().filter(|f| f.seen_reply).count();
        (p, answered)
    };
    // Packets of the table's `n` flows round robin for `d`; returns Mpps.
    let window = |p: &mut Pipeline, n: usize, d: Duration| {
        let mut batch = [Packet::new(Port::Uplink(0), synth::dns_flow(0), None); BATCH];
        let start = Instant::now();
        let mut b = 0usize;
        while start.elapsed() < d {
            for (j, s) in batch.iter_mut().enumerate() {
                *s = Packet::new(Port::Uplink(0), synth::dns_flow((b * BATCH + j) % n), None);
            }
            p.process_current(&mut batch, 1);
            b += 1;
        }
        (b * BATCH) as f64 / start.elapsed().as_secs_f64() / 1e6
    };
    let n0 = sizes[0];
    let (mut base, _) = open(n0);
    let base_bytes = base.flows.bytes_per_flow() as f64;
    let mut rows = Vec::new();
    for &n in sizes {
        let (mut p, answered) = open(n);
        // The point and the baseline take turns, three windows each: load that drifts falls on both.
        let (mut at_base, mut at_n) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            at_base.push(window(&mut base, n0, budget / 6));
            at_n.push(window(&mut p, n, budget / 6));
        }
        rows.push(Row {
            x: n as f64,
            values: vec![median(at_n), p.flows.bytes_per_flow() as f64, 100.0 * answered as f64 / n as f64],
            base: Some(vec![median(at_base), base_bytes, f64::NAN]),
        });
    }
    Curve {
        name: "flows",
        title: "Established flows: Mpps and conntrack bytes per flow",
        x: "flows",
        y: "Mpps (one core)",
        log_x: true,
        log_y: false,
        method: format!(
            "The pipeline on one core (`Pipeline::process_current`, batches of {BATCH}), the pipeline bench's \
             tables (1 000 rules on the pod behind a DNS allow): every flow opened from the uplink and answered \
             by the pod, then packets of the flows round robin: three windows of {} ms a point, each after one \
             of the 1k-flow baseline (the ratio is to those), medians; the flow table sized for 1.25× \
             the flows. Bytes per flow are the table's entry and index bytes over its capacity.",
            budget.as_millis() / 6
        ),
        columns: vec![
            Column::new("established Mpps", true, true),
            Column::new("ct bytes/flow", false, true),
            Column::new("answered %", false, false),
        ],
        rows,
    }
}

fn policies(quick: bool) -> Curve {
    let sizes: &[usize] = if quick { &[10, 100, 1_000, 10_000] } else { &[10, 100, 1_000, 3_000, 10_000] };
    let reps = if quick { 1 } else { 3 };
    let node = synth::node(50);
    let mut rows = Vec::new();
    for &n in sizes {
        // As `calxdp-bench compile`: most policies select one app, one in twenty every pod.
        let selector =
            |p: usize| if p % 20 == 0 { "all()".to_string() } else { format!("app == 'app{}'", p % synth::APPS) };
        let resources = synth::load(&synth::policies(3, n, 3, selector));
        let changed = load_text(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: pol-000005}\nspec: {order: 5, selector: \"app == 'app5'\", types: [Ingress], ingress: [{action: Allow, protocol: TCP, destination: {ports: [12345]}}]}\n",
            &Origin::file("change"),
        )
        .expect("the change loads");
        let mut next = resources.clone();
        next.apply_all(changed.into_iter().map(|d| d.resource));
        let (mut full, mut one, mut bytes) = (Vec::new(), Vec::new(), 0usize);
        for _ in 0..reps {
            let t = Instant::now();
            let world = ResolvedNode::new(&node, &resources);
            let mut cache = ProgramCache::new();
            let tables = cache.compile(&world, 1);
            full.push(t.elapsed().as_secs_f64() * 1e3);
            bytes = tables.stats.table_bytes;
            let t = Instant::now();
            let world2 = ResolvedNode::new(&node, &next);
            let tables2 = cache.compile(&world2, 2);
            one.push(t.elapsed().as_secs_f64() * 1e3);
            drop((tables, tables2));
        }
        rows.push(Row::new(n as f64, vec![median(full), median(one), bytes as f64 / 1e6]));
    }
    Curve {
        name: "policies",
        title: "Compile: full, one policy changed, table bytes",
        x: "policies",
        y: "ms",
        log_x: true,
        log_y: true,
        method: format!(
            "As `calxdp-bench compile`: a node of 50 local pods and 2 000 remote ones, 3 rules a policy, one \
             policy in twenty cluster-wide; resolve and compile every program from nothing, then one app-scoped \
             policy changed (resolve and recompile with the cache). {}",
            if reps > 1 { "Medians of three." } else { "One measurement a point." }
        ),
        columns: vec![
            Column::new("full compile ms", true, true),
            Column::new("one change ms", true, true),
            Column::new("table MB", false, true),
        ],
        rows,
    }
}

/// Tables with `rules` synthetic rules on every pod, then the DNS allow last (the default tier's last
/// policy); returns them with how many terms pod 0's ingress walk has.
fn rule_tables(rules: usize) -> (Arc<TableSlot>, usize) {
    let node = synth::node(20);
    let each = 10.min(rules);
    let mut yaml = synth::policies(5, rules / each, each, |_| "all()".into());
    yaml.push_str("---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: allow-dns-last}\nspec: {order: 100000, selector: all(), ingress: [{action: Allow, protocol: UDP, destination: {ports: [53]}}]}\n");
    let resources = synth::load(&yaml);
    let world = ResolvedNode::new(&node, &resources);
    let compiled = ProgramCache::new().compile(&world, 1);
    let terms = compiled.workloads[0]
        .get(calxdp_policy::resolve::Stage::Normal, calxdp_policy::resolve::Direction::Ingress)
        .map_or(0, |p| p.flat.terms.len());
    (Arc::new(TableSlot::new(TableSet::new(1, Arc::new(world), Arc::new(compiled)))), terms)
}

/// New flow `i` to pod 0's DNS from a client in 220.0.0.0/8, which no synthetic rule's CIDR covers and no
/// selector selects: every rule before the last is tried and fails.
fn outside_flow(i: usize) -> PacketHeader {
    PacketHeader {
        src: IpAddr::V4(Ipv4Addr::from(0xdc00_0001u32 + i as u32)),
        dst: IpAddr::V4(synth::pod_ip(0)),
        protocol: Protocol::UDP,
        src_port: 40000,
        dst_port: 53,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        icmp_id: 0,
    }
}

fn rules(quick: bool) -> Curve {
    // 100 000 rules take the most of a minute to generate, load and compile here: the full run only.
    let sizes: &[usize] = if quick { &[10, 100, 1_000, 10_000] } else { &[10, 100, 1_000, 10_000, 100_000] };
    let budget = Duration::from_millis(if quick { 300 } else { 2000 });
    let flows = 100_000usize;
    let flows_text = count_text(flows as f64);
    // One round: `flows` new flows from `first` on through a fresh pipeline; returns Mpps and how many
    // were admitted.
    let round = |slot: &Arc<TableSlot>, first: usize| {
        let mut p = Pipeline::new(slot.clone(), 1 << 20);
        let start = Instant::now();
        feed(&mut p, Port::Uplink(0), flows, 0, |i| outside_flow(first + i));
        (flows as f64 / start.elapsed().as_secs_f64() / 1e6, p.flows.len())
    };
    let (base_slot, _) = rule_tables(sizes[0]);
    let mut next = 0usize;
    let mut rows = Vec::new();
    for &n in sizes {
        let (slot, terms) = rule_tables(n);
        // The point and the 10-rule baseline take turns, round by round.
        let (mut at_base, mut at_n, mut admitted) = (Vec::new(), Vec::new(), 0);
        let start = Instant::now();
        while start.elapsed() < budget || at_n.len() < 3 {
            at_base.push(round(&base_slot, next).0);
            let (mpps, a) = round(&slot, next + flows);
            at_n.push(mpps);
            admitted = a;
            next += 2 * flows;
        }
        rows.push(Row {
            x: n as f64,
            values: vec![median(at_n), terms as f64, 100.0 * admitted as f64 / flows as f64],
            base: Some(vec![median(at_base), f64::NAN, f64::NAN]),
        });
    }
    Curve {
        name: "rules",
        title: "New flows: Mpps by rules on the pod",
        x: "rules",
        y: "Mpps (one core)",
        log_x: true,
        log_y: false,
        method: format!(
            "The pipeline on one core, every packet a flow it has not seen ({flows_text} a round, a fresh flow table \
             each round, the median of at least three rounds and {} ms a point, each round after one on the \
             10-rule baseline, to which the ratio is): N synthetic rules on every pod (10 a policy, selectors, CIDRs, \
             ports, Pass and Log), none matching the client, then the admitting DNS allow last, so the \
             classification cannot stop early. Every flow key is new in the run, so no memo of an earlier walk \
             helps either.",
            budget.as_millis()
        ),
        columns: vec![
            Column::new("new-flow Mpps", true, true),
            Column::new("terms", false, false),
            Column::new("admitted %", false, false),
        ],
        rows,
    }
}

/// One worker's node: the synthetic node with its pods' and gateway's MACs known (no resolution on the
/// way), the pipeline bench's policies.
fn worker_node() -> (NodeConfig, ResourceSet) {
    let mut node = synth::node(20);
    for (u, up) in node.uplinks.iter_mut().enumerate() {
        up.mac = Some([0x02, 0xca, 0x1c, 0xff, 0, u as u8 + 1]);
        up.gateway_mac = Some([0x02, 0xca, 0x1c, 0xfe, 0, u as u8 + 1]);
    }
    for (i, w) in node.workloads.iter_mut().enumerate() {
        w.mac = Some([0x02, 0xca, 0x1c, 0x00, (i >> 8) as u8, i as u8]);
    }
    let mut yaml = synth::policies(5, 100, 10, |_| "all()".into());
    yaml.push_str("---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: cluster-essentials}\nspec: {order: 1}\n---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: allow-dns}\nspec: {tier: cluster-essentials, order: 0, selector: all(), ingress: [{action: Allow, protocol: UDP, destination: {ports: [53]}}]}\n");
    (node, synth::load(&yaml))
}

/// A 64-byte frame of `h`.
fn frame(h: PacketHeader) -> Vec<u8> {
    FrameSpec { payload_len: 22, ..FrameSpec::new(h) }.build()
}

/// Frames delivered to the pod by one worker on its own thread, and the time it took: `flows` established flows (opened and answered
/// first) or new flows, `budget` long. Every worker shares `slot`; `first` offsets its flows from the
/// others'.
fn worker_rate(
    slot: Arc<TableSlot>,
    pod: u16,
    start: &Barrier,
    first: usize,
    flows: usize,
    established: bool,
    budget: Duration,
) -> (usize, Duration) {
    let ports = vec![Some(PortIo::Memory(MemoryPort::new())), Some(PortIo::Memory(MemoryPort::new()))];
    let pipeline = Pipeline::new(slot, flows * 2);
    let mut w =
        Worker::new(pipeline, ports, 1, Arc::new(WorkerShared::default()), Arc::new(Clock::manual()), None, None);
    w.attach(pod, PortIo::Memory(MemoryPort::new()));
    let q: Vec<Vec<u8>> = (0..flows).map(|i| frame(synth::dns_flow(first + i))).collect();
    // Up to this many frames wait in the uplink's receive queue at a time.
    const CHUNK: usize = 4096;
    // Returns the frames that left by `out`.
    let pass = |w: &mut Worker, frames: &[Vec<u8>], port: u16, out: u16| {
        let mut sent = 0;
        for chunk in frames.chunks(CHUNK) {
            w.memory_port(port).expect("attached").rx.extend(chunk.iter().cloned());
            while !w.memory_port(port).expect("attached").rx.is_empty() {
                w.round();
                let tx = &mut w.memory_port(out).expect("attached").tx;
                sent += tx.len();
                tx.clear();
            }
        }
        sent
    };
    if established {
        let answers: Vec<Vec<u8>> = (0..flows).map(|i| frame(synth::dns_reply(first + i))).collect();
        pass(&mut w, &q, 0, pod);
        pass(&mut w, &answers, pod, 0);
    }
    start.wait();
    let (mut done, mut time) = (0usize, Duration::ZERO);
    while time < budget {
        if !established {
            w.pipeline.flows = FlowTable::with_capacity(flows * 2);
        }
        let t = Instant::now();
        done += pass(&mut w, &q, 0, pod);
        time += t.elapsed();
    }
    (done, time)
}

fn workers(quick: bool) -> Curve {
    let budget = Duration::from_millis(if quick { 500 } else { 3000 });
    let flows = 100_000usize;
    let flows_text = count_text(flows as f64);
    let (node, resources) = worker_node();
    let publisher = TablePublisher::new(node.clone(), resources);
    let pod = publisher.ports.get(node.workloads[0].interface.as_deref().unwrap_or("cali0")).expect("pod 0 has a port");
    let mut rows = Vec::new();
    for n in [1usize, 2] {
        let mut values = Vec::new();
        for established in [true, false] {
            let barrier = Barrier::new(n);
            let per = flows / n;
            let results: Vec<(usize, Duration)> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..n)
                    .map(|k| {
                        let (slot, barrier) = (publisher.slot(), &barrier);
                        s.spawn(move || worker_rate(slot, pod, barrier, k * per, per, established, budget))
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("a worker thread")).collect()
            });
            // Each worker's rate over its own busy time, summed: the workers ran side by side.
            values.push(results.iter().map(|(d, t)| *d as f64 / t.as_secs_f64()).sum::<f64>() / 1e6);
        }
        rows.push(Row::new(n as f64, values));
    }
    Curve {
        name: "workers",
        title: "One worker against two",
        x: "workers",
        y: "Mpps (all workers)",
        log_x: false,
        log_y: false,
        method: format!(
            "The production worker (`Worker::round`: parse, pipeline, rewrite, transmit) on memory ports, one \
             thread each, sharing one table version: {flows_text} flows split evenly between the workers, 64-byte \
             frames from the uplink to pod 0 (the pipeline bench's policies); established (opened and answered \
             first) and new (a fresh flow table each pass), {} ms each; a worker's rate is its frames over its \
             own busy time, summed over the workers. Memory ports copy every frame in and out, so the absolute \
             rate is below the pipeline's; on this 2-core machine two workers also share the cores with the \
             rest of the machine's work.",
            budget.as_millis()
        ),
        columns: vec![Column::new("established Mpps", true, true), Column::new("new-flow Mpps", true, true)],
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Curve {
        Curve {
            name: "sample",
            title: "A sample",
            x: "flows",
            y: "Mpps",
            log_x: true,
            log_y: false,
            method: "Made up.".into(),
            columns: vec![Column::new("rate", true, true), Column::new("bytes", false, false)],
            rows: vec![
                Row::new(1_000.0, vec![4.0, 112.0]),
                Row::new(1_000_000.0, vec![2.0, 112.0]),
                Row { x: 4_000_000.0, values: vec![1.0, 130.0], base: Some(vec![5.0, 112.0]) },
            ],
        }
    }

    #[test]
    fn counts_and_values_read_as_written() {
        assert_eq!(count_text(1_000.0), "1k");
        assert_eq!(count_text(4_000_000.0), "4M");
        assert_eq!(count_text(1_500.0), "1500");
        assert_eq!(count_text(2.0), "2");
        assert_eq!(value_text(123.4), "123");
        assert_eq!(value_text(12.34), "12.3");
        assert_eq!(value_text(16.0), "16");
        assert_eq!(value_text(1.234), "1.23");
        assert_eq!(value_text(0.01234), "0.012");
        assert_eq!(value_text(f64::NAN), "n/a");
        assert_eq!(value_text(0.0), "0");
        assert!(one_two_five(1000.0) && one_two_five(0.2) && one_two_five(50.0));
        assert!(!one_two_five(900.0) && !one_two_five(0.0) && !one_two_five(3.0));
    }

    /// The table has a column per value plus a ratio column where asked, a row per point, and the ratios
    /// are to the first row.
    #[test]
    fn table_has_ratio_columns_against_the_first_row() {
        let md = markdown(&[sample()], "Preamble.");
        let lines: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(lines[0], "| flows | rate | × (flows = 1k) | bytes |");
        assert_eq!(lines[1], "|---|---|---|---|");
        assert_eq!(lines[2], "| 1k | 4.00 | 1.00 | 112 |");
        assert_eq!(lines[3], "| 1M | 2.00 | 0.50 | 112 |");
        // A row with its own baseline is against that, not the first row.
        assert_eq!(lines[4], "| 4M | 1.00 | 0.20 | 130 |");
        assert_eq!(lines.len(), 5);
        assert!(md.contains("![A sample](curves-sample.svg)"), "{md}");
        assert!(md.starts_with("# Scale curves\n\nPreamble."));
    }

    /// The plot is an SVG document with the title, the plotted column's legend and line, and not the
    /// unplotted column; every axis kind draws.
    #[test]
    fn svg_draws_the_plotted_columns() {
        for (log_x, log_y) in [(true, false), (true, true), (false, true), (false, false)] {
            let c = Curve { log_x, log_y, ..sample() };
            let s = svg(&c).expect("draws");
            assert!(s.starts_with("<svg"), "{}", &s[..s.len().min(80)]);
            assert!(s.trim_end().ends_with("</svg>"));
            assert!(s.contains("A sample"));
            assert!(s.contains("\nrate\n"), "the legend names the plotted column");
            assert!(!s.contains("\nbytes\n"), "an unplotted column is not drawn");
            assert!(s.contains("<polyline") || s.contains("<path"), "a line is drawn");
            assert!(s.contains("<circle"), "the points are marked");
        }
        let empty = Curve { rows: Vec::new(), ..sample() };
        assert!(svg(&empty).is_err());
    }

    #[test]
    fn write_puts_the_table_and_a_plot_per_curve_in_the_directory() {
        let dir = std::env::temp_dir().join(format!("calxdp-curves-{}", std::process::id()));
        let files = write(&dir, &[sample()], "P.").expect("writes");
        let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["curves.md", "curves-sample.svg"]);
        assert!(std::fs::read_to_string(dir.join("curves-sample.svg")).unwrap().starts_with("<svg"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
