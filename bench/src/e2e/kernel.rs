//! The kernel baseline of the end-to-end benchmark: the node namespace forwards with Linux itself
//! (`ip_forward`, a /32 route and a permanent neighbour for the pod, as Calico programs them) under the
//! ruleset `calxdp render iptables` makes of the very node and policies calxdp enforces in the same run:
//! Felix's raw, mangle, nat and filter chains with their IP sets, and kube-proxy's rules. It answers "what
//! would the same node cost with Calico's iptables dataplane", on the same traffic and topology.
//!
//! One-way UDP never becomes ESTABLISHED in Linux conntrack (no reply), so, as under Felix, every frame
//! walks the chains; calxdp's flow table likewise keeps the flow new and classifies every frame. The
//! answered flow (the established mix) is accepted by the `-m conntrack --ctstate RELATED,ESTABLISHED -j
//! ACCEPT` Felix puts first in the pod's chains, and calxdp takes its conntrack fast path.

use calxdp::render::{self, apply};
use calxdp_policy::node::NodeConfig;
use calxdp_policy::resolve::ResolvedNode;
use calxdp_policy::resource::ResourceSet;

use super::topo::{self, run, run_in, NODE_NS, NODE_POD_IF, NODE_UP_IF};

/// What was set up, for the report.
#[derive(Debug)]
pub struct KernelSetup {
    pub backend: String,
    pub rules: usize,
    /// Rules in the pod's ingress chain and the policy chains it jumps to.
    pub pod_rules: usize,
    /// The position (from 1) in the pod's ingress chain of its `--ctstate RELATED,ESTABLISHED` accept.
    pub established_at: Option<usize>,
    pub ipsets: usize,
    /// How the node's ingress veth accepts XDP_TX'ed frames: "gro" or "xdp-pass".
    pub napi: &'static str,
    /// Held while the XDP_PASS fallback is attached.
    pub pass: Option<aya::Ebpf>,
}

/// Routes, sysctls, and the rendering of `node` and `resources` in the node namespace.
pub fn setup(node: &NodeConfig, resources: &ResourceSet) -> Result<KernelSetup, String> {
    if let Some(why) = apply::missing_tool() {
        return Err(why);
    }
    let up = NODE_UP_IF;
    run_in(NODE_NS, "sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])?;
    run("ip", &["-n", NODE_NS, "addr", "replace", &format!("{}/24", topo::ip_text(topo::NODE_UP_IP)), "dev", up])?;
    run("ip", &["-n", NODE_NS, "route", "replace", "default", "via", &topo::ip_text(topo::GATEWAY_IP), "dev", up])?;
    run(
        "ip",
        &["-n", NODE_NS, "route", "replace", &format!("{}/32", topo::ip_text(topo::SINK_IP)), "dev", NODE_POD_IF],
    )?;
    pin_neighbour(&topo::ip_text(topo::SINK_IP), &topo::mac_text(topo::SINK_MAC), NODE_POD_IF)?;
    // The sink's replies leave by the uplink toward the gateway (the generator's side, which has no address
    // to answer ARP with).
    pin_neighbour(&topo::ip_text(topo::GATEWAY_IP), &topo::mac_text(topo::GEN_MAC), up)?;
    // The forwarding work on CPU 1 (as the other forwarders' loops are), not on the generator's CPU 0 that
    // runs the veth's receive (RPS moves the stack's processing after the veth's NAPI).
    run_in(NODE_NS, "sh", &["-c", &format!("echo 2 > /sys/class/net/{up}/queues/rx-0/rps_cpus")])?;

    // A veth accepts XDP_TX'ed frames only when it has NAPI: GRO on, else a pass-through XDP program.
    let (napi, pass) = match run_in(NODE_NS, "ethtool", &["-K", up, "gro", "on"]) {
        Ok(_) => ("gro", None),
        Err(_) => {
            let (ebpf, _) = topo::in_netns(NODE_NS, || super::gen::attach("cxb_pass", up))?;
            ("xdp-pass", Some(ebpf))
        }
    };

    // The pod's veth is named for the topology, not `cali…`: tell the rendering, as Felix's
    // InterfacePrefix would be told.
    let world = ResolvedNode::new(node, resources);
    let opts =
        render::Options { interface_prefixes: vec![render::WORKLOAD_PREFIX.to_string(), NODE_POD_IF.to_string()] };
    let rules = render::render_with(&world, &opts);
    let text = rules.v4.restore_text(&[]);
    if let Ok(path) = std::env::var("CXB_E2E_DUMP_RULES") {
        let _ = std::fs::write(&path, format!("{}\n# ---\n{text}", rules.v4.ipset_text()));
    }
    let count = text.lines().filter(|l| l.starts_with("-A")).count();
    let pod_chain = format!("cali-tw-{NODE_POD_IF}");
    let filter = rules.v4.table("filter");
    let pod_rules = filter
        .and_then(|t| t.chain(&pod_chain))
        .map(|c| {
            c.rules.len()
                + c.rules
                    .iter()
                    .filter_map(|r| r.action.strip_prefix("--jump cali-pi-").map(|n| format!("cali-pi-{n}")))
                    .filter_map(|n| filter.and_then(|t| t.chain(&n)).map(|pc| pc.rules.len()))
                    .sum::<usize>()
        })
        .unwrap_or(0);
    let established_at = filter
        .and_then(|t| t.chain(&pod_chain))
        .and_then(|c| c.rules.iter().position(|r| r.matches.contains("--ctstate RELATED,ESTABLISHED")))
        .map(|i| i + 1);
    let ipsets = rules.v4.sets.len() + rules.v6.sets.len();
    apply::apply(Some(NODE_NS), &rules, &[], &[]).map_err(|e| e.to_string())?;
    Ok(KernelSetup { backend: "iptables-legacy".into(), rules: count, pod_rules, established_at, ipsets, napi, pass })
}

/// A permanent neighbour entry in the node namespace: `ip` is at `mac` out of `dev`.
fn pin_neighbour(ip: &str, mac: &str, dev: &str) -> Result<(), String> {
    run("ip", &["-n", NODE_NS, "neigh", "replace", ip, "lladdr", mac, "dev", dev, "nud", "permanent"]).map(|_| ())
}

/// Undoes everything [`setup`] did, so the next forwarder finds the node namespace as it was.
pub fn teardown(setup: KernelSetup) {
    let empty = "*raw\nCOMMIT\n*mangle\nCOMMIT\n*nat\nCOMMIT\n*filter\nCOMMIT\n";
    for cmd in ["iptables-legacy-restore", "ip6tables-legacy-restore"] {
        let _ = apply::run_in(Some(NODE_NS), cmd, &[], Some(empty));
    }
    let _ = run_in(NODE_NS, "ipset", &["destroy"]);
    let _ = run_in(NODE_NS, "sysctl", &["-q", "-w", "net.ipv4.ip_forward=0"]);
    let _ = run("ip", &["-n", NODE_NS, "neigh", "del", &topo::ip_text(topo::SINK_IP), "dev", NODE_POD_IF]);
    let _ = run("ip", &["-n", NODE_NS, "route", "del", &format!("{}/32", topo::ip_text(topo::SINK_IP))]);
    let _ = run("ip", &["-n", NODE_NS, "neigh", "del", &topo::ip_text(topo::GATEWAY_IP), "dev", NODE_UP_IF]);
    let _ = run("ip", &["-n", NODE_NS, "addr", "flush", "dev", NODE_UP_IF]);
    let _ = run_in(NODE_NS, "sh", &["-c", &format!("echo 0 > /sys/class/net/{NODE_UP_IF}/queues/rx-0/rps_cpus")]);
    if setup.napi == "gro" {
        let _ = run_in(NODE_NS, "ethtool", &["-K", NODE_UP_IF, "gro", "off"]);
    }
    drop(setup.pass);
}
