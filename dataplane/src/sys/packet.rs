//! A raw AF_PACKET socket on one interface: whole Ethernet frames in and out, as a test host or a traffic
//! generator sees the wire. Not part of the dataplane's own path.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A non-blocking packet socket bound to one interface, receiving every protocol.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
    pub interface: String,
}

const ETH_P_ALL: u16 = 0x0003;

impl PacketSocket {
    /// A non-blocking socket receiving every protocol.
    pub fn open(interface: &str) -> io::Result<PacketSocket> {
        PacketSocket::open_with(interface, ETH_P_ALL, false)
    }

    /// A socket receiving frames of one ethertype (0: none, a send-only socket), blocking or not.
    pub fn open_with(interface: &str, ethertype: u16, blocking: bool) -> io::Result<PacketSocket> {
        let name = CString::new(interface).map_err(|_| io::Error::other("interface name has a NUL"))?;
        // SAFETY: a plain libc call on a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        if ifindex == 0 {
            return Err(io::Error::other(format!("no interface {interface}")));
        }
        let flags = libc::SOCK_RAW | libc::SOCK_CLOEXEC | if blocking { 0 } else { libc::SOCK_NONBLOCK };
        // SAFETY: socket(2) with constant arguments.
        let raw = unsafe { libc::socket(libc::AF_PACKET, flags, i32::from(ethertype.to_be())) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut addr = sockaddr(ifindex);
        addr.sll_protocol = ethertype.to_be();
        // SAFETY: `addr` is a valid sockaddr_ll and its size is passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd, ifindex, interface: interface.to_string() })
    }

    /// The receive buffer, in bytes (SO_RCVBUFFORCE: root may exceed the system maximum).
    pub fn set_receive_buffer(&self, bytes: i32) -> io::Result<()> {
        self.set_option(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &bytes)
    }

    /// How long a blocking receive waits before giving up.
    pub fn set_receive_timeout(&self, t: std::time::Duration) -> io::Result<()> {
        let tv = libc::timeval { tv_sec: t.as_secs() as libc::time_t, tv_usec: t.subsec_micros() as libc::suseconds_t };
        self.set_option(libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
    }

    fn set_option<T>(&self, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
        super::setsockopt(self.fd.as_raw_fd(), level, name, value)
    }

    /// (frames delivered, frames the socket dropped) since the last call (PACKET_STATISTICS).
    pub fn statistics(&self) -> io::Result<(u32, u32)> {
        // SAFETY: tpacket_stats is plain integers; all-zero is valid.
        let mut s: libc::tpacket_stats = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `s`.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut s as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((s.tp_packets, s.tp_drops))
    }

    /// Sends one frame out of the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let addr = sockaddr(self.ifindex);
        // SAFETY: sendto reads `frame.len()` bytes of `frame`; `addr` is a valid sockaddr_ll.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one frame that arrived on the interface (frames this host sent are skipped); `None` when
    /// none is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let mut addr = sockaddr(0);
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: recvfrom writes at most `buf.len()` bytes into `buf` and at most `len` into `addr`.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut addr as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                return None;
            }
            if addr.sll_pkttype != libc::PACKET_OUTGOING {
                return Some(n as usize);
            }
        }
    }
}

fn sockaddr(ifindex: i32) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    a.sll_family = libc::AF_PACKET as u16;
    a.sll_protocol = ETH_P_ALL.to_be();
    a.sll_ifindex = ifindex;
    a
}
