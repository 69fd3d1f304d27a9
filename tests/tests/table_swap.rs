//! Table publication: readers always see one whole, increasing version; a rejected update changes nothing;
//! replaced versions are freed by the publisher once no reader holds them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use calxdp::publisher::TablePublisher;
use calxdp_policy::node::NodeConfig;
use calxdp_policy::resource::{load_text, Port, ResourceKey, ResourceSet};
use calxdp_policy::yaml::{parse_documents, Field, Origin};

fn node() -> NodeConfig {
    let text = "name: n1\ninterfaces: [{name: eth0, ips: [10.0.0.1/24]}]\nworkloads:\n  - {name: a, namespace: app, interface: calia, ips: [192.168.1.10], labels: {app: a}}\n";
    let origin = Origin::file("node");
    let docs = parse_documents(text, &origin).unwrap();
    NodeConfig::parse(Field::root(&docs[0], &origin)).unwrap()
}

fn policy(n: u32) -> Vec<calxdp_policy::resource::ResourceDoc> {
    let text = format!(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: p}}\nspec: {{selector: all(), ingress: [{{action: Allow, protocol: TCP, destination: {{ports: [{n}]}}}}]}}\n"
    );
    load_text(&text, &Origin::file("p")).unwrap()
}

#[test]
fn readers_see_whole_increasing_versions_while_the_publisher_swaps() {
    let mut publisher = TablePublisher::new(node(), ResourceSet::new());
    let slot = publisher.slot();
    let stop = Arc::new(AtomicBool::new(false));
    // Readers and the publisher start together, and a reader loads once more after the publisher stops:
    // on a busy machine a reader scheduled late still checks versions (the last one at least).
    let start = Arc::new(std::sync::Barrier::new(3));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let slot = slot.clone();
            let stop = stop.clone();
            let start = start.clone();
            thread::spawn(move || {
                let mut last = 0;
                let mut loads = 0u64;
                start.wait();
                loop {
                    let stopping = stop.load(Ordering::Acquire);
                    let t = slot.load();
                    assert!(t.epoch >= last, "epoch went back from {last} to {}", t.epoch);
                    // The version is the one published under its epoch: epoch 1 is the empty start, epoch
                    // 2 + i the policy allowing port 1000 + i (a publisher that numbered a version before or
                    // after swapping it in would fail here).
                    let ports: Vec<Port> = t
                        .world
                        .policies
                        .iter()
                        .flat_map(|p| &p.ingress)
                        .flat_map(|r| r.destination.ports.iter().cloned())
                        .collect();
                    let want = match t.epoch {
                        1 => vec![],
                        e => vec![Port::Range(1000 + e as u16 - 2, 1000 + e as u16 - 2)],
                    };
                    assert_eq!(ports, want, "epoch {} holds another version's policy", t.epoch);
                    last = t.epoch;
                    loads += 1;
                    if stopping {
                        break;
                    }
                }
                (loads, last)
            })
        })
        .collect();
    start.wait();
    for i in 0..300 {
        publisher.apply(&policy(1000 + i)).unwrap();
    }
    stop.store(true, Ordering::Release);
    for r in readers {
        let (loads, last) = r.join().unwrap();
        assert!(loads > 0);
        assert_eq!(last, 301, "a reader's last load, after the publisher stopped, sees the last version");
    }
    assert_eq!(slot.epoch(), 301);
    assert_eq!(slot.collect(), 0, "every replaced version is freed once readers let go");
}

#[test]
fn a_rejected_update_leaves_the_running_tables() {
    let mut publisher = TablePublisher::new(node(), ResourceSet::new());
    publisher.apply(&policy(80)).unwrap();
    let before = publisher.slot().epoch();
    let err = publisher.delete(&ResourceKey::parse("GlobalNetworkPolicy/nope").unwrap()).unwrap_err();
    assert!(err.to_string().contains("no such resource"));
    assert_eq!(publisher.slot().epoch(), before);
    assert_eq!(publisher.resources().len(), 1);
}

#[test]
fn a_held_version_is_kept_until_released() {
    let mut publisher = TablePublisher::new(node(), ResourceSet::new());
    let slot = publisher.slot();
    let held = slot.hold();
    let compiled = Arc::downgrade(&held.compiled);
    publisher.apply(&policy(81)).unwrap();
    assert_eq!(slot.collect(), 1, "the version a reader holds is not freed");
    assert!(compiled.upgrade().is_some());
    drop(held);
    assert_eq!(slot.collect(), 0);
    // Released, it is freed (on the publisher's freeing thread): its tables go with it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while compiled.upgrade().is_some() {
        assert!(std::time::Instant::now() < deadline, "a released version was never freed");
        thread::sleep(std::time::Duration::from_millis(10));
    }
}
