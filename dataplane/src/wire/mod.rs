//! Frames as bytes: zero-copy views of the headers calxdp reads and rewrites, the one parse the pipeline
//! runs per frame, checksums, and a frame builder for tests.
//!
//! # Views and the length contract
//!
//! Each protocol has a view over a byte buffer, `Xxx<T: AsRef<[u8]>>` (smoltcp's `wire` habit): it copies
//! nothing, and its getters read fields straight from the bytes at offsets named in a private `field`
//! module. A view is made in one of two ways:
//!
//! - `new_unchecked(buffer)` wraps the bytes as they are. Getters may panic if the buffer is too short for
//!   what they read; writers (the frame builder, NAT) use it on buffers they sized themselves.
//! - `new_checked(buffer)` runs the view's `check_len` once and returns a [`Malformed`] reason if the bytes
//!   cannot hold the header they claim to (too short, a length field pointing past the end, a field below
//!   its minimum). **After `new_checked` succeeds, no getter of that view panics, whatever the bytes are.**
//!
//! Setters exist where `T: AsRef<[u8]> + AsMut<[u8]>`. A setter that changes a length or layout field
//! (IPv4 header length, TCP data offset, an ethertype set to a VLAN TPID) can break what `check_len`
//! established; run `check_len` again before trusting getters after such a write.
//!
//! Lower layers never look at higher ones: a view knows its own header and hands out its payload as a
//! slice; only [`parse`] knows how the layers stack. Nothing in `wire` knows about the pipeline, conntrack
//! or policy beyond the [`PacketHeader`](calxdp_policy::packet::PacketHeader) summary it fills in.
//!
//! # Parse
//!
//! [`parse`] takes one frame and returns either a [`Parsed`] (offsets, VLANs, the `PacketHeader` policy
//! matches on, the quoted header of an ICMP error) or one [`Malformed`] reason. Every check a frame can
//! fail on is a variant, so the pipeline counts drops by reason with one array indexed by
//! [`Malformed::index`] (VPP's habit: validation folds into one error code, one unlikely exit). Frames that
//! are not IP (ARP, LLDP, …) are not malformed: they parse to [`L3::NotIp`] and the pipeline decides.
//!
//! `parse` allocates nothing and never panics on any input; the `fuzz/` crate holds it to that.
//!
//! # Checksums
//!
//! [`checksum`] has the Internet checksum (RFC 1071), the incremental update NAT uses (RFC 1624), the L4
//! checksums with their pseudo-headers, and SCTP's CRC32c. `parse` verifies the IPv4 header checksum (a
//! corrupt header makes every other field suspect, and no NIC leaves it unfilled on receive) but not the
//! L4 checksum, which the NIC may have verified already or may not have filled in yet (checksum offload on
//! a local sender): the pipeline calls [`Parsed::verify_l4_checksum`] where it wants it.

pub mod build;
pub mod checksum;
pub mod ethernet;
pub mod fragment;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
mod malformed;
mod parse;
pub mod sctp;
pub mod tcp;
pub mod udp;

pub use build::{build, build_icmp_error, FrameSpec};
pub use ethernet::EthernetFrame;
pub use icmp::{IcmpPacket, QuotedPacket};
pub use ipv4::Ipv4Packet;
pub use ipv6::Ipv6Packet;
pub use malformed::Malformed;
pub use parse::{parse, parse_into, InnerHeader, Parsed, L3};
pub use sctp::SctpPacket;
pub use tcp::TcpPacket;
pub use udp::UdpPacket;

/// A header field: a byte range within the header.
type Field = core::ops::Range<usize>;

/// Reads a big-endian u16 from the first two bytes of `bytes`.
#[inline]
fn read_u16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

/// Reads a big-endian u32 from the first four bytes of `bytes`.
#[inline]
fn read_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

#[inline]
fn write_u16(bytes: &mut [u8], value: u16) {
    bytes[..2].copy_from_slice(&value.to_be_bytes());
}

#[inline]
fn write_u32(bytes: &mut [u8], value: u32) {
    bytes[..4].copy_from_slice(&value.to_be_bytes());
}

/// A tiny deterministic generator for the property tests (xorshift64*): std only, reproducible by seed.
#[cfg(test)]
pub(crate) struct XorShift(u64);

#[cfg(test)]
impl XorShift {
    pub(crate) fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub(crate) fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.byte();
        }
    }
}
