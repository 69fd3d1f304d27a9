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
    let err = check_path(&p).expect_err("must be rejected").to_string();
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
    let ok = write(
        "named-any.yaml",
        &format!("{HEAD}spec:\n  ingress:\n    - action: Allow\n      destination:\n        ports: [http]\n"),
    );
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
    let e = check_path(&dir).expect_err("two bad files").to_string();
    assert!(e.contains("c-bad.yaml:6:10: spec.order"), "{e}");
    assert!(e.contains("d-bad-scenario.yaml"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A subfolder calxdp may not list is named as itself, not by its parent. The check runs on a thread
/// without the capabilities that let root read anything (capabilities are per thread), so the directory's
/// permissions hold even for root.
#[test]
fn an_unreadable_subfolder_is_named_as_itself() {
    use std::os::unix::fs::PermissionsExt;
    let d = std::env::temp_dir().join(format!("calxdp-check-unreadable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let sub = d.join("team-a");
    std::fs::create_dir_all(&sub).unwrap();
    let policy = format!("{HEAD}spec:\n  selector: all()\n");
    std::fs::write(d.join("a.yaml"), &policy).unwrap();
    std::fs::write(sub.join("b.yaml"), &policy).unwrap();
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o000)).unwrap();
    let walk = d.clone();
    let got = std::thread::spawn(move || {
        drop_dac_capabilities();
        check_path(&walk)
    })
    .join()
    .unwrap();
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::remove_dir_all(&d).ok();
    let e = got.expect_err("refused").to_string();
    assert!(e.starts_with(&format!("{}: cannot list directory: Permission denied", sub.display())), "{e}");
}

/// Drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the calling thread's effective set.
fn drop_dac_capabilities() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header { version: 0x2008_0522, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: capget and capset read and write one header and two data structs (capability version 3),
    // which these are.
    unsafe {
        assert_eq!(libc::syscall(libc::SYS_capget, &mut h as *mut Header, data.as_mut_ptr()), 0);
        // CAP_DAC_OVERRIDE is 1, CAP_DAC_READ_SEARCH 2.
        data[0].effective &= !((1 << 1) | (1 << 2));
        assert_eq!(libc::syscall(libc::SYS_capset, &mut h as *mut Header, data.as_ptr()), 0);
    }
}
