//! `calxdp check` names the file, line, column and field of what is wrong, and accepts good manifests.

use std::path::PathBuf;

use calxdp::check::check_path;

fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("calxdp-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const HEAD: &str = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: p\n";

fn error_of(name: &str, text: &str) -> String {
    let p = write(name, text);
    let err = check_path(&p).expect_err("must be rejected");
    assert!(err.starts_with(&p.display().to_string()), "{err}");
    err
}

#[test]
fn unknown_action() {
    let e = error_of("action.yaml", &format!("{HEAD}spec:\n  ingress:\n    - action: Alow\n"));
    assert!(e.contains(":7:15: spec.ingress[0].action: unknown action 'Alow'"), "{e}");
}

#[test]
fn bad_cidr() {
    let e = error_of(
        "cidr.yaml",
        &format!("{HEAD}spec:\n  ingress:\n    - action: Allow\n      source:\n        nets: [10.0.0.0/33]\n"),
    );
    assert!(e.contains(":9:16: spec.ingress[0].source.nets[0]:"), "{e}");
}

#[test]
fn bad_selector_points_into_the_selector() {
    let e = error_of("sel.yaml", &format!("{HEAD}spec:\n  selector: \"app == 'a' && \"\n"));
    assert!(e.contains(":6:28: spec.selector: bad selector"), "{e}");
}

#[test]
fn bad_indentation() {
    let e = error_of("indent.yaml", &format!("{HEAD} spec:\n  selector: all()\n"));
    assert!(e.contains(":5:") && e.contains("YAML syntax error"), "{e}");
}

#[test]
fn numeric_ports_need_a_protocol() {
    let e = error_of(
        "ports.yaml",
        &format!("{HEAD}spec:\n  ingress:\n    - action: Allow\n      destination:\n        ports: [80]\n"),
    );
    assert!(e.contains("spec.ingress[0].destination: destination has numeric ports"), "{e}");
}

#[test]
fn named_ports_with_a_protocol_that_has_none_are_refused_as_calico_does() {
    let e = error_of(
        "named-icmp.yaml",
        &format!("{HEAD}spec:\n  ingress:\n    - action: Allow\n      protocol: ICMP\n      destination:\n        notPorts: [http]\n"),
    );
    assert!(e.contains("spec.ingress[0].destination: destination has ports, but protocol ICMP has none"), "{e}");
    let ok = write("named-any.yaml", &format!("{HEAD}spec:\n  ingress:\n    - action: Allow\n      destination:\n        ports: [http]\n"));
    assert!(check_path(&ok).is_ok(), "a named port without a protocol is fine");
}

#[test]
fn unknown_field() {
    let e = error_of("field.yaml", &format!("{HEAD}spec:\n  ingres:\n    - action: Allow\n"));
    assert!(e.contains(":6:3: spec: unknown field 'ingres'"), "{e}");
}

#[test]
fn one_bad_document_rejects_the_file() {
    let good = format!("{HEAD}spec:\n  selector: all()\n");
    let e = error_of("multi.yaml", &format!("{good}---\n{HEAD}spec:\n  order: high\n"));
    assert!(e.contains(":13:10: spec.order: expected a number"), "{e}");
}

#[test]
fn shipped_examples_and_seed_cases_pass() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let c = check_path(&root.join("examples/policies")).unwrap();
    assert!(c.resources >= 6);
    for entry in std::fs::read_dir(calxdp_tests::shared_cases()).unwrap() {
        let p = entry.unwrap().path();
        check_path(&p).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn what_calxdp_cannot_enforce_is_refused_with_a_sentence_naming_the_field() {
    let e = error_of(
        "domains.yaml",
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata:\n  name: s\nspec:\n  allowedEgressDomains: [example.com]\n",
    );
    assert!(e.contains(":6:25: spec.allowedEgressDomains: allowedEgressDomains is a Calico Enterprise field"), "{e}");
    let e = error_of(
        "bpf.yaml",
        "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata:\n  name: default\nspec:\n  bpfEnabled: true\n",
    );
    assert!(e.contains(":6:15: spec.bpfEnabled: bpfEnabled: true selects Felix's eBPF dataplane"), "{e}");
}

#[test]
fn felix_settings_are_validated_as_felix_validates_them() {
    let felix = "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata:\n  name: default\nspec:\n";
    let e = error_of("rate.yaml", &format!("{felix}  logActionRateLimit: 10/s\n"));
    assert!(e.contains(":6:23: spec.logActionRateLimit: '10/s' is not a rate Felix accepts"), "{e}");
    let e = error_of("deny.yaml", &format!("{felix}  iptablesFilterDenyAction: Refuse\n"));
    assert!(e.contains("spec.iptablesFilterDenyAction: expected Drop or Reject, found 'Refuse'"), "{e}");
    let e = error_of("exclude.yaml", &format!("{felix}  interfaceExclude: eth0.100\n"));
    assert!(e.contains("spec.interfaceExclude: 'eth0.100' is neither an interface name"), "{e}");
    let e = error_of("prefix.yaml", &format!("{felix}  logPrefix: 'calico*'\n"));
    assert!(e.contains("spec.logPrefix: 'calico*' has characters Felix does not accept"), "{e}");
    let ok = write("felix-ok.yaml", &format!("{felix}  logActionRateLimit: 10/second\n  logSeverityScreen: Info\n"));
    assert_eq!(check_path(&ok).unwrap().resources, 1);
}

#[test]
fn cluster_network_policy_loads_and_warns_where_calico_fails_closed() {
    let p = write(
        "cnp.yaml",
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata:\n  name: c\nspec:\n  tier: Admin\n  priority: 3\n  subject: {namespaces: {}}\n  egress:\n    - {action: Pass, to: [{nodes: {}}]}\n",
    );
    let c = check_path(&p).unwrap();
    assert_eq!(c.resources, 1);
    assert!(c.warnings.len() == 1 && c.warnings[0].contains("cnp.yaml:1: warning:"), "{:?}", c.warnings);
    assert!(
        c.warnings[0].contains("spec.egress[0]: Calico cannot convert a rule with a nodes peer"),
        "{:?}",
        c.warnings
    );
    let e = error_of(
        "cnp-bad.yaml",
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata:\n  name: c\nspec:\n  tier: Admin\n  subject: {namespaces: {}}\n  ingress:\n    - {action: Allow, from: [{namespaces: {}}]}\n",
    );
    assert!(e.contains(":9:16: spec.ingress[0].action: unknown action 'Allow' (expected Accept, Deny, Pass)"), "{e}");
}

#[test]
fn a_directory_of_scenarios_is_checked_file_by_file_with_every_error_reported() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // Our scenarios, and the shared cases, each as a whole directory (not only file by file).
    let ours = check_path(&root.join("scenarios")).unwrap_or_else(|e| panic!("{e}"));
    assert!(ours.resources > 0);
    check_path(&calxdp_tests::shared_cases()).unwrap_or_else(|e| panic!("{e}"));
    // A directory mixing a good scenario, a manifest and two bad files: both bad files are named.
    let dir = std::env::temp_dir().join(format!("calxdp-check-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read_dir(root.join("scenarios")).unwrap().next().unwrap().unwrap().path();
    std::fs::copy(&good, dir.join("a-good.yaml")).unwrap();
    std::fs::copy(root.join("../examples/policies/app-policies.yaml"), dir.join("b-manifest.yaml")).unwrap();
    std::fs::write(
        dir.join("c-bad.yaml"),
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: x\nspec:\n  order: high\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(&good).unwrap();
    std::fs::write(dir.join("d-bad-scenario.yaml"), text.replacen("steps:", "steps: 5\nsteps_:", 1)).unwrap();
    let e = check_path(&dir).expect_err("two bad files");
    assert!(e.contains("c-bad.yaml:6:10: spec.order"), "{e}");
    assert!(e.contains("d-bad-scenario.yaml"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
