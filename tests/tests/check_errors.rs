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
