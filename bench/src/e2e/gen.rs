//! The end-to-end benchmark's traffic generator and sink counter (DESIGN.md "AF_XDP here": no pktgen here;
//! `BPF_PROG_RUN` in live-frames mode is the fast generator).
//!
//! The generator runs a one-instruction XDP_TX program (`bench/bpf/gen.s`) with `BPF_PROG_TEST_RUN` and
//! `BPF_F_TEST_XDP_LIVE_FRAMES` from a thread inside the generator namespace: every repetition transmits
//! one 64-byte UDP frame out of the generator's veth toward the node, at several million frames a second
//! from one core. Its own rate is the kernel's time per repetition; what reaches the node is the node veth's receive counter. The sink counts with an XDP program that
//! drops every frame after counting it, so receiving costs the sink (and the CPU that feeds it) little.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use aya::maps::{Array, MapData};
use aya::programs::{Xdp, XdpMode};
use aya::Ebpf;

use calxdp_dataplane::sys::packet::PacketSocket;
use calxdp_dataplane::sys::{bpf, netns};

use super::topo;

/// The committed object (rebuild: see `bench/bpf/gen.s`).
pub static GEN_OBJECT: &[u8] = include_bytes!("../../bpf/gen.o");

fn load(program: &str) -> Result<Ebpf, String> {
    let mut ebpf = Ebpf::load(GEN_OBJECT).map_err(|e| format!("loading bench/bpf/gen.o: {e}"))?;
    let prog: &mut Xdp = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("gen.o has no program {program}"))?
        .try_into()
        .map_err(|e| format!("{program} is not an XDP program: {e}"))?;
    prog.load().map_err(|e| format!("the kernel refused {program}: {e}"))?;
    Ok(ebpf)
}

/// Loads `program` and attaches it to `ifname` (native mode, else generic): call on a thread inside the
/// interface's namespace. Detached when the returned value is dropped.
pub fn attach(program: &str, ifname: &str) -> Result<(Ebpf, &'static str), String> {
    let mut ebpf = load(program)?;
    let prog: &mut Xdp = ebpf.program_mut(program).expect("loaded above").try_into().expect("checked above");
    let mode = match prog.attach(ifname, XdpMode::Driver) {
        Ok(_) => "native",
        Err(native) => match prog.attach(ifname, XdpMode::Skb) {
            Ok(_) => "generic",
            Err(_) => return Err(format!("cannot attach {program} to {ifname}: {native}")),
        },
    };
    Ok((ebpf, mode))
}

/// The sink's counter: `cxb_count` on the sink veth, and its map.
pub struct SinkCounter {
    _ebpf: Ebpf,
    map: Array<MapData, u64>,
    pub mode: &'static str,
}

impl std::fmt::Debug for SinkCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkCounter").field("mode", &self.mode).finish()
    }
}

impl SinkCounter {
    /// Call on a thread inside the sink namespace.
    pub fn attach(ifname: &str) -> Result<SinkCounter, String> {
        let (mut ebpf, mode) = attach("cxb_count", ifname)?;
        let map = ebpf.take_map("cxb_counts").ok_or("gen.o has no map cxb_counts")?;
        let map = Array::try_from(map).map_err(|e| format!("cxb_counts: {e}"))?;
        Ok(SinkCounter { _ebpf: ebpf, map, mode })
    }

    /// Frames the sink has received (and dropped) so far.
    pub fn count(&self) -> u64 {
        self.map.get(&0, 0).unwrap_or(0)
    }
}

/// A 64-byte (without FCS) Ethernet/IPv4/UDP frame from the client's port `src_port` to the sink pod,
/// checksums correct.
pub fn frame(src_port: u16) -> [u8; 64] {
    let mut f = [0u8; 64];
    f[0..6].copy_from_slice(&topo::NODE_UP_MAC);
    f[6..12].copy_from_slice(&topo::GEN_MAC);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (f.len() - 14) as u16;
    let udp_len = ip_len - 20;
    {
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&topo::CLIENT_IP);
        ip[16..20].copy_from_slice(&topo::SINK_IP);
        let c = checksum(0, ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
    }
    f[34..36].copy_from_slice(&src_port.to_be_bytes());
    f[36..38].copy_from_slice(&topo::SINK_PORT.to_be_bytes());
    f[38..40].copy_from_slice(&udp_len.to_be_bytes());
    for (i, b) in f[42..].iter_mut().enumerate() {
        *b = b'a' + (i % 26) as u8;
    }
    // Pseudo-header: source, destination, protocol, UDP length.
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&topo::CLIENT_IP);
    pseudo[4..8].copy_from_slice(&topo::SINK_IP);
    pseudo[9] = 17;
    pseudo[10..12].copy_from_slice(&udp_len.to_be_bytes());
    let sum = sum16(sum16(0, &pseudo), &f[34..]);
    let mut c = fold(sum);
    if c == 0 {
        c = 0xffff;
    }
    f[40..42].copy_from_slice(&c.to_be_bytes());
    f
}

fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    for pair in data.chunks(2) {
        let w = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        acc += u32::from(w);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn checksum(acc: u32, data: &[u8]) -> u16 {
    fold(sum16(acc, data))
}

/// One live-frames test run of `repeat` transmissions of `frame` on interface `ifindex` (of the calling
/// thread's network namespace).
/// Returns the kernel's mean nanoseconds per frame.
fn test_run(prog: &OwnedFd, frame: &[u8], ifindex: u32, repeat: u32) -> Result<u32, String> {
    bpf::xdp_test_run_live(prog.as_fd(), frame, ifindex, repeat).map_err(|e| {
        format!("bpf(BPF_PROG_TEST_RUN, live frames) on ifindex {ifindex}: {e} (needs Linux 5.18+ and root)")
    })
}

/// How fast to send.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as one core can: BPF_PROG_RUN live frames.
    Flat,
    /// About this many frames a second in bursts of 16, written to an AF_PACKET socket: a steady stream
    /// for the latency test (a live-frames run has ~20 ms of fixed cost, too coarse to pace with).
    Rate(u64),
}

const FLAT_REPEAT: u32 = 1 << 19;

/// The paced stream: `rate` frames a second through an AF_PACKET socket on `ifindex` until `stop`.
fn paced(
    frame: &[u8],
    ifindex: u32,
    rate: u64,
    stop: &AtomicBool,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) -> Result<(), String> {
    // Ethertype 0: a send-only socket, it receives nothing.
    let sock = match PacketSocket::open_with(topo::GEN_IF, 0, true) {
        Ok(s) => s,
        Err(e) => {
            let e = format!("socket(AF_PACKET) on {} (ifindex {ifindex}): {e}", topo::GEN_IF);
            let _ = ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    let _ = ready.send(Ok(()));
    const BURST: u64 = 16;
    let start = std::time::Instant::now();
    let mut done = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..BURST {
            let r = sock.send(frame);
            if r.is_ok() {
                done += 1;
            }
        }
        let due = Duration::from_nanos(done.saturating_mul(1_000_000_000) / rate.max(1));
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}

/// A running generator thread (pinned to CPU `cpu`, inside the generator namespace).
#[derive(Debug)]
pub struct Generator {
    stop: Arc<AtomicBool>,
    /// Flat: the generator's own rate while running (frames of the runs after the first over their kernel
    /// time).
    thread: Option<JoinHandle<Result<f64, String>>>,
}

impl Generator {
    /// Loads the XDP_TX program and starts transmitting the client's flow from `src_port` (the one-way
    /// flow [`topo::CLIENT_PORT`], or the answered one [`topo::ESTABLISHED_PORT`]); returns once the first
    /// run succeeded.
    pub fn start(pace: Pace, cpu: usize, src_port: u16) -> Result<Generator, String> {
        let ebpf = load("cxb_tx")?;
        let prog: &Xdp = ebpf.program("cxb_tx").expect("loaded").try_into().expect("an XDP program");
        let fd: OwnedFd = prog
            .fd()
            .map_err(|e| format!("cxb_tx fd: {e}"))?
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("dup cxb_tx fd: {e}"))?;
        drop(ebpf);
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cxb-gen".into())
            .spawn(move || -> Result<f64, String> {
                let setup = (|| -> Result<u32, String> {
                    topo::enter(topo::GEN_NS)?;
                    topo::pin(Some(cpu));
                    netns::ifindex(topo::GEN_IF)
                        .ok_or_else(|| format!("no interface {} in {}", topo::GEN_IF, topo::GEN_NS))
                })();
                let ifindex = match setup {
                    Ok(i) => i,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                let frame = frame(src_port);
                if let Pace::Rate(rate) = pace {
                    return paced(&frame, ifindex, rate, &stop2, ready_tx).map(|()| 0.0);
                }
                if let Err(e) = test_run(&fd, &frame, ifindex, 64) {
                    let _ = ready_tx.send(Err(e.clone()));
                    return Err(e);
                }
                let _ = ready_tx.send(Ok(()));
                // Each run costs ~20 ms of setup and teardown (measured here), so runs are long.
                let (mut frames, mut nanos) = (0u64, 0u64);
                while !stop2.load(Ordering::Relaxed) {
                    let per_frame = test_run(&fd, &frame, ifindex, FLAT_REPEAT)?;
                    frames += u64::from(FLAT_REPEAT);
                    nanos += u64::from(FLAT_REPEAT) * u64::from(per_frame);
                }
                Ok(if nanos > 0 { frames as f64 * 1e9 / nanos as f64 } else { 0.0 })
            })
            .map_err(|e| format!("cannot start the generator thread: {e}"))?;
        let generator = Generator { stop, thread: Some(thread) };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(generator),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the generator thread died".into()),
        }
    }

    /// Stops; returns the generator's own rate while it ran (Flat; 0 when paced).
    pub fn stop(mut self) -> Result<f64, String> {
        self.finish()
    }

    fn finish(&mut self) -> Result<f64, String> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| "the generator thread panicked".to_string())?,
            None => Ok(0.0),
        }
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frame's IPv4 and UDP checksums verify (sum over the covered bytes folds to zero).
    #[test]
    fn frame_checksums_verify() {
        let f = frame(topo::CLIENT_PORT);
        assert_eq!(fold(sum16(0, &f[14..34])), 0);
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&f[26..30]);
        pseudo[4..8].copy_from_slice(&f[30..34]);
        pseudo[9] = 17;
        pseudo[10..12].copy_from_slice(&f[38..40]);
        assert_eq!(fold(sum16(sum16(0, &pseudo), &f[34..])), 0);
    }

    /// The committed object is what the committed source assembles to (where LLVM's assembler exists).
    #[test]
    fn committed_object_matches_source() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf");
        let out = std::env::temp_dir().join(format!("cxb-gen-{}.o", std::process::id()));
        let status = std::process::Command::new("llvm-mc")
            .args(["-triple", "bpfel", "-filetype=obj", "-o"])
            .arg(&out)
            .arg(dir.join("gen.s"))
            .status();
        match status {
            Ok(s) if s.success() => {
                let built = std::fs::read(&out).unwrap();
                let _ = std::fs::remove_file(&out);
                assert!(built == GEN_OBJECT, "bpf/gen.o is stale: rebuild it from bpf/gen.s");
            }
            _ => eprintln!("skipped: llvm-mc is not installed, so the committed object cannot be rebuilt to compare"),
        }
    }
}
