//! `calxdp render iptables` as a user runs it: the printed rendering, and `--apply-in` loading it into a
//! fresh network namespace with the legacy iptables tools (root: `#[ignore]`d, run by scripts/test as root).

use std::path::PathBuf;
use std::process::Command;

use calxdp::live::{is_root, Namespaces};
use calxdp::render::apply::{missing_tool, run_in};

fn calxdp(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_calxdp"))
        .args(args)
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("run calxdp");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn render_prints_sets_and_every_table() {
    let (code, out, err) =
        calxdp(&["render", "iptables", "--node", "examples/node.yaml", "--policies", "examples/policies"]);
    assert_eq!(code, 0, "{err}");
    for want in ["create cali40s:", "*raw", "*mangle", "*nat", "*filter", "-A cali-tw-caliweb", "KUBE-SVC-", "COMMIT"] {
        assert!(out.contains(want), "no {want:?} in:\n{out}");
    }
    let (code, _, err) =
        calxdp(&["render", "iptables", "--node", "no/such/node.yaml", "--policies", "examples/policies"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("calxdp render iptables: ") && err.contains("cannot read"), "{err}");
}

#[test]
#[ignore = "needs root (a network namespace) and the legacy iptables tools: scripts/test runs it with --include-ignored as root"]
fn render_applies_into_a_fresh_namespace() {
    assert!(is_root(), "loading a ruleset into a network namespace needs root");
    if let Some(why) = missing_tool() {
        panic!("cannot run: {why}");
    }
    let ns_name = format!("cxrender{}", std::process::id());
    let mut ns = Namespaces::default();
    ns.add(&ns_name).expect("namespace");
    let (code, out, err) = calxdp(&[
        "render",
        "iptables",
        "--node",
        "examples/node.yaml",
        "--policies",
        "examples/policies",
        "--apply-in",
        &ns_name,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with(&format!("loaded into namespace {ns_name}: ")), "{out}");
    let saved = run_in(Some(&ns_name), "iptables-legacy-save", &[], None).expect("save");
    for want in [
        "-A INPUT -m comment --comment \"cali:Cz_u1IQiXIMmKD4c\" -j cali-INPUT",
        "-A cali-to-wl-dispatch",
        ":cali-tw-caliweb",
    ] {
        assert!(saved.contains(want), "no {want:?} in:\n{saved}");
    }
    let sets = run_in(Some(&ns_name), "ipset", &["list", "-n"], None).expect("ipset list");
    assert!(sets.lines().any(|l| l.starts_with("cali40s:")), "{sets}");
    // Applying again replaces, it does not add.
    let (code, _, err) = calxdp(&[
        "render",
        "iptables",
        "--node",
        "examples/node.yaml",
        "--policies",
        "examples/policies",
        "--apply-in",
        &ns_name,
    ]);
    assert_eq!(code, 0, "{err}");
    let again = run_in(Some(&ns_name), "iptables-legacy-save", &[], None).expect("save");
    let count = |s: &str| s.lines().filter(|l| l.starts_with("-A ")).count();
    assert_eq!(count(&saved), count(&again));
}
