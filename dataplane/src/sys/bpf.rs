//! bpf(2) commands the project issues itself (the XDP programs are loaded by aya): `BPF_PROG_TEST_RUN` in
//! live-frames mode, the benchmark's traffic generator.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `union bpf_attr` for BPF_PROG_TEST_RUN (the `test` member).
#[repr(C, align(8))]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct xdp_md` as the test run's context.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// One live-frames test run of the XDP program `prog`: `repeat` runs on `frame` as if it arrived on
/// interface `ifindex` (of the calling thread's network namespace), each run's verdict carried out (XDP_TX
/// transmits it). Returns the kernel's mean nanoseconds per run. Needs Linux 5.18+ and root.
pub fn xdp_test_run_live(prog: BorrowedFd<'_>, frame: &[u8], ifindex: u32, repeat: u32) -> io::Result<u32> {
    let ctx = XdpMd { data_end: frame.len() as u32, ingress_ifindex: ifindex, ..Default::default() };
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: std::mem::size_of::<XdpMd>() as u32,
        ctx_in: &ctx as *const XdpMd as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        ..Default::default()
    };
    // SAFETY: bpf(BPF_PROG_TEST_RUN) reads `attr` (its exact size) and the frame and context it points to,
    // which live across the call, and writes back only `retval` and `duration` of `attr`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(attr.duration)
}
