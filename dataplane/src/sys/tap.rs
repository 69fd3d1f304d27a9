//! The TAP device that joins the host's network stack to the dataplane (DESIGN.md "The node"): frames the
//! host sends come out of the file descriptor, frames written to it are received by the host. Closing the
//! descriptor deletes the device and the addresses and routes on it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// One queue of a TAP device, non-blocking.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    pub name: String,
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

impl Tap {
    /// Creates (or, with `multi_queue`, attaches another queue to) the TAP device `name`.
    pub fn open(name: &str, multi_queue: bool) -> io::Result<Tap> {
        if name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("interface name {name} is too long")));
        }
        let path = CString::new("/dev/net/tun").expect("no NUL");
        // SAFETY: open(2) on a NUL-terminated path.
        let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ifreq is plain data; all-zero is valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        req.ifr_ifru.ifru_flags = flags as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `req` is.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req as *mut libc::ifreq) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Tap { fd, name: name.to_string() })
    }

    /// What went wrong when [`Tap::open`] on `name` failed with `e`, in words: a tap another process holds
    /// is busy, not a question of privileges.
    pub fn open_error(name: &str, e: &io::Error) -> String {
        match e.raw_os_error() {
            Some(libc::EBUSY) => format!(
                "cannot attach to the host tap {name}: it is busy, another process holds it (another calxdp, or a \
                 VM or VPN using that name): stop it or choose another --tap"
            ),
            Some(libc::EINVAL) => format!(
                "cannot attach to the host tap {name}: a device of that name exists and is not a tap calxdp can \
                 take (another kind of device, or a tap made with other flags): remove it or choose another --tap"
            ),
            Some(libc::EPERM) | Some(libc::EACCES) => {
                format!("cannot create the host tap {name}: {e} (calxdp needs CAP_NET_ADMIN: run it as root)")
            }
            Some(libc::ENOENT) | Some(libc::ENODEV) => {
                format!("cannot create the host tap {name}: {e} (is the tun module loaded? /dev/net/tun is missing)")
            }
            _ => format!("cannot create the host tap {name}: {e}"),
        }
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads one frame the host sent; `None` when there is none waiting.
    pub fn read(&self, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: read(2) writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        (n > 0).then_some(n as usize)
    }

    /// Hands one frame to the host stack; false if the device would not take it.
    pub fn write(&self, frame: &[u8]) -> bool {
        // SAFETY: write(2) reads `frame.len()` bytes from `frame`.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        n == frame.len() as isize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tap another process (here: another descriptor) holds is reported as busy, not as a lack of
    /// privileges. Root: the tap is made in a namespace of its own and goes with it.
    #[test]
    #[ignore = "needs root (a network namespace of its own): scripts/test runs it with --include-ignored as root"]
    fn a_busy_tap_is_reported_as_busy() {
        assert!(crate::sys::process::is_root(), "needs root");
        let ns = crate::sys::netns::TestNamespace::new("cxt");
        let got = crate::sys::netns::run_in(&ns.0, || {
            let first = Tap::open("cxtap", false).map(|_| ()).map_err(|e| e.to_string());
            let held = Tap::open("cxtap", false);
            let second = Tap::open("cxtap", false).map(|_| ());
            drop(held);
            (first, second.map_err(|e| Tap::open_error("cxtap", &e)))
        })
        .unwrap();
        drop(ns);
        assert!(got.0.is_ok(), "{:?}", got.0);
        let e = got.1.expect_err("busy");
        assert!(e.contains("it is busy, another process holds it"), "{e}");
        assert!(!e.contains("CAP_NET_ADMIN"), "{e}");
    }
}
