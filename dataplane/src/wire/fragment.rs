//! IP fragments as reassembly needs them: what a fragment says (which datagram, where its data goes), and
//! the fragments a reassembled datagram leaves as.
//!
//! [`fragment_of`] recognises a fragment of either family (IPv4: more-fragments set or a non-zero offset;
//! IPv6: a fragment header that is not an atomic fragment). Anything else, including a frame that would not
//! parse, is `None`: [`parse`](super::parse) then judges it as an ordinary frame. Like every view here it
//! allocates nothing and never panics.
//!
//! [`write_fragment`] cuts a piece of a reassembled datagram back into a fragment with the datagram's own
//! headers, as Linux's `ip_do_fragment` / `ip6_fragment` do when they send a defragmented packet on along
//! the geometry it arrived in: IPv4 copies the head's header (options that are not to be copied into later
//! fragments become no-ops, `ip_options_fragment`), IPv6 repeats the unfragmentable part and inserts a
//! fragment header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::checksum::checksum;
use super::ethernet::{ethertype, EthernetFrame};
use super::ipv6::next_header;
use super::{read_u16, read_u32, write_u16, write_u32};

/// The IPv6 fragment header's length.
pub const FRAGMENT_HEADER_LEN: usize = 8;

/// What one fragment says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    pub v6: bool,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4: the protocol. IPv6: the fragment header's next header (the fragmentable part's first header).
    pub protocol: u8,
    /// IPv4: the 16-bit identification. IPv6: the fragment header's 32-bit identification.
    pub ident: u32,
    /// Where the data goes in the datagram's payload (bytes; a multiple of 8).
    pub offset: usize,
    pub more: bool,
    /// IPv4 don't-fragment (a fragment with it set is odd, but Linux keeps track of it).
    pub dont_frag: bool,
    /// Where the IP header starts.
    pub l3_offset: usize,
    /// Where the headers the datagram keeps end: after the IPv4 header, or (IPv6) where the fragment header
    /// starts (the unfragmentable part: the fixed header and any hop-by-hop, routing or destination options
    /// before it).
    pub head_end: usize,
    /// Where this fragment's data starts (after the IPv4 header or the IPv6 fragment header) and ends (by
    /// the IP length fields; Ethernet padding excluded).
    pub data_at: usize,
    pub data_end: usize,
    /// IPv6: the byte that names the fragment header (the fixed header's next header, or the previous
    /// extension header's); in a reassembled datagram it names the fragmentable part instead.
    pub next_header_at: usize,
}

impl Fragment {
    pub fn data_len(&self) -> usize {
        self.data_end - self.data_at
    }
}

/// The fragment `frame` is, if it is one (see the module comment).
pub fn fragment_of(frame: &[u8]) -> Option<Fragment> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.vlan_count() > 0 {
        // A tagged frame is dropped whole (or, priority-tagged, is rare enough to go unreassembled).
        return None;
    }
    let l3 = eth.header_len();
    let ip = frame.get(l3..)?;
    match eth.ethertype() {
        ethertype::IPV4 => ipv4_fragment(ip, l3),
        ethertype::IPV6 => ipv6_fragment(ip, l3),
        _ => None,
    }
}

fn ipv4_fragment(ip: &[u8], l3: usize) -> Option<Fragment> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(read_u16(&ip[2..4]));
    if ihl < 20 || total < ihl || total > ip.len() || checksum(&ip[..ihl]) != 0 {
        return None;
    }
    let word = read_u16(&ip[6..8]);
    let (offset, more) = (usize::from(word & 0x1fff) * 8, word & 0x2000 != 0);
    if offset == 0 && !more {
        return None;
    }
    Some(Fragment {
        v6: false,
        src: IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15])),
        dst: IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19])),
        protocol: ip[9],
        ident: u32::from(read_u16(&ip[4..6])),
        offset,
        more,
        dont_frag: word & 0x4000 != 0,
        l3_offset: l3,
        head_end: l3 + ihl,
        data_at: l3 + ihl,
        data_end: l3 + total,
        next_header_at: l3 + 9,
    })
}

fn ipv6_fragment(ip: &[u8], l3: usize) -> Option<Fragment> {
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return None;
    }
    let end = 40 + usize::from(read_u16(&ip[4..6]));
    if end > ip.len() {
        return None;
    }
    let ip = &ip[..end];
    // The unfragmentable part: hop-by-hop, routing and destination options, at most a few of them.
    let (mut at, mut nh, mut nh_at) = (40, ip[6], 6);
    for _ in 0..super::ipv6::MAX_EXTENSION_HEADERS {
        let ext = ip.get(at..at + 8)?;
        match nh {
            next_header::FRAGMENT => {
                let word = read_u16(&ext[2..4]);
                let (offset, more) = (usize::from(word & 0xfff8), word & 1 != 0);
                if offset == 0 && !more {
                    // An atomic fragment (RFC 6946): an ordinary packet.
                    return None;
                }
                let src: [u8; 16] = ip[8..24].try_into().ok()?;
                let dst: [u8; 16] = ip[24..40].try_into().ok()?;
                return Some(Fragment {
                    v6: true,
                    src: IpAddr::V6(Ipv6Addr::from(src)),
                    dst: IpAddr::V6(Ipv6Addr::from(dst)),
                    protocol: ext[0],
                    ident: read_u32(&ext[4..8]),
                    offset,
                    more,
                    dont_frag: false,
                    l3_offset: l3,
                    head_end: l3 + at,
                    data_at: l3 + at + FRAGMENT_HEADER_LEN,
                    data_end: l3 + end,
                    next_header_at: l3 + nh_at,
                });
            }
            next_header::HOP_BY_HOP | next_header::ROUTING | next_header::DEST_OPTS => {
                nh_at = at;
                nh = ext[0];
                at += (usize::from(ext[1]) + 1) * 8;
            }
            _ => return None,
        }
    }
    None
}

/// How a reassembled datagram is laid out, for cutting it back into fragments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub v6: bool,
    pub l3_offset: usize,
    /// Where the kept headers end and the payload starts (see [`Fragment::head_end`]).
    pub head_end: usize,
    /// IPv6: the byte naming the fragmentable part, which a fragment's copy points at the fragment header.
    pub next_header_at: usize,
    pub ident: u32,
}

/// Writes into `out` the fragment of `datagram` (a reassembled frame laid out as `layout` says) that
/// carries payload bytes `offset..offset + len`, more-fragments set when `more`; returns its length, or
/// `None` when `out` cannot hold it or the range is not in the datagram.
pub fn write_fragment(
    datagram: &[u8],
    layout: &Layout,
    offset: usize,
    len: usize,
    more: bool,
    out: &mut [u8],
) -> Option<usize> {
    let head = datagram.get(..layout.head_end)?;
    let data = datagram.get(layout.head_end + offset..layout.head_end + offset + len)?;
    let l3 = layout.l3_offset;
    if !layout.v6 {
        let n = head.len() + len;
        let ip_len = u16::try_from(n - l3).ok()?;
        let out = out.get_mut(..n)?;
        out[..head.len()].copy_from_slice(head);
        out[head.len()..].copy_from_slice(data);
        let ip = &mut out[l3..];
        write_u16(&mut ip[2..4], ip_len);
        let df = if offset == 0 { read_u16(&head[l3 + 6..l3 + 8]) & 0x4000 } else { 0 };
        write_u16(&mut ip[6..8], df | (offset / 8) as u16 | if more { 0x2000 } else { 0 });
        if offset != 0 {
            blank_uncopied_options(&mut ip[20..layout.head_end - l3]);
        }
        write_u16(&mut ip[10..12], 0);
        let c = checksum(&ip[..layout.head_end - l3]);
        write_u16(&mut ip[10..12], c);
        return Some(n);
    }
    let n = head.len() + FRAGMENT_HEADER_LEN + len;
    let payload_len = u16::try_from(n - l3 - 40).ok()?;
    let out = out.get_mut(..n)?;
    out[..head.len()].copy_from_slice(head);
    let fragmentable = head[layout.next_header_at];
    out[layout.next_header_at] = next_header::FRAGMENT;
    write_u16(&mut out[l3 + 4..l3 + 6], payload_len);
    let f = &mut out[head.len()..head.len() + FRAGMENT_HEADER_LEN];
    f[0] = fragmentable;
    f[1] = 0;
    write_u16(&mut f[2..4], offset as u16 | u16::from(more));
    write_u32(&mut f[4..8], layout.ident);
    out[head.len() + FRAGMENT_HEADER_LEN..].copy_from_slice(data);
    Some(n)
}

/// Cuts a whole frame into fragments of at most `size` payload bytes (a multiple of 8 but for the last),
/// as a sender does, with identification `ident`: for tests and tools (it allocates). `None` if `whole` is
/// not an IP frame.
pub fn cut(whole: &[u8], size: usize, ident: u32) -> Option<Vec<Vec<u8>>> {
    let p = super::parse(whole).ok()?;
    let v6 = p.l3 == super::L3::Ipv6;
    if !p.is_ip() || size == 0 {
        return None;
    }
    let head_end = if v6 { p.l3_offset + 40 } else { p.l4_offset };
    let layout = Layout { v6, l3_offset: p.l3_offset, head_end, next_header_at: p.l3_offset + 6, ident };
    let payload = p.l3_end - head_end;
    let mut whole = whole[..p.l3_end].to_vec();
    if !v6 {
        // IPv4 fragments carry the head's header, identification included.
        whole[p.l3_offset + 4..p.l3_offset + 6].copy_from_slice(&(ident as u16).to_be_bytes());
    }
    let mut out = Vec::new();
    let mut off = 0;
    while off < payload {
        let len = (payload - off).min(size);
        let mut buf = vec![0; head_end + FRAGMENT_HEADER_LEN + len];
        let n = write_fragment(&whole, &layout, off, len, off + len < payload, &mut buf)?;
        buf.truncate(n);
        out.push(buf);
        off += len;
    }
    Some(out)
}

/// Turns the IPv4 options a later fragment does not carry (copied flag clear) into no-ops, keeping the
/// header's length, as Linux's `ip_options_fragment` does.
fn blank_uncopied_options(options: &mut [u8]) {
    let mut i = 0;
    while i < options.len() {
        match options[i] {
            0 => return,
            1 => i += 1,
            kind => {
                let Some(&len) = options.get(i + 1) else { return };
                let len = usize::from(len);
                if len < 2 || i + len > options.len() {
                    return;
                }
                if kind & 0x80 == 0 {
                    options[i..i + len].fill(1);
                }
                i += len;
            }
        }
    }
}
