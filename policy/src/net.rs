//! IP prefixes as Calico rules, network sets and node configuration write them.
//!
//! semantics §3 "CIDR entries": a bare address is a /32 or /128, and host bits below the prefix length are
//! ignored (`10.2.3.4/8` behaves as `10.0.0.0/8`), so the address is stored masked.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The address family of a packet, a prefix or a rule's `ipVersion`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(addr: IpAddr) -> IpFamily {
        match addr {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }
}

/// A prefix: an address with its host bits cleared and a length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNet {
    addr: IpAddr,
    len: u8,
}

impl IpNet {
    /// A prefix from an address and a length; the host bits are cleared. `None` if the length is too long.
    pub fn new(addr: IpAddr, len: u8) -> Option<IpNet> {
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if len > max {
            return None;
        }
        Some(IpNet { addr: mask(addr, len), len })
    }

    /// The /32 or /128 holding exactly `addr`.
    pub fn host(addr: IpAddr) -> IpNet {
        let len = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        IpNet { addr, len }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn family(&self) -> IpFamily {
        IpFamily::of(self.addr)
    }

    /// `0.0.0.0/0` or `::/0`.
    pub fn is_catch_all(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => mask(ip, self.len) == self.addr,
            _ => false,
        }
    }

    /// The address as a big-endian integer, in the low bits for IPv4.
    pub fn bits(&self) -> u128 {
        addr_bits(self.addr)
    }
}

/// An address as a big-endian integer (IPv4 in the low 32 bits).
pub fn addr_bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len as u32) };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if len == 0 { 0 } else { u128::MAX << (128 - len as u32) };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

/// Why a prefix did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadNet(pub String);

impl fmt::Display for BadNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for IpNet {
    type Err = BadNet;

    fn from_str(s: &str) -> Result<IpNet, BadNet> {
        let s = s.trim();
        let (addr_text, len_text) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            BadNet(format!("'{s}' is not an IP address or CIDR (expected e.g. 10.0.0.0/8 or fd00::/64)"))
        })?;
        match len_text {
            None => Ok(IpNet::host(addr)),
            Some(l) => {
                let len: u8 = l.parse().map_err(|_| BadNet(format!("'{s}' has a bad prefix length '{l}'")))?;
                IpNet::new(addr, len)
                    .ok_or_else(|| BadNet(format!("'{s}' has a prefix length longer than the address")))
            }
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // semantics §3 "CIDR entries": host bits are ignored, bare addresses are host prefixes.
    #[test]
    fn host_bits_are_cleared_and_bare_addresses_are_hosts() {
        let n: IpNet = "10.2.3.4/8".parse().unwrap();
        assert_eq!(n.to_string(), "10.0.0.0/8");
        assert!(n.contains("10.200.0.1".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        let h: IpNet = "192.168.1.10".parse().unwrap();
        assert_eq!(h.prefix_len(), 32);
        let v6: IpNet = "fd00::1/8".parse().unwrap();
        assert_eq!(v6.to_string(), "fd00::/8");
        assert!(!v6.contains("10.0.0.1".parse().unwrap()), "families never contain each other");
    }

    #[test]
    fn bad_prefixes_are_errors() {
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("10.0.0/8".parse::<IpNet>().is_err());
        assert!("fd00::/129".parse::<IpNet>().is_err());
        assert!("".parse::<IpNet>().is_err());
    }

    #[test]
    fn catch_all() {
        assert!("0.0.0.0/0".parse::<IpNet>().unwrap().is_catch_all());
        assert!("::/0".parse::<IpNet>().unwrap().is_catch_all());
        assert!("0.0.0.0/0".parse::<IpNet>().unwrap().contains("1.2.3.4".parse().unwrap()));
    }
}

/// The link-local address Linux gives an interface with this MAC (modified EUI-64, RFC 4291 appendix A).
pub fn link_local(mac: [u8; 6]) -> std::net::Ipv6Addr {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8] = mac[0] ^ 0x02;
    a[9] = mac[1];
    a[10] = mac[2];
    a[11] = 0xff;
    a[12] = 0xfe;
    a[13..16].copy_from_slice(&mac[3..6]);
    std::net::Ipv6Addr::from(a)
}
