//! IP reassembly before conntrack, as Linux's `nf_defrag_ipv4` / `nf_defrag_ipv6` do in front of
//! conntrack: the fragments of a datagram are gathered, and the whole datagram goes through the pipeline as
//! one packet (its ports from the first fragment's L4 header), then leaves as fragments again along the
//! geometry it arrived in (`wire::fragment::write_fragment`).
//!
//! Linux's rules, kept (net/ipv4/ip_fragment.c `ip_frag_queue`, net/ipv6/netfilter/nf_conntrack_reasm.c
//! `nf_ct_frag6_queue`, net/ipv4/inet_fragment.c `inet_frag_queue_insert`):
//! - a datagram is keyed by source, destination, identification, and (IPv4) protocol;
//! - a non-last fragment's length is cut to a multiple of 8 (IPv4); IPv6 refuses a misaligned one;
//! - a last fragment that ends before data already held, or two last fragments that disagree, or data
//!   past a known end: IPv4 discards the whole datagram, IPv6 the fragment;
//! - a fragment wholly inside data already held (a contiguous run) is a duplicate: dropped, the datagram
//!   kept; any other overlap discards the whole datagram (RFC 5722 for IPv6, and IPv4 since Linux 4.19);
//! - a datagram over 65535 bytes is discarded;
//! - a new datagram is refused while the family's fragments use more than `ipfrag_high_thresh` (4 MiB),
//!   counted as Linux counts the memory of queued fragments (here: their frame lengths);
//! - a datagram not complete `ipfrag_time` (30 s; IPv6 `nf_conntrack_frag6_timeout`, 60 s) after its first
//!   fragment arrived is discarded (Linux sends no ICMP for a conntrack defrag queue on a forwarding path).
//!
//! Our own bounds on top: at most [`DATAGRAMS`] datagrams in progress per worker and [`MAX_FRAGMENTS`]
//! fragments per datagram (Linux has no count limit, only memory). Every fragment dropped is counted with
//! its reason by the caller ([`FragmentDrop`]).
//!
//! Nothing here allocates after [`Reassembly::new`]: each datagram in progress owns one 64 KiB slot of a
//! buffer allocated once per worker (zeroed pages the system maps only as they are written), and its
//! fragments' ranges live in fixed arrays. Finding a datagram is a scan of the slots' keys (fragments are
//! rare next to whole packets; 128 compares of a few words).

use std::net::IpAddr;

use crate::flow::Nanos;
use crate::wire::fragment::{Fragment, Layout};

/// Datagrams in progress per worker.
pub const DATAGRAMS: usize = 128;
/// Fragments per datagram (a 64 KiB datagram on a 1280-byte IPv6 path is 52).
pub const MAX_FRAGMENTS: usize = 64;
/// Linux's `ipfrag_high_thresh` and `nf_conntrack_frag6_high_thresh`: per family.
pub const HIGH_THRESH: usize = 4 << 20;
/// Linux's `ipfrag_time` (IPv4) and `nf_conntrack_frag6_timeout` (IPv6).
pub const TIMEOUT_V4: Nanos = 30_000_000_000;
pub const TIMEOUT_V6: Nanos = 60_000_000_000;
/// Room before a slot's payload for the first fragment's Ethernet and IP headers (IPv6: with the
/// unfragmentable extension headers); a datagram whose headers need more is discarded.
pub const HEADROOM: usize = 512;
/// The largest IP datagram.
const MAX_DATAGRAM: usize = 65535;
const SLOT_BYTES: usize = HEADROOM + MAX_DATAGRAM + 1;

/// Why fragments were dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragmentDrop {
    /// Overlapping another fragment of its datagram: the whole datagram is discarded.
    Overlap,
    /// Wholly inside data already held: this fragment only.
    Duplicate,
    /// Lengths that cannot be: an empty or misaligned fragment, a last fragment that disagrees with the
    /// datagram's known end, data past it.
    Invalid,
    /// A datagram over 65535 bytes, with headers too long to keep, or of more than [`MAX_FRAGMENTS`].
    TooBig,
    /// No room for another datagram (memory over `ipfrag_high_thresh`, or every slot in use).
    NoRoom,
    /// Not complete in time.
    Timeout,
}

/// What became of a fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// Held until its datagram is complete.
    Held,
    /// It completed its datagram, which is in slot `.0` ([`Reassembly::datagram`]) until released.
    Complete(usize),
    /// Dropped: `fragments` fragments in all (this one, and the datagram's when it was discarded).
    Dropped { reason: FragmentDrop, fragments: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    v6: bool,
    src: IpAddr,
    dst: IpAddr,
    /// IPv4's protocol; 0 for IPv6 (not part of its key).
    protocol: u8,
    ident: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    Filling,
    /// Complete and handed out; released by the caller after the batch.
    Complete,
}

/// One datagram in progress.
#[derive(Clone, Copy, Debug)]
struct Slot {
    state: State,
    key: Key,
    created: Nanos,
    first_in: bool,
    last_in: bool,
    /// The datagram's payload length as known so far, and the bytes held.
    len: usize,
    meat: usize,
    /// The fragments held, by (offset, length), in arrival order.
    frags: [(u16, u16); MAX_FRAGMENTS],
    n_frags: usize,
    /// Contiguous runs of data, as Linux keeps them (a fragment that continues the last run joins it).
    runs: [(u32, u32); MAX_FRAGMENTS],
    n_runs: usize,
    /// The run whose end is the highest.
    tail: usize,
    /// Where the first fragment's headers start in the slot (they end at `HEADROOM`).
    head_at: usize,
    layout: Layout,
    /// All fragments had don't-fragment (IPv4: the datagram keeps it, as Linux's `max_df_size` does).
    all_df: bool,
    /// Memory charged to the family.
    charged: usize,
}

const EMPTY: Slot = Slot {
    state: State::Free,
    key: Key {
        v6: false,
        src: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        dst: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        protocol: 0,
        ident: 0,
    },
    created: 0,
    first_in: false,
    last_in: false,
    len: 0,
    meat: 0,
    frags: [(0, 0); MAX_FRAGMENTS],
    n_frags: 0,
    runs: [(0, 0); MAX_FRAGMENTS],
    n_runs: 0,
    tail: 0,
    head_at: HEADROOM,
    layout: Layout { v6: false, l3_offset: 0, head_end: 0, next_header_at: 0, ident: 0 },
    all_df: true,
    charged: 0,
};

/// A worker's datagrams in progress.
pub struct Reassembly {
    slots: Vec<Slot>,
    buf: Vec<u8>,
    /// Memory charged per family (IPv4, IPv6).
    charged: [usize; 2],
    /// Where the next expiry sweep starts.
    cursor: usize,
    /// Datagrams completed.
    pub reassembled: u64,
}

impl std::fmt::Debug for Reassembly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reassembly").field("in_progress", &self.in_progress()).field("charged", &self.charged).finish()
    }
}

impl Default for Reassembly {
    fn default() -> Reassembly {
        Reassembly::new()
    }
}

impl Reassembly {
    pub fn new() -> Reassembly {
        Reassembly {
            slots: vec![EMPTY; DATAGRAMS],
            // Zeroed memory: the system maps its pages as they are first written.
            buf: vec![0; DATAGRAMS * SLOT_BYTES],
            charged: [0; 2],
            cursor: 0,
            reassembled: 0,
        }
    }

    /// Datagrams in progress.
    pub fn in_progress(&self) -> usize {
        self.slots.iter().filter(|s| s.state == State::Filling).count()
    }

    /// Memory the held fragments are charged (IPv4, IPv6).
    pub fn charged(&self) -> [usize; 2] {
        self.charged
    }

    /// Takes fragment `f` of `frame` (as [`crate::wire::fragment::fragment_of`] described it) at `now`.
    pub fn insert(&mut self, f: &Fragment, frame: &[u8], now: Nanos) -> Insert {
        let key = Key { v6: f.v6, src: f.src, dst: f.dst, protocol: if f.v6 { 0 } else { f.protocol }, ident: f.ident };
        let family = usize::from(f.v6);
        let s = match self.slots.iter().position(|s| s.state == State::Filling && s.key == key) {
            Some(s) => s,
            None => {
                let free = self.slots.iter().position(|s| s.state == State::Free);
                match free {
                    Some(s) if self.charged[family] <= HIGH_THRESH => {
                        self.slots[s] = Slot { state: State::Filling, key, created: now, ..EMPTY };
                        s
                    }
                    _ => return Insert::Dropped { reason: FragmentDrop::NoRoom, fragments: 1 },
                }
            }
        };
        match self.place(s, f, frame) {
            Ok(()) => {}
            Err((reason, true)) => {
                let held = self.slots[s].n_frags;
                self.free(s);
                return Insert::Dropped { reason, fragments: held + 1 };
            }
            Err((reason, false)) => {
                if self.slots[s].n_frags == 0 {
                    self.free(s);
                }
                return Insert::Dropped { reason, fragments: 1 };
            }
        }
        let slot = &self.slots[s];
        if !(slot.first_in && slot.last_in && slot.meat == slot.len) {
            return Insert::Held;
        }
        match self.finish(s) {
            Ok(()) => {
                self.reassembled += 1;
                self.slots[s].state = State::Complete;
                Insert::Complete(s)
            }
            Err(reason) => {
                let held = self.slots[s].n_frags;
                self.free(s);
                Insert::Dropped { reason, fragments: held }
            }
        }
    }

    /// Checks fragment `f` against slot `s` and copies its data in. `Err((reason, discard the datagram))`.
    fn place(&mut self, s: usize, f: &Fragment, frame: &[u8]) -> Result<(), (FragmentDrop, bool)> {
        let v4 = !f.v6;
        let offset = f.offset;
        let mut end = offset + f.data_len();
        let slot = &mut self.slots[s];
        if end > MAX_DATAGRAM {
            // IPv6 refuses it at once; IPv4 would fail at reassembly: either way the datagram cannot be.
            return Err((FragmentDrop::TooBig, v4));
        }
        if !f.more {
            if end < slot.len || (slot.last_in && end != slot.len) {
                return Err((FragmentDrop::Invalid, v4));
            }
            slot.last_in = true;
            slot.len = end;
        } else {
            if end & 7 != 0 {
                if !v4 {
                    // RFC 8200: a non-last fragment is a multiple of 8 bytes; Linux kills the queue.
                    return Err((FragmentDrop::Invalid, true));
                }
                end &= !7;
            }
            if end > slot.len {
                if slot.last_in {
                    return Err((FragmentDrop::Invalid, v4));
                }
                slot.len = end;
            }
        }
        if end == offset {
            return Err((FragmentDrop::Invalid, v4));
        }
        if slot.n_frags == MAX_FRAGMENTS {
            return Err((FragmentDrop::TooBig, true));
        }
        match insert_run(slot, offset as u32, end as u32) {
            Run::Placed => {}
            Run::Duplicate => return Err((FragmentDrop::Duplicate, false)),
            Run::Overlap => return Err((FragmentDrop::Overlap, true)),
        }
        slot.frags[slot.n_frags] = (offset as u16, (end - offset) as u16);
        slot.n_frags += 1;
        slot.meat += end - offset;
        slot.all_df &= f.dont_frag;
        slot.charged += frame.len();
        self.charged[usize::from(f.v6)] += frame.len();
        let base = s * SLOT_BYTES;
        let data = &frame[f.data_at..f.data_at + (end - offset)];
        self.buf[base + HEADROOM + offset..base + HEADROOM + end].copy_from_slice(data);
        if offset == 0 {
            let slot = &mut self.slots[s];
            let head = &frame[..f.head_end];
            if head.len() > HEADROOM {
                return Err((FragmentDrop::TooBig, true));
            }
            slot.first_in = true;
            slot.head_at = HEADROOM - head.len();
            slot.layout = Layout {
                v6: f.v6,
                l3_offset: f.l3_offset,
                head_end: f.head_end,
                next_header_at: f.next_header_at,
                ident: f.ident,
            };
            self.buf[base + slot.head_at..base + HEADROOM].copy_from_slice(head);
            if f.v6 {
                // In the datagram the unfragmentable part names the fragmentable part directly.
                self.buf[base + slot.head_at + f.next_header_at] = f.protocol;
            }
        }
        Ok(())
    }

    /// Makes slot `s`'s headers those of the whole datagram.
    fn finish(&mut self, s: usize) -> Result<(), FragmentDrop> {
        let slot = self.slots[s];
        let l = slot.layout;
        let frame = &mut self.buf[s * SLOT_BYTES + slot.head_at..s * SLOT_BYTES + HEADROOM + slot.len];
        let ip = &mut frame[l.l3_offset..];
        if !l.v6 {
            let ihl = l.head_end - l.l3_offset;
            let total = u16::try_from(ihl + slot.len).map_err(|_| FragmentDrop::TooBig)?;
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            let df: u16 = if slot.all_df { 0x4000 } else { 0 };
            ip[6..8].copy_from_slice(&df.to_be_bytes());
            ip[10..12].copy_from_slice(&[0, 0]);
            let c = crate::wire::checksum::checksum(&ip[..ihl]);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
        } else {
            let payload = u16::try_from(l.head_end - l.l3_offset - 40 + slot.len).map_err(|_| FragmentDrop::TooBig)?;
            ip[4..6].copy_from_slice(&payload.to_be_bytes());
        }
        Ok(())
    }

    /// The reassembled frame of completed slot `s` (headers and payload).
    pub fn datagram(&self, s: usize) -> &[u8] {
        let slot = &self.slots[s];
        &self.buf[s * SLOT_BYTES + slot.head_at..s * SLOT_BYTES + HEADROOM + slot.len]
    }

    /// The same, to rewrite in place.
    pub fn datagram_mut(&mut self, s: usize) -> &mut [u8] {
        let slot = &self.slots[s];
        &mut self.buf[s * SLOT_BYTES + slot.head_at..s * SLOT_BYTES + HEADROOM + slot.len]
    }

    /// How completed slot `s` is laid out, and its fragments' (offset, length) sorted by offset: the
    /// geometry it leaves in.
    pub fn pieces(&self, s: usize, out: &mut [(u16, u16); MAX_FRAGMENTS]) -> (Layout, usize) {
        let slot = &self.slots[s];
        let n = slot.n_frags;
        out[..n].copy_from_slice(&slot.frags[..n]);
        out[..n].sort_unstable_by_key(|f| f.0);
        (slot.layout, n)
    }

    /// Lets slot `s` take another datagram (after its batch is done with it).
    pub fn release(&mut self, s: usize) {
        self.free(s);
    }

    fn free(&mut self, s: usize) {
        let slot = &mut self.slots[s];
        let family = usize::from(slot.key.v6);
        self.charged[family] = self.charged[family].saturating_sub(slot.charged);
        *slot = EMPTY;
    }

    /// Discards datagrams not complete in time, looking at `budget` slots from where the last sweep
    /// stopped; returns how many fragments they held.
    pub fn expire(&mut self, now: Nanos, budget: usize) -> usize {
        let mut dropped = 0;
        for _ in 0..budget.min(DATAGRAMS) {
            let s = self.cursor;
            self.cursor = (self.cursor + 1) % DATAGRAMS;
            let slot = &self.slots[s];
            let timeout = if slot.key.v6 { TIMEOUT_V6 } else { TIMEOUT_V4 };
            if slot.state == State::Filling && now.saturating_sub(slot.created) >= timeout {
                dropped += slot.n_frags;
                self.free(s);
            }
        }
        dropped
    }
}

enum Run {
    Placed,
    Duplicate,
    Overlap,
}

/// `inet_frag_queue_insert`: a fragment past the tail continues the tail's run when it starts where it
/// ends, else starts a run; one wholly inside a run is a duplicate; any other overlap is an overlap.
fn insert_run(slot: &mut Slot, offset: u32, end: u32) -> Run {
    if slot.n_runs == 0 {
        slot.runs[0] = (offset, end);
        slot.n_runs = 1;
        slot.tail = 0;
        return Run::Placed;
    }
    let tail_end = slot.runs[slot.tail].1;
    if tail_end < end {
        if offset < tail_end {
            return Run::Overlap;
        }
        if offset == tail_end {
            slot.runs[slot.tail].1 = end;
        } else {
            slot.runs[slot.n_runs] = (offset, end);
            slot.tail = slot.n_runs;
            slot.n_runs += 1;
        }
        return Run::Placed;
    }
    for &(start, run_end) in &slot.runs[..slot.n_runs] {
        if end <= start || offset >= run_end {
            continue;
        }
        return if offset >= start && end <= run_end { Run::Duplicate } else { Run::Overlap };
    }
    slot.runs[slot.n_runs] = (offset, end);
    slot.n_runs += 1;
    Run::Placed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fragment::{fragment_of, write_fragment};
    use crate::wire::{parse, FrameSpec};
    use calxdp_policy::packet::PacketHeader;
    use calxdp_policy::resource::Protocol;

    /// A UDP datagram of `payload` bytes from 10.0.0.9:4000 to 192.168.1.10:53 (or their IPv6
    /// counterparts), whole.
    pub fn datagram(v6: bool, payload: usize) -> Vec<u8> {
        let (src, dst): (IpAddr, IpAddr) = if v6 {
            ("fd00::9".parse().unwrap(), "fd00:1::10".parse().unwrap())
        } else {
            ("10.0.0.9".parse().unwrap(), "192.168.1.10".parse().unwrap())
        };
        let h = PacketHeader { src, dst, protocol: Protocol::UDP, src_port: 4000, dst_port: 53, ..PacketHeader::EMPTY };
        let mut f = FrameSpec { payload_len: payload, ..FrameSpec::new(h) }.build();
        // A payload that shows where each byte went.
        let l4 = parse(&f).unwrap().l4_offset + 8;
        for (i, b) in f[l4..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let p = parse(&f).unwrap();
        crate::wire::checksum::fill_l4_checksum(src, dst, Protocol::UDP, &mut f[p.l4_offset..p.l3_end]);
        if !v6 {
            // A sender that fragments does not set don't-fragment.
            f[14 + 6..14 + 8].copy_from_slice(&[0, 0]);
            f[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
            let c = crate::wire::checksum::checksum(&f[14..34]);
            f[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
        }
        f
    }

    pub fn cut(whole: &[u8], size: usize, ident: u32) -> Vec<Vec<u8>> {
        crate::wire::fragment::cut(whole, size, ident).unwrap()
    }

    fn feed(r: &mut Reassembly, frames: &[Vec<u8>], now: Nanos) -> Vec<Insert> {
        frames.iter().map(|f| r.insert(&fragment_of(f).expect("a fragment"), f, now)).collect()
    }

    #[test]
    fn a_datagram_cut_in_three_comes_back_whole_in_any_order_and_leaves_in_its_geometry() {
        for v6 in [false, true] {
            let whole = datagram(v6, 3000);
            let frags = cut(&whole, 1232, 77);
            assert_eq!(frags.len(), 3);
            let mut r = Reassembly::new();
            let order = [frags[2].clone(), frags[0].clone(), frags[1].clone()];
            let got = feed(&mut r, &order, 0);
            assert_eq!(&got[..2], &[Insert::Held, Insert::Held]);
            let Insert::Complete(s) = got[2] else { panic!("complete: {got:?}") };
            let back = r.datagram(s).to_vec();
            let (pw, pb) = (parse(&whole).unwrap(), parse(&back).unwrap());
            assert_eq!((pb.header, pb.l3_end), (pw.header, pw.l3_end), "v6={v6}");
            assert!(back[pb.l4_offset..pb.l3_end] == whole[pw.l4_offset..pw.l3_end], "v6={v6}: the payload");
            assert!(pb.verify_l4_checksum(&back));
            let mut pieces = [(0, 0); MAX_FRAGMENTS];
            let (layout, n) = r.pieces(s, &mut pieces);
            let again: Vec<Vec<u8>> = pieces[..n]
                .iter()
                .enumerate()
                .map(|(k, &(o, l))| {
                    let mut buf = vec![0; 4096];
                    let m = write_fragment(&back, &layout, o.into(), l.into(), k + 1 < n, &mut buf).unwrap();
                    buf.truncate(m);
                    buf
                })
                .collect();
            assert!(again == frags, "v6={v6}: the fragments it arrived as");
            r.release(s);
            assert_eq!((r.in_progress(), r.charged()), (0, [0, 0]));
        }
    }

    #[test]
    fn overlaps_discard_the_datagram_and_duplicates_only_themselves() {
        for v6 in [false, true] {
            let whole = datagram(v6, 3000);
            let frags = cut(&whole, 1232, 5);
            let mut r = Reassembly::new();
            feed(&mut r, &frags[..1], 0);
            // The same first fragment again: a duplicate, the datagram stays.
            assert_eq!(
                feed(&mut r, &frags[..1], 0)[0],
                Insert::Dropped { reason: FragmentDrop::Duplicate, fragments: 1 }
            );
            // A fragment that starts inside the first one's data and runs past it.
            let mut overlap = cut(&whole, 1232 - 8, 5)[1].clone();
            let f = fragment_of(&overlap).unwrap();
            assert!(f.offset < 1232);
            let got = r.insert(&f, &overlap, 0);
            assert_eq!(got, Insert::Dropped { reason: FragmentDrop::Overlap, fragments: 2 }, "v6={v6}");
            assert_eq!((r.in_progress(), r.charged()), (0, [0, 0]));
            overlap.clear();
        }
    }

    #[test]
    fn an_incomplete_datagram_expires_after_linux_timeouts() {
        let mut r = Reassembly::new();
        let v4 = cut(&datagram(false, 3000), 1480, 1);
        let v6 = cut(&datagram(true, 3000), 1232, 1);
        feed(&mut r, &v4[..1], 0);
        feed(&mut r, &v6[..2], 0);
        assert_eq!(r.expire(TIMEOUT_V4 - 1, DATAGRAMS), 0);
        assert_eq!(r.expire(TIMEOUT_V4, DATAGRAMS), 1, "IPv4 after 30 s");
        assert_eq!(r.in_progress(), 1);
        assert_eq!(r.expire(TIMEOUT_V6, DATAGRAMS), 2, "IPv6 after 60 s");
        assert_eq!((r.in_progress(), r.charged()), (0, [0, 0]));
    }

    #[test]
    fn room_runs_out_and_is_counted() {
        let mut r = Reassembly::new();
        let whole = datagram(false, 3000);
        for ident in 0..DATAGRAMS as u32 {
            assert_eq!(feed(&mut r, &cut(&whole, 1480, ident)[..1], 0)[0], Insert::Held);
        }
        let next = cut(&whole, 1480, 9999);
        assert_eq!(feed(&mut r, &next[..1], 0)[0], Insert::Dropped { reason: FragmentDrop::NoRoom, fragments: 1 });
        // A fragment of a datagram already in progress still finds its datagram.
        let Insert::Complete(_) = feed(&mut r, &cut(&whole, 1480, 3)[1..], 0)[1] else { panic!() };
    }

    #[test]
    fn lengths_linux_refuses() {
        // IPv4: a last fragment that ends before data already held discards the datagram.
        let whole = datagram(false, 3000);
        let frags = cut(&whole, 1480, 2);
        let mut r = Reassembly::new();
        feed(&mut r, &frags[1..2], 0);
        let short = cut(&datagram(false, 1000), 1480, 2);
        let mut last = short[0].clone();
        // Make it a last fragment at offset 8 shorter than what is held.
        last[14 + 6..14 + 8].copy_from_slice(&1u16.to_be_bytes());
        last[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
        let c = crate::wire::checksum::checksum(&last[14..34]);
        last[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
        let got = feed(&mut r, &[last], 0)[0];
        assert_eq!(got, Insert::Dropped { reason: FragmentDrop::Invalid, fragments: 2 });
        // IPv6: a misaligned non-last fragment discards the datagram.
        let v6 = cut(&datagram(true, 3000), 1236, 3);
        let mut r = Reassembly::new();
        let got = feed(&mut r, &v6[..1], 0)[0];
        assert_eq!(got, Insert::Dropped { reason: FragmentDrop::Invalid, fragments: 1 });
        assert_eq!(r.in_progress(), 0);
    }
}
