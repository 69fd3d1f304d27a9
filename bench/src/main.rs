//! Quick performance reports, each measured against a baseline in the same run:
//!
//! - `classify --quick`: new-flow classification against the linear first-match scan of the same rules;
//! - `compile --quick`: full compile and one-policy recompile times, and table size;
//! - `curves [--quick] [--out DIR]`: the scale curves, written as a table and SVG plots into docs/.

// Syscalls live in `calxdp_dataplane::sys`, behind safe wrappers.
#![deny(unsafe_code)]

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use calxdp_bench::synth;
use calxdp_policy::compile::{flow_key, ProgramCache};
use calxdp_policy::resolve::{Direction, ResolvedNode, Stage};
use calxdp_policy::resource::{load_text, Resource};
use calxdp_policy::yaml::Origin;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    match args.first().map(String::as_str) {
        Some("classify") => classify(quick),
        Some("compile") => compile(quick),
        Some("pipeline") => {
            let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
            let count =
                args.iter().position(|a| a == "--count").and_then(|i| args.get(i + 1)).and_then(|c| c.parse().ok());
            pipeline(quick, only.as_deref(), count)
        }
        Some("e2e") => calxdp_bench::e2e::run(quick),
        Some("curves") => {
            let out = args.iter().position(|a| a == "--out").and_then(|i| args.get(i + 1)).map(Into::into);
            if let Err(e) = calxdp_bench::curves::run(quick, out) {
                eprintln!("calxdp-bench curves: {e}");
                return ExitCode::FAILURE;
            }
        }
        Some("churn") => {
            if let Err(e) = calxdp_bench::churn::run(quick) {
                eprintln!("calxdp-bench churn: {e}");
                return ExitCode::FAILURE;
            }
        }
        Some("soak") => {
            let minutes =
                args.iter().position(|a| a == "--minutes").and_then(|i| args.get(i + 1)).and_then(|m| m.parse().ok());
            if let Err(e) = calxdp_bench::soak::run(quick, minutes) {
                eprintln!("calxdp-bench soak: {e}");
                return ExitCode::FAILURE;
            }
        }
        _ => {
            eprintln!(
                "usage: calxdp-bench classify|compile|pipeline|e2e|curves|soak|churn [--quick] [--minutes N] [--out DIR] \
                 [--only established|new [--count PACKETS]] (pipeline, for profiling one path)"
            );
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

/// Runs `f` over the keys repeatedly for about `budget`; returns lookups per second.
fn rate(budget: Duration, n: usize, mut f: impl FnMut(usize)) -> f64 {
    let start = Instant::now();
    let mut done = 0usize;
    while start.elapsed() < budget {
        for i in 0..n {
            f(i);
        }
        done += n;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn classify(quick: bool) {
    let all: &[usize] = &[10, 100, 1_000, 10_000, 100_000];
    // CALXDP_BENCH_SIZES=10000 runs one size (for profiling).
    let picked: Vec<usize> = std::env::var("CALXDP_BENCH_SIZES")
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|_| all.to_vec());
    let sizes = &picked[..];
    let budget = Duration::from_millis(if quick { 400 } else { 2000 });
    let node = synth::node(20);
    for &rules in sizes {
        let rules_each = 10.min(rules);
        let yaml = synth::policies(7, rules / rules_each, rules_each, |_| "all()".into());
        let resources = synth::load(&yaml);
        let world = ResolvedNode::new(&node, &resources);
        let tables = ProgramCache::new().compile(&world, 1);
        let Some(program) = tables.workloads[0].get(Stage::Normal, Direction::Ingress) else { continue };
        let keys: Vec<_> = synth::packets(11, 4096, 20).iter().map(flow_key).collect();
        // The two must agree before either is timed.
        for k in &keys {
            assert_eq!(
                program.evaluate(k, |_| {}),
                program.evaluate_linear(k, |_| {}),
                "classifier and linear scan disagree"
            );
        }
        let fast = rate(budget, keys.len(), |i| {
            black_box(program.evaluate(black_box(&keys[i]), |_| {}));
        });
        let linear_keys = if rules >= 10_000 { 256 } else { keys.len() };
        let slow = rate(
            if std::env::var_os("CALXDP_BENCH_SIZES").is_some() { Duration::from_millis(50) } else { budget },
            linear_keys,
            |i| {
                black_box(program.evaluate_linear(black_box(&keys[i]), |_| {}));
            },
        );
        println!(
            "rules={rules} terms={} classifier_mpps={:.3} linear_mpps={:.4} ratio={:.1} table_bytes={}",
            program.flat.terms.len(),
            fast / 1e6,
            slow / 1e6,
            fast / slow,
            program.classifier.table_bytes()
        );
        if std::env::var_os("CALXDP_BENCH_FIELDS").is_some() {
            println!("  fields (name, classes, bytes): {:?}", program.classifier.field_sizes());
        }
    }
}

fn compile(quick: bool) {
    let sizes: &[usize] = if quick { &[1_000, 10_000] } else { &[1_000, 10_000, 20_000] };
    let node = synth::node(50);
    for &policies in sizes {
        // Most policies select one app; one in twenty selects every pod (cluster-wide rules).
        let selector =
            |p: usize| if p % 20 == 0 { "all()".to_string() } else { format!("app == 'app{}'", p % synth::APPS) };
        let yaml = synth::policies(3, policies, 3, selector);
        let resources = synth::load(&yaml);

        let t = Instant::now();
        let world = ResolvedNode::new(&node, &resources);
        let resolve = t.elapsed();
        let mut cache = ProgramCache::new();
        let tables = cache.compile(&world, 1);
        let full = t.elapsed();
        if std::env::var_os("CALXDP_BENCH_FIELDS").is_some() {
            println!(
                "  resolve_ms={:.1} compile_ms={:.1}",
                resolve.as_secs_f64() * 1e3,
                (full - resolve).as_secs_f64() * 1e3
            );
        }

        // Change one app-scoped policy: a new port in its first rule.
        let changed = load_text(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: pol-000005}\nspec: {order: 5, selector: \"app == 'app5'\", types: [Ingress], ingress: [{action: Allow, protocol: TCP, destination: {ports: [12345]}}]}\n",
            &Origin::file("change"),
        )
        .expect("change loads");
        let mut next = resources.clone();
        next.apply_all(changed.into_iter().map(|d| d.resource));
        let t = Instant::now();
        let world2 = ResolvedNode::new(&node, &next);
        let tables2 = cache.compile(&world2, 2);
        let one = t.elapsed();
        assert!(next.iter().any(|r| matches!(r, Resource::Policy(p) if p.id.name == "pol-000005")));
        println!(
            "policies={policies} full_ms={:.1} one_change_ms={:.1} table_bytes={} programs={} rebuilt_programs={}",
            full.as_secs_f64() * 1e3,
            one.as_secs_f64() * 1e3,
            tables.stats.table_bytes,
            tables.stats.programs,
            tables2.stats.built
        );
    }
}

/// The pipeline on one core, on frames: each packet is parsed from its bytes, decided, and rewritten in
/// place (TTL, MACs, NAT), as a worker does between its RX and TX rings. New flows against 1k policies,
/// and packets of 100k established flows. The decide-only figures (headers handed to the pipeline) are
/// printed beside them, for telling the parse and rewrite apart from the decision. `only` (`established` or
/// `new`) runs one path's whole-path measure alone, for `perf`; `count`, for about that many packets
/// instead of for a time (for instruction counts: `valgrind --tool=callgrind
/// --toggle-collect='*Frames::run*'` with two counts gives the instructions per packet, which machine
/// noise does not move).
fn pipeline(quick: bool, only: Option<&str>, count: Option<usize>) {
    use calxdp_dataplane::path::Port;
    use calxdp_dataplane::pipeline::{Packet, Pipeline};

    let budget = Duration::from_millis(if quick { 500 } else { 3000 });
    let more = |packets: usize, time: Duration| count.map_or(time < budget, |c| packets < c);
    let slot = synth::pipeline_tables();
    const BATCH: usize = 32;
    let flows = 100_000usize;
    let requests = Frames::new((0..400_000).map(synth::dns_flow));
    let replies = Frames::new((0..flows).map(synth::dns_reply));

    // New flows: every packet a flow the table has never seen; a fresh table per round, outside the timing.
    let (mut new_pkts, mut new_time, mut new_decide_pkts, mut new_decide_time) = (0, Duration::ZERO, 0, Duration::ZERO);
    let mut round = 0usize;
    while more(new_pkts, new_time) && only != Some("established") {
        let mut p = Pipeline::new(slot.clone(), 1 << 20);
        let first = round * 7919 % 300_000;
        let start = Instant::now();
        new_pkts += requests.run(&mut p, Port::Uplink(0), first..first + flows, 0);
        new_time += start.elapsed();
        round += 1;
        if only.is_some() {
            continue;
        }
        let mut p = Pipeline::new(slot.clone(), 1 << 20);
        let start = Instant::now();
        new_decide_pkts += decide(&mut p, Port::Uplink(0), (first..first + flows).map(synth::dns_flow), 0);
        new_decide_time += start.elapsed();
    }
    if only == Some("new") {
        println!("new_flow_mpps={:.2}", new_pkts as f64 / new_time.as_secs_f64() / 1e6);
        return;
    }

    // Established: 100k flows opened and answered (a UDP flow is NEW until its reply), then their packets
    // round robin.
    let mut p = Pipeline::new(slot.clone(), 1 << 20);
    requests.run(&mut p, Port::Uplink(0), 0..flows, 0);
    replies.run(&mut p, Port::Workload(0), 0..flows, 0);
    let tracked = p.flows.len();
    let allowed_before = p.counters.allowed;
    let (mut est_pkts, mut est_decide_pkts) = (0usize, 0usize);
    let (mut est_time, mut est_decide_time) = (Duration::ZERO, Duration::ZERO);
    let mut b = 0usize;
    while more(est_pkts, est_time) {
        let from = b * 4096 % flows;
        let start = Instant::now();
        est_pkts += requests.run(&mut p, Port::Uplink(0), from..(from + 4096).min(flows), 1);
        est_time += start.elapsed();
        b += 1;
        if only.is_some() {
            continue;
        }
        let start = Instant::now();
        est_decide_pkts += decide(&mut p, Port::Uplink(0), (from..(from + 4096).min(flows)).map(synth::dns_flow), 1);
        est_decide_time += start.elapsed();
    }
    // Every measured packet must have been an allowed packet of an established flow, or the figure means
    // something else.
    assert_eq!(
        p.counters.allowed - allowed_before,
        (est_pkts + est_decide_pkts) as u64,
        "established packets were dropped"
    );
    assert_eq!(p.flows.len(), tracked, "established packets made new flows");
    let mpps = |n: usize, d: Duration| n as f64 / d.as_secs_f64() / 1e6;
    println!(
        "established_mpps={:.2} new_flow_mpps={:.2} established_decide_mpps={:.2} new_flow_decide_mpps={:.2} ct_bytes_per_flow={} tracked_flows={tracked} policies=100x10",
        mpps(est_pkts, est_time),
        mpps(new_pkts, new_time),
        mpps(est_decide_pkts, est_decide_time),
        mpps(new_decide_pkts, new_decide_time),
        p.flows.bytes_per_flow()
    );

    /// Headers straight into the pipeline, in batches; returns how many.
    fn decide(
        p: &mut Pipeline,
        port: Port,
        headers: impl Iterator<Item = calxdp_policy::packet::PacketHeader>,
        now: u64,
    ) -> usize {
        let mut batch = [Packet::new(port, synth::dns_flow(0), None); BATCH];
        let mut n = 0;
        let mut headers = headers.peekable();
        while headers.peek().is_some() {
            let mut k = 0;
            for (slot, h) in batch.iter_mut().zip(headers.by_ref()) {
                slot.reset(port, h, None);
                k += 1;
            }
            p.process_current(&mut batch[..k], now);
            n += k;
        }
        n
    }

    /// Frames built once; a run copies each into a frame buffer (as the NIC would into the UMEM), parses,
    /// decides and rewrites it.
    struct Frames {
        bytes: Vec<u8>,
        len: usize,
    }
    impl Frames {
        fn new(headers: impl Iterator<Item = calxdp_policy::packet::PacketHeader>) -> Frames {
            let mut bytes = Vec::new();
            let mut len = 0;
            for h in headers {
                let f = calxdp_dataplane::wire::build::FrameSpec::new(h).build();
                len = f.len();
                bytes.extend_from_slice(&f);
            }
            Frames { bytes, len }
        }

        fn run(&self, p: &mut Pipeline, port: Port, range: std::ops::Range<usize>, now: u64) -> usize {
            use calxdp_dataplane::frames::{ingest_into, rewrite};
            let len = self.len;
            let mut buffers = [[0u8; 128]; BATCH];
            let mut batch = [Packet::new(port, synth::dns_flow(0), None); BATCH];
            let mut parsed = [None; BATCH];
            let mut n = 0;
            let mut i = range.start;
            while i < range.end {
                let k = BATCH.min(range.end - i);
                for j in 0..k {
                    let f = &mut buffers[j][..len];
                    f.copy_from_slice(&self.bytes[(i + j) * len..(i + j + 1) * len]);
                    ingest_into(port, f, &mut batch[j], &mut parsed[j]);
                }
                let t = p.process_current(&mut batch[..k], now);
                for j in 0..k {
                    if let Some(parsed) = &parsed[j] {
                        let _ = rewrite(&mut buffers[j][..len], parsed, &batch[j], &t.ports);
                    }
                }
                black_box(&buffers);
                n += k;
                i += k;
            }
            n
        }
    }
}
