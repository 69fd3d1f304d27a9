//! Kernel interfaces by raw syscall: the one module of calxdp allowed `unsafe` code. AF_XDP sockets (rings
//! shared with the kernel, the UMEM, the socket options) and the TAP device to the host stack. Every
//! `unsafe` block carries a `// SAFETY:` comment. Test and tooling helpers that need raw syscalls (network
//! namespaces, AF_PACKET sockets) live here too, so `unsafe` stays in one place.

pub mod handoff;
pub mod netns;
pub mod packet;
pub mod rawip;
pub mod ring;
pub mod socket;
pub mod tap;

/// setsockopt(2) with a value of type `T`.
fn setsockopt<T>(fd: std::os::fd::RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> std::io::Result<()> {
    // SAFETY: `value` is a live `T` and its exact size is passed; the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(fd, level, name, (value as *const T).cast(), std::mem::size_of::<T>() as libc::socklen_t)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
