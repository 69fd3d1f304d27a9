//! Ethernet II frames with up to two VLAN tags (802.1Q, and 802.1ad for the outer tag of a Q-in-Q pair).
//!
//! A tag sits where the ethertype would be: a TPID (0x8100 or 0x88a8), then the 16-bit tag control
//! information (priority, drop eligibility, 12-bit VLAN id), then the next ethertype, which may be
//! another TPID. The view reads the tag count from the bytes each time, so it holds no state beyond the
//! buffer; [`EthernetFrame::check_len`] makes sure every tag it will find is complete, and refuses a third
//! tag rather than walk an unbounded stack.
//!
//! The frame handed to the view is what AF_XDP delivers: no preamble and no FCS. A frame may carry padding
//! after its payload up to the 60-byte minimum; the payload slice includes it and the IP layer trims it.

use super::{read_u16, write_u16, Field, Malformed};

/// Ethertypes calxdp recognises.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    /// 802.1Q VLAN tag (customer tag).
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service tag (the outer tag of Q-in-Q).
    pub const QINQ: u16 = 0x88a8;
    pub const IPV6: u16 = 0x86dd;
}

mod field {
    use super::Field;

    pub const DST: Field = 0..6;
    pub const SRC: Field = 6..12;
    /// The ethertype of an untagged frame, or the first tag's TPID.
    pub const TYPE: Field = 12..14;
    pub const HEADER_LEN: usize = 14;
    /// A tag: TPID (where the ethertype was), TCI, and the next ethertype after it.
    pub const TAG_LEN: usize = 4;
    /// Within a tag starting at the TPID's offset: the TCI's offset.
    pub const TCI: usize = 2;
}

/// An untagged Ethernet II header's length.
pub const HEADER_LEN: usize = field::HEADER_LEN;

/// The most VLAN tags a frame may carry.
pub const MAX_VLAN_TAGS: usize = 2;

/// Whether `ethertype` announces a VLAN tag.
#[inline]
pub fn is_tpid(ethertype: u16) -> bool {
    matches!(ethertype, ethertype::VLAN | ethertype::QINQ)
}

/// A MAC address.
pub type MacAddr = [u8; 6];

/// A frame's header as [`EthernetFrame::layout`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The ethertype of the payload (after any tags).
    pub ethertype: u16,
    /// The header's length with its tags: where the payload starts.
    pub header_len: usize,
    /// The outer and the inner tag's 12-bit VLAN id, where there are tags.
    pub outer_vlan: Option<u16>,
    pub inner_vlan: Option<u16>,
}

/// A view of an Ethernet II frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> EthernetFrame<T> {
        EthernetFrame { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<EthernetFrame<T>, Malformed> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Checks that the buffer holds the header and every VLAN tag it announces, and at most two tags.
    pub fn check_len(&self) -> Result<(), Malformed> {
        let data = self.buffer.as_ref();
        let mut type_at = field::TYPE.start;
        for _ in 0..=MAX_VLAN_TAGS {
            if data.len() < type_at + 2 {
                return Err(Malformed::TooShortEthernet);
            }
            if !is_tpid(read_u16(&data[type_at..])) {
                return Ok(());
            }
            type_at += field::TAG_LEN;
        }
        Err(Malformed::TooManyVlanTags)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn dst_addr(&self) -> MacAddr {
        let mut a = [0; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::DST]);
        a
    }

    pub fn src_addr(&self) -> MacAddr {
        let mut a = [0; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::SRC]);
        a
    }

    /// How many VLAN tags the frame carries (0, 1 or 2).
    pub fn vlan_count(&self) -> usize {
        let data = self.buffer.as_ref();
        if !is_tpid(read_u16(&data[field::TYPE])) {
            0
        } else if !is_tpid(read_u16(&data[field::TYPE.start + field::TAG_LEN..])) {
            1
        } else {
            2
        }
    }

    /// The tags counted once, and what follows from their count: what a parse reads (each accessor below
    /// counts them again).
    #[inline]
    pub fn layout(&self) -> Layout {
        let tags = self.vlan_count();
        let type_at = field::TYPE.start + tags * field::TAG_LEN;
        let data = self.buffer.as_ref();
        let vlan_id = |n: usize| {
            (n < tags).then(|| read_u16(&data[field::TYPE.start + n * field::TAG_LEN + field::TCI..]) & 0x0fff)
        };
        Layout {
            ethertype: read_u16(&data[type_at..]),
            header_len: type_at + 2,
            outer_vlan: vlan_id(0),
            inner_vlan: vlan_id(1),
        }
    }

    /// The offset of tag `n`'s TPID, if the frame has that many tags.
    fn tag_at(&self, n: usize) -> Option<usize> {
        (n < self.vlan_count()).then_some(field::TYPE.start + n * field::TAG_LEN)
    }

    /// Tag `n`'s TPID (0 is the outermost).
    pub fn vlan_tpid(&self, n: usize) -> Option<u16> {
        self.tag_at(n).map(|at| read_u16(&self.buffer.as_ref()[at..]))
    }

    /// Tag `n`'s tag control information: priority (3 bits), drop eligible (1), VLAN id (12).
    pub fn vlan_tci(&self, n: usize) -> Option<u16> {
        self.tag_at(n).map(|at| read_u16(&self.buffer.as_ref()[at + field::TCI..]))
    }

    /// Tag `n`'s 12-bit VLAN id (0 is the outermost).
    pub fn vlan_id(&self, n: usize) -> Option<u16> {
        self.vlan_tci(n).map(|tci| tci & 0x0fff)
    }

    /// The offset of the ethertype that names the payload: after the last tag.
    fn type_at(&self) -> usize {
        field::TYPE.start + self.vlan_count() * field::TAG_LEN
    }

    /// The ethertype of the payload (after any VLAN tags).
    pub fn ethertype(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[self.type_at()..])
    }

    /// The header's length with its tags: where the payload starts.
    pub fn header_len(&self) -> usize {
        self.type_at() + 2
    }

    /// The bytes after the header and tags (including any Ethernet padding).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&addr);
    }

    pub fn set_src_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&addr);
    }

    /// Sets tag `n`'s VLAN id, keeping its priority and drop eligibility. Returns false (and writes
    /// nothing) if the frame has no tag `n`.
    pub fn set_vlan_id(&mut self, n: usize, vid: u16) -> bool {
        let Some(at) = self.tag_at(n) else {
            return false;
        };
        let tci_at = at + field::TCI;
        let tci = (read_u16(&self.buffer.as_ref()[tci_at..]) & 0xf000) | (vid & 0x0fff);
        write_u16(&mut self.buffer.as_mut()[tci_at..], tci);
        true
    }

    /// Sets the payload's ethertype (after any tags). Setting a TPID here adds a tag to the layout:
    /// run [`check_len`](Self::check_len) again after that.
    pub fn set_ethertype(&mut self, ethertype: u16) {
        let at = self.type_at();
        write_u16(&mut self.buffer.as_mut()[at..], ethertype);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let at = self.header_len();
        &mut self.buffer.as_mut()[at..]
    }
}

/// Writes an Ethernet header with the given VLAN ids (outermost first; an 802.1ad outer tag when there
/// are two, 802.1Q otherwise) at the start of `buf`, and returns its length. For builders.
///
/// # Panics
/// If `buf` is shorter than the header, or more than [`MAX_VLAN_TAGS`] ids are given.
pub fn write_header(buf: &mut [u8], dst: MacAddr, src: MacAddr, vlans: &[u16], ethertype: u16) -> usize {
    assert!(vlans.len() <= MAX_VLAN_TAGS, "at most {MAX_VLAN_TAGS} VLAN tags");
    buf[field::DST].copy_from_slice(&dst);
    buf[field::SRC].copy_from_slice(&src);
    let mut at = field::TYPE.start;
    for (i, vid) in vlans.iter().enumerate() {
        let tpid = if vlans.len() == 2 && i == 0 { ethertype::QINQ } else { ethertype::VLAN };
        write_u16(&mut buf[at..], tpid);
        write_u16(&mut buf[at + field::TCI..], vid & 0x0fff);
        at += field::TAG_LEN;
    }
    write_u16(&mut buf[at..], ethertype);
    at + 2
}

/// The length [`write_header`] writes for `tags` VLAN tags.
pub fn header_len_with_tags(tags: usize) -> usize {
    HEADER_LEN + tags * field::TAG_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    const DST: MacAddr = [0x02, 0, 0, 0, 0, 1];
    const SRC: MacAddr = [0x02, 0, 0, 0, 0, 2];

    #[test]
    fn untagged() {
        let mut buf = [0u8; 20];
        assert_eq!(write_header(&mut buf, DST, SRC, &[], ethertype::IPV4), 14);
        let f = EthernetFrame::new_checked(&buf[..]).unwrap();
        assert_eq!((f.dst_addr(), f.src_addr()), (DST, SRC));
        assert_eq!((f.vlan_count(), f.vlan_id(0), f.ethertype(), f.header_len()), (0, None, 0x0800, 14));
        assert_eq!(f.payload().len(), 6);
    }

    #[test]
    fn one_and_two_tags() {
        let mut buf = [0u8; 22];
        assert_eq!(write_header(&mut buf, DST, SRC, &[100], ethertype::IPV6), 18);
        let f = EthernetFrame::new_checked(&buf[..18]).unwrap();
        assert_eq!((f.vlan_count(), f.vlan_id(0), f.vlan_id(1), f.ethertype()), (1, Some(100), None, 0x86dd));
        assert_eq!(f.vlan_tpid(0), Some(ethertype::VLAN));

        assert_eq!(write_header(&mut buf, DST, SRC, &[7, 4095], ethertype::ARP), 22);
        let mut f = EthernetFrame::new_checked(&mut buf[..]).unwrap();
        assert_eq!((f.vlan_count(), f.vlan_id(0), f.vlan_id(1)), (2, Some(7), Some(4095)));
        assert_eq!((f.vlan_tpid(0), f.vlan_tpid(1)), (Some(ethertype::QINQ), Some(ethertype::VLAN)));
        assert_eq!((f.ethertype(), f.header_len(), f.payload().len()), (ethertype::ARP, 22, 0));
        assert!(f.set_vlan_id(1, 12));
        assert!(!f.set_vlan_id(2, 12));
        f.set_ethertype(ethertype::IPV4);
        assert_eq!((f.vlan_id(1), f.ethertype()), (Some(12), ethertype::IPV4));
    }

    /// The layout read at once is what the accessors read one by one, with no, one and two tags.
    #[test]
    fn the_layout_is_what_the_accessors_say() {
        let mut buf = [0u8; 26];
        for (tags, ethertype) in
            [(&[][..], ethertype::IPV4), (&[100][..], ethertype::IPV6), (&[7, 4095][..], ethertype::ARP)]
        {
            write_header(&mut buf, DST, SRC, tags, ethertype);
            let f = EthernetFrame::new_checked(&buf[..]).unwrap();
            let want = Layout {
                ethertype: f.ethertype(),
                header_len: f.header_len(),
                outer_vlan: f.vlan_id(0),
                inner_vlan: f.vlan_id(1),
            };
            assert_eq!(f.layout(), want, "{tags:?}");
            assert_eq!((want.ethertype, want.header_len), (ethertype, 14 + 4 * tags.len()));
        }
    }

    #[test]
    fn truncated_tags_and_too_many() {
        let mut buf = [0u8; 30];
        write_header(&mut buf, DST, SRC, &[1, 2], ethertype::IPV4);
        for len in 0..22 {
            assert_eq!(EthernetFrame::new_checked(&buf[..len]), Err(Malformed::TooShortEthernet), "{len}");
        }
        buf[20..22].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        assert_eq!(EthernetFrame::new_checked(&buf[..]), Err(Malformed::TooManyVlanTags));
        assert_eq!(EthernetFrame::new_checked(&buf[..21]), Err(Malformed::TooShortEthernet));
    }
}
