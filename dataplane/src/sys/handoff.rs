//! Handing a frame from one worker to another: the worker that receives a frame is not always the one
//! that owns its flow (a NIC or veth does not steer a flow's two directions to one queue), and each worker
//! keeps its own conntrack. So the receiver copies the frame into a slot of a buffer shared with the owner
//! and passes the slot's index on a ring; the owner decides it and gives the slot back on a second ring
//! (the same lend-and-return shape as AF_XDP's FILL and COMPLETION rings).

use std::sync::Arc;

use super::ring::{spsc, Consumer, Producer, SpscRing};
use crate::sync::UnsafeCell;

/// Bytes per slot: the workers' largest frame.
pub const SLOT_BYTES: usize = 2048;

/// A handed-off frame: its slot, its length, and a tag the workers use for the port it arrived on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandoffDesc {
    pub slot: u32,
    pub len: u16,
    pub tag: u16,
}

/// The frame slots of one sender→receiver link.
struct Arena {
    slots: Box<[UnsafeCell<[u8; SLOT_BYTES]>]>,
}

// SAFETY: a slot index is owned by exactly one side at a time (the sender's free list, the forward ring,
// the receiver while it copies, the return ring), and only its owner touches its bytes; the rings'
// release/acquire cursors order those touches.
unsafe impl Sync for Arena {}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Arena({} slots)", self.slots.len())
    }
}

impl Arena {
    /// Copies `frame` into slot `i`; the caller owns the slot.
    fn write(&self, i: u32, frame: &[u8]) {
        self.slots[i as usize].with_mut(|ptr| {
            // SAFETY: the caller took slot `i` off its free list, so no one else reads or writes it until
            // it is published on the forward ring.
            let slot = unsafe { &mut *ptr };
            slot[..frame.len()].copy_from_slice(frame);
        })
    }

    /// Copies slot `i`'s first `len` bytes into `out`; the caller owns the slot.
    fn read(&self, i: u32, len: usize, out: &mut [u8]) {
        self.slots[i as usize].with(|ptr| {
            // SAFETY: the caller popped slot `i` from the forward ring, so the sender is done with it and
            // will not reuse it until it comes back on the return ring.
            let slot = unsafe { &*ptr };
            out[..len].copy_from_slice(&slot[..len]);
        })
    }
}

/// The sending end of a link.
#[derive(Debug)]
pub struct HandoffSender {
    arena: Arc<Arena>,
    forward: Producer<SpscRing<HandoffDesc>>,
    returned: Consumer<SpscRing<u32>>,
    free: Vec<u32>,
    pending: bool,
}

/// The receiving end of a link.
#[derive(Debug)]
pub struct HandoffReceiver {
    arena: Arc<Arena>,
    forward: Consumer<SpscRing<HandoffDesc>>,
    returned: Producer<SpscRing<u32>>,
}

/// A link of `slots` frames (a power of two) from one worker to another.
pub fn link(slots: u32) -> (HandoffSender, HandoffReceiver) {
    let arena = Arc::new(Arena { slots: (0..slots).map(|_| UnsafeCell::new([0; SLOT_BYTES])).collect() });
    let (fwd_tx, fwd_rx) = spsc::<HandoffDesc>(slots);
    let (ret_tx, ret_rx) = spsc::<u32>(slots);
    let sender = HandoffSender {
        arena: arena.clone(),
        forward: fwd_tx,
        returned: ret_rx,
        free: (0..slots).collect(),
        pending: false,
    };
    (sender, HandoffReceiver { arena, forward: fwd_rx, returned: ret_tx })
}

impl HandoffSender {
    /// Copies `frame` into a free slot and queues it; false if every slot is in use (the caller counts the
    /// drop) or the frame is too long.
    pub fn send(&mut self, tag: u16, frame: &[u8]) -> bool {
        if frame.len() > SLOT_BYTES {
            return false;
        }
        if self.free.is_empty() {
            let mut back = [0u32; 64];
            loop {
                let n = self.returned.pop(&mut back);
                if n == 0 {
                    break;
                }
                self.returned.release::<u32>();
                self.free.extend_from_slice(&back[..n]);
            }
        }
        let Some(slot) = self.free.pop() else { return false };
        self.arena.write(slot, frame);
        let desc = HandoffDesc { slot, len: frame.len() as u16, tag };
        // The forward ring has as many entries as there are slots, so it always has room for a free slot.
        let pushed = self.forward.push(&[desc]);
        debug_assert_eq!(pushed, 1);
        self.pending = true;
        true
    }

    /// Publishes what `send` queued (one release store per round).
    pub fn flush(&mut self) {
        if self.pending {
            self.forward.submit::<HandoffDesc>();
            self.pending = false;
        }
    }
}

impl HandoffReceiver {
    /// Copies up to `bufs.len()` handed-off frames into `bufs`, their lengths and tags into `lens`/`tags`,
    /// and returns their slots; returns how many.
    pub fn receive(&mut self, bufs: &mut [[u8; SLOT_BYTES]], lens: &mut [usize], tags: &mut [u16]) -> usize {
        let mut descs = [HandoffDesc::default(); 64];
        let max = bufs.len().min(lens.len()).min(tags.len()).min(descs.len());
        let n = self.forward.pop(&mut descs[..max]);
        if n == 0 {
            return 0;
        }
        let mut slots = [0u32; 64];
        for (i, d) in descs[..n].iter().enumerate() {
            let len = d.len as usize;
            self.arena.read(d.slot, len, &mut bufs[i]);
            lens[i] = len;
            tags[i] = d.tag;
            slots[i] = d.slot;
        }
        self.forward.release::<HandoffDesc>();
        let back = self.returned.push(&slots[..n]);
        debug_assert_eq!(back, n, "the return ring holds every slot");
        self.returned.submit::<u32>();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_in_order_and_slots_come_back() {
        let (mut tx, mut rx) = link(4);
        let mut bufs = [[0u8; SLOT_BYTES]; 8];
        let (mut lens, mut tags) = ([0usize; 8], [0u16; 8]);
        for round in 0..10u8 {
            for k in 0..4u8 {
                assert!(tx.send(u16::from(k), &[round, k, 7]), "a free slot in round {round}");
            }
            assert!(!tx.send(9, &[0]), "four slots, all in use");
            tx.flush();
            assert_eq!(rx.receive(&mut bufs, &mut lens, &mut tags), 4);
            for k in 0..4usize {
                assert_eq!((&bufs[k][..lens[k]], tags[k]), (&[round, k as u8, 7][..], k as u16));
            }
        }
    }

    #[test]
    fn two_threads_pass_frames_without_loss() {
        let (mut tx, mut rx) = link(64);
        let total = 200_000u32;
        let reader = std::thread::spawn(move || {
            let mut bufs = vec![[0u8; SLOT_BYTES]; 32];
            let (mut lens, mut tags) = ([0usize; 32], [0u16; 32]);
            let mut next = 0u32;
            while next < total {
                let n = rx.receive(&mut bufs, &mut lens, &mut tags);
                for i in 0..n {
                    assert_eq!(u32::from_le_bytes(bufs[i][..4].try_into().unwrap()), next);
                    assert_eq!(lens[i], 4 + (next % 100) as usize);
                    next += 1;
                }
            }
        });
        let mut frame = [0u8; 104];
        let mut sent = 0u32;
        while sent < total {
            frame[..4].copy_from_slice(&sent.to_le_bytes());
            if tx.send(0, &frame[..4 + (sent % 100) as usize]) {
                sent += 1;
            } else {
                tx.flush();
                std::thread::yield_now();
            }
            if sent % 16 == 0 {
                tx.flush();
            }
        }
        tx.flush();
        reader.join().unwrap();
    }
}

/// Model check (`RUSTFLAGS="--cfg loom" cargo test --release -p calxdp-dataplane --lib loom`): the frame
/// bytes live in `UnsafeCell` slots lent and returned over two rings; loom fails the run if a slot is
/// written while the other side may still read it, or read before its write is ordered before the read.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;

    /// Two slots, three frames: the third reuses a slot that came back on the return ring.
    #[test]
    fn loom_handoff_frames_cross_whole_and_slots_are_reused_safely() {
        loom::model(|| {
            let (mut tx, mut rx) = link(2);
            let total = 3u8;
            let sender = loom::thread::spawn(move || {
                let mut sent = 0u8;
                while sent < total {
                    if tx.send(u16::from(sent), &[sent, sent ^ 0xff, sent]) {
                        sent += 1;
                    } else {
                        // Every slot in use: publish and wait for one to come back.
                        tx.flush();
                        loom::thread::yield_now();
                    }
                }
                tx.flush();
            });
            let mut bufs = vec![[0u8; SLOT_BYTES]; 2];
            let (mut lens, mut tags) = ([0usize; 2], [0u16; 2]);
            let mut next = 0u8;
            while next < total {
                let n = rx.receive(&mut bufs, &mut lens, &mut tags);
                for i in 0..n {
                    assert_eq!((&bufs[i][..lens[i]], tags[i]), (&[next, next ^ 0xff, next][..], u16::from(next)));
                    next += 1;
                }
                if n == 0 {
                    loom::thread::yield_now();
                }
            }
            sender.join().unwrap();
        });
    }
}
