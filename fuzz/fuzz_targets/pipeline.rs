//! The whole pipeline on arbitrary frames: parse, decide (against a node with host endpoints, pods,
//! services and policies of every stage), rewrite, parse again. Nothing may panic; every frame gets a
//! verdict; every drop carries a decision that names its counter; a rewritten frame still parses.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;

use calxdp_dataplane::frames::{ingest, rewrite};
use calxdp_dataplane::path::Port;
use calxdp_dataplane::pipeline::Pipeline;
use calxdp_dataplane::tables::{TableSet, TableSlot};
use calxdp_dataplane::wire::parse;
use calxdp_policy::compile::ProgramCache;
use calxdp_policy::node::NodeConfig;
use calxdp_policy::resolve::ResolvedNode;
use calxdp_policy::resource::{load_text, ResourceSet};
use calxdp_policy::yaml::{parse_documents, Field, Origin};

const NODE: &str = "name: n1\ninterfaces: [{name: eth0, ips: [10.0.0.1/24, \"fd00::1/64\"], gateway: 10.0.0.254}]\nworkloads:\n  - {name: a, namespace: app, interface: calia, ips: [192.168.1.10, \"fd00:1::10\"], labels: {app: a}, ports: [{name: http, port: 80}]}\n  - {name: b, namespace: app, interface: calib, ips: [192.168.1.11], labels: {app: b}}\nservices:\n  - {name: s, namespace: app, protocol: TCP, clusterIP: 10.96.0.1, port: 80, nodePort: 30080, backends: [\"192.168.1.10:80\"]}\n  - {name: u, namespace: app, protocol: UDP, clusterIP: 10.96.0.2, port: 53, backends: [\"192.168.1.11:53\"]}\nconfig: {defaultEndpointToHostAction: Accept}\n";

const RESOURCES: &str = "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata: {name: h, labels: {hep: 'y'}}\nspec: {node: n1, interfaceName: eth0, expectedIPs: [10.0.0.1]}\n---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: dnt}\nspec: {selector: has(hep), doNotTrack: true, applyOnForward: true, ingress: [{action: Allow, protocol: UDP, destination: {ports: [9999]}}]}\n---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: pd}\nspec: {selector: has(hep), preDNAT: true, applyOnForward: true, ingress: [{action: Deny, source: {nets: [203.0.113.0/24]}}]}\n---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: host}\nspec: {selector: has(hep), applyOnForward: true, types: [Ingress, Egress], ingress: [{action: Log}, {action: Allow, protocol: TCP, destination: {ports: [22, 80, http]}}], egress: [{action: Allow}]}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: app}\nspec: {podSelector: {matchLabels: {app: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 80}]}]}\n";

fn pipeline() -> &'static Mutex<Pipeline> {
    static P: OnceLock<Mutex<Pipeline>> = OnceLock::new();
    P.get_or_init(|| {
        let origin = Origin::file("node");
        let docs = parse_documents(NODE, &origin).expect("node");
        let node = NodeConfig::parse(Field::root(&docs[0], &origin)).expect("node");
        let mut rs = ResourceSet::new();
        rs.apply_all(load_text(RESOURCES, &Origin::file("res")).expect("resources").into_iter().map(|d| d.resource));
        let world = ResolvedNode::new(&node, &rs);
        let compiled = ProgramCache::new().compile(&world, 1);
        let slot = Arc::new(TableSlot::new(TableSet::new(1, Arc::new(world), Arc::new(compiled))));
        // A small table, so filling it (and refusing new flows) is reachable too.
        Mutex::new(Pipeline::new(slot, 64))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, frame)) = data.split_first() else { return };
    let port = match selector % 4 {
        0 => Port::Uplink(0),
        1 => Port::Workload(0),
        2 => Port::Workload(1),
        _ => Port::Host,
    };
    let mut frame = frame.to_vec();
    let (packet, parsed) = ingest(port, &frame);
    let mut batch = [packet];
    let mut p = pipeline().lock().unwrap_or_else(|e| e.into_inner());
    p.process_current(&mut batch, u64::from(selector) * 1_000_000_000);
    if batch[0].verdict == calxdp_policy::verdict::Verdict::Drop {
        assert!(
            batch[0].decision.drop_reason().is_some(),
            "a drop with the accepting decision {:?}",
            batch[0].decision
        );
    }
    if let Some(parsed) = parsed {
        let tables = p.tables();
        if rewrite(&mut frame, &parsed, &batch[0], &tables.ports).is_ok()
            && parsed.is_ip()
            && batch[0].verdict == calxdp_policy::verdict::Verdict::Allow
        {
            assert!(parse(&frame).is_ok(), "a rewritten frame no longer parses");
        }
    }
});
