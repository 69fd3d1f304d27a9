//! Network namespaces by name (`ip netns` keeps them under /var/run/netns): moving the calling thread into
//! one. Threads a thread spawns start in its namespace, and sockets stay in the namespace they were made in,
//! which is how one process drives a whole test topology.

use std::io;
use std::os::fd::AsRawFd;

/// Moves the calling thread into the named network namespace.
pub fn enter(name: &str) -> io::Result<()> {
    let f = std::fs::File::open(format!("/var/run/netns/{name}"))?;
    // SAFETY: setns(2) on a descriptor we own, for the network namespace only; it affects just this thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Moves the calling thread into the named network namespace and into a private mount namespace with that
/// network namespace's sysfs on /sys (what `ip netns exec` does), so /sys/class/net shows its interfaces.
/// Threads it spawns afterwards inherit both; other threads of the process are not affected.
pub fn enter_with_sysfs(name: &str) -> io::Result<()> {
    enter(name)?;
    let fail = |what: &str| {
        let e = io::Error::last_os_error();
        io::Error::new(e.kind(), format!("{what}: {e}"))
    };
    // SAFETY: unshare of this thread's filesystem attributes and mount namespace (allowed per thread).
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(fail("unshare(CLONE_NEWNS)"));
    }
    let (root, sys, sysfs) = (c"/", c"/sys", c"sysfs");
    // SAFETY: mount(2) and umount2(2) with valid NUL-terminated strings; the changes stay in the private
    // mount namespace made above.
    unsafe {
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_SLAVE | libc::MS_REC,
            std::ptr::null(),
        ) != 0
        {
            return Err(fail("making / a slave mount"));
        }
        libc::umount2(sys.as_ptr(), libc::MNT_DETACH);
        if libc::mount(sysfs.as_ptr(), sys.as_ptr(), sysfs.as_ptr(), 0, std::ptr::null()) != 0 {
            return Err(fail("mounting sysfs"));
        }
    }
    Ok(())
}

/// Runs `f` on a new thread inside the named namespace and returns its result.
pub fn run_in<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    let name = name.to_string();
    std::thread::spawn(move || enter(&name).map(|()| f()))
        .join()
        .map_err(|_| io::Error::other("the thread in the namespace panicked"))?
}

/// The index of the interface `name` in the calling thread's network namespace; `None` if there is none.
/// A veth deleted and made again under the same name has a new index, which is how a port that went away
/// and came back is told from one that stayed.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: if_nametoindex(3) reads a NUL-terminated name and returns 0 when there is no such interface.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// An exclusive, non-blocking lock on `path` (created if missing), held while the returned file is open:
/// the kernel releases it when the process exits, however it exits. `Ok(None)` when another process holds
/// it.
pub fn try_lock(path: &std::path::Path) -> io::Result<Option<std::fs::File>> {
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    // SAFETY: flock(2) on a descriptor we own; it changes no memory.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(Some(f));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// The inode of the calling thread's network namespace: interfaces are named per namespace, so a lock on an
/// interface is a lock on (namespace, name).
pub fn current_netns_id() -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}
