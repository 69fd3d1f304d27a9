//! Writes `examples/capture.pcap`, the capture the README's replay command reads: a short story of a node
//! with host endpoint policy, preDNAT, failsafes, tiers and a Kubernetes NetworkPolicy.
//! Run: `cargo run -p calxdp --example make_capture`.

use std::net::IpAddr;

use calxdp_dataplane::io::pcap::{write_all, Record};
use calxdp_dataplane::wire::FrameSpec;
use calxdp_policy::packet::{tcp_flags, PacketHeader};
use calxdp_policy::resource::Protocol;

fn packet(proto: Protocol, src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> PacketHeader {
    PacketHeader {
        src: src.parse::<IpAddr>().expect("address"),
        dst: dst.parse::<IpAddr>().expect("address"),
        protocol: proto,
        src_port: sport,
        dst_port: dport,
        tcp_flags: if proto == Protocol::TCP { flags } else { 0 },
        icmp_type: if proto == Protocol::ICMP { 8 } else { 0 },
        icmp_code: 0,
        icmp_id: if proto == Protocol::ICMP { 7 } else { 0 },
    }
}

fn main() {
    let (tcp, udp) = (Protocol::TCP, Protocol::UDP);
    let (s, sa) = (tcp_flags::SYN, tcp_flags::SYN | tcp_flags::ACK);
    let story = [
        packet(tcp, "192.168.1.11", 40000, "192.168.1.10", 8080, s), // frontend -> web: the k8s policy admits it
        packet(tcp, "192.168.1.10", 8080, "192.168.1.11", 40000, sa), // the reply is established
        packet(tcp, "192.168.1.11", 40001, "10.96.0.20", 80, s),     // frontend -> web via its ClusterIP
        packet(udp, "192.168.1.11", 5353, "192.168.1.53", 53, 0),    // DNS, allowed by the platform tier
        packet(tcp, "192.168.1.11", 40002, "93.184.216.34", 443, s), // frontend out: platform passes, profile allows
        packet(tcp, "203.0.113.7", 50000, "10.0.0.10", 30080, s), // office -> NodePort: preDNAT allows, but web's policy does not
        packet(tcp, "203.0.113.7", 50001, "10.0.0.10", 22, s),    // ssh to the host: failsafe
        packet(tcp, "198.51.100.9", 50002, "10.0.0.10", 8080, s), // outsider -> host process: host endpoint drops it
        packet(tcp, "10.0.0.5", 50003, "10.0.0.10", 10250, s),    // another node -> kubelet: cluster ingress allows it
        packet(tcp, "10.0.0.10", 41000, "203.0.113.7", 443, s),   // the host calls out: egress allowed
        packet(tcp, "192.168.1.10", 8080, "192.168.1.11", 40999, sa), // a SYN-ACK nobody asked for: INVALID
    ];
    let mut records: Vec<Record> = story
        .iter()
        .enumerate()
        .map(|(i, h)| Record {
            nanos: 1_700_000_000_000_000_000 + i as u64 * 10_000_000,
            data: FrameSpec::new(*h).build(),
        })
        .collect();
    // And one frame cut short on the wire: counted and dropped, never a panic.
    let mut cut = FrameSpec::new(story[0]).build();
    cut.truncate(30);
    records.push(Record { nanos: 1_700_000_000_200_000_000, data: cut });
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/capture.pcap");
    let f = std::fs::File::create(path).expect("create examples/capture.pcap");
    write_all(std::io::BufWriter::new(f), &records).expect("write the capture");
    println!("wrote {} frames to examples/capture.pcap", records.len());
}
