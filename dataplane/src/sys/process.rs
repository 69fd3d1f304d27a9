//! The calling process and thread as the kernel sees them: its privileges and locked-memory limit, the CPU
//! a thread runs on, its timer slack, and file descriptors it inherits or makes as pipes.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The soft limit on locked memory (`ulimit -l`) in bytes; `None` when unlimited or unknown.
pub fn memlock_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) writes one rlimit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(limit.rlim_cur)
}

/// Pins the calling thread to one CPU (`None`: every CPU). Best effort: returns whether it worked.
pub fn pin_to_cpu(cpu: Option<usize>) -> bool {
    // SAFETY: cpu_set_t is plain bits; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(libc::CPU_SETSIZE as usize);
    for c in 0..cpus {
        if cpu.is_none_or(|p| p == c) {
            // SAFETY: c is below CPU_SETSIZE.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
    }
    // SAFETY: sets the calling thread's affinity (pid 0) from a valid set of its exact size.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 }
}

/// Sets the calling thread's timer slack (how late the kernel may wake its sleeps), in nanoseconds.
pub fn set_timer_slack(nanos: u64) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    if unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, nanos, 0u64, 0u64, 0u64) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The descriptor `fd` this process was started with, as a file; `None` when it is not open. Call it once
/// per descriptor: the file owns it from then on.
pub fn inherited_fd(fd: i32) -> Option<File> {
    // SAFETY: fcntl(F_GETFD) only reads the descriptor's flags; it tells whether the descriptor is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return None;
    }
    // SAFETY: the descriptor is open and, by this function's contract, nothing else in the process owns it.
    Some(unsafe { File::from_raw_fd(fd) })
}

/// A pipe, both ends close-on-exec: `(read end, write end)`. (`std::io::pipe` is newer than the
/// workspace's minimum Rust.)
pub fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given, which has room for two.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just made and nothing else owns them.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_pipe_carries_bytes_and_a_closed_descriptor_is_not_inherited() {
        let (mut r, mut w) = pipe().unwrap();
        w.write_all(b"abc").unwrap();
        drop(w);
        let mut got = String::new();
        r.read_to_string(&mut got).unwrap();
        assert_eq!(got, "abc");
        // A descriptor number far above any this test process holds.
        assert!(inherited_fd(100_000).is_none());
    }

    #[test]
    fn the_memlock_limit_is_what_getrlimit_and_proc_agree_on() {
        let proc = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = proc.lines().find(|l| l.starts_with("Max locked memory")).unwrap();
        let soft = line.split_whitespace().nth(3).unwrap();
        assert_eq!(memlock_limit(), soft.parse().ok(), "{line}");
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
        assert_eq!(is_root(), uid.split_whitespace().nth(1) == Some("0"), "{uid}");
    }
}
