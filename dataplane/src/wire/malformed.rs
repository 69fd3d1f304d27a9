//! Why a frame is dropped before it reaches policy.
//!
//! One variant per check a frame can fail. Each variant's doc comment is its message ([`Malformed`]'s
//! `Display`), and [`Malformed::as_str`] is its counter name: stable snake_case, because counters are
//! scraped by name and renaming one breaks dashboards. New reasons are added at the end so that
//! [`Malformed::index`] of the old ones stays put.

/// Declares the enum once, so that the doc comment, the message and the counter name cannot drift apart.
macro_rules! malformed_reasons {
    ($($variant:ident => $name:literal, $message:literal;)*) => {
        /// Why a frame is dropped before it reaches policy: one variant per check in [`parse`](super::parse)
        /// and the views' `check_len`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Malformed {
            $(#[doc = $message] $variant,)*
        }

        impl Malformed {
            /// Every reason, in [`index`](Malformed::index) order: for sizing and naming a counter array.
            pub const ALL: &'static [Malformed] = &[$(Malformed::$variant,)*];

            /// The number of reasons.
            pub const COUNT: usize = Malformed::ALL.len();

            /// The counter name: stable snake_case.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Malformed::$variant => $name,)*
                }
            }

            /// The message (the variant's doc comment).
            pub fn message(self) -> &'static str {
                match self {
                    $(Malformed::$variant => $message,)*
                }
            }
        }
    };
}

malformed_reasons! {
    TooShortEthernet => "too_short_ethernet",
        "Frame shorter than an Ethernet header and the VLAN tags it announces.";
    TooManyVlanTags => "too_many_vlan_tags",
        "More than two stacked VLAN tags.";
    TooShortIp => "too_short_ip",
        "Fewer bytes after the Ethernet header than a fixed IP header (20 bytes for IPv4, 40 for IPv6).";
    BadIpVersion => "bad_ip_version",
        "IP version field does not match the ethertype.";
    BadIpHeaderLength => "bad_ip_header_length",
        "IPv4 header length below 20 bytes or beyond the total length.";
    IpTotalLengthExceedsFrame => "ip_total_length_exceeds_frame",
        "IPv4 total length or IPv6 payload length runs past the end of the frame.";
    BadIpv4Checksum => "bad_ipv4_checksum",
        "IPv4 header checksum does not verify.";
    HopByHopNotFirst => "hop_by_hop_not_first",
        "IPv6 hop-by-hop options header anywhere but directly after the IPv6 header.";
    TooShortExtensionHeader => "too_short_extension_header",
        "IPv6 extension header runs past the end of the packet.";
    TooManyExtensionHeaders => "too_many_extension_headers",
        "More than 8 IPv6 extension headers before the upper-layer protocol.";
    NonFirstFragment => "non_first_fragment",
        "IP fragment other than the first: it has no L4 header to match ports or track a flow on.";
    TooShortL4 => "too_short_l4",
        "IP payload shorter than the fixed header of its L4 protocol (TCP 20, UDP 8, SCTP 12, ICMP 8 bytes).";
    BadTcpDataOffset => "bad_tcp_data_offset",
        "TCP data offset below 5 words or beyond the end of the IP payload.";
    BadUdpLength => "bad_udp_length",
        "UDP length below 8 or beyond the end of the IP payload.";
    TooShortIcmpInner => "too_short_icmp_inner",
        "ICMP error quotes less than an IP header and the first 8 bytes of its L4 header.";
    BadIcmpInner => "bad_icmp_inner",
        "ICMP error quotes something that is not an IP header of the ICMP message's own family.";
}

impl Malformed {
    /// The reason's position in [`Malformed::ALL`]: an index into a counter array.
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Malformed {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case_and_indices_match() {
        for (i, reason) in Malformed::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
            let name = reason.as_str();
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{name}");
            assert!(Malformed::ALL[..i].iter().all(|other| other.as_str() != name), "{name} twice");
            assert!(reason.to_string().ends_with('.'));
        }
        assert_eq!(Malformed::COUNT, Malformed::ALL.len());
    }
}
