//! `calxdp felix-driver` as Felix runs it: messages on fd 3, answers on fd 4 (real pipes), no arguments
//! about the stream. A whole emulated snapshot is taken in and the driver stops when Felix closes the pipe;
//! a broken stream ends it with exit status 1 and one line naming the message.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message;

use calxdp::felix::emulator::{Emulator, FelixView};
use calxdp::felix::framing::{pipe, read_frame, write_frame};
use calxdp::felix::proto::{self, from_dataplane, to_dataplane::Payload, FromDataplane, ToDataplane};
use calxdp::parity::scenario::{parse_scenario, ScenarioFile};
use calxdp_policy::resource::ResourceSet;

/// A descriptor moved above the range the child's 3 and 4 take, close-on-exec.
fn high(fd: &impl AsRawFd) -> OwnedFd {
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor; on success it is ours alone.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
    assert!(n >= 100, "fcntl: {}", std::io::Error::last_os_error());
    // SAFETY: `n` is a fresh descriptor nothing else owns.
    unsafe { OwnedFd::from_raw_fd(n) }
}

/// The driver with `to_driver` on its fd 3 and `from_driver` on its fd 4, as Felix starts it.
struct Driver {
    child: std::process::Child,
    to_driver: std::fs::File,
    from_driver: std::fs::File,
}

fn start(args: &[&str]) -> Driver {
    let (r3, to_driver) = pipe().unwrap();
    let (from_driver, w4) = pipe().unwrap();
    let (h3, h4) = (high(&r3), high(&w4));
    drop((r3, w4));
    let (f3, f4) = (h3.as_raw_fd(), h4.as_raw_fd());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_calxdp"));
    cmd.arg("felix-driver")
        .arg("--check")
        .args(args)
        .env_remove("CALXDP_NODE")
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec only async-signal-safe dup2 runs; dup2 clears close-on-exec on 3 and 4.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(f3, 3) < 0 || libc::dup2(f4, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("start calxdp felix-driver");
    drop((h3, h4));
    Driver { child, to_driver, from_driver }
}

impl Driver {
    fn send(&mut self, msgs: &[ToDataplane]) {
        for m in msgs {
            write_frame(&mut self.to_driver, m).unwrap();
        }
    }

    fn send_bytes(&mut self, b: &[u8]) {
        self.to_driver.write_all(b).unwrap();
    }

    /// Closes Felix's end and waits: exit code, stderr, and every frame the driver wrote.
    fn finish(self) -> (i32, String, Vec<FromDataplane>) {
        let Driver { mut child, to_driver, mut from_driver } = self;
        drop(to_driver);
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "the driver did not stop after Felix closed the pipe");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let mut frames = Vec::new();
        let mut buf = Vec::new();
        while read_frame(&mut from_driver, &mut buf).expect("well-formed frames to Felix") {
            frames.push(FromDataplane::decode(&buf[..]).expect("a FromDataplane"));
        }
        (status.code().unwrap_or(-1), err, frames)
    }
}

fn scenario_stream() -> Vec<ToDataplane> {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("tests/scenarios/calxdp-090-static-and-conntrack.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let Ok(ScenarioFile::Scenario(s)) = parse_scenario(&text, &path.display().to_string()) else { panic!("scenario") };
    let mut resources = ResourceSet::new();
    resources.apply_all(s.resources.iter().map(|d| d.resource.clone()));
    Emulator::new().update(FelixView::compute(&s.node, &resources).unwrap())
}

#[test]
fn takes_a_snapshot_reports_status_and_stops_when_felix_goes() {
    let msgs = scenario_stream();
    assert!(matches!(msgs.first().and_then(|m| m.payload.as_ref()), Some(Payload::ConfigUpdate(_))));
    assert!(matches!(msgs.last().and_then(|m| m.payload.as_ref()), Some(Payload::InSync(_))));
    let mut d = start(&["--status-every", "0.3"]);
    d.send(&msgs);
    std::thread::sleep(Duration::from_millis(1200));
    let (code, err, frames) = d.finish();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("in sync:") && err.contains("Felix closed the stream"), "{err}");
    let statuses: Vec<&proto::ProcessStatusUpdate> = frames
        .iter()
        .filter_map(|f| match &f.payload {
            Some(from_dataplane::Payload::ProcessStatusUpdate(p)) => Some(p),
            _ => None,
        })
        .collect();
    assert!(statuses.len() >= 2, "{frames:?}");
    assert!(statuses.iter().all(|p| p.iso_timestamp.ends_with('Z') && p.uptime > 0.0), "{statuses:?}");
    // Sequence numbers count up from 0.
    assert!(frames.iter().enumerate().all(|(i, f)| f.sequence_number == i as u64));
}

#[test]
fn a_length_over_the_limit_is_one_line_and_exit_1() {
    let mut d = start(&[]);
    d.send(&scenario_stream()[..1]);
    d.send_bytes(&(1u64 << 40).to_le_bytes());
    let (code, err, _) = d.finish();
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("the frame after message 0: length prefix 1099511627776 is over the limit"), "{err}");
}

#[test]
fn a_reference_to_an_unknown_ip_set_names_the_message() {
    let mut msgs = scenario_stream();
    msgs.truncate(1);
    let rule = proto::Rule { action: "allow".into(), dst_ip_set_ids: vec!["s:missing".into()], ..Default::default() };
    msgs.push(ToDataplane {
        sequence_number: 1,
        payload: Some(Payload::ActivePolicyUpdate(proto::ActivePolicyUpdate {
            id: Some(proto::PolicyId { name: "p".into(), namespace: "ns1".into(), kind: "NetworkPolicy".into() }),
            policy: Some(proto::Policy { inbound_rules: vec![rule], ..Default::default() }),
        })),
    });
    let mut d = start(&[]);
    d.send(&msgs);
    let (code, err, _) = d.finish();
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err.trim(),
        "calxdp felix-driver: message 1 (ActivePolicyUpdate): NetworkPolicy/ns1/p refers to unknown IP set 's:missing'"
    );
}

#[test]
fn a_frame_that_does_not_decode_is_refused() {
    let mut d = start(&[]);
    d.send(&scenario_stream()[..1]);
    d.send_bytes(&4u64.to_le_bytes());
    d.send_bytes(&[0x0a, 0x7f, 0x00, 0x00]);
    let (code, err, _) = d.finish();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the frame after message 0: not a ToDataplane message"), "{err}");
}
