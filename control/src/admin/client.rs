//! The CLI's side of the admin socket: one request, one answer, printed as a table or as JSON.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::proto::{self, Request, Response};

/// Longest answer the CLI reads (a full conntrack listing of a large node).
const MAX_ANSWER: u64 = 512 * 1024 * 1024;

/// An answer that is not what the request asks for (another version of calxdp answered, say).
#[derive(Debug, thiserror::Error)]
#[error("an answer calxdp cannot read: {0}")]
pub struct BadAnswer(pub serde_json::Error);

/// Why a request got no answer; each is a sentence naming the socket.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error(
        "cannot reach a running node on {}: {error} (is `calxdp run`, `felix-driver` or `demo --keep` running? --admin \
         names another socket)",
        .path.display()
    )]
    Unreachable { path: std::path::PathBuf, error: std::io::Error },
    #[error("cannot encode the request: {0}")]
    Encode(serde_json::Error),
    #[error("{}: {error}", .path.display())]
    Send { path: std::path::PathBuf, error: std::io::Error },
    #[error("{}: no answer: {error}", .path.display())]
    NoAnswer { path: std::path::PathBuf, error: std::io::Error },
    /// The node's own error, as it answered.
    #[error("{0}")]
    Node(String),
    #[error("{}: {error}", .path.display())]
    Unreadable { path: std::path::PathBuf, error: BadAnswer },
}

/// Sends `req` to the node serving `socket` and returns its answer (or the node's error).
pub fn ask(socket: &Path, req: &Request, wait: Duration) -> Result<serde_json::Value, AskError> {
    let at = || socket.to_path_buf();
    let mut s = UnixStream::connect(socket).map_err(|e| AskError::Unreachable { path: at(), error: e })?;
    let _ = s.set_read_timeout(Some(wait));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let mut line = serde_json::to_vec(req).map_err(AskError::Encode)?;
    line.push(b'\n');
    s.write_all(&line).map_err(|e| AskError::Send { path: at(), error: e })?;
    let mut answer = String::new();
    BufReader::new(std::io::Read::take(&mut s, MAX_ANSWER))
        .read_line(&mut answer)
        .map_err(|e| AskError::NoAnswer { path: at(), error: e })?;
    match serde_json::from_str::<Response>(&answer) {
        Ok(Response::Ok(v)) => Ok(v),
        Ok(Response::Error(e)) => Err(AskError::Node(e)),
        Err(e) => Err(AskError::Unreadable { path: at(), error: BadAnswer(e) }),
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, BadAnswer> {
    serde_json::from_value(v).map_err(BadAnswer)
}

fn ms(v: f64) -> String {
    format!("{v:.1} ms")
}

fn ago(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.0}s")
    } else if s < 7200.0 {
        format!("{:.0}m", s / 60.0)
    } else {
        format!("{:.1}h", s / 3600.0)
    }
}

/// The answer as a human reads it.
pub fn render(req: &Request, v: serde_json::Value) -> Result<String, BadAnswer> {
    let mut o = String::new();
    use std::fmt::Write as _;
    match req {
        Request::Status {} => {
            let s: proto::Status = parse(v)?;
            let t = &s.tables;
            let _ = writeln!(o, "node {}: up {}", s.node, ago(s.uptime_seconds));
            let _ = writeln!(
                o,
                "tables v{} (in force for {}): {} policies, {} rules, {} programs, {} local endpoints",
                t.version,
                ago(t.age_seconds),
                t.policies,
                t.rules,
                t.programs,
                t.local_endpoints
            );
            match &s.last_update {
                Some(u) => {
                    let _ = writeln!(
                        o,
                        "last policy update: v{} {} ago, compiled in {}, enforced on every worker {} ({} updates)",
                        u.version,
                        ago(u.seconds_ago),
                        ms(u.compile_ms),
                        u.enforced_ms.map_or_else(|| "not yet seen".into(), |e| format!("after {}", ms(e))),
                        u.publications
                    );
                }
                None => {
                    let _ = writeln!(o, "last policy update: none since start");
                }
            }
            let _ =
                writeln!(o, "\n{:<24} {:>4} {:<28} {:>12} {:>12} {:>10}", "port", "id", "state", "rx", "tx", "dropped");
            for p in &s.ports {
                let _ = writeln!(
                    o,
                    "{:<24} {:>4} {:<28} {:>12} {:>12} {:>10}",
                    p.name, p.id, p.state, p.rx, p.tx, p.dropped
                );
            }
            let _ =
                writeln!(o, "\n{:<8} {:>12} {:>10} {:>10} {:>12}", "worker", "frames", "batches", "busy", "conntrack");
            for w in &s.workers {
                let _ = writeln!(
                    o,
                    "{:<8} {:>12} {:>10} {:>9.3}s {:>12}",
                    w.id, w.frames, w.batches, w.busy_seconds, w.conntrack_entries
                );
            }
            let _ = writeln!(
                o,
                "\nframes {} decided: {} allowed, {} dropped; drops by reason (after the pipeline too):",
                s.frames,
                s.allowed,
                s.frames.saturating_sub(s.allowed)
            );
            for d in s.drops.iter().filter(|d| d.count > 0) {
                let _ = writeln!(o, "  {:>10} {}", d.count, d.reason);
            }
            let by_port: Vec<(&str, &proto::Count)> = s
                .ports
                .iter()
                .flat_map(|p| p.drops.iter().map(move |d| (p.name.as_str(), d)))
                .chain(s.unattributed_drops.iter().map(|d| ("(arrival port unknown)", d)))
                .collect();
            if !by_port.is_empty() {
                let _ = writeln!(o, "drops by the port they arrived on:");
                for (port, d) in by_port {
                    let _ = writeln!(o, "  {:>10} {:<24} {}", d.count, port, d.reason);
                }
            }
            let c = &s.conntrack;
            let _ = writeln!(
                o,
                "conntrack {}/{} entries; {} created, {} expired, {} early-dropped, {} refused (full), {} flushed",
                c.entries, c.capacity, c.created, c.expired, c.early_dropped, c.refused, c.flushed
            );
        }
        Request::ConntrackList { .. } => {
            let f: proto::Flows = parse(v)?;
            for e in &f.entries {
                let _ = writeln!(
                    o,
                    "{:<5} {:<12} {:>7.0} src={} dst={} sport={} dport={} src={} dst={} sport={} dport={}{} v{} worker {}",
                    e.protocol.to_lowercase(),
                    e.state.as_deref().unwrap_or(""),
                    e.expires_seconds,
                    e.src,
                    e.dst,
                    e.sport,
                    e.dport,
                    e.reply_src,
                    e.reply_dst,
                    e.reply_sport,
                    e.reply_dport,
                    if e.replied { "" } else { " [UNREPLIED]" },
                    e.table_version,
                    e.worker
                );
            }
            let _ = writeln!(
                o,
                "calxdp conntrack: {} flow entries listed{}",
                f.entries.len(),
                if f.truncated { " (more matched; narrow with --src/--dst/--proto)" } else { "" }
            );
        }
        Request::ConntrackFlush { .. } => {
            let f: proto::Flushed = parse(v)?;
            let _ = writeln!(o, "calxdp conntrack: {} flow entries have been deleted", f.flushed);
        }
        Request::Rules {} => {
            let r: proto::Rules = parse(v)?;
            let _ = writeln!(o, "tables v{}: {} rules", r.version, r.rules.len());
            let _ = writeln!(
                o,
                "{:>10} {:<12} {:<48} {:<8} {:<8} {:>4} {:<6}",
                "pkts", "tier", "policy / profile", "stage", "dir", "rule", "action"
            );
            for x in &r.rules {
                let owner =
                    x.policy.clone().or_else(|| x.profile.as_ref().map(|p| format!("profile {p}"))).unwrap_or_default();
                let _ = writeln!(
                    o,
                    "{:>10} {:<12} {:<48} {:<8} {:<8} {:>4} {:<6}",
                    x.packets,
                    x.tier.as_deref().unwrap_or("-"),
                    owner,
                    x.stage,
                    x.direction,
                    x.index,
                    x.action
                );
            }
        }
        Request::Explain { .. } => {
            let e: proto::Explained = parse(v)?;
            let _ = writeln!(o, "{} {} (a new connection; tables v{}; nothing sent)", e.packet, e.enters, e.version);
            for (i, s) in e.stages.iter().enumerate() {
                let _ = writeln!(o, "  {}. {s}", i + 1);
            }
            if let Some(t) = &e.translated {
                let _ = writeln!(o, "  service NAT: to {t}");
            }
            let _ = writeln!(
                o,
                "verdict: {}{}; deciding: {}",
                e.verdict.to_uppercase(),
                e.leaves.as_ref().map(|l| format!(" (leaves by {l})")).unwrap_or_default(),
                e.deciding
            );
        }
        Request::Trace { count, .. } => {
            let t: proto::Traced = parse(v)?;
            for (i, f) in t.frames.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "{:>4} {:<10} proto {:<3} {:<44} {:<5} {:<10}{}",
                    i + 1,
                    f.arrived,
                    f.protocol,
                    f.flow,
                    f.verdict,
                    f.leaves.as_deref().unwrap_or("-"),
                    f.translated.as_ref().map(|t| format!(" (to {t})")).unwrap_or_default()
                );
                for s in &f.stages {
                    let _ = writeln!(o, "       {s}");
                }
            }
            if t.timed_out {
                let _ = writeln!(o, "calxdp trace: {} of {count} frames came within the wait", t.frames.len());
            }
        }
    }
    Ok(o)
}
