//! Log rules' output: one line per hit in the format of the kernel's LOG target (semantics §9.2), so
//! existing `calico-packet:` grep and alerting keep working, each Log rule rate-limited on its own as
//! Felix's `LogActionRateLimit` / `LogActionRateLimitBurst` put a `-m limit` on each LOG rule (§9.1).
//!
//! The pipeline records which Log rules fired within their limits (no text on the hot path); lines are
//! formatted here, after the batch, from the frame as it arrived.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use calxdp_policy::compile::RuleTable;
use calxdp_policy::limit::Rate;
use calxdp_policy::net::IpFamily;
use calxdp_policy::resource::Protocol;

use crate::flow::Nanos;
use crate::wire::{Parsed, L3};

/// Most Log hits a packet records (and a remembered walk replays): the pipeline keeps them in a fixed array
/// so the hot path does not allocate.
pub const MAX_LOGS: usize = 4;

/// Felix's Log rate limit, per rule: one token bucket per Log rule and IP family, as each LOG rule of a
/// policy or profile chain (one chain per IP family, shared by every endpoint the policy applies to) has
/// its own `limit` match. Kept by the rules' dense ids (`RuleOrigin::id`) and shared by the workers (one
/// atomic word per bucket). A table version carries the buckets of the rules it keeps over from the version
/// before (same id, same generation, same rate); a rule that is new or changed starts with a full bucket,
/// as a rewritten iptables rule does.
#[derive(Debug, Default)]
pub struct RuleLogLimits {
    rate: Option<Rate>,
    /// Per id: the id's generation when the buckets were made.
    generations: Vec<u32>,
    /// Per id, two buckets (IPv4, IPv6): the theoretical arrival time (`calxdp_policy::limit`).
    buckets: Vec<AtomicU64>,
}

impl RuleLogLimits {
    /// Buckets for the rules of `rules` at `rate` (`None`: no limit, no buckets), carrying over those of
    /// `previous` whose rule and rate did not change.
    pub fn new(rules: &RuleTable, rate: Option<Rate>, previous: Option<&RuleLogLimits>) -> RuleLogLimits {
        let Some(rate) = rate else { return RuleLogLimits::default() };
        let n = rules.generation.len();
        let buckets: Vec<AtomicU64> = (0..2 * n).map(|_| AtomicU64::new(0)).collect();
        if let Some(prev) = previous.filter(|p| p.rate == Some(rate)) {
            for (id, generation) in rules.generation.iter().enumerate() {
                if prev.generations.get(id) == Some(generation) {
                    for f in 0..2 {
                        let tat = prev.buckets[2 * id + f].load(Ordering::Relaxed);
                        buckets[2 * id + f].store(tat, Ordering::Relaxed);
                    }
                }
            }
        }
        RuleLogLimits { rate: Some(rate), generations: rules.generation.clone(), buckets }
    }

    /// Whether the Log rules have a rate limit at all.
    pub fn limited(&self) -> bool {
        self.rate.is_some()
    }

    /// Whether Log rule `id` may log a packet of `family` at `now`; takes its token if so. Lock-free.
    #[inline]
    pub fn admit(&self, id: u32, family: IpFamily, now: Nanos) -> bool {
        let Some(rate) = self.rate else { return true };
        let slot = 2 * id as usize + usize::from(family == IpFamily::V6);
        let Some(bucket) = self.buckets.get(slot) else { return true };
        let mut tat = bucket.load(Ordering::Relaxed);
        loop {
            let Some(next) = rate.admit(tat, now) else { return false };
            match bucket.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(seen) => tat = seen,
            }
        }
    }
}

/// What the kernel writes before `IN=`: `"<prefix>: "`, cut to the first `limit` bytes (iptables' LOG target
/// keeps 29, nftables 127; a long prefix loses its `": "` too).
pub fn log_leader(prefix: &str, limit: usize) -> String {
    let mut leader = format!("{prefix}: ");
    if leader.len() > limit {
        let mut cut = limit;
        while !leader.is_char_boundary(cut) {
            cut -= 1;
        }
        leader.truncate(cut);
    }
    leader
}

/// One kernel-style LOG line for `frame` (parsed as `parsed`) after `leader` ([`log_leader`]), e.g.
/// `calico-packet: IN=eth0 OUT=cali1 MAC=… SRC=… DST=… LEN=60 TOS=0x00 PREC=0x00 TTL=64 ID=0 DF PROTO=TCP
/// SPT=… DPT=… WINDOW=… RES=0x00 SYN URGP=0`. `in_if` is empty for host-originated packets, `out_if` for
/// packets delivered to the host, as iptables prints them.
pub fn log_line(leader: &str, in_if: &str, out_if: &str, frame: &[u8], parsed: &Parsed) -> String {
    let mut s = String::with_capacity(200);
    let _ = write!(s, "{leader}IN={in_if} OUT={out_if} ");
    if !in_if.is_empty() && frame.len() >= 14 {
        // Destination MAC, source MAC, ethertype, as one colon-separated run.
        let mac: Vec<String> =
            frame[..12].iter().chain(&parsed.ethertype.to_be_bytes()).map(|b| format!("{b:02x}")).collect();
        let _ = write!(s, "MAC={} ", mac.join(":"));
    }
    let l3 = parsed.l3_offset;
    let h = &parsed.header;
    match parsed.l3 {
        L3::Ipv4 if frame.len() >= l3 + 20 => {
            let total = u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]]);
            let tos = frame[l3 + 1];
            let id = u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]);
            let frag = u16::from_be_bytes([frame[l3 + 6], frame[l3 + 7]]);
            let _ = write!(
                s,
                "SRC={} DST={} LEN={total} TOS=0x{:02X} PREC=0x{:02X} TTL={} ID={id} ",
                h.src,
                h.dst,
                tos & 0x1e,
                tos & 0xe0,
                frame[l3 + 8]
            );
            if frag & 0x4000 != 0 {
                s.push_str("DF ");
            }
            if frag & 0x2000 != 0 {
                s.push_str("MF ");
            }
        }
        L3::Ipv6 if frame.len() >= l3 + 40 => {
            let payload = u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]);
            let tc = ((frame[l3] & 0x0f) << 4) | (frame[l3 + 1] >> 4);
            let flow = u32::from_be_bytes([0, frame[l3 + 1] & 0x0f, frame[l3 + 2], frame[l3 + 3]]);
            let _ = write!(
                s,
                "SRC={} DST={} LEN={} TC={tc} HOPLIMIT={} FLOWLBL={flow} ",
                h.src,
                h.dst,
                payload as usize + 40,
                frame[l3 + 7]
            );
        }
        _ => {}
    }
    let l4 = parsed.l4_offset;
    match h.protocol {
        Protocol::TCP if frame.len() >= l4 + 20 => {
            let window = u16::from_be_bytes([frame[l4 + 14], frame[l4 + 15]]);
            let urgp = u16::from_be_bytes([frame[l4 + 18], frame[l4 + 19]]);
            let flags = frame[l4 + 13];
            let _ = write!(
                s,
                "PROTO=TCP SPT={} DPT={} WINDOW={window} RES=0x{:02x} ",
                h.src_port,
                h.dst_port,
                frame[l4 + 12] & 0x0e
            );
            for (bit, name) in [
                (0x80, "CWR"),
                (0x40, "ECE"),
                (0x20, "URG"),
                (0x10, "ACK"),
                (0x08, "PSH"),
                (0x04, "RST"),
                (0x02, "SYN"),
                (0x01, "FIN"),
            ] {
                if flags & bit != 0 {
                    let _ = write!(s, "{name} ");
                }
            }
            let _ = write!(s, "URGP={urgp}");
        }
        Protocol::UDP if frame.len() >= l4 + 8 => {
            let len = u16::from_be_bytes([frame[l4 + 4], frame[l4 + 5]]);
            let _ = write!(s, "PROTO=UDP SPT={} DPT={} LEN={len}", h.src_port, h.dst_port);
        }
        Protocol::ICMP => {
            let _ = write!(s, "PROTO=ICMP TYPE={} CODE={}", h.icmp_type, h.icmp_code);
            if matches!(h.icmp_type, 0 | 8) {
                let seq = frame.get(l4 + 6..l4 + 8).map(|b| u16::from_be_bytes([b[0], b[1]])).unwrap_or(0);
                let _ = write!(s, " ID={} SEQ={seq}", h.icmp_id);
            }
        }
        Protocol::ICMPV6 => {
            let _ = write!(s, "PROTO=ICMPv6 TYPE={} CODE={}", h.icmp_type, h.icmp_code);
        }
        Protocol::SCTP => {
            let _ = write!(s, "PROTO=SCTP SPT={} DPT={}", h.src_port, h.dst_port);
        }
        Protocol(n) => {
            let _ = write!(s, "PROTO={n}");
        }
    }
    s.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{parse, FrameSpec};
    use calxdp_policy::packet::{tcp_flags, PacketHeader};

    #[test]
    fn tcp_syn_line_has_the_kernel_fields_in_order() {
        let h = PacketHeader {
            src: "172.16.193.134".parse().unwrap(),
            dst: "69.147.80.15".parse().unwrap(),
            protocol: Protocol::TCP,
            src_port: 45588,
            dst_port: 80,
            tcp_flags: tcp_flags::SYN,
            icmp_type: 0,
            icmp_code: 0,
            icmp_id: 0,
        };
        let frame = FrameSpec::new(h).build();
        let parsed = parse(&frame).unwrap();
        let line = log_line("calico-packet: ", "cali527b0801ecb", "eth0", &frame, &parsed);
        assert!(line.starts_with("calico-packet: IN=cali527b0801ecb OUT=eth0 MAC="), "{line}");
        assert!(line.contains(":08:00 SRC=172.16.193.134 DST=69.147.80.15 LEN="), "{line}");
        assert!(line.contains("PROTO=TCP SPT=45588 DPT=80 WINDOW="), "{line}");
        assert!(line.ends_with("SYN URGP=0"), "{line}");
        let out = log_line("calico-packet: ", "", "eth0", &frame, &parsed);
        assert!(out.starts_with("calico-packet: IN= OUT=eth0 SRC="), "no MAC without an input device: {out}");
    }

    #[test]
    fn the_leader_is_cut_where_iptables_cuts_it() {
        assert_eq!(log_leader("calico-packet", 29), "calico-packet: ");
        // Felix's FV prefix: exactly 29 bytes with its ": ".
        assert_eq!(log_leader("aXy9ep2-4%default gnp ep2-4", 29), "aXy9ep2-4%default gnp ep2-4: ");
        assert_eq!(log_leader("a-prefix-that-is-far-too-long-for-iptables", 29), "a-prefix-that-is-far-too-long");
        assert_eq!(log_leader("a-prefix-that-is-far-too-long-for-iptables", 127).len(), 44);
    }

    #[test]
    fn each_rule_and_family_has_its_own_bucket_and_unchanged_rules_keep_theirs() {
        let rules = RuleTable { info: vec![None, None], generation: vec![1, 1] };
        let rate = Rate { interval: 1_000_000_000, burst: 2 };
        let l = RuleLogLimits::new(&rules, Some(rate), None);
        assert!(l.admit(0, IpFamily::V4, 0) && l.admit(0, IpFamily::V4, 0));
        assert!(!l.admit(0, IpFamily::V4, 0), "rule 0 spent its burst");
        assert!(l.admit(1, IpFamily::V4, 0), "rule 1 is not silenced by rule 0");
        assert!(l.admit(0, IpFamily::V6, 0), "nor is rule 0's IPv6 chain");
        let next = RuleTable { info: vec![None, None], generation: vec![1, 2] };
        let carried = RuleLogLimits::new(&next, Some(rate), Some(&l));
        assert!(!carried.admit(0, IpFamily::V4, 0), "an unchanged rule keeps its bucket");
        assert!(carried.admit(1, IpFamily::V4, 0) && carried.admit(1, IpFamily::V4, 0), "a changed rule starts full");
        let free = RuleLogLimits::new(&rules, None, None);
        assert!((0..100).all(|_| free.admit(0, IpFamily::V4, 0)));
    }
}

/// What the log writer thread has seen go wrong.
#[derive(Debug, Default)]
pub struct WriterState {
    /// Lines written, and lines the output refused (a closed pipe, a full disk).
    pub written: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
}

/// Starts the thread that writes the Log rules' lines to `out`, fed by a queue of `capacity` lines. Workers
/// only ever `try_send` to it, so a reader that stops reading (a paused pager, a stuck log shipper) fills
/// the queue and costs lines, counted, never a blocked worker; an output that fails (its reader gone) is
/// counted, never a panic. The thread ends when every sender is dropped.
pub fn spawn_writer(
    mut out: impl std::io::Write + Send + 'static,
    capacity: usize,
) -> std::io::Result<(std::sync::mpsc::SyncSender<String>, std::sync::Arc<WriterState>, std::thread::JoinHandle<()>)> {
    use std::sync::atomic::Ordering;
    let (tx, rx) = std::sync::mpsc::sync_channel::<String>(capacity);
    let state = std::sync::Arc::new(WriterState::default());
    let st = state.clone();
    let handle = std::thread::Builder::new().name("calxdp-log".into()).spawn(move || {
        for line in rx {
            match writeln!(out, "{line}").and_then(|()| out.flush()) {
                Ok(()) => st.written.fetch_add(1, Ordering::Relaxed),
                Err(_) => st.failed.fetch_add(1, Ordering::Relaxed),
            };
        }
    })?;
    Ok((tx, state, handle))
}

#[cfg(test)]
mod writer_tests {
    use super::*;
    use std::sync::atomic::Ordering;

    /// An output that blocks until told, then fails: a stuck reader, then a gone one.
    struct Stuck(std::sync::mpsc::Receiver<()>);

    impl std::io::Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_then_broken_output_never_blocks_the_sender_and_is_counted() {
        let (release, gate) = std::sync::mpsc::channel();
        let (tx, state, handle) = spawn_writer(Stuck(gate), 4).unwrap();
        let start = std::time::Instant::now();
        let mut refused = 0;
        for i in 0..1000 {
            if tx.try_send(format!("line {i}")).is_err() {
                refused += 1;
            }
        }
        assert!(start.elapsed() < std::time::Duration::from_millis(500), "the sender never waits");
        assert!(refused >= 990, "a stuck writer takes at most its queue and the line in hand: {refused}");
        drop(release);
        drop(tx);
        handle.join().expect("a broken output does not panic the writer");
        assert_eq!(state.written.load(Ordering::Relaxed), 0);
        assert!(state.failed.load(Ordering::Relaxed) >= 1);
    }
}
