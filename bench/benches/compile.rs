//! Criterion: full compile of 1k and 10k policies, and one policy changed at 10k (programs cached).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use calxdp_bench::synth;
use calxdp_policy::compile::ProgramCache;
use calxdp_policy::resolve::ResolvedNode;
use calxdp_policy::resource::load_text;
use calxdp_policy::yaml::Origin;

fn selector(p: usize) -> String {
    if p % 20 == 0 {
        "all()".into()
    } else {
        format!("app == 'app{}'", p % synth::APPS)
    }
}

fn compile(c: &mut Criterion) {
    let node = synth::node(50);
    let mut group = c.benchmark_group("compile");
    for policies in [1_000usize, 10_000] {
        let resources = synth::load(&synth::policies(3, policies, 3, selector));
        group.bench_with_input(BenchmarkId::new("full", policies), &resources, |b, rs| {
            b.iter(|| {
                let world = ResolvedNode::new(&node, rs);
                ProgramCache::new().compile(&world, 1)
            })
        });
    }
    let resources = synth::load(&synth::policies(3, 10_000, 3, selector));
    let mut cache = ProgramCache::new();
    cache.compile(&ResolvedNode::new(&node, &resources), 1);
    let mut port = 20_000u32;
    group.bench_function("one_change/10000", |b| {
        b.iter(|| {
            port += 1;
            let text = format!(
                "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: pol-000005}}\nspec: {{order: 5, selector: \"app == 'app5'\", types: [Ingress], ingress: [{{action: Allow, protocol: TCP, destination: {{ports: [{port}]}}}}]}}\n"
            );
            let mut next = resources.clone();
            next.apply_all(load_text(&text, &Origin::file("change")).expect("loads").into_iter().map(|d| d.resource));
            cache.compile(&ResolvedNode::new(&node, &next), 2)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(3));
    targets = compile
}
criterion_main!(benches);
