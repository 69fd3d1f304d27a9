//! ARP on the live node, and the neighbour MACs it learns. Calico answers every ARP request a pod makes
//! with the host-side veth's MAC (proxy ARP for the 169.254.1.1 gateway); ARP between the uplink and the
//! host stack's tap passes through untouched, so the host resolves its own neighbours as it would on the
//! NIC; the host's ARP for a pod (routed through the tap) is answered by the dataplane.

use std::net::{IpAddr, Ipv4Addr};
// std's atomics, or loom's under `--cfg loom` (the seqlock below is model-checked).
use crate::sync::{fence, spin_loop, AtomicU32, AtomicU64, Ordering};

pub const ETHERTYPE_ARP: u16 = 0x0806;
const OP_REQUEST: u16 = 1;
const OP_REPLY: u16 = 2;
/// Ethernet header + the ARP body for IPv4 over Ethernet.
const ARP_FRAME_LEN: usize = 14 + 28;

/// The fields of an IPv4-over-Ethernet ARP frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arp {
    pub request: bool,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

/// The frame's ethertype (untagged frames; the node's ports carry no VLANs).
pub fn ethertype(frame: &[u8]) -> Option<u16> {
    frame.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// Parses an ARP frame; `None` for anything but IPv4-over-Ethernet requests and replies.
pub fn parse(frame: &[u8]) -> Option<Arp> {
    if frame.len() < ARP_FRAME_LEN || ethertype(frame) != Some(ETHERTYPE_ARP) {
        return None;
    }
    let b = &frame[14..];
    let (htype, ptype, hlen, plen) = (u16::from_be_bytes([b[0], b[1]]), u16::from_be_bytes([b[2], b[3]]), b[4], b[5]);
    if htype != 1 || ptype != 0x0800 || hlen != 6 || plen != 4 {
        return None;
    }
    let op = u16::from_be_bytes([b[6], b[7]]);
    if op != OP_REQUEST && op != OP_REPLY {
        return None;
    }
    let mut sender_mac = [0; 6];
    sender_mac.copy_from_slice(&b[8..14]);
    Some(Arp {
        request: op == OP_REQUEST,
        sender_mac,
        sender_ip: Ipv4Addr::new(b[14], b[15], b[16], b[17]),
        target_ip: Ipv4Addr::new(b[24], b[25], b[26], b[27]),
    })
}

/// Writes into `out` the reply to `req` saying `req.target_ip` is at `mac`; returns its length.
pub fn reply(req: &Arp, mac: [u8; 6], out: &mut [u8]) -> usize {
    let f = &mut out[..ARP_FRAME_LEN];
    f[0..6].copy_from_slice(&req.sender_mac);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, OP_REPLY as u8]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&req.target_ip.octets());
    f[32..38].copy_from_slice(&req.sender_mac);
    f[38..42].copy_from_slice(&req.sender_ip.octets());
    ARP_FRAME_LEN
}

/// Builds a request for `target` from `(sender_mac, sender_ip)`, broadcast.
pub fn request(sender_mac: [u8; 6], sender_ip: Ipv4Addr, target: Ipv4Addr, out: &mut [u8]) -> usize {
    let f = &mut out[..ARP_FRAME_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&sender_mac);
    f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, OP_REQUEST as u8]);
    f[22..28].copy_from_slice(&sender_mac);
    f[28..32].copy_from_slice(&sender_ip.octets());
    f[32..38].copy_from_slice(&[0; 6]);
    f[38..42].copy_from_slice(&target.octets());
    ARP_FRAME_LEN
}

/// Neighbour MACs by IP (uplink neighbours from their ARP and frames, pods from theirs), shared by every
/// worker: whichever worker hears a neighbour, every worker can then address it. A fixed direct-mapped
/// table (a newer entry replaces an older one in its slot) of seqlock-guarded atomics, so learning and
/// lookups take no lock and allocate nothing. Learning is best effort: a write that meets another in the
/// same slot is skipped.
#[derive(Debug)]
pub struct Neighbours {
    slots: Box<[Slot]>,
}

#[derive(Debug, Default)]
struct Slot {
    /// Odd while a writer is in the slot; bumped by two per write.
    seq: AtomicU32,
    ip_hi: AtomicU64,
    ip_lo: AtomicU64,
    /// The MAC in the low 48 bits; bit 63 set when the slot holds an entry.
    mac: AtomicU64,
}

const PRESENT: u64 = 1 << 63;

fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl Neighbours {
    pub fn with_capacity(n: usize) -> Neighbours {
        Neighbours { slots: (0..n.next_power_of_two()).map(|_| Slot::default()).collect() }
    }

    fn slot(&self, k: u128) -> &Slot {
        let h = (k as u64) ^ ((k >> 64) as u64).rotate_left(29);
        &self.slots[(h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & (self.slots.len() - 1)]
    }

    pub fn learn(&self, ip: IpAddr, mac: [u8; 6]) {
        if mac[0] & 1 != 0 || self.get(ip) == Some(mac) {
            return;
        }
        let k = key(ip);
        let s = self.slot(k);
        let seq = s.seq.load(Ordering::Relaxed);
        if seq & 1 == 1 || s.seq.compare_exchange(seq, seq + 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return;
        }
        // The odd sequence must be visible before any of the stores below: without this fence a reader on
        // a weakly ordered machine (ARM64) could see new data with the old, even sequence and take a torn
        // entry as whole.
        fence(Ordering::Release);
        let mut m = [0u8; 8];
        m[..6].copy_from_slice(&mac);
        s.ip_hi.store((k >> 64) as u64, Ordering::Relaxed);
        s.ip_lo.store(k as u64, Ordering::Relaxed);
        s.mac.store(u64::from_le_bytes(m) | PRESENT, Ordering::Relaxed);
        s.seq.store(seq + 2, Ordering::Release);
    }

    pub fn get(&self, ip: IpAddr) -> Option<[u8; 6]> {
        let k = key(ip);
        let s = self.slot(k);
        for _ in 0..4 {
            let before = s.seq.load(Ordering::Acquire);
            if before & 1 == 1 {
                spin_loop();
                continue;
            }
            let (hi, lo, mac) =
                (s.ip_hi.load(Ordering::Relaxed), s.ip_lo.load(Ordering::Relaxed), s.mac.load(Ordering::Relaxed));
            fence(Ordering::Acquire);
            if s.seq.load(Ordering::Relaxed) != before {
                continue;
            }
            if mac & PRESENT == 0 || (u128::from(hi) << 64 | u128::from(lo)) != k {
                return None;
            }
            let mut out = [0u8; 6];
            out.copy_from_slice(&mac.to_le_bytes()[..6]);
            return Some(out);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_answers_the_request_it_was_built_from() {
        let mut buf = [0u8; 64];
        let me = [2, 0, 0, 0, 0, 1];
        let n = request(me, Ipv4Addr::new(192, 168, 1, 10), Ipv4Addr::new(169, 254, 1, 1), &mut buf);
        let req = parse(&buf[..n]).unwrap();
        assert!(req.request);
        assert_eq!(req.target_ip, Ipv4Addr::new(169, 254, 1, 1));
        let mut out = [0u8; 64];
        let m = reply(&req, [0xee; 6], &mut out);
        let rep = parse(&out[..m]).unwrap();
        assert!(!rep.request);
        assert_eq!((rep.sender_mac, rep.sender_ip, rep.target_ip), ([0xee; 6], req.target_ip, req.sender_ip));
        assert_eq!(&out[0..6], &me);
    }

    #[test]
    fn short_or_foreign_frames_are_not_arp() {
        assert_eq!(parse(&[0u8; 20]), None);
        let mut buf = [0u8; 64];
        let n = request([2; 6], Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, &mut buf);
        buf[16] = 0x86; // ptype IPv6
        assert_eq!(parse(&buf[..n]), None);
    }

    #[test]
    fn neighbours_remember_the_latest_mac_and_ignore_multicast() {
        let n = Neighbours::with_capacity(16);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        n.learn(ip, [2, 0, 0, 0, 0, 1]);
        n.learn(ip, [2, 0, 0, 0, 0, 2]);
        n.learn(ip, [1, 0, 0x5e, 0, 0, 1]);
        assert_eq!(n.get(ip), Some([2, 0, 0, 0, 0, 2]));
        assert_eq!(n.get("10.0.0.2".parse().unwrap()), None);
        let v6: IpAddr = "fd00::1".parse().unwrap();
        n.learn(v6, [2, 0, 0, 0, 0, 6]);
        assert_eq!(n.get(v6), Some([2, 0, 0, 0, 0, 6]));
    }

    #[test]
    fn workers_learning_and_reading_at_once_never_see_a_torn_entry() {
        let n = std::sync::Arc::new(Neighbours::with_capacity(4));
        let writers: Vec<_> = (0..2u8)
            .map(|w| {
                let n = n.clone();
                std::thread::spawn(move || {
                    for i in 0..50_000u32 {
                        let ip = IpAddr::V4(Ipv4Addr::from(i % 64));
                        // Every MAC names its IP, so a reader can tell a torn entry.
                        let b = (i % 64) as u8;
                        n.learn(ip, [2, w, b, b, b, b]);
                    }
                })
            })
            .collect();
        for _ in 0..200_000u32 {
            for i in 0..64u32 {
                if let Some(mac) = n.get(IpAddr::V4(Ipv4Addr::from(i))) {
                    assert_eq!(&mac[2..], &[i as u8; 4], "a MAC from another IP's entry");
                }
            }
            if writers.iter().all(|w| w.is_finished()) {
                break;
            }
        }
        for w in writers {
            w.join().unwrap();
        }
    }
}

/// Model checks of the seqlock (`RUSTFLAGS="--cfg loom" cargo test --release -p calxdp-dataplane --lib
/// loom`): loom runs the writers and the reader under every interleaving and every reordering their
/// orderings and fences allow. The reader is the spawned thread and a writer the main one: loom's DPOR
/// remembers only the last access to each atomic, so a writer whose own loads (`learn` looks the entry up
/// first) come after the reader's in the first execution would hide the reader's from it, and loom would
/// stop after one execution.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    /// Looks both addresses up: each may be missing (the slot is busy, or holds the other address) or
    /// right, never the other's MAC (a torn read: one write's address with another's MAC).
    fn read_both(n: &Neighbours) {
        let b = n.get(B);
        assert!(b.is_none() || b == Some(MAC_B), "B read as {b:?}");
        let a = n.get(A);
        assert!(a.is_none() || a == Some(MAC_A), "A read as {a:?}");
    }

    /// One slot holds A; a writer replaces it with B while a reader looks both up.
    #[test]
    fn loom_seqlock_reader_never_takes_a_torn_entry() {
        loom::model(|| {
            let n = std::sync::Arc::new(Neighbours::with_capacity(1));
            n.learn(A, MAC_A);
            let reader = {
                let n = n.clone();
                loom::thread::spawn(move || read_both(&n))
            };
            n.learn(B, MAC_B);
            reader.join().unwrap();
            assert_eq!((n.get(A), n.get(B)), (None, Some(MAC_B)), "after the writer: B replaced A");
        });
    }

    /// Two writers meet in one empty slot: the second one in skips (learning is best effort), and the
    /// slot ends up holding exactly one whole entry. (A reader beside them makes the model too large to
    /// finish in a minute; torn reads are the test above.)
    #[test]
    fn loom_seqlock_two_writers_leave_one_whole_entry() {
        loom::model(|| {
            let n = std::sync::Arc::new(Neighbours::with_capacity(1));
            let other = {
                let n = n.clone();
                loom::thread::spawn(move || n.learn(A, MAC_A))
            };
            n.learn(B, MAC_B);
            other.join().unwrap();
            let (a, b) = (n.get(A), n.get(B));
            assert!(a == Some(MAC_A) || b == Some(MAC_B), "one of the writes landed: {a:?} {b:?}");
            assert!(a.is_none() || b.is_none(), "one slot holds one entry: {a:?} {b:?}");
        });
    }
}
