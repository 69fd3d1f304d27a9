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
        Some("pipeline") => pipeline(quick),
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
                "usage: calxdp-bench classify|compile|pipeline|e2e|curves|soak|churn [--quick] [--minutes N] [--out DIR]"
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

/// The pipeline on one core: new flows against 1k policies, and packets of 100k established flows.
fn pipeline(quick: bool) {
    use calxdp_dataplane::path::Port;
    use calxdp_dataplane::pipeline::{Packet, Pipeline};

    let budget = Duration::from_millis(if quick { 500 } else { 3000 });
    let slot = synth::pipeline_tables();
    const BATCH: usize = 32;
    let flows = 100_000usize;
    let header = synth::dns_flow;

    // New flows: every packet a flow the table has never seen; a fresh table per round, outside the timing.
    let mut new_pkts = 0usize;
    let mut new_time = Duration::ZERO;
    let mut round = 0usize;
    while new_time < budget {
        let mut p = Pipeline::new(slot.clone(), 1 << 20);
        let mut batch = [Packet::new(Port::Uplink(0), header(0), None); BATCH];
        let start = Instant::now();
        for b in 0..(flows / BATCH) {
            for (j, slot) in batch.iter_mut().enumerate() {
                *slot = Packet::new(Port::Uplink(0), header((b * BATCH + j + round * 7) % 400_000), None);
            }
            p.process_current(&mut batch, 0);
        }
        new_time += start.elapsed();
        new_pkts += flows / BATCH * BATCH;
        round += 1;
    }

    // Established: 100k flows opened and answered, then their packets round robin.
    let mut p = Pipeline::new(slot.clone(), 1 << 20);
    let mut batch = [Packet::new(Port::Uplink(0), header(0), None); BATCH];
    for b in 0..(flows / BATCH) {
        for (j, s) in batch.iter_mut().enumerate() {
            *s = Packet::new(Port::Uplink(0), header(b * BATCH + j), None);
        }
        p.process_current(&mut batch, 0);
    }
    let tracked = p.flows.len();
    let mut est_pkts = 0usize;
    let start = Instant::now();
    let mut b = 0usize;
    while start.elapsed() < budget {
        for (j, s) in batch.iter_mut().enumerate() {
            *s = Packet::new(Port::Uplink(0), header((b * BATCH + j) % flows), None);
        }
        p.process_current(&mut batch, 1);
        est_pkts += BATCH;
        b += 1;
    }
    let est_time = start.elapsed();
    println!(
        "established_mpps={:.2} new_flow_mpps={:.2} ct_bytes_per_flow={} tracked_flows={tracked} policies=100x10",
        est_pkts as f64 / est_time.as_secs_f64() / 1e6,
        new_pkts as f64 / new_time.as_secs_f64() / 1e6,
        p.flows.bytes_per_flow()
    );
}
