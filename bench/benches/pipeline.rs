//! Criterion: the pipeline on one core (new flows against 1k rules; packets of 100k established flows),
//! and the flow table alone at 1M entries (insert, lookup), batches of 32.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use calxdp_bench::synth;
use calxdp_dataplane::flow::FlowTable;
use calxdp_dataplane::path::Port;
use calxdp_dataplane::pipeline::{Packet, Pipeline};
use calxdp_policy::ids::Tuple;

const BATCH: usize = 32;

fn pipeline(c: &mut Criterion) {
    let slot = synth::pipeline_tables();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(BATCH as u64));

    let mut established = Pipeline::new(slot.clone(), 1 << 20);
    let mut batch = [Packet::new(Port::Uplink(0), synth::dns_flow(0), None); BATCH];
    let flows = 100_000;
    for b in 0..flows / BATCH {
        for (j, p) in batch.iter_mut().enumerate() {
            *p = Packet::new(Port::Uplink(0), synth::dns_flow(b * BATCH + j), None);
        }
        established.process_current(&mut batch, 0);
    }
    let mut next = 0usize;
    group.bench_function("established/100k_flows", |b| {
        b.iter(|| {
            for p in batch.iter_mut() {
                *p = Packet::new(Port::Uplink(0), synth::dns_flow(next % flows), None);
                next += 1;
            }
            established.process_current(black_box(&mut batch), 1);
        })
    });

    let mut fresh = Pipeline::new(slot, 1 << 20);
    let mut n = 0usize;
    group.bench_function("new_flow/1k_rules", |b| {
        b.iter(|| {
            if fresh.flows.len() > (1 << 20) - 2 * BATCH {
                fresh.flows = FlowTable::with_capacity(1 << 20);
            }
            for p in batch.iter_mut() {
                // Beyond 400k the addresses repeat with new ports: every packet is a new flow.
                let mut h = synth::dns_flow(n % 400_000);
                h.src_port = h.src_port.wrapping_add((n / 400_000) as u16 * 211);
                *p = Packet::new(Port::Uplink(0), h, None);
                n += 1;
            }
            fresh.process_current(black_box(&mut batch), 0);
        })
    });
    group.finish();
}

fn flow_table(c: &mut Criterion) {
    let mut group = c.benchmark_group("flow_table");
    group.throughput(Throughput::Elements(BATCH as u64));
    let million = 1 << 20;
    let mut table = FlowTable::with_capacity(million);
    let flow = |i: usize| {
        let mut h = synth::dns_flow(i % 400_000);
        h.src_port = h.src_port.wrapping_add((i / 400_000) as u16 * 97);
        h
    };
    for i in 0..1_000_000 {
        let h = flow(i);
        let l = table.lookup(&h, None, 0);
        let _ = table.commit(&h, &l, Tuple::of(&h).reversed(), 1, 0);
    }
    let mut i = 0usize;
    group.bench_function("lookup/1M_entries", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                black_box(table.lookup(&flow(i % 1_000_000), None, 1));
                i += 7919;
            }
        })
    });
    let mut fresh = FlowTable::with_capacity(million);
    let mut k = 0usize;
    group.bench_function("insert/up_to_1M_entries", |b| {
        b.iter(|| {
            if fresh.len() > million - BATCH {
                fresh = FlowTable::with_capacity(million);
            }
            for _ in 0..BATCH {
                let h = flow(k);
                let l = fresh.lookup(&h, None, 0);
                let _ = fresh.commit(&h, &l, Tuple::of(&h).reversed(), 1, 0);
                k += 1;
            }
        })
    });
    println!("flow table: {} bytes per flow at capacity {million}", table.bytes_per_flow());
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = pipeline, flow_table
}
criterion_main!(benches);
