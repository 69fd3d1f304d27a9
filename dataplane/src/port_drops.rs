//! Drops by port and reason: every frame a worker drops is counted under the port it arrived on and why, in
//! one row of counters per port id, besides the node-wide counters by reason (`Counters::drops`,
//! `IoCounters`). Each worker counts its own; whoever reads (the admin API) sums the workers' published
//! copies, as it sums every other counter.
//!
//! One index covers every reason: the pipeline's ([`DropReason`]) first, then those of the work around it
//! ([`IoDrop`]). A row is a fixed array, so counting on the hot path is one index and one add.
//!
//! Ports come and go (pods' veths attached and detached, node file reloads, the Felix driver): rows are
//! indexed by port id (`ports.rs`), made and zeroed when a worker starts using a port ([`PortDrops::open`],
//! between two rounds, off the hot path: the only place that allocates). So the table never outgrows the
//! highest port id, which the control thread bounds (`PortIds`: ids are reused once 64 have been freed), and
//! an id given to another interface starts from zero rather than inheriting the old one's counts. A port
//! attached again under the same id starts from zero too: a counter reset, as Prometheus understands it.
//!
//! A drop whose arrival port has no row is counted in [`PortDrops::unattributed`]: frames whose arrival
//! port is no longer known when they are dropped (fragments that timed out in reassembly), and frames
//! handed over from a port this worker has not taken yet (attachment reaches workers one at a time).

use crate::decision::DropReason;
use crate::ports::PortId;

/// Frames dropped around the pipeline, by the worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDrop {
    /// Allowed frames lost because the output queue was full.
    TxQueueFull,
    /// Frames longer than the worker's buffers.
    Oversize,
    /// Frames that arrived on, or were routed to, a port the tables do not know (being attached or detached).
    NoPort,
    /// Allowed frames whose next hop never answered, or that no resolution slot could hold.
    NoNeighbour,
    /// Frames for the worker owning their flow, lost because its ring was full.
    HandoffRingFull,
    /// ARP frames with nowhere to go.
    ArpDropped,
}

impl IoDrop {
    pub const ALL: [IoDrop; 6] = [
        IoDrop::TxQueueFull,
        IoDrop::Oversize,
        IoDrop::NoPort,
        IoDrop::NoNeighbour,
        IoDrop::HandoffRingFull,
        IoDrop::ArpDropped,
    ];

    pub fn name(self) -> &'static str {
        match self {
            IoDrop::TxQueueFull => "tx_queue_full",
            IoDrop::Oversize => "oversize",
            IoDrop::NoPort => "no_port",
            IoDrop::NoNeighbour => "no_neighbour",
            IoDrop::HandoffRingFull => "handoff_ring_full",
            IoDrop::ArpDropped => "arp_dropped",
        }
    }

    /// Its place in a [`DropRow`].
    pub fn index(self) -> usize {
        DropReason::ALL.len() + self as usize
    }
}

/// Every reason a frame is dropped, as one index: [`DropReason`]'s then [`IoDrop`]'s.
pub const DROP_KINDS: usize = DropReason::ALL.len() + IoDrop::ALL.len();

/// The name of reason `k` of a [`DropRow`], as the operator sees it.
pub fn kind_name(k: usize) -> &'static str {
    match DropReason::ALL.get(k) {
        Some(r) => r.name(),
        None => IoDrop::ALL.get(k - DropReason::ALL.len()).map_or("unknown", |d| d.name()),
    }
}

/// One port's drops, by reason index.
pub type DropRow = [u64; DROP_KINDS];

/// One worker's drops by port id and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortDrops {
    rows: Vec<DropRow>,
    /// Drops whose arrival port has no row (see the module comment).
    pub unattributed: DropRow,
}

impl Default for PortDrops {
    fn default() -> PortDrops {
        PortDrops { rows: Vec::new(), unattributed: [0; DROP_KINDS] }
    }
}

impl PortDrops {
    /// Makes port `id`'s row, zeroed (the worker starts using the port). Not on the hot path: it may grow
    /// the table.
    pub fn open(&mut self, id: PortId) {
        let i = id as usize;
        if self.rows.len() <= i {
            self.rows.resize(i + 1, [0; DROP_KINDS]);
        }
        self.rows[i] = [0; DROP_KINDS];
    }

    #[inline]
    fn row(&mut self, id: PortId) -> &mut DropRow {
        match self.rows.get_mut(id as usize) {
            Some(r) => r,
            None => &mut self.unattributed,
        }
    }

    /// Counts `n` frames from port `id` dropped by the pipeline for `r`.
    #[inline]
    pub fn pipeline(&mut self, id: PortId, r: DropReason, n: u64) {
        self.row(id)[r as usize] += n;
    }

    /// Counts one frame from port `id` dropped around the pipeline for `d`.
    #[inline]
    pub fn io(&mut self, id: PortId, d: IoDrop) {
        self.row(id)[d.index()] += 1;
    }

    /// Port `id`'s drops (zeros for a port without a row).
    pub fn get(&self, id: PortId) -> DropRow {
        self.rows.get(id as usize).copied().unwrap_or([0; DROP_KINDS])
    }

    /// Rows held (the highest port id this worker has used, plus one).
    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    /// Adds another worker's drops.
    pub fn add(&mut self, o: &PortDrops) {
        if self.rows.len() < o.rows.len() {
            self.rows.resize(o.rows.len(), [0; DROP_KINDS]);
        }
        for (mine, theirs) in self.rows.iter_mut().zip(&o.rows).chain([(&mut self.unattributed, &o.unattributed)]) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_index_and_name() {
        let names: std::collections::BTreeSet<&str> = (0..DROP_KINDS).map(kind_name).collect();
        assert_eq!(names.len(), DROP_KINDS);
        assert_eq!(kind_name(DropReason::PolicyDeny as usize), "policy_deny");
        assert_eq!(kind_name(IoDrop::ArpDropped.index()), "arp_dropped");
    }

    #[test]
    fn a_reused_port_id_starts_from_zero_and_unknown_ports_are_unattributed() {
        let mut d = PortDrops::default();
        d.open(3);
        d.pipeline(3, DropReason::PolicyDeny, 2);
        d.io(3, IoDrop::TxQueueFull);
        d.io(9, IoDrop::HandoffRingFull);
        assert_eq!(d.get(3)[DropReason::PolicyDeny as usize], 2);
        assert_eq!(d.get(3)[IoDrop::TxQueueFull.index()], 1);
        assert_eq!(d.unattributed[IoDrop::HandoffRingFull.index()], 1);
        assert_eq!(d.rows(), 4, "rows up to the highest id opened, no more");
        d.open(3);
        assert_eq!(d.get(3), [0; DROP_KINDS], "a port attached again counts from zero");
        let mut sum = PortDrops::default();
        sum.add(&d);
        sum.add(&d);
        assert_eq!(sum.unattributed[IoDrop::HandoffRingFull.index()], 2);
    }
}
