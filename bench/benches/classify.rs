//! Criterion: new-flow classification at 10 to 100k rules, classifier against the linear scan of the same
//! terms in the same run.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use calxdp_bench::synth;
use calxdp_policy::compile::{flow_key, ProgramCache};
use calxdp_policy::resolve::{Direction, ResolvedNode, Stage};

fn classify(c: &mut Criterion) {
    let node = synth::node(20);
    let mut group = c.benchmark_group("classify");
    group.throughput(Throughput::Elements(1024));
    for rules in [10usize, 100, 1_000, 10_000, 100_000] {
        let each = 10.min(rules);
        let resources = synth::load(&synth::policies(7, rules / each, each, |_| "all()".into()));
        let world = ResolvedNode::new(&node, &resources);
        let tables = ProgramCache::new().compile(&world, 1);
        let program = tables.workloads[0].get(Stage::Normal, Direction::Ingress).expect("program").clone();
        let keys: Vec<_> = synth::packets(11, 1024, 20).iter().map(flow_key).collect();
        group.bench_with_input(BenchmarkId::new("classifier", rules), &keys, |b, keys| {
            b.iter(|| {
                for k in keys {
                    black_box(program.evaluate(black_box(k), |_| {}));
                }
            })
        });
        if rules <= 10_000 {
            group.bench_with_input(BenchmarkId::new("linear", rules), &keys, |b, keys| {
                b.iter(|| {
                    for k in keys {
                        black_box(program.evaluate_linear(black_box(k), |_| {}));
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = classify
}
criterion_main!(benches);
