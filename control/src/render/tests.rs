//! The rendering against a ruleset Felix wrote: the worked example of notes/felix-iptables.md §15 (a node
//! with a named host endpoint under a three-rule GNP, and two pods, one selected by a GNP with a named
//! port), every rule with its `cali:` hash. Felix's ruleset is in `testdata/felix-example.rules`.

use std::collections::BTreeMap;

use calxdp_policy::resolve::ResolvedNode;
use calxdp_policy::resource::{load_text, ResourceSet};
use calxdp_policy::yaml::{parse_documents, Field, Origin};

use super::*;

const NODE: &str = r#"
name: node1
interfaces:
  - {name: eth0, ips: [10.0.0.1/24], gateway: 10.0.0.254}
namespaces:
  - {name: default, labels: {}}
workloads:
  - {name: frontend, namespace: default, interface: cali1a2b3c4d5e6, ips: [10.65.0.2], labels: {app: frontend}}
  - {name: backend, namespace: default, interface: cali9f8e7d6c5b4, ips: [10.65.0.3], labels: {app: backend},
     ports: [{name: http, port: 8080, protocol: TCP}]}
config:
  defaultEndpointToHostAction: Accept
"#;

const RESOURCES: &str = r#"
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node1-eth0, labels: {host-endpoint: "true"}}
spec: {node: node1, interfaceName: eth0, expectedIPs: [10.0.0.1]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: host-ssh}
spec:
  selector: has(host-endpoint)
  types: [Ingress]
  ingress:
    - {action: Log, protocol: TCP, destination: {ports: [10250]}}
    - {action: Allow, protocol: TCP, source: {nets: [10.0.0.0/8, 192.168.0.0/16]}, destination: {ports: [10250]}}
    - {action: Deny}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: allow-frontend}
spec:
  selector: app == 'backend'
  types: [Ingress]
  ingress:
    - {action: Allow, protocol: TCP, source: {selector: app == 'frontend'}, destination: {ports: [http, 9090]}}
"#;

fn example() -> ResolvedNode {
    let origin = Origin::file("node");
    let docs = parse_documents(NODE, &origin).expect("node yaml");
    let node = calxdp_policy::node::NodeConfig::parse(Field::root(&docs[0], &origin)).expect("node");
    let mut rs = ResourceSet::new();
    rs.apply_all(load_text(RESOURCES, &Origin::file("resources")).expect("resources").into_iter().map(|d| d.resource));
    ResolvedNode::new(&node, &rs)
}

/// Felix's `-A` lines of each table, by chain.
fn felix_lines() -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut table = String::new();
    for line in include_str!("testdata/felix-example.rules").lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split_whitespace().next().unwrap_or("").to_string();
            out.entry((table.clone(), chain)).or_default().push(line.to_string());
        }
    }
    out
}

fn our_lines(rules: &FamilyRuleset) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for t in &rules.tables {
        for line in t.restore_text(&[]).lines().filter(|l| l.starts_with("-A ")) {
            let chain = line[3..].split_whitespace().next().unwrap_or("").to_string();
            // kube-proxy's rules are not part of Felix's ruleset.
            if line.contains("KUBE-") {
                continue;
            }
            out.entry((t.name.to_string(), chain)).or_default().push(line.to_string());
        }
    }
    out
}

#[test]
fn renders_felix_example_byte_for_byte() {
    let world = example();
    let ours = our_lines(&render_family(&world, calxdp_policy::net::IpFamily::V4));
    let theirs = felix_lines();
    // The example node has a natOutgoing IP pool, which the node model does not have.
    let skip = [("nat", "cali-nat-outgoing")];
    let mut compared = 0;
    for ((table, chain), lines) in &theirs {
        if skip.contains(&(table.as_str(), chain.as_str())) {
            continue;
        }
        let got = ours.get(&(table.clone(), chain.clone())).cloned().unwrap_or_default();
        assert_eq!(&got, lines, "table {table} chain {chain}");
        compared += lines.len();
    }
    assert!(compared > 150, "compared only {compared} rules");
    // And nothing of Felix's is missing or extra (chains with rules).
    for (key, lines) in &ours {
        if !theirs.contains_key(key) {
            panic!("extra chain {key:?}: {lines:?}");
        }
    }
}

#[test]
fn sets_hold_the_selected_endpoints() {
    let r = render_family(&example(), calxdp_policy::net::IpFamily::V4);
    let frontend = &r.sets["cali40s:NgAztXgCjQllj3pd-bE8lGi"];
    assert_eq!(frontend.members.iter().cloned().collect::<Vec<_>>(), ["10.65.0.2/32"]);
    let http = &r.sets["cali40n:cl9_Kgeu4H0OGLbhovVR3NB"];
    assert_eq!(http.members.iter().cloned().collect::<Vec<_>>(), ["10.65.0.3,tcp:8080"]);
    assert!(r.ipset_text().contains("create cali40n:cl9_Kgeu4H0OGLbhovVR3NB hash:ip,port family inet maxelem 1048576"));
}

#[test]
fn comments_are_escaped_as_felix_does() {
    assert_eq!(escape_comment("a b\"c;d"), "a b_c_d");
    assert_eq!(escape_comment(&"x".repeat(300)).len(), 256);
}
