//! Checksums: the Internet checksum, its incremental update, L4 pseudo-headers, and SCTP's CRC32c.
//!
//! # The Internet checksum (RFC 1071)
//!
//! The checksum of IPv4 headers, TCP, UDP, UDP-Lite, ICMP and ICMPv6 is the one's complement of the one's
//! complement sum of the data as big-endian 16-bit words, an odd last byte padded with a zero byte
//! (RFC 1071 §1). A sender zeroes the field, computes [`checksum`] and stores it; a receiver sums the data
//! with the field in place and gets all ones, so [`checksum`] of a valid header is 0.
//!
//! # Incremental update (RFC 1624)
//!
//! NAT rewrites an address or a port and must fix the checksums that cover it without summing the whole
//! packet again. RFC 1624 eqn. 3, `HC' = ~(~HC + ~m + m')`, gives the new checksum from the old one, the
//! old field value `m` and the new one `m'`; it is the form that cannot produce a negative zero where a
//! full recomputation would not (RFC 1624 §3). [`update_u16`], [`update_u32`] and [`update_addr`] apply it.
//! Two caveats belong to the caller: a UDP-over-IPv4 checksum of 0 means "no checksum" and must be left
//! alone, and a UDP or UDP-Lite checksum that comes out as 0 is sent as `0xffff` (RFC 768, RFC 3828 §3.1).
//!
//! # Pseudo-headers
//!
//! TCP, UDP, UDP-Lite and ICMPv6 checksums also cover a pseudo-header of the IP addresses, the protocol
//! and the L4 length (RFC 793 §3.1 and RFC 768 for IPv4, RFC 8200 §8.1 for IPv6, RFC 4443 §2.3 for
//! ICMPv6). ICMP over IPv4 covers only the ICMP message (RFC 792). The pseudo-header's word sum is the same
//! for both families once the fields are summed as words, so one routine serves both.
//!
//! # SCTP (RFC 9260 appendix A)
//!
//! SCTP uses CRC32c over the packet with the checksum field zeroed, stored least significant byte first.

use std::net::IpAddr;

use calxdp_policy::resource::Protocol;

use super::read_u16;

/// Adds `data` to a running one's complement sum as big-endian 16-bit words, padding an odd last byte with
/// zero (RFC 1071 §4.1). `data` must start at an even offset of the stream being summed.
#[inline]
fn add(mut acc: u64, data: &[u8]) -> u64 {
    // RFC 1071 §2(B) and (C): the sum does not depend on byte order or word size as long as carries are
    // folded back in at the end, so add 32-bit words into a 64-bit accumulator and fold once.
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    match *words.remainder() {
        [a] => acc += u64::from(a) << 8,
        [a, b] => acc += u64::from(u16::from_be_bytes([a, b])),
        [a, b, c] => acc += u64::from(u16::from_be_bytes([a, b])) + (u64::from(c) << 8),
        _ => {}
    }
    acc
}

/// Folds a wide one's complement sum to 16 bits with end-around carries (RFC 1071 §4.1).
#[inline]
fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data` (RFC 1071): what to store in a zeroed checksum field, or 0 when `data`
/// already holds a valid checksum.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(add(0, data))
}

/// The checksum after a 16-bit field covered by it changes from `old` to `new` (RFC 1624 eqn. 3).
pub fn update_u16(old_csum: u16, old: u16, new: u16) -> u16 {
    !fold(u64::from(!old_csum) + u64::from(!old) + u64::from(new))
}

/// The checksum after a 32-bit field (two 16-bit words at an even offset) changes from `old` to `new`
/// (RFC 1624 eqn. 3 applied to both words at once).
pub fn update_u32(old_csum: u16, old: u32, new: u32) -> u16 {
    let (old, new) = (u64::from(!old), u64::from(new));
    !fold(u64::from(!old_csum) + (old >> 16) + (old & 0xffff) + (new >> 16) + (new & 0xffff))
}

/// The checksum after the bytes `old` (at an even offset) are replaced by `new` (RFC 1624 eqn. 3 over
/// every word: the sum of the complemented old words is the complement of their sum).
fn update_bytes(old_csum: u16, old: &[u8], new: &[u8]) -> u16 {
    let old_sum = !fold(add(0, old));
    !fold(add(u64::from(!old_csum) + u64::from(old_sum), new))
}

/// The checksum after an address covered by it (the IPv4 header's, or an L4 pseudo-header's) changes from
/// `old` to `new`. The families may differ: the words of `old` leave the sum and those of `new` join it.
pub fn update_addr(old_csum: u16, old: IpAddr, new: IpAddr) -> u16 {
    match (old, new) {
        (IpAddr::V4(o), IpAddr::V4(n)) => update_bytes(old_csum, &o.octets(), &n.octets()),
        (IpAddr::V6(o), IpAddr::V6(n)) => update_bytes(old_csum, &o.octets(), &n.octets()),
        (IpAddr::V4(o), IpAddr::V6(n)) => update_bytes(old_csum, &o.octets(), &n.octets()),
        (IpAddr::V6(o), IpAddr::V4(n)) => update_bytes(old_csum, &o.octets(), &n.octets()),
    }
}

/// The word sum of the pseudo-header: addresses, protocol and L4 length. The IPv4 form (RFC 793 §3.1:
/// zero byte, protocol byte, 16-bit length) and the IPv6 form (RFC 8200 §8.1: 32-bit length, three zero
/// bytes, next header) sum to the same value, so the family only decides the address width.
fn pseudo_header_sum(src: IpAddr, dst: IpAddr, protocol: Protocol, length: usize) -> u64 {
    let length = length as u64;
    let fixed = u64::from(protocol.0) + (length >> 16) + (length & 0xffff);
    let with_src = match src {
        IpAddr::V4(a) => add(fixed, &a.octets()),
        IpAddr::V6(a) => add(fixed, &a.octets()),
    };
    match dst {
        IpAddr::V4(a) => add(with_src, &a.octets()),
        IpAddr::V6(a) => add(with_src, &a.octets()),
    }
}

/// The checksum of `segment` (an L4 header and its payload) with the pseudo-header of `src`, `dst` and
/// `protocol`: what to store in the zeroed checksum field, or 0 when the segment's checksum is valid.
/// For TCP, UDP and ICMPv6; see [`verify_l4_checksum`] for the per-protocol rules around it.
pub fn pseudo_header_checksum(src: IpAddr, dst: IpAddr, protocol: Protocol, segment: &[u8]) -> u16 {
    !fold(add(pseudo_header_sum(src, dst, protocol, segment.len()), segment))
}

/// Where the checksum field of an L4 header sits, for the protocols this module knows; with the family
/// (`v6`) because ICMP (1) and ICMPv6 (58) belong each to one family.
fn checksum_field(protocol: Protocol, v6: bool) -> Option<core::ops::Range<usize>> {
    match protocol {
        Protocol::TCP => Some(16..18),
        Protocol::UDP | Protocol::UDPLITE => Some(6..8),
        Protocol::ICMP if !v6 => Some(2..4),
        Protocol::ICMPV6 if v6 => Some(2..4),
        Protocol::SCTP => Some(8..12),
        _ => None,
    }
}

/// The bytes a UDP-Lite checksum covers (RFC 3828 §3.1): the coverage field, 0 meaning all; `None` if the
/// coverage is below the 8-byte header or beyond the packet, which makes the packet invalid.
fn udplite_coverage(segment: &[u8]) -> Option<usize> {
    match usize::from(read_u16(&segment[4..6])) {
        0 => Some(segment.len()),
        c if c < 8 || c > segment.len() => None,
        c => Some(c),
    }
}

/// Whether the L4 checksum of `segment` (an L4 header and payload, exactly as long as the IP payload
/// carrying it) is valid, for a packet from `src` to `dst`.
///
/// TCP, UDP, UDP-Lite and ICMPv6 use the pseudo-header; ICMP over IPv4 covers the message alone; SCTP
/// uses CRC32c. A UDP checksum of 0 means "none" over IPv4 and is invalid over IPv6 (RFC 8200 §8.1);
/// a UDP-Lite checksum of 0 or a coverage outside the packet is invalid (RFC 3828 §3.1). A segment too
/// short to hold its protocol's checksum is invalid. Protocols without a checksum this module knows are
/// valid.
pub fn verify_l4_checksum(src: IpAddr, dst: IpAddr, protocol: Protocol, segment: &[u8]) -> bool {
    let v6 = src.is_ipv6();
    let Some(field) = checksum_field(protocol, v6) else {
        return true;
    };
    if segment.len() < field.end {
        return false;
    }
    match protocol {
        Protocol::ICMP => checksum(segment) == 0,
        Protocol::SCTP => {
            let stored = u32::from_le_bytes([segment[8], segment[9], segment[10], segment[11]]);
            stored == sctp_crc32c(segment)
        }
        Protocol::UDP if read_u16(&segment[field.clone()]) == 0 => !v6,
        Protocol::UDPLITE => {
            let Some(coverage) = udplite_coverage(segment) else {
                return false;
            };
            let sum = pseudo_header_sum(src, dst, protocol, segment.len());
            read_u16(&segment[field]) != 0 && !fold(add(sum, &segment[..coverage])) == 0
        }
        _ => pseudo_header_checksum(src, dst, protocol, segment) == 0,
    }
}

/// Computes and stores the L4 checksum of `segment` for a packet from `src` to `dst`, by the rules of
/// [`verify_l4_checksum`]. Does nothing for protocols without a known checksum, for a segment too short
/// to hold one, and for UDP-Lite with an invalid coverage.
pub fn fill_l4_checksum(src: IpAddr, dst: IpAddr, protocol: Protocol, segment: &mut [u8]) {
    let v6 = src.is_ipv6();
    let Some(field) = checksum_field(protocol, v6) else {
        return;
    };
    if segment.len() < field.end {
        return;
    }
    segment[field.clone()].fill(0);
    match protocol {
        Protocol::SCTP => {
            let crc = sctp_crc32c(segment);
            segment[field].copy_from_slice(&crc.to_le_bytes());
            return;
        }
        Protocol::ICMP => {
            let c = checksum(segment);
            segment[field].copy_from_slice(&c.to_be_bytes());
            return;
        }
        _ => {}
    }
    let c = if protocol == Protocol::UDPLITE {
        let Some(coverage) = udplite_coverage(segment) else {
            return;
        };
        !fold(add(pseudo_header_sum(src, dst, protocol, segment.len()), &segment[..coverage]))
    } else {
        pseudo_header_checksum(src, dst, protocol, segment)
    };
    // RFC 768 and RFC 3828 §3.1: a computed 0 is sent as all ones, 0 meaning "no checksum" (UDP/IPv4) or
    // being invalid. For TCP and ICMPv6 a computed 0 cannot differ from 0xffff for the receiver.
    let c = if c == 0 && matches!(protocol, Protocol::UDP | Protocol::UDPLITE) { 0xffff } else { c };
    segment[field].copy_from_slice(&c.to_be_bytes());
}

/// CRC32c (Castagnoli, reflected polynomial 0x82F63B78) lookup table, built at compile time.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82f6_3b78 } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

fn crc32c_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = CRC32C_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// CRC32c of `data` (RFC 9260 appendix A; RFC 3720 appendix B.4 for the polynomial).
pub fn crc32c(data: &[u8]) -> u32 {
    !crc32c_update(!0, data)
}

/// The SCTP checksum of a packet: CRC32c with the checksum field (bytes 8..12) taken as zero, without
/// writing to the packet. `packet` must be at least 12 bytes.
fn sctp_crc32c(packet: &[u8]) -> u32 {
    let crc = crc32c_update(!0, &packet[..8]);
    let crc = crc32c_update(crc, &[0; 4]);
    !crc32c_update(crc, &packet[12..])
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::wire::XorShift;

    /// The plain reference: 16-bit words one at a time, carries folded after every addition.
    fn reference(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        let mut i = 0;
        while i < data.len() {
            let hi = u32::from(data[i]) << 8;
            let lo = data.get(i + 1).map_or(0, |&b| u32::from(b));
            sum += hi | lo;
            sum = (sum & 0xffff) + (sum >> 16);
            i += 2;
        }
        !(sum as u16)
    }

    /// The reference L4 checksum: the pseudo-header written out byte by byte as the RFCs draw it.
    fn reference_l4(src: IpAddr, dst: IpAddr, protocol: u8, segment: &[u8]) -> u16 {
        let mut bytes = Vec::new();
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                bytes.extend_from_slice(&s.octets());
                bytes.extend_from_slice(&d.octets());
                bytes.extend_from_slice(&[0, protocol]);
                bytes.extend_from_slice(&(segment.len() as u16).to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                bytes.extend_from_slice(&s.octets());
                bytes.extend_from_slice(&d.octets());
                bytes.extend_from_slice(&(segment.len() as u32).to_be_bytes());
                bytes.extend_from_slice(&[0, 0, 0, protocol]);
            }
            _ => unreachable!("one family per packet"),
        }
        bytes.extend_from_slice(segment);
        reference(&bytes)
    }

    fn random_addr(rng: &mut XorShift, v6: bool) -> IpAddr {
        if v6 {
            let mut o = [0u8; 16];
            rng.fill(&mut o);
            IpAddr::V6(Ipv6Addr::from(o))
        } else {
            let mut o = [0u8; 4];
            rng.fill(&mut o);
            IpAddr::V4(Ipv4Addr::from(o))
        }
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (after the carry); the checksum is 220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), 0x220d);
        assert_eq!(reference(&data), 0x220d);
    }

    #[test]
    fn checksum_matches_reference_on_random_buffers() {
        let mut rng = XorShift::new(0x5eed_0001);
        for _ in 0..5_000 {
            let mut buf = vec![0u8; rng.below(300)];
            rng.fill(&mut buf);
            if rng.below(8) == 0 {
                buf.fill(0xff); // all-ones words stress the end-around carry
            }
            assert_eq!(checksum(&buf), reference(&buf), "{buf:02x?}");
        }
    }

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C (RFC 3720 appendix B.4 test patterns use the same CRC).
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
    }

    /// The property NAT relies on: rewriting an address and a port, then updating the checksum
    /// incrementally, gives exactly the checksum a full recomputation gives.
    #[test]
    fn incremental_update_equals_recomputation() {
        let mut rng = XorShift::new(0x5eed_0002);
        for round in 0..20_000 {
            let v6 = round % 2 == 1;
            let (protocol, csum_at) = if rng.below(2) == 0 { (6u8, 16) } else { (17u8, 6) };
            let mut segment = vec![0u8; 20 + rng.below(100)];
            rng.fill(&mut segment);
            segment[csum_at..csum_at + 2].fill(0);
            let (src, dst) = (random_addr(&mut rng, v6), random_addr(&mut rng, v6));
            let csum = reference_l4(src, dst, protocol, &segment);
            segment[csum_at..csum_at + 2].copy_from_slice(&csum.to_be_bytes());
            assert_eq!(reference_l4(src, dst, protocol, &segment), 0);

            // Source NAT: a new source address and source port.
            let new_src = random_addr(&mut rng, v6);
            let (old_port, new_port) = (read_u16(&segment[0..2]), rng.next_u64() as u16);
            let updated = update_u16(update_addr(csum, src, new_src), old_port, new_port);
            segment[0..2].copy_from_slice(&new_port.to_be_bytes());
            segment[csum_at..csum_at + 2].fill(0);
            let recomputed = reference_l4(new_src, dst, protocol, &segment);
            assert_eq!(updated, recomputed, "round {round}");

            // A 32-bit field (the TCP acknowledgment number's place; UDP payload) through update_u32.
            segment[csum_at..csum_at + 2].copy_from_slice(&updated.to_be_bytes());
            let old_word = u32::from_be_bytes([segment[8], segment[9], segment[10], segment[11]]);
            let new_word = rng.next_u64() as u32;
            let updated = update_u32(updated, old_word, new_word);
            segment[8..12].copy_from_slice(&new_word.to_be_bytes());
            segment[csum_at..csum_at + 2].fill(0);
            assert_eq!(updated, reference_l4(new_src, dst, protocol, &segment), "round {round} u32");
        }
    }

    #[test]
    fn incremental_ipv4_header_update_equals_recomputation() {
        let mut rng = XorShift::new(0x5eed_0003);
        for _ in 0..10_000 {
            let mut header = [0u8; 20];
            rng.fill(&mut header);
            header[10..12].fill(0);
            let csum = reference(&header);
            header[10..12].copy_from_slice(&csum.to_be_bytes());
            let old = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
            let new = Ipv4Addr::from(rng.next_u64() as u32);
            let updated = update_addr(csum, old.into(), new.into());
            header[16..20].copy_from_slice(&new.octets());
            header[10..12].fill(0);
            assert_eq!(updated, reference(&header));
            // And TTL decrement, the other rewrite a forwarder does (TTL and protocol share a word).
            header[10..12].copy_from_slice(&updated.to_be_bytes());
            let old_word = read_u16(&header[8..10]);
            header[8] = header[8].wrapping_sub(1);
            let updated = update_u16(updated, old_word, read_u16(&header[8..10]));
            header[10..12].fill(0);
            assert_eq!(updated, reference(&header));
        }
    }

    #[test]
    fn l4_verify_and_fill_agree_with_reference() {
        let mut rng = XorShift::new(0x5eed_0004);
        for round in 0..5_000 {
            let v6 = round % 2 == 1;
            let (src, dst) = (random_addr(&mut rng, v6), random_addr(&mut rng, v6));
            let protocol = [Protocol::TCP, Protocol::UDP, Protocol::UDPLITE, Protocol::SCTP][rng.below(4)];
            let mut segment = vec![0u8; 20 + rng.below(60)];
            rng.fill(&mut segment);
            if protocol == Protocol::UDP {
                let len = segment.len() as u16;
                segment[4..6].copy_from_slice(&len.to_be_bytes());
            }
            if protocol == Protocol::UDPLITE {
                let coverage = 8 + rng.below(segment.len() - 8) as u8;
                segment[4..6].copy_from_slice(&[0, coverage]);
            }
            fill_l4_checksum(src, dst, protocol, &mut segment);
            assert!(verify_l4_checksum(src, dst, protocol, &segment), "{protocol} round {round}");
            if matches!(protocol, Protocol::TCP | Protocol::UDP) {
                let at = if protocol == Protocol::TCP { 16 } else { 6 };
                let stored = read_u16(&segment[at..]);
                segment[at..at + 2].fill(0);
                let expected = reference_l4(src, dst, protocol.0, &segment);
                assert_eq!(stored, if expected == 0 { 0xffff } else { expected });
                segment[at..at + 2].copy_from_slice(&stored.to_be_bytes());
            }
            // Any single flipped bit is caught, except in bytes a UDP-Lite checksum does not cover.
            let covered = if protocol == Protocol::UDPLITE { usize::from(segment[5]) } else { segment.len() };
            let at = rng.below(covered);
            segment[at] ^= 1 << rng.below(8);
            assert!(!verify_l4_checksum(src, dst, protocol, &segment), "{protocol} flip at {at}");
        }
    }

    #[test]
    fn udp_zero_checksum_rules() {
        let v4 = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let v6 = (IpAddr::from(Ipv6Addr::LOCALHOST), IpAddr::from(Ipv6Addr::LOCALHOST));
        let segment = [0, 53, 0, 53, 0, 8, 0, 0];
        assert!(verify_l4_checksum(v4.0, v4.1, Protocol::UDP, &segment), "no checksum over IPv4");
        assert!(!verify_l4_checksum(v6.0, v6.1, Protocol::UDP, &segment), "required over IPv6");
        assert!(!verify_l4_checksum(v4.0, v4.1, Protocol::TCP, &segment), "too short for TCP");
        assert!(verify_l4_checksum(v4.0, v4.1, Protocol(47), &segment), "GRE: not known here");
    }
}
