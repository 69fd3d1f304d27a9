//! The seam between the worker and the frames' source and sink: one port is an AF_XDP socket (an uplink or a
//! pod veth), a queue of the host tap, or an in-memory queue (the offline levels, `replay`, tests). The worker
//! runs the same batch code over all three, so every level tests the production frame path.
//!
//! Ports are known by a [`PortId`] that stays the same while the interface is attached, whatever the table
//! version: uplinks are `0..uplinks`, the host is `uplinks`, pods get ids from the control thread when their
//! interface is attached (`PortIds`). The tables say which pod a port id is in each version.

use std::collections::VecDeque;

use crate::sys::socket::XskSocket;
use crate::sys::tap::Tap;

/// A port, as the worker and the control thread know it: stable while its interface is attached.
pub type PortId = u16;

/// One port's queue as a worker sees it.
#[derive(Debug)]
pub enum PortIo {
    Xsk(Box<XskSocket>),
    Tap(Tap),
    Memory(MemoryPort),
}

/// A port in memory: frames pushed in are received by the worker; frames the worker sends are kept. Its
/// owner drives the worker round by round (`Worker::round`) and looks at both sides in between.
#[derive(Debug, Default)]
pub struct MemoryPort {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: Vec<Vec<u8>>,
    /// Most frames the transmit side keeps (frames past it are refused, as a full TX ring refuses them).
    pub tx_limit: usize,
}

impl MemoryPort {
    pub fn new() -> MemoryPort {
        MemoryPort { rx: VecDeque::new(), tx: Vec::new(), tx_limit: 1 << 16 }
    }
}

impl PortIo {
    /// Queues one frame for transmit; false if the port would not take it (the caller counts the loss).
    pub fn send(&mut self, frame: &[u8]) -> bool {
        match self {
            PortIo::Xsk(s) => s.send_copy(frame),
            PortIo::Tap(t) => t.write(frame),
            PortIo::Memory(m) => {
                if m.tx.len() >= m.tx_limit {
                    return false;
                }
                m.tx.push(frame.to_vec());
                true
            }
        }
    }

    /// Publishes queued transmits (AF_XDP: one wakeup per round).
    pub fn flush(&mut self) {
        if let PortIo::Xsk(s) = self {
            s.flush();
        }
    }

    /// Whether most of the port's transmit frames are still with the kernel.
    pub fn tx_congested(&self) -> bool {
        matches!(self, PortIo::Xsk(s) if s.tx_congested())
    }

    /// Wakes a congested AF_XDP port's transmit (one syscall, on whose way out the kernel also runs the
    /// receive work that completes earlier transmits) and takes back what completed.
    pub fn wake_congested(&mut self) {
        if let PortIo::Xsk(s) = self {
            if s.tx_congested() {
                s.wake_tx();
                s.flush();
            }
        }
    }
}

/// Sends one frame out of a port; false if there is no such port (detached) or it would not take it. A
/// function of the port alone, so a caller can send from its own buffers while it holds them.
pub fn send(port: Option<&mut Option<PortIo>>, frame: &[u8]) -> bool {
    match port {
        Some(Some(p)) => p.send(frame),
        _ => false,
    }
}
