//! The kernel baseline of the end-to-end benchmark: the node namespace forwards with Linux itself
//! (`ip_forward`, a /32 route and a permanent neighbour for the pod, as Calico programs them) under a
//! Felix-shaped iptables ruleset of about as many rules as calxdp's compiled walk for the pod: raw
//! PREROUTING marks, mangle conntrack accept, filter FORWARD → cali-FORWARD → to-workload dispatch →
//! `cali-tw-<veth>` (conntrack RELATED,ESTABLISHED accept, INVALID drop, the tiers' policy chains with
//! ipset matches, ports and CIDRs, most of them not matching), the allow last. It answers "what would the
//! same node cost with Calico's iptables dataplane", on the same traffic and topology.
//!
//! One-way UDP never becomes ESTABLISHED in Linux conntrack (no reply), so, as under Felix, every frame
//! walks the chains; calxdp's flow table likewise keeps the flow new and classifies every frame.

use std::fmt::Write as _;
use std::process::{Command, Stdio};

use super::topo::{self, run, run_in, NODE_NS, NODE_POD_IF, NODE_UP_IF};
use crate::synth::{self, Rng};

/// What was set up, for the report.
#[derive(Debug)]
pub struct KernelSetup {
    pub backend: String,
    pub rules: usize,
    pub ipsets: usize,
    /// How the node's ingress veth accepts XDP_TX'ed frames: "gro" or "xdp-pass".
    pub napi: &'static str,
    /// Held while the XDP_PASS fallback is attached.
    pub pass: Option<aya::Ebpf>,
}

/// Routes, sysctls, ipsets and the ruleset in the node namespace. `policy_rules`: how many rules the pod's
/// policy chains should hold (calxdp's compiled term count for the same policies).
pub fn setup(policy_rules: usize) -> Result<KernelSetup, String> {
    let up = NODE_UP_IF;
    run_in(NODE_NS, "sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])?;
    run("ip", &["-n", NODE_NS, "addr", "replace", &format!("{}/24", topo::ip_text(topo::NODE_UP_IP)), "dev", up])?;
    run("ip", &["-n", NODE_NS, "route", "replace", "default", "via", &topo::ip_text(topo::GATEWAY_IP), "dev", up])?;
    run(
        "ip",
        &["-n", NODE_NS, "route", "replace", &format!("{}/32", topo::ip_text(topo::SINK_IP)), "dev", NODE_POD_IF],
    )?;
    run(
        "ip",
        &[
            "-n",
            NODE_NS,
            "neigh",
            "replace",
            &topo::ip_text(topo::SINK_IP),
            "lladdr",
            &topo::mac_text(topo::SINK_MAC),
            "dev",
            NODE_POD_IF,
            "nud",
            "permanent",
        ],
    )?;
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

    let (sets, ipsets) = ipsets();
    let ruleset = ruleset(policy_rules);
    if let Ok(path) = std::env::var("CXB_E2E_DUMP_RULES") {
        let _ = std::fs::write(&path, format!("{sets}\n# ---\n{ruleset}"));
    }
    let rules = ruleset.lines().filter(|l| l.starts_with("-A")).count();
    let mut errors = Vec::new();
    for (ipset_cmd, backend) in [("ipset", "iptables-legacy"), ("ipset", "iptables-nft")] {
        let _ = run_in(NODE_NS, ipset_cmd, &["destroy"]);
        if let Err(e) = pipe_in(NODE_NS, ipset_cmd, &["restore"], &sets) {
            return Err(format!("ipset restore: {e}"));
        }
        match pipe_in(NODE_NS, &format!("{backend}-restore"), &[], &ruleset) {
            Ok(()) => return Ok(KernelSetup { backend: backend.into(), rules, ipsets, napi, pass }),
            Err(e) => errors.push(e),
        }
    }
    Err(format!("no iptables backend took the ruleset: {}", errors.join("; ")))
}

/// Runs `cmd args` in namespace `ns` with `input` on its standard input.
fn pipe_in(ns: &str, cmd: &str, args: &[&str], input: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, cmd])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    // A write error (the command quit early) shows in its exit status and stderr below.
    let _ = child.stdin.take().expect("piped").write_all(input.as_bytes());
    let out = child.wait_with_output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

const APP_SETS: usize = 50;
const NET_SETS: usize = 20;

/// Felix-style ipsets: one per label selector (the remote pods' addresses), one per CIDR group; the
/// client's set holds the generator's address.
fn ipsets() -> (String, usize) {
    let mut s = String::new();
    for a in 0..APP_SETS {
        let _ = writeln!(s, "create cali40s:app{a} hash:ip family inet hashsize 1024 maxelem 1048576");
        for i in (a..synth::REMOTE_PODS).step_by(synth::APPS) {
            let _ = writeln!(s, "add cali40s:app{a} {}", synth::pod_ip(i));
        }
    }
    let mut rng = Rng::new(17);
    for n in 0..NET_SETS {
        let _ = writeln!(s, "create cali40n:nets{n} hash:net family inet hashsize 1024 maxelem 1048576");
        for _ in 0..8 {
            let _ = writeln!(s, "add cali40n:nets{n} {}.{}.0.0/16", 10 + rng.below(200), rng.below(256));
        }
    }
    let _ = writeln!(s, "create cali40s:client hash:net family inet hashsize 1024 maxelem 1048576");
    let _ = writeln!(s, "add cali40s:client {}/16", topo::ip_text([topo::CLIENT_IP[0], topo::CLIENT_IP[1], 0, 0]));
    (s, APP_SETS + NET_SETS + 1)
}

/// One non-matching policy rule of a realistic mix (the generator's UDP to port 9999 from 220.77.0.1
/// matches none of them), Felix's way: Allow = set the accept mark and return; Pass = set the pass mark
/// and return; Deny = drop.
fn rule(rng: &mut Rng, chain: &str, out: &mut String) {
    let peer = match rng.below(5) {
        0 | 1 => format!("-m set --match-set cali40s:app{} src", rng.below(APP_SETS as u64)),
        2 => format!("-m set --match-set cali40n:nets{} src", rng.below(NET_SETS as u64)),
        3 => format!("-s {}.{}.{}.0/24", 10 + rng.below(200), rng.below(256), rng.below(256)),
        // notNets become a negated set match, as Felix renders them.
        _ => format!(
            "-s 172.{}.0.0/16 -m set ! --match-set cali40n:nets{} src",
            16 + rng.below(16),
            rng.below(NET_SETS as u64)
        ),
    };
    let proto = match rng.below(8) {
        0..=3 => {
            format!("-p tcp -m multiport --dports {}", [80, 443, 8080, 22, 3306, 5432, 6379][rng.below(7) as usize])
        }
        4 => format!("-p udp -m multiport --dports {}", [53, 123, 4789, 8472][rng.below(4) as usize]),
        5 => "-p icmp".to_string(),
        _ => String::new(),
    };
    let m = format!("-A {chain} {proto} {peer}");
    match rng.below(10) {
        0..=5 => {
            let _ = writeln!(out, "{m} -j MARK --set-xmark 0x10000/0x10000");
            let _ = writeln!(out, "-A {chain} -m mark --mark 0x10000/0x10000 -j RETURN");
        }
        6..=7 => {
            let _ = writeln!(out, "{m} -j DROP");
        }
        _ => {
            let _ = writeln!(out, "{m} -j MARK --set-xmark 0x20000/0x20000");
            let _ = writeln!(out, "-A {chain} -m mark --mark 0x20000/0x20000 -j RETURN");
        }
    }
}

/// The whole ruleset as `iptables-restore` input.
fn ruleset(policy_rules: usize) -> String {
    let pod = NODE_POD_IF;
    let mut raw = String::from("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:cali-PREROUTING - [0:0]\n:cali-from-host-endpoint - [0:0]\n");
    raw.push_str("-A PREROUTING -m comment --comment \"cali:raw-prerouting\" -j cali-PREROUTING\n");
    raw.push_str("-A cali-PREROUTING -j MARK --set-xmark 0x0/0xf0000\n");
    raw.push_str("-A cali-PREROUTING -i cali+ -j MARK --set-xmark 0x40000/0x40000\n");
    raw.push_str("-A cali-PREROUTING -m mark --mark 0x40000/0x40000 -m rpfilter --invert -j DROP\n");
    raw.push_str("-A cali-PREROUTING -m mark --mark 0x0/0x40000 -j cali-from-host-endpoint\n");
    raw.push_str("-A cali-PREROUTING -m mark --mark 0x10000/0x10000 -j ACCEPT\nCOMMIT\n");

    let mut mangle =
        String::from("*mangle\n:PREROUTING ACCEPT [0:0]\n:cali-PREROUTING - [0:0]\n:cali-from-host-endpoint - [0:0]\n");
    mangle.push_str("-A PREROUTING -m comment --comment \"cali:mangle-prerouting\" -j cali-PREROUTING\n");
    mangle.push_str("-A cali-PREROUTING -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    mangle.push_str("-A cali-PREROUTING -m mark --mark 0x10000/0x10000 -j ACCEPT\n");
    mangle.push_str("-A cali-PREROUTING -j cali-from-host-endpoint\n");
    mangle.push_str("-A cali-PREROUTING -m comment --comment \"Host endpoint policy accepted packet.\" -m mark --mark 0x10000/0x10000 -j ACCEPT\nCOMMIT\n");

    // Policy chains: three rules each (the synthetic policies' shape), in two tiers like calxdp's set.
    let mut rng = Rng::new(23);
    let chains = policy_rules.div_ceil(3).max(1);
    let mut decl = String::new();
    let mut body = String::new();
    let tw = format!("cali-tw-{pod}");
    let mut tw_body = String::new();
    let _ = writeln!(tw_body, "-A {tw} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT");
    let _ = writeln!(tw_body, "-A {tw} -m conntrack --ctstate INVALID -j DROP");
    let _ = writeln!(tw_body, "-A {tw} -j MARK --set-xmark 0x0/0x10000");
    let platform = chains / 10;
    for (tier, range) in [("platform", 0..platform), ("default", platform..chains)] {
        let _ =
            writeln!(tw_body, "-A {tw} -m comment --comment \"Start of tier {tier}\" -j MARK --set-xmark 0x0/0x20000");
        for c in range {
            let chain = format!("cali-pi-_pol-{c:06}");
            let _ = writeln!(decl, ":{chain} - [0:0]");
            for _ in 0..3 {
                rule(&mut rng, &chain, &mut body);
            }
            let _ = writeln!(tw_body, "-A {tw} -m mark --mark 0x0/0x20000 -j {chain}");
            let _ = writeln!(tw_body, "-A {tw} -m mark --mark 0x10000/0x10000 -j RETURN");
        }
        if tier == "default" {
            // The one policy that admits the benchmark's flow, last in its tier.
            let chain = "cali-pi-_bench.allow-client";
            let _ = writeln!(decl, ":{chain} - [0:0]");
            let _ = writeln!(
                body,
                "-A {chain} -p udp -m set --match-set cali40s:client src -m multiport --dports {} -j MARK --set-xmark 0x10000/0x10000",
                topo::SINK_PORT
            );
            let _ = writeln!(body, "-A {chain} -m mark --mark 0x10000/0x10000 -j RETURN");
            let _ = writeln!(tw_body, "-A {tw} -m mark --mark 0x0/0x20000 -j {chain}");
            let _ = writeln!(tw_body, "-A {tw} -m mark --mark 0x10000/0x10000 -j RETURN");
            let _ = writeln!(
                tw_body,
                "-A {tw} -m comment --comment \"End of tier default. Drop if no policies passed packet\" -m mark --mark 0x0/0x20000 -j DROP"
            );
        }
    }
    let _ = writeln!(tw_body, "-A {tw} -m comment --comment \"Drop if no profiles matched\" -j DROP");

    let mut filter = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for c in [
        "cali-FORWARD",
        "cali-from-hep-forward",
        "cali-from-wl-dispatch",
        "cali-to-wl-dispatch",
        "cali-to-hep-forward",
        "cali-cidr-block",
        &tw,
    ] {
        let _ = writeln!(filter, ":{c} - [0:0]");
    }
    filter.push_str(&decl);
    filter.push_str("-A FORWARD -m comment --comment \"cali:forward\" -j cali-FORWARD\n");
    filter.push_str("-A FORWARD -m comment --comment \"Policy explicitly accepted packet.\" -m mark --mark 0x10000/0x10000 -j ACCEPT\n");
    filter.push_str("-A FORWARD -j DROP\n");
    filter.push_str("-A cali-FORWARD -j MARK --set-xmark 0x0/0xe0000\n");
    filter.push_str("-A cali-FORWARD -m mark --mark 0x0/0x10000 -j cali-from-hep-forward\n");
    filter.push_str("-A cali-FORWARD -i cali+ -j cali-from-wl-dispatch\n");
    let _ = writeln!(filter, "-A cali-FORWARD -o cxn+ -j cali-to-wl-dispatch");
    filter.push_str("-A cali-FORWARD -j cali-to-hep-forward\n");
    filter.push_str("-A cali-FORWARD -j cali-cidr-block\n");
    let _ = writeln!(filter, "-A cali-to-wl-dispatch -o {pod} -g {tw}");
    filter.push_str("-A cali-to-wl-dispatch -m comment --comment \"Unknown interface\" -j DROP\n");
    filter.push_str(&tw_body);
    filter.push_str(&body);
    filter.push_str("COMMIT\n");
    format!("{raw}{mangle}{filter}")
}

/// Undoes everything [`setup`] did, so the next forwarder finds the node namespace as it was.
pub fn teardown(setup: KernelSetup) {
    let empty = "*raw\nCOMMIT\n*mangle\nCOMMIT\n*filter\nCOMMIT\n";
    let _ = pipe_in(NODE_NS, &format!("{}-restore", setup.backend), &[], empty);
    let _ = run_in(NODE_NS, "ipset", &["destroy"]);
    let _ = run_in(NODE_NS, "sysctl", &["-q", "-w", "net.ipv4.ip_forward=0"]);
    let _ = run("ip", &["-n", NODE_NS, "neigh", "del", &topo::ip_text(topo::SINK_IP), "dev", NODE_POD_IF]);
    let _ = run("ip", &["-n", NODE_NS, "route", "del", &format!("{}/32", topo::ip_text(topo::SINK_IP))]);
    let _ = run("ip", &["-n", NODE_NS, "addr", "flush", "dev", NODE_UP_IF]);
    let _ = run_in(NODE_NS, "sh", &["-c", &format!("echo 0 > /sys/class/net/{NODE_UP_IF}/queues/rx-0/rps_cpus")]);
    if setup.napi == "gro" {
        let _ = run_in(NODE_NS, "ethtool", &["-K", NODE_UP_IF, "gro", "off"]);
    }
    drop(setup.pass);
}
