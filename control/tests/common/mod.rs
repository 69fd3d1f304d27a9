//! What the admin API tests share: a node process whose output lines are watched (killed if a test fails
//! half-way), the CLI asked for JSON or text, the metrics scraped and checked by promtool, and the number a
//! metric's sample carries.

#![allow(dead_code)] // Each test binary uses its own part.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_calxdp");

/// A running node (`calxdp run` or `demo --keep`), killed (SIGKILL) on drop if the test did not stop it.
pub struct Node {
    pub child: Child,
    lines: Receiver<String>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a node writes the lines a test waits for.
pub enum Output {
    Stdout(ChildStdout),
    Stderr(ChildStderr),
}

impl Node {
    /// Starts `cmd`, whose `watched` output (piped by the caller) is read line by line.
    pub fn start(cmd: &mut Command, watched: fn(&mut Child) -> Output) -> Node {
        let mut child = cmd.spawn().expect("start the node");
        let out = watched(&mut child);
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            let reader: Box<dyn Read + Send> = match out {
                Output::Stdout(s) => Box::new(s),
                Output::Stderr(s) => Box::new(s),
            };
            for l in BufReader::new(reader).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Node { child, lines }
    }

    /// Waits for a line containing `what`; every line seen on the way is returned.
    pub fn wait_for(&self, what: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => {
                    let done = l.contains(what);
                    seen.push(l);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("no line with '{what}' within {within:?}; saw:\n{}", seen.join("\n")),
            }
        }
    }

    /// Sends SIGINT and waits up to `within` for the process to end.
    pub fn interrupt(&mut self, within: Duration) {
        let sent = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + within;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the node did not stop on SIGINT");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The node's stdout, for [`Node::start`].
pub fn stdout(c: &mut Child) -> Output {
    Output::Stdout(c.stdout.take().expect("stdout piped"))
}

/// The node's stderr, for [`Node::start`].
pub fn stderr(c: &mut Child) -> Output {
    Output::Stderr(c.stderr.take().expect("stderr piped"))
}

/// `calxdp ARGS --admin SOCKET`: whether it succeeded, its stdout and stderr.
pub fn cli(socket: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).arg("--admin").arg(socket).output().expect("run calxdp");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// `calxdp ARGS --output json --admin SOCKET`, which must succeed, parsed.
pub fn json(socket: &Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["--output", "json"]);
    let (ok, out, err) = cli(socket, &a);
    assert!(ok, "calxdp {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("calxdp {args:?}: not JSON ({e}): {out}"))
}

/// GET `path` from the metrics listener at `addr`: the status line and the body.
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("metrics port");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
    let mut all = String::new();
    let _ = s.read_to_string(&mut all);
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

/// The metrics at `addr`, which must answer 200.
pub fn scrape(addr: &str) -> String {
    let (status, body) = http_get(addr, "/metrics");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    body
}

/// The value of the sample `series` (name and labels exactly as written, e.g. `a_total{port="x"}`) in a
/// scrape, if it is there.
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `promtool check metrics` on `body`. Without promtool the check is skipped, except in CI.
pub fn promtool_check(body: &str) {
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut p) => {
            p.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
            let out = p.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("promtool not run ({e}): apt-get install prometheus to check the metrics' format");
        }
        Err(e) => panic!("promtool is needed in CI (apt-get install prometheus): {e}"),
    }
}

/// A port's drops for `reason` in `calxdp status --output json`'s answer (0 when it has none).
pub fn port_drops(status: &Value, port: &str, reason: &str) -> u64 {
    let ports = status["ports"].as_array().expect("ports");
    let p = ports.iter().find(|p| p["name"] == port).unwrap_or_else(|| panic!("no port {port} in {status}"));
    p["drops"].as_array().unwrap().iter().find(|d| d["reason"] == reason).map_or(0, |d| d["count"].as_u64().unwrap())
}
