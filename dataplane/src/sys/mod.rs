//! Kernel interfaces by raw syscall: the one module of calxdp allowed `unsafe` code (the roots of the
//! policy, dataplane and control crates deny it everywhere else). AF_XDP sockets (rings shared with the
//! kernel, the UMEM, the socket options), the worker handoff rings and the TAP device to the host stack;
//! test, tooling and benchmark helpers that need raw syscalls (network namespaces, AF_PACKET and raw IP
//! sockets, bpf test runs, CPU pinning, privileges and limits, inherited descriptors) live here too, so
//! `unsafe` stays in one place. Every `unsafe` block carries a `// SAFETY:` comment.

pub mod bpf;
pub mod handoff;
pub mod hugepages;
pub mod netns;
pub mod packet;
pub mod prefetch;
pub mod process;
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
