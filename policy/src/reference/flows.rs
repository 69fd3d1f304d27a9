//! A plain model of the kernel's conntrack table: a list of entries searched one by one. The dataplane's
//! flow table is checked against this.

use std::net::IpAddr;
use std::time::Duration;

use crate::conntrack::{tcp_step, CtState, FlowDir, TcpState, TcpStep, Timeouts};
use crate::ids::Tuple;
use crate::packet::PacketHeader;
use crate::resource::Protocol;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowKind {
    Tcp(TcpState),
    Udp,
    Icmp,
    Other,
}

/// A conntrack entry: the original tuple, the tuple replies carry (after NAT), and state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub original: Tuple,
    pub reply: Tuple,
    pub kind: FlowKind,
    pub seen_reply: bool,
    pub expires: Duration,
    /// When the entry was made: a UDP flow becomes a stream only with a packet more than
    /// [`UDP_STREAM_AFTER`] later, counted in whole milliseconds (as the flow table does; Linux counts jiffies).
    pub created: Duration,
    /// A UDP flow that is a stream (Linux's `udp_packet`: a reply was seen before, and a packet came more
    /// than two seconds after the entry was made): it gets the replied timeout and is assured.
    pub stream: bool,
    /// When the entry last became unassured (created, or a closed TCP flow reopened): the oldest
    /// unassured entry is the one a full table gives up first.
    pub unassured_since: u64,
}

/// How long after its creation a UDP flow with a reply must still be seen to count as a stream (Linux's
/// `stream_ts`, two seconds).
pub const UDP_STREAM_AFTER: Duration = Duration::from_secs(2);

impl Entry {
    /// Linux's IPS_ASSURED, simplified: a TCP flow that has seen a reply, a UDP flow that is a stream. ICMP
    /// and other protocols never are; a full table gives up unassured entries first.
    pub fn assured(&self) -> bool {
        match self.kind {
            FlowKind::Tcp(_) => self.seen_reply,
            FlowKind::Udp => self.stream,
            _ => false,
        }
    }
}

/// Where a packet stands in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lookup {
    pub state: CtState,
    /// The entry and the packet's direction in it, when one matched.
    pub entry: Option<(usize, FlowDir)>,
    /// For TCP: the state the entry moves to if the packet is let through.
    pub tcp_next: Option<TcpState>,
}

#[derive(Clone, Debug, Default)]
pub struct Flows {
    pub entries: Vec<Entry>,
    pub timeouts: Timeouts,
    /// Most entries the table holds; `None` for no bound.
    pub capacity: Option<usize>,
    sequence: u64,
}

/// A new flow the table had no room for: every entry is live and has seen a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableFull;

/// ICMP types that may start a tracked flow (requests).
fn icmp_request(pkt: &PacketHeader) -> bool {
    match pkt.protocol {
        Protocol::ICMP => matches!(pkt.icmp_type, 8 | 13 | 15 | 17),
        Protocol::ICMPV6 => pkt.icmp_type == 128,
        _ => false,
    }
}

/// ICMPv6 neighbour discovery and MLD: conntrack leaves them untracked.
fn icmpv6_untracked(pkt: &PacketHeader) -> bool {
    pkt.protocol == Protocol::ICMPV6 && crate::conntrack::icmpv6_untracked(pkt.icmp_type)
}

impl Flows {
    pub fn new(capacity: Option<usize>, timeouts: Timeouts) -> Flows {
        Flows { entries: Vec::new(), timeouts, capacity, sequence: 0 }
    }

    pub fn expire(&mut self, now: Duration) {
        self.entries.retain(|e| e.expires > now);
    }

    /// Classifies a packet (semantics §8.1, §8.3). `inner` is the flow an ICMP error quotes, if any.
    pub fn lookup(&self, pkt: &PacketHeader, inner: Option<Tuple>) -> Lookup {
        let none = |state| Lookup { state, entry: None, tcp_next: None };
        if pkt.is_icmp_error() {
            // Linux (icmp_error_message): the quoted tuple, inverted, looked up against both directions.
            let found = inner.and_then(|t| {
                let inv = t.reversed();
                self.entries.iter().enumerate().find_map(|(i, e)| {
                    if e.original == inv {
                        Some((i, FlowDir::Original))
                    } else if e.reply == inv {
                        Some((i, FlowDir::Reply))
                    } else {
                        None
                    }
                })
            });
            return match found {
                Some(entry) => Lookup { state: CtState::Related, entry: Some(entry), tcp_next: None },
                None => none(CtState::Invalid),
            };
        }
        if icmpv6_untracked(pkt) {
            return none(CtState::Untracked);
        }
        let t = Tuple::of(pkt);
        let found = self.entries.iter().enumerate().find_map(|(i, e)| {
            if e.original == t {
                Some((i, FlowDir::Original))
            } else if e.reply == t {
                Some((i, FlowDir::Reply))
            } else {
                None
            }
        });
        match found {
            Some((i, dir)) => {
                let e = &self.entries[i];
                let mut established = dir == FlowDir::Reply || e.seen_reply;
                let mut tcp_next = None;
                if let FlowKind::Tcp(st) = e.kind {
                    match tcp_step(Some(st), dir, pkt.tcp_flags) {
                        TcpStep::Invalid => {
                            return Lookup { state: CtState::Invalid, entry: Some((i, dir)), tcp_next: None }
                        }
                        TcpStep::Ignore => tcp_next = Some(st),
                        TcpStep::To(next) => {
                            // A SYN reopening a closed flow starts a new connection (RFC 1122).
                            if next == TcpState::SynSent && matches!(st, TcpState::TimeWait | TcpState::Close) {
                                established = false;
                            }
                            tcp_next = Some(next);
                        }
                    }
                }
                Lookup {
                    state: if established { CtState::Established } else { CtState::New },
                    entry: Some((i, dir)),
                    tcp_next,
                }
            }
            None => match pkt.protocol {
                Protocol::TCP => match tcp_step(None, FlowDir::Original, pkt.tcp_flags) {
                    TcpStep::To(next) => Lookup { state: CtState::New, entry: None, tcp_next: Some(next) },
                    _ => none(CtState::Invalid),
                },
                Protocol::ICMP | Protocol::ICMPV6 => {
                    none(if icmp_request(pkt) { CtState::New } else { CtState::Invalid })
                }
                _ => none(CtState::New),
            },
        }
    }

    /// Records an allowed packet: updates its entry, or creates one for a new flow whose replies carry
    /// `reply` (the reversed tuple after NAT). A full table first gives up its oldest entry that never saw
    /// a reply (Linux's early drop); with none, the new flow is refused (expired entries are gone already:
    /// callers expire before each packet).
    pub fn commit(
        &mut self,
        pkt: &PacketHeader,
        lookup: &Lookup,
        reply: Tuple,
        now: Duration,
    ) -> Result<(), TableFull> {
        match lookup.entry {
            Some((i, dir)) => {
                let reopened = matches!(lookup.tcp_next, Some(TcpState::SynSent))
                    && matches!(self.entries[i].kind, FlowKind::Tcp(TcpState::TimeWait | TcpState::Close));
                self.sequence += 1;
                let sequence = self.sequence;
                let e = &mut self.entries[i];
                if reopened {
                    e.seen_reply = false;
                    e.unassured_since = sequence;
                }
                // Linux refreshes the entry before it notes the reply: the first reply still gets the
                // unreplied timeout; a stream needs a reply seen before and the entry older than two seconds.
                if e.kind == FlowKind::Udp
                    && e.seen_reply
                    && now.as_millis().saturating_sub(e.created.as_millis()) > UDP_STREAM_AFTER.as_millis()
                {
                    e.stream = true;
                }
                if let Some(next) = lookup.tcp_next {
                    e.kind = FlowKind::Tcp(next);
                }
                e.expires = now + timeout(&self.timeouts, e);
                if dir == FlowDir::Reply {
                    e.seen_reply = true;
                }
                Ok(())
            }
            None => {
                if lookup.state != CtState::New {
                    return Ok(());
                }
                if self.capacity.is_some_and(|c| self.entries.len() >= c) {
                    let victim = self
                        .entries
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| !e.assured())
                        .min_by_key(|(_, e)| e.unassured_since)
                        .map(|(i, _)| i)
                        .ok_or(TableFull)?;
                    self.entries.remove(victim);
                }
                let kind = match pkt.protocol {
                    Protocol::TCP => FlowKind::Tcp(lookup.tcp_next.unwrap_or(TcpState::SynSent)),
                    Protocol::UDP | Protocol::UDPLITE => FlowKind::Udp,
                    Protocol::ICMP | Protocol::ICMPV6 => FlowKind::Icmp,
                    _ => FlowKind::Other,
                };
                self.sequence += 1;
                let mut e = Entry {
                    original: Tuple::of(pkt),
                    reply,
                    kind,
                    seen_reply: false,
                    expires: now,
                    created: now,
                    stream: false,
                    unassured_since: self.sequence,
                };
                e.expires = now + timeout(&self.timeouts, &e);
                self.entries.push(e);
                Ok(())
            }
        }
    }

    /// Whether an entry holds this packet's flow.
    pub fn tracks(&self, pkt: &PacketHeader) -> bool {
        let t = Tuple::of(pkt);
        self.entries.iter().any(|e| e.original == t || e.reply == t)
    }

    /// Removes every entry whose original or reply source is `ip` (semantics §8.2).
    pub fn flush_ip(&mut self, ip: IpAddr) {
        self.entries.retain(|e| e.original.src != ip && e.reply.src != ip);
    }
}

/// How long an entry lives after its last packet (semantics §8.3).
fn timeout(t: &Timeouts, e: &Entry) -> Duration {
    match e.kind {
        FlowKind::Tcp(st) => t.tcp(st),
        FlowKind::Udp if e.stream => t.udp_replied,
        FlowKind::Udp => t.udp_unreplied,
        FlowKind::Icmp => t.icmp,
        FlowKind::Other => t.generic,
    }
}
