//! Fuzzes IP reassembly: any sequence of fragments (well-formed ones the input describes, of both families,
//! overlapping, duplicated, misaligned, oversized; and raw frames) and clock steps must never panic, must
//! keep the memory accounting exact, and every datagram it completes must cut back into fragments that
//! reassemble into the same datagram (the way it leaves the node and is put together again by the receiver).
//!
//! Run from `fuzz/`: `cargo fuzz run reassembly` (nightly, or `RUSTC_BOOTSTRAP=1` on stable).

#![no_main]

use std::cell::RefCell;

use calxdp_dataplane::reassembly::{Insert, Reassembly, DATAGRAMS, MAX_FRAGMENTS};
use calxdp_dataplane::wire::checksum::checksum;
use calxdp_dataplane::wire::fragment::{fragment_of, write_fragment};
use libfuzzer_sys::fuzz_target;

thread_local! {
    // Two tables reused across runs (each is a few MB of address space): the one under test, and the one
    // that takes the completed datagrams' fragments again.
    static TABLES: RefCell<(Reassembly, Reassembly)> = RefCell::new((Reassembly::new(), Reassembly::new()));
}

/// Far enough ahead that every datagram has timed out.
const LATER: u64 = 1 << 50;

fuzz_target!(|data: &[u8]| {
    TABLES.with(|t| {
        let (r, again) = &mut *t.borrow_mut();
        run(r, again, data);
        // Clean for the next input, and nothing left charged once everything has expired.
        r.expire(LATER, DATAGRAMS);
        again.expire(LATER, DATAGRAMS);
        assert_eq!((r.in_progress(), r.charged()), (0, [0, 0]));
        assert_eq!((again.in_progress(), again.charged()), (0, [0, 0]));
    });
});

fn run(r: &mut Reassembly, again: &mut Reassembly, data: &[u8]) {
    let mut now = 0u64;
    let mut i = 0;
    let mut frame = [0u8; 2048];
    while i < data.len() {
        let op = data[i];
        i += 1;
        match op % 4 {
            // A fragment described by 6 bytes: family and flags, ident, offset, length.
            0 | 1 => {
                let Some(d) = data.get(i..i + 6) else { return };
                i += 6;
                let v6 = d[0] & 1 != 0;
                let more = d[0] & 2 != 0;
                let options = d[0] & 4 != 0;
                let ident = u32::from(d[1] & 3);
                let offset = usize::from(u16::from_be_bytes([d[2], d[3]])) & 0xfff8;
                let len = usize::from(u16::from_be_bytes([d[4], d[5]])) % 1500;
                let n = build(&mut frame, v6, options, ident, offset, len, more, op);
                take(r, again, &frame[..n], now);
            }
            // A raw frame of the next bytes (its first byte says how many).
            2 => {
                let Some(&n) = data.get(i) else { return };
                let n = usize::from(n) * 8;
                let raw = &data[i + 1..(i + 1 + n).min(data.len())];
                i += 1 + raw.len();
                take(r, again, raw, now);
            }
            // The clock moves on by up to 64 s, and a whole sweep runs.
            _ => {
                now += u64::from(data.get(i).copied().unwrap_or(0) % 65) * 1_000_000_000;
                i += 1;
                let before = r.in_progress();
                let dropped = r.expire(now, DATAGRAMS);
                assert!(dropped >= before - r.in_progress(), "each expired datagram held a fragment");
            }
        }
    }
}

/// Builds a fragment frame into `out`; returns its length.
#[allow(clippy::too_many_arguments)]
fn build(out: &mut [u8; 2048], v6: bool, options: bool, ident: u32, offset: usize, len: usize, more: bool, fill: u8) -> usize {
    out[..12].copy_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
    let l3 = 14;
    let data_at;
    if !v6 {
        out[12..14].copy_from_slice(&[0x08, 0x00]);
        let ihl = if options { 24 } else { 20 };
        let ip = &mut out[l3..l3 + ihl];
        ip.fill(0);
        ip[0] = 0x40 | (ihl / 4) as u8;
        ip[2..4].copy_from_slice(&((ihl + len) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&(ident as u16).to_be_bytes());
        let word = ((offset / 8) as u16 & 0x1fff) | if more { 0x2000 } else { 0 };
        ip[6..8].copy_from_slice(&word.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[10, 0, 0, 9]);
        ip[16..20].copy_from_slice(&[192, 168, 1, 10]);
        if options {
            // Record route (not copied into later fragments) of 4 bytes.
            ip[20..24].copy_from_slice(&[7, 4, 4, 0]);
        }
        let c = checksum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        data_at = l3 + ihl;
    } else {
        out[12..14].copy_from_slice(&[0x86, 0xdd]);
        let ip = &mut out[l3..l3 + 48];
        ip.fill(0);
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&((8 + len) as u16).to_be_bytes());
        ip[6] = 44;
        ip[7] = 64;
        ip[8] = 0xfd;
        ip[23] = 9;
        ip[24] = 0xfd;
        ip[39] = 10;
        ip[40] = 17;
        let word = (offset as u16 & 0xfff8) | u16::from(more);
        ip[42..44].copy_from_slice(&word.to_be_bytes());
        ip[44..48].copy_from_slice(&ident.to_be_bytes());
        data_at = l3 + 48;
    }
    for (k, b) in out[data_at..data_at + len].iter_mut().enumerate() {
        *b = fill.wrapping_add(((offset + k) % 251) as u8);
    }
    data_at + len
}

fn take(r: &mut Reassembly, again: &mut Reassembly, frame: &[u8], now: u64) {
    let Some(f) = fragment_of(frame) else { return };
    assert!(f.l3_offset <= f.head_end && f.head_end <= f.data_at && f.data_at <= f.data_end);
    assert!(f.data_end <= frame.len());
    let charged = r.charged();
    match r.insert(&f, frame, now) {
        Insert::Held => assert!(r.charged()[usize::from(f.v6)] > charged[usize::from(f.v6)] || frame.is_empty()),
        Insert::Dropped { .. } => {}
        Insert::Complete(s) => {
            let whole = r.datagram(s).to_vec();
            let mut pieces = [(0, 0); MAX_FRAGMENTS];
            let (layout, n) = r.pieces(s, &mut pieces);
            // The pieces tile the payload, in order, without gaps.
            let mut next = 0usize;
            for &(o, l) in &pieces[..n] {
                assert_eq!(usize::from(o), next, "{:?}", &pieces[..n]);
                next += usize::from(l);
            }
            assert_eq!(layout.head_end + next, whole.len());
            r.release(s);
            // Cut back into fragments and put together again: the same datagram.
            let mut out = [0u8; 2048];
            let mut done = None;
            for (k, &(o, l)) in pieces[..n].iter().enumerate() {
                let Some(m) = write_fragment(&whole, &layout, o.into(), l.into(), k + 1 < n, &mut out) else {
                    // A fragment that grew past a frame (IPv4 options repeated): not comparable.
                    again.expire(LATER, DATAGRAMS);
                    return;
                };
                let g = fragment_of(&out[..m]).expect("a fragment it wrote");
                match again.insert(&g, &out[..m], now) {
                    Insert::Held => {}
                    Insert::Complete(t) => done = Some(t),
                    Insert::Dropped { reason, .. } => panic!("its own fragments were refused: {reason:?}"),
                }
            }
            let t = done.expect("its own fragments complete it");
            let back = again.datagram(t).to_vec();
            again.release(t);
            // IPv4: the checksum field differs only when options were blanked (then the headers differ).
            assert_eq!(back.len(), whole.len());
            assert_eq!(back[layout.head_end..], whole[layout.head_end..], "the payload");
        }
    }
}
