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

/// An exclusive lock on a file, held while this value lives. Dropping it removes the file while the lock is
/// still held, then releases the lock: a clean exit leaves no file behind, and [`sweep_locks`] removes those
/// a killed process left, so the lock directory holds only the locks of running processes however many
/// interfaces and namespaces come and go.
#[derive(Debug)]
pub struct HeldLock {
    // Holds the lock: closing it releases the lock.
    _file: std::fs::File,
    path: std::path::PathBuf,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        // Still locked here (`_file` closes after this body): a process that opened the old file before the
        // unlink and locks it after the close sees the path no longer names its file, and starts over.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An exclusive, non-blocking lock on `path` (created if missing), held while the returned value lives; the
/// kernel releases it when the process exits, however it exits. `Ok(None)` when another process holds it.
pub fn try_lock(path: &std::path::Path) -> io::Result<Option<HeldLock>> {
    use std::os::unix::fs::MetadataExt;
    // A file can be unlinked between our open and our lock (its holder released it, or a sweep removed it):
    // a lock on an unlinked file locks nothing another process can find, so try again on the new file.
    for _ in 0..8 {
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        // SAFETY: flock(2) on a descriptor we own; it changes no memory.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(None) } else { Err(e) };
        }
        let held = f.metadata()?;
        match std::fs::metadata(path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                return Ok(Some(HeldLock { _file: f, path: path.to_path_buf() }))
            }
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!("{} keeps being replaced while it is locked", path.display())))
}

/// Removes the `*.lock` files in `dir` no process holds (left by processes that were killed). Returns how
/// many it removed.
pub fn sweep_locks(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "lock") {
            // Taking the lock proves nobody holds it; dropping it removes the file.
            if let Ok(Some(lock)) = try_lock(&path) {
                drop(lock);
                removed += 1;
            }
        }
    }
    removed
}

/// The inode of the calling thread's network namespace: interfaces are named per namespace, so a lock on an
/// interface is a lock on (namespace, name).
pub fn current_netns_id() -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// A namespace of a root test's own, `{prefix}{pid}`, deleted (with what it holds) however the test ends.
#[cfg(test)]
pub(crate) struct TestNamespace(pub String);

#[cfg(test)]
impl TestNamespace {
    pub fn new(prefix: &str) -> TestNamespace {
        let name = format!("{prefix}{}", std::process::id());
        let added = std::process::Command::new("ip").args(["netns", "add", &name]).status();
        assert!(added.is_ok_and(|s| s.success()), "ip netns add {name}");
        TestNamespace(name)
    }
}

#[cfg(test)]
impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[cfg(test)]
mod lock_tests {
    use super::*;

    /// A lock file lives exactly as long as its lock: released, it is gone; held, a second taker is refused
    /// and a sweep leaves it; left by a holder that did not clean up, a sweep removes it.
    #[test]
    fn lock_files_go_away_with_their_locks() {
        let dir = std::env::temp_dir().join(format!("calxdp-locks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("net1-eth0.lock");
        let held = try_lock(&path).unwrap().expect("free");
        assert!(try_lock(&path).unwrap().is_none(), "a held lock refuses a second taker");
        assert_eq!(sweep_locks(&dir), 0, "a held lock is not swept");
        assert!(path.exists());
        drop(held);
        assert!(!path.exists(), "a released lock leaves no file");
        // A file a killed process left (nobody holds it).
        std::fs::write(&path, b"").unwrap();
        std::fs::write(dir.join("not-a-lock.sock"), b"").unwrap();
        assert_eq!(sweep_locks(&dir), 1);
        assert!(!path.exists());
        assert!(dir.join("not-a-lock.sock").exists(), "only lock files are swept");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
