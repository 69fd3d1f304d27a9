//! Next hops being resolved: the frames waiting for a neighbour's MAC and the probes asking for it, per
//! target, as Linux's neighbour table does for an entry in INCOMPLETE state (net/core/neighbour.c): the first
//! frame starts resolution with a probe at once, a probe goes out every second, and after three unanswered
//! probes the entry fails and its frames are dropped; the next frame to it starts over. Each target asks on
//! its own schedule, so a dead address cannot keep a live one from being asked, and its frames queue only
//! behind their own next hop, within a bound per target and one per worker.
//!
//! Fixed memory, allocated once per worker; nothing here sends a frame: the worker asks [`Pending::due`]
//! what to do each round and does it.

use std::net::IpAddr;

use crate::flow::Nanos;
use crate::ports::PortId;

/// Probes sent before a next hop is given up (Linux: `mcast_solicit` 3).
pub const PROBES: u8 = 3;
/// Time between probes (Linux: `retrans_time_ms` 1000).
pub const RETRANS: Nanos = 1_000_000_000;
/// Next hops resolved at once per worker.
pub const TARGETS: usize = 32;
/// Frames held per next hop, and in all per worker (Linux queues about 100 full frames per neighbour; a
/// worker here holds fewer and drops the oldest of a next hop when its share is full, as Linux does).
pub const HELD_PER_TARGET: usize = 64;
pub const HELD_FRAMES: usize = 256;

/// One next hop being resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Target {
    port: PortId,
    ip: IpAddr,
    probes: u8,
    last_probe: Nanos,
    held: u8,
}

/// One frame waiting for its next hop.
#[derive(Clone, Copy, Debug)]
struct Held {
    target: u8,
    len: u16,
    /// The port the frame arrived on, to count it there if it is dropped.
    from: PortId,
    /// Arrival order, so frames leave in the order they came.
    seq: u64,
}

/// What the worker should do for a next hop this round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Send a probe (ARP request or neighbour solicitation) for `ip` out of `port`.
    Probe { port: PortId, ip: IpAddr },
    /// Nothing answered: the next hop failed; its `dropped` frames are gone.
    Failed { port: PortId, ip: IpAddr, dropped: usize },
}

/// Why a frame could not be held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldError {
    /// Every target slot is resolving another next hop.
    NoTarget,
}

/// The frames waiting for next hops, and the next hops being asked for.
#[derive(Debug)]
pub struct Pending {
    targets: [Option<Target>; TARGETS],
    held: [Option<Held>; HELD_FRAMES],
    bufs: Vec<[u8; crate::batch::FRAME_MAX]>,
    seq: u64,
    /// Frames dropped to make room (a next hop's oldest, when its share or the pool was full).
    pub displaced: u64,
    /// The port the frame the last [`Pending::hold`] dropped to make room had arrived on.
    pub displaced_from: Option<PortId>,
}

impl Default for Pending {
    fn default() -> Pending {
        Pending {
            targets: [None; TARGETS],
            held: [None; HELD_FRAMES],
            bufs: vec![[0; crate::batch::FRAME_MAX]; HELD_FRAMES],
            seq: 0,
            displaced: 0,
            displaced_from: None,
        }
    }
}

impl Pending {
    /// Whether anything is waiting.
    pub fn is_empty(&self) -> bool {
        self.targets.iter().all(Option::is_none)
    }

    /// Frames held right now.
    pub fn held(&self) -> usize {
        self.held.iter().flatten().count()
    }

    /// Holds `frame` (which arrived on port `from`) until the MAC of `ip` (reached through `port`) is known.
    /// Returns whether a probe should go out now (the first frame for a next hop starts its resolution).
    pub fn hold(
        &mut self,
        port: PortId,
        ip: IpAddr,
        frame: &[u8],
        now: Nanos,
        from: PortId,
    ) -> Result<bool, HoldError> {
        self.displaced_from = None;
        let (t, fresh) = match self.targets.iter().position(|t| t.is_some_and(|t| t.port == port && t.ip == ip)) {
            Some(t) => (t, false),
            None => {
                let t = self.targets.iter().position(Option::is_none).ok_or(HoldError::NoTarget)?;
                self.targets[t] = Some(Target { port, ip, probes: 0, last_probe: now, held: 0 });
                (t, true)
            }
        };
        let full = self.targets[t].is_some_and(|x| x.held as usize >= HELD_PER_TARGET);
        let slot = match self.held.iter().position(Option::is_none) {
            Some(k) if !full => k,
            // This next hop's share or the whole pool is full: its own oldest frame (or the pool's oldest)
            // makes room.
            _ => {
                let oldest = |only: Option<usize>| {
                    (0..HELD_FRAMES)
                        .filter(|&k| self.held[k].is_some_and(|h| only.is_none_or(|t| h.target as usize == t)))
                        .min_by_key(|&k| self.held[k].map_or(u64::MAX, |h| h.seq))
                };
                let k = oldest(Some(t)).or_else(|| oldest(None)).expect("a full pool holds frames");
                self.displaced_from = self.held[k].map(|h| h.from);
                self.release(k);
                self.displaced += 1;
                k
            }
        };
        let len = frame.len().min(crate::batch::FRAME_MAX);
        self.bufs[slot][..len].copy_from_slice(&frame[..len]);
        self.seq += 1;
        self.held[slot] = Some(Held { target: t as u8, len: len as u16, from, seq: self.seq });
        if let Some(x) = self.targets[t].as_mut() {
            x.held += 1;
        }
        Ok(fresh)
    }

    fn release(&mut self, k: usize) {
        if let Some(h) = self.held[k].take() {
            if let Some(t) = self.targets[h.target as usize].as_mut() {
                t.held -= 1;
            }
        }
    }

    /// The next hops being resolved, with the port they are resolved on.
    pub fn targets(&self) -> impl Iterator<Item = (PortId, IpAddr)> + '_ {
        self.targets.iter().flatten().map(|t| (t.port, t.ip))
    }

    /// Takes the frames held for `ip` on `port` (its MAC is known now), oldest first, into `out` (each
    /// as the slot it sits in); ends the target. Call [`Pending::frame`] for their bytes, then
    /// [`Pending::free`].
    pub fn resolved(&mut self, port: PortId, ip: IpAddr, out: &mut [usize; HELD_PER_TARGET]) -> usize {
        let Some(t) = self.targets.iter().position(|t| t.is_some_and(|t| t.port == port && t.ip == ip)) else {
            return 0;
        };
        let mut n = 0;
        for k in 0..HELD_FRAMES {
            if self.held[k].is_some_and(|h| h.target as usize == t) && n < out.len() {
                out[n] = k;
                n += 1;
            }
        }
        out[..n].sort_by_key(|&k| self.held[k].map_or(u64::MAX, |h| h.seq));
        self.targets[t] = None;
        n
    }

    /// The bytes of the frame held in slot `k` (mutable, so the worker can set the destination MAC).
    pub fn frame(&mut self, k: usize) -> &mut [u8] {
        let len = self.held[k].map_or(0, |h| h.len as usize);
        &mut self.bufs[k][..len]
    }

    /// The port the frame held in slot `k` arrived on.
    pub fn from(&self, k: usize) -> Option<PortId> {
        self.held[k].map(|h| h.from)
    }

    /// Frees slot `k` after its frame was sent.
    pub fn free(&mut self, k: usize) {
        self.held[k] = None;
    }

    /// What is due at `now`: probes for next hops whose last probe is a second old, and the next hops
    /// that failed (their frames are dropped here, each told to `dropped` with the port it arrived on). At
    /// most `out.len()` at a time.
    pub fn due(&mut self, now: Nanos, out: &mut [Option<Due>; TARGETS], dropped: &mut impl FnMut(PortId)) -> usize {
        let mut n = 0;
        for t in 0..TARGETS {
            let Some(mut target) = self.targets[t] else { continue };
            if target.probes > 0 && now.saturating_sub(target.last_probe) < RETRANS {
                continue;
            }
            if target.probes >= PROBES {
                let mut gone = 0;
                for k in 0..HELD_FRAMES {
                    if let Some(h) = self.held[k].filter(|h| h.target as usize == t) {
                        self.held[k] = None;
                        dropped(h.from);
                        gone += 1;
                    }
                }
                self.targets[t] = None;
                out[n] = Some(Due::Failed { port: target.port, ip: target.ip, dropped: gone });
            } else {
                target.probes += 1;
                target.last_probe = now;
                self.targets[t] = Some(target);
                out[n] = Some(Due::Probe { port: target.port, ip: target.ip });
            }
            n += 1;
        }
        n
    }

    /// Drops everything held for `port` (its interface went away), each frame told to `dropped` with the
    /// port it arrived on; returns how many frames.
    pub fn forget_port(&mut self, port: PortId, dropped: &mut impl FnMut(PortId)) -> usize {
        let mut gone = 0;
        for t in 0..TARGETS {
            if self.targets[t].is_some_and(|x| x.port == port) {
                for k in 0..HELD_FRAMES {
                    if let Some(h) = self.held[k].filter(|h| h.target as usize == t) {
                        self.held[k] = None;
                        dropped(h.from);
                        gone += 1;
                    }
                }
                self.targets[t] = None;
            }
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = 1_000_000_000;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, n))
    }

    fn run_due(p: &mut Pending, now: Nanos) -> Vec<Due> {
        let mut out = [None; TARGETS];
        let n = p.due(now, &mut out, &mut |_| {});
        out[..n].iter().flatten().copied().collect()
    }

    #[test]
    fn three_probes_a_second_apart_then_the_next_hop_fails_and_its_frames_are_dropped() {
        let mut p = Pending::default();
        assert_eq!(p.hold(1, ip(99), &[1; 60], 0, 7), Ok(true), "the first frame asks at once");
        assert_eq!(p.hold(1, ip(99), &[2; 60], 0, 7), Ok(false));
        assert_eq!(run_due(&mut p, 0), vec![Due::Probe { port: 1, ip: ip(99) }]);
        assert_eq!(run_due(&mut p, S / 2), vec![]);
        assert_eq!(run_due(&mut p, S), vec![Due::Probe { port: 1, ip: ip(99) }]);
        assert_eq!(run_due(&mut p, 2 * S), vec![Due::Probe { port: 1, ip: ip(99) }]);
        assert_eq!(run_due(&mut p, 3 * S), vec![Due::Failed { port: 1, ip: ip(99), dropped: 2 }]);
        assert!(p.is_empty());
        assert_eq!(p.hold(1, ip(99), &[3; 60], 4 * S, 7), Ok(true), "a failed next hop is asked again");
    }

    #[test]
    fn a_dead_next_hop_does_not_keep_a_live_one_from_being_asked_or_its_frames_from_leaving() {
        let mut p = Pending::default();
        for i in 0..100 {
            let _ = p.hold(1, ip(99), &[i; 60], 0, 7);
        }
        assert_eq!(p.hold(2, ip(7), &[0xaa; 60], 0, 8), Ok(true), "another next hop is asked at once");
        let due = run_due(&mut p, 0);
        assert!(due.contains(&Due::Probe { port: 2, ip: ip(7) }), "{due:?}");
        assert_eq!(p.held(), HELD_PER_TARGET + 1, "the dead next hop keeps only its share");
        let mut slots = [0; HELD_PER_TARGET];
        assert_eq!(p.resolved(2, ip(7), &mut slots), 1);
        assert_eq!(p.frame(slots[0]), &[0xaa; 60]);
        // The dead next hop's newest frames are the ones kept, oldest first.
        let mut dead = [0; HELD_PER_TARGET];
        let n = p.resolved(1, ip(99), &mut dead);
        assert_eq!(n, HELD_PER_TARGET);
        assert_eq!(p.frame(dead[0])[0], 100 - HELD_PER_TARGET as u8);
        assert_eq!(p.displaced, 100 - HELD_PER_TARGET as u64);
    }

    #[test]
    fn a_port_that_goes_away_takes_its_frames_with_it() {
        let mut p = Pending::default();
        let _ = p.hold(3, ip(1), &[0; 60], 0, 9);
        let _ = p.hold(4, ip(2), &[0; 60], 0, 9);
        let mut from = Vec::new();
        assert_eq!(p.forget_port(3, &mut |f| from.push(f)), 1);
        assert_eq!(from, vec![9], "each dropped frame is told with the port it arrived on");
        assert_eq!(p.targets().collect::<Vec<_>>(), vec![(4, ip(2))]);
    }
}
