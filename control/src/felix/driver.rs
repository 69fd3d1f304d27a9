//! `calxdp felix-driver`: the executable Felix runs as its `DataplaneDriver`. It reads `ToDataplane` frames
//! from fd 3 and writes `FromDataplane` frames to fd 4 (or the files `--in`/`--out` name).
//!
//! Until `InSync` the messages only build up the state (the snapshot is buffered); at `InSync` the model is
//! compiled and published once and the node starts; after that every batch of messages (all that are
//! readable without waiting) is applied and published with one table swap. A broken stream — a length over
//! the limit, a frame that does not decode, a reference to an IP set, policy or profile never sent — ends
//! the driver with one line naming the message and its sequence number, and exit status 1, after which Felix
//! restarts itself and the driver with a fresh snapshot (felix/daemon/daemon.go).
//!
//! Back to Felix: `WorkloadEndpointStatusUpdate`/`HostEndpointStatusUpdate` "up" or "down" as ports attach
//! and detach (…`StatusRemove` when the endpoint goes), and a `ProcessStatusUpdate` every
//! [`STATUS_EVERY`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;

use calxdp_policy::net::IpNet;
use calxdp_policy::node::{FelixConfig, NodeConfig};
use calxdp_policy::resolve::Entity;
use calxdp_policy::resource::{Policy, ResourceSet};

use super::framing::{read_frame, write_frame, FrameError};
use super::proto::{self, from_dataplane, FromDataplane, ToDataplane};
use super::state::{Applied, FelixState, Member, PolicyKey, SetKind, StreamError, WorkloadKey};
use super::{config, lower};
use crate::admin::server::{AdminServer, ServeOptions};
use crate::admin::NodeView;
use crate::live::{LiveNode, LiveOptions, PortEvent};
use crate::publisher::{Patch, Rejected, TablePublisher};

/// How often the driver tells Felix it is alive (Felix's own dataplane: every `ReportingIntervalSecs`, 30 s
/// by default; the issue asks for 10 s).
pub const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Writes one line to stderr, never panicking on a closed stderr.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Where in the stream a frame is: after message N (its sequence number), or the first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position(pub Option<u64>);

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(s) => write!(f, "the frame after message {s}"),
            None => f.write_str("the first frame"),
        }
    }
}

/// Why the stream's state does not make a model: a configuration or a message calxdp cannot express.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Convert(#[from] super::convert::ConvertError),
}

/// Why the driver stopped. A broken stream is one line naming the message and its sequence number (or the
/// frame after the last good one); the rest name what could not be opened or started.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{at}: {error}")]
    Frame { at: Position, error: FrameError },
    #[error("{at}: not a ToDataplane message: {error}")]
    Decode { at: Position, error: prost::DecodeError },
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The node options file does not load.
    #[error(transparent)]
    Load(#[from] calxdp_policy::yaml::LoadError),
    #[error("{}: {error}", .path.display())]
    Open { path: PathBuf, error: std::io::Error },
    #[error("fd {n} is not open: Felix starts the driver with {what} on fd {n} (use --in/--out to run it by hand)")]
    NoFd { n: i32, what: &'static str },
    #[error(transparent)]
    Start(#[from] crate::live::StartError),
    #[error(transparent)]
    Rejected(#[from] Rejected),
    #[error(transparent)]
    Admin(#[from] crate::admin::server::ServeError),
    #[error("writing to Felix: {0}")]
    Report(std::io::Error),
    /// A worker stopped on its own (its death notice).
    #[error("{0}; the dataplane cannot run without it")]
    WorkerDied(String),
}

/// Felix's stream applied to calxdp's model: the state, the node options Felix does not send, and the
/// Felix configuration those options start from.
#[derive(Debug)]
pub struct FrontEnd {
    pub state: FelixState,
    base: NodeConfig,
    base_felix: FelixConfig,
    /// The last sequence number applied, for errors about frames that carry none.
    last_seq: Option<u64>,
    /// Policies as the last model lowered them, reused while unchanged (`lower::PolicyCache`).
    lowered: std::cell::RefCell<lower::PolicyCache>,
    /// Since the last publication: the set-member entities IP set deltas changed and whether workload
    /// endpoints changed, while nothing else did (`None`: something else did, or nothing was published yet;
    /// the next publication lowers everything).
    set_changes: Option<SetChanges>,
}

/// Entities taken out and put in by IP set deltas (`lower::member_entities_within` before and after), and
/// whether workload endpoints came, changed or went without changing the distinct tier lists (so every
/// policy, tier and order lowers as before).
#[derive(Debug, Default)]
struct SetChanges {
    removed: Vec<Entity>,
    added: Vec<Entity>,
    workloads: bool,
    /// Policies in force whose rules alone changed (`ActivePolicyUpdate` with the same tier and stage flags).
    policies: BTreeSet<PolicyKey>,
}

/// What the next publication is: the whole model, or a patch — set-member entities changed (IP set deltas),
/// the node's workloads replaced, or policies' rules changed — which the publisher puts into the compiled
/// tables without lowering or resolving the rest (`TablePublisher::patch`; if that says the change is more
/// than a patch, publish [`FrontEnd::model`]).
#[derive(Debug)]
pub enum Publication {
    Model(NodeConfig, ResourceSet),
    Patch(Patch),
}

impl FrontEnd {
    /// `base`: the node options (name, uplinks, services, `config:`); its workloads and remote endpoints are
    /// ignored, Felix sends those.
    pub fn new(base: &NodeConfig) -> FrontEnd {
        let mut node = base.clone();
        node.workloads.clear();
        node.remote_endpoints.clear();
        let base_felix = node.felix.clone();
        FrontEnd {
            state: FelixState::new(),
            base: node,
            base_felix,
            last_seq: None,
            lowered: Default::default(),
            set_changes: None,
        }
    }

    /// New node options (services, namespaces) under the same stream.
    pub fn set_base(&mut self, base: &NodeConfig) {
        let mut node = base.clone();
        node.workloads.clear();
        node.remote_endpoints.clear();
        if node != self.base {
            // The next publication must carry the new node: no member patch stands for it.
            self.set_changes = None;
        }
        self.base_felix = node.felix.clone();
        self.base = node;
    }

    /// Where the next frame is, for errors: after message N, or the first.
    fn position(&self) -> Position {
        Position(self.last_seq)
    }

    /// Decodes one frame.
    pub fn decode(&self, frame: &[u8]) -> Result<ToDataplane, DriverError> {
        ToDataplane::decode(frame).map_err(|error| DriverError::Decode { at: self.position(), error })
    }

    /// A framing error, placed in the stream.
    pub fn frame_error(&self, error: FrameError) -> DriverError {
        DriverError::Frame { at: self.position(), error }
    }

    /// Applies one message (checking the configuration it carries).
    pub fn feed(&mut self, msg: ToDataplane) -> Result<Applied, StreamError> {
        let seq = msg.sequence_number;
        if let Some(proto::to_dataplane::Payload::ConfigUpdate(c)) = &msg.payload {
            let map: BTreeMap<String, String> = c.config.clone().into_iter().collect();
            config::settings(&map).map_err(|e| StreamError { seq, message: "ConfigUpdate", detail: e.to_string() })?;
        }
        // An IP set delta may only change the entities at its members' prefixes: those before and after.
        let within = match &msg.payload {
            Some(proto::to_dataplane::Payload::IpsetDeltaUpdate(d)) if self.set_changes.is_some() => {
                self.delta_prefixes(d)
            }
            _ => None,
        };
        let before = within.as_ref().and_then(|w| lower::member_entities_within(&self.state, w));
        let workload = matches!(
            &msg.payload,
            Some(proto::to_dataplane::Payload::WorkloadEndpointUpdate(_))
                | Some(proto::to_dataplane::Payload::WorkloadEndpointRemove(_))
        );
        let lists = self.state.lists_generation();
        // A policy update that keeps its tier and stage flags changes its rules alone.
        let flags = |state: &FelixState, key: &PolicyKey| {
            state.policies.get(key).map(|p| (p.tier.clone(), p.untracked, p.pre_dnat))
        };
        let policy_before = match &msg.payload {
            Some(proto::to_dataplane::Payload::ActivePolicyUpdate(u)) => u.id.as_ref().map(|id| {
                let key = PolicyKey::from_proto(id);
                let before = flags(&self.state, &key);
                (key, before)
            }),
            _ => None,
        };
        let applied = self.state.apply(msg)?;
        self.last_seq = Some(seq);
        let after = within.as_ref().and_then(|w| lower::member_entities_within(&self.state, w));
        match (applied, before, after) {
            (Applied::Ignored, ..) => {}
            (_, Some(before), Some(after)) => {
                if let Some(c) = &mut self.set_changes {
                    c.removed.extend(before);
                    c.added.extend(after);
                }
            }
            // An endpoint under tier lists others already carry (or that others still carry after it left):
            // the policies, tiers and their orders lower as before.
            _ if workload && self.state.lists_generation() == lists => {
                if let Some(c) = &mut self.set_changes {
                    c.workloads = true;
                }
            }
            _ if policy_before
                .as_ref()
                .is_some_and(|(k, before)| before.is_some() && flags(&self.state, k) == *before) =>
            {
                if let (Some(c), Some((key, _))) = (&mut self.set_changes, policy_before) {
                    c.policies.insert(key);
                }
            }
            _ => self.set_changes = None,
        }
        Ok(applied)
    }

    /// The prefixes an `IP`/`NET` set delta adds or removes; `None` for other sets or members that do not
    /// parse (the state refuses those).
    fn delta_prefixes(&self, d: &proto::IpSetDeltaUpdate) -> Option<Vec<IpNet>> {
        let set = self.state.ip_sets.get(&d.id)?;
        if set.kind == SetKind::IpAndPort {
            return None;
        }
        let mut out = Vec::new();
        for m in &d.removed_members {
            match set.members.get(m)? {
                Member::Net(n) => out.push(*n),
                Member::IpPort(..) => return None,
            }
        }
        for m in &d.added_members {
            match Member::parse(set.kind, m).ok()? {
                Member::Net(n) => out.push(n),
                Member::IpPort(..) => return None,
            }
        }
        Some(out)
    }

    /// What to publish for the messages fed since the last publication (see [`Publication`]); the caller
    /// publishes it, or calls [`FrontEnd::publication_failed`].
    pub fn publication(&mut self) -> Result<Publication, ModelError> {
        let changes = self.set_changes.replace(SetChanges::default());
        match changes {
            Some(SetChanges { mut removed, mut added, workloads, policies })
                if workloads || !(removed.is_empty() && added.is_empty() && policies.is_empty()) =>
            {
                // An entity a delta put in and a later one took out (or one unchanged) is no change.
                let mut i = 0;
                while i < added.len() {
                    match removed.iter().position(|r| *r == added[i]) {
                        Some(j) => {
                            removed.swap_remove(j);
                            added.swap_remove(i);
                        }
                        None => i += 1,
                    }
                }
                let workloads = match workloads {
                    true => Some(self.workloads()?),
                    false => None,
                };
                let Some(policies) = self.lower_rules(&policies) else {
                    let (node, resources) = self.model()?;
                    return Ok(Publication::Model(node, resources));
                };
                Ok(Publication::Patch(Patch { removed, added, workloads, policies }))
            }
            _ => {
                let (node, resources) = self.model()?;
                Ok(Publication::Model(node, resources))
            }
        }
    }

    /// The policies `keys` as the last lowering made them with the state's rules: their order, selector and
    /// types depend on the endpoints' tier lists, which have not changed. `None` if one was not lowered.
    fn lower_rules(&self, keys: &BTreeSet<PolicyKey>) -> Option<Vec<Arc<Policy>>> {
        let mut lowered = self.lowered.borrow_mut();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let p = self.state.policies.get(key)?;
            let (version, before) = lowered.get_mut(key)?;
            let policy =
                Arc::new(Policy { ingress: p.inbound.clone(), egress: p.outbound.clone(), ..(**before).clone() });
            (*version, *before) = (p.version, policy.clone());
            out.push(policy);
        }
        Some(out)
    }

    /// Puts what the stream changed since the last publication in force on `target`: a patch when there is
    /// one and the target takes it, else the whole model. On either error the next publication is the whole
    /// model. `Err` outside: the stream's state makes no model; inside: the target refused it (the tables in
    /// force stay).
    pub fn publish(&mut self, target: &mut impl Target) -> Result<Result<(), Rejected>, ModelError> {
        let result = self.publish_on(target);
        if !matches!(result, Ok(Ok(()))) {
            self.publication_failed();
        }
        result
    }

    fn publish_on(&mut self, target: &mut impl Target) -> Result<Result<(), Rejected>, ModelError> {
        let (node, resources) = match self.publication()? {
            Publication::Model(node, resources) => (node, resources),
            Publication::Patch(patch) => match target.patch(patch) {
                Ok(true) => return Ok(Ok(())),
                Ok(false) => self.model()?,
                Err(e) => return Ok(Err(e)),
            },
        };
        Ok(target.set_model(node, resources))
    }

    /// The node's workloads as the state has them (as [`FrontEnd::model`] lowers them).
    fn workloads(&self) -> Result<Vec<calxdp_policy::node::Workload>, ModelError> {
        Ok(lower::workloads(&self.state)?)
    }

    /// The whole model ([`FrontEnd::model`]) was published by the caller: later deltas may be patched onto it.
    pub fn published_whole(&mut self) {
        self.set_changes = Some(SetChanges::default());
    }

    /// The last publication was not put in force: the next one lowers the whole model.
    pub fn publication_failed(&mut self) {
        self.set_changes = None;
    }

    /// The node and resources the state stands for.
    pub fn model(&self) -> Result<(NodeConfig, ResourceSet), ModelError> {
        let felix = match &self.state.config {
            Some(c) => config::apply(&self.base_felix, c)?,
            None => self.base_felix.clone(),
        };
        Ok(lower::lower(&self.state, &self.base, &felix, &mut self.lowered.borrow_mut())?)
    }
}

/// How the driver was asked to run.
#[derive(Debug, Clone)]
pub struct DriverOptions {
    /// The node options file (as `calxdp run --node`); workloads in it are ignored.
    pub node: Option<PathBuf>,
    /// Read Felix's messages from this file instead of fd 3.
    pub input: Option<PathBuf>,
    /// Write messages to Felix to this file instead of fd 4.
    pub output: Option<PathBuf>,
    pub live: LiveOptions,
    /// Compile and publish every update but take over no interface (no root needed).
    pub check: bool,
    /// How often to send `ProcessStatusUpdate` ([`STATUS_EVERY`] unless a test says otherwise).
    pub status_every: Duration,
    /// Where to serve the admin API and metrics once the node runs (not with `check`).
    pub serve: ServeOptions,
}

/// Opens fd `n` as a file (Felix's pipes).
fn inherited_fd(n: i32, what: &'static str) -> Result<File, DriverError> {
    // Felix hands the descriptor to the driver and the driver opens it once, here; a driver started by hand
    // without it gets a sentence.
    calxdp_dataplane::sys::process::inherited_fd(n).ok_or(DriverError::NoFd { n, what })
}

/// Reads frames on its own thread, so the control loop can batch what is readable and keep time.
fn spawn_reader(input: File, tx: std::sync::mpsc::SyncSender<Result<Vec<u8>, FrameError>>) {
    std::thread::spawn(move || {
        let mut r = BufReader::with_capacity(1 << 20, input);
        loop {
            let mut buf = Vec::new();
            match read_frame(&mut r, &mut buf) {
                Ok(true) => {
                    if tx.send(Ok(buf)).is_err() {
                        return;
                    }
                }
                Ok(false) => {
                    let _ = tx.send(Ok(Vec::new()));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
}

/// RFC 3339 UTC time, as Felix's `iso_timestamp`.
pub fn iso_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// The running dataplane: the live node, or (with `--check`) only the publisher.
enum Plane {
    Live(Box<LiveNode>),
    Check(Box<TablePublisher>),
}

/// Where [`FrontEnd::publish`] puts a publication in force: the tables alone, or a node that also follows
/// the workloads with its ports.
pub trait Target {
    /// What the patch says changed and nothing else (`TablePublisher::patch`); `Ok(false)`, with nothing
    /// changed, when the change is more than a patch.
    fn patch(&mut self, patch: Patch) -> Result<bool, Rejected>;
    /// The whole model, in one publication.
    fn set_model(&mut self, node: NodeConfig, resources: ResourceSet) -> Result<(), Rejected>;
}

impl Target for TablePublisher {
    fn patch(&mut self, patch: Patch) -> Result<bool, Rejected> {
        Ok(TablePublisher::patch(self, patch)?.is_some())
    }
    fn set_model(&mut self, node: NodeConfig, resources: ResourceSet) -> Result<(), Rejected> {
        TablePublisher::set_model(self, node, resources).map(|_| ())
    }
}

impl Target for LiveNode {
    fn patch(&mut self, patch: Patch) -> Result<bool, Rejected> {
        LiveNode::patch(self, patch)
    }
    fn set_model(&mut self, node: NodeConfig, resources: ResourceSet) -> Result<(), Rejected> {
        LiveNode::set_model(self, node, resources)
    }
}

impl Target for crate::offline::OfflineNode {
    fn patch(&mut self, patch: Patch) -> Result<bool, Rejected> {
        crate::offline::OfflineNode::patch(self, patch)
    }
    fn set_model(&mut self, node: NodeConfig, resources: ResourceSet) -> Result<(), Rejected> {
        crate::offline::OfflineNode::set_model(self, node, resources)
    }
}

/// The messages back to Felix.
struct Reporter<W: Write> {
    out: W,
    seq: u64,
    started: Instant,
}

impl<W: Write> Reporter<W> {
    fn send(&mut self, p: from_dataplane::Payload) -> Result<(), DriverError> {
        let m = FromDataplane { sequence_number: self.seq, payload: Some(p) };
        self.seq += 1;
        write_frame(&mut self.out, &m).map_err(DriverError::Report)
    }

    fn process_status(&mut self) -> Result<(), DriverError> {
        let p = proto::ProcessStatusUpdate {
            iso_timestamp: iso_timestamp(SystemTime::now()),
            uptime: self.started.elapsed().as_secs_f64(),
        };
        self.send(from_dataplane::Payload::ProcessStatusUpdate(p))
    }

    /// An interface went up or down: the endpoint on it, if any, gets that status.
    fn port(&mut self, state: &FelixState, iface: &str, status: &str) -> Result<(), DriverError> {
        let st = Some(proto::EndpointStatus { status: status.into() });
        for (k, ep) in state.workloads.iter().filter(|(_, ep)| ep.name == iface) {
            let u = proto::WorkloadEndpointStatusUpdate {
                id: Some(k.to_proto()),
                status: st.clone(),
                endpoint: Some(ep.clone()),
            };
            self.send(from_dataplane::Payload::WorkloadEndpointStatusUpdate(u))?;
        }
        for id in state.host_endpoints.iter().filter(|(_, ep)| ep.name == iface).map(|(id, _)| id) {
            let u = proto::HostEndpointStatusUpdate {
                id: Some(proto::HostEndpointId { endpoint_id: id.clone() }),
                status: st.clone(),
            };
            self.send(from_dataplane::Payload::HostEndpointStatusUpdate(u))?;
        }
        Ok(())
    }
}

/// Runs the driver until Felix closes the stream (exit 0), the stream breaks, or `stop` is raised.
pub fn run(opts: &DriverOptions, stop: Arc<AtomicBool>) -> Result<(), DriverError> {
    let base = match &opts.node {
        Some(p) => NodeConfig::load(p)?,
        None => NodeConfig {
            name: hostname(),
            uplinks: Vec::new(),
            namespaces: Vec::new(),
            workloads: Vec::new(),
            remote_endpoints: Vec::new(),
            services: Vec::new(),
            felix: FelixConfig::default(),
        },
    };
    let input = match &opts.input {
        Some(p) => File::open(p).map_err(|error| DriverError::Open { path: p.clone(), error })?,
        None => inherited_fd(3, "Felix's messages")?,
    };
    let output: File = match &opts.output {
        Some(p) => open_output(p)?,
        None => inherited_fd(4, "the pipe back to Felix")?,
    };
    let mut reporter = Reporter { out: BufWriter::new(output), seq: 0, started: Instant::now() };
    let (tx, rx) = sync_channel(1024);
    spawn_reader(input, tx);
    let mut front = FrontEnd::new(&base);
    let mut plane: Option<Plane> = None;
    let mut dirty = false;
    let mut last_status = Instant::now();
    let mut reported_workloads: BTreeSet<WorkloadKey> = BTreeSet::new();
    let mut reported_heps: BTreeSet<String> = BTreeSet::new();
    // The operator's view (`calxdp status`, …, metrics), served from the first InSync on.
    let mut admin: Option<(AdminServer, Arc<NodeView>)> = None;
    while !stop.load(Ordering::Relaxed) {
        // Everything readable now is one batch: Felix sends no end-of-flush marker. Frames are decoded as
        // they are applied, so an error names the message before it.
        let mut batch: Vec<Result<Vec<u8>, FrameError>> = Vec::new();
        let mut ended = false;
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(frame) => batch.push(frame),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => ended = true,
        }
        while batch.last().is_some_and(|f| f.as_ref().is_ok_and(|b| !b.is_empty())) {
            match rx.try_recv() {
                Ok(frame) => batch.push(frame),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    ended = true;
                    break;
                }
            }
        }
        for frame in batch {
            let bytes = match frame {
                Ok(b) if b.is_empty() => {
                    ended = true;
                    break;
                }
                Ok(b) => b,
                Err(e) => return Err(front.frame_error(e)),
            };
            let m = front.decode(&bytes)?;
            match front.feed(m)? {
                Applied::Ignored => {}
                Applied::Changed => dirty = true,
                Applied::InSync => {
                    if plane.is_none() {
                        let (node, resources) = front.model()?;
                        // The first tables are the whole model; what follows may be patched onto them.
                        front.published_whole();
                        plane = Some(start(node, resources, opts)?);
                        dirty = false;
                        if let Some(Plane::Live(live)) = &mut plane {
                            let view = NodeView::new(live);
                            let server = AdminServer::start(&opts.serve, view.clone())?;
                            if let Some(p) = &server.socket {
                                say!("calxdp felix-driver: admin socket {}", p.display());
                            }
                            if let Some(a) = server.metrics {
                                say!("calxdp felix-driver: Prometheus metrics on http://{a}/metrics");
                            }
                            admin = Some((server, view));
                        }
                        say!(
                            "calxdp felix-driver: in sync: {} workload and {} host endpoint(s), {} policies, {} \
                             profiles, {} IP sets",
                            front.state.workloads.len(),
                            front.state.host_endpoints.len(),
                            front.state.policies.len(),
                            front.state.profiles.len(),
                            front.state.ip_sets.len()
                        );
                    }
                }
            }
        }
        // Endpoints that went: Felix drops their status (…StatusRemove), whether or not a port was up.
        if plane.is_some() {
            for k in reported_workloads.iter().filter(|k| !front.state.workloads.contains_key(*k)) {
                let r = proto::WorkloadEndpointStatusRemove { id: Some(k.to_proto()) };
                reporter.send(from_dataplane::Payload::WorkloadEndpointStatusRemove(r))?;
            }
            for id in reported_heps.iter().filter(|id| !front.state.host_endpoints.contains_key(*id)) {
                let r = proto::HostEndpointStatusRemove { id: Some(proto::HostEndpointId { endpoint_id: id.clone() }) };
                reporter.send(from_dataplane::Payload::HostEndpointStatusRemove(r))?;
            }
            reported_workloads = front.state.workloads.keys().cloned().collect();
            reported_heps = front.state.host_endpoints.keys().cloned().collect();
        }
        if dirty {
            if let Some(p) = &mut plane {
                let result = match p {
                    Plane::Live(live) => front.publish(&mut **live)?,
                    Plane::Check(publisher) => front.publish(&mut **publisher)?,
                };
                if let Err(e) = result {
                    // The stream was valid; the model it describes cannot be compiled. Say so and keep the
                    // tables in force, as `run` does with a bad policy file.
                    say!("calxdp felix-driver: update rejected, tables unchanged: {e}");
                    if let Plane::Live(live) = p {
                        live.rejected_updates += 1;
                    }
                }
                dirty = false;
            }
        }
        if let Some(Plane::Live(live)) = &mut plane {
            live.supervise();
            for e in live.take_events() {
                match e {
                    PortEvent::Up { interface, mode } => {
                        say!("calxdp felix-driver: {interface}: taken over (XDP {mode}, AF_XDP)");
                        reporter.port(&front.state, &interface, "up")?;
                    }
                    PortEvent::Down { interface, why } => {
                        say!("calxdp felix-driver: {interface}: released ({why})");
                        reporter.port(&front.state, &interface, "down")?;
                    }
                    PortEvent::Failed { interface, error } => {
                        say!("calxdp felix-driver: {interface}: cannot take it over: {error}");
                        reporter.port(&front.state, &interface, "error")?;
                    }
                }
            }
            if let Some(death) = live.dead_worker() {
                return Err(DriverError::WorkerDied(death));
            }
            if let Some((_, view)) = &admin {
                view.refresh(live);
            }
        }
        if last_status.elapsed() >= opts.status_every {
            last_status = Instant::now();
            reporter.process_status()?;
        }
        if ended {
            say!("calxdp felix-driver: Felix closed the stream; stopping");
            break;
        }
    }
    if let Some((server, _)) = admin {
        server.stop();
    }
    if let Some(Plane::Live(live)) = plane {
        live.stop();
    }
    Ok(())
}

fn start(node: NodeConfig, resources: ResourceSet, opts: &DriverOptions) -> Result<Plane, DriverError> {
    if opts.check {
        let mut p = TablePublisher::new(node.clone(), ResourceSet::new());
        p.set_model(node, resources)?;
        return Ok(Plane::Check(Box::new(p)));
    }
    let live = LiveNode::start(node, resources, &opts.live, None)?;
    Ok(Plane::Live(Box::new(live)))
}

fn open_output(p: &Path) -> Result<File, DriverError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(p)
        .map_err(|error| DriverError::Open { path: p.to_path_buf(), error })
}

/// Felix's fallback for its own name: the kernel hostname, lower-cased.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_ascii_lowercase()).unwrap_or_default()
}

/// Reads a whole stream from `r` into a front end (tests, the parity level): every message applied, the
/// first error as the driver would print it.
pub fn read_all(front: &mut FrontEnd, r: &mut impl Read, limit: Option<usize>) -> Result<usize, DriverError> {
    let mut buf = Vec::new();
    let mut n = 0;
    while limit.is_none_or(|l| n < l) {
        match read_frame(r, &mut buf) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(front.frame_error(e)),
        }
        let m = front.decode(&buf)?;
        front.feed(m)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(iso_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(iso_timestamp(UNIX_EPOCH + Duration::from_secs(1796181247)), "2026-12-02T03:14:07Z");
    }
}
