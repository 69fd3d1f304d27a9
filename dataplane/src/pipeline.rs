//! The pipeline: Felix's hooks as stages over a batch of packets (DESIGN.md "The pipeline, per frame, in
//! Felix's order"). Each stage is one pass over the batch; a packet that gets its verdict stops taking part.
//! The tables are loaded once per batch, the clock is read once per batch, nothing allocates.
//!
//! Stages: source checks → untracked (raw) → conntrack → pre-DNAT (mangle) → service NAT → route and
//! filter (INPUT / FORWARD / OUTPUT) → commit (conntrack entry, NAT to apply, counters).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use calxdp_policy::compile::{flow_key, Program};
use calxdp_policy::conntrack::{CtState, FlowDir};
use calxdp_policy::ids::EndpointRef;
use calxdp_policy::ids::Tuple;
use calxdp_policy::node::{DenyAction, EndpointToHostAction, Failsafe};
use calxdp_policy::packet::PacketHeader;
use calxdp_policy::resolve::{Direction, Stage};
use calxdp_policy::resource::Protocol;
use calxdp_policy::service::{pick_backend, ServiceNat};
use calxdp_policy::verdict::{Reason, RuleOwner, RuleRef, Verdict};
use calxdp_policy::walk_end::{ChainEnd, WalkEnd};

use crate::decision::{Decision, DropReason};
use crate::flow::{FlowLookup, FlowTable, Nanos, Probe};
use crate::log::MAX_LOGS;
use crate::path::{Port, Route};
use crate::port_drops::PortDrops;
use crate::ports::PortId;
use crate::tables::{TableSet, TableSlot};

/// Counters of one worker; summed across workers on read ([`Counters::add`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub allowed: u64,
    pub drops: [u64; DropReason::ALL.len()],
    /// Malformed frames by reason (indexed by `Malformed::index`).
    pub malformed: [u64; crate::wire::Malformed::COUNT],
    /// Log rules that fired more often than a packet can record.
    pub logs_overflowed: u64,
    /// Log rule hits over their rule's rate limit (`LogActionRateLimit`): not logged.
    pub logs_suppressed: u64,
    /// Answers of Felix's Reject deny action the kernel's ICMP rate limits held back.
    pub reject_limited: u64,
    /// Fragments taken into reassembly, and datagrams they completed (each then one packet).
    pub fragments: u64,
    pub reassembled: u64,
}

impl Counters {
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }

    /// Adds another worker's counters.
    pub fn add(&mut self, o: &Counters) {
        self.packets += o.packets;
        self.allowed += o.allowed;
        for (a, b) in self.drops.iter_mut().zip(&o.drops) {
            *a += b;
        }
        for (a, b) in self.malformed.iter_mut().zip(&o.malformed) {
            *a += b;
        }
        self.logs_overflowed += o.logs_overflowed;
        self.logs_suppressed += o.logs_suppressed;
        self.reject_limited += o.reject_limited;
        self.fragments += o.fragments;
        self.reassembled += o.reassembled;
    }

    /// Counts `n` fragments dropped for `d` (each a packet that ends here).
    pub fn fragments_dropped(&mut self, d: crate::reassembly::FragmentDrop, n: usize) {
        self.packets += n as u64;
        self.drops[DropReason::of_fragment(d) as usize] += n as u64;
    }
}

/// A Log rule that fired for a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogHit {
    pub ep: EndpointRef,
    pub stage: Stage,
    pub dir: Direction,
    pub rule: u32,
}

/// Most deciding rules (one per chain it crossed) a packet records for the hit counters.
pub const MAX_RULE_HITS: usize = 4;

/// Hits per rule, like `iptables -c`, by the rule's dense id (`calxdp_policy::compile::RuleTable`), each with
/// the generation of the id it was counted under: an id given to another rule starts again from zero. Grows
/// only when a table version brings more rules (never per packet).
#[derive(Debug, Default)]
pub struct RuleHits {
    counts: Vec<(u32, u64)>,
}

impl RuleHits {
    pub fn with_capacity(n: usize) -> RuleHits {
        RuleHits { counts: Vec::with_capacity(n) }
    }

    /// Makes room for every rule of `t` (on a new table version).
    fn fit(&mut self, t: &TableSet) {
        let n = t.compiled.rules.info.len();
        if self.counts.len() < n {
            self.counts.resize(n, (0, 0));
        }
    }

    #[inline]
    fn add(&mut self, t: &TableSet, id: u32) {
        let generation = t.compiled.rules.generation.get(id as usize).copied().unwrap_or(0);
        if let Some(c) = self.counts.get_mut(id as usize) {
            if c.0 != generation {
                *c = (generation, 0);
            }
            c.1 += 1;
        }
    }

    /// The hits of rule `id` as `t` names it (zero when they were counted for a rule the id no longer is).
    pub fn get(&self, t: &TableSet, id: u32) -> u64 {
        let generation = t.compiled.rules.generation.get(id as usize).copied().unwrap_or(0);
        self.counts.get(id as usize).filter(|c| c.0 == generation).map_or(0, |c| c.1)
    }

    /// Adds another worker's counts (for a node's totals).
    pub fn add_all(&mut self, o: &RuleHits) {
        if self.counts.len() < o.counts.len() {
            self.counts.resize(o.counts.len(), (0, 0));
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&o.counts) {
            if theirs.1 == 0 {
                continue;
            }
            if mine.0 != theirs.0 {
                *mine = (theirs.0, 0);
            }
            mine.1 += theirs.1;
        }
    }

    /// Every rule of the current tables that was hit, with its hits (as iptables counts a policy chain
    /// shared by every endpoint it applies to). The `endpoint` of the returned references is empty.
    pub fn by_rule(&self, t: &TableSet) -> Vec<(RuleRef, u64)> {
        t.compiled
            .rules
            .iter()
            .filter_map(|(id, info)| {
                let n = self.get(t, id);
                (n > 0).then(|| {
                    let r = RuleRef {
                        stage: info.stage,
                        direction: info.direction,
                        endpoint: String::new(),
                        owner: info.owner.clone(),
                        index: info.index,
                        action: info.action,
                    };
                    (r, n)
                })
            })
            .collect()
    }
}

impl Clone for RuleHits {
    fn clone(&self) -> RuleHits {
        RuleHits { counts: self.counts.clone() }
    }

    fn clone_from(&mut self, o: &RuleHits) {
        self.counts.clone_from(&o.counts);
    }
}

/// One packet of a batch: what arrived, and what the pipeline decided.
#[derive(Clone, Copy, Debug)]
pub struct Packet {
    pub port: Port,
    pub header: PacketHeader,
    /// The flow an ICMP error quotes.
    pub inner: Option<Tuple>,
    // Results.
    pub verdict: Verdict,
    pub decision: Decision,
    pub out: Option<Port>,
    /// The destination after NAT.
    pub translated: Option<SocketAddr>,
    /// The source after NAT (SNAT, or un-DNAT of a reply).
    pub translated_src: Option<SocketAddr>,
    /// For an ICMP error about a translated flow: the quoted packet as its sender sent it.
    pub inner_nat: Option<Tuple>,
    /// Whether `translated` or `translated_src` may differ from the header: false when neither does, so the
    /// rewrite skips comparing them (an established packet of an untranslated flow, most packets). Set
    /// wherever they are.
    pub(crate) nat: bool,
    /// Whether conntrack held the packet's flow right after it (filled when the pipeline is asked to, for
    /// traces: the state as deciding packets one at a time would leave it).
    pub tracked: bool,
    pub logs: [Option<LogHit>; MAX_LOGS],
    /// The rules that decided the chains the packet crossed (for the hit counters).
    pub rule_hits: [Option<LogHit>; MAX_RULE_HITS],
    /// Dropped by a filter-table chain while Felix's deny action is Reject.
    pub reject: bool,
    /// Log hits its Log rules' rate limits kept out of `logs`.
    suppressed: u8,
    /// The batch's clock (the Log rules' rate limits are taken as the walks reach them).
    now: Nanos,
    /// Its answer (Reject), decided and let out: an index into [`Pipeline::answers`] for the worker to send.
    pub answer: Option<u8>,
    // Working state between stages.
    done: bool,
    /// Its conntrack entry was already updated (an established packet, at lookup).
    committed: bool,
    accepted: Option<Decision>,
    lookup: FlowLookup,
    /// Its flow key and index slot, worked out (and prefetched) once for the batch.
    probe: Probe,
    post: PacketHeader,
    snat: Option<IpAddr>,
    route: Route,
}

impl Packet {
    /// A batch slot before any frame fills it (what `reset` overwrites; finished, so no stage reads it).
    pub const EMPTY: Packet = Packet {
        port: Port::Host,
        header: PacketHeader::EMPTY,
        inner: None,
        verdict: Verdict::Drop,
        decision: Decision::NotIp,
        out: None,
        translated: None,
        translated_src: None,
        inner_nat: None,
        nat: false,
        tracked: false,
        logs: [None; MAX_LOGS],
        rule_hits: [None; MAX_RULE_HITS],
        reject: false,
        suppressed: 0,
        now: 0,
        answer: None,
        done: true,
        committed: false,
        accepted: None,
        lookup: FlowLookup { state: CtState::New, entry: None, tcp_next: None },
        probe: Probe::NONE,
        post: PacketHeader::EMPTY,
        snat: None,
        route: Route::Local,
    };

    pub fn new(port: Port, header: PacketHeader, inner: Option<Tuple>) -> Packet {
        let mut p = Packet::EMPTY;
        p.reset(port, header, inner);
        p
    }

    /// Makes this slot the packet `header` that arrived on `port`, with nothing decided yet. In place,
    /// field by field: a packet is over 500 bytes, and a worker fills its batch's slots for every frame, so
    /// building one and moving it in would copy it twice per frame.
    #[inline]
    pub fn reset(&mut self, port: Port, header: PacketHeader, inner: Option<Tuple>) {
        // Every field named (no `..`): a field added to `Packet` must be given its starting value here.
        let Packet {
            port: port_,
            header: header_,
            inner: inner_,
            verdict,
            decision,
            out,
            translated,
            translated_src,
            inner_nat,
            nat,
            tracked,
            logs,
            rule_hits,
            reject,
            suppressed,
            now,
            answer,
            done,
            committed,
            accepted,
            lookup,
            probe,
            post,
            snat,
            route,
        } = self;
        *port_ = port;
        *verdict = Verdict::Drop;
        *decision = Decision::NoCalicoVerdict;
        *out = None;
        *translated = None;
        *translated_src = None;
        *inner_nat = None;
        *nat = false;
        *tracked = false;
        // Both fill from the front (`Packet::log`, `Packet::note`): an empty first slot is an empty array,
        // and most packets (established ones) leave them empty, so most slots need no clearing.
        if logs[0].is_some() {
            *logs = [None; MAX_LOGS];
        }
        if rule_hits[0].is_some() {
            *rule_hits = [None; MAX_RULE_HITS];
        }
        *reject = false;
        *suppressed = 0;
        *now = 0;
        *answer = None;
        *done = false;
        *committed = false;
        *accepted = None;
        *lookup = FlowLookup { state: CtState::New, entry: None, tcp_next: None };
        probe.clear();
        *snat = None;
        *route = Route::Local;
        // Last: a frame's header was parsed just before, field by field, and reading it back whole at once
        // would stall on those stores (they cannot forward to a wider load); after the stores above, they
        // have left the store buffer.
        *header_ = header;
        *post = header;
        *inner_ = inner;
    }

    /// A frame that could not become a packet (`Decision::Malformed` or `Decision::NotIp`): dropped
    /// before any stage, counted under its reason.
    pub fn unparsed(port: Port, reason: Decision) -> Packet {
        let mut p = Packet::EMPTY;
        p.reset_unparsed(port, reason);
        p
    }

    /// [`Packet::unparsed`], in place.
    #[inline]
    pub fn reset_unparsed(&mut self, port: Port, reason: Decision) {
        self.reset(port, PacketHeader::EMPTY, None);
        self.done = true;
        self.decision = reason;
    }

    fn drop(&mut self, d: Decision) {
        self.verdict = Verdict::Drop;
        self.note(d);
        self.done = true;
    }

    fn note(&mut self, d: Decision) {
        if let Decision::Rule { ep, stage, dir, rule } = d {
            if let Some(slot) = self.rule_hits.iter_mut().find(|h| h.is_none()) {
                *slot = Some(LogHit { ep, stage, dir, rule });
            }
        }
        self.decision = d;
    }

    fn log(&mut self, hit: LogHit) -> bool {
        match self.logs.iter_mut().find(|l| l.is_none()) {
            Some(slot) => {
                *slot = Some(hit);
                true
            }
            None => false,
        }
    }
}

/// How many of a flow table's `slots` the sweep visits at `now`, having kept pace until `until`, and the
/// time it has kept pace until after them: one whole table per [`SWEEP_PERIOD`], at most
/// [`SWEEP_BUDGET`] a round, and never more than one whole pass owed (after a long idle gap one pass finds
/// everything expired).
fn sweep_step(until: Nanos, now: Nanos, slots: usize) -> (usize, Nanos) {
    let until = until.max(now.saturating_sub(SWEEP_PERIOD));
    let due = (now.saturating_sub(until) as u128 * slots as u128 / SWEEP_PERIOD as u128) as usize;
    let n = due.min(SWEEP_BUDGET);
    (n, until + (n as u128 * SWEEP_PERIOD as u128 / slots.max(1) as u128) as Nanos)
}

/// The counter of a packet dropped with decision `d`. Every drop is made with a dropping decision; were one
/// not, the drop would still be counted (as `conntrack_invalid`) and debug builds stop here.
fn drop_counter(d: &Decision) -> DropReason {
    let r = d.drop_reason();
    debug_assert!(r.is_some(), "a drop with the accepting decision {d:?}");
    r.unwrap_or(DropReason::Invalid)
}

/// One chain's answer, with the decision behind it.
type Chain = ChainEnd<Decision>;

/// A worker's pipeline: its flow table, its counters, and where it reads tables.
#[derive(Debug)]
pub struct Pipeline {
    slot: Arc<TableSlot>,
    pub flows: FlowTable,
    pub counters: Counters,
    /// The same drops by the port each frame arrived on (the worker adds its own, `port_drops.rs`).
    pub port_drops: PortDrops,
    pub rule_hits: RuleHits,
    /// The table version whose flushes and settings this pipeline has applied, shared with the slot so
    /// it keeps flushes until every pipeline has them.
    applied: Arc<AtomicU64>,
    /// Fill [`Packet::tracked`] (traces only: one more lookup per packet).
    pub note_tracked: bool,
    /// The answers of Felix's Reject deny action decided for the last batch, as packets from the host
    /// ([`Packet::answer`] indexes them); allocated once.
    pub answers: Vec<Packet>,
    /// The kernel's ICMP error rate limits, for those answers.
    icmp_limits: crate::reject::IcmpErrorLimits,
    /// Datagrams being reassembled before conntrack (the worker feeds it fragments; swept here).
    pub reassembly: crate::reassembly::Reassembly,
    /// The clock time the flow table's sweep has kept pace with ([`SWEEP_PERIOD`]).
    swept_until: Nanos,
}

/// How long the sweep takes to visit every slot of the flow table, whatever its size and however often the
/// worker runs rounds: an expired entry leaves the table within this of expiring (a lookup that meets it
/// removes it at once). Paced by the clock, not by rounds: a worker waiting on a congested port runs
/// rounds back to back, and a fixed 64 slots a round was a tenth of its core (e2e, `perf`).
pub const SWEEP_PERIOD: Nanos = 1_000_000_000;
/// Most flow table slots one round sweeps (after a gap, the slots due are caught up over several rounds).
pub const SWEEP_BUDGET: usize = 1024;
/// How many packets ahead of its lookup a packet's flow entry is prefetched.
const ENTRY_PREFETCH_AHEAD: usize = 8;
/// Reassembly slots the sweep looks at per round (all of them every few rounds).
pub const REASSEMBLY_SWEEP_BUDGET: usize = 16;

impl Pipeline {
    /// A pipeline with a flow table of `flow_capacity` entries and the timeouts of the current tables.
    pub fn new(slot: Arc<TableSlot>, flow_capacity: usize) -> Pipeline {
        let applied = slot.register_reader();
        let flows = FlowTable::new(flow_capacity, &slot.load().world.node.felix.conntrack_timeouts);
        let mut rule_hits = RuleHits::default();
        rule_hits.fit(&slot.load());
        Pipeline {
            slot,
            flows,
            counters: Counters::default(),
            port_drops: PortDrops::default(),
            rule_hits,
            applied,
            note_tracked: false,
            answers: Vec::with_capacity(crate::batch::BATCH),
            icmp_limits: Default::default(),
            reassembly: crate::reassembly::Reassembly::new(),
            swept_until: 0,
        }
    }

    /// What a worker does once per round besides frames: takes in a new table version's flushes and
    /// settings even when no frame comes, and sweeps a step of the flow table.
    pub fn maintain(&mut self, now: Nanos) {
        let t = self.slot.load();
        self.catch_up(&t);
        self.sweep_flows(now);
        let expired = self.reassembly.expire(now, REASSEMBLY_SWEEP_BUDGET);
        if expired > 0 {
            // Which port the timed-out fragments came by is not kept: they are unattributed.
            self.fragments_dropped(None, crate::reassembly::FragmentDrop::Timeout, expired);
        }
    }

    /// Sweeps the flow table slots due by `now` at the pace of one whole table per [`SWEEP_PERIOD`].
    fn sweep_flows(&mut self, now: Nanos) {
        let (n, until) = sweep_step(self.swept_until, now, self.flows.capacity());
        if n > 0 {
            self.flows.expire(now, n);
        }
        self.swept_until = until;
    }

    /// Applies what versions newer than the last one seen carry: flushes of removed addresses (with the
    /// version that removes them, semantics §8.2) and conntrack timeouts.
    fn catch_up(&mut self, t: &TableSet) {
        let seen = self.applied.load(Ordering::Relaxed);
        if t.epoch == seen {
            return;
        }
        let mut gone: [Option<IpAddr>; 16] = [None; 16];
        let mut n = 0;
        for (_, ip) in t.flushes.iter().filter(|(e, _)| *e > seen) {
            if n == gone.len() {
                let ips: Vec<IpAddr> = gone.iter().flatten().copied().collect();
                self.flows.flush_ips(&ips);
                n = 0;
            }
            gone[n] = Some(*ip);
            n += 1;
        }
        if n > 0 {
            let ips: Vec<IpAddr> = gone[..n].iter().flatten().copied().collect();
            self.flows.flush_ips(&ips);
        }
        self.flows.set_timeouts(&t.world.node.felix.conntrack_timeouts);
        self.rule_hits.fit(t);
        self.applied.store(t.epoch, Ordering::Release);
    }

    /// Decides a batch with the current tables; returns them (benches and tests; the worker loads the
    /// tables itself, once per batch, and calls [`Pipeline::process`]).
    pub fn process_current(&mut self, batch: &mut [Packet], now: Nanos) -> arc_swap::Guard<Arc<TableSet>> {
        let guard = self.slot.load();
        self.process(&guard, batch, now);
        guard
    }

    /// Decides a batch with tables `t`, which the caller loaded once for the batch and rewrites and reports
    /// it with (DESIGN.md: every frame of a batch sees one consistent version). `now` is read once per
    /// batch by the caller.
    ///
    /// The result is the same as deciding the packets one at a time in order: stages run over the batch,
    /// but conntrack is consulted in packet order, an established packet's entry is updated at once, and a
    /// packet that could depend on an earlier packet of the batch still waiting for its verdict (a new
    /// flow's second packet, its reply) starts a new window after that packet is committed.
    pub fn process(&mut self, t: &TableSet, batch: &mut [Packet], now: Nanos) {
        self.catch_up(t);
        self.prefetch_index(&mut *batch);
        self.answers.clear();
        for p in batch.iter_mut() {
            p.now = now;
        }
        for p in batch.iter_mut().filter(|p| !p.done) {
            source_checks(t, p);
        }
        for p in batch.iter_mut().filter(|p| !p.done) {
            untracked_stage(t, p);
        }
        self.prefetch_entries(&batch[..batch.len().min(ENTRY_PREFETCH_AHEAD)]);
        let mut start = 0;
        while start < batch.len() {
            let end = start + self.conntrack_window(t, &mut batch[start..], now);
            let window = &mut batch[start..end];
            for p in window.iter_mut().filter(|p| !p.done) {
                prednat_stage(t, p);
            }
            for p in window.iter_mut().filter(|p| !p.done) {
                service_nat(t, p);
            }
            for p in window.iter_mut().filter(|p| !p.done) {
                filter_stage(t, p);
            }
            self.commit(t, window, now);
            start = end;
        }
    }

    /// Step one of warming the flow table's lines the batch's lookups will read: the flow key and index slot
    /// of every packet that will look its flow up, the slot prefetched, both kept in the packet (its lookup
    /// compares that key from that slot). Step
    /// two ([`Pipeline::prefetch_entries`]) comes after other work, so the misses of a batch overlap each
    /// other and that work rather than queueing behind one another.
    fn prefetch_index(&self, batch: &mut [Packet]) {
        for p in batch.iter_mut().filter(|p| !p.done && !p.header.is_icmp_error()) {
            self.flows.probe_into(&p.header, &mut p.probe);
        }
    }

    /// Step two: the entries the prefetched index slots name, of the first packets; the lookups prefetch
    /// the rest as they go, [`ENTRY_PREFETCH_AHEAD`] packets ahead of themselves, so each entry has that
    /// many packets' work to arrive in rather than the few instructions between one loop and the next.
    fn prefetch_entries(&self, batch: &[Packet]) {
        for p in batch {
            self.prefetch_entry(p);
        }
    }

    #[inline]
    fn prefetch_entry(&self, p: &Packet) {
        if !p.done && p.probe.is_made() {
            self.flows.prefetch_entry(&p.probe);
        }
    }

    /// Looks packets up in order until one depends on an earlier packet of the window whose verdict is
    /// still open; returns how many packets the window holds (at least one).
    fn conntrack_window(&mut self, t: &TableSet, batch: &mut [Packet], now: Nanos) -> usize {
        // The new flows looked up in this window: a later packet that could find the entry one of them
        // makes (the flow's next packet, its reply even through NAT, an ICMP error quoting it) waits for the
        // next window.
        let mut open = OpenFlows::default();
        for i in 0..batch.len() {
            if let Some(ahead) = batch.get(i + ENTRY_PREFETCH_AHEAD) {
                self.prefetch_entry(ahead);
            }
            let p = &mut batch[i];
            if p.done {
                continue;
            }
            if p.accepted.is_some() {
                p.lookup = FlowLookup { state: CtState::Untracked, entry: None, tcp_next: None };
                continue;
            }
            // A packet of a flow still open in this window waits for it; so does every packet when the open
            // flows may have to make room in a full table (their commit could evict the entry it would find).
            if open.count > 0
                && (open.may_find(p, |ip| t.ports.is_host_ip(ip)) || self.flows.free_slots() <= open.count)
            {
                return i;
            }
            p.lookup = self.flows.lookup_probed(&p.header, p.inner, &p.probe, now);
            match p.lookup.state {
                CtState::Established | CtState::Related => {
                    established(t, &self.flows, p);
                    // Its verdict is settled: its entry moves on now, as the kernel's does on arrival. A
                    // RELATED error changes nothing in the entry (Linux neither refreshes it nor counts a
                    // reply).
                    if p.lookup.state == CtState::Established {
                        self.flows.refresh(&p.lookup, now);
                    }
                    p.committed = true;
                }
                CtState::New => {
                    if open.count == OpenFlows::MAX {
                        return i.max(1);
                    }
                    open.insert(p.header.protocol.0, client_port(p), p.header.src);
                }
                CtState::Invalid | CtState::Untracked => {}
            }
        }
        batch.len()
    }

    /// Records the window's allowed packets in conntrack, and counts every packet.
    fn commit(&mut self, t: &TableSet, batch: &mut [Packet], now: Nanos) {
        let epoch = t.epoch as u32;
        for p in batch.iter_mut() {
            self.counters.packets += 1;
            if p.verdict == Verdict::Allow && !p.committed {
                let lookup = p.lookup;
                // Untracked packets (a doNotTrack allow) never get an entry; everything else allowed does.
                let track = matches!(lookup.state, CtState::New | CtState::Established | CtState::Related);
                if track && (lookup.entry.is_some() || lookup.state == CtState::New) {
                    if self.flows.commit_nat(&p.header, &lookup, &p.post, p.snat, epoch, now).is_err() {
                        p.drop(Decision::ConntrackFull);
                    }
                }
            }
            if self.note_tracked {
                p.tracked = !matches!(
                    p.decision,
                    Decision::NotIp | Decision::Malformed(_) | Decision::VlanTagged | Decision::SourceRouted
                ) && self.flows.tracks(&p.header, now);
            }
            match p.verdict {
                Verdict::Allow => self.counters.allowed += 1,
                Verdict::Drop => {
                    let r = drop_counter(&p.decision);
                    self.counters.drops[r as usize] += 1;
                    self.port_drops.pipeline(port_id(t, p.port), r, 1);
                    if let Decision::Malformed(m) = p.decision {
                        self.counters.malformed[m.index()] += 1;
                    }
                }
            }
            // Both arrays fill from the front (`Packet::note`, `Packet::log`), so their first and last slots
            // say whether they hold anything and whether they are full: most packets (established ones)
            // hold nothing and skip the scans.
            if p.logs[MAX_LOGS - 1].is_some() {
                self.counters.logs_overflowed += 1;
            }
            self.counters.logs_suppressed += u64::from(p.suppressed);
            if p.reject && p.verdict == Verdict::Drop {
                self.answer(t, p, now);
            }
            if p.rule_hits[0].is_none() && p.logs[0].is_none() {
                continue;
            }
            for h in p.rule_hits.iter().chain(p.logs.iter()).flatten() {
                if let Some(origin) = program(t, h.ep, h.stage, h.dir).and_then(|prog| prog.rule(h.rule)) {
                    self.rule_hits.add(t, origin.id);
                }
            }
        }
    }

    /// Felix's Reject deny action for the dropped packet `p` (semantics §10, `calxdp_policy::reject`): the
    /// port unreachable the kernel sends back, if it sends one (eligibility, ICMP rate limits), decided as
    /// a packet from the host (its OUTPUT path: RELATED to the flow it refuses when that was NEW, whose entry
    /// the kernel attaches to it; looked up like any ICMP error when it was INVALID). Decided here, in
    /// packet order, so it sees conntrack as one-at-a-time decisions leave it, as the kernel answers inside
    /// `p`'s hook; it changes no entry. Its verdict is counted; when it may leave, `p.answer` says where
    /// the worker finds it.
    fn answer(&mut self, t: &TableSet, p: &mut Packet, now: Nanos) {
        let node = &t.world.node;
        if !calxdp_policy::reject::eligible(&p.header, node) || self.answers.len() >= self.answers.capacity() {
            return;
        }
        let translated = p.post.dst != p.header.dst || p.post.dst_port != p.header.dst_port;
        let Some(h) = calxdp_policy::reject::answer(&p.header, node, translated) else { return };
        if !self.icmp_limits.admit(node, h.dst, now) {
            self.counters.reject_limited += 1;
            return;
        }
        let mut a = Packet::new(Port::Host, h, Some(Tuple::of(&p.header)));
        a.now = now;
        untracked_stage(t, &mut a);
        if !a.done {
            // A NEW packet's entry is attached to its answer (RELATED, as built); an INVALID one has none, and
            // its answer is looked up like any ICMP error.
            a.lookup = if a.accepted.is_some() {
                FlowLookup { state: CtState::Untracked, entry: None, tcp_next: None }
            } else if p.lookup.state == CtState::New {
                FlowLookup { state: CtState::Related, entry: None, tcp_next: None }
            } else {
                self.flows.lookup(&a.header, a.inner, now)
            };
            if matches!(a.lookup.state, CtState::Established | CtState::Related) {
                established(t, &self.flows, &mut a);
            }
        }
        if !a.done {
            service_nat(t, &mut a);
            filter_stage(t, &mut a);
        }
        self.counters.logs_suppressed += u64::from(a.suppressed);
        self.counters.packets += 1;
        match a.verdict {
            Verdict::Allow => {
                self.counters.allowed += 1;
                p.answer = Some(self.answers.len() as u8);
                self.answers.push(a);
            }
            Verdict::Drop => {
                // The host's own answer, dropped on its way out: counted on the host's port.
                let r = drop_counter(&a.decision);
                self.counters.drops[r as usize] += 1;
                self.port_drops.pipeline(port_id(t, Port::Host), r, 1);
            }
        }
    }

    /// An allowed packet from port `id` that the rewrite could not send on (its TTL ran out): counted as
    /// that drop.
    pub fn dropped_after_rewrite(&mut self, id: PortId, r: DropReason) {
        self.counters.allowed = self.counters.allowed.saturating_sub(1);
        self.counters.drops[r as usize] += 1;
        self.port_drops.pipeline(id, r, 1);
    }

    /// Counts `n` fragments dropped for `d`, from port `id` when it is known.
    pub fn fragments_dropped(&mut self, id: Option<PortId>, d: crate::reassembly::FragmentDrop, n: usize) {
        self.counters.fragments_dropped(d, n);
        let r = DropReason::of_fragment(d);
        match id {
            Some(id) => self.port_drops.pipeline(id, r, n as u64),
            None => self.port_drops.unattributed[r as usize] += n as u64,
        }
    }

    pub fn tables(&self) -> arc_swap::Guard<Arc<TableSet>> {
        self.slot.load()
    }
}

/// The port id of `p` in tables `t` (an id without a row, counted as unattributed, for a pod the tables do
/// not have: only a test builds such a packet).
fn port_id(t: &TableSet, p: Port) -> PortId {
    match p {
        Port::Workload(w) => t.ports.workload_port.get(w as usize).copied().unwrap_or(PortId::MAX),
        _ => t.ports.id_of(p),
    }
}

/// The port that identifies a new flow's client: its source port (an ICMP echo's identifier).
fn client_port(p: &Packet) -> u16 {
    if p.header.has_ports() {
        p.header.src_port
    } else {
        p.header.icmp_id
    }
}

/// Whether packet `p` could be decided differently once the new flows in `open` are committed: it carries
/// one of their client ports (as its source or destination port, or in the flow an ICMP error quotes).
/// Some packets that do not depend on them match too; they only start a new window early.
/// The new flows a conntrack window has looked up and not yet committed, as two Bloom filters: a packet
/// the filters say may find an entry one of them makes waits for the next window (a false positive only
/// splits a window). A flow's entry holds the original tuple (from the client) and the reply tuple (to the
/// client, or to the host address it is masqueraded to), both with the client's port, which NAT here never
/// changes (ICMP: the echo identifier). So a packet of either carries that port and has the client as source
/// or destination, or a host address as destination; an ICMP error's quote does. Packets of other clients
/// that happen to use the same port do not wait.
#[derive(Default)]
struct OpenFlows {
    count: usize,
    /// (protocol, client port, client address) of each flow.
    by_client: [u64; 16],
    /// (protocol, client port) of each flow, for packets to a host address.
    by_port: [u64; 16],
}

impl OpenFlows {
    /// Most open flows in one window (the filters stay sparse).
    const MAX: usize = 64;

    fn insert(&mut self, protocol: u8, port: u16, client: IpAddr) {
        debug_assert!(self.count < Self::MAX);
        set_bit(&mut self.by_client, open_hash(protocol, port, fold(Some(client))));
        set_bit(&mut self.by_port, open_hash(protocol, port, fold(None)));
        self.count += 1;
    }

    /// Whether `p` may find an open flow's entry; `is_host` tells the host's own addresses.
    fn may_find(&self, p: &Packet, is_host: impl Fn(IpAddr) -> bool) -> bool {
        let h = &p.header;
        let own = if h.has_ports() {
            self.touches(&is_host, h.protocol.0, h.src_port, h.dst_port, h.src, h.dst)
        } else {
            self.touches(&is_host, h.protocol.0, h.icmp_id, h.icmp_id, h.src, h.dst)
        };
        own || p.inner.is_some_and(|i| self.touches(&is_host, i.protocol.0, i.src_port, i.dst_port, i.src, i.dst))
    }

    fn touches(
        &self,
        is_host: impl Fn(IpAddr) -> bool,
        protocol: u8,
        a: u16,
        b: u16,
        src: IpAddr,
        dst: IpAddr,
    ) -> bool {
        // Each address folded once, not once per port it is tried with.
        let (src_folded, dst_folded) = (fold(Some(src)), fold(Some(dst)));
        let client = |port| {
            get_bit(&self.by_client, open_hash(protocol, port, src_folded))
                || get_bit(&self.by_client, open_hash(protocol, port, dst_folded))
        };
        let to_host = |port| get_bit(&self.by_port, open_hash(protocol, port, fold(None)));
        client(a) || client(b) || ((to_host(a) || to_host(b)) && is_host(dst))
    }
}

/// An address as the filters hash it ([`open_hash`]); no address is 0.
#[inline]
fn fold(addr: Option<IpAddr>) -> u64 {
    let a = addr.map_or(0, calxdp_policy::net::addr_bits);
    (a as u64) ^ (a >> 64) as u64
}

/// The filter bit of (protocol, port, folded address).
#[inline]
fn open_hash(protocol: u8, port: u16, folded: u64) -> u64 {
    // The product's top bits depend on every input bit: they pick the filter bit.
    (folded ^ (u64::from(protocol) << 16 | u64::from(port))).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54
}

/// Sets bit `b` (below 1024) of a filter: a few percent of its bits at most, so few false positives.
fn set_bit(bits: &mut [u64; 16], b: u64) {
    bits[(b >> 6) as usize & 15] |= 1 << (b & 63);
}

fn get_bit(bits: &[u64; 16], b: u64) -> bool {
    bits[(b >> 6) as usize & 15] & 1 << (b & 63) != 0
}

/// Strict reverse-path check for pods (semantics §7.1 (R) 3).
fn source_checks(t: &TableSet, p: &mut Packet) {
    if let Port::Workload(w) = p.port {
        if !t.world.node.workloads[w as usize].ips.contains(&p.header.src) {
            p.drop(Decision::SourceSpoofed);
        }
    }
}

/// raw PREROUTING / OUTPUT: doNotTrack policy of a named host endpoint (semantics §7.1 (R) 4, §7.2 (R)).
/// Inlined up to the host endpoint: most packets have none (they come from pods, or the uplink has no
/// named host endpoint), and a call for them cost more than the check.
#[inline]
fn untracked_stage(t: &TableSet, p: &mut Packet) {
    let (hep, dir) = match p.port {
        Port::Uplink(u) => (t.ports.uplink_hep.get(u as usize).copied().flatten(), Direction::Ingress),
        Port::Host => {
            let hep = match t.ports.route(p.header.dst) {
                Route::Uplink(u) => t.ports.uplink_hep.get(u as usize).copied().flatten(),
                Route::Local => t.ports.loopback_hep,
                Route::Workload(_) => None,
            };
            (hep, Direction::Egress)
        }
        Port::Workload(_) => (None, Direction::Ingress),
    };
    if let Some(h) = hep {
        untracked_walk(t, p, h, dir);
    }
}

/// [`untracked_stage`] for a packet of host endpoint `h`.
#[inline(never)]
fn untracked_walk(t: &TableSet, p: &mut Packet, h: u32, dir: Direction) {
    let ep = EndpointRef::Host(h as usize);
    if !has_policies(t, ep, Stage::Untracked, None) {
        return;
    }
    let felix = &t.world.node.felix;
    let h_ = &p.header;
    let failsafe = match dir {
        Direction::Ingress => Failsafe::find(&felix.failsafe_inbound, h_, h_.dst_port, h_.src)
            .or_else(|| Failsafe::find(&felix.failsafe_outbound, h_, h_.src_port, h_.src)),
        Direction::Egress => Failsafe::find(&felix.failsafe_outbound, h_, h_.dst_port, h_.dst)
            .or_else(|| Failsafe::find(&felix.failsafe_inbound, h_, h_.src_port, h_.dst)),
    };
    if failsafe.is_some() {
        return;
    }
    match walk(t, ep, dir, Stage::Untracked, p) {
        Chain::Drop(d) => p.drop(d),
        Chain::Accept(d) => {
            p.note(d);
            p.accepted = Some(Decision::UntrackedAllow);
        }
        Chain::Return(_) => {}
    }
}

/// Every tracked chain accepts ESTABLISHED/RELATED first (semantics §8.1): NAT comes from the entry.
fn established(t: &TableSet, flows: &FlowTable, p: &mut Packet) {
    let (mut dst, mut dst_port) = (p.header.dst, p.header.dst_port);
    let (mut src, mut src_port) = (p.header.src, p.header.src_port);
    if let Some((slot, dir)) = p.lookup.entry.filter(|(slot, _)| flows.is_translated(*slot)) {
        p.nat = true;
        let (original, reply) = flows.tuples(slot);
        if p.lookup.state == CtState::Related {
            // The packet an error quotes went the other way, translated: the quote is put back as its
            // sender sent it (Linux's nf_nat_icmp_reply_translation), so the sender recognises its flow.
            p.inner_nat = Some(match dir {
                FlowDir::Reply => original,
                FlowDir::Original => reply,
            });
        }
        match dir {
            FlowDir::Original => {
                dst = reply.src;
                dst_port = reply.src_port;
                src = reply.dst;
                src_port = reply.dst_port;
            }
            FlowDir::Reply => {
                dst = original.src;
                dst_port = original.src_port;
                src = original.dst;
                src_port = original.dst_port;
            }
        }
    }
    if !p.header.has_ports() {
        dst_port = p.header.dst_port;
        src_port = p.header.src_port;
    }
    p.note(if p.lookup.state == CtState::Established { Decision::Established } else { Decision::Related });
    p.verdict = Verdict::Allow;
    p.out = Some(egress_port(t.ports.route(dst)));
    p.translated = Some(SocketAddr::new(dst, dst_port));
    p.translated_src = Some(SocketAddr::new(src, src_port));
    p.done = true;
}

/// mangle PREROUTING: pre-DNAT policy of the ingress host endpoint, or of `*` (semantics §7.1 (M), §7.7).
fn prednat_stage(t: &TableSet, p: &mut Packet) {
    if p.accepted.is_some() || p.port == Port::Host {
        return;
    }
    let has = |h: u32| has_policies(t, EndpointRef::Host(h as usize), Stage::PreDnat, Some(Direction::Ingress));
    let named = match p.port {
        Port::Uplink(u) => t.ports.uplink_hep.get(u as usize).copied().flatten(),
        _ => None,
    };
    let Some(h) = named.filter(|h| has(*h)).or(t.ports.star_hep.filter(|h| has(*h))) else { return };
    if p.lookup.state == CtState::Invalid && !t.world.node.felix.disable_conntrack_invalid_check {
        p.drop(Decision::Invalid);
        return;
    }
    if Failsafe::find(&t.world.node.felix.failsafe_inbound, &p.header, p.header.dst_port, p.header.src).is_some() {
        return;
    }
    match walk(t, EndpointRef::Host(h as usize), Direction::Ingress, Stage::PreDnat, p) {
        Chain::Drop(d) => p.drop(d),
        Chain::Accept(d) => {
            p.note(d);
            p.accepted = Some(Decision::PreDnatAllow);
        }
        Chain::Return(_) => {}
    }
}

/// nat PREROUTING / OUTPUT: ClusterIP and NodePort DNAT as kube-proxy does; NodePort flows from outside the
/// host (externalTrafficPolicy Cluster) and hairpins are masqueraded.
fn service_nat(t: &TableSet, p: &mut Packet) {
    p.post = p.header;
    if !(p.header.has_ports() && p.lookup.state == CtState::New) {
        p.route = t.ports.route(p.post.dst);
        return;
    }
    let node = &t.world.node;
    let is_host_ip = |ip| t.ports.is_host_ip(ip);
    if let Some(svc) = t.services.find(node, is_host_ip, p.header.protocol, p.header.dst, p.header.dst_port) {
        match pick_backend(svc, p.header.src, p.header.src_port) {
            ServiceNat::NoBackends => {
                p.drop(Decision::ServiceWithoutEndpoints);
                return;
            }
            ServiceNat::Backend(b) => {
                let via_node_port = svc.node_port == Some(p.header.dst_port) && t.ports.is_host_ip(p.header.dst);
                p.post.dst = b.ip();
                p.post.dst_port = b.port();
                // kube-proxy masquerades every NodePort flow from outside the host, to a local backend too,
                // and a pod that reaches itself through its service (the reference's service NAT).
                if (via_node_port && p.port != Port::Host) || b.ip() == p.header.src {
                    let via = match t.ports.route(b.ip()) {
                        Route::Uplink(u) => Some(u as usize),
                        _ => None,
                    };
                    p.snat = node.masquerade_source(via, b.ip());
                }
            }
        }
    }
    p.route = t.ports.route(p.post.dst);
}

/// filter INPUT / FORWARD / OUTPUT by path (semantics §7.1 (I), (F), §7.2 (O)).
fn filter_stage(t: &TableSet, p: &mut Packet) {
    let result = match (p.port, p.route) {
        (Port::Host, route) => local_output(t, p, route),
        (_, Route::Local) => local_input(t, p),
        (_, route) => forward(t, p, route),
    };
    match result {
        Err(d) => {
            // Felix's deny action applies to the filter table's drops, not DefaultEndpointToHostAction's.
            p.reject = t.world.node.felix.filter_deny_action() == DenyAction::Reject
                && !matches!(d, Decision::EndpointToHost(_));
            p.drop(d);
        }
        Ok(out) => {
            p.verdict = Verdict::Allow;
            p.out = Some(out);
            p.translated = Some(SocketAddr::new(p.post.dst, p.post.dst_port));
            p.translated_src = Some(SocketAddr::new(p.snat.unwrap_or(p.post.src), p.post.src_port));
            // Service NAT changes the destination only; the source changes only by SNAT.
            p.nat = p.snat.is_some() || p.post.dst != p.header.dst || p.post.dst_port != p.header.dst_port;
        }
    }
    p.done = true;
}

fn local_input(t: &TableSet, p: &mut Packet) -> Result<Port, Decision> {
    if let Port::Workload(w) = p.port {
        if p.post.protocol == Protocol::ICMPV6 && matches!(p.post.icmp_type, 130..=133 | 135 | 136) {
            p.note(Decision::Icmpv6FromWorkload);
            return Ok(Port::Host);
        }
        match workload_chain(t, w, Direction::Egress, p) {
            Chain::Drop(d) => return Err(d),
            Chain::Accept(d) | Chain::Return(d) => p.note(d),
        }
        let action = t.world.node.felix.default_endpoint_to_host_action;
        p.note(Decision::EndpointToHost(action));
        return match action {
            EndpointToHostAction::Drop => Err(Decision::EndpointToHost(action)),
            _ => Ok(Port::Host),
        };
    }
    if let Some(d) = p.accepted {
        p.note(d);
        return Ok(Port::Host);
    }
    let hep = match p.port {
        Port::Uplink(u) => t.ports.uplink_or_star(u),
        _ => None,
    };
    host_chain(t, hep, Direction::Ingress, p)?;
    Ok(Port::Host)
}

fn host_chain(t: &TableSet, hep: Option<u32>, dir: Direction, p: &mut Packet) -> Result<(), Decision> {
    match hep {
        None => {
            p.note(Decision::NoHostEndpoint);
            Ok(())
        }
        Some(h) => match host_normal_chain(t, h, dir, p) {
            Chain::Drop(d) => Err(d),
            Chain::Accept(d) | Chain::Return(d) => {
                p.note(d);
                Ok(())
            }
        },
    }
}

fn forward(t: &TableSet, p: &mut Packet, route: Route) -> Result<Port, Decision> {
    if let Some(d) = p.accepted {
        p.note(d);
    } else {
        let in_hep = match p.port {
            Port::Uplink(u) => t.ports.uplink_or_star(u),
            _ => t.ports.star_hep,
        };
        if let Some(h) = in_hep {
            {
                let c = host_forward_chain(t, h, Direction::Ingress, p);
                chain_step(p, c)?;
            }
        }
    }
    if let Port::Workload(w) = p.port {
        {
            let c = workload_chain(t, w, Direction::Egress, p);
            chain_step(p, c)?;
        }
    }
    let out_hep = match route {
        Route::Workload(w) => {
            {
                let c = workload_chain(t, w, Direction::Ingress, p);
                chain_step(p, c)?;
            }
            t.ports.star_hep
        }
        Route::Uplink(u) => t.ports.uplink_or_star(u),
        Route::Local => None,
    };
    if let Some(h) = out_hep {
        {
            let c = host_forward_chain(t, h, Direction::Egress, p);
            chain_step(p, c)?;
        }
    }
    Ok(egress_port(route))
}

fn chain_step(p: &mut Packet, c: Chain) -> Result<(), Decision> {
    match c {
        Chain::Drop(d) => Err(d),
        Chain::Accept(d) | Chain::Return(d) => {
            p.note(d);
            Ok(())
        }
    }
}

fn local_output(t: &TableSet, p: &mut Packet, route: Route) -> Result<Port, Decision> {
    if let Some(d) = p.accepted {
        p.note(d);
        return Ok(egress_port(route));
    }
    match route {
        Route::Workload(_) => {
            p.note(Decision::HostToLocalWorkload);
            Ok(egress_port(route))
        }
        Route::Local => {
            host_chain(t, t.ports.loopback_or_star(), Direction::Egress, p)?;
            host_chain(t, t.ports.loopback_or_star(), Direction::Ingress, p)?;
            Ok(Port::Host)
        }
        Route::Uplink(u) => {
            host_chain(t, t.ports.uplink_or_star(u), Direction::Egress, p)?;
            Ok(egress_port(route))
        }
    }
}

fn conntrack_head(t: &TableSet, p: &Packet) -> Option<Chain> {
    match p.lookup.state {
        CtState::Established => Some(Chain::Accept(Decision::Established)),
        CtState::Related => Some(Chain::Accept(Decision::Related)),
        CtState::Invalid if !t.world.node.felix.disable_conntrack_invalid_check => Some(Chain::Drop(Decision::Invalid)),
        _ => None,
    }
}

fn workload_chain(t: &TableSet, w: u16, dir: Direction, p: &mut Packet) -> Chain {
    if let Some(c) = conntrack_head(t, p) {
        return c;
    }
    let felix = &t.world.node.felix;
    if dir == Direction::Egress {
        let vxlan = p.post.protocol == Protocol::UDP
            && p.post.dst_port == felix.vxlan_port
            && !felix.allow_vxlan_from_workloads;
        let ipip = p.post.protocol == Protocol(4) && !felix.allow_ipip_from_workloads;
        if vxlan || ipip {
            return Chain::Drop(Decision::EncapFromWorkload);
        }
    }
    normal_walk(t, EndpointRef::Workload(w as usize), dir, p)
}

fn host_normal_chain(t: &TableSet, h: u32, dir: Direction, p: &mut Packet) -> Chain {
    if let Some(c) = conntrack_head(t, p) {
        return c;
    }
    let felix = &t.world.node.felix;
    let hd = &p.post;
    let failsafe = match dir {
        Direction::Ingress => Failsafe::find(&felix.failsafe_inbound, hd, hd.dst_port, hd.src).map(|f| (true, f)),
        Direction::Egress => Failsafe::find(&felix.failsafe_outbound, hd, hd.dst_port, hd.dst).map(|f| (false, f)),
    };
    if let Some((inbound, f)) = failsafe {
        return Chain::Accept(Decision::Failsafe { inbound, protocol: f.protocol.0, port: f.port });
    }
    normal_walk(t, EndpointRef::Host(h as usize), dir, p)
}

fn host_forward_chain(t: &TableSet, h: u32, dir: Direction, p: &mut Packet) -> Chain {
    if let Some(c) = conntrack_head(t, p) {
        return c;
    }
    let ep = EndpointRef::Host(h as usize);
    if !has_policies(t, ep, Stage::Forward, Some(dir)) {
        return Chain::Accept(Decision::ForwardDefaultAllow);
    }
    match walk(t, ep, dir, Stage::Forward, p) {
        Chain::Return(_) => Chain::Return(Decision::NoCalicoVerdict),
        other => other,
    }
}

fn normal_walk(t: &TableSet, ep: EndpointRef, dir: Direction, p: &mut Packet) -> Chain {
    match walk(t, ep, dir, Stage::Normal, p) {
        Chain::Return(_) => Chain::Drop(Decision::NoProfile { ep, dir }),
        other => other,
    }
}

fn program(t: &TableSet, ep: EndpointRef, stage: Stage, dir: Direction) -> Option<&Program> {
    t.compiled.program(ep, stage, dir)
}

fn has_policies(t: &TableSet, ep: EndpointRef, stage: Stage, dir: Option<Direction>) -> bool {
    t.compiled.has_policies(ep, stage, dir)
}

/// Runs one compiled walk on the packet (post-NAT addresses except in the untracked and pre-DNAT stages,
/// which see the original destination — semantics §3 "What addresses policy sees").
fn walk(t: &TableSet, ep: EndpointRef, dir: Direction, stage: Stage, p: &mut Packet) -> Chain {
    let Some(prog) = program(t, ep, stage, dir) else { return Chain::Return(Decision::NoCalicoVerdict) };
    // By reference: the key and the family are all the walk needs of the header (a copy is 44 bytes).
    let header = if matches!(stage, Stage::Untracked | Stage::PreDnat) { &p.header } else { &p.post };
    let (key, family) = (flow_key(header), header.family());
    let mut overflow = false;
    // With a rate limit every Log rule the walk reaches takes a token, matched or not (Felix puts the
    // `limit` match first in its LOG rules); a hit is logged when it matched and had a token (semantics §9.1).
    let limits = &t.log_limits;
    let reaching = limits.limited();
    let now = p.now;
    let end = crate::walk_cache::evaluate(prog, t.generation, &key, reaching, |rule, matched| {
        let admitted = !reaching || prog.rule(rule).is_none_or(|o| limits.admit(o.id, family, now));
        if !matched {
            return;
        }
        if !admitted {
            p.suppressed = p.suppressed.saturating_add(1);
        } else if !p.log(LogHit { ep, stage, dir, rule }) {
            overflow = true;
        }
    });
    match end {
        WalkEnd::Allow(rule) => Chain::Accept(Decision::Rule { ep, stage, dir, rule }),
        WalkEnd::Deny(rule) => Chain::Drop(Decision::Rule { ep, stage, dir, rule }),
        WalkEnd::EndOfTier(tier) => Chain::Drop(Decision::EndOfTier { ep, stage, dir, tier }),
        WalkEnd::NoProfileMatched => Chain::Drop(Decision::NoProfile { ep, dir }),
        WalkEnd::FellThrough => Chain::Return(Decision::NoCalicoVerdict),
    }
}

fn egress_port(route: Route) -> Port {
    match route {
        Route::Local => Port::Host,
        Route::Workload(w) => Port::Workload(w),
        Route::Uplink(u) => Port::Uplink(u),
    }
}

/// The named explanation of a decision, for traces, logs and the parity runner.
pub fn explain(t: &TableSet, d: &Decision) -> Reason {
    let endpoint = |ep: &EndpointRef| ep.endpoint(&t.world).id.clone();
    match d {
        Decision::Rule { ep, stage, dir, rule } => Reason::Rule(rule_ref(t, *ep, *stage, *dir, *rule)),
        Decision::EndOfTier { ep, stage, dir, tier } => {
            let name = program(t, *ep, *stage, *dir)
                .and_then(|p| p.flat.tiers.get(*tier as usize))
                .cloned()
                .unwrap_or_default();
            Reason::EndOfTier { stage: *stage, direction: *dir, endpoint: endpoint(ep), tier: name }
        }
        Decision::NoProfile { ep, dir } => Reason::NoProfileMatched { direction: *dir, endpoint: endpoint(ep) },
        Decision::Failsafe { inbound, protocol, port } => {
            Reason::Failsafe { inbound: *inbound, protocol: *protocol, port: *port }
        }
        Decision::EndpointToHost(a) => Reason::EndpointToHost(*a),
        Decision::HostToLocalWorkload => Reason::HostToLocalWorkload,
        Decision::Established => Reason::Established,
        Decision::Related => Reason::Related,
        Decision::Invalid => Reason::Invalid,
        Decision::NoHostEndpoint => Reason::NoHostEndpoint,
        Decision::ForwardDefaultAllow => Reason::ForwardDefaultAllow,
        Decision::UntrackedAllow => Reason::UntrackedAllow,
        Decision::PreDnatAllow => Reason::PreDnatAllow,
        Decision::SourceSpoofed => Reason::SourceSpoofed,
        Decision::EncapFromWorkload => Reason::EncapFromWorkload,
        Decision::Icmpv6FromWorkload => Reason::Icmpv6FromWorkload,
        Decision::NoCalicoVerdict
        | Decision::Malformed(_)
        | Decision::NotIp
        | Decision::VlanTagged
        | Decision::SourceRouted => Reason::NoCalicoVerdict,
        Decision::ConntrackFull => Reason::ConntrackFull,
        Decision::ServiceWithoutEndpoints => Reason::ServiceWithoutEndpoints,
    }
}

/// A rule of a compiled program, named.
pub fn rule_ref(t: &TableSet, ep: EndpointRef, stage: Stage, dir: Direction, rule: u32) -> RuleRef {
    let origin = program(t, ep, stage, dir).and_then(|p| p.rule(rule));
    let (owner, index, action) = match origin {
        Some(o) => (o.owner.clone(), o.index, o.action),
        None => (RuleOwner::Profile(String::new()), 0, calxdp_policy::resource::Action::Deny),
    };
    RuleRef { stage, direction: dir, endpoint: ep.endpoint(&t.world).id.clone(), owner, index, action }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_holds_back_what_may_find_an_open_flow_and_not_other_clients_on_its_port() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let udp = |src: &str, sport: u16, dst: &str, dport: u16| {
            let h = PacketHeader {
                src: ip(src),
                dst: ip(dst),
                protocol: calxdp_policy::resource::Protocol::UDP,
                src_port: sport,
                dst_port: dport,
                ..PacketHeader::EMPTY
            };
            Packet::new(Port::Uplink(0), h, None)
        };
        let host = |a: IpAddr| a == "10.0.0.1".parse::<IpAddr>().unwrap();
        let mut open = OpenFlows::default();
        // A pod's DNS query, open in the window.
        open.insert(17, 40_000, ip("192.168.1.10"));
        for (what, p) in [
            ("its next packet", udp("192.168.1.10", 40_000, "10.96.0.10", 53)),
            ("its reply", udp("192.168.1.20", 53, "192.168.1.10", 40_000)),
            ("its reply, masqueraded to the host", udp("8.8.8.8", 53, "10.0.0.1", 40_000)),
        ] {
            assert!(open.may_find(&p, host), "{what} waits");
        }
        let mut error = udp("10.9.9.9", 0, "192.168.1.10", 0);
        error.header.protocol = calxdp_policy::resource::Protocol::ICMP;
        error.header.icmp_type = 3;
        error.inner = Some(Tuple::of(&udp("192.168.1.10", 40_000, "8.8.8.8", 53).header));
        assert!(open.may_find(&error, host), "an ICMP error quoting it waits");
        // Other pods that use the same port: their flows cannot find its entry.
        let others = (0..20).filter(|i| open.may_find(&udp(&format!("192.168.2.{i}"), 40_000, "10.96.0.10", 53), host));
        assert!(others.count() <= 1, "other clients on the same port mostly go on (a filter bit may collide)");
        assert!(!open.may_find(&udp("192.168.1.10", 40_001, "10.96.0.10", 53), host), "another port goes on");
    }

    #[test]
    fn the_flow_sweep_keeps_pace_with_the_clock_not_with_rounds() {
        let slots = 1 << 16;
        // Rounds back to back at one instant sweep the one pass owed after an idle start, a budget a round,
        // and then nothing.
        let (mut until, mut swept) = (0, 0);
        let start = 5 * SWEEP_PERIOD;
        for _ in 0..10_000 {
            let (n, u) = sweep_step(until, start, slots);
            swept += n;
            until = u;
        }
        assert_eq!(swept, slots, "one pass, after an idle start");
        // Rounds a microsecond apart for one period sweep the whole table once (within rounding), however
        // many rounds that is.
        let (mut swept, mut now) = (0, start);
        while now < start + SWEEP_PERIOD {
            now += 1_000;
            let (n, u) = sweep_step(until, now, slots);
            swept += n;
            until = u;
        }
        assert!((slots - SWEEP_BUDGET..=slots + 8).contains(&swept), "{swept} slots swept in one period");
        // Rounds a millisecond apart: the same pace, in larger steps.
        let (mut swept, end) = (0, now + SWEEP_PERIOD);
        while now < end {
            now += 1_000_000;
            let (n, u) = sweep_step(until, now, slots);
            assert!(n <= SWEEP_BUDGET);
            swept += n;
            until = u;
        }
        assert!((slots - 8..=slots + 8).contains(&swept), "{swept} slots swept in one period");
        // After an hour without rounds, no more than one pass is owed, a budget at a time.
        let (n, u) = sweep_step(until, now + 3600 * SWEEP_PERIOD, slots);
        assert_eq!(n, SWEEP_BUDGET);
        assert!(now + 3600 * SWEEP_PERIOD - u <= SWEEP_PERIOD);
    }
}
