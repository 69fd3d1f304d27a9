//! Connection-tracking rules shared by the reference model and the dataplane's flow table: Linux's TCP
//! state machine (net/netfilter/nf_conntrack_proto_tcp.c, without sequence-window checks) and the timeouts
//! a Kubernetes node runs with (semantics §8.3).

use std::time::Duration;

use crate::packet::tcp_flags;

/// What conntrack says about a packet, as iptables' `--ctstate` sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CtState {
    /// The first packet(s) of a flow: policy decides.
    New,
    /// The flow has seen traffic in both directions (or the packet is a reply).
    Established,
    /// An ICMP error about a tracked flow.
    Related,
    /// Conntrack refuses the packet (e.g. a SYN-ACK with no entry); Calico drops it (semantics §8.1).
    Invalid,
    /// Not tracked: a doNotTrack allow, or ICMPv6 neighbour discovery.
    Untracked,
}

/// Direction of a packet relative to the flow's first packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowDir {
    Original,
    Reply,
}

/// TCP connection states (the kernel's, minus LISTEN).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcpState {
    SynSent,
    SynRecv,
    Established,
    FinWait,
    CloseWait,
    LastAck,
    TimeWait,
    Close,
    SynSent2,
}

/// The result of feeding one TCP packet to the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpStep {
    /// Move to this state.
    To(TcpState),
    /// Valid packet, state unchanged.
    Ignore,
    /// INVALID: conntrack does not accept the packet.
    Invalid,
}

// Column order of the kernel's table: sNO, sSS, sSR, sES, sFW, sCW, sLA, sTW, sCL, sS2.
const COLS: usize = 10;
use TcpState::*;
const IV: Option<TcpStep> = Some(TcpStep::Invalid);
const IG: Option<TcpStep> = Some(TcpStep::Ignore);
const fn s(t: TcpState) -> Option<TcpStep> {
    Some(TcpStep::To(t))
}

/// Rows: SYN, SYN-ACK, FIN, ACK, RST, none. `[direction][row][column]`.
static TABLE: [[[Option<TcpStep>; COLS]; 6]; 2] = [
    [
        // ORIGINAL
        [s(SynSent), s(SynSent), IG, IG, IG, IG, IG, s(SynSent), s(SynSent), s(SynSent2)],
        [IV, IV, s(SynRecv), IV, IV, IV, IV, IV, IV, s(SynRecv)],
        [IV, IV, s(FinWait), s(FinWait), s(LastAck), s(LastAck), s(LastAck), s(TimeWait), s(Close), IV],
        [
            s(Established),
            IV,
            s(Established),
            s(Established),
            s(CloseWait),
            s(CloseWait),
            s(TimeWait),
            s(TimeWait),
            s(Close),
            IV,
        ],
        [IV, s(Close), s(Close), s(Close), s(Close), s(Close), s(Close), s(Close), s(Close), s(Close)],
        [IV, IV, IV, IV, IV, IV, IV, IV, IV, IV],
    ],
    [
        // REPLY
        [IV, s(SynSent2), IV, IV, IV, IV, IV, s(SynSent), IV, s(SynSent2)],
        [IV, s(SynRecv), IG, IG, IG, IG, IG, IG, IG, s(SynRecv)],
        [IV, IV, s(FinWait), s(FinWait), s(LastAck), s(LastAck), s(LastAck), s(TimeWait), s(Close), IV],
        [IV, IG, s(SynRecv), s(Established), s(CloseWait), s(CloseWait), s(TimeWait), s(TimeWait), s(Close), IG],
        [IV, s(Close), s(Close), s(Close), s(Close), s(Close), s(Close), s(Close), s(Close), s(Close)],
        [IV, IV, IV, IV, IV, IV, IV, IV, IV, IV],
    ],
];

fn row(flags: u8) -> usize {
    if flags & tcp_flags::RST != 0 {
        4
    } else if flags & tcp_flags::SYN != 0 {
        if flags & tcp_flags::ACK != 0 {
            1
        } else {
            0
        }
    } else if flags & tcp_flags::FIN != 0 {
        2
    } else if flags & tcp_flags::ACK != 0 {
        3
    } else {
        5
    }
}

fn col(state: Option<TcpState>) -> usize {
    match state {
        None => 0,
        Some(SynSent) => 1,
        Some(SynRecv) => 2,
        Some(Established) => 3,
        Some(FinWait) => 4,
        Some(CloseWait) => 5,
        Some(LastAck) => 6,
        Some(TimeWait) => 7,
        Some(Close) => 8,
        Some(SynSent2) => 9,
    }
}

/// ICMPv6 messages conntrack leaves untracked rather than INVALID (Linux's `noct_valid_new`): MLD query,
/// report and done (130–132), router and neighbour discovery (133–136), MLDv2 report (143), multicast
/// router advertisement and solicitation (151, 152). A redirect (137) is not among them.
pub fn icmpv6_untracked(icmp_type: u8) -> bool {
    matches!(icmp_type, 130..=136 | 143 | 151 | 152)
}

/// Whether a TCP flag combination is one Linux conntrack accepts at all (`tcp_valid_flags` in
/// nf_conntrack_proto_tcp.c, with PSH, ECE and CWR ignored): SYN, SYN+ACK, RST, RST+ACK, FIN+ACK, ACK,
/// each optionally with URG. Anything else (SYN+FIN, SYN+RST, a bare FIN, no flags, ...) is INVALID.
pub fn tcp_flags_valid(flags: u8) -> bool {
    use tcp_flags::{ACK, FIN, RST, SYN, URG};
    let f = flags & (FIN | SYN | RST | ACK | URG);
    [SYN, SYN | URG, SYN | ACK, RST, RST | ACK, FIN | ACK, FIN | ACK | URG, ACK, ACK | URG].contains(&f)
}

/// The next state of a TCP flow. `state` is `None` for a packet with no entry; with `nf_conntrack_tcp_loose`
/// (the default) a first-seen plain ACK is picked up as ESTABLISHED, a first-seen SYN-ACK, FIN or RST is
/// INVALID (semantics §8.3). A flag combination Linux never accepts is INVALID in every state.
pub fn tcp_step(state: Option<TcpState>, dir: FlowDir, flags: u8) -> TcpStep {
    if !tcp_flags_valid(flags) {
        return TcpStep::Invalid;
    }
    let d = match dir {
        FlowDir::Original => 0,
        FlowDir::Reply => 1,
    };
    TABLE[d][row(flags)][col(state)].unwrap_or(TcpStep::Invalid)
}

/// Conntrack timeouts. Defaults are the kernel's with kube-proxy's overrides (semantics §8.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn_sent: Duration,
    pub tcp_syn_recv: Duration,
    pub tcp_established: Duration,
    pub tcp_fin_wait: Duration,
    pub tcp_close_wait: Duration,
    pub tcp_last_ack: Duration,
    pub tcp_time_wait: Duration,
    pub tcp_close: Duration,
    pub udp_unreplied: Duration,
    pub udp_replied: Duration,
    pub icmp: Duration,
    pub generic: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        let s = Duration::from_secs;
        Timeouts {
            tcp_syn_sent: s(120),
            tcp_syn_recv: s(60),
            tcp_established: s(86_400),
            tcp_fin_wait: s(120),
            tcp_close_wait: s(3_600),
            tcp_last_ack: s(30),
            tcp_time_wait: s(120),
            tcp_close: s(10),
            udp_unreplied: s(30),
            udp_replied: s(120),
            icmp: s(30),
            generic: s(600),
        }
    }
}

impl Timeouts {
    pub fn tcp(&self, state: TcpState) -> Duration {
        match state {
            SynSent | SynSent2 => self.tcp_syn_sent,
            SynRecv => self.tcp_syn_recv,
            Established => self.tcp_established,
            FinWait => self.tcp_fin_wait,
            CloseWait => self.tcp_close_wait,
            LastAck => self.tcp_last_ack,
            TimeWait => self.tcp_time_wait,
            Close => self.tcp_close,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::tcp_flags::{ACK, FIN, RST, SYN};

    #[test]
    fn mld_and_neighbour_discovery_are_untracked_but_a_redirect_is_not() {
        for t in [130, 131, 132, 133, 134, 135, 136, 143, 151, 152] {
            assert!(icmpv6_untracked(t), "type {t}");
        }
        for t in [128, 129, 137, 138, 1, 3] {
            assert!(!icmpv6_untracked(t), "type {t}");
        }
    }

    // semantics §8.3: first-seen SYN creates SYN_SENT, a plain ACK is picked up, SYN-ACK/FIN/RST are INVALID.
    #[test]
    fn first_packets() {
        assert_eq!(tcp_step(None, FlowDir::Original, SYN), TcpStep::To(SynSent));
        assert_eq!(tcp_step(None, FlowDir::Original, ACK), TcpStep::To(Established));
        assert_eq!(tcp_step(None, FlowDir::Original, SYN | ACK), TcpStep::Invalid);
        assert_eq!(tcp_step(None, FlowDir::Original, FIN | ACK), TcpStep::Invalid);
        assert_eq!(tcp_step(None, FlowDir::Original, RST), TcpStep::Invalid);
        assert_eq!(tcp_step(None, FlowDir::Original, 0), TcpStep::Invalid);
    }

    #[test]
    fn handshake_and_close() {
        let mut st = SynSent;
        for (dir, flags, want) in [
            (FlowDir::Reply, SYN | ACK, SynRecv),
            (FlowDir::Original, ACK, Established),
            (FlowDir::Original, FIN | ACK, FinWait),
            (FlowDir::Reply, ACK, CloseWait),
            (FlowDir::Reply, FIN | ACK, LastAck),
            (FlowDir::Original, ACK, TimeWait),
        ] {
            match tcp_step(Some(st), dir, flags) {
                TcpStep::To(next) => st = next,
                other => panic!("{dir:?} {flags:#x} from {st:?} gave {other:?}"),
            }
            assert_eq!(st, want);
        }
        // A new SYN reopens a TIME_WAIT flow (RFC 1122).
        assert_eq!(tcp_step(Some(TimeWait), FlowDir::Original, SYN), TcpStep::To(SynSent));
    }

    #[test]
    fn flag_combinations_linux_refuses_are_invalid_in_every_state() {
        for bad in [SYN | FIN, SYN | RST, FIN, 0, SYN | FIN | ACK, RST | FIN | ACK] {
            assert_eq!(tcp_step(None, FlowDir::Original, bad), TcpStep::Invalid, "{bad:#x}");
            assert_eq!(tcp_step(Some(Established), FlowDir::Original, bad), TcpStep::Invalid, "{bad:#x}");
        }
        let psh = crate::packet::tcp_flags::PSH;
        assert_eq!(tcp_step(Some(Established), FlowDir::Original, ACK | psh), TcpStep::To(Established));
        assert_eq!(tcp_step(None, FlowDir::Original, SYN | 0x40 | 0x80), TcpStep::To(SynSent));
    }

    #[test]
    fn reset_closes() {
        assert_eq!(tcp_step(Some(Established), FlowDir::Reply, RST | ACK), TcpStep::To(Close));
    }
}
