//! The parity runner: every scenario through one level of calxdp, one line per failing step, and the closing
//! line `N passed, N failed` (shared/parity/FORMAT.md).

pub mod compiled_level;
pub mod felix_level;
pub mod kernel_level;
pub mod live_level;
pub mod pipeline_level;
pub mod scenario;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use calxdp_dataplane::path::Port;
use calxdp_policy::ids::Tuple;
use calxdp_policy::node::NodeConfig;
use calxdp_policy::packet::PacketHeader;
use calxdp_policy::reference::{Attach, NoSuchPort, NodeModel, PolicyWalker, ReferenceNode};
use calxdp_policy::resource::ResourceSet;
use calxdp_policy::selector::Selector;
use calxdp_policy::verdict::{Egress, Outcome, Verdict};

use crate::live::{IpError, StartError};
use crate::offline::NotAttached;
use crate::publisher::Rejected;
use compiled_level::Compiled;
use scenario::{parse_scenario, PacketStep, Scenario, ScenarioFile, SelectorExpect, SelectorVectors, Step};

/// The levels of calxdp a scenario can run through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Reference,
    Compiled,
    Pipeline,
    Live,
    /// Linux itself, programmed as Felix programs iptables (docs/kernel-oracle.md).
    Kernel,
    /// The pipeline fed through Felix's driver protocol: the emulated Felix's messages over a pipe into
    /// `felix-driver`'s front end (docs/felix-driver.md).
    Felix,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Reference => "reference",
            Level::Compiled => "compiled",
            Level::Pipeline => "pipeline",
            Level::Live => "live",
            Level::Kernel => "kernel",
            Level::Felix => "felix",
        }
    }

    /// Every level, in the order `--level all` runs them: the cheap ones first, those needing root last.
    pub const ALL: [Level; 6] =
        [Level::Reference, Level::Compiled, Level::Pipeline, Level::Felix, Level::Live, Level::Kernel];
}

/// Why a level could not build or run a step; the message ends the step's `FAIL` line.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    NoSuchPort(#[from] NoSuchPort),
    #[error(transparent)]
    UnknownPort(#[from] UnknownPort),
    #[error(transparent)]
    Rejected(#[from] Rejected),
    #[error(transparent)]
    NotAttached(#[from] NotAttached),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Ip(#[from] IpError),
    #[error(transparent)]
    Command(#[from] crate::render::apply::CommandError),
    /// A Felix stream the driver's front end refused, or a model it could not lower (the felix level).
    #[error(transparent)]
    Driver(#[from] crate::felix::driver::DriverError),
    #[error(transparent)]
    Model(#[from] crate::felix::driver::ModelError),
    #[error(transparent)]
    NoConfigForm(#[from] crate::felix::config::NoConfigForm),
    /// What the level's harness saw and no dataplane may do (a frame out of a port the trace does not
    /// name, a bad checksum, a frame never decided), or a probe of the harness itself that failed (a socket
    /// on a test wire, a command in a test namespace). These are findings of the oracle, in its words: the
    /// String is the report.
    #[error("{0}")]
    Finding(String),
}

impl From<String> for StepError {
    fn from(finding: String) -> StepError {
        StepError::Finding(finding)
    }
}

impl From<&str> for StepError {
    fn from(finding: &str) -> StepError {
        StepError::Finding(finding.to_string())
    }
}

/// A step's `in:` names a port the node does not have (the levels that run frames).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnknownPort {
    #[error("no interface {0}")]
    Interface(String),
    #[error("no workload {0}")]
    Workload(String),
}

/// A dataplane under test: takes resources, packets and time, as a scenario gives them.
pub trait Dataplane {
    /// Puts a whole resource set in force. An error rejects it and leaves the previous set in force.
    fn apply(&mut self, resources: &ResourceSet) -> Result<(), StepError>;
    fn process(&mut self, at: &Attach, pkt: &PacketHeader, inner: Option<Tuple>) -> Result<Outcome, StepError>;
    fn advance(&mut self, by: Duration);
    /// Puts a changed node in force (workloads and namespaces come and go); the flows of addresses no
    /// local workload has any more are flushed. An error leaves the previous node in force.
    fn set_node(&mut self, node: &NodeConfig) -> Result<(), StepError>;
}

/// The reference level (interpreted walks) and the compiled level (compiled programs) share the node model.
impl<W: PolicyWalker> Dataplane for NodeModel<W> {
    fn apply(&mut self, resources: &ResourceSet) -> Result<(), StepError> {
        self.set_resources(resources.clone());
        Ok(())
    }

    fn process(&mut self, at: &Attach, pkt: &PacketHeader, inner: Option<Tuple>) -> Result<Outcome, StepError> {
        Ok(NodeModel::process(self, at, pkt, inner)?)
    }

    fn advance(&mut self, by: Duration) {
        NodeModel::advance(self, by)
    }

    fn set_node(&mut self, node: &NodeConfig) -> Result<(), StepError> {
        NodeModel::set_node(self, node.clone());
        Ok(())
    }
}

/// The port a step's `in:` names, for the levels that run frames (pipeline, live).
pub fn port_of(node: &NodeConfig, at: &Attach) -> Result<Port, UnknownPort> {
    match at {
        Attach::Host => Ok(Port::Host),
        Attach::Uplink(n) => {
            node.uplink_by_name(n).map(|i| Port::Uplink(i as u16)).ok_or_else(|| UnknownPort::Interface(n.clone()))
        }
        Attach::Workload(n) => {
            node.workload_by_name(n).map(|i| Port::Workload(i as u16)).ok_or_else(|| UnknownPort::Workload(n.clone()))
        }
    }
}

/// A port as a step's `out:` names it.
pub fn egress_of(node: &NodeConfig, p: Port) -> Egress {
    match p {
        Port::Host => Egress::Host,
        Port::Uplink(u) => Egress::Uplink(node.uplinks[u as usize].name.clone()),
        Port::Workload(w) => Egress::Workload(node.workloads[w as usize].name.clone()),
    }
}

/// Builds a fresh dataplane of a level for a node and its initial resources.
pub fn build(level: Level, node: &NodeConfig, resources: &ResourceSet) -> Result<Box<dyn Dataplane>, StepError> {
    match level {
        Level::Reference => Ok(Box::new(ReferenceNode::new(node.clone(), resources.clone()))),
        Level::Compiled => Ok(Box::new(NodeModel::with_walker(node.clone(), resources.clone(), Compiled::default()))),
        Level::Pipeline => Ok(pipeline_level::build(node, resources)),
        Level::Live => live_level::build(node, resources),
        Level::Kernel => kernel_level::build(node, resources),
        Level::Felix => felix_level::build(node, resources),
    }
}

/// Totals of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub passed: usize,
    pub failed: usize,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

/// A path given to the runner that cannot be listed.
#[derive(Debug, thiserror::Error)]
#[error("{}: {error}", .path.display())]
pub struct ListError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

/// Every `.yaml`/`.yml` file under the paths, sorted.
pub fn scenario_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ListError> {
    let mut out = Vec::new();
    for p in paths {
        collect(p, &mut out).map_err(|error| ListError { path: p.clone(), error })?;
    }
    out.sort();
    Ok(out)
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if p.is_dir() {
        for e in std::fs::read_dir(p)? {
            collect(&e?.path(), out)?;
        }
    } else if p.is_file() || !p.exists() {
        if !p.exists() {
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"));
        }
        if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p.to_path_buf());
        }
    }
    Ok(())
}

/// Runs one file at one level, writing failure lines to `report`.
pub fn run_file(path: &Path, level: Level, report: &mut String) -> Tally {
    let file = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(report, "FAIL {file}: cannot read: {e}");
            return Tally { passed: 0, failed: 1 };
        }
    };
    match parse_scenario(&text, &file) {
        Err(e) => {
            let _ = writeln!(report, "FAIL {e}");
            Tally { passed: 0, failed: 1 }
        }
        Ok(ScenarioFile::Selectors(v)) => run_selectors(&v, report),
        Ok(ScenarioFile::Scenario(s)) => run_scenario(&s, level, report),
    }
}

fn run_selectors(v: &SelectorVectors, report: &mut String) -> Tally {
    let mut t = Tally::default();
    for case in &v.cases {
        let got = match Selector::parse(&case.selector) {
            Err(_) => SelectorExpect::Error,
            Ok(s) if s.matches(&case.labels) => SelectorExpect::Match,
            Ok(_) => SelectorExpect::NoMatch,
        };
        if got == case.expect {
            t.passed += 1;
        } else {
            t.failed += 1;
            let _ = writeln!(
                report,
                "FAIL {}:{}: {}: selector {:?} on {:?}: expected {:?}, got {:?}",
                v.file, case.line, v.name, case.selector, case.labels, case.expect, got
            );
        }
    }
    t
}

/// Runs a scenario's steps in order through one dataplane, so conntrack state carries over.
pub fn run_scenario(s: &Scenario, level: Level, report: &mut String) -> Tally {
    let mut t = Tally::default();
    let mut resources = ResourceSet::new();
    resources.apply_all(s.resources.iter().map(|d| d.resource.clone()));
    let mut dp = match build(level, &s.node, &resources) {
        Ok(dp) => dp,
        Err(e) => {
            let _ = writeln!(report, "FAIL {}: {}: {e}", s.file, s.name);
            return Tally { passed: 0, failed: 1 };
        }
    };
    for step in &s.steps {
        match step {
            Step::Apply { line, docs } => {
                let mut next = resources.clone();
                next.apply_all(docs.iter().map(|d| d.resource.clone()));
                match dp.apply(&next) {
                    Ok(()) => resources = next,
                    Err(e) => {
                        t.failed += 1;
                        let _ = writeln!(report, "FAIL {}:{line}: {}: apply rejected: {e}", s.file, s.name);
                    }
                }
            }
            Step::Delete { line, key } => {
                let mut next = resources.clone();
                if next.delete(key) == 0 {
                    t.failed += 1;
                    let _ = writeln!(report, "FAIL {}:{line}: {}: delete {key}: no such resource", s.file, s.name);
                    continue;
                }
                match dp.apply(&next) {
                    Ok(()) => resources = next,
                    Err(e) => {
                        t.failed += 1;
                        let _ = writeln!(report, "FAIL {}:{line}: {}: delete rejected: {e}", s.file, s.name);
                    }
                }
            }
            Step::Advance { by, .. } => dp.advance(*by),
            Step::Node { line, what, node } => {
                if let Err(e) = dp.set_node(node) {
                    t.failed += 1;
                    let _ = writeln!(report, "FAIL {}:{line}: {}: {what}: {e}", s.file, s.name);
                }
            }
            Step::Packet(p) => match dp.process(&p.attach, &p.header, p.inner) {
                Err(e) => {
                    t.failed += 1;
                    let _ = writeln!(report, "FAIL {}:{}: {}: {}: {e}", s.file, p.line, s.name, p.name);
                }
                Ok(outcome) => match compare(p, &outcome) {
                    None => t.passed += 1,
                    Some(problem) => {
                        t.failed += 1;
                        let _ = writeln!(
                            report,
                            "FAIL {}:{}: {}: {}: {problem}; decided by: {}",
                            s.file, p.line, s.name, p.name, outcome.reason
                        );
                    }
                },
            },
        }
    }
    t
}

/// What differs between a step's expectations and an outcome, if anything.
pub fn compare(p: &PacketStep, o: &Outcome) -> Option<String> {
    let name = |v: Verdict| if v == Verdict::Allow { "allow" } else { "drop" };
    if o.verdict != p.expect {
        return Some(format!("expected {}, got {}", name(p.expect), name(o.verdict)));
    }
    let mut problems = Vec::new();
    if let Some(want) = &p.out {
        let got = o.out.as_ref().map(|e| e.to_string()).unwrap_or_else(|| "nowhere".into());
        if &got != want {
            problems.push(format!("expected out {want}, got {got}"));
        }
    }
    if let Some(want) = p.translated {
        let ok = match o.translated {
            Some(got) => got.ip() == want.ip() && (want.port() == 0 || got.port() == want.port()),
            None => false,
        };
        if !ok {
            problems.push(format!("expected translated {want}, got {:?}", o.translated));
        }
    }
    if let Some(want) = p.tracked {
        if o.tracked != want {
            problems.push(format!("expected tracked {want}, got {}", o.tracked));
        }
    }
    if let Some(want) = p.logged {
        let got = !o.logs.is_empty();
        if got != want {
            problems.push(format!("expected logged {want}, got {got}"));
        }
    }
    if let Some(want) = p.rejected {
        if o.rejected != want {
            problems.push(format!("expected rejected {want}, got {}", o.rejected));
        }
    }
    if problems.is_empty() {
        None
    } else {
        Some(problems.join("; "))
    }
}

/// Runs every file under `paths` at each level; the report holds failure lines and the closing line.
pub fn run(paths: &[PathBuf], levels: &[Level]) -> Result<(String, Tally), ListError> {
    let files = scenario_files(paths)?;
    let mut report = String::new();
    let mut total = Tally::default();
    for &level in levels {
        for f in &files {
            total.add(run_file(f, level, &mut report));
        }
    }
    let _ = writeln!(report, "{} passed, {} failed", total.passed, total.failed);
    Ok((report, total))
}
