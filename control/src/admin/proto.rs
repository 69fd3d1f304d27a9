//! The admin socket's protocol: one JSON object per line each way. A request names its `command`; the
//! answer is `{"ok": ...}` or `{"error": "..."}`. The CLI prints the same answers as tables, or as they
//! are with `--output json`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// What an operator can ask a running node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status {},
    ConntrackList {
        #[serde(default)]
        filter: Filter,
    },
    ConntrackFlush {
        #[serde(default)]
        filter: Filter,
    },
    Rules {},
    Explain {
        from: String,
        to: String,
    },
    Trace {
        count: u32,
        /// How long to wait for the frames, in milliseconds (default 10 s, at most 60 s).
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
}

/// Which conntrack entries: by the original direction's source, destination and protocol number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    #[serde(default)]
    pub src: Option<IpAddr>,
    #[serde(default)]
    pub dst: Option<IpAddr>,
    #[serde(default)]
    pub protocol: Option<u8>,
}

/// One answer line.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(serde_json::Value),
    Error(String),
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub uptime_seconds: f64,
    pub tables: TablesStatus,
    pub last_update: Option<UpdateStatus>,
    pub ports: Vec<PortStatus>,
    pub workers: Vec<WorkerStatus>,
    pub frames: u64,
    pub allowed: u64,
    /// Node-wide, every reason (zeros too).
    pub drops: Vec<Count>,
    /// Drops whose arrival port is not known (fragments that timed out in reassembly, frames handed over
    /// from a port a worker had not taken yet); only the reasons with drops.
    pub unattributed_drops: Vec<Count>,
    pub conntrack: ConntrackStatus,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TablesStatus {
    pub version: u64,
    /// Since the tables in force were published.
    pub age_seconds: f64,
    pub policies: usize,
    pub rules: usize,
    pub programs: usize,
    pub local_endpoints: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub version: u64,
    pub seconds_ago: f64,
    /// From the start of the compile to the table swap.
    pub compile_ms: f64,
    /// From the start of the compile until every worker had taken the new tables (none if they had not
    /// within the wait).
    pub enforced_ms: Option<f64>,
    pub publications: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PortStatus {
    pub name: String,
    pub id: u16,
    pub up: bool,
    pub state: String,
    pub rx: u64,
    pub tx: u64,
    /// Frames that arrived on this port and were dropped, in all and by reason (only reasons with drops).
    pub dropped: u64,
    pub drops: Vec<Count>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub id: usize,
    pub frames: u64,
    pub batches: u64,
    pub busy_seconds: f64,
    pub conntrack_entries: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Count {
    pub reason: String,
    pub count: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConntrackStatus {
    pub entries: usize,
    pub capacity: usize,
    pub created: u64,
    pub expired: u64,
    pub early_dropped: u64,
    pub refused: u64,
    pub flushed: u64,
}

/// One conntrack entry, `conntrack -L` style: the original tuple and the tuple its replies carry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlowEntry {
    pub protocol: String,
    pub state: Option<String>,
    pub expires_seconds: f64,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub reply_src: IpAddr,
    pub reply_dst: IpAddr,
    pub reply_sport: u16,
    pub reply_dport: u16,
    pub replied: bool,
    pub table_version: u32,
    pub worker: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Flows {
    pub entries: Vec<FlowEntry>,
    /// More entries matched than were listed.
    pub truncated: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Flushed {
    pub flushed: usize,
}

/// One rule with its hits, `iptables -L -v` style.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RuleRow {
    pub id: u32,
    pub packets: u64,
    pub tier: Option<String>,
    pub policy: Option<String>,
    pub profile: Option<String>,
    pub stage: String,
    pub direction: String,
    pub index: usize,
    pub action: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Rules {
    pub version: u64,
    pub rules: Vec<RuleRow>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Explained {
    /// Where the packet enters the node and the packet itself, as understood.
    pub enters: String,
    pub packet: String,
    pub verdict: String,
    pub leaves: Option<String>,
    pub translated: Option<String>,
    /// Every chain's part, in order (each with its deciding rule or static behaviour).
    pub stages: Vec<String>,
    pub deciding: String,
    pub version: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TracedFrame {
    pub arrived: String,
    pub protocol: u8,
    pub flow: String,
    pub verdict: String,
    pub leaves: Option<String>,
    pub translated: Option<String>,
    /// Every stage that decided, in order, then the final reason.
    pub stages: Vec<String>,
    pub rejected: bool,
    pub version: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Traced {
    pub frames: Vec<TracedFrame>,
    /// Fewer frames came within the wait than were asked for.
    pub timed_out: bool,
}
