//! The `calxdp` binary as a user runs it: exit codes, the closing line, and where messages go.

use std::path::PathBuf;
use std::process::Command;

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
fn check_accepts_the_examples_and_rejects_a_bad_file_with_its_position() {
    let (code, out, _) = calxdp(&["check", "examples/policies"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("examples/policies: ok"), "{out}");

    let bad = std::env::temp_dir().join(format!("calxdp-cli-{}.yaml", std::process::id()));
    std::fs::write(&bad, "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: p}\nspec:\n  ingress: [{action: Allow, protocol: TCP, destination: {ports: [70000]}}]\n").unwrap();
    let (code, out, err) = calxdp(&["check", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains(":5:") && err.contains("spec.ingress[0].destination.ports[0]"), "{err}");
    std::fs::remove_file(bad).ok();
}

#[test]
fn parity_prints_failures_and_the_closing_line() {
    let (code, out, _) =
        calxdp(&["parity", "--level", "pipeline", "tests/scenarios/calxdp-090-static-and-conntrack.yaml"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().last(), Some("11 passed, 0 failed"), "{out}");

    let (code, _, err) = calxdp(&["parity", "--level", "sideways", "tests/scenarios"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid value 'sideways' for '--level <LEVEL>'"), "{err}");
    assert!(err.contains("reference, compiled, pipeline, live, kernel, felix, all"), "{err}");

    let (code, _, err) = calxdp(&["parity", "--level", "reference", "no/such/dir"]);
    assert_eq!(code, 2);
    assert!(err.contains("no/such/dir"), "{err}");
}

#[test]
fn replay_runs_the_readme_command() {
    let dir = std::env::temp_dir().join(format!("calxdp-cli-out-{}", std::process::id()));
    let (code, out, err) = calxdp(&[
        "replay",
        "--node",
        "examples/node.yaml",
        "--policies",
        "examples/policies",
        "examples/capture.pcap",
        "--out-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("12 frames: 8 allowed, 4 dropped"), "{out}");
    assert!(dir.join("web.pcap").is_file() && dir.join("eth0.pcap").is_file());
    std::fs::remove_dir_all(dir).ok();

    let (code, _, err) =
        calxdp(&["replay", "--node", "examples/node.yaml", "--policies", "examples/policies", "README.md"]);
    assert_eq!(code, 1);
    assert!(err.contains("not a pcap file"), "{err}");
}
