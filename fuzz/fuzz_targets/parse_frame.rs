//! Fuzzes the frame parser: no input may make `wire::parse` panic, and for a frame it accepts, the
//! checksum functions must not panic and must agree with each other.
//!
//! Run from `fuzz/`: `cargo fuzz run parse_frame` (nightly, or `RUSTC_BOOTSTRAP=1` on stable).

#![no_main]

use calxdp_dataplane::wire::{self, checksum, Ipv4Packet, L3};
use calxdp_fuzz::with_valid_ipv4_checksum;
use calxdp_policy::resource::Protocol;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(data);
    // An IPv4 frame stops at the header checksum unless the fuzzer guesses it; check a copy whose header
    // checksum is made valid too, so that IPv4 inputs reach the L4 and ICMP-quote parsers.
    if let Some(fixed) = with_valid_ipv4_checksum(data) {
        check(&fixed);
    }
});

fn check(frame: &[u8]) {
    let Ok(parsed) = wire::parse(frame) else {
        return;
    };
    assert!(parsed.l3_offset <= parsed.l4_offset);
    assert!(parsed.l4_offset <= parsed.l3_end);
    assert!(parsed.l3_end <= frame.len());
    let _ = parsed.verify_l4_checksum(frame);
    if !parsed.is_ip() {
        return;
    }
    if parsed.l3 == L3::Ipv4 {
        let ip = Ipv4Packet::new_checked(&frame[parsed.l3_offset..]).expect("parse accepted it");
        assert!(ip.verify_checksum());
    }

    // Filling the L4 checksum, then verifying it, must agree; and the frame must still parse the same.
    let h = parsed.header;
    let mut end = parsed.l3_end;
    if h.protocol == Protocol::UDP {
        // UDP's checksum covers the datagram its length field bounds (parse checked it fits).
        let l4 = parsed.l4(frame);
        end = parsed.l4_offset + usize::from(u16::from_be_bytes([l4[4], l4[5]]));
    }
    let mut copy = frame.to_vec();
    let segment = &mut copy[parsed.l4_offset..end];
    let _ = checksum::verify_l4_checksum(h.src, h.dst, h.protocol, segment);
    checksum::fill_l4_checksum(h.src, h.dst, h.protocol, segment);
    let udplite_bad_coverage = h.protocol == Protocol::UDPLITE && {
        let coverage = usize::from(u16::from_be_bytes([segment[4], segment[5]]));
        coverage != 0 && (coverage < 8 || coverage > segment.len())
    };
    if !udplite_bad_coverage {
        assert!(checksum::verify_l4_checksum(h.src, h.dst, h.protocol, segment), "{parsed:?}");
    }
    assert_eq!(wire::parse(&copy), Ok(parsed));
}
