//! One AF_XDP socket bound to one interface queue, with its own UMEM: the frames, the FILL and COMPLETION
//! rings that lend frames to the kernel and take them back, and the RX and TX rings
//! (Documentation/networking/af_xdp.rst).
//!
//! Frame ownership is simple and checked by construction: a frame address is at any moment in exactly one
//! place: the free list, the FILL ring (the kernel may write into it), an RX descriptor we hold, the TX
//! ring (the kernel reads it), or the COMPLETION ring. Half the frames start in FILL for receiving, half on
//! the free list for transmitting; received frames go back to FILL as soon as their batch is done (what
//! leaves on another port is copied into that port's own UMEM).

use super::ring::{Consumer, Producer, RingMemory, XdpDesc};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
// The ring's cursors and entries in kernel memory, as the ring code takes them (std's atomics and a
// `repr(transparent)` cell; under `--cfg loom` these are loom's, and this module only compiles, never runs).
use crate::sync::{AtomicU32, Ordering, UnsafeCell};

/// Wakeups per flush: enough to drain a full batch from every port, bounded so one busy port cannot stall
/// the loop (what is left goes at the next round).
const MAX_KICKS_PER_FLUSH: u32 = 8;

/// Sizes of one socket.
#[derive(Clone, Copy, Debug)]
pub struct XskConfig {
    /// Frames in the UMEM (a power of two); half receive, half transmit.
    pub frames: u32,
    /// Bytes per frame (2048 or 4096).
    pub frame_size: u32,
    /// Entries of each ring (a power of two).
    pub ring_size: u32,
}

impl Default for XskConfig {
    fn default() -> XskConfig {
        XskConfig { frames: 4096, frame_size: 2048, ring_size: 2048 }
    }
}

impl XskConfig {
    /// Bytes the kernel keeps in front of every received frame in a UMEM chunk (XDP_PACKET_HEADROOM): a
    /// frame longer than `frame_size - HEADROOM` does not fit and is dropped by the kernel unseen.
    pub const HEADROOM: usize = 256;

    /// Bytes of locked memory this socket registers.
    pub fn umem_bytes(&self) -> usize {
        self.frames as usize * self.frame_size as usize
    }
}

/// Why a socket could not be opened, in the words an operator needs.
#[derive(Debug)]
pub enum XskError {
    NoInterface(String),
    Syscall { what: &'static str, interface: String, error: io::Error },
}

impl std::fmt::Display for XskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            XskError::NoInterface(i) => write!(f, "interface {i} does not exist in this network namespace"),
            XskError::Syscall { what, interface, error } => {
                write!(f, "AF_XDP socket on {interface}: {what} failed: {error}")?;
                match error.raw_os_error() {
                    Some(libc::EPERM) => {
                        write!(f, " (calxdp needs CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF: run it as root)")
                    }
                    Some(libc::ENOBUFS) | Some(libc::ENOMEM) => write!(
                        f,
                        " (the UMEM could not be locked: raise `ulimit -l` or run as root, which has CAP_IPC_LOCK)"
                    ),
                    Some(libc::EAFNOSUPPORT) => write!(f, " (this kernel was built without AF_XDP)"),
                    Some(libc::EBUSY) => write!(f, " (another AF_XDP socket is bound to this queue)"),
                    _ => Ok(()),
                }
            }
        }
    }
}

impl std::error::Error for XskError {}

/// An mmap'd area, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what a successful mmap returned, and nothing borrows the mapping
        // any more: the rings and frame slices that point into it are fields dropped before it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: the mapping is plain memory; which thread unmaps it does not matter.
unsafe impl Send for Mapping {}

/// One ring mapped from the kernel: its cursors, flags and entries inside a [`Mapping`].
#[derive(Debug)]
pub struct MappedRing<T> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    entries: NonNull<UnsafeCell<T>>,
    size: u32,
    _map: Mapping,
}

// SAFETY: the ring's memory is owned by this value (the mapping), and the cursor protocol makes every
// access from this side single-threaded: one socket is used by one worker.
unsafe impl<T: Send> Send for MappedRing<T> {}

impl<T: Copy> RingMemory<T> for MappedRing<T> {
    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points at the ring's 32-bit producer cursor inside the live mapping (kernel-given offset).
        unsafe { self.producer.as_ref() }
    }
    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }
    fn entries(&self) -> &[UnsafeCell<T>] {
        // SAFETY: the kernel laid out `size` entries of `T` at this offset of the mapping, which lives as
        // long as `self`; entries are only accessed through the cells, under the cursor protocol.
        unsafe { std::slice::from_raw_parts(self.entries.as_ptr(), self.size as usize) }
    }
}

impl<T> MappedRing<T> {
    /// Whether the kernel asks to be woken for this ring (XDP_USE_NEED_WAKEUP).
    fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `producer`: the ring's flags word inside the live mapping.
        let flags = unsafe { self.flags.as_ref() };
        flags.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    /// Maps ring `pgoff` of socket `fd`, `size` entries of `T`, at the kernel's offsets.
    fn map(fd: RawFd, pgoff: u64, off: &libc::xdp_ring_offset, size: u32) -> io::Result<MappedRing<T>> {
        let len = off.desc as usize + size as usize * std::mem::size_of::<T>();
        // SAFETY: a fresh shared mapping of the socket's ring; the kernel checks `pgoff` and `len`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = ptr.cast::<u8>();
        let at = |o: u64| {
            // SAFETY: every offset the kernel gives is inside the `len` bytes just mapped.
            NonNull::new(unsafe { base.add(o as usize) }).expect("mmap never returns null")
        };
        Ok(MappedRing {
            producer: at(off.producer).cast(),
            consumer: at(off.consumer).cast(),
            flags: at(off.flags).cast(),
            entries: at(off.desc).cast(),
            size,
            _map: Mapping { ptr: NonNull::new(base).expect("mmap never returns null"), len },
        })
    }
}

/// An open, bound AF_XDP socket and its UMEM.
#[derive(Debug)]
pub struct XskSocket {
    fill: Producer<MappedRing<u64>>,
    completion: Consumer<MappedRing<u64>>,
    rx: Consumer<MappedRing<XdpDesc>>,
    tx: Producer<MappedRing<XdpDesc>>,
    /// Frames free for transmitting.
    free: Vec<u64>,
    frame_size: u32,
    /// TX descriptors pushed but not yet kicked.
    tx_pending: bool,
    /// Frames handed to TX and not yet back through COMPLETION, of `tx_frames` for transmitting.
    pub in_flight: u32,
    tx_frames: u32,
    umem: Mapping,
    fd: OwnedFd,
    pub interface: String,
}

impl XskSocket {
    /// Opens a socket on `interface` queue `queue` in copy mode with need-wakeup, its UMEM registered and
    /// half its frames lent to the kernel for receiving.
    pub fn open(interface: &str, queue: u32, cfg: XskConfig) -> Result<XskSocket, XskError> {
        let fail = |what: &'static str| {
            let error = io::Error::last_os_error();
            move || XskError::Syscall { what, interface: interface.to_string(), error }
        };
        let name = CString::new(interface).map_err(|_| XskError::NoInterface(interface.to_string()))?;
        // SAFETY: a plain libc call on a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(XskError::NoInterface(interface.to_string()));
        }
        // SAFETY: socket(2) with constant arguments.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(fail("socket(AF_XDP)")());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let umem_len = cfg.umem_bytes();
        // SAFETY: a fresh private anonymous mapping; no memory of ours is affected.
        let area = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                umem_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if area == libc::MAP_FAILED {
            return Err(fail("mmap(UMEM)")());
        }
        let umem = Mapping { ptr: NonNull::new(area.cast()).expect("mmap never returns null"), len: umem_len };
        let reg = libc::xdp_umem_reg {
            addr: area as u64,
            len: umem_len as u64,
            chunk_size: cfg.frame_size,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        super::setsockopt(fd.as_raw_fd(), libc::SOL_XDP, libc::XDP_UMEM_REG, &reg)
            .map_err(|_| fail("XDP_UMEM_REG")())?;
        for opt in [libc::XDP_UMEM_FILL_RING, libc::XDP_UMEM_COMPLETION_RING, libc::XDP_RX_RING, libc::XDP_TX_RING] {
            super::setsockopt(fd.as_raw_fd(), libc::SOL_XDP, opt, &cfg.ring_size)
                .map_err(|_| fail("ring size setsockopt")())?;
        }
        let mut off: libc::xdp_mmap_offsets = zeroed_offsets();
        let mut len = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `off`, which is that large.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut libc::xdp_mmap_offsets).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(fail("XDP_MMAP_OFFSETS")());
        }
        let n = cfg.ring_size;
        let raw = fd.as_raw_fd();
        let fill = MappedRing::<u64>::map(raw, libc::XDP_UMEM_PGOFF_FILL_RING, &off.fr, n)
            .map_err(|_| fail("mmap(FILL)")())?;
        let completion = MappedRing::<u64>::map(raw, libc::XDP_UMEM_PGOFF_COMPLETION_RING, &off.cr, n)
            .map_err(|_| fail("mmap(COMPLETION)")())?;
        let rx = MappedRing::<XdpDesc>::map(raw, libc::XDP_PGOFF_RX_RING as u64, &off.rx, n)
            .map_err(|_| fail("mmap(RX)")())?;
        let tx = MappedRing::<XdpDesc>::map(raw, libc::XDP_PGOFF_TX_RING as u64, &off.tx, n)
            .map_err(|_| fail("mmap(TX)")())?;
        let mut sock = XskSocket {
            fill: Producer::new(fill),
            completion: Consumer::new(completion),
            rx: Consumer::new(rx),
            tx: Producer::new(tx),
            free: Vec::with_capacity(cfg.frames as usize),
            frame_size: cfg.frame_size,
            tx_pending: false,
            in_flight: 0,
            tx_frames: 0,
            umem,
            fd,
            interface: interface.to_string(),
        };
        let half = cfg.frames / 2;
        let receive: Vec<u64> = (0..half.min(n)).map(|i| u64::from(i) * u64::from(cfg.frame_size)).collect();
        sock.free.extend((receive.len() as u32..cfg.frames).map(|i| u64::from(i) * u64::from(cfg.frame_size)));
        sock.tx_frames = sock.free.len() as u32;
        sock.fill.push(&receive);
        sock.fill.submit::<u64>();

        let addr = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: libc::XDP_COPY | libc::XDP_USE_NEED_WAKEUP,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `addr` is a valid sockaddr_xdp and its exact size is passed.
        let r = unsafe {
            libc::bind(
                sock.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if r != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EINVAL) && queue > 0 {
                let what = "bind (the interface has no active receive queue of that index: give it more with \
                            `ethtool -L <interface> rx N tx N`, or run fewer workers)";
                return Err(XskError::Syscall { what, interface: format!("{interface} queue {queue}"), error });
            }
            return Err(XskError::Syscall { what: "bind", interface: interface.to_string(), error });
        }
        Ok(sock)
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Takes up to `out.len()` received descriptors.
    pub fn receive(&mut self, out: &mut [XdpDesc]) -> usize {
        let n = self.rx.pop(out);
        if n > 0 {
            self.rx.release::<XdpDesc>();
        } else if self.fill.mem_needs_wakeup() {
            // Copy mode on need-wakeup: the kernel fills RX from its own path; a zero-length recv tells it
            // the FILL ring has frames again after it ran dry.
            // SAFETY: recvfrom with a null buffer of length 0 is the documented wakeup.
            unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
        n
    }

    /// The bytes of a frame this socket holds (a received descriptor or one being built for TX).
    pub fn frame_mut(&mut self, addr: u64, len: u32) -> &mut [u8] {
        let end = addr as usize + len as usize;
        assert!(end <= self.umem.len && len <= self.frame_size, "descriptor outside the UMEM");
        // SAFETY: the range is inside the UMEM (checked above) and the frame at `addr` is owned by us (an RX
        // descriptor taken from the ring, or a frame off the free list), so the kernel does not touch it
        // while this borrow, tied to `&mut self`, lives.
        unsafe { std::slice::from_raw_parts_mut(self.umem.ptr.as_ptr().add(addr as usize), len as usize) }
    }

    /// Gives received frames back to the kernel for receiving again.
    pub fn recycle(&mut self, addrs: &[u64]) {
        // FILL has room for every frame of the receive half, so this never comes up short.
        let n = self.fill.push(addrs);
        debug_assert_eq!(n, addrs.len());
        self.free.extend_from_slice(&addrs[n..]);
        self.fill.submit::<u64>();
    }

    /// Copies `frame` into a free frame and queues it for transmit; false when no frame or TX slot is free
    /// (the caller counts the drop).
    pub fn send_copy(&mut self, frame: &[u8]) -> bool {
        if frame.len() > self.frame_size as usize {
            return false;
        }
        if self.free.is_empty() || self.tx.free_cached() == 0 {
            self.complete();
        }
        let Some(addr) = self.free.pop() else { return false };
        self.frame_mut(addr, frame.len() as u32).copy_from_slice(frame);
        let desc = XdpDesc { addr, len: frame.len() as u32, options: 0 };
        if self.tx.push(&[desc]) == 0 {
            self.free.push(addr);
            return false;
        }
        self.in_flight += 1;
        self.tx_pending = true;
        true
    }

    /// Publishes queued TX descriptors and wakes the kernel until it has taken them all (copy mode sends at
    /// most a few dozen per wakeup, so one kick can leave the tail of a burst in the ring); collects
    /// completions.
    pub fn flush(&mut self) {
        if self.tx_pending {
            self.tx.submit::<XdpDesc>();
            self.tx_pending = false;
        }
        let mut kicks = 0;
        while self.tx.outstanding::<XdpDesc>() > 0 && kicks < MAX_KICKS_PER_FLUSH {
            if !self.tx.mem_needs_wakeup() {
                break;
            }
            // SAFETY: sendto with a null buffer of length 0 is the documented TX wakeup.
            let r = unsafe {
                libc::sendto(self.fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0)
            };
            kicks += 1;
            if r < 0 {
                // EAGAIN/EBUSY: the kernel is busy or completions are full; collect them and retry next round.
                break;
            }
        }
        if self.in_flight > 0 {
            self.complete();
        }
    }

    /// Wakes the kernel to send what the TX ring holds, whether or not it asked to be woken (a no-op syscall
    /// when it already has).
    pub fn wake_tx(&self) {
        // SAFETY: sendto with a null buffer of length 0 is the documented TX wakeup.
        unsafe { libc::sendto(self.fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0) };
    }

    /// Whether most of the transmit frames are still with the kernel: the port sends slower than frames
    /// arrive for it, and taking in more would only decide frames to drop them.
    pub fn tx_congested(&self) -> bool {
        self.in_flight * 4 >= self.tx_frames * 3
    }

    /// Takes transmitted frames back onto the free list.
    fn complete(&mut self) {
        let mut done = [0u64; 64];
        loop {
            let n = self.completion.pop(&mut done);
            if n == 0 {
                break;
            }
            self.completion.release::<u64>();
            self.free.extend_from_slice(&done[..n]);
            self.in_flight -= n as u32;
        }
    }

    /// The kernel's drop counters for this socket.
    pub fn statistics(&self) -> io::Result<libc::xdp_statistics> {
        // SAFETY: xdp_statistics is plain integers; all-zero is a valid value.
        let mut s: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `s`.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&mut s as *mut libc::xdp_statistics).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(s)
    }
}

fn zeroed_offsets() -> libc::xdp_mmap_offsets {
    // SAFETY: the struct is plain integers; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Wakeup checks on the producing rings.
trait NeedsWakeup {
    fn mem_needs_wakeup(&self) -> bool;
}

impl<T> NeedsWakeup for Producer<MappedRing<T>> {
    fn mem_needs_wakeup(&self) -> bool {
        self.memory().needs_wakeup()
    }
}
