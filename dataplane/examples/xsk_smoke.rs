//! Smoke check of the AF_XDP plumbing: attach to an interface, receive for a few seconds, reflect each frame
//! back out with the MACs swapped. Usage: xsk_smoke IFACE SECONDS
use calxdp_dataplane::sys::ring::XdpDesc;
use calxdp_dataplane::sys::socket::{XskConfig, XskSocket};
use calxdp_dataplane::xdp::Redirect;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let iface = &args[1];
    let secs: u64 = args[2].parse().unwrap();
    let mut redirect = Redirect::attach(iface).unwrap();
    let mut sock = XskSocket::open(iface, 0, XskConfig::default()).unwrap();
    redirect.register(0, sock.fd()).unwrap();
    println!("attached {} mode", redirect.mode);
    let mut descs = [XdpDesc::default(); 64];
    let mut addrs = [0u64; 64];
    let mut buf = [0u8; 2048];
    let (mut rx, mut tx) = (0u64, 0u64);
    let start = std::time::Instant::now();
    while start.elapsed().as_secs() < secs {
        let n = sock.receive(&mut descs);
        for (i, d) in descs[..n].iter().enumerate() {
            let f = sock.frame_mut(d.addr, d.len);
            let len = f.len();
            buf[..len].copy_from_slice(f);
            let (a, b) = buf.split_at_mut(6);
            a.swap_with_slice(&mut b[..6]);
            if sock.send_copy(&buf[..len]) {
                tx += 1;
            }
            addrs[i] = d.addr;
        }
        rx += n as u64;
        sock.recycle(&addrs[..n]);
        sock.flush();
    }
    println!("rx {rx} tx {tx} {:?}", sock.statistics().map(|s| (s.rx_dropped, s.rx_ring_full)));
}
