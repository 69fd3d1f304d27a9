//! The README's main command: the shipped capture replayed against the shipped node and policies.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use calxdp::replay::replay;
use calxdp_dataplane::io::pcap;
use calxdp_policy::node::NodeConfig;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption};
use pcap_file::pcapng::blocks::section_header::SectionHeaderBlock;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness};

#[test]
fn the_example_capture_replays_with_the_expected_verdicts() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let node = NodeConfig::load(&root.join("examples/node.yaml")).unwrap();
    let r = replay(node, &root.join("examples/policies"), &root.join("examples/capture.pcap")).unwrap();
    print!("{}", r.report);
    assert_eq!((r.allowed, r.dropped), (8, 4), "{}", r.report);
    let lines: Vec<&str> = r.report.lines().collect();
    let row = |n: usize| lines[n];
    assert!(row(3).contains("allow") && row(3).contains("192.168.1.10:8080"), "ClusterIP translated: {}", row(3));
    assert!(
        row(6).contains("drop") && row(6).contains("WorkloadEndpoint/shop/web"),
        "preDNAT allow does not skip pod policy: {}",
        row(6)
    );
    assert!(row(7).contains("failsafe"), "{}", row(7));
    assert!(row(11).contains("conntrack: invalid"), "{}", row(11));
    assert!(row(12).contains("malformed frame"), "{}", row(12));
    assert_eq!(r.out.get("web").map(Vec::len), Some(2));
    assert!(
        r.report.contains(
            "2  normal ingress rule 0 (Allow) of tier default policy KubernetesNetworkPolicy/shop/web-from-frontend"
        ),
        "rule hits: {}",
        r.report
    );
    assert!(
        r.report.contains("   8  calico-packet: IN=eth0 OUT= MAC="),
        "the denied host access is logged: {}",
        r.report
    );
}

/// The pcap's records written as pcapng by the `pcap-file` crate, in one byte order and timestamp
/// resolution: `nanos` writes `if_tsresol` 9 (nanoseconds), otherwise the option is left out and the
/// resolution is pcapng's default, microseconds (what `editcap -F pcapng` writes for a microsecond pcap).
/// One interface, as converters write a single-interface pcap.
fn to_pcapng(records: &[pcap::Record], path: &Path, endianness: Endianness, nanos: bool) {
    let section = SectionHeaderBlock { endianness, ..Default::default() };
    let mut w = PcapNgWriter::with_section_header(std::fs::File::create(path).unwrap(), section).unwrap();
    let options = if nanos { vec![InterfaceDescriptionOption::IfTsResol(9)] } else { vec![] };
    w.write_pcapng_block(InterfaceDescriptionBlock { linktype: DataLink::ETHERNET, snaplen: 0, options }).unwrap();
    for r in records {
        // The crate writes the timestamp's nanosecond count as the raw tick count.
        let ticks = if nanos { r.nanos } else { r.nanos / 1000 };
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_nanos(ticks),
            original_len: r.data.len() as u32,
            data: Cow::Borrowed(&r.data),
            options: vec![],
        })
        .unwrap();
    }
}

#[test]
fn the_example_capture_as_pcapng_replays_byte_for_byte_as_the_pcap() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let capture = root.join("examples/capture.pcap");
    let node = NodeConfig::load(&root.join("examples/node.yaml")).unwrap();
    let want = replay(node.clone(), &root.join("examples/policies"), &capture).unwrap();
    let records = pcap::read_all(std::fs::File::open(&capture).unwrap()).unwrap();
    assert!(records.iter().any(|r| r.nanos % 1_000_000_000 != 0), "the capture has sub-second times to compare");
    let dir = std::env::temp_dir().join(format!("calxdp-pcapng-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, endianness, nanos) in [("le-micros", Endianness::Little, false), ("be-nanos", Endianness::Big, true)] {
        let path = dir.join(format!("{name}.pcapng"));
        to_pcapng(&records, &path, endianness, nanos);
        assert_eq!(pcap::read_all(std::fs::File::open(&path).unwrap()).unwrap(), records, "{name}");
        let got = replay(node.clone(), &root.join("examples/policies"), &path).unwrap();
        assert_eq!(got.report, want.report, "{name}");
        assert_eq!(got.out, want.out, "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
