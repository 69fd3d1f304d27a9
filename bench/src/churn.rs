//! `churn --quick`: Felix's driver protocol at scale. 1000 local endpoints, 10 000 policies: the snapshot
//! from the first message to published tables, then one IP set member added, one endpoint added, one
//! policy changed, each from its message to published tables. The messages are framed bytes decoded by
//! the driver's front end (`calxdp::felix::driver`), lowered and published by the same `set_model` the
//! driver uses; a worker picks a publication up at its next batch (one table load per batch). The Felix
//! side (the emulator's calc graph) is not timed.

use std::time::{Duration, Instant};

use calxdp::felix::driver::{read_all, FrontEnd};
use calxdp::felix::emulator::{Emulator, FelixView};
use calxdp::felix::framing::write_frame;
use calxdp::felix::proto::{self, to_dataplane::Payload, ToDataplane};
use calxdp::publisher::TablePublisher;
use calxdp_policy::resource::ResourceSet;

use crate::synth;

/// Feeds `msgs` to the front end as framed bytes and puts what they change in force (the whole model or a
/// patch); returns the time that took. Each change is timed on an idle node: the versions earlier changes
/// retired are freed (on the publisher's background thread) before it starts, as between the changes a node
/// takes apart.
fn apply(front: &mut FrontEnd, publisher: &mut TablePublisher, msgs: &[ToDataplane]) -> Result<Duration, String> {
    std::thread::sleep(SETTLE);
    let mut bytes = Vec::new();
    for m in msgs {
        write_frame(&mut bytes, m).map_err(|e| e.to_string())?;
    }
    let t = Instant::now();
    read_all(front, &mut &bytes[..], None).map_err(|e| e.to_string())?;
    front.publish(publisher).map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    Ok(t.elapsed())
}

/// Longer than freeing the largest version takes here (~0.5 s at 10 000 policies).
const SETTLE: Duration = Duration::from_secs(1);

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

pub fn run(quick: bool) -> Result<(), String> {
    let (endpoints, policies) = if quick { (1_000, 10_000) } else { (1_000, 20_000) };
    let node = synth::node(endpoints);
    let selector =
        |p: usize| if p % 20 == 0 { "all()".to_string() } else { format!("app == 'app{}'", p % synth::APPS) };
    let resources: ResourceSet = synth::load(&synth::policies(3, policies, 3, selector));
    // Baseline, same run: the same node and policies compiled straight from the resources (the YAML front
    // end), no protocol and no lowering.
    let t = std::time::Instant::now();
    let yaml = TablePublisher::new(node.clone(), resources.clone());
    let yaml_insync = t.elapsed();
    drop(yaml);
    let mut emulator = Emulator::new();
    let snapshot = emulator.update(FelixView::compute(&node, &resources).map_err(|e| e.to_string())?);
    let mut seq = snapshot.len() as u64;

    let mut front = FrontEnd::new(&node);
    let mut publisher = TablePublisher::new(node.clone(), ResourceSet::new());
    let insync = apply(&mut front, &mut publisher, &snapshot)?;
    let mut next = |p: Payload| {
        let m = ToDataplane { sequence_number: seq, payload: Some(p) };
        seq += 1;
        m
    };

    // One member added to the NET set with the most users: a remote pod appears.
    let set_id = front
        .state
        .ip_sets
        .iter()
        .filter(|(_, s)| s.kind == calxdp::felix::state::SetKind::Net)
        .map(|(id, _)| id.clone())
        .next()
        .ok_or("the snapshot has no NET set")?;
    let set_id_again = set_id.clone();
    let delta = next(Payload::IpsetDeltaUpdate(proto::IpSetDeltaUpdate {
        id: set_id,
        added_members: vec!["10.99.0.1/32".into()],
        removed_members: Vec::new(),
    }));
    let ipset_delta = apply(&mut front, &mut publisher, &[delta])?;

    // One endpoint added: a pod like pod0 on a new veth.
    let (key, ep) = front.state.workloads.iter().next().map(|(k, e)| (k.clone(), e.clone())).ok_or("no endpoints")?;
    let mut id = key.to_proto();
    id.workload_id = format!("{}-new", id.workload_id);
    let added = next(Payload::WorkloadEndpointUpdate(proto::WorkloadEndpointUpdate {
        id: Some(id),
        endpoint: Some(proto::WorkloadEndpoint {
            name: "calinew".into(),
            ipv4_nets: vec!["10.98.0.1/32".into()],
            ..ep
        }),
    }));
    let endpoint_add = apply(&mut front, &mut publisher, &[added])?;

    // One active policy changed: a new first rule.
    let (pkey, _) = front.state.policies.iter().next().map(|(k, p)| (k.clone(), p.clone())).ok_or("no policies")?;
    let view = FelixView::compute(&node, &resources).map_err(|e| e.to_string())?;
    let mut policy = view.policies.get(&pkey).cloned().ok_or("policy not in the view")?;
    policy.inbound_rules.insert(
        0,
        proto::Rule {
            action: "deny".into(),
            protocol: Some(proto::Protocol { number_or_name: Some(proto::protocol::NumberOrName::Name("tcp".into())) }),
            dst_ports: vec![proto::PortRange { first: 12345, last: 12345 }],
            ..Default::default()
        },
    );
    let update = next(Payload::ActivePolicyUpdate(proto::ActivePolicyUpdate {
        id: Some(proto::PolicyId {
            name: pkey.name.clone(),
            namespace: pkey.namespace.clone(),
            kind: pkey.kind.clone(),
        }),
        policy: Some(policy),
    }));
    let policy_update = apply(&mut front, &mut publisher, &[update])?;

    // The same set's member again, after the policy change: the programs the change spliced are patched
    // too (their base as any program, their splices' policies flattened again from the changed world).
    let again = next(Payload::IpsetDeltaUpdate(proto::IpSetDeltaUpdate {
        id: set_id_again,
        added_members: vec!["10.99.0.2/32".into()],
        removed_members: Vec::new(),
    }));
    let delta_after_splice = apply(&mut front, &mut publisher, &[again])?;
    println!(
        "baseline: yaml_insync_ms={} (the same node and policies published straight from the resources)",
        ms(yaml_insync)
    );
    println!(
        "after the policy change: ipset_delta_after_splice_ms={} (the spliced programs patched too)",
        ms(delta_after_splice)
    );
    println!(
        "endpoints={endpoints} policies={policies} insync_ms={} ipset_delta_ms={} endpoint_add_ms={} policy_update_ms={}",
        ms(insync),
        ms(ipset_delta),
        ms(endpoint_add),
        ms(policy_update)
    );
    Ok(())
}
