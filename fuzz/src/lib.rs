//! What more than one fuzz target needs.

use calxdp_dataplane::wire::{ethernet, EthernetFrame, Ipv4Packet};

/// A copy of an IPv4 frame with its header checksum made valid, so that IPv4 inputs get past the header
/// checksum (which the fuzzer seldom guesses) to the parsers above it; `None` for other frames and for
/// headers too short or too long for the frame.
pub fn with_valid_ipv4_checksum(data: &[u8]) -> Option<Vec<u8>> {
    let eth = EthernetFrame::new_checked(data).ok()?;
    if eth.ethertype() != ethernet::ethertype::IPV4 {
        return None;
    }
    let at = eth.header_len();
    let mut copy = data.to_vec();
    let ip_bytes = &mut copy[at..];
    let header_len = usize::from(*ip_bytes.first()? & 0x0f) * 4;
    if header_len < 20 || header_len > ip_bytes.len() {
        return None;
    }
    Ipv4Packet::new_unchecked(ip_bytes).fill_checksum();
    Some(copy)
}
