//! Every public parity case and every scenario of ours, at every level built so far.

use calxdp::parity::{run, Level};
use calxdp_tests::{own_scenarios, shared_cases};

fn check(level: Level, path: std::path::PathBuf) {
    assert!(path.is_dir(), "scenarios missing at {} (set CALXDP_SHARED for the shared cases)", path.display());
    let (report, tally) = run(&[path], &[level]).expect("scenario files");
    print!("{report}");
    assert!(tally.passed > 0, "no step ran");
    assert_eq!(tally.failed, 0, "{report}");
}

#[test]
fn shared_cases_reference() {
    check(Level::Reference, shared_cases());
}

#[test]
fn shared_cases_compiled() {
    check(Level::Compiled, shared_cases());
}

#[test]
fn own_scenarios_reference() {
    check(Level::Reference, own_scenarios());
}

#[test]
fn own_scenarios_compiled() {
    check(Level::Compiled, own_scenarios());
}

#[test]
fn shared_cases_pipeline() {
    check(Level::Pipeline, shared_cases());
}

#[test]
fn own_scenarios_pipeline() {
    check(Level::Pipeline, own_scenarios());
}

#[test]
fn shared_cases_felix() {
    check(Level::Felix, shared_cases());
}

#[test]
fn own_scenarios_felix() {
    check(Level::Felix, own_scenarios());
}
