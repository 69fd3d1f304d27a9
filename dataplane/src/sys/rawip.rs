//! A raw IP socket that sends whole IP packets (header included) from the calling network namespace's own
//! stack: the kernel runs them through LOCAL_OUT (raw and mangle OUTPUT, conntrack, nat and filter OUTPUT),
//! routes them and sends them out as it would a host process's packet. The kernel-oracle parity level uses
//! it to play the host stack. Not part of the dataplane's own path.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `IPV6_HDRINCL` (linux/in6.h): the application supplies the IPv6 header.
const IPV6_HDRINCL: libc::c_int = 36;

/// A send-only raw socket of one family whose packets carry `mark` (SO_MARK).
#[derive(Debug)]
pub struct RawIpSocket {
    fd: OwnedFd,
    v6: bool,
}

impl RawIpSocket {
    /// Opens the socket in the calling thread's network namespace (needs CAP_NET_RAW, and CAP_NET_ADMIN
    /// for the mark).
    pub fn open(v6: bool, mark: u32) -> io::Result<RawIpSocket> {
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: socket(2) with constant arguments.
        let raw = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        if v6 {
            super::setsockopt(fd.as_raw_fd(), libc::IPPROTO_IPV6, IPV6_HDRINCL, &one)?;
        } else {
            super::setsockopt(fd.as_raw_fd(), libc::IPPROTO_IP, libc::IP_HDRINCL, &one)?;
        }
        super::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_MARK, &mark)?;
        Ok(RawIpSocket { fd, v6 })
    }

    /// Sends one IP packet (starting at its IP header) towards `dst`, the packet's destination.
    pub fn send(&self, packet: &[u8], dst: IpAddr) -> io::Result<()> {
        let r = match (dst, self.v6) {
            (IpAddr::V4(a), false) => {
                // SAFETY: sockaddr_in is plain data; all-zero is valid.
                let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                sa.sin_family = libc::AF_INET as libc::sa_family_t;
                sa.sin_addr = libc::in_addr { s_addr: u32::from(a).to_be() };
                // SAFETY: sendto reads `packet.len()` bytes of `packet`; `sa` is a valid sockaddr_in.
                unsafe {
                    libc::sendto(
                        self.fd.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        (&sa as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                }
            }
            (IpAddr::V6(a), true) => {
                // SAFETY: sockaddr_in6 is plain data; all-zero is valid.
                let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_addr = libc::in6_addr { s6_addr: a.octets() };
                // SAFETY: sendto reads `packet.len()` bytes of `packet`; `sa` is a valid sockaddr_in6.
                unsafe {
                    libc::sendto(
                        self.fd.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        (&sa as *const libc::sockaddr_in6).cast(),
                        std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    )
                }
            }
            _ => return Err(io::Error::other("the destination is not of the socket's family")),
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
