//! Every public parity case and every scenario of ours through the reference evaluator.

use calxdp::parity::{run, Level};
use calxdp_tests::{own_scenarios, shared_cases};

#[test]
fn shared_cases_pass_at_reference_level() {
    let cases = shared_cases();
    assert!(cases.is_dir(), "the shared parity cases are missing at {} (set CALXDP_SHARED)", cases.display());
    let (report, tally) = run(&[cases], &[Level::Reference]).expect("scenario files");
    print!("{report}");
    assert!(tally.passed > 0, "no step ran");
    assert_eq!(tally.failed, 0, "{report}");
}

#[test]
fn own_scenarios_pass_at_reference_level() {
    let (report, tally) = run(&[own_scenarios()], &[Level::Reference]).expect("scenario files");
    print!("{report}");
    assert!(tally.passed > 0, "no step ran");
    assert_eq!(tally.failed, 0, "{report}");
}
